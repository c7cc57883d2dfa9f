"""The embedded default store: a folder of immutable segments beside a SQLite record database.

    DIR/records.db     the records and the commit point (indexer.store.records)
    DIR/seg-NNNNNN/    one segment: vectors, vector index, postings, sentence table (indexer.store.segment)
    DIR.lock           the writers' lock (readers never wait)
Where the vectors live is behind indexer.store.vectors: FAISS files in each segment, or (an index
built with a Milvus location) a Milvus collection keyed by record id; everything else is as here.
A write adds one segment and deletion marks, and commits them in one SQLite transaction: it costs
what it changes, and a kill leaves the old commit or the new one. A search runs over every
segment and joins the results exactly: BM25 takes its statistics from all segments' live rows,
exact (flat) dense search scores every live row, so scores do not depend on how the index is
segmented (an approximate segment, IVF at 100k rows and more by default, is as exact as its index).
Segments are merged when ten of one size tier pile up (`MERGE_FACTOR`), the flat ones into one
approximate segment once together they reach its size (`APPROX_ABOVE`), and all at once by
`optimize`. Rows are global: a segment's rows follow the previous segment's, deleted ones included.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..crosslingual import PassageVectors
from ..errors import StoreError
from ..keyword import Analyzer, Postings, bm25, term_keys, top_positive
from .atomic import _fsync_dir, _fsync_tree, writer_lock
from .base import DocRecord, Manifest, check_upsert, empty_table, now
from .legacy import is_legacy, read_legacy, stable_ids
from .records import DB_FILE, DocTable, Records, chunk_json, chunk_key
from .segment import Segment, merge_segments, write_segment
from .vectors import retire, vectors_of

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
LOCK_TIMEOUT_ENV = "INDEXER_LOCK_TIMEOUT"  # seconds a writer waits for another writer
APPROX_ABOVE = 100_000  # auto: exact search below this many vectors in a segment, IVF from there
MERGE_FACTOR = 10  # this many segments of one size tier (a power of ten of live rows) are merged
FOLDER_FORMAT = 3  # 1: one generation folder rewritten whole (indexer.store.legacy); 2: segments + records.db,
# records keyed (segment, row); 3: records keyed by a stable id, each segment's rows mapped to ids (ids.npy)
XL_BLOCK = 8192  # rows per piece of the sentence table the USE route scores, in place (numpy's fallback: ~70 MB of float32)
# check's record checks in SQL, one statement reading the live chunks once: (what, an example) rows
CHECK_SQL = """
WITH live AS MATERIALIZED (SELECT chunk_id, doc_id FROM chunks WHERE id NOT IN (SELECT id FROM dropped)
                           AND id NOT IN (SELECT value FROM json_each(?))),  -- ? the deleted rows' ids
     counts AS MATERIALIZED (SELECT doc_id, count(*) AS n FROM live GROUP BY doc_id)
SELECT * FROM (SELECT 'duplicate chunk ids', chunk_id FROM live GROUP BY chunk_id HAVING count(*) > 1 LIMIT 3)
UNION ALL
SELECT * FROM (SELECT 'chunks of unknown documents', doc_id FROM counts
               WHERE doc_id NOT IN (SELECT doc_id FROM documents) LIMIT 3)
UNION ALL
SELECT * FROM (SELECT 'chunk count disagrees with the manifest for', d.doc_id FROM documents d
               LEFT JOIN counts h USING (doc_id) WHERE coalesce(h.n, 0) != json_extract(d.record, '$.chunks') LIMIT 3)
