"""The record database against its alternatives (issue 15): the store's SQLite `Records` beside LMDB,
DuckDB and plain files, on the same synthetic chunk records, in one run.

    python -m bench.records 100000          # N chunk records (default 100000); JSON → bench/results/records.json

Records are what the folder store writes: `chunk_json` of `indexer.chunking.Chunk` (300–500
characters of text recombined from the sentences of data/speech.txt), 20 chunks a document, the
documents' records and full texts, in segments of 10,000 rows. Each candidate sits behind the small
`Candidate` interface (create, open, one durable commit, chunks by (segment, row), a document's live
keys, the generation, the check) and every workload runs for all of them, alternating, medians.
`sqlite-without-rowid` is the product's Records with one change, its chunks table WITHOUT ROWID (the
store's layout before this bench showed what it costs). Every candidate keys chunks (segment, row),
as format 2 did; format 3 keys them by a stable id that each segment maps its rows to, so that a
merge copies no record, which any candidate here could do alike. Durable
commits, counted with strace: sqlite 2 fdatasync, lmdb 1 (its meta page is written O_DSYNC),
duckdb 1 (its WAL), files 7 fsync (four segment files, the commit point, the folder twice).

    a  build: N records committed a segment at a time, and the size on disk
    b  one durable small commit on the N-record store: a changed document (its old keys looked up,
       20 rows as a new segment, 20 deletion marks, its record replaced, the generation bumped)
    c  cold process, warm page cache: a fresh Python opens the store (generation, segments, marks,
       as a store opening does) and reads 10 random records by key
    d  warm: 50 random records by key (a page of hits) and the live keys of one document
    e  the check: every live chunk record read (duplicate chunk ids, unknown documents, counts)
    f  a reader in another process (generation, then 10 records) while the writer makes 20 commits,
       each round
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexer.chunking import Chunk
from indexer.store.atomic import _fsync_dir
from indexer.store.base import DocRecord
from indexer.store.records import DB_FILE, SCHEMA, Records, chunk_from_json, chunk_json


from .common import fmt_table, system_info
from .corpus import ROOT, speech_sentences

# the product's schema with the chunks table format 2 kept, keyed (segment, row)
ROW_SCHEMA = SCHEMA[:SCHEMA.index("CREATE TABLE IF NOT EXISTS chunks")] + """CREATE TABLE chunks (seg INTEGER NOT NULL,
    row INTEGER NOT NULL, doc_id TEXT NOT NULL, chunk_id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (seg, row));
