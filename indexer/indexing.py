"""Adding documents: the writer side of an engine (as tantivy's IndexWriter beside its
IndexReader). An Indexer reads files, chunks them, embeds the chunks and writes them through the
store's Writer under the writers' lock (one write at a time, across processes too), and hands
each commit's snapshot to the Searcher: questions never wait for it. Nor do they wait for its
encoding: the question side of the encoder is a model of its own (indexer.embedding), and the two
share the cores as the system schedules them (bench/README.md, "Questions while the index is
written": a question's p50 about twice its idle time, its max about 0.1 s).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import threading
from dataclasses import replace
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import numpy as np

from .chunking import Chunk, ChunkSettings, chunk_document, is_heading
from .errors import IndexerError, NotFound, StoreError
from .models import Models
from .searching import Searcher
from .reading import Document, ReadError, SourceFile, iter_documents, plan_files, tagged
from .results import DocReport
from .settings import IndexSettings
from .syncing import Adoption, SyncPlan, adoptions, check_name, origin_file, plan_sync, selected, source_entry
from .store import Snapshot, Writer, exists, is_current, lock, upgrade
from .store.base import DocRecord, now
from .store.table import PassageVectors

Progress = Union[bool, Callable[[float], None]]  # a console bar, or a callback given the fraction done
SWITCH_WHILE_WRITING = 0.0005  # seconds: the interpreter's switch interval while a write runs (Python's own: 0.005)

COMMIT_CHARS = 2_000_000  # `add` commits every ~2M characters read (~90 s of encoding here): Ctrl-C keeps those
VOLATILE_META = frozenset({"modified"})  # a file touched but unchanged is not re-written


def _clash(record: DocRecord, doc: Document) -> bool:
    """Whether a document would replace one of another origin under its id: a source's file is
    the same one under the same id; else the same file (or upload, or paste) must be named."""
    if record.source or doc.source:
        return record.source != doc.source
    return _same_file(record.origin) != _same_file(doc.origin)


def _same_file(origin: str) -> str:
    """An origin as comparable: a file's absolute path (a JSON Lines line: its file); others as they are."""
    named = origin_file(origin)
    return os.path.abspath(named) if named and not named.startswith(("upload:", "pasted")) else named


def _file_as_read(record: DocRecord) -> dict:
    """The state of a record's file when its size and time (to the second) are those it was read
    with, so that `sync` does not open it; else none, and `sync` compares its bytes."""
    try:
        stat = os.stat(origin_file(record.origin))
    except OSError:
        return {}
    when = dt.datetime.fromtimestamp(int(stat.st_mtime), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if stat.st_size != record.meta.get("size") or when != record.meta.get("modified"):
        return {}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _changed(record: DocRecord, doc: Document) -> bool:
    """A document differs from its saved record in text or in what it carries (tags, title…)."""
    def kept(meta: dict) -> dict:
        return {k: v for k, v in meta.items() if k not in VOLATILE_META}
    return record.content_hash != doc.content_hash or record.title != doc.title or kept(record.meta) != kept(doc.meta)


class _FileProgress:
    """One progress bar over the files and bytes of an update: a console bar (tqdm) or a callback
    given the fraction of bytes done; a document batch being encoded moves it within its bytes."""

    def __init__(self, progress: Progress, files: int, total: int) -> None:
        self.files, self.total, self.done, self.read = files, max(total, 1), 0, 0
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="adding", leave=True,
                            postfix=f"0/{files} files", file=sys.stderr)

    def file_read(self) -> None:
        self.read += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.read}/{self.files} files", refresh=False)

    def at(self, nbytes: float) -> None:
        """Report `nbytes` of the whole done."""
        nbytes = min(nbytes, self.total)
        if self.bar is not None:
            self.bar.update(max(0, round(nbytes) - self.bar.n))
        if self.callback is not None:
            self.callback(nbytes / self.total)

    def within(self, nbytes: int) -> Callable[[float], None]:
        """A callback for encoding the next `nbytes`: the bar moves across them as it goes."""
        start = self.done
        self.done += nbytes
        return lambda fraction: self.at(start + fraction * nbytes)

    def close(self) -> None:
        self.at(self.done)
        if self.bar is not None:
            self.bar.close()