"""
_SEG = re.compile(r"^seg-(\d{6,})$")
RETIRED_VECTORS = "retired_vectors"  # meta: the vectors entries of replaced indexes, and the generation that replaced each


def choose_index_type(requested: str, n: int) -> str:
    """The concrete FAISS index kind for a segment of `n` vectors: flat is exact and fast enough
    when small; from APPROX_ABOVE, IVF-Flat (recall@10 0.9998 at 1M in 1.4 ms, README "Speed"): it
    builds 6x faster than HNSW, which a merge pays, and its lists are memory-mapped, so opening a
    segment reads nothing (FAISS reads an HNSW graph whole)."""
    if requested not in INDEX_TYPES:
        raise StoreError(f"unknown index type {requested!r}; choose one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "ivf" if n >= APPROX_ABOVE else "flat"


def _tier(rows: int) -> int:
    return len(str(max(rows, 1)))


def _upgrade_hint(path: Path, version: int) -> str:
    what = {1: "rewritten whole on every change", 2: "its chunk records keyed by segment and row"}[version]
    return f"{path} is an index of format {version} ({what}); convert it once with `python -m indexer upgrade --index {path}`"


class FaissStore:
    """Segments (vectors, postings, sentence tables) + records; writes wait in memory until `save`.
    `vectors`: a Milvus location for a new index's vectors (credentials as given; the manifest keeps
    it without them)."""

    def __init__(self, path: Path, manifest: Manifest, records: Records | None = None, vectors: str | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._vectors = vectors_of(self, vectors)
        self._unindexed: set[int] = set()  # record ids of rows deleted in the commit being made
        self._records = records
        self._replace = records is None  # a new store: its first save replaces whatever index was there
        if not isinstance(manifest.documents, DocTable):
            manifest.documents = DocTable(records)
        self._segments: list[Segment] = []
        self._bases = np.zeros(1, np.int64)
        self._dead: dict[int, np.ndarray] = {}  # segment → bool mask of deleted rows (only where any)
        self._pending: list[tuple[DocRecord, list[Chunk], np.ndarray, str, list[list[str]], PassageVectors | None]] = []
        self._marks: set[tuple[int, int]] = set()  # deletion marks not yet committed
        self._live: np.ndarray | None = None
        self._bm25_memo: tuple | None = None
        self._txn = None  # the open write transaction of a commit being made (flush / save)
        self._written: list[int] = []  # segments written in it
        self.generation: str | None = None

    # ---------------------------------------------------------------- opening

    @staticmethod
    def exists(path: Path) -> bool:
        """Whether there is an index at `path`: False for no folder or an empty one, True for an
        index (of this format or the previous one); a StoreError for a folder of other files."""
        path = Path(path)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return False
        if (path / DB_FILE).is_file() or is_legacy(path):
            return True
        raise StoreError(f"{path} is not an index folder (no {DB_FILE})")

    @staticmethod
    def lock(path: Path):
        """The writers' lock of the index at `path` (a file lock beside the folder). A folder that
        holds other things and no index is refused: an index is never written into it."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not an index folder")
        if path.is_dir() and any(path.iterdir()) and not FaissStore.exists(path):
            raise StoreError(f"{path} is a folder with other files, not an index; choose another --index")
        return writer_lock(path, timeout=float(os.environ.get(LOCK_TIMEOUT_ENV, "600")))

    @classmethod
    def load(cls, path: Path) -> "FaissStore":
        """Open the committed index: the records' database and every live segment, memory-mapped."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"no index at {path}: build one with `python -m indexer build PATHS --index {path}`")
        if not (path / DB_FILE).is_file():
            raise StoreError(_upgrade_hint(path, 1) if is_legacy(path) else f"{path} is not an index folder (no {DB_FILE})")
        records = Records(path / DB_FILE)
        store = cls(path, read_manifest(records, path), records)
        store._open()
        return store

    def reopened(self) -> "FaissStore":
        """The index as last committed, keeping the segments that are still live open (a reader
        picks up a commit in time proportional to what changed)."""
        store = FaissStore(self.path, read_manifest(self._records, self.path), self._records)
        store._open({s.seg: s for s in self._segments})
        return store

    def _open(self, already: dict[int, Segment] | None = None) -> None:
        already = already or {}
        crosslingual = bool(self.manifest.crosslingual)
        db = self._records.connection()
        db.execute("BEGIN")  # one snapshot for the generation, the segments and the deletion marks
        try:
            gen = self._records.generation()
            segments = self._records.segments()
            marks = self._records.deleted()
            held = self._records.held()
        finally:
            db.execute("COMMIT")
        if held != (total := sum(rows for _, rows, _ in segments)):
            raise StoreError(f"{self.path}: the segments hold {total} rows but there are {held} chunk records")
        self._segments = [already[seg] if seg in already and len(already[seg]) == rows else Segment.open(
            seg, self.path / f"seg-{seg:06d}", kind, rows, self.manifest.dim, crosslingual) for seg, rows, kind in segments]
        self._bases = np.cumsum([0] + [len(s) for s in self._segments]).astype(np.int64)
        self._dead = {}
        position = {s.seg: i for i, s in enumerate(self._segments)}
        for seg, row in marks:
            if seg in position:
                mask = self._dead.setdefault(seg, np.zeros(len(self._segments[position[seg]]), bool))
                mask[row] = True
        self._live = self._bm25_memo = None
        self.generation = f"gen-{gen:06d}"

    def is_current(self) -> bool:
        """False once another process has committed a newer generation."""
        return self._records is not None and self.generation == f"gen-{self._records.generation():06d}"

    @property
    def location(self) -> str:
        return str(self.path)

    @staticmethod
    def display(location: str) -> str:
        """The index's location as shown to people."""
        return str(location)

    @property
    def keyword_backend(self) -> str:
        return "local BM25 over the segments' postings"

    # ---------------------------------------------------------------- rows

    def __len__(self) -> int:
        return int(self._bases[-1]) - sum(int(m.sum()) for m in self._dead.values()) + sum(
            len(p[1]) for p in self._pending)

    @property
    def index_kind(self) -> str:
        return self._vectors.describe()

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment position, local row) of global rows."""
        rows = np.asarray(rows, np.int64)
        at = np.searchsorted(self._bases, rows, "right") - 1
        return at, rows - self._bases[at]

    def _keys(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """(segment, local row) of global rows: deletion marks."""
        at, local = self._locate(rows)
        return [(self._segments[a].seg, int(r)) for a, r in zip(at.tolist(), local.tolist())]

    def _gather(self, rows: list[int], field: str, tail: tuple[int, ...], dtype) -> np.ndarray:
        """Each global row's entry of a per-segment array (`field`: its vector, its record id), in
        the order given."""
        out = np.zeros((len(rows), *tail), dtype)
        at, local = self._locate(np.asarray(rows, np.int64))
        for i in set(at.tolist()):
            pick = at == i
            out[pick] = getattr(self._segments[i], field)[local[pick]]
        return out

    def _ids(self, rows: list[int]) -> list[int]:
        """The chunk record ids of global rows."""
        return self._gather(rows, "ids", (), np.int64).tolist()

    def _live_where(self, local: Callable[[Segment], np.ndarray]) -> np.ndarray:
        """The live ones of each segment's rows `local(segment)` (ascending), as global rows, ascending."""
        parts = [np.zeros(0, np.int64)]
        for i, s in enumerate(self._segments):
            rows, mask = local(s), self._live_mask(i)
            parts.append((rows if mask is None else rows[mask[rows]]) + self._bases[i])
        return np.concatenate(parts)

    def _live_mask(self, i: int) -> np.ndarray | None:
        dead = self._dead.get(self._segments[i].seg)
        return None if dead is None else ~dead

    def live_rows(self) -> np.ndarray:
        """Every live row, ascending."""
        if self._live is None:
            self._live = np.concatenate([np.arange(len(s), dtype=np.int64)[m] + self._bases[i]
                                         if (m := self._live_mask(i)) is not None else
                                         np.arange(len(s), dtype=np.int64) + self._bases[i]
                                         for i, s in enumerate(self._segments)] or [np.zeros(0, np.int64)])
        return self._live

    def rows_with_terms(self, terms: list[str]) -> np.ndarray:
        """The live rows whose postings hold every one of these terms, ascending."""
        if not terms:
            return self.live_rows()
        keys = term_keys(dict.fromkeys(terms))
        return self._live_where(lambda s: s.postings.holding_all(keys))

    def rows_of(self, doc_ids: set[str]) -> np.ndarray:
        """The live rows of these documents, ascending."""
        ids = self._records.chunk_ids(doc_ids) if self._records and doc_ids else np.zeros(0, np.int64)
        return self._live_holding(ids)

    def _live_holding(self, ids: np.ndarray) -> np.ndarray:
        """The live rows whose record id is among `ids`, ascending."""
        return self._live_where(lambda s: s.rows_holding(ids))

    def chunks(self, rows: list[int]) -> list[Chunk]:
        return self._records.chunks(self._ids(rows)) if len(rows) else []

    def doc_ids(self, rows: list[int]) -> list[str]:
        return [c.doc_id for c in self.chunks(rows)]

    def tie_keys(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """Each row's chunk id as (document id, position): how equal scores are ordered (indexer.topk)."""
        return [chunk_key(name) for name in self._records.chunk_names(self._ids(rows))]

    # ---------------------------------------------------------------- search

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None,
               exact: bool = False) -> list[list[tuple[float, int]]]:
        """The k best live rows per query by inner product, best first (ties: indexer.topk);
        `exact`: every row scored, approximate segments too (what recall is measured against)."""
        return self._vectors.search(np.ascontiguousarray(queries, dtype=np.float32), k, doc_ids, exact)

    def dense_scores(self, queries: np.ndarray, rows: list[list[int]]) -> list[np.ndarray]:
        """Exact inner products of each query with the given rows' stored vectors."""
        return [self._vectors_at(r) @ np.asarray(q, dtype=np.float32) for q, r in zip(queries, rows)]

    def _vectors_at(self, rows: list[int]) -> np.ndarray:
        return self._vectors.fetch(rows)

    def _bm25(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """The live rows holding a query term (ascending), their BM25 and the ceiling; the last
        question's kept, as the keyword route asks for both."""
        key = tuple(terms)
        if self._bm25_memo is None or self._bm25_memo[0] != key:
            analyzer = Analyzer.of(self.manifest.keyword)
            parts, ceiling = bm25([(s.postings, self._live_mask(i)) for i, s in enumerate(self._segments)],
                                  list(terms), analyzer.k1, analyzer.b)
            rows = np.concatenate([hit + base for (hit, _), base in zip(parts, self._bases.tolist())] or [np.zeros(0, np.int64)])
            scores = np.concatenate([s for _, s in parts] or [np.zeros(0, np.float32)])
            self._bm25_memo = (key, rows, scores, ceiling)
        return self._bm25_memo[1:]

    def keyword_search(self, query_terms: list[str], k: int, doc_ids: set[str] | None = None,
                       rows: np.ndarray | None = None) -> list[tuple[float, int]]:
        """BM25 over every segment: the k best live rows with any query term (of these documents,
        and of these rows, ascending), best first."""
        hit, scores, _ = self._bm25(query_terms)
        allowed = None if doc_ids is None else self.rows_of(doc_ids)
        if rows is not None:
            allowed = rows if allowed is None else np.intersect1d(allowed, rows, assume_unique=True)
        top_s, top_r = top_positive(hit, scores, k, allowed, self.tie_keys)
        return [(float(s), int(r)) for s, r in zip(top_s, top_r)]

    def keyword_ceiling(self, query_terms: list[str]) -> float | None:
        """Σ idf of the query's terms over the live rows: BM25's ceiling (indexer.keyword.bm25)."""
        return self._bm25(query_terms)[2]

    def vocabulary(self) -> frozenset[str]:
        """Every keyword term of the live rows (read from the segments' files on the first
        cross-lingual question; a term only deleted rows hold is left out)."""
        out: set[str] = set()
        for i, s in enumerate(self._segments):
            words, live = s.vocabulary(), self._live_mask(i)
            if live is not None and len(words):
                held = np.logical_or.reduceat(live[s.postings.rows], s.postings.starts[:-1])
                words = [w for w, h in zip(words, held) if h]
            out.update(words)
        return frozenset(out)

    def sentence_tables(self) -> Iterator[tuple[int, PassageVectors]]:
        """The sentence table in pieces of at most XL_BLOCK rows, (first row, its table), in row order
        (deleted rows included, as rows are); nothing where the index keeps none. Each piece is a
        slice of the segment's float16 maps, read where it lies when it is scored."""
        if not self.manifest.crosslingual:
            return
        for base, s in zip(self._bases.tolist(), self._segments):
            for start in range(0, len(s), XL_BLOCK):
                yield base + start, s.stored_table().rows(start, min(len(s), start + XL_BLOCK))

    def sentence_count(self) -> int:
        """How many sentences the sentence table holds (0 without one)."""
        return sum(len(s.xl["owner"]) for s in self._segments if s.xl is not None)

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(spans, USE vectors, e5 vectors or None) of one row's sentences."""
        at, local = self._locate(np.array([row]))
        return self._segments[int(at[0])].sentences(int(local[0]))

    # ---------------------------------------------------------------- documents

    def document_text(self, doc_id: str) -> str:
        for doc, _, _, text, _, _ in self._pending:
            if doc.doc_id == doc_id:
                return text
        got = self._records.query("SELECT text FROM documents WHERE doc_id = ?", [doc_id]) if self._records else []
        if not got:
            raise KeyError(doc_id)
        return got[0][0]

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return sorted(self.chunks(self.rows_of({doc_id}).tolist()), key=lambda c: c.position)

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, PassageVectors | None]:
        """A saved document's chunks with their vectors and sentence table, row-aligned."""
        rows = self.rows_of({doc_id}).tolist()
        xl = None
        if self.manifest.crosslingual:
            at, local = self._locate(np.asarray(rows, np.int64))
            xl = PassageVectors.concat([self._segments[a].passages(r, r + 1)
                                        for a, r in zip(at.tolist(), local.tolist())]) if rows else empty_table(self.manifest)
        return self.chunks(rows), self._vectors_at(rows), xl

    def all_chunks(self) -> list[Chunk]:
        """Every live chunk, in row order (reads every record: for tools and tests)."""
        return self.chunks(self.live_rows().tolist())

    def vectors(self) -> np.ndarray:
        """Every live row's vector, in row order."""
        return self._vectors_at(self.live_rows().tolist())

    def recall_vs_exact(self, k: int = 10, sample: int = 200, seed: int = 0) -> float | None:
        """Recall@k of the search against exact search, stored vectors as queries (None when every
        segment is exact: nothing to measure)."""
        live = self.live_rows()
        if all(s.index is None for s in self._segments) or not len(live):
            return None
        rng = np.random.default_rng(seed)
        queries = self._vectors_at(rng.choice(live, size=min(sample, len(live)), replace=False).tolist())
        k = min(k, len(live))
        pairs = zip(self.search(queries, k), self.search(queries, k, exact=True))
        return float(np.mean([len({r for _, r in a} & {r for _, r in e}) / k for a, e in pairs]))

    # ---------------------------------------------------------------- writes (in memory until save)

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: PassageVectors | None = None) -> None:
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
        if self._records is not None:  # (a new store's commit retires every segment it did not write)
            ids = self._records.chunk_ids(drop)  # the open transaction sees its own records
            self._marks.update(self._written_keys(ids) + ([] if self._replace else self._keys(self._live_holding(ids))))
            if not self._replace:  # (a replaced index's vectors go with it)
                self._unindexed.update(ids.tolist())
        for doc_id in drop:
            self.manifest.documents.pop(doc_id, None)
        self.manifest.updated = now()

    def _written_keys(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """(segment, row) of the rows holding these record ids in the segments this open commit has
        written (a flush's, not open until the commit), found through their ids.npy."""
        if not self._written:
            return []
        return [(seg, int(row)) for seg in self._written for row in
                np.flatnonzero(np.isin(np.load(self.path / f"seg-{seg:06d}" / "ids.npy", mmap_mode="r"), ids))]

    def flush(self) -> None:
        """Write the pending documents as a segment and their records into the open commit (begun
        here if need be), and let them go from memory: a large build stays within bounded memory.
        Nothing is visible to readers until `save` commits; `rollback` drops it all."""
        db = self._begin()
        rows = [r for p in self._pending for r in zip(p[1], p[4])]
        if rows:
            vectors, xl = np.concatenate([p[2] for p in self._pending]), self._pending_xl()
            ids = self._records.next_chunk_id() + np.arange(len(rows), dtype=np.int64)
            seg = self._write_segment(len(vectors), lambda folder, kind: write_segment(
                folder, ids, vectors, [t for _, t in rows], xl, kind))
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
        self._pending, self._marks, docs.pending = [], set(), {}

    def _begin(self):
        """The open write transaction of this commit; the first call of a new store's commit also
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
            if old and old.get("collection") != entry.get("collection"):  # it goes a commit after this one
                retired = json.loads(self._records.meta().get(RETIRED_VECTORS, "[]")) + [{"vectors": old, "generation": gen}]
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [RETIRED_VECTORS, json.dumps(retired)])
            db.execute("INSERT OR REPLACE INTO retired SELECT seg, ? FROM segments", [gen])
            db.execute("INSERT OR REPLACE INTO dropped SELECT id, ? FROM chunks", [gen])
            for table in ("segments", "documents", "deleted"):
                db.execute(f"DELETE FROM {table}")
        return db

    def save(self) -> None:
        """Commit: flush what is pending, then switch to the new generation in one transaction
        (a kill before it leaves the old one whole); then merge if segments have piled up."""
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
        self._merge_tiers()

    def rollback(self) -> None:
        """Drop an unfinished commit: the index stays as it was; the segments it wrote are removed."""
        if self._txn is not None:
            self._txn.execute("ROLLBACK")
            self._txn = None
            for seg in self._written:
                shutil.rmtree(self.path / f"seg-{seg:06d}", ignore_errors=True)
            self._vectors.abort()
        self._pending, self._marks, self._unindexed = [], set(), set()

    def _pending_xl(self) -> PassageVectors | None:
        return PassageVectors.concat([p[5] for p in self._pending]) if self.manifest.crosslingual else None

    def _commit_meta(self, db, gen: int) -> None:
        core = {f.name: getattr(self.manifest, f.name) for f in fields(Manifest) if f.name != "documents"}
        core["format_version"] = FOLDER_FORMAT
        if not core["vectors"]:  # FAISS files: the manifest format-3 tools of before Milvus vectors read
            del core["vectors"]
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
        self._open({s.seg: s for s in self._segments})
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
        self._vectors.committed(unindexed)
        self._retire_collections(gen)

    def _retire_collections(self, gen: int) -> None:
        """Drop the collections of indexes that builds replaced before generation `gen` (a reader of
        the previous commit may still be searching one); a failure warns and is tried again after
        the next commit."""
        retired = json.loads(self._records.meta().get(RETIRED_VECTORS, "[]"))
        kept = [r for r in retired if r["generation"] >= gen]
        for r in retired:
            if r["generation"] < gen:
                try:
                    retire(r["vectors"])
                except StoreError as exc:
                    logging.getLogger(__name__).warning("%s (the replaced index's collection stays for now)", exc)
                    kept.append(r)
        if kept != retired:
            with self._records.transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [RETIRED_VECTORS, json.dumps(kept)])

    # ---------------------------------------------------------------- merges

    def _merge_tiers(self) -> None:
        """Merge while `_next_merge` names segments to merge."""
        while (positions := self._next_merge()) is not None:
            self.merge(positions)

    def _next_merge(self) -> list[int] | None:
        """MERGE_FACTOR segments of one size tier (Lucene's log merge); else every exactly searched
        segment, once together they hold enough rows for an approximate one: a question scans each
        flat segment whole, so without this nine flat segments of 99k rows each (one tier) would
        cost every question a scan of 891k vectors."""
        live = [len(s) if (m := self._live_mask(i)) is None else int(m.sum()) for i, s in enumerate(self._segments)]
        tiers: dict[int, list[int]] = {}
        for i, rows in enumerate(live):
            tiers.setdefault(_tier(rows), []).append(i)
        full = [members for _, members in sorted(tiers.items()) if len(members) >= MERGE_FACTOR]
        if full:
            return full[0][:MERGE_FACTOR]
        flat = [i for i, s in enumerate(self._segments) if s.kind == "flat"]
        rows = sum(live[i] for i in flat)
        return flat if len(flat) > 1 and choose_index_type(self.manifest.index_type, rows) != "flat" else None

    def optimize(self) -> int:
        """Merge every segment into one, dropping deleted rows; the number of segments merged."""
        n = len(self._segments)
        if n > 1 or self._dead:
            self.merge(list(range(n)))
        return n

    def merge(self, positions: list[int]) -> None:
        """Replace the segments at these positions by one holding their live rows, in order."""
        parts = [(self._segments[i], self._live_mask(i)) for i in positions]
        postings = Postings.merge([(s.postings, m) for s, m in parts])
        words = {}
        for s, _ in parts:
            words.update(zip(s.postings.keys.tolist(), s.vocabulary()))
        vocabulary = [words[k] for k in postings.keys.tolist()]
        rows = sum(len(s) if m is None else int(m.sum()) for s, m in parts)
        seg = self._write_segment(rows, lambda folder, kind: merge_segments(folder, parts, postings, vocabulary, kind))
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

    @classmethod
    def upgrade(cls, path: Path) -> str:
        """Convert an index of an earlier format at `path` into this one and say what was done
        (format 1: its records into records.db, its rows into one segment, its vectors unchanged;
        format 2: in place, indexer.store.legacy.stable_ids). Call with the lock held."""
        path = Path(path)
        if (path / DB_FILE).is_file():
            records = Records(path / DB_FILE)
            version = read_manifest(records, path, upgrading=True).format_version
            if version == FOLDER_FORMAT:
                raise StoreError(f"{path} is already an index of format {FOLDER_FORMAT}; nothing to upgrade")
            segments, chunks = stable_ids(path, records, FOLDER_FORMAT)
            cls.load(path)._after_commit()  # the retired segments' folders go
            return (f"upgraded {path} from format {version} to {FOLDER_FORMAT}: its {chunks} chunk records are keyed "
                    f"by a stable id and each of its {segments} segments maps its rows to theirs (ids.npy), so a "
                    "merge no longer copies records; vectors and postings unchanged")
        if not is_legacy(path):
            raise StoreError(f"no index at {path} to upgrade")
        manifest, chunks, texts, terms, vectors, xl = read_legacy(path)
        docs, manifest.documents = manifest.documents, {}
        manifest.format_version = FOLDER_FORMAT
        store = cls(path, manifest)
        rows_of: dict[str, list[int]] = {}
        for row, c in enumerate(chunks):
            rows_of.setdefault(c.doc_id, []).append(row)
        for doc_id, record in docs.items():
            rows = rows_of.get(doc_id, [])
            store.upsert(record, [chunks[r] for r in rows], vectors[rows], texts.get(doc_id, ""),
                         [terms[r] for r in rows], xl.take(np.asarray(rows, np.int64)) if xl is not None else None)
        store.save()
        return (f"upgraded {path} from format 1 to {FOLDER_FORMAT}: {len(docs)} documents and {len(chunks)} chunks "
                f"now in {DB_FILE} and one segment (vectors unchanged); the format-1 files were removed")

    # ---------------------------------------------------------------- checks

    def problems(self) -> list[str]:
        """Inconsistencies between the records, the segments and the documents (empty: none)."""
        out = self._vectors.problems()  # (one chunk record per row is checked on opening)
        for s in self._segments:
            if s.xl is not None:
                out.extend(f"segment {s.seg}: {p}" for p in s.stored_table().problems(
                    len(s), self.manifest.dim if self.manifest.crosslingual.get("e5_sentences") else None))
        # every record not waiting in `dropped` is held by exactly one row (compared in numpy: SQLite
        # would look each id up in the table's pages, 1.7 KB records among them)
        held = np.sort(np.concatenate([s.ids for s in self._segments] or [np.zeros(0, np.int64)]))
        stored = np.sort(np.array(json.loads(self._records.query(
            "SELECT json_group_array(id) FROM chunks WHERE id NOT IN (SELECT id FROM dropped)")[0][0]), np.int64))
        if not np.array_equal(held, stored):
            for what, ids in (("rows without a chunk record", np.setdiff1d(held, stored)),
                              ("chunk records no row holds", np.setdiff1d(stored, held))):
                out += [f"{what} {ids[:3].tolist()}"] if len(ids) else []
        dead = [s.ids[~m] for i, s in enumerate(self._segments) if (m := self._live_mask(i)) is not None]
        found: dict[str, list[str]] = {}
        for what, x in self._records.query(CHECK_SQL, [json.dumps(np.concatenate(dead or [[]]).tolist())]):
            found.setdefault(what, []).append(x)
        return out + [f"{what} {xs}" for what, xs in found.items()]


def _old_vectors(records: Records, path: Path) -> dict:
    """The vectors entry of the index a build replaces ({}: none, or its manifest cannot be read)."""
    try:
        return read_manifest(records, path, upgrading=True).vectors
    except StoreError:
        return {}


def read_manifest(records: Records, path: Path, upgrading: bool = False) -> Manifest:
    """The manifest kept in the record database; refuse a newer format than this code knows."""
    raw = records.meta().get("manifest")
    if raw is None:
        raise StoreError(f"no index at {path} (nothing was committed): build one with "
                         f"`python -m indexer build PATHS --index {path}`")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{path}: the manifest in {DB_FILE} is damaged ({exc})") from None
    version = data.get("format_version")
    if not isinstance(version, int) or version > FOLDER_FORMAT:
        raise StoreError(f"{path}: index format version {version!r} is newer than this tool "
                         f"understands ({FOLDER_FORMAT}); upgrade the tool")
    if version < FOLDER_FORMAT and not upgrading:
        raise StoreError(_upgrade_hint(path, version))
    try:
        return Manifest.from_json({**data, "documents": {}})
    except TypeError as exc:
        raise StoreError(f"{path}: the manifest in {DB_FILE} is damaged ({exc})") from None