""" + SCHEMA[SCHEMA.index("CREATE INDEX"):]
Key = tuple[int, int]
SEGMENT_ROWS = 10_000
CHUNKS_PER_DOC = 20
OUT = ROOT / "bench" / "results" / "records.json"

# `check` in SQL (indexer/store/snapshot.py, Snapshot.problems): nothing parsed in Python.
# {chunks}: the document record's chunk count, as each SQL dialect reads it out of the JSON.
_LIVE = ("FROM chunks c WHERE c.seg IN (SELECT seg FROM segments) AND NOT EXISTS "
         "(SELECT 1 FROM deleted d WHERE d.seg = c.seg AND d.row = c.row)")
CHECKS = {
    "duplicate chunk ids": f"SELECT chunk_id {_LIVE} GROUP BY chunk_id HAVING count(*) > 1 LIMIT 3",
    "chunks of unknown documents": f"SELECT DISTINCT doc_id {_LIVE} AND doc_id NOT IN (SELECT doc_id FROM documents) LIMIT 3",
    "chunk count disagrees with the manifest for": (
        f"SELECT d.doc_id FROM documents d LEFT JOIN (SELECT doc_id, count(*) AS n {_LIVE} GROUP BY doc_id) "
        "h USING (doc_id) WHERE coalesce(h.n, 0) != {chunks} LIMIT 3"),
}


# ---------------------------------------------------------------- the records


@dataclass
class Batch:
    """One commit: a new segment's rows (doc_id, chunk_id, chunk JSON), its documents (doc_id,
    record JSON, text) and the deletion marks of the rows they replace."""

    seg: int
    rows: list[tuple[str, str, str]]
    docs: list[tuple[str, str, str]]
    marks: list[Key]


def make_document(d: int, version: int, sentences: list[str], rng: np.random.Generator) -> tuple[list, tuple]:
    """The rows and the document tuple of document `d` (a new `version` has a new text)."""
    doc_id = f"公文/{d // 100:03d}/通知-{d:06d}.txt"
    pieces, at = [], 0
    for position in range(CHUNKS_PER_DOC):
        want, text = int(rng.integers(300, 501)), ""
        while len(text) < want:
            text += sentences[int(rng.integers(len(sentences)))]
        pieces.append((position, at, text))
        at += len(text) + 1
    title = f"关于做好第{d}号工作的通知（第{version}版）"
    rows = [(doc_id, f"{doc_id}#{p}", chunk_json(Chunk(f"{doc_id}#{p}", doc_id, p, p, title, (title, f"第{p // 5 + 1}部分"),
                                                        start, start + len(text), text)))
            for p, start, text in pieces]
    full = "\n".join(text for _, _, text in pieces)
    record = DocRecord(doc_id, f"{d:08x}{version:056x}", title, f"/srv/docs/{doc_id}", "utf-8", CHUNKS_PER_DOC,
                       "2026-11-30T00:00:00+00:00", len(full), {"year": 2000 + d % 27, "dept": f"第{d % 9}处"})
    return rows, (doc_id, json.dumps(asdict(record), ensure_ascii=False), full)


def make_build(n: int, seed: int = 0) -> list[Batch]:
    """N rows as segments of SEGMENT_ROWS (whole documents), numbered from 1."""
    sentences, rng = speech_sentences(), np.random.default_rng(seed)
    docs_per_seg = SEGMENT_ROWS // CHUNKS_PER_DOC
    out, d = [], 0
    for seg in range(1, -(-n // SEGMENT_ROWS) + 1):
        rows, docs = [], []
        for _ in range(min(docs_per_seg, (n - d * CHUNKS_PER_DOC) // CHUNKS_PER_DOC)):
            r, doc = make_document(d, 0, sentences, rng)
            rows += r
            docs.append(doc)
            d += 1
        out.append(Batch(seg, rows, docs, []))
    return out


# ---------------------------------------------------------------- the candidates


def durable_write(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it and rename it into place (the caller fsyncs
    the folder once for all the files of a commit)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def python_problems(chunks: Iterable[tuple[str, str]], counts: dict[str, int]) -> list[str]:
    """The SQL checks done in Python: live chunks (doc_id, chunk_id) against documents' chunk counts."""
    seen, per_doc = Counter(), Counter()
    for doc_id, chunk_id in chunks:
        seen[chunk_id] += 1
        per_doc[doc_id] += 1
    found = {"duplicate chunk ids": [c for c, k in seen.items() if k > 1][:3],
             "chunks of unknown documents": [d for d in per_doc if d not in counts][:3],
             "chunk count disagrees with the manifest for": [d for d, k in counts.items() if per_doc[d] != k][:3]}
    return [f"{what} {ids}" for what, ids in found.items() if ids]


class Candidate(ABC):
    """One way to keep the records of a folder index; `path` is its own folder."""

    name = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @abstractmethod
    def create(self) -> None:
        """A new empty store (the folder exists and is empty)."""

    @abstractmethod
    def open(self, readonly: bool = False) -> None:
        ...

    @abstractmethod
    def close(self) -> None:
        ...

    @abstractmethod
    def commit(self, batch: Batch) -> None:
        """One durable commit: the segment, its documents, the marks and generation + 1, all or nothing."""

    @abstractmethod
    def snapshot(self) -> tuple[int, list[Key], int]:
        """What opening a store reads: (generation, [(segment, rows)], deletion marks)."""

    @abstractmethod
    def generation(self) -> int:
        ...

    @abstractmethod
    def chunks(self, keys: list[Key]) -> list[Chunk]:
        """The chunk records at these keys, in order."""

    @abstractmethod
    def doc_keys(self, doc_id: str) -> list[Key]:
        """The live keys of a document, sorted."""

    @abstractmethod
    def problems(self) -> list[str]:
        """`check`: every live chunk record against the documents."""

    def reader(self) -> "Candidate":
        """Another handle on the open store for a reader thread (cross-process where it can be)."""
        other = type(self)(self.path)
        other.open(readonly=True)
        return other

    def size(self) -> int:
        return sum(p.stat().st_blocks * 512 for p in self.path.rglob("*") if p.is_file())


