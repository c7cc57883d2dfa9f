"""One immutable segment of a folder index: the vectors, vector index, postings and sentence
table of the chunks one write added (or one merge joined).

Files of seg-NNNNNN/ (every array a .npy, memory-mapped on open, never copied):
    vectors.npy            float32 [rows, dim], L2-normalised
    index.faiss            only for an approximate kind (hnsw, ivf); a flat segment is searched
                           exactly from vectors.npy
    keys.npy starts.npy rows.npy tf.npy lengths.npy vocabulary.txt   the postings (indexer.keyword)
    xl_*.npy               with the cross-lingual table: float16 USE passage and sentence vectors,
                           sentence owners and spans, e5 sentence vectors if kept
Rows are the segment's own (0 … rows-1); the store adds each segment's base to make them global.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..crosslingual import PassageVectors
from ..errors import StoreError
from ..keyword import POSTING_ARRAYS, Postings

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
IVF_NPROBE = 32  # bench: recall@10 0.9993 at 100k (0.59 ms), 0.9997 at 1M (2.6 ms); nlist/16 cost 13x more at 1M
IVF_TRAIN_PER_LIST = 32  # k-means on 32 rows a list: at 200k, 16 s instead of 83 s, recall@10 0.9999 either way
XL_ARRAYS = ("chunks", "sentences", "owner", "spans", "dense")
BLOCK = 65_536  # rows per matrix product in an exact search: bounded temporary memory


def ivf_nlist(n: int) -> int:
    """IVF's list count for n vectors (4√n, at least 39 vectors a list): one formula for FAISS and Milvus."""
    return max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39, 65_536))


def build_faiss_index(vectors: np.ndarray, kind: str) -> faiss.Index:
    """A FAISS inner-product index of `kind` over `vectors` (rows are ids)."""
    n, dim = vectors.shape
    if kind == "flat" or n == 0:
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # a small corpus gets one list; no "please provide 39 points" warning
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST  # FAISS draws the sample (seeded)
        index.train(vectors)
        index.nprobe = min(nlist, IVF_NPROBE)
    else:
        raise StoreError(f"unknown index type {kind!r}")
    if n:
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _search_params(index: faiss.Index, rows: np.ndarray | None, dead: np.ndarray | None):
    """FAISS search parameters restricting results to `rows`, or to the rows not `dead` (None, None:
    no restriction). Excluding the few deleted rows costs less than listing the many live ones."""
    if rows is None and dead is None:
        return None
    sel = faiss.IDSelectorBatch(rows.astype(np.int64)) if rows is not None else \
        faiss.IDSelectorNot(faiss.IDSelectorBatch(np.flatnonzero(dead).astype(np.int64)))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=sel)