USE_COST, SENTENCE_COST = 0.9, 2.0  # encoding time of the USE table and of e5 sentence vectors, per unit of e5 passages


def _stages(**costs: float) -> dict[str, tuple[float, float]]:
    """Each stage's [start, end) share of a build's progress, in proportion to its cost."""
    total = sum(costs.values()) or 1.0
    out, at = {}, 0.0
    for name, cost in costs.items():
        out[name] = (at / total, (at + cost) / total)
        at += cost
    return out


def _part(progress: Progress, lo: float, hi: float) -> Progress:
    """A progress callback for one stage that reports into [lo, hi] of the whole; a bool stays as is."""
    if not callable(progress):
        return progress
    return lambda fraction: progress(lo + (hi - lo) * fraction)


def passage_text(chunk: Chunk, min_chars: int = ChunkSettings.min_chars) -> str:
    """What is embedded for a chunk: its body, without the heading and short lines attached in front.

    Measured on tests/data/speech_qa_*.jsonl: embedding the body alone beats the whole chunk
    (Chinese Hit@3 0.79 → 0.89, English 0.66 → 0.74). A heading shared by a section, or a short
    salutation, pulls every chunk that carries it toward generic questions.
    """
    lines = chunk.text.split("\n")
    while len(lines) > 1 and (is_heading(lines[0]) or len(lines[0].strip()) < min_chars):
        lines = lines[1:]
    return "\n".join(lines)