class SqliteCandidate(Candidate):
    """The product: indexer.store.records.Records (WAL, synchronous=FULL), written as
    Writer.flush/commit write it, its chunks keyed (segment, row) (ROW_SCHEMA)."""

    name = "sqlite"
    schema = ROW_SCHEMA

    def create(self) -> None:
        with closing(sqlite3.connect(self.path / DB_FILE)) as db:
            db.executescript(self.schema)
        self.db = Records(self.path / DB_FILE)

    def open(self, readonly: bool = False) -> None:
        self.db = Records(self.path / DB_FILE)

    def close(self) -> None:
        self.db.connection().close()
        self.db = None

    def commit(self, batch: Batch) -> None:
        with self.db.transaction() as db:
            db.execute("INSERT INTO segments VALUES (?, ?, ?)", (batch.seg, len(batch.rows), "flat"))
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                           ((batch.seg, row, *r) for row, r in enumerate(batch.rows)))
            db.executemany("INSERT OR IGNORE INTO deleted VALUES (?, ?)", sorted(batch.marks))
            db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)", batch.docs)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", [str(self.db.generation() + 1)])

    def snapshot(self) -> tuple[int, list[Key], int]:
        db = self.db.connection()
        db.execute("BEGIN")  # as Snapshot.opened: one snapshot
        try:
            return self.db.generation(), [(s, r) for s, r, _ in self.db.segments()], len(self.db.deleted())
        finally:
            db.execute("COMMIT")

    def generation(self) -> int:
        return self.db.generation()

    def chunks(self, keys: list[Key]) -> list[Chunk]:
        found: dict[Key, Chunk] = {}
        for seg in {s for s, _ in keys}:
            rows = sorted({r for s, r in keys if s == seg})
            found.update(((seg, r), chunk_from_json(t)) for r, t in self.db.query(
                f"SELECT row, record FROM chunks WHERE seg = ? AND row IN ({','.join('?' * len(rows))})", [seg, *rows]))
        return [found[k] for k in keys]

    def doc_keys(self, doc_id: str) -> list[Key]:
        return sorted(self.db.query(f"SELECT c.seg, c.row {_LIVE} AND c.doc_id = ?", [doc_id]))

    def problems(self) -> list[str]:
        chunks = "json_extract(d.record, '$.chunks')"
        return [f"{what} {found}" for what, sql in CHECKS.items()
                if (found := [x for (x,) in self.db.query(sql.replace("{chunks}", chunks))])]


class SqliteWithoutRowidCandidate(SqliteCandidate):
    """The same Records, its chunks table WITHOUT ROWID (the store's layout before): a row over
    ~1 KB spills to an overflow page, most of a 4 KiB page each."""

    name = "sqlite-without-rowid"

    schema = ROW_SCHEMA.replace("PRIMARY KEY (seg, row));", "PRIMARY KEY (seg, row)) WITHOUT ROWID;")


class DuckdbCandidate(Candidate):
    """DuckDB (columnar, MVCC, WAL synced at commit) with the same tables; rows inserted a list at a
    time (unnest), DuckDB's fast path without a data frame."""

    name = "duckdb"
    FILE = "records.duckdb"

    def create(self) -> None:
        self.open()
        self.con.execute(ROW_SCHEMA.replace(" WITHOUT ROWID", ""))

    def open(self, readonly: bool = False) -> None:
        import duckdb

        self.con = duckdb.connect(str(self.path / self.FILE), read_only=readonly)

    def close(self) -> None:
        self.con.close()
        self.con = None

    def reader(self) -> "Candidate":
        other = DuckdbCandidate(self.path)
        other.con = self.con.cursor()  # one process only: another connection to the same database
        return other

    def _insert(self, verb: str, table: str, columns: list[list]) -> None:
        if columns and columns[0]:
            self.con.execute(f"{verb} INTO {table} SELECT {', '.join(['unnest(?)'] * len(columns))}", columns)

    def commit(self, batch: Batch) -> None:
        self.con.execute("BEGIN")
        try:
            gen = self.generation() + 1
            self.con.execute("INSERT INTO segments VALUES (?, ?, ?)", [batch.seg, len(batch.rows), "flat"])
            self._insert("INSERT", "chunks", [[batch.seg] * len(batch.rows), list(range(len(batch.rows))),
                                              *map(list, zip(*batch.rows))])
            self._insert("INSERT OR IGNORE", "deleted", [list(c) for c in zip(*sorted(batch.marks))])
            self._insert("INSERT OR REPLACE", "documents", [list(c) for c in zip(*batch.docs)])
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", [str(gen)])
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _rows(self, sql: str, params: list) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

    def snapshot(self) -> tuple[int, list[Key], int]:
        self.con.execute("BEGIN")
        try:
            return (self.generation(), self._rows("SELECT seg, rows FROM segments ORDER BY seg", []),
                    len(self._rows("SELECT seg, row FROM deleted", [])))
        finally:
            self.con.execute("COMMIT")

    def generation(self) -> int:
        got = self._rows("SELECT value FROM meta WHERE key = 'generation'", [])
        return int(got[0][0]) if got else 0

    def chunks(self, keys: list[Key]) -> list[Chunk]:
        # a semi join on the keys: 1.5× faster here than one `row IN (…)` a segment (Records' form) or
        # a point query a key; every form is a scan (DuckDB keeps no index for such filters)
        found = {(s, r): text for s, r, text in self._rows(
            "SELECT c.seg, c.row, c.record FROM chunks c SEMI JOIN (SELECT unnest(?) AS seg, unnest(?) AS row) k "
            "ON c.seg = k.seg AND c.row = k.row", [[s for s, _ in keys], [r for _, r in keys]])}
        return [chunk_from_json(found[k]) for k in keys]

    def doc_keys(self, doc_id: str) -> list[Key]:
        return sorted(self._rows(f"SELECT c.seg, c.row {_LIVE} AND c.doc_id = ?", [doc_id]))

    def problems(self) -> list[str]:
        chunks = "CAST(json_extract_string(d.record, '$.chunks') AS BIGINT)"
        return [f"{what} {found}" for what, sql in CHECKS.items()
                if (found := [x for (x,) in self._rows(sql.replace("{chunks}", chunks), [])])]


