"""Where a folder index's vectors live, behind two narrow interfaces: what a snapshot's searches
read (`VectorReader`, over the snapshot's RowMap) and what a writer tells at its points of change
(`VectorWriter`). Two places: FAISS files in each segment (the default), or a Milvus collection
keyed by the chunk records' stable ids (indexer.store.milvus_vectors). Records, postings, sentence
tables and the commit point are the folder's either way. Rows are the snapshot's rows; results
are (score, row), best first, equal scores by chunk id (indexer.topk).
"""
from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from ..errors import StoreError
from ..topk import TieKeys, top_k
from .base import Manifest
from .milvus_vectors import MAX_TOPK, MilvusVectors
from .rows import RowMap
from .segment import REMOTE, choose_index_type
from .table import all_finite

Hits = list[list[tuple[float, int]]]


class VectorReader(Protocol):
    """What a snapshot's searches ask of its vectors."""

    def describe(self) -> str:
        """The vector index as `info` shows it."""

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, doc_ids: set[str] | None,
               ties: TieKeys, exact: bool = False) -> Hits:
        """The k best live rows per query by inner product, among `allowed` (the live rows of
        `doc_ids`, ascending; None: every live row)."""

    def fetch(self, rows: list[int]) -> np.ndarray:
        """The stored vectors of these rows, in the order given (float32)."""

    def problems(self) -> list[str]:
        """What `check` finds wrong with the vectors."""


class VectorWriter(Protocol):
    """What a writer tells its vectors as it writes and commits."""

    def kind(self, rows: int) -> str:
        """The kind of a new segment of `rows` rows (what its folder holds of the vectors)."""

    def begin(self, replace: bool, next_id: int) -> dict | None:
        """A commit starts (`replace`: a new index); the manifest's `vectors` entry if it changes."""

    def abort(self) -> None:
        """The commit begun is dropped: undo what `begin` made."""

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        """The rows of a segment being written, before the commit that makes them live."""

    def committed(self, removed: list[int], live: int) -> None:
        """After a commit of `live` live rows: the record ids of the rows it deleted for good."""


def top(scores: np.ndarray, rows: np.ndarray, k: int, ties: TieKeys) -> list[tuple[float, int]]:
    """The k best (score, row) of candidates (row -1: none), best first (equal scores by chunk id)."""
    keep = rows >= 0
    top_s, top_r = top_k(scores[keep], rows[keep], k, ties)
    return list(zip(top_s.tolist(), top_r.tolist()))


class SegmentVectors:
    """FAISS files in each segment: vectors.npy, searched exactly, and index.faiss for an
    approximate kind; a merge copies them (indexer.store.segment)."""

    def __init__(self, rows: RowMap, dim: int, index_type: str) -> None:
        self.rows, self.dim, self.index_type = rows, dim, index_type

    def describe(self) -> str:
        kinds = sorted({s.kind for s in self.rows.segments}) or [choose_index_type(self.index_type, 0)]
        return "+".join(kinds)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, doc_ids: set[str] | None,
               ties: TieKeys, exact: bool = False) -> Hits:
        """Every segment's k best under its deletion marks (`exact`: approximate segments scored
        exactly too), joined."""
        found_s, found_r = [], []
        for i, seg in enumerate(self.rows.segments):
            base, end = int(self.rows.bases[i]), int(self.rows.bases[i + 1])
            local = None if allowed is None else allowed[(allowed >= base) & (allowed < end)] - base
            if local is not None and not len(local):
                continue
            s, r = seg.search(queries, k, local, self.rows.dead.get(seg.seg), exact)
            found_s.append(s)
            found_r.append(np.where(r >= 0, r + base, -1))
        if not found_s:
            return [[] for _ in range(len(queries))]
        return [top(np.concatenate([x[q] for x in found_s]), np.concatenate([x[q] for x in found_r]), k, ties)
                for q in range(len(queries))]

    def fetch(self, rows: list[int]) -> np.ndarray:
        return self.rows.gather(rows, "vectors", (self.dim,), np.float32)

    def problems(self) -> list[str]:
        return [f"segment {s.seg}: vectors contain NaN or infinity" for s in self.rows.segments
                if not all_finite(s.vectors)]


class SegmentVectorWriter:
    """FAISS files: the segment's own files hold the vectors, and a deletion mark hides a row
    until a merge leaves it out, so there is nothing to tell but the kind of a new segment."""

    def __init__(self, index_type: str) -> None:
        self.index_type = index_type

    def kind(self, rows: int) -> str:
        return choose_index_type(self.index_type, rows)

    def begin(self, replace: bool, next_id: int) -> dict | None:
        return {} if replace else None

    def abort(self) -> None:
        """Nothing: the segment folders the commit wrote are removed with it."""

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        """Nothing: the segment's own files hold them."""

    def committed(self, removed: list[int], live: int) -> None:
        """Nothing: deletion marks hide the rows until a merge leaves them out."""


