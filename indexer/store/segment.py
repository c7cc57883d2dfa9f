"""One immutable segment of a folder index: the vectors, vector index, postings and sentence
table of the chunks one write added (or one merge joined).

Files of seg-NNNNNN/ (every array a .npy, memory-mapped on open, never copied):
    vectors.npy            float32 [rows, dim], L2-normalised (none where the vectors live in Milvus:
                           kind "milvus", indexer.store.milvus_vectors)
    ids.npy                int64 [rows]: each row's chunk record id (indexer.store.records)
    docs.npy               int64 [rows]: each row's document key (base.document_key; older segments have none)
    index.faiss            only for an approximate kind (hnsw, ivf); a flat segment is searched
                           exactly from vectors.npy
    keys.npy starts.npy rows.npy tf.npy lengths.npy vocabulary.txt   the postings (indexer.postings)
    xl_*.npy               with the cross-lingual table: float16 USE passage and sentence vectors,
                           sentence owners and spans, e5 sentence vectors if kept
Rows are the segment's own (0 … rows-1); the store adds each segment's base to make them global.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .table import USE_DIM, PassageVectors
from ..errors import StoreError
from ..postings import POSTING_ARRAYS, Postings
from ..topk import candidates

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
IVF_NPROBE = 32  # bench: recall@10 0.9993 at 100k (0.59 ms), 0.9997 at 1M (2.6 ms); nlist/16 cost 13x more at 1M
IVF_TRAIN_PER_LIST = 32  # k-means on 32 rows a list: at 200k, 16 s instead of 83 s, recall@10 0.9999 either way
XL_ARRAYS = ("chunks", "sentences", "owner", "spans", "dense")
XL_TYPES = {"chunks": np.float16, "sentences": np.float16, "owner": np.int32, "spans": np.int32, "dense": np.float16}
BLOCK = 65_536  # rows per matrix product in an exact search: bounded temporary memory
REMOTE = "milvus"  # the kind of a segment whose vectors a Milvus collection keeps, by record id
DOCS_FILE = "docs.npy"  # each row's document key: the grouping the document BM25 signal sums over
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
APPROX_ABOVE = 100_000  # auto: exact search below this many vectors in a segment, IVF from there


def choose_index_type(requested: str, n: int) -> str:
    """The concrete vector index kind for a segment (or a Milvus collection) of `n` vectors: flat
    is exact and fast enough when small; from APPROX_ABOVE, IVF-Flat (recall@10 0.9998 at 1M in
    1.4 ms, bench/README.md): it builds 6x faster than HNSW, which a merge pays, and its lists are
    memory-mapped, so opening a segment reads nothing (FAISS reads an HNSW graph whole)."""
    if requested not in INDEX_TYPES:
        raise StoreError(f"unknown index type {requested!r}; choose one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "ivf" if n >= APPROX_ABOVE else "flat"


def ivf_nlist(n: int) -> int:
    """IVF's list count for n vectors (4√n, at least 39 vectors a list): one formula for FAISS and Milvus."""
    return max(1, min(int(4 * np.sqrt(max(n, 1))), n // 39, 65_536))


def build_faiss_index(vectors: np.ndarray, kind: str, lists: tuple[np.ndarray, np.ndarray] | None = None) -> faiss.Index:
    """A FAISS inner-product index of `kind` over `vectors` (rows are ids). `vectors` may be a
    memory map: IVF trains on a sample of its rows and takes them a block at a time, so the
    rows are never copied whole (FAISS's Python layer would copy them into one array). IVF given
    `lists` (a merge's: the centroids of its biggest part, and each row's list there or -1) trains
    nothing and puts each row in its list, finding the nearest centroid only for rows without one."""
    n, dim = vectors.shape
    if kind == "flat" or n == 0:
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))  # one call: HNSW inserts level by level
        return index
    elif kind == "ivf":
        nlist = ivf_nlist(n) if lists is None else len(lists[0])
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if lists is None:
            index.cp.min_points_per_centroid = 1  # a small corpus gets one list; no "please provide 39 points" warning
            index.train(_training_sample(vectors, nlist * IVF_TRAIN_PER_LIST))
        else:  # an IVF is trained once its quantizer holds the centroids
            quantizer.add(np.ascontiguousarray(lists[0], dtype=np.float32))
            index.is_trained = True
        index.nprobe = min(nlist, IVF_NPROBE)
    else:
        raise StoreError(f"unknown index type {kind!r}")
    for start in range(0, n, BLOCK):
        block = np.ascontiguousarray(vectors[start:start + BLOCK], dtype=np.float32)
        if lists is None:
            index.add(block)
        else:
            _add_to_lists(index, block, start, lists[1][start:start + BLOCK])
    return index


