"""The record database of a folder index: SQLite (standard library), one file, one transaction per
commit.

It holds everything that is not a vector or a posting list, and it is the index's commit point:
    meta       the manifest's settings (model, chunking, analyzer …) and the commit generation
    segments   the live segments, in order (their files are in the folder, seg-NNNNNN/)
    retired    segments merged away, kept one more commit for readers that are still opening them
    documents  one row per document: its record (hash, title, origin, source, metadata) and its full text
    chunks     one row per chunk, keyed by a stable id that never changes or returns (AUTOINCREMENT);
               each segment maps its rows to these ids (its ids.npy), so a merge writes the ids of
               the rows it keeps and moves no record. A rowid table: in a WITHOUT ROWID one each
               ~1.7 KB record spills into an overflow page of its own (bench/records.py: the file
               42% larger, a page of hits 2.3x slower)
    deleted    deletion marks (segment, row): a removed or replaced document's old chunks
    dropped    the records of deleted rows a merge left behind, removed one commit later
Segments are immutable: a write adds one and marks deletions; the commit that names it is one
SQLite transaction, so a kill leaves the old commit or the new one. Readers use WAL snapshots and
never wait for a writer. Chunk records are read by id when a hit needs them, so a search never
loads the records of the whole index. Every record is held by exactly one live segment's row or
waits in `dropped`: opening checks those counts agree.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..errors import StoreError
from .base import DocRecord

DB_FILE = "records.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (seg INTEGER PRIMARY KEY, rows INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retired (seg INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, record TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL,
                                   chunk_id TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks (doc_id, chunk_id);  -- covers check's scan of the live chunks
CREATE TABLE IF NOT EXISTS deleted (seg INTEGER NOT NULL, row INTEGER NOT NULL, PRIMARY KEY (seg, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dropped (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
"""
_CHUNK_FIELDS = ("chunk_id", "doc_id", "text", "start", "end", "position", "section_path", "paragraph")


def chunk_json(chunk: Chunk) -> str:
    return json.dumps(asdict(chunk), ensure_ascii=False)


def chunk_from_json(text: str) -> Chunk:
    data = json.loads(text)
    data["section_path"] = tuple(data.get("section_path", ()))
    return Chunk(**data)


def chunk_key(chunk_id: str) -> tuple[str, int]:
    """A chunk id (`doc#position`) as (document id, position), the order of chunk ids."""
    doc_id, _, position = chunk_id.rpartition("#")
    return doc_id, int(position)


def doc_from_json(text: str) -> DocRecord:
    return DocRecord.from_json(json.loads(text))