def pack(key: Key) -> bytes:
    return struct.pack(">II", *key)  # big-endian: byte order is (segment, row) order


class LmdbCandidate(Candidate):
    """LMDB (B+tree, copy-on-write, one writer, readers never wait; sync=True: durable commits):
    sub-dbs chunks (packed key → chunk JSON), doc_rows (doc_id → packed keys, dupsort), deleted,
    docs (doc_id → record), texts, meta (generation, segments)."""

    name = "lmdb"
    SUBS = ("meta", "chunks", "doc_rows", "deleted", "docs", "texts")

    def create(self) -> None:
        self.open()

    def open(self, readonly: bool = False) -> None:
        import lmdb

        self.env = lmdb.open(str(self.path), map_size=1 << 36, max_dbs=len(self.SUBS), readonly=readonly,
                             sync=True, metasync=True)
        self.db = {n: self.env.open_db(n.encode(), dupsort=n == "doc_rows", create=not readonly) for n in self.SUBS}

    def close(self) -> None:
        self.env.close()
        self.env = None

    def _meta(self, txn) -> tuple[int, list[Key]]:
        got = txn.get(b"state", db=self.db["meta"])
        state = json.loads(got) if got else {"generation": 0, "segments": []}
        return state["generation"], [tuple(s) for s in state["segments"]]

    def commit(self, batch: Batch) -> None:
        with self.env.begin(write=True) as txn:
            gen, segments = self._meta(txn)
            keys = [pack((batch.seg, row)) for row in range(len(batch.rows))]
            txn.cursor(self.db["chunks"]).putmulti(zip(keys, (r[2].encode() for r in batch.rows)), append=True)
            txn.cursor(self.db["doc_rows"]).putmulti(zip((r[0].encode() for r in batch.rows), keys))
            txn.cursor(self.db["deleted"]).putmulti((pack(k), b"") for k in sorted(batch.marks))
            txn.cursor(self.db["docs"]).putmulti((d.encode(), r.encode()) for d, r, _ in batch.docs)
            txn.cursor(self.db["texts"]).putmulti((d.encode(), t.encode()) for d, _, t in batch.docs)
            state = {"generation": gen + 1, "segments": [*segments, (batch.seg, len(batch.rows))]}
            txn.put(b"state", json.dumps(state).encode(), db=self.db["meta"])

    def snapshot(self) -> tuple[int, list[Key], int]:
        with self.env.begin() as txn:
            gen, segments = self._meta(txn)
            return gen, segments, sum(1 for _ in txn.cursor(self.db["deleted"]).iternext(values=False))

    def generation(self) -> int:
        with self.env.begin() as txn:
            return self._meta(txn)[0]

    def chunks(self, keys: list[Key]) -> list[Chunk]:
        with self.env.begin() as txn:
            return [chunk_from_json(txn.get(pack(k), db=self.db["chunks"]).decode()) for k in keys]

    def doc_keys(self, doc_id: str) -> list[Key]:
        with self.env.begin() as txn:
            live = {s for s, _ in self._meta(txn)[1]}
            cursor = txn.cursor(self.db["doc_rows"])
            packed = list(cursor.iternext_dup(keys=False)) if cursor.set_key(doc_id.encode()) else []
            return sorted(k for p in packed if (k := struct.unpack(">II", p))[0] in live
                          and txn.get(p, db=self.db["deleted"]) is None)

    def problems(self) -> list[str]:
        with self.env.begin() as txn:
            live = {s for s, _ in self._meta(txn)[1]}
            dead = {bytes(k) for k in txn.cursor(self.db["deleted"]).iternext(values=False)}
            counts = {d.decode(): json.loads(r)["chunks"] for d, r in txn.cursor(self.db["docs"])}

            def live_chunks() -> Iterator[tuple[str, str]]:
                for k, v in txn.cursor(self.db["chunks"]):
                    if k not in dead and struct.unpack(">II", k)[0] in live:
                        rec = json.loads(v)
                        yield rec["doc_id"], rec["chunk_id"]

            return python_problems(live_chunks(), counts)