def _add_to_lists(index: faiss.IndexIVF, block: np.ndarray, start: int, assigned: np.ndarray) -> None:
    """Add a block of rows (ids from `start`) to their IVF lists: `assigned`, or where it is -1
    the nearest centroid, as `add` would find it."""
    assigned = np.array(assigned, dtype=np.int64)
    new = assigned < 0
    if new.any():
        assigned[new] = index.quantizer.search(block[new], 1)[1][:, 0]
    ids = np.arange(start, start + len(block), dtype=np.int64)
    index.add_core(len(block), faiss.swig_ptr(block), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))


def _row_lists(index: faiss.IndexIVF) -> np.ndarray:
    """The IVF list of each row of an IVF index (its ids are its rows)."""
    out = np.full(index.ntotal, -1, np.int64)
    lists = index.invlists
    for i in range(index.nlist):
        size = lists.list_size(i)
        if size:
            out[faiss.rev_swig_ptr(lists.get_ids(i), size)] = i
    return out


def _training_sample(vectors: np.ndarray, size: int, seed: int = 1234) -> np.ndarray:
    """`size` rows drawn without replacement (all of them if there are no more), in row order:
    k-means on 32 rows a list is as good as on all, and only these rows are read from a map."""
    n = len(vectors)
    rows = np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


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


def write_segment(folder: Path, ids: np.ndarray, docs: np.ndarray, vectors: np.ndarray, terms: list[list[str]],
                  xl: PassageVectors | None, kind: str) -> None:
    """Write the segment of one commit's new rows into `folder` (the caller makes it live by
    committing it): their record ids, their documents' keys, vectors, each row's keyword terms,
    their sentence table."""
    folder.mkdir(parents=True)
    _save(folder / "ids.npy", [ids], (len(ids),), np.int64)
    _save(folder / DOCS_FILE, [docs], (len(ids),), np.int64)
    if kind != REMOTE:
        _write_vectors(folder, [vectors], vectors.shape, kind)
    _write_postings(folder, *Postings.build(terms))
    if xl is not None:
        table = {"chunks": xl.chunks, "sentences": xl.sentences, "owner": xl.owner, "spans": xl.spans, "dense": xl.dense}
        _write_xl(folder, lambda name: [table[name]], len(xl), len(xl.owner), None if xl.dense is None else xl.dense.shape[1])


def merge_segments(folder: Path, parts: list[tuple["Segment", np.ndarray | None]], postings: Postings,
                   vocabulary: list[str], kind: str) -> None:
    """Write into `folder` the segment holding the live rows of `parts` (segment, live mask or
    None: all), in order, with their merged postings. Vectors and sentence tables are copied from
    the parts' maps a block at a time: memory holds a block, never the merged arrays."""
    folder.mkdir(parents=True)
    live = [len(s) if m is None else int(m.sum()) for s, m in parts]
    _save(folder / "ids.npy", (piece for s, m in parts for _, piece in _live_blocks(s.ids, m)), (sum(live),), np.int64)
    if all(s.docs is not None for s, _ in parts):  # (a segment written before documents' keys were kept has none)
        _save(folder / DOCS_FILE, (piece for s, m in parts for _, piece in _live_blocks(s.docs, m)), (sum(live),), np.int64)
    if kind != REMOTE:
        dim = parts[0][0].vectors.shape[1]
        _write_vectors(folder, (piece for s, m in parts for _, piece in _live_blocks(s.vectors, m)), (sum(live), dim),
                       kind, _kept_lists(parts, live) if kind == "ivf" else None)
    _write_postings(folder, postings, vocabulary)
    xl = [s.xl for s, _ in parts]
    if all(x is not None for x in xl):
        kept = [None if m is None else m[x["owner"]] for x, (_, m) in zip(xl, parts)]
        sentences = sum(len(x["owner"]) if k is None else int(k.sum()) for x, k in zip(xl, kept))
        dense = xl[0]["dense"].shape[1] if "dense" in xl[0] else None
        _write_xl(folder, lambda name: _merged_table(parts, kept, live, name), sum(live), sentences, dense)