class Indexer:
    """Writes to the index at `path` with `settings` (a new index's; an existing index's own are
    read from its manifest at each write), encoding with `models`; each commit goes to `searcher`."""

    def __init__(self, path: Path, models: Models, settings: IndexSettings, searcher: Searcher) -> None:
        self.path, self.models, self.settings, self.searcher = Path(path), models, settings, searcher
        self._lock = threading.Lock()  # one write at a time in this process (the file lock: across processes)
        self.reused = 0  # chunks the last update took over from the old version instead of embedding

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The writers' locks (this process's and the index's file lock) and, while they are held,
        a short interpreter switch interval: the write's Python work (chunking, jieba, postings)
        hands the GIL to a waiting question within SWITCH_WHILE_WRITING instead of Python's 5 ms,
        which a question pays at each of its many steps. That is how the writer yields."""
        with self._lock, lock(self.path):
            before = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_WHILE_WRITING)
            try:
                yield
            finally:
                sys.setswitchinterval(before)

    def _new_store(self, vectors: str | None = None) -> Writer:
        """A writer of a new index with these settings (its vectors at `vectors`, else as the settings say)."""
        encoder = self.models.e5(1)
        return Writer.create(self.path, self.settings.manifest(encoder.name, encoder.dim),
                             vectors=vectors or self.settings.vectors or None)

    def build(self, paths: Iterable[str | Path], *, progress: Progress = False, tags: Iterable[str] = (),
              ocr: bool = True, source: str | None = None, include: Iterable[str] = (),
              exclude: Iterable[str] = ()) -> list[DocReport]:
        """Index exactly the documents of these files and folders, from scratch; the old index stays
        until the new one is committed. A file that cannot be read is reported (status failed) and
        left out. Documents are read, embedded and written in batches of COMMIT_CHARS characters,
        so memory does not grow with the corpus; where there was no index yet, each batch is
        committed as it is done, so an interrupted build keeps them and `add` of the same paths
        picks up the rest. A folder given becomes a source of the index (`add`)."""
        paths = list(paths)
        sources = self._sources(paths, {}, source, include, exclude, tags)
        files = self._files(paths, sources)
        bar = _FileProgress(progress, len(files), sum(f.size for f in files))
        reports: list[DocReport] = []
        failed: list[DocReport] = []
        self.models.e5(1)
        try:
            with self._writing():
                store, fresh = self._new_store(), not exists(self.path)
                store.manifest.sources = dict(sources.values())
                try:
                    for docs, part in self._batches(files, bar, failed, tags=tags, ocr=ocr):
                        reports += self._upsert_all(store, docs, part)
                        store.commit() if fresh else store.flush()
                    if not reports:
                        raise ReadError(failed[0].error if len(failed) == 1 else
                                        f"none of the {len(failed)} files could be read")
                    if not fresh:
                        store.commit()
                except BaseException:
                    store.rollback()
                    raise
                self.searcher.publish(store.snapshot)
        finally:
            bar.close()
        return reports + failed

    def _batches(self, files: list, bar: "_FileProgress", failed: list[DocReport], *, skip_bad_lines: bool = False,
                 tags: Iterable[str] = (), ocr: bool = True) -> Iterator[tuple[list[Document], Progress]]:
        """The documents of these files in batches of about COMMIT_CHARS characters, each with the
        progress callback of its bytes; a file that cannot be read goes to `failed`."""
        batch: list[Document] = []
        chars = nbytes = 0
        last = None
        for src, got in iter_documents(files, skip_bad_lines=skip_bad_lines, ocr=ocr):
            if src.path != last:  # a large JSON Lines file comes in several parts
                bar.file_read()
                last = src.path
            nbytes += src.size
            if isinstance(got, ReadError):
                failed.append(DocReport(src.doc_id, "failed", 0, error=str(got)))
                continue
            batch += [tagged(d, tags) for d in got]
            chars += sum(len(d.text) for d in got)
            if chars >= COMMIT_CHARS:
                yield batch, bar.within(nbytes)
                batch, chars, nbytes = [], 0, 0
        if batch:
            yield batch, bar.within(nbytes)
        bar.done = bar.total

    def rebuild(self, *, progress: Progress = False) -> list[DocReport]:
        """Re-chunk and re-embed every indexed document from its stored text (e.g. after a model
        change), in batches of about COMMIT_CHARS characters written as they are done (bounded
        memory), all in one commit: the old index answers until it lands."""
        self.models.e5(1)
        with self._writing():
            old = Snapshot.load(self.path)
            # the index's own settings, but a chunk's terms with its title's, as a new index keeps them
            self.settings = replace(IndexSettings.of_manifest(old.manifest), title_terms=True)
            records = old.manifest.documents.values()
            total = max(1, sum(d.chars for d in records))
            store = self._new_store(old.manifest.vectors.get("milvus"))  # the vectors stay where they were
            reports: list[DocReport] = []
            batch: list[Document] = []
            done = chars = 0
            try:
                for n, d in enumerate(records, 1):
                    batch.append(Document(d.doc_id, old.document_text(d.doc_id), d.title, d.origin, d.encoding, d.meta))
                    chars += d.chars
                    if chars >= COMMIT_CHARS or n == len(records):
                        reports += self._upsert_all(store, batch, _part(progress, done / total, (done + chars) / total))
                        store.flush()
                        batch, done, chars = [], done + chars, 0
                store.commit()
            except BaseException:
                store.rollback()
                raise
            self.searcher.publish(store.snapshot)
        return reports

    def add(self, paths: Iterable[str | Path], *, progress: Progress = False, skip_bad_lines: bool = False,
            tags: Iterable[str] = (), ocr: bool = True, source: str | None = None, include: Iterable[str] = (),
            exclude: Iterable[str] = ()) -> list[DocReport]:
        """Add or replace the documents of these files and folders; an unchanged one is left as it is.

        A folder becomes a source: named after the folder (or `source`), its documents' ids are
        SOURCE/path/under/it, and `sync` mirrors it later; another folder of the same name is
        refused until it is given a name of its own. A file given alone keeps its name as its id;
        a document of another origin already under that id is not replaced (a failed report names
        both). Files are read one by one and committed every COMMIT_CHARS characters, so an
        interrupted add of a large folder keeps what was committed, and running it again skips
        those (their content hashes match) and picks up the rest. A file that cannot be read is
        reported (status failed, one line naming it) and does not stop the others. One progress
        bar runs over the files and their bytes.
        """
        paths = list(paths)
        known = Snapshot.load(self.path).manifest.sources if exists(self.path) else {}
        sources = self._sources(paths, known, source, include, exclude, tags)
        return self._read_in(self._files(paths, sources), progress, dict(sources.values()), skip_bad_lines=skip_bad_lines,
                             tags=tags, ocr=ocr)

    def _read_in(self, files: list[SourceFile], progress: Progress, sources: dict[str, dict], *,
                 skip_bad_lines: bool = False, tags: Iterable[str] = (), ocr: bool = True,
                 reuse_from: Iterable[str] = ()) -> list[DocReport]:
        """Read these files and add their documents, a commit every COMMIT_CHARS characters, with
        one progress bar; `sources` are registered with the first commit (`add_documents`)."""
        bar = _FileProgress(progress, len(files), sum(f.size for f in files))
        reports: list[DocReport] = []
        try:
            for docs, part in self._batches(files, bar, reports, skip_bad_lines=skip_bad_lines, tags=tags, ocr=ocr):
                reports += self.add_documents(docs, progress=part, sources=sources, reuse_from=reuse_from)
                sources = {}
            if sources:  # nothing read: the sources are registered still
                self.add_documents([], sources=sources)
        finally:
            bar.close()
        return reports

    @staticmethod
    def _sources(paths: list[str | Path], known: dict[str, dict], name: str | None, include: Iterable[str],
                 exclude: Iterable[str], tags: Iterable[str]) -> dict[Path, tuple[str, dict]]:
        """The folders among `paths`, each with its source's name and entry: `name` (one folder
        only), else the folder's own name; a name that `known` gives another folder is refused."""
        folders = [Path(p) for p in paths if Path(p).is_dir()]
        if name is not None and len(folders) != 1:
            raise IndexerError(f"--source names one folder; {len(folders)} were given: add them one by one")
        out: dict[Path, tuple[str, dict]] = {}
        for folder in folders:
            source = check_name(name if name is not None else folder.resolve().name)
            entry = source_entry(folder, list(include), list(exclude), list(tags))
            taken = known.get(source) or next((e for s, e in out.values() if s == source), None)
            if taken is not None and taken["root"] != entry["root"]:
                raise IndexerError(f"{folder}: the index already has a source named {source!r}, the folder "
                                   f"{taken['root']}; give this one a name of its own with --source NAME")
            out[folder] = (source, {**entry, "added": taken.get("added", entry["added"])} if taken else entry)
        return out

    @staticmethod
    def _files(paths: list[str | Path], sources: dict[Path, tuple[str, dict]]) -> list[SourceFile]:
        """The files to read: a source's as its patterns select them."""
        files = plan_files(paths, {folder: name for folder, (name, _) in sources.items()})
        entries = dict(sources.values())
        return [f for f in files if not f.source or selected(f.doc_id[len(f.source) + 1:], entries[f.source]["include"],
                                                                      entries[f.source]["exclude"])]

    def add_documents(self, docs: list[Document], *, progress: Progress = False,
                      sources: dict[str, dict] | None = None, reuse_from: Iterable[str] = (),
                      originals: Iterable[bytes] = ()) -> list[DocReport]:
        """Add already-read documents (the page's uploads and pasted text come this way), and
        register `sources` (name → entry) in the same commit; chunks whose text a document of
        `reuse_from` holds (a renamed file's old self) keep its vectors; `originals`, uploads'
        bytes, are kept for their documents (store.originals)."""
        if not docs and not sources:
            return []
        self.models.e5(1)
        with self._writing():
            store = Writer.open(self.path) if exists(self.path) else self._new_store()
            self.models.check(store.manifest, str(self.path))
            self.settings = IndexSettings.of_manifest(store.manifest)  # chunk new documents the way the index was built
            for data in originals:
                store.keep_original(data)
            reports = self._upsert_all(store, docs, progress, reuse_from)
            if sources:
                store.manifest.sources = {**store.manifest.sources, **sources}
            if sources or store.touched or any(r.status not in ("unchanged", "failed") for r in reports):
                self.searcher.publish(store.commit())
        return reports

    def sync(self, names: Iterable[str] = (), *, dry_run: bool = False, max_delete: int | None = None,
             progress: Progress = False, ocr: bool = True) -> list[tuple[SyncPlan, list[DocReport]]]:
        """Mirror sources (all, when none is named) into the index: new files added, changed ones
        replaced, vanished ones removed; each plan with what was done. Every source is planned
        before anything changes, so a refused one (missing or empty folder, too many removals)
        stops the sync whole. Reads commit as `add` does: Ctrl-C keeps what was committed, and the
        next sync does the rest."""
        snapshot = Snapshot.load(self.path)
        sources = snapshot.manifest.sources
        if not sources:
            raise IndexerError(f"{self.path} follows no folder: add one first (`add FOLDER`), then sync it")
        names = list(dict.fromkeys(names)) or sorted(sources)
        unknown = [n for n in names if n not in sources]
        if unknown:
            raise NotFound(f"no source {unknown[0]!r} in {self.path} (see `source list`)")
        records = list(snapshot.manifest.documents.values())
        plans = [plan_sync(n, sources[n], [r for r in records if r.source == n], max_delete) for n in names]
        if dry_run:
            return [(plan, []) for plan in plans]
        out = []
        for plan in plans:
            files = [SourceFile(path, f"{plan.source}/{path.relative_to(plan.root).as_posix()}", path.stat().st_size,
                                path.parent.relative_to(plan.root).as_posix().strip("."), plan.source)
                     for path in plan.read]
            reports = self._read_in(files, progress, {}, tags=sources[plan.source].get("tags", ()), ocr=ocr,
                                    reuse_from=plan.removed)  # a renamed file: its old self's vectors
            changed = {os.path.abspath(path) for path in plan.changed}
            kept = {r.doc_id for r in reports}
            gone = [r.doc_id for r in records  # a changed JSON Lines file's lines that are no more
                    if r.source == plan.source and origin_file(r.origin) in changed and r.doc_id not in kept]
            out.append((plan, reports + self._synced(plan, plan.removed + gone)))
        return out

    def _synced(self, plan: SyncPlan, removed: list[str]) -> list[DocReport]:
        """The sync's last commit: touched files' records, vanished files' documents removed, the
        time of the sync."""
        with self._writing():
            store = Writer.open(self.path)
            for record in plan.touched:
                store.touch(record)
            gone = [d for d in removed if d in store.manifest.documents]
            reports = [DocReport(d, "removed", store.manifest.documents[d].chunks) for d in gone]
            store.delete(gone)
            entry = store.manifest.sources.get(plan.source, {})
            store.manifest.sources = {**store.manifest.sources, plan.source: {**entry, "synced": now()}}
            self.searcher.publish(store.commit())
        return reports

    def remove_source(self, name: str) -> list[DocReport]:
        """Stop following a source: its documents leave the index with it, in one commit."""
        with self._writing():
            store = Writer.open(self.path)
            if name not in store.manifest.sources:
                raise NotFound(f"no source {name!r} in {self.path} (see `source list`)")
            gone = [r for r in store.manifest.documents.values() if r.source == name]
            store.delete([r.doc_id for r in gone])
            store.manifest.sources = {n: e for n, e in store.manifest.sources.items() if n != name}
            self.searcher.publish(store.commit())
        return [DocReport(r.doc_id, "removed", r.chunks) for r in gone]

    def remove(self, doc_ids: list[str]) -> list[DocReport]:
        """Remove documents by id; an unknown id is an error and nothing is removed."""
        with self._writing():
            store = Writer.open(self.path)
            unknown = [d for d in doc_ids if d not in store.manifest.documents]
            if unknown:
                raise NotFound(f"no document {unknown[0]!r} in {self.path} (see `list`)")
            reports = [DocReport(d, "removed", store.manifest.documents[d].chunks) for d in doc_ids]
            store.delete(doc_ids)
            self.searcher.publish(store.commit())
        return reports

    def optimize(self) -> tuple[int, int]:
        """Merge the index's segments into one, dropping deleted chunks: (segments before, after)."""
        with self._writing():
            store = Writer.open(self.path)
            before = store.optimize()
            self.searcher.publish(store.snapshot)
        return before, min(before, 1)

    def upgrade(self, *, sources: bool = True) -> str:
        """Convert an index of an earlier format in place, and the folders an index of before
        sources read into sources (their documents' ids SOURCE/path, as a build gives them): what
        was done, with each id changed as `old → new`; with `sources` False, ids are left as they are."""
        with self._writing():
            self.searcher.forget()
            done = []
            if not is_current(self.path):
                done.append(upgrade(self.path))
            store = Writer.open(self.path)
            found = adoptions(list(store.manifest.documents.values()), set(store.manifest.sources)) if sources else []
            if found:
                done.append(self._adopt(store, found))
            if not done:
                raise StoreError(f"{self.path} is already an index of this format"
                                 + (", its folders followed as sources" if sources else "") + "; nothing to upgrade")
            self.searcher.forget()
            return "\n".join(done)

    def _adopt(self, store: Writer, found: list[Adoption]) -> str:
        """Make these folders sources, their documents renamed in one commit: chunks, vectors and
        places kept (nothing read or embedded again), keyword terms cut again for the new ids."""
        self.settings = IndexSettings.of_manifest(store.manifest)
        old = Snapshot.load(self.path)
        lines = []
        for adoption in found:
            store.manifest.sources = {**store.manifest.sources, adoption.source: {
                **source_entry(adoption.root, [], adoption.exclude, []), "upgraded": now()}}
            lines.append(f"{adoption.source}: the folder {adoption.root}, {len(adoption.ids)} documents")
            for before, after in adoption.ids.items():
                record = store.manifest.documents[before]
                chunks, vectors, xl = store.document_vectors(before)
                moved = [replace(c, doc_id=after, chunk_id=f"{after}#{c.position}") for c in chunks]
                terms = self.settings.segmenter.terms_many([self.settings.keyword_text(record.title, c.text)
                                                            for c in moved])
                store.delete([before])
                store.upsert(replace(record, doc_id=after, source=adoption.source, file=_file_as_read(record)),
                             moved, vectors, old.document_text(before), terms, xl)
                lines.append(f"  {before} → {after}" if before != after else f"  {before} (its own id, kept)")
            store.flush()  # one folder's documents at a time in memory; one commit for all
        self.searcher.publish(store.commit())
        return "followed as sources (a `sync` now mirrors them):\n" + "\n".join(lines)

    def _upsert_all(self, store: Writer, docs: list[Document], progress: Progress,
                    reuse_from: Iterable[str] = ()) -> list[DocReport]:
        """Chunk the new and changed documents, embed them in one pass, and put them in the store.

        A changed document keeps the vectors of its chunks whose text did not change: only new
        text is embedded (editing one paragraph of a long document embeds one chunk)."""
        known = store.manifest.documents
        clashes = {d.doc_id: known[d.doc_id] for d in docs if d.doc_id in known and _clash(known[d.doc_id], d)}
        refused = [DocReport(d.doc_id, "failed", 0, d.encoding, error=(
            f"{d.origin}: not added, as {d.doc_id!r} is in the index already from {clashes[d.doc_id].origin} "
            "(add its folder as a source, or remove the other first)")) for d in docs if d.doc_id in clashes]
        docs = [d for d in docs if d.doc_id not in clashes]
        todo = [d for d in docs if d.doc_id not in known or _changed(known[d.doc_id], d)]
        chunked = {d.doc_id: self.chunk(d) for d in todo}
        all_chunks = [c for d in todo for c in chunked[d.doc_id]]
        replaced = {d.doc_id for d in todo if d.doc_id in known}
        reuse = self._reusable(store, sorted(replaced | {d for d in reuse_from if d in known}))
        fresh = [i for i, c in enumerate(all_chunks) if c.text not in reuse]
        min_chars = self.settings.chunking.min_chars
        bodies = [passage_text(all_chunks[i], min_chars) for i in fresh]
        # keyword terms (jieba: one Python thread) are cut while the encoders, which release the GIL, run
        keyword_texts = [self.settings.keyword_text(d.title, c.text) for d in todo for c in chunked[d.doc_id]]
        cutting = self.models.pool().submit(self.settings.segmenter.terms_many, keyword_texts)
        table = store.manifest.crosslingual
        stages = _stages(e5=1.0, use=USE_COST if table else 0.0, sentences=SENTENCE_COST if table.get("e5_sentences") else 0.0)
        vectors = np.zeros((len(all_chunks), self.models.e5(1).dim), np.float32)
        vectors[fresh] = self.models.e5(1).encode_documents(bodies, progress=_part(progress, *stages["e5"]))
        xl = None
        if table:
            new_xl = self.models.use().encode_passages([all_chunks[i].text for i in fresh], bodies,
                                                     progress=_part(progress, *stages["use"]))
            if table.get("e5_sentences"):
                texts = [all_chunks[fresh[o]].text[a:b] for o, (a, b) in zip(new_xl.owner, new_xl.spans)]
                dense = self.models.e5(1).encode_documents(texts, progress=_part(progress, *stages["sentences"]))
                new_xl.dense = dense.astype(np.float16).astype(np.float32)  # kept in float16
            position = {i: n for n, i in enumerate(fresh)}
            xl = new_xl if len(fresh) == len(all_chunks) else PassageVectors.gather(
                [(new_xl, position[i]) if i in position else reuse[c.text][1] for i, c in enumerate(all_chunks)])
        for i, c in enumerate(all_chunks):
            if c.text in reuse:
                vectors[i] = reuse[c.text][0]
        terms = cutting.result()
        reports, offset = [], 0
        unchanged = {d.doc_id: known[d.doc_id].chunks for d in docs if d.doc_id not in chunked}
        if replaced:
            store.delete(sorted(replaced))  # all at once: one pass over the rows, not one per document
        for doc in docs:
            if doc.doc_id not in chunked:
                if doc.file and known[doc.doc_id].file != doc.file:  # the same text, its file touched: its time kept
                    store.touch(replace(known[doc.doc_id], file=doc.file))
                reports.append(DocReport(doc.doc_id, "unchanged", unchanged[doc.doc_id], doc.encoding))
                continue
            chunks = chunked[doc.doc_id]
            status = "replaced" if doc.doc_id in replaced else "added"
            record = DocRecord(doc.doc_id, doc.content_hash, doc.title, doc.origin, doc.encoding,
                               len(chunks), now(), len(doc.text), dict(doc.meta), doc.source, dict(doc.file))
            rows = slice(offset, offset + len(chunks))
            doc_xl = xl.rows(rows.start, rows.stop) if xl is not None else None
            store.upsert(record, chunks, vectors[rows], doc.text, terms[rows], doc_xl)
            offset += len(chunks)
            reports.append(DocReport(doc.doc_id, status, len(chunks), doc.encoding))
        self.reused = len(all_chunks) - len(fresh)
        return refused + reports

    @staticmethod
    def _reusable(store: Writer, doc_ids: list[str]) -> dict[str, tuple[np.ndarray, tuple[PassageVectors, int] | None]]:
        """Chunk text → (its vector, (cross-lingual vectors, row)) for the saved chunks of these documents."""
        out: dict[str, tuple[np.ndarray, tuple[PassageVectors, int] | None]] = {}
        for doc_id in doc_ids:
            chunks, vectors, xl = store.document_vectors(doc_id)
            for row, (c, v) in enumerate(zip(chunks, vectors)):
                out.setdefault(c.text, (v, (xl, row) if xl is not None else None))
        return out

    def chunk(self, doc: Document) -> list[Chunk]:
        """Chunks of a document under this index's settings, measured in the model's tokens."""
        return chunk_document(doc, self.settings.chunking, self.models.e5(1).count_tokens)