class FilesCandidate(Candidate):
    """No database: per segment an append-only JSONL of chunk records, a memory-mapped numpy array
    of line offsets, the documents' index (doc_id → first row, rows, record) and texts; the commit
    point (generation, segments, then the deletion marks as packed int64) one small file rewritten
    atomically (temp + fsync + rename + folder fsync)."""

    name = "files"
    COMMIT = "commit"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.open()

    def open(self, readonly: bool = False) -> None:
        self._seg_cache: dict[int, tuple] = {}
        self._load()

    def close(self) -> None:
        for fd, _, _ in self._seg_cache.values():
            os.close(fd)
        self._seg_cache = {}

    def _load(self) -> None:
        """Read the commit point: generation, segments, deletion marks."""
        try:
            data = (self.path / self.COMMIT).read_bytes()
        except FileNotFoundError:
            self.gen, self.segments, self.marks = 0, [], np.zeros(0, np.int64)
            return
        head, _, marks = data.partition(b"\n")
        state = json.loads(head)
        self.gen, self.segments = state["generation"], [tuple(s) for s in state["segments"]]
        self.marks = np.frombuffer(marks, np.int64)

    def _seg(self, seg: int) -> tuple[int, np.ndarray, dict]:
        """(file descriptor of its JSONL, offsets memory-mapped, documents' index) of a segment, opened once."""
        if seg not in self._seg_cache:
            name = self.path / f"seg-{seg:06d}"
            self._seg_cache[seg] = (os.open(f"{name}.jsonl", os.O_RDONLY), np.load(f"{name}.off.npy", mmap_mode="r"), {})
        return self._seg_cache[seg]

    def _docs(self, seg: int) -> dict:
        index = self._seg(seg)[2]
        if not index:
            index.update(json.loads((self.path / f"seg-{seg:06d}.docs.json").read_bytes()))
        return index

    def commit(self, batch: Batch) -> None:
        name = f"seg-{batch.seg:06d}"
        lines = [r[2].encode() + b"\n" for r in batch.rows]
        offsets = np.zeros(len(lines) + 1, np.int64)
        np.cumsum([len(x) for x in lines], out=offsets[1:])
        first, count = {}, Counter(r[0] for r in batch.rows)
        for row, r in enumerate(batch.rows):
            first.setdefault(r[0], row)
        index = {d: [first[d], count[d], json.loads(rec)] for d, rec, _ in batch.docs}
        texts = "".join(json.dumps({"doc_id": d, "text": t}, ensure_ascii=False) + "\n" for d, _, t in batch.docs)
        buf = _npy_bytes(offsets)
        for suffix, data in ((".jsonl", b"".join(lines)), (".off.npy", buf), (".docs.json", _json_bytes(index)),
                             (".texts.jsonl", texts.encode())):
            durable_write(self.path / f"{name}{suffix}", data)
        _fsync_dir(self.path)
        self._load()  # the commit point as last committed (one writer: the lock is the store's)
        marks = np.union1d(self.marks, np.array([(s << 32) | r for s, r in batch.marks], np.int64))
        head = json.dumps({"generation": self.gen + 1, "segments": [*self.segments, (batch.seg, len(lines))]})
        durable_write(self.path / self.COMMIT, head.encode() + b"\n" + marks.tobytes())
        _fsync_dir(self.path)
        self._load()

    def snapshot(self) -> tuple[int, list[Key], int]:
        self._load()
        return self.gen, self.segments, len(self.marks)

    def generation(self) -> int:
        with open(self.path / self.COMMIT, "rb") as fh:
            return json.loads(fh.readline())["generation"]

    def _record(self, key: Key) -> bytes:
        fd, offsets, _ = self._seg(key[0])
        start, end = int(offsets[key[1]]), int(offsets[key[1] + 1])
        return os.pread(fd, end - start, start)

    def chunks(self, keys: list[Key]) -> list[Chunk]:
        return [chunk_from_json(self._record(k).decode()) for k in keys]

    def _dead(self) -> set[int]:
        return set(self.marks.tolist())

    def doc_keys(self, doc_id: str) -> list[Key]:
        dead = self.rows.dead()
        return [(s, r) for s, _ in self.segments if (got := self._docs(s).get(doc_id))
                for r in range(got[0], got[0] + got[1]) if (s << 32) | r not in dead]

    def problems(self) -> list[str]:
        dead = self.rows.dead()
        counts = {d: got[2]["chunks"] for s, _ in self.segments for d, got in self._docs(s).items()}

        def live_chunks() -> Iterator[tuple[str, str]]:
            for s, _ in self.segments:
                lines = (self.path / f"seg-{s:06d}.jsonl").read_bytes().splitlines()
                for r, line in enumerate(lines):
                    if (s << 32) | r not in dead:
                        rec = json.loads(line)
                        yield rec["doc_id"], rec["chunk_id"]

        return python_problems(live_chunks(), counts)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


