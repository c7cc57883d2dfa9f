"""Where a folder index's vectors live, behind the one narrow interface its store calls at its
points of change: FAISS files in each segment (the default), or a Milvus collection keyed by the
chunk records' stable ids (indexer.store.milvus_vectors). Records, postings, sentence tables and
the commit point are the folder's either way (indexer.store.faiss_store). Rows are the store's
global rows; results are (score, row), best first, equal scores by chunk id (indexer.topk).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..crosslingual import all_finite
from ..errors import StoreError
from ..topk import TieKeys, top_k
from .milvus_vectors import MAX_TOPK, MilvusVectors
from .segment import REMOTE

if TYPE_CHECKING:
    from .faiss_store import FaissStore

Hits = list[list[tuple[float, int]]]


class Vectors(Protocol):
    """What the folder store asks of its vectors."""

    def describe(self) -> str:
        """The vector index as `info` shows it."""

    def kind(self, rows: int) -> str:
        """The kind of a new segment of `rows` rows (what its folder holds of the vectors)."""

    def begin(self, replace: bool, next_id: int) -> dict | None:
        """A commit starts (`replace`: a new index); the manifest's `vectors` entry if it changes."""

    def abort(self) -> None:
        """The commit begun is dropped: undo what `begin` made."""

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        """The rows of a segment being written, before the commit that makes them live."""

    def committed(self, removed: list[int]) -> None:
        """After a commit: the record ids of the rows it deleted for good."""

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None, exact: bool = False) -> Hits:
        """The k best live rows per query by inner product (of these documents; None: all)."""

    def fetch(self, rows: list[int]) -> np.ndarray:
        """The stored vectors of these rows, in the order given (float32)."""

    def problems(self) -> list[str]:
        """What `check` finds wrong with the vectors."""


def top(scores: np.ndarray, rows: np.ndarray, k: int, ties: TieKeys) -> list[tuple[float, int]]:
    """The k best (score, row) of candidates (row -1: none), best first (equal scores by chunk id)."""
    keep = rows >= 0
    top_s, top_r = top_k(scores[keep], rows[keep], k, ties)
    return list(zip(top_s.tolist(), top_r.tolist()))


class SegmentVectors:
    """FAISS files in each segment: vectors.npy, searched exactly, and index.faiss for an
    approximate kind; a merge copies them (indexer.store.segment)."""

    def __init__(self, store: "FaissStore") -> None:
        self.store = store

    def describe(self) -> str:
        kinds = sorted({s.kind for s in self.store._segments}) or [self.kind(0)]
        return "+".join(kinds)

    def kind(self, rows: int) -> str:
        from .faiss_store import choose_index_type

        return choose_index_type(self.store.manifest.index_type, rows)

    def begin(self, replace: bool, next_id: int) -> dict | None:
        return {} if replace else None

    def abort(self) -> None:
        """Nothing: the segment folders the commit wrote are removed with it."""

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        """Nothing: the segment's own files hold them."""

    def committed(self, removed: list[int]) -> None:
        """Nothing: deletion marks hide the rows until a merge leaves them out."""

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None, exact: bool = False) -> Hits:
        """Every segment's k best under its deletion marks (`exact`: approximate segments scored
        exactly too), joined."""
        store = self.store
        allowed = None if doc_ids is None else store.rows_of(doc_ids)
        found_s, found_r = [], []
        for i, seg in enumerate(store._segments):
            base, end = int(store._bases[i]), int(store._bases[i + 1])
            local = None if allowed is None else allowed[(allowed >= base) & (allowed < end)] - base
            if local is not None and not len(local):
                continue
            s, r = seg.search(queries, k, local, store._dead.get(seg.seg), exact)
            found_s.append(s)
            found_r.append(np.where(r >= 0, r + base, -1))
        if not found_s:
            return [[] for _ in range(len(queries))]
        return [top(np.concatenate([x[q] for x in found_s]), np.concatenate([x[q] for x in found_r]), k,
                    store.tie_keys)
                for q in range(len(queries))]

    def fetch(self, rows: list[int]) -> np.ndarray:
        return self.store._gather(rows, "vectors", (self.store.manifest.dim,), np.float32)

    def problems(self) -> list[str]:
        return [f"segment {s.seg}: vectors contain NaN or infinity" for s in self.store._segments
                if not all_finite(s.vectors)]