class Records:
    """One connection per thread to an index's record database (SQLite allows a connection one
    thread at a time; the page serves many)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path.parent}: the record database {DB_FILE} is missing")
        self._local = threading.local()
        if create:
            self.connection().executescript(SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits itself

    def connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=60)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path.parent}: {DB_FILE} is damaged ({exc})") from None
            self._local.db = db
        return db

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        try:
            return self.connection().execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path.parent}: {DB_FILE} is damaged ({exc})") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: every change inside lands together or not at all."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ---------------------------------------------------------------- reads

    def meta(self) -> dict[str, str]:
        return dict(self.query("SELECT key, value FROM meta"))

    def generation(self) -> int:
        got = self.query("SELECT value FROM meta WHERE key = 'generation'")
        return int(got[0][0]) if got else 0

    def segments(self) -> list[tuple[int, int, str]]:
        """(segment, rows, index kind) of the live segments, in order."""
        return self.query("SELECT seg, rows, kind FROM segments ORDER BY seg")

    def deleted(self) -> list[tuple[int, int]]:
        return self.query("SELECT seg, row FROM deleted")

    def chunks(self, ids: list[int]) -> list[Chunk]:
        """The chunk records of these ids, in the order given."""
        return [chunk_from_json(text) for text in self._by_id(ids, "record")]

    def chunk_names(self, ids: list[int]) -> list[str]:
        """The chunk ids (`doc#position`) of these record ids, in the order given (no record is read)."""
        return self._by_id(ids, "chunk_id")

    def _by_id(self, ids: list[int], column: str) -> list:
        """One column of the chunk rows of these record ids, in the order given."""
        found: dict[int, object] = {}
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), 900):  # SQLite's limit on bound parameters
            part = wanted[start:start + 900]
            found.update(self.query(f"SELECT id, {column} FROM chunks WHERE id IN ({','.join('?' * len(part))})", part))
        missing = [i for i in ids if i not in found]
        if missing:
            raise StoreError(f"{self.path.parent}: no chunk record with id {missing[0]}")
        return [found[i] for i in ids]

    def chunk_ids(self, doc_ids: Iterable[str]) -> np.ndarray:
        """The ids of every chunk record of these documents (the segments tell which are live)."""
        docs = sorted(set(doc_ids))
        out: list[int] = []
        for start in range(0, len(docs), 900):
            part = docs[start:start + 900]
            out += [i for (i,) in self.query(f"SELECT id FROM chunks WHERE doc_id IN ({','.join('?' * len(part))})", part)]
        return np.array(sorted(out), np.int64)

    def next_chunk_id(self) -> int:
        """The id the next chunk record gets: ids are never reused, even after their record is gone."""
        got = self.query("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'")
        return (got[0][0] if got else 0) + 1

    def held(self) -> int:
        """How many chunk records a live segment should hold: all but those waiting in `dropped`."""
        return self.query("SELECT (SELECT count(*) FROM chunks) - (SELECT count(*) FROM dropped)")[0][0]


class DocTable(Mapping):
    """The documents of an index as a mapping doc_id → DocRecord, read from the record database as
    they are asked for; changes made by a writer before its commit are kept on top (`pending`)."""

    def __init__(self, records: Records | None) -> None:
        self.records = records
        self.pending: dict[str, DocRecord | None] = {}  # None: removed
        self._count: int | None = None

    def __getitem__(self, doc_id: str) -> DocRecord:
        if doc_id in self.pending:
            got = self.pending[doc_id]
            if got is None:
                raise KeyError(doc_id)
            return got
        rows = self.records.query("SELECT record FROM documents WHERE doc_id = ?", [doc_id]) if self.records else []
        if not rows:
            raise KeyError(doc_id)
        return doc_from_json(rows[0][0])

    def __contains__(self, doc_id: object) -> bool:
        try:
            self[doc_id]
        except KeyError:
            return False
        return True

    def _saved_ids(self) -> list[str]:
        return [d for (d,) in self.records.query("SELECT doc_id FROM documents ORDER BY rowid")] if self.records else []

    def __iter__(self) -> Iterator[str]:
        saved = self._saved_ids()
        known = set(saved)
        yield from (d for d in saved if self.pending.get(d, True) is not None)
        yield from (d for d, rec in self.pending.items() if rec is not None and d not in known)

    def __len__(self) -> int:
        if not self.pending:
            if self._count is None:
                self._count = self.records.query("SELECT count(*) FROM documents")[0][0] if self.records else 0
            return self._count
        return sum(1 for _ in self)

    def values(self):
        """Every record, read in one query (a filter over the metadata of every document needs them)."""
        saved = {d: doc_from_json(r) for d, r in self.records.query(
            "SELECT doc_id, record FROM documents ORDER BY rowid")} if self.records else {}
        for d, rec in self.pending.items():
            saved.pop(d, None)
            if rec is not None:
                saved[d] = rec
        return list(saved.values())

    def __setitem__(self, doc_id: str, record: DocRecord) -> None:
        self.pending[doc_id] = record

    def pop(self, doc_id: str, default=None):
        got = self.get(doc_id, default)
        self.pending[doc_id] = None
        return got