CANDIDATES: dict[str, type[Candidate]] = {c.name: c for c in (SqliteCandidate, SqliteWithoutRowidCandidate, LmdbCandidate,
                                                                DuckdbCandidate, FilesCandidate)}


# ---------------------------------------------------------------- the child processes (c and f)


def child(argv: list[str]) -> None:
    """`--probe NAME DIR` (c) or `--reader NAME DIR STOPFILE` (f); keys as JSON on stdin; JSON out."""
    mode, name, path = argv[0], argv[1], Path(argv[2])
    keys = [tuple(k) for k in json.loads(sys.stdin.readline())]
    start = time.perf_counter()
    cand = CANDIDATES[name](path)
    try:
        cand.open(readonly=True)
        cand.snapshot()
    except Exception as exc:  # noqa: BLE001 - reported: DuckDB refuses a second process
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}), flush=True)
        return
    opened = time.perf_counter()
    if mode == "--probe":
        cand.chunks(keys[:10])
        done = time.perf_counter()
        print(json.dumps({"open_ms": (opened - start) * 1e3, "read_ms": (done - opened) * 1e3,
                          "total_ms": (done - start) * 1e3}))
        return
    print(json.dumps({"ready": True}), flush=True)
    stop = Path(argv[3])
    print(json.dumps({"reads": read_loop(cand, keys, stop.exists)}), flush=True)


def read_loop(cand: Candidate, keys: list[Key], stop: Callable[[], bool]) -> list[tuple[float, float]]:
    """A page's reads until `stop`: the generation (is it current?) and 10 records; (start, seconds) each."""
    rng, out = np.random.default_rng(1), []
    while not stop():
        pick = [keys[i] for i in rng.integers(len(keys), size=10)]
        t = time.monotonic()
        cand.generation()
        cand.chunks(pick)
        out.append((t, time.monotonic() - t))
    return out