def write_segment(folder: Path, vectors: np.ndarray, terms: list[list[str]] | tuple[Postings, list[str]],
                  xl: PassageVectors | None, kind: str) -> None:
    """Write a segment's files into `folder` (the caller makes it live by committing it). `terms`:
    each row's keyword terms, or (postings, vocabulary) already made by a merge."""
    folder.mkdir(parents=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    np.save(folder / "vectors.npy", vectors)
    if kind != "flat":
        faiss.write_index(build_faiss_index(vectors, kind), str(folder / "index.faiss"))
    if isinstance(terms, tuple):  # a merge: postings and vocabulary already joined
        postings, vocabulary = terms
    else:
        postings, vocabulary = Postings.build(terms)
    for name in POSTING_ARRAYS:
        np.save(folder / f"{name}.npy", getattr(postings, name))
    (folder / "vocabulary.txt").write_text("\n".join(vocabulary), encoding="utf-8")
    if xl is not None:
        arrays = {"chunks": xl.chunks.astype(np.float16), "sentences": xl.sentences.astype(np.float16),
                  "owner": xl.owner.astype(np.int32), "spans": xl.spans.astype(np.int32).reshape(-1, 2),
                  "dense": None if xl.dense is None else xl.dense.astype(np.float16)}
        for name, array in arrays.items():
            if array is not None:
                np.save(folder / f"xl_{name}.npy", array)


@dataclass
class Segment:
    """A live segment, opened: its arrays memory-mapped, its approximate index (if any) read."""

    seg: int
    folder: Path
    kind: str
    vectors: np.ndarray
    postings: Postings
    index: faiss.Index | None = None
    xl: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @staticmethod
    def open(seg: int, folder: Path, kind: str, rows: int, dim: int, crosslingual: bool) -> "Segment":
        """Open a committed segment, checking its files against the record database's count."""
        where = f"{folder.parent}: segment {folder.name}"
        if not folder.is_dir():
            raise StoreError(f"{where} is missing")

        def load(name: str) -> np.ndarray:
            try:  # a plain ndarray over the map: np.memmap's slicing costs ~80 µs a call in Python
                return np.asarray(np.load(folder / name, mmap_mode="r"))
            except FileNotFoundError:
                raise StoreError(f"{where}: {name} is missing") from None
            except (ValueError, OSError, EOFError) as exc:
                raise StoreError(f"{where}: {name} is damaged ({exc})") from None

        vectors = load("vectors.npy")
        if vectors.shape != (rows, dim) or vectors.dtype != np.float32:
            raise StoreError(f"{where}: vectors.npy is {vectors.shape}, expected ({rows}, {dim})")
        if not (folder / "vocabulary.txt").is_file():
            raise StoreError(f"{where}: vocabulary.txt is missing")
        postings = Postings(*(load(f"{name}.npy") for name in POSTING_ARRAYS))
        if len(postings.lengths) != rows or len(postings.starts) != len(postings.keys) + 1:
            raise StoreError(f"{where}: the postings disagree with its {rows} rows")
        index = None
        if kind != "flat":
            try:  # IVF lists are memory-mapped; FAISS reads an HNSW graph whole
                index = faiss.read_index(str(folder / "index.faiss"),
                                         faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if kind == "ivf" else 0)
            except RuntimeError:
                raise StoreError(f"{where}: index.faiss is missing or damaged") from None
            if index.ntotal != rows:
                raise StoreError(f"{where}: index.faiss holds {index.ntotal} vectors but there are {rows} chunks")
        xl = None
        if crosslingual:
            xl = {name: load(f"xl_{name}.npy") for name in XL_ARRAYS if name != "dense" or (folder / "xl_dense.npy").exists()}
        return Segment(seg, folder, kind, vectors, postings, index, xl)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None,
               dead: np.ndarray | None = None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores, local rows) per query by inner product among `rows` (None: all) that
        are not `dead` (a mask; None: none), as two [q, k'] arrays (k' ≤ k; row -1 pads a list
        with fewer results). `exact`: score every row even where the segment has an approximate index."""
        if rows is not None and dead is not None:
            rows, dead = rows[~dead[rows]], None
        n = len(self) if rows is None else len(rows)
        k = min(k, n)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.index is not None and not exact:
            params = _search_params(self.index, rows, dead)
            return self.index.search(queries, k, params=params)
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_r = np.zeros((len(queries), 0), np.int64)
        for start in range(0, n, BLOCK):  # exact: every row's inner product, one block at a time
            ids = np.arange(start, min(n, start + BLOCK)) if rows is None else rows[start:start + BLOCK]
            block = self.vectors[start:start + BLOCK] if rows is None else self.vectors[ids]
            part = queries @ block.T
            if dead is not None:
                part[:, dead[start:start + BLOCK]] = -np.inf
            scores = np.hstack([best_s, part])
            cand = np.hstack([best_r, np.broadcast_to(ids, (len(queries), len(ids)))])
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, 1)
            best_s, best_r = np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1)
        return best_s, np.where(np.isfinite(best_s), best_r, -1)

    def vocabulary(self) -> list[str]:
        """The segment's terms in key order (read from its file when asked: translation, merges)."""
        text = (self.folder / "vocabulary.txt").read_text(encoding="utf-8")
        return text.split("\n") if text else []

    def passages(self, start: int = 0, stop: int | None = None) -> PassageVectors:
        """The sentence table of rows start..stop-1 (default: all, which the USE route scores),
        renumbered from 0, in float32; only those rows' slices of the maps are read."""
        stop = len(self) if stop is None else stop
        x, owner = self.xl, self.xl["owner"]
        a, b = int(np.searchsorted(owner, start, "left")), int(np.searchsorted(owner, stop - 1, "right"))
        b = max(a, b)
        return PassageVectors(np.asarray(x["chunks"][start:stop], np.float32), np.asarray(x["sentences"][a:b], np.float32),
                              np.asarray(owner[a:b], np.int64) - start, np.asarray(x["spans"][a:b], np.int32),
                              np.asarray(x["dense"][a:b], np.float32) if "dense" in x else None)

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(spans, USE vectors, e5 vectors or None) of one row's sentences, read from the maps."""
        one = self.passages(row, row + 1)
        return one.spans, one.sentences, one.dense
