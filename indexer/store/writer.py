"""Changes to a folder index: its writer (one at a time, under the writers' lock; Engine holds it).

A write adds one segment and deletion marks, and commits them in one SQLite transaction: it costs
what it changes, and a kill leaves the old commit or the new one. Documents wait in memory until
`flush` writes them as a segment into the open commit (a large build stays within bounded memory)
and `commit` makes the commit visible; `rollback` drops it, segments included. After each commit
the writer reopens the index as committed (`snapshot`, what readers are given next) and merges
segments while the merge policy names some (indexer.store.merge_policy); `optimize` merges all.

A writer over a new index (`Writer.create`) replaces whatever index was at its path with its
first commit: the old segments and records are retired in that commit's transaction and go one
commit later (a reader of the old index may still be opening them), as every retired segment does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..errors import StoreError
from ..postings import Postings, term_keys
from .atomic import _fsync_dir, _fsync_tree
from .base import DocRecord, Manifest, check_upsert, document_key, empty_table, now
from .layout import FOLDER_FORMAT, read_manifest
from .merge_policy import next_merge
from . import originals
from .milvus_vectors import note_replaced, retire_replaced
from .records import DB_FILE, DocTable, Records, chunk_json
from .segment import choose_index_type, merge_segments, write_segment
from .snapshot import Snapshot
from .table import PassageVectors
from .vectors import writer_of

_SEG = re.compile(r"^seg-(\d{6,})$")
Pending = tuple[DocRecord, list[Chunk], np.ndarray, str, list[list[str]], "PassageVectors | None"]


class Writer:
    """Writes to the index at `path`, over its last commit (`snapshot`; None for a new index), with
    `manifest` as it will be committed. `vectors`: a Milvus location for a new index's vectors
    (credentials as given; the manifest keeps it without them)."""

    def __init__(self, path: Path, manifest: Manifest, snapshot: Snapshot | None, vectors: str | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.snapshot = snapshot
        self._records = snapshot.records if snapshot is not None else None
        self._vectors = writer_of(manifest, vectors)
        self._replace = snapshot is None  # a new index: its first commit replaces whatever index was there
        manifest.documents = DocTable(self._records)
        self._pending: list[Pending] = []
        self._marks: set[tuple[int, int]] = set()  # deletion marks not yet committed
        self._unindexed: set[int] = set()  # record ids of rows deleted in the commit being made
        self._touched: dict[str, DocRecord] = {}  # records rewritten alone (`touch`)
        self._txn = None  # the open write transaction of a commit being made (flush / commit)
        self._written: list[int] = []  # segments written in it

    @classmethod
    def create(cls, path: Path, manifest: Manifest, vectors: str | None = None) -> "Writer":
        """A writer of a new index at `path` (with its vectors at a Milvus `vectors` location)."""
        return cls(path, manifest, None, vectors)

    @classmethod
    def open(cls, path: Path) -> "Writer":
        """A writer over the index last committed at `path`."""
        snapshot = Snapshot.load(path)
        return cls(path, read_manifest(snapshot.records, snapshot.path), snapshot)

    # ---------------------------------------------------------------- changes (in memory until flush)

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: PassageVectors | None = None) -> None:
        """Put a document's chunks, vectors, terms (and sentence table) in place of any it had."""
        check_upsert(chunks, vectors, terms, xl, bool(self.manifest.crosslingual))
        if doc.doc_id in self.manifest.documents:
            self.delete([doc.doc_id])
        self._pending.append((doc, list(chunks), np.ascontiguousarray(vectors, dtype=np.float32), text,
                              [list(t) for t in terms], xl))
        self.manifest.documents[doc.doc_id] = doc
        self.manifest.updated = now()

    def delete(self, doc_ids: list[str]) -> None:
        """Mark the documents' chunks deleted (nothing is rebuilt; a merge drops them)."""
        drop = set(doc_ids)
        self._pending = [p for p in self._pending if p[0].doc_id not in drop]
        if self._records is not None:  # (a new index's commit retires every segment it did not write)
            ids = self._records.chunk_ids(drop)  # the open transaction sees its own records
            committed = [] if self._replace else self.snapshot.rows.keys(self.snapshot.rows.holding(ids))
            self._marks.update(self._written_keys(ids) + committed)
            if not self._replace:  # (a replaced index's vectors go with it)
                self._unindexed.update(ids.tolist())
        for doc_id in drop:
            self.manifest.documents.pop(doc_id, None)
        self.manifest.updated = now()

    def touch(self, record: DocRecord) -> None:
        """Rewrite a committed document's record alone (say, its file's state, after a sync found
        its bytes unchanged): no chunk is written."""
        self._touched[record.doc_id] = record

    def keep_original(self, data: bytes) -> str:
        """Keep an upload's bytes (store.originals) for the commit whose records name them; their hash."""
        return originals.keep(self.path, data)

    @property
    def touched(self) -> int:
        """How many records wait to be rewritten alone (`touch`)."""
        return len(self._touched)

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, PassageVectors | None]:
        """A committed document's chunks with their vectors and sentence table, row-aligned (what an
        update reuses for the chunks whose text did not change); empty for a new index."""
        if self.snapshot is None or self._replace:
            table = empty_table(self.manifest) if self.manifest.crosslingual else None
            return [], np.zeros((0, self.manifest.dim), np.float32), table
        return self.snapshot.document_vectors(doc_id)

    def _written_keys(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """(segment, row) of the rows holding these record ids in the segments this open commit has
        written (a flush's, not open until the commit), found through their ids.npy."""
        if not self._written:
            return []
        return [(seg, int(row)) for seg in self._written for row in
                np.flatnonzero(np.isin(np.load(self.path / f"seg-{seg:06d}" / "ids.npy", mmap_mode="r"), ids))]

    # ---------------------------------------------------------------- the commit

    def flush(self) -> None:
        """Write the pending documents as a segment and their records into the open commit (begun
        here if need be), and let them go from memory: a large build stays within bounded memory.
        Nothing is visible to readers until `commit`; `rollback` drops it all."""
        db = self._begin()
        rows = [r for p in self._pending for r in zip(p[1], p[4])]
        if rows:
            vectors = np.concatenate([p[2] for p in self._pending])
            xl = PassageVectors.concat([p[5] for p in self._pending]) if self.manifest.crosslingual else None
            ids = self._records.next_chunk_id() + np.arange(len(rows), dtype=np.int64)
            docs = np.repeat(term_keys([document_key(p[0]) for p in self._pending]), [len(p[1]) for p in self._pending])
            seg = self._write_segment(len(vectors), lambda folder, kind: write_segment(
                folder, ids, docs, vectors, [t for _, t in rows], xl, kind))
            self._written.append(seg[0])
            self._vectors.add(ids, [c.doc_id for c, _ in rows], vectors)
            db.execute("INSERT INTO segments VALUES (?, ?, ?)", seg)
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)",
                           ((i, c.doc_id, c.chunk_id, chunk_json(c)) for i, (c, _) in zip(ids.tolist(), rows)))
        db.executemany("INSERT OR IGNORE INTO deleted VALUES (?, ?)", sorted(self._marks))
        docs = self.manifest.documents
        db.executemany("DELETE FROM documents WHERE doc_id = ?", [(d,) for d, r in docs.pending.items() if r is None])
        text = {p[0].doc_id: p[3] for p in self._pending}
        db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)",
                       ((d, json.dumps(r.__dict__, ensure_ascii=False), text[d])
                        for d, r in docs.pending.items() if r is not None))
        db.executemany("UPDATE documents SET record = ? WHERE doc_id = ?",
                       ((json.dumps(r.__dict__, ensure_ascii=False), d) for d, r in self._touched.items()))
        self._pending, self._marks, self._touched, docs.pending = [], set(), {}, {}

    def _begin(self):
        """The open write transaction of this commit; the first call of a new index's commit also
        retires every segment and record of the index it replaces."""
        if self._txn is not None:
            return self._txn
        self.path.mkdir(parents=True, exist_ok=True)
        if self._records is None or not (self.path / DB_FILE).is_file():
            self._records = Records(self.path / DB_FILE, create=True)
            self.manifest.documents.records = self._records
        db = self._records.connection()
        db.execute("BEGIN IMMEDIATE")
        self._txn, self._written = db, []
        try:
            entry = self._vectors.begin(self._replace, self._records.next_chunk_id())
        except BaseException:
            self.rollback()
            raise
        if self._replace:
            gen = self._records.generation() + 1
            old, self.manifest.vectors = _old_vectors(self._records, self.path), entry
            note_replaced(db, self._records.meta(), old, entry, gen)
            db.execute("INSERT OR REPLACE INTO retired SELECT seg, ? FROM segments", [gen])
            db.execute("INSERT OR REPLACE INTO dropped SELECT id, ? FROM chunks", [gen])
            for table in ("segments", "documents", "deleted"):
                db.execute(f"DELETE FROM {table}")
        return db

    def commit(self) -> Snapshot:
        """Flush what is pending, then switch to the new generation in one transaction (a kill
        before it leaves the old one whole); then merge while the policy names segments. The
        snapshot of what was committed (and merged)."""
        db = self._begin()
        try:
            self.flush()
            self._commit_meta(db, self._records.generation() + 1)
        except BaseException:
            self.rollback()
            raise
        db.execute("COMMIT")
        self._txn = None
        self._after_commit()
        while (positions := self._next_merge()) is not None:
            self.merge(positions)
        return self.snapshot

    def rollback(self) -> None:
        """Drop an unfinished commit: the index stays as it was; the segments it wrote are removed."""
        if self._txn is not None:
            self._txn.execute("ROLLBACK")
            self._txn = None
            for seg in self._written:
                shutil.rmtree(self.path / f"seg-{seg:06d}", ignore_errors=True)
            self._vectors.abort()
        self._pending, self._marks, self._unindexed, self._touched = [], set(), set(), {}

    def _commit_meta(self, db, gen: int) -> None:
        core = {f.name: getattr(self.manifest, f.name) for f in fields(Manifest) if f.name != "documents"}
        core["format_version"] = FOLDER_FORMAT
        for name in ("vectors", "sources"):  # the manifest format-3 tools of before these read, where they are empty
            if not core[name]:
                del core[name]
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [("manifest", json.dumps(core, ensure_ascii=False)), ("generation", str(gen))])

    def _write_segment(self, rows: int, write: Callable[[Path, str], None]) -> tuple[int, int, str]:
        """Write a new segment of `rows` rows (`write(folder, kind)` fills the folder; it is then
        fsynced and renamed into place) and return its (id, rows, kind)."""
        numbers = [int(m.group(1)) for p in self.path.iterdir() if (m := _SEG.match(p.name.lstrip(".").split(".")[0]))]
        used = [s for (s,) in self._records.query("SELECT seg FROM segments UNION SELECT seg FROM retired")]
        seg = max(numbers + used, default=0) + 1
        kind = self._vectors.kind(rows)
        name = f"seg-{seg:06d}"
        tmp = self.path / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write(tmp, kind)
            _fsync_tree(tmp)
            os.replace(tmp, self.path / name)
            _fsync_dir(self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return seg, rows, kind

    def _after_commit(self) -> None:
        """Reopen what was committed, then drop what no commit needs: segments retired before the
        previous commit (a reader of that one may still be opening them), their records, folders
        of writes that never committed, and the files of a format-1 index this one replaced."""
        unindexed = sorted(self._unindexed)
        self._pending, self._marks, self._unindexed, self._replace = [], set(), set(), False
        self.manifest.documents = DocTable(self._records)
        self.snapshot = Snapshot.opened(self.path, self._records,
                                        {s.seg: s for s in self.snapshot.rows.segments} if self.snapshot else {})
        gen = self._records.generation()
        if self._records.query("SELECT EXISTS (SELECT 1 FROM retired WHERE generation < ?)", [gen])[0][0]:
            if self.manifest.vectors:  # kept by id: they went when they were deleted, unless that was cut short
                unindexed += [i for (i,) in self._records.query(
                    "SELECT id FROM dropped WHERE generation < ? AND id >= ?", [gen, self.manifest.vectors["first"]])]
            with self._records.transaction() as db:
                db.execute("DELETE FROM chunks WHERE id IN (SELECT id FROM dropped WHERE generation < ?)", [gen])
                for table in ("dropped", "retired"):
                    db.execute(f"DELETE FROM {table} WHERE generation < ?", [gen])
        keep = {f"seg-{s:06d}" for (s,) in self._records.query("SELECT seg FROM segments UNION SELECT seg FROM retired")}
        for item in self.path.iterdir():
            stale = (_SEG.match(item.name) and item.name not in keep) or item.name.endswith(".tmp") or \
                item.name == "CURRENT" or item.name.startswith("gen-")
            if stale:
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        self._vectors.committed(unindexed, len(self.snapshot))
        retire_replaced(self._records, gen)
        originals.prune(self.path, self.manifest.documents.values())

    # ---------------------------------------------------------------- merges

    def _next_merge(self) -> list[int] | None:
        rows = self.snapshot.rows
        live = [len(s) if m is None else int(m.sum()) for s, _, m in rows.parts()]
        return next_merge(live, [s.kind for s in rows.segments], lambda n: choose_index_type(self.manifest.index_type, n))

    def optimize(self) -> int:
        """Merge every segment into one, dropping deleted rows; the number of segments merged."""
        rows = self.snapshot.rows
        n = len(rows.segments)
        if n > 1 or rows.dead:
            self.merge(list(range(n)))
        return n

    def merge(self, positions: list[int]) -> None:
        """Replace the segments at these positions by one holding their live rows, in order."""
        rows = self.snapshot.rows
        parts = [(rows.segments[i], rows.live_mask(i)) for i in positions]
        postings = Postings.merge([(s.postings, m) for s, m in parts])
        words = {}
        for s, _ in parts:
            words.update(zip(s.postings.keys.tolist(), s.vocabulary()))
        vocabulary = [words[k] for k in postings.keys.tolist()]
        live = sum(len(s) if m is None else int(m.sum()) for s, m in parts)
        seg = self._write_segment(live, lambda folder, kind: merge_segments(folder, parts, postings, vocabulary, kind))
        with self._records.transaction() as db:
            gen = self._records.generation() + 1
            db.execute("INSERT INTO segments VALUES (?, ?, ?)", seg)
            for s, m in parts:  # the live rows' records stay where they are; the deleted rows' go next commit
                if m is not None:
                    db.executemany("INSERT INTO dropped VALUES (?, ?)", ((i, gen) for i in s.ids[~m].tolist()))
                db.execute("DELETE FROM segments WHERE seg = ?", [s.seg])
                db.execute("DELETE FROM deleted WHERE seg = ?", [s.seg])
                db.execute("INSERT OR REPLACE INTO retired VALUES (?, ?)", [s.seg, gen])
            self._commit_meta(db, gen)
        self._after_commit()


def _old_vectors(records: Records, path: Path) -> dict:
    """The vectors entry of the index a build replaces ({}: none, or its manifest cannot be read)."""
    try:
        return read_manifest(records, path, upgrading=True).vectors
    except StoreError:
        return {}