def spawn(args: list[str], keys: list[Key]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "bench.records", *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(json.dumps(keys) + "\n")
    proc.stdin.flush()
    return proc


# ---------------------------------------------------------------- the workloads


def rotations(names: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name): every candidate each round, the first one changing from round to round."""
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            yield i, name


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def replacements(n_docs: int, count: int, first_seg: int, seed: int) -> list[tuple[int, list, tuple]]:
    """(segment, rows, doc) of `count` changed documents, each a new version of a random old one."""
    sentences, rng = speech_sentences(), np.random.default_rng(seed)
    picks = rng.choice(n_docs, size=count, replace=False)
    return [(first_seg + i, *make_document(int(d), seed, sentences, rng)) for i, d in enumerate(picks)]


def change(cand: Candidate, seg: int, rows: list, doc: tuple) -> None:
    """What `add` of a changed document does: its old live keys, then one commit."""
    cand.commit(Batch(seg, rows, [doc], cand.doc_keys(doc[0])))


def run(n: int, workdir: Path, rounds: int = 3) -> dict:
    names = list(CANDIDATES)
    t0 = time.perf_counter()
    build = make_build(n)
    n_docs = sum(len(b.docs) for b in build)
    print(f"{n:,} chunk records, {n_docs:,} documents, {len(build)} segments "
          f"({sum(len(r[2].encode()) for b in build for r in b.rows) / 2**20:.0f} MiB of chunk JSON, "
          f"{sum(len(d[2].encode()) for b in build for d in b.docs) / 2**20:.0f} MiB of texts); "
          f"made in {time.perf_counter() - t0:.1f} s", flush=True)
    res: dict[str, dict] = {name: {} for name in names}
    cands = {name: CANDIDATES[name](workdir / name) for name in names}

    def fresh(name: str) -> Candidate:
        shutil.rmtree(workdir / name, ignore_errors=True)
        (workdir / name).mkdir(parents=True)
        cands[name].create()
        return cands[name]

    # a. build
    for _, name in rotations(names, rounds):
        cand = fresh(name)
        res[name].setdefault("build_s", []).append(timed(lambda: [cand.commit(b) for b in build]))
        cand.close()
        res[name]["size_mb"] = cands[name].size() / 2**20
    print("a. build done", flush=True)

    # b. one small durable commit: a changed document
    changes = replacements(n_docs, 20, len(build) + 1, seed=7)
    for name in names:
        cands[name].open()
    for seg, rows, doc in changes:
        for name in names:
            res[name].setdefault("commit_ms", []).append(timed(lambda: change(cands[name], seg, rows, doc)) * 1e3)
    for name in names:
        cands[name].close()
    print("b. commits done", flush=True)

    # c. cold process, warm page cache: open + 10 records
    rng = np.random.default_rng(3)
    keys = [(int(s), int(r)) for s, r in zip(rng.integers(1, len(build) + 1, 5000), rng.integers(0, SEGMENT_ROWS, 5000))]
    keys = [k for k in keys if k[1] < len(build[k[0] - 1].rows)]
    for i, name in rotations(names, rounds + 2):
        proc = spawn(["--probe", name, str(workdir / name)], keys[10 * i:])
        got = json.loads(proc.communicate()[0])
        for key in ("open_ms", "read_ms", "total_ms"):
            res[name].setdefault(f"cold_{key}", []).append(got[key])
    print("c. cold reads done", flush=True)

    # d, e. warm reads and the check, in this process
    for name in names:
        cands[name].open(readonly=True)
        cands[name].chunks(keys[:50])
    doc_ids = [d for b in build for d, _, _ in b.docs]
    for i, name in rotations(names, 30):
        cand, page = cands[name], keys[50 * (i % 90):50 * (i % 90) + 50]
        res[name].setdefault("page50_ms", []).append(timed(lambda: cand.chunks(page)) * 1e3)
        doc = doc_ids[(i * 7919) % len(doc_ids)]
        res[name].setdefault("doc_keys_ms", []).append(timed(lambda: cand.doc_keys(doc)) * 1e3)
    for _, name in rotations(names, rounds):
        found: list[str] = []
        res[name].setdefault("check_s", []).append(timed(lambda: found.extend(cands[name].problems())))
        assert not found, f"{name}: {found}"  # the store is consistent: a problem is a bug of the adapter
    answers = {name: ([c.text for c in cands[name].chunks(keys[:50])], cands[name].doc_keys(changes[0][2][0]))
               for name in names}
    assert all(a == answers["sqlite"] for a in answers.values()), "the candidates disagree"
    for name in names:
        cands[name].close()
    print("d, e. warm reads and the check done", flush=True)

    # f. a reader in another process while the writer commits
    more = replacements(n_docs, 20 * len(names) * rounds, len(build) + 1 + len(changes), seed=11)
    seen: dict[str, dict] = {name: {"during": [], "beside": [], "commits": []} for name in names}
    for j, (_, name) in enumerate(rotations(names, rounds)):
        got = reader_during_commits(cands[name], keys, more[20 * j:20 * j + 20], workdir)
        for key in ("during", "beside", "commits"):
            seen[name][key] += got.pop(key)
        seen[name] |= got
    for name, got in seen.items():
        during = got["during"]
        res[name]["reader"] = {"where": got["where"], "error": got["error"], "reads_during": len(during),
                               "reads_beside": len(got["beside"]), "during_p50_ms": _q(during, 50),
                               "during_p99_ms": _q(during, 99), "during_max_ms": _q(during, 100),
                               "during_over_5ms": sum(d > 0.005 for d in during),
                               "beside_p50_ms": _q(got["beside"], 50), "commit_p50_ms": _q(got["commits"], 50)}
    print("f. reader during commits done", flush=True)
    return res


def reader_during_commits(cand: Candidate, keys: list[Key], changes: list, workdir: Path) -> dict:
    """A reader's latencies (seconds) while these commits run: reads overlapping a commit (during) and
    the rest (beside), and the commits' times."""
    cand.open()
    stop = workdir / f"stop-{cand.name}"
    stop.unlink(missing_ok=True)
    proc = spawn(["--reader", cand.name, str(cand.path), str(stop)], keys)
    first = json.loads(proc.stdout.readline())
    where, thread, reads = "another process", None, []
    if "error" in first:  # one process only: a reader thread on its own connection instead
        proc.wait()
        where = "a thread: a 2nd process is refused" + (" (file lock)" if "lock" in first["error"] else "")
        other = cand.reader()
        thread = threading.Thread(target=lambda: reads.extend(read_loop(other, keys, stop.exists)))
        thread.start()
    time.sleep(0.5)
    windows = []
    for seg, rows, doc in changes:
        t = time.monotonic()
        change(cand, seg, rows, doc)
        windows.append((t, time.monotonic()))
        time.sleep(0.02)
    time.sleep(0.5)
    stop.touch()
    if thread is None:
        reads = json.loads(proc.stdout.readline())["reads"]
        proc.wait()
    else:
        thread.join()
    cand.close()
    overlap = [any(t < end and t + d > start for start, end in windows) for t, d in reads]
    return {"where": where, "error": first.get("error"), "during": [d for (_, d), o in zip(reads, overlap) if o],
            "beside": [d for (_, d), o in zip(reads, overlap) if not o], "commits": [e - s for s, e in windows]}


def _q(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1e3, 3) if values else None


# ---------------------------------------------------------------- the report


def summarise(res: dict[str, dict]) -> list[dict]:
    """Medians and ratios to SQLite, one row per candidate."""
    med = {name: {k: float(np.median(v)) for k, v in r.items() if isinstance(v, list)} | {"size_mb": r["size_mb"]}
           for name, r in res.items()}
    rows = []
    for name, m in med.items():
        row = {"candidate": name}
        for key in ("build_s", "size_mb", "commit_ms", "cold_total_ms", "page50_ms", "doc_keys_ms", "check_s"):
            base = med["sqlite"][key]
            row[key] = f"{m[key]:.3g} ({m[key] / base:.2f}×)" if base else f"{m[key]:.3g}"
        r = res[name]["reader"]
        row["reader"] = (f"{r['during_p50_ms']:.3g} / {r['during_p99_ms']:.3g} / {r['during_max_ms']:.3g} "
                         f"(beside: {r['beside_p50_ms']:.3g}); {r['where']}")
        rows.append(row)
    return rows


COLUMNS = [("candidate", "candidate"), ("build_s", "a. build s"), ("size_mb", "a. size MiB"),
           ("commit_ms", "b. commit ms"), ("cold_total_ms", "c. cold open + 10 reads ms"),
           ("page50_ms", "d. 50 by key ms"), ("doc_keys_ms", "d. doc's keys ms"), ("check_s", "e. check s"),
           ("reader", "f. reader ms during commits: p50 / p99 / max")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--probe", "--reader"):
        child(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=100_000, help="chunk records (default 100000)")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of the build and the check (default 3)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-records"), help="work folder (on a real disk)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    info = system_info()
    import duckdb
    import lmdb

    info |= {"sqlite": __import__("sqlite3").sqlite_version, "lmdb": lmdb.version(), "lmdb_py": lmdb.__version__,
             "duckdb": duckdb.__version__}
    start = time.perf_counter()
    res = run(args.n, args.dir, args.rounds)
    rows = summarise(res)
    print(f"\n{args.n:,} chunk records; medians; (ratio to SQLite)\n")
    print(fmt_table(rows, COLUMNS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "system": info, "wall_s": round(time.perf_counter() - start, 1),
                                    "table": rows, "raw": res}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"\n→ {args.out} ({time.perf_counter() - start:.0f} s)")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