class CollectionVectors:
    """A Milvus collection holding every live row's vector by record id (MilvusVectors); the
    segments (kind "milvus") hold none. The server's ids are mapped to this commit's live rows."""

    def __init__(self, store: "FaissStore", collection: MilvusVectors) -> None:
        self.store, self.collection = store, collection
        self._created = False  # the commit being made created the collection
        self._by_id: tuple[str | None, np.ndarray, np.ndarray] | None = None  # (generation, ids ascending, rows)

    def describe(self) -> str:
        return f"Milvus {self.collection.kind_for(len(self.store))} ({self.collection.target.display})"

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

    def committed(self, removed: list[int]) -> None:
        """The deleted rows' vectors go, and the server's index follows the size. A failure loses
        nothing (the commit is made, and a search passes over what stays): a warning."""
        self._created = False
        try:
            self.collection.remove(removed)
            self.collection.fit_index(len(self.store))
        except StoreError as exc:
            logging.getLogger(__name__).warning("%s (the commit is made; what the collection still holds is "
                                                "passed over)", exc)

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None, exact: bool = False) -> Hits:
        """The collection's k best per query as live rows: ids no live row holds (a newer commit's,
        or deleted ones whose removal was cut short) are passed over, asking for more until k
        remain or the collection has no more."""
        store = self.store
        k = min(k, len(store.live_rows() if doc_ids is None else store.rows_of(doc_ids)))
        want, docs = k, None if doc_ids is None else sorted(doc_ids)
        while k > 0:
            found = [(scores, self._rows(ids), len(ids)) for scores, ids in
                     self.collection.search(queries, want, docs, len(store))]
            out = [top(scores, rows, k, store.tie_keys) for scores, rows, _ in found]
            if want >= MAX_TOPK or not any(len(hits) < k and n == want for hits, (_, _, n) in zip(out, found)):
                return out
            want = min(2 * want + 16, MAX_TOPK)
        return [[] for _ in range(len(queries))]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The live row holding each record id, -1 where none does."""
        store = self.store
        if self._by_id is None or self._by_id[0] != store.generation:
            live = store.live_rows()
            held = store._gather(live.tolist(), "ids", (), np.int64)
            order = np.argsort(held)
            self._by_id = store.generation, held[order], live[order]
        _, keys, rows = self._by_id
        if not len(keys):
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[at] == ids, rows[at], -1)

    def fetch(self, rows: list[int]) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.store.manifest.dim), np.float32)
        return self.collection.fetch(self.store._ids(rows))

    def problems(self) -> list[str]:
        """A collection missing or of another dimension; live rows whose vector is not in it."""
        where, dim = self.collection.target.display, self.collection.dim_on_server()
        if dim != self.store.manifest.dim:
            return [f"{where}: collection {self.collection.name} " + ("is missing" if dim is None else
                    f"holds vectors of dimension {dim}, not {self.store.manifest.dim}")]
        live = self.store._gather(self.store.live_rows().tolist(), "ids", (), np.int64)
        held = self.collection.ids()
        missing, twice = np.setdiff1d(live, held), np.unique(held[1:][held[1:] == held[:-1]])
        return ([f"{where}: the vectors of {len(missing)} chunks are missing (record ids {missing[:3].tolist()})"]
                if len(missing) else []) + \
            ([f"{where}: record ids stored twice in the collection {twice[:3].tolist()}"] if len(twice) else [])


def vectors_of(store: "FaissStore", location: str | None) -> Vectors:
    """The vectors of a store: a new Milvus collection at `location`, else the manifest's, else FAISS files."""
    m = store.manifest
    if location is not None:
        return CollectionVectors(store, MilvusVectors(location, m.dim, m.index_type))
    if m.vectors:
        return CollectionVectors(store, MilvusVectors(m.vectors["milvus"], m.dim, m.index_type, m.vectors["collection"]))
    return SegmentVectors(store)


def retire(old: dict) -> None:
    """Drop the collection of an index a build replaced (its manifest's vectors entry), exactly that
    one; a StoreError if the server cannot."""
    MilvusVectors(old["milvus"], 0, collection=old["collection"]).drop()
