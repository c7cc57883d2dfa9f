"""A committed generation of a folder index, opened for reading: what every search runs on.

A Snapshot is read from one SQLite read transaction (the generation, the segments, the deletion
marks and the manifest of one commit) and never changes after; a newer commit is picked up by
`reopened()`, which keeps open the segments that are still live (a reader follows a commit in time
proportional to what changed). Readers never take the writers' lock and never wait for a writer.

A search runs over every segment and joins the results exactly: BM25 takes its statistics from
all segments' live rows, exact (flat) dense search scores every live row, so scores do not depend
on how the index is segmented (an approximate segment, IVF at 100k rows and more by default, is
as exact as its index). Rows are the snapshot's (indexer.store.rows); records are read by id for
the rows a caller shows.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..errors import StoreError
from ..postings import BM25, bm25, term_keys, top_positive
from .base import Manifest, empty_table
from .layout import read_manifest, records_of
from .records import DocTable, Records, chunk_key
from .rows import RowMap
from .segment import Segment
from .table import PassageVectors
from .vectors import reader_of

XL_BLOCK = 8192  # rows per piece of the sentence table the USE route scores, in place (numpy's fallback: ~70 MB of float32)
FETCH_ROWS = 65536  # about the rows one read of several questions' candidates gathers (~100 MB of float32 at 384)
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


class Snapshot:
    """One commit of the index at `path`: its manifest, its rows (segments and deletion marks) and
    its vectors, with the record database for what a search shows."""

    def __init__(self, path: Path, manifest: Manifest, records: Records, rows: RowMap, generation: int) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.records = records
        self.rows = rows
        self.generation = f"gen-{generation:06d}"
        self.vectors = reader_of(manifest, rows)
        self._bm25_memo: tuple | None = None
        self._docs_memo: dict[int, np.ndarray] = {}  # segment → its rows' document keys, where it keeps none
        self._documents_memo: tuple[np.ndarray, np.ndarray, int] | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def load(cls, path: Path) -> "Snapshot":
        """The index as last committed at `path`: the record database and every live segment,
        memory-mapped."""
        return cls.opened(Path(path), records_of(path))

    @classmethod
    def opened(cls, path: Path, records: Records, already: dict[int, Segment] | None = None) -> "Snapshot":
        """The last commit in `records`, reusing the segments of `already` that are still live."""
        already = already or {}
        db = records.connection()
        db.execute("BEGIN")  # one SQLite snapshot: the manifest, the generation, the segments, the marks
        try:
            manifest = read_manifest(records, path)
            gen = records.generation()
            segments = records.segments()
            marks = records.deleted()
            held = records.held()
        finally:
            db.execute("COMMIT")
        if held != (total := sum(rows for _, rows, _ in segments)):
            raise StoreError(f"{path}: the segments hold {total} rows but there are {held} chunk records")
        manifest.documents = DocTable(records)
        crosslingual = bool(manifest.crosslingual)
        opened = [already[seg] if seg in already and len(already[seg]) == rows else Segment.open(
            seg, path / f"seg-{seg:06d}", kind, rows, manifest.dim, crosslingual) for seg, rows, kind in segments]
        sizes = {s.seg: len(s) for s in opened}
        dead: dict[int, np.ndarray] = {}
        for seg, row in marks:
            if seg in sizes:
                dead.setdefault(seg, np.zeros(sizes[seg], bool))[row] = True
        return cls(path, manifest, records, RowMap(opened, dead), gen)

    def reopened(self) -> "Snapshot":
        """This snapshot while it is the last commit; else the last commit, keeping open the
        segments that are still live."""
        if self.generation == f"gen-{self.records.generation():06d}":
            return self
        return Snapshot.opened(self.path, self.records, {s.seg: s for s in self.rows.segments})

    @property
    def location(self) -> str:
        return str(self.path)

    def __len__(self) -> int:
        return len(self.rows)

    def stats(self, recall: bool = False) -> dict:
        """What `info` shows of the store: live chunks, the vector index, the keyword index, the
        sentence table's size; with `recall`, the vector index's recall@10 against exact search
        (None where it is exact; 200 exact searches: seconds at 1M chunks)."""
        out = {"chunks": len(self.rows), "index_type": self.vectors.describe(),
               "keyword_backend": "local BM25 over the segments' postings",
               "sentences": sum(len(s.xl["owner"]) for s in self.rows.segments if s.xl is not None)}
        return {**out, "recall@10_vs_exact": self.recall_vs_exact()} if recall else out

    # ---------------------------------------------------------------- rows

    def rows_of(self, doc_ids: set[str] | None = None) -> np.ndarray:
        """The live rows of these documents (None: every live row), ascending."""
        if doc_ids is None:
            return self.rows.live_rows()
        return self.rows.holding(self.records.chunk_ids(doc_ids) if doc_ids else np.zeros(0, np.int64))

    def rows_with_terms(self, terms: list[str]) -> np.ndarray:
        """The live rows whose postings hold every one of these terms, ascending."""
        if not terms:
            return self.rows.live_rows()
        keys = term_keys(dict.fromkeys(terms))
        return self.rows.live_where(lambda s: s.postings.holding_all(keys))

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """The chunk records of these rows, in the order given."""
        return self.records.chunks(self.rows.ids(rows).tolist()) if len(rows) else []

    def tie_keys(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """Each row's chunk id as (document id, position): how equal scores are ordered (indexer.topk)."""
        return [chunk_key(name) for name in self.records.chunk_names(self.rows.ids(rows).tolist())]

    # ---------------------------------------------------------------- search

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None,
               exact: bool = False) -> list[list[tuple[float, int]]]:
        """The k best live rows per query by inner product (of these documents), best first (equal
        scores by chunk id); `exact`: every row scored, approximate segments too (what recall is
        measured against)."""
        allowed = None if doc_ids is None else self.rows_of(doc_ids)
        return self.vectors.search(np.ascontiguousarray(queries, dtype=np.float32), k, allowed, doc_ids,
                                   self.tie_keys, exact)

    def dense_scores(self, queries: np.ndarray, rows: list[list[int]]) -> list[np.ndarray]:
        """Exact inner products of each query with the given rows' stored vectors. The vectors of
        several questions' rows are read together, each once (one round trip to a vector server for
        a batch, not one a question): the questions whose rows start within the same FETCH_ROWS."""
        reads = np.cumsum([0] + [len(r) for r in rows])[:-1] // FETCH_ROWS
        out: list[np.ndarray] = []
        for read in np.unique(reads):
            group = np.flatnonzero(reads == read)
            wanted = [np.asarray(rows[i], np.int64) for i in group]
            union, at = np.unique(np.concatenate(wanted), return_inverse=True)
            vectors = self.vectors.fetch(union.tolist())
            for i, where in zip(group, np.split(at, np.cumsum([len(w) for w in wanted])[:-1])):
                out.append(vectors[where] @ np.asarray(queries[i], dtype=np.float32))
        return out

    def _bm25(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """The live rows holding a query term (ascending), their BM25 and the ceiling; the last
        question's kept, as the keyword route asks for both."""
        key = tuple(terms)
        memo = self._bm25_memo
        if memo is None or memo[0] != key:
            params = BM25.of(self.manifest.keyword)
            parts, ceiling = bm25([(s.postings, mask) for s, _, mask in self.rows.parts()], list(terms),
                                  params.k1, params.b)
            rows = np.concatenate([hit + base for (hit, _), base in zip(parts, self.rows.bases.tolist())]
                                  or [np.zeros(0, np.int64)])
            scores = np.concatenate([s for _, s in parts] or [np.zeros(0, np.float32)])
            self._bm25_memo = memo = (key, rows, scores, ceiling)
        return memo[1:]

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
        """Σ idf of the query's terms over the live rows: BM25's ceiling (indexer.postings.bm25)."""
        return self._bm25(query_terms)[2]

    def document_bm25(self, query_terms: list[str], rows: list[int]) -> np.ndarray:
        """The BM25 of each row's document taken whole (its live chunks' term counts and lengths
        summed; idf and the average length over the live documents), for the query terms: the
        evidence a long notice gives beyond its one best chunk (search.score_fuse)."""
        keys, lengths, count = self._documents()
        params = BM25.of(self.manifest.keyword)
        wanted = np.unique(self._row_documents(np.asarray(rows, np.int64)))
        score = np.zeros(len(wanted), np.float64)
        avg = float(lengths.mean()) if count else 1.0
        norm = params.k1 * (1 - params.b + params.b * lengths[np.searchsorted(keys, wanted)] / avg)
        for term, repeats in Counter(t for t in query_terms if t).items():
            key = int(term_keys([term])[0])
            held, tf = [], []
            for s, base, live in self.rows.parts():
                found, counts = s.postings.lookup(key)
                if live is not None and len(found):
                    keep = live[found]
                    found, counts = found[keep], counts[keep]
                held.append(self._row_documents(found.astype(np.int64) + base))
                tf.append(counts)
            docs, at = np.unique(np.concatenate(held), return_inverse=True)
            if not len(docs):
                continue
            sums = np.bincount(at, weights=np.concatenate(tf))
            idf = np.log1p((count - len(docs) + 0.5) / (len(docs) + 0.5))
            pick = np.searchsorted(docs, wanted)
            hit = (pick < len(docs)) & (docs[np.minimum(pick, len(docs) - 1)] == wanted)
            term_tf = np.where(hit, sums[np.minimum(pick, len(docs) - 1)], 0.0)
            score += repeats * idf * term_tf / (term_tf + norm)
        return score[np.searchsorted(wanted, self._row_documents(np.asarray(rows, np.int64)))]

    def _row_documents(self, rows: np.ndarray) -> np.ndarray:
        """The document key of each row (segment.DOCS_FILE; for a segment without one, the key of its
        chunk records' document, read once per snapshot)."""
        at, local = self.rows.locate(rows)
        out = np.zeros(len(rows), np.int64)
        for i in set(at.tolist()):
            pick = at == i
            out[pick] = self._segment_documents(i)[local[pick]]
        return out

    def _segment_documents(self, i: int) -> np.ndarray:
        segment = self.rows.segments[i]
        if segment.docs is not None:
            return segment.docs
        memo = self._docs_memo.get(segment.seg)
        if memo is None:
            names = self.records.chunk_names(segment.ids.tolist())
            self._docs_memo[segment.seg] = memo = term_keys([chunk_key(n)[0] for n in names])
        return memo

    def _documents(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(every live document's key, ascending; its length in terms; how many there are), made once
        per snapshot (the first question that weighs documents pays it: 0.2 s at a million chunks)."""
        if self._documents_memo is None:
            keys, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
            for i, (s, _, live) in enumerate(self.rows.parts()):
                docs, sizes = self._segment_documents(i), s.postings.lengths.astype(np.int64)
                keys.append(docs if live is None else docs[live])
                lengths.append(sizes if live is None else sizes[live])
            unique, at = np.unique(np.concatenate(keys), return_inverse=True)
            self._documents_memo = (unique, np.bincount(at, weights=np.concatenate(lengths)).astype(np.float64),
                                    len(unique))
        return self._documents_memo

    def vocabulary(self, rows: np.ndarray | None = None) -> frozenset[str]:
        """Every keyword term of the live rows, or of these live rows only (read from the segments'
        files on the first cross-lingual question; a term only other rows hold is left out)."""
        chosen = None
        if rows is not None:
            chosen = np.zeros(int(self.rows.bases[-1]), bool)
            chosen[np.asarray(rows, np.int64)] = True
        out: set[str] = set()
        for s, base, live in self.rows.parts():
            words = s.vocabulary()
            keep = live if chosen is None else chosen[base:base + len(s)]
            if keep is not None and len(words):
                held = np.logical_or.reduceat(keep[s.postings.rows], s.postings.starts[:-1])
                words = [w for w, h in zip(words, held) if h]
            out.update(words)
        return frozenset(out)

    def sentence_tables(self) -> Iterator[tuple[int, PassageVectors]]:
        """The sentence table in pieces of at most XL_BLOCK rows, (first row, its table), in row order
        (deleted rows included, as rows are); nothing where the index keeps none. Each piece is a
        slice of the segment's float16 maps, read where it lies when it is scored."""
        if not self.manifest.crosslingual:
            return
        for s, base, _ in self.rows.parts():
            for start in range(0, len(s), XL_BLOCK):
                yield base + start, s.stored_table().rows(start, min(len(s), start + XL_BLOCK))

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(spans, USE vectors, e5 vectors or None) of one row's sentences."""
        at, local = self.rows.locate(np.array([row]))
        return self.rows.segments[int(at[0])].sentences(int(local[0]))

    # ---------------------------------------------------------------- documents

    def document_text(self, doc_id: str) -> str:
        """A document's whole text, as it was read (a KeyError for an unknown id)."""
        got = self.records.query("SELECT text FROM documents WHERE doc_id = ?", [doc_id])
        if not got:
            raise KeyError(doc_id)
        return got[0][0]

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, PassageVectors | None]:
        """A saved document's chunks with their vectors and sentence table, row-aligned."""
        rows = self.rows_of({doc_id}).tolist()
        xl = None
        if self.manifest.crosslingual:
            at, local = self.rows.locate(np.asarray(rows, np.int64))
            xl = PassageVectors.concat([self.rows.segments[a].passages(r, r + 1)
                                        for a, r in zip(at.tolist(), local.tolist())]) if rows else empty_table(self.manifest)
        return self.chunks(rows), self.vectors.fetch(rows), xl

    def all_chunks(self) -> list[Chunk]:
        """Every live chunk, in row order (reads every record: for tools and tests)."""
        return self.chunks(self.rows.live_rows().tolist())

    def all_vectors(self) -> np.ndarray:
        """Every live row's vector, in row order."""
        return self.vectors.fetch(self.rows.live_rows().tolist())

    def recall_vs_exact(self, k: int = 10, sample: int = 200, seed: int = 0) -> float | None:
        """Recall@k of the search against exact search, stored vectors as queries (None when every
        segment is exact: nothing to measure)."""
        live = self.rows.live_rows()
        if all(s.index is None for s in self.rows.segments) or not len(live):
            return None
        rng = np.random.default_rng(seed)
        queries = self.vectors.fetch(rng.choice(live, size=min(sample, len(live)), replace=False).tolist())
        k = min(k, len(live))
        pairs = zip(self.search(queries, k), self.search(queries, k, exact=True))
        return float(np.mean([len({r for _, r in a} & {r for _, r in e}) / k for a, e in pairs]))

    def problems(self) -> list[str]:
        """Inconsistencies between the records, the segments and the documents (empty: none)."""
        out = self.vectors.problems()  # (one chunk record per row is checked on opening)
        for s in self.rows.segments:
            if s.xl is not None:
                out.extend(f"segment {s.seg}: {p}" for p in s.stored_table().problems(
                    len(s), self.manifest.dim if self.manifest.crosslingual.get("e5_sentences") else None))
        # every record not waiting in `dropped` is held by exactly one row (compared in numpy: SQLite
        # would look each id up in the table's pages, 1.7 KB records among them)
        held = np.sort(np.concatenate([s.ids for s in self.rows.segments] or [np.zeros(0, np.int64)]))
        stored = np.sort(np.array(json.loads(self.records.query(
            "SELECT json_group_array(id) FROM chunks WHERE id NOT IN (SELECT id FROM dropped)")[0][0]), np.int64))
        if not np.array_equal(held, stored):
            for what, ids in (("rows without a chunk record", np.setdiff1d(held, stored)),
                              ("chunk records no row holds", np.setdiff1d(stored, held))):
                out += [f"{what} {ids[:3].tolist()}"] if len(ids) else []
        dead = [s.ids[~m] for s, _, m in self.rows.parts() if m is not None]
        found: dict[str, list[str]] = {}
        for what, x in self.records.query(CHECK_SQL, [json.dumps(np.concatenate(dead or [[]]).tolist())]):
            found.setdefault(what, []).append(x)
        return out + [f"{what} {xs}" for what, xs in found.items()]
