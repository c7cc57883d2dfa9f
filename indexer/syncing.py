"""Sources, and what a sync of one would do: the plan, made without reading any file that did not
change.

A source is a folder the index follows by name: its files' documents have the ids
SOURCE/path/under/the/folder, and `sync` mirrors it. A file whose size and modification time are
as last read is not opened; one whose bytes hash as last read is not read again (no parsing, no
OCR): only its record learns the new time. A folder that is missing or empty (an unmounted share)
is refused, and so is a sync that would remove more than half of a source's documents unless
allowed (`max_delete`), as rsync's --max-delete and Recoll's checks do: an archive is never synced
down to nothing by a mount that failed.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import IndexerError
from .reading import SUPPORTED_SUFFIXES, file_hash
from .store.base import DocRecord, now

_LINE = re.compile(r"#L\d+$")


def origin_file(origin: str) -> str:
    """The file an origin names (a JSON Lines line's origin ends in #L<n>)."""
    return _LINE.sub("", origin)


def is_line(origin: str) -> bool:
    """Whether an origin names one line of a JSON Lines file (whose file holds other documents too)."""
    return _LINE.search(origin) is not None


def source_entry(root: Path, include: list[str], exclude: list[str], tags: list[str]) -> dict:
    """What the manifest keeps of a source: its folder, its patterns, its tags, when it came."""
    return {"root": str(root.resolve()), "include": list(include), "exclude": list(exclude), "tags": list(tags),
            "added": now()}


def check_name(name: str) -> str:
    """A source's name as ids carry it (SOURCE/…): not empty, no slash."""
    name = name.strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise IndexerError(f"{name!r} cannot name a source: give one without slashes (--source NAME)")
    return name


def selected(relative: str, include: list[str], exclude: list[str]) -> bool:
    """Whether a file (its path under the source's folder) is the source's: it matches an include
    pattern (none: every file) and no exclude pattern (shell patterns; * crosses folders)."""
    return (not include or any(fnmatch.fnmatch(relative, p) for p in include)) and \
        not any(fnmatch.fnmatch(relative, p) for p in exclude)


@dataclass
class SyncPlan:
    """What a sync of one source will do."""

    source: str
    root: Path
    new: list[Path] = field(default_factory=list)  # files no document came from
    changed: list[Path] = field(default_factory=list)  # files whose bytes changed: read again
    touched: list[DocRecord] = field(default_factory=list)  # records of files touched, bytes the same: new time
    unchanged: int = 0  # files as last read, not opened
    removed: list[str] = field(default_factory=list)  # documents whose file is gone
    opened: int = 0  # files whose bytes were read to make the plan (hashed)
    documents: int = 0  # the source's documents before the sync

    @property
    def read(self) -> list[Path]:
        """The files the sync reads: new ones, then changed ones."""
        return self.new + self.changed

    def summary(self) -> str:
        return (f"{self.source}: {len(self.new)} new, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{self.unchanged + len(self.touched)} unchanged ({self.opened} opened to compare, {len(self.read)} to read)")


def plan_sync(name: str, entry: dict, records: list[DocRecord], max_delete: int | None = None) -> SyncPlan:
    """The plan for source `name` (its manifest entry) whose documents are `records`; an
    IndexerError, changing nothing, for a folder that is missing or empty, or for removing more
    than half of its documents unless `max_delete` allows that many."""
    root = Path(entry["root"])
    if not root.is_dir():
        raise IndexerError(f"source {name}: its folder {root} is not there (unmounted?); nothing was changed")
    plan = SyncPlan(name, root, documents=len(records))
    by_file: dict[str, list[DocRecord]] = {}
    for record in records:
        by_file.setdefault(origin_file(record.origin), []).append(record)
    seen: set[str] = set()
    for path, stat in _walk(root, entry.get("include", []), entry.get("exclude", [])):
        key = os.path.abspath(path)
        seen.add(key)
        known = by_file.get(key)
        state = known[0].file if known else {}
        if not known:
            plan.new.append(path)
        elif state.get("size") == stat.st_size and state.get("mtime_ns") == stat.st_mtime_ns:
            plan.unchanged += 1
        else:
            plan.opened += 1
            digest = file_hash(path)
            if digest == state.get("sha256"):
                fresh = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
                plan.touched += [DocRecord(**{**r.__dict__, "file": fresh}) for r in known]
            else:
                plan.changed.append(path)
    if not seen:
        raise IndexerError(f"source {name}: its folder {root} holds no readable files (unmounted?); nothing was changed")
    plan.removed = sorted(r.doc_id for key, rs in by_file.items() if key not in seen for r in rs)
    if len(plan.removed) * 2 > len(records) and (max_delete is None or len(plan.removed) > max_delete):
        raise IndexerError(f"source {name}: the sync would remove {len(plan.removed)} of its {len(records)} documents "
                           f"(more than half): check its folder {root}, or allow it with --max-delete "
                           f"{len(plan.removed)}; nothing was changed")
    return plan


def _walk(root: Path, include: list[str], exclude: list[str]):
    """(path, stat) of the supported, non-hidden files of a source's folder that it selects, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            path = Path(folder, name)
            if selected(path.relative_to(root).as_posix(), include, exclude):
                found.append(path)
    for path in sorted(found):
        try:
            yield path, path.stat()
        except OSError:  # gone between the walk and the stat: as if it had never been there
            continue


@dataclass
class Adoption:
    """A folder an index of before sources read, to be followed as a source (`upgrade`)."""

    source: str
    root: Path
    ids: dict[str, str]  # old id → SOURCE/path/under/the/folder (a JSON Lines record's own id stays)
    exclude: list[str] = field(default_factory=list)  # its subfolders that are sources of their own


def adoptions(records: list[DocRecord], taken: set[str]) -> list[Adoption]:
    """The folders behind the records of files read before sources (ids named by the path under
    the folder given): each folder holding two documents or more becomes a source named after it
    (with -2, -3… where that name is `taken`), its documents' ids SOURCE/path, as a build of the
    folder gives them. A file's folder is its path with the id's path cut off; a JSON Lines
    record's own id stays, in the source of the folder its file is in; a file of its own, or an
    upload, stays as it is."""
    files = {r.doc_id: os.path.abspath(origin_file(r.origin)) for r in records
             if not r.source and r.origin and not r.origin.startswith(("upload:", "pasted"))}
    roots: dict[str, set[str]] = {}
    for record in records:
        if record.doc_id not in files:
            continue
        line = _LINE.search(record.origin)
        head, _, n = record.doc_id.rpartition("#")
        rel = record.doc_id if not line else head if n == line.group()[2:] else ""  # JSONL: id less "#n", if not its own
        path = files[record.doc_id]
        if rel and path.endswith(os.sep + rel.replace("/", os.sep)):
            roots.setdefault(path[:-len(rel) - 1], set()).add(record.doc_id)
    roots = {root: named for root, named in roots.items() if len(named) >= 2}
    claimed = set().union(*roots.values())
    out: list[Adoption] = []
    names = set(taken)
    for root, named in sorted(roots.items(), key=lambda item: (-item[0].count(os.sep), item[0])):  # deepest first
        base = check_name(Path(root).name or "root")
        name = next(n for n in (base, *(f"{base}-{i}" for i in range(2, 10_000))) if n not in names)
        names.add(name)
        inside = [d for d, path in files.items() if d in named or (d not in claimed and path.startswith(root + os.sep))]
        claimed.update(inside)
        nested = [f"{Path(other).relative_to(root).as_posix()}/*" for other in roots  # a folder followed of its own
                  if other.startswith(root + os.sep)]
        out.append(Adoption(name, Path(root), {d: f"{name}/{d}" if d in named else d for d in inside}, nested))
    return out
