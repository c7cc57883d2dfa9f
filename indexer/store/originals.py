"""Uploaded files' original bytes, kept in the index folder by their content:

    DIR/originals/ab/abcdef…   the bytes whose SHA-256 is abcdef…

An uploaded document's record holds the hash (`file.sha256`), so the same bytes uploaded twice are
kept once, and a document can be opened as it came. The writer stores the bytes before the commit
that names them; after each commit, bytes that no record names any more go (a crash in between
leaves a file that the next commit drops). A file of a source is not copied: it is served from its
folder while it is there.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from .base import DocRecord

FOLDER = "originals"


def original_path(index: Path, sha256: str) -> Path:
    """Where an index keeps the bytes with this hash."""
    return Path(index) / FOLDER / sha256[:2] / sha256


def keep(index: Path, data: bytes) -> str:
    """Store bytes (written whole, then renamed into place); their hash."""
    sha = hashlib.sha256(data).hexdigest()
    path = original_path(index, sha)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    return sha


def named(records: Iterable[DocRecord]) -> set[str]:
    """The hashes of the uploads these records came from."""
    return {r.file["sha256"] for r in records if r.origin.startswith("upload:") and r.file.get("sha256")}


def prune(index: Path, records: Iterable[DocRecord]) -> None:
    """Drop the kept bytes that none of these records names (and any half-written file); an
    index that never kept an upload costs nothing here."""
    folder = Path(index) / FOLDER
    if not folder.is_dir():
        return
    kept = named(records)
    for path in folder.glob("*/*"):
        if path.name not in kept:
            path.unlink(missing_ok=True)


def usage(index: Path) -> tuple[int, int]:
    """How many originals an index keeps, and their bytes."""
    sizes = [p.stat().st_size for p in (Path(index) / FOLDER).glob("*/*") if p.is_file()]
    return len(sizes), sum(sizes)