class CollectionVectors:
    """A Milvus collection holding every live row's vector by record id (MilvusVectors); the
    segments (kind "milvus") hold none. The server's ids are mapped to the snapshot's live rows."""

    def __init__(self, rows: RowMap, collection: MilvusVectors) -> None:
        self.rows, self.collection = rows, collection
        self._by_id: tuple[np.ndarray, np.ndarray] | None = None  # (live ids ascending, their rows), made once

    def describe(self) -> str:
        return f"Milvus {self.collection.kind_for(len(self.rows))} ({self.collection.target.display})"

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, doc_ids: set[str] | None,
               ties: TieKeys, exact: bool = False) -> Hits:
        """The collection's k best per query as live rows: ids no live row holds (a newer commit's,
        or deleted ones whose removal was cut short) are passed over, asking for more until k
        remain or the collection has no more."""
        k = min(k, len(self.rows.live_rows() if allowed is None else allowed))
        want, docs = k, None if doc_ids is None else sorted(doc_ids)
        while k > 0:
            found = [(scores, self._rows(ids), len(ids)) for scores, ids in
                     self.collection.search(queries, want, docs, len(self.rows))]
            out = [top(scores, rows, k, ties) for scores, rows, _ in found]
            if want >= MAX_TOPK or not any(len(hits) < k and n == want for hits, (_, _, n) in zip(out, found)):
                return out
            want = min(2 * want + 16, MAX_TOPK)
        return [[] for _ in range(len(queries))]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The live row holding each record id, -1 where none does."""
        if self._by_id is None:
            live = self.rows.live_rows()
            held = self.rows.ids(live)
            order = np.argsort(held)
            self._by_id = held[order], live[order]
        keys, rows = self._by_id
        if not len(keys):
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[at] == ids, rows[at], -1)

    def fetch(self, rows: list[int]) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.collection.dim), np.float32)
        return self.collection.fetch(self.rows.ids(rows).tolist())

    def problems(self) -> list[str]:
        """A collection missing or of another dimension; live rows whose vector is not in it."""
        where, dim = self.collection.target.display, self.collection.dim_on_server()
        if dim != self.collection.dim:
            return [f"{where}: collection {self.collection.name} " + ("is missing" if dim is None else
                    f"holds vectors of dimension {dim}, not {self.collection.dim}")]
        live = self.rows.ids(self.rows.live_rows())
        held = self.collection.ids()
        missing, twice = np.setdiff1d(live, held), np.unique(held[1:][held[1:] == held[:-1]])
        return ([f"{where}: the vectors of {len(missing)} chunks are missing (record ids {missing[:3].tolist()})"]
                if len(missing) else []) + \
            ([f"{where}: record ids stored twice in the collection {twice[:3].tolist()}"] if len(twice) else [])


class CollectionVectorWriter:
    """A Milvus collection, told of every write: a new index's collection at its first commit, the
    new rows' vectors before the commit that makes them live, the deleted rows' after it."""

    def __init__(self, collection: MilvusVectors) -> None:
        self.collection = collection
        self._created = False  # the commit being made created the collection

    def kind(self, rows: int) -> str:
        return REMOTE

    def begin(self, replace: bool, next_id: int) -> dict | None:
        """A new index: a new collection; else first delete what a write that never committed left."""
        self._created = replace
        if not replace:
            self.collection.remove_from(next_id)
            return None
        self.collection.create()
        return {**self.collection.state(), "first": next_id}

    def abort(self) -> None:
        """A new index's collection goes with its unfinished commit (a kill leaves it: unnamed by
        any commit, it is never read)."""
        if self._created:
            self._created = False
            try:
                self.collection.drop()
            except StoreError as exc:
                logging.getLogger(__name__).warning("%s (the collection of the unfinished build stays)", exc)

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        self.collection.add(ids, docs, vectors)

    def committed(self, removed: list[int], live: int) -> None:
        """The deleted rows' vectors go, and the server's index follows the size. A failure loses
        nothing (the commit is made, and a search passes over what stays): a warning."""
        self._created = False
        try:
            self.collection.remove(removed)
            self.collection.fit_index(live)
        except StoreError as exc:
            logging.getLogger(__name__).warning("%s (the commit is made; what the collection still holds is "
                                                "passed over)", exc)


def _collection(manifest: Manifest, location: str | None = None) -> MilvusVectors | None:
    """The manifest's Milvus collection, or a new one at `location`; None: FAISS files."""
    if location is not None:
        return MilvusVectors(location, manifest.dim, manifest.index_type)
    if manifest.vectors:
        return MilvusVectors(manifest.vectors["milvus"], manifest.dim, manifest.index_type,
                             manifest.vectors["collection"])
    return None


def reader_of(manifest: Manifest, rows: RowMap) -> VectorReader:
    """What a snapshot searches its vectors with: the manifest's collection, else FAISS files."""
    collection = _collection(manifest)
    return SegmentVectors(rows, manifest.dim, manifest.index_type) if collection is None else \
        CollectionVectors(rows, collection)


def writer_of(manifest: Manifest, location: str | None) -> VectorWriter:
    """What a writer tells of its vectors: a new Milvus collection at `location`, else the
    manifest's, else FAISS files."""
    collection = _collection(manifest, location)
    return SegmentVectorWriter(manifest.index_type) if collection is None else CollectionVectorWriter(collection)