def _kept_lists(parts: list[tuple["Segment", np.ndarray | None]], live: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The IVF lists of the biggest part, where it is an IVF segment holding at least half the
    merged rows: its centroids, and each merged row's list (its rows keep theirs; -1 for the
    others). FAISS's "train once, then add": k-means was 9 of 14 s of a merge at 100k rows, and
    finding each row's list again most of the rest. The lists stay at least 0.7 of the merged
    size's own count (4√(n/2) of 4√n)."""
    rows, at = max((n, i) for i, n in enumerate(live))
    (biggest, mask), base = parts[at], sum(live[:at])
    if biggest.kind != "ivf" or 2 * rows < sum(live):
        return None
    quantizer = faiss.downcast_index(biggest.index.quantizer)
    assigned = np.full(sum(live), -1, np.int64)
    kept = _row_lists(faiss.extract_index_ivf(biggest.index))
    assigned[base:base + rows] = kept if mask is None else kept[mask]
    return quantizer.reconstruct_n(0, quantizer.ntotal), assigned


def _live_blocks(array: np.ndarray, mask: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, the live rows of a block) of a mapped array, BLOCK rows at a time."""
    for start in range(0, len(array), BLOCK):
        block = array[start:start + BLOCK]
        yield start, block if mask is None else block[mask[start:start + BLOCK]]


def _merged_table(parts: list[tuple["Segment", np.ndarray | None]], kept: list[np.ndarray | None], live: list[int],
                  name: str) -> Iterator[np.ndarray]:
    """One array of the merged sentence table, part by part: passage vectors of the live rows, or
    the sentences those rows own (owners renumbered to the merged rows)."""
    base = 0
    for (s, mask), keep, n in zip(parts, kept, live):
        if name == "chunks":
            yield from (piece for _, piece in _live_blocks(s.xl["chunks"], mask))
        elif name == "owner":
            new_row = np.arange(len(s)) if mask is None else np.cumsum(mask) - 1
            yield from (base + new_row[piece] for _, piece in _live_blocks(s.xl["owner"], keep))
        else:
            yield from (piece for _, piece in _live_blocks(s.xl[name], keep))
        base += n


def _save(path: Path, pieces: Iterable[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
    """An .npy of `shape` written from `pieces` (consecutive rows), one piece in memory at a time;
    returned memory-mapped."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    at = 0
    for piece in pieces:
        out[at:at + len(piece)] = piece
        at += len(piece)
    if at != shape[0]:
        raise StoreError(f"{path.parent.name}: {path.name} got {at} rows of {shape[0]}")
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _write_vectors(folder: Path, pieces: Iterable[np.ndarray], shape: tuple[int, int], kind: str,
                   lists: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    vectors = _save(folder / "vectors.npy", pieces, shape, np.float32)
    if kind != "flat":
        faiss.write_index(build_faiss_index(vectors, kind, lists), str(folder / "index.faiss"))


def _write_postings(folder: Path, postings: Postings, vocabulary: list[str]) -> None:
    for name in POSTING_ARRAYS:
        np.save(folder / f"{name}.npy", getattr(postings, name))
    (folder / "vocabulary.txt").write_text("\n".join(vocabulary), encoding="utf-8")


def _write_xl(folder: Path, pieces: Callable[[str], Iterable[np.ndarray]], rows: int, sentences: int,
              dense_dim: int | None) -> None:
    """The sentence table's files, each array written from its pieces (`pieces(name)`)."""
    shapes = {"chunks": (rows, USE_DIM), "sentences": (sentences, USE_DIM), "owner": (sentences,),
              "spans": (sentences, 2), "dense": (sentences, dense_dim)}
    for name in XL_ARRAYS:
        if name != "dense" or dense_dim is not None:
            _save(folder / f"xl_{name}.npy", pieces(name), shapes[name], XL_TYPES[name])


@dataclass
class Segment:
    """A live segment, opened: its arrays memory-mapped, its approximate index (if any) read."""

    seg: int
    folder: Path
    kind: str
    ids: np.ndarray
    vectors: np.ndarray | None  # None: kind REMOTE
    postings: Postings
    docs: np.ndarray | None = None  # each row's document key (DOCS_FILE); None in segments written before them
    index: faiss.Index | None = None
    xl: dict[str, np.ndarray] | None = None
    _lookup: tuple[np.ndarray, np.ndarray | None] | None = None  # (ids ascending, their rows or None: in order)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_holding(self, ids: np.ndarray) -> np.ndarray:
        """The rows (ascending) whose record id is among `ids`: a binary search in the ids, which
        ascend in every written segment and most merged ones (else in a sorted copy, made once)."""
        if self._lookup is None:
            ascending = bool(np.all(self.ids[1:] > self.ids[:-1]))
            order = None if ascending else np.argsort(self.ids)
            self._lookup = (self.ids, None) if ascending else (self.ids[order], order)
        keys, order = self._lookup
        at = np.searchsorted(keys, ids)
        hit = at < len(keys)
        at = at[hit][keys[at[hit]] == np.asarray(ids)[hit]]
        return np.sort(at if order is None else order[at])

    @staticmethod
    def open(seg: int, folder: Path, kind: str, rows: int, dim: int, crosslingual: bool) -> "Segment":
        """Open a committed segment, checking its files against the record database's count."""
        where = f"{folder.parent}: segment {folder.name}"
        if not folder.is_dir():
            raise StoreError(f"{where} is missing")

        def load(name: str, mode: str = "r") -> np.ndarray:
            try:  # a plain ndarray over the map: np.memmap's slicing costs ~80 µs a call in Python
                return np.asarray(np.load(folder / name, mmap_mode=mode))
            except FileNotFoundError:
                raise StoreError(f"{where}: {name} is missing") from None
            except (ValueError, OSError, EOFError) as exc:
                raise StoreError(f"{where}: {name} is damaged ({exc})") from None

        vectors = None if kind == REMOTE else load("vectors.npy")
        if vectors is not None and (vectors.shape != (rows, dim) or vectors.dtype != np.float32):
            raise StoreError(f"{where}: vectors.npy is {vectors.shape}, expected ({rows}, {dim})")
        ids = load("ids.npy")
        if ids.shape != (rows,) or ids.dtype != np.int64:
            raise StoreError(f"{where}: ids.npy is {ids.shape}, expected ({rows},)")
        if not (folder / "vocabulary.txt").is_file():
            raise StoreError(f"{where}: vocabulary.txt is missing")
        postings = Postings(*(load(f"{name}.npy") for name in POSTING_ARRAYS))
        if len(postings.lengths) != rows or len(postings.starts) != len(postings.keys) + 1:
            raise StoreError(f"{where}: the postings disagree with its {rows} rows")
        index = None
        if kind not in ("flat", REMOTE):
            try:  # IVF lists are memory-mapped; FAISS reads an HNSW graph whole
                index = faiss.read_index(str(folder / "index.faiss"),
                                         faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if kind == "ivf" else 0)
            except RuntimeError:
                raise StoreError(f"{where}: index.faiss is missing or damaged") from None
            if index.ntotal != rows:
                raise StoreError(f"{where}: index.faiss holds {index.ntotal} vectors but there are {rows} chunks")
        xl = None
        if crosslingual:
            # USE vectors copy-on-write: a writable map, which OpenVINO multiplies in place
            # (crosslingual.inner_products); nothing ever writes to it
            xl = {name: load(f"xl_{name}.npy", "c" if name in ("chunks", "sentences") else "r")
                  for name in XL_ARRAYS if name != "dense" or (folder / "xl_dense.npy").exists()}
        docs = load(DOCS_FILE) if (folder / DOCS_FILE).is_file() else None
        if docs is not None and docs.shape != (rows,):
            raise StoreError(f"{where}: {DOCS_FILE} is {docs.shape}, expected ({rows},)")
        return Segment(seg, folder, kind, ids, vectors, postings, docs, index, xl)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None,
               dead: np.ndarray | None = None, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores, local rows) per query by inner product among `rows` (None: all) that
        are not `dead` (a mask; None: none), as two [q, k'] arrays, best first; row -1 pads a list
        with fewer results. Searched exactly, a list keeps every row tied with its k-th too (so
        k' may exceed k: the store's join orders equal scores by chunk id, indexer.topk).
        `exact`: score every row even where the segment has an approximate index."""
        if rows is not None and dead is not None:
            rows, dead = rows[~dead[rows]], None
        n = len(self) if rows is None else len(rows)
        k = min(k, n)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.index is not None and not exact:
            params = _search_params(self.index, rows, dead)
            return self.index.search(queries, k, params=params)
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(len(queries))]
        for start in range(0, n, BLOCK):  # exact: every row's inner product, one block at a time
            ids = np.arange(start, min(n, start + BLOCK)) if rows is None else rows[start:start + BLOCK]
            block = self.vectors[start:start + BLOCK] if rows is None else self.vectors[ids]
            part = queries @ block.T
            if dead is not None:
                alive = ~dead[start:start + BLOCK]
                part, ids = part[:, alive], ids[alive]
            for q, (scores, found) in enumerate(best):
                scores, found = np.concatenate([scores, part[q]]), np.concatenate([found, ids])
                keep = candidates(scores, k)
                best[q] = scores[keep], found[keep]
        width = max(len(s) for s, _ in best)
        out_s, out_r = np.full((len(queries), width), -np.inf, np.float32), np.full((len(queries), width), -1, np.int64)
        for q, (scores, found) in enumerate(best):
            order = np.argsort(-scores, kind="stable")
            out_s[q, :len(order)], out_r[q, :len(order)] = scores[order], found[order]
        return out_s, out_r

    def vocabulary(self) -> list[str]:
        """The segment's terms in key order (read from its file when asked: translation, merges)."""
        text = (self.folder / "vocabulary.txt").read_text(encoding="utf-8")
        return text.split("\n") if text else []

    def passages(self, start: int = 0, stop: int | None = None) -> PassageVectors:
        """The sentence table of rows start..stop-1 (default: all), renumbered from 0, in float32
        (a document's rows for an update, one row's sentences); only those rows' slices of the
        maps are read. The USE route scores the stored float16 maps (`stored_table`)."""
        stop = len(self) if stop is None else stop
        x, owner = self.xl, self.xl["owner"]
        a, b = int(np.searchsorted(owner, start, "left")), int(np.searchsorted(owner, stop - 1, "right"))
        b = max(a, b)
        return PassageVectors(np.asarray(x["chunks"][start:stop], np.float32), np.asarray(x["sentences"][a:b], np.float32),
                              np.asarray(owner[a:b], np.int64) - start, np.asarray(x["spans"][a:b], np.int32),
                              np.asarray(x["dense"][a:b], np.float32) if "dense" in x else None)

    def stored_table(self) -> PassageVectors:
        """The sentence table as stored: its float16 maps, not converted or copied (for `check`)."""
        x = self.xl
        return PassageVectors(x["chunks"], x["sentences"], x["owner"], x["spans"], x.get("dense"))

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(spans, USE vectors, e5 vectors or None) of one row's sentences, read from the maps."""
        one = self.passages(row, row + 1)
        return one.spans, one.sentences, one.dense
