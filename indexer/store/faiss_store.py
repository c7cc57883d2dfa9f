"""The embedded default store: a folder with a FAISS index, the vectors, chunk records and manifest.

One generation folder holds:
    manifest.json   model, dimension, chunking settings, index type, documents with hashes
    chunks.jsonl    one chunk record per row, in row order
    texts.jsonl     each document's full text, for context around hits and for rebuilding
    terms.jsonl     each row's keyword terms (jieba); BM25 is built from them on load
    vectors.npy     float32 [rows, dim], L2-normalised; the source the FAISS index is built from
    index.faiss     the FAISS index over the rows (flat inner product, HNSW or IVF)
    xl.npz          when the index keeps the cross-lingual (USE) vectors: float16 passage vectors
                    [rows, 512], sentence vectors [m, 512], each sentence's row and (start, end)
Rows are positions; FAISS ids are row numbers. Removing a document drops its rows and rebuilds
the FAISS index from the remaining vectors, so its vectors are really gone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from ..chunking import Chunk
from ..crosslingual import PassageVectors
from ..errors import StoreError
from ..keyword import Analyzer, KeywordIndex
from .atomic import current_generation, new_generation, writer_lock
from .base import FORMAT_VERSION, DocRecord, Manifest, check_upsert, empty_table, now

FILES = ("manifest.json", "chunks.jsonl", "texts.jsonl", "terms.jsonl", "vectors.npy", "index.faiss")
XL_FILE = "xl.npz"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
LOCK_TIMEOUT_ENV = "INDEXER_LOCK_TIMEOUT"  # seconds a writer waits for another writer
HNSW_ABOVE = 100_000  # auto: exact search below this many vectors, HNSW from there
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
IVF_NPROBE = 32  # bench: recall@10 0.9993 at 100k (0.59 ms), 0.9997 at 1M (2.6 ms); nlist/16 cost 13x more at 1M


def choose_index_type(requested: str, n: int) -> str:
    """The concrete FAISS index kind for `n` vectors: flat is exact and fast enough when small."""
    if requested not in INDEX_TYPES:
        raise StoreError(f"unknown index type {requested!r}; choose one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "hnsw" if n >= HNSW_ABOVE else "flat"


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
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # a small corpus gets one list; no "please provide 39 points" warning
        index.train(vectors)
        index.nprobe = min(nlist, IVF_NPROBE)
    else:
        raise StoreError(f"unknown index type {kind!r}")
    if n:
        index.add(vectors)
    return index


def kind_of(index: faiss.Index) -> str:
    """The kind name of a FAISS index object."""
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if isinstance(index, faiss.IndexIVF) else "flat"


def _search_params(index: faiss.Index, rows: np.ndarray | None):
    """FAISS search parameters restricting results to `rows` (None: no restriction)."""
    if rows is None:
        return None
    sel = faiss.IDSelectorBatch(rows.astype(np.int64))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=sel)


class FaissStore:
    """Chunks and vectors in memory, row-aligned; saved as a generation folder."""

    def __init__(self, path: Path, manifest: Manifest, chunks: list[Chunk] | None = None,
                 vectors: np.ndarray | None = None, index: faiss.Index | None = None,
                 texts: dict[str, str] | None = None, terms: list[list[str]] | None = None,
                 xl: PassageVectors | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._chunks: list[Chunk] = list(chunks or [])
        self._vectors = vectors if vectors is not None else np.zeros((0, manifest.dim), np.float32)
        self._index = index
        self._texts: dict[str, str] = dict(texts or {})
        self._terms: list[list[str]] = list(terms or [[] for _ in self._chunks])
        self._keyword: KeywordIndex | None = None
        self._row_of: dict[str, int] | None = None
        self._xl = xl if xl is not None or not manifest.crosslingual else empty_table(manifest)
        self.generation: str | None = None

    # Rows appended by upserts are joined on the next read, not on each upsert: adding 10,000
    # documents one by one would otherwise copy the growing arrays 10,000 times.
    @property
    def _vectors(self) -> np.ndarray:
        if len(self._vec_parts) > 1:
            self._vec_parts = [np.concatenate(self._vec_parts)]
        return self._vec_parts[0]

    @_vectors.setter
    def _vectors(self, value: np.ndarray) -> None:
        self._vec_parts = [value]

    @property
    def _xl(self) -> PassageVectors | None:
        if self._xl_parts is not None and len(self._xl_parts) > 1:
            self._xl_parts = [PassageVectors.concat(self._xl_parts)]
        return None if self._xl_parts is None else self._xl_parts[0]

    @_xl.setter
    def _xl(self, value: PassageVectors | None) -> None:
        self._xl_parts = None if value is None else [value]

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def index_kind(self) -> str:
        return choose_index_type(self.manifest.index_type, len(self))

    # ---------------------------------------------------------------- updates

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: PassageVectors | None = None) -> None:
        check_upsert(chunks, vectors, terms, xl, self._xl_parts is not None)
        if doc.doc_id in self.manifest.documents:
            self.delete([doc.doc_id])
        if xl is not None:
            self._xl_parts.append(xl)
        self._chunks.extend(chunks)
        self._terms.extend(terms)
        self._keyword = self._row_of = None
        self._texts[doc.doc_id] = text
        self._vec_parts.append(np.ascontiguousarray(vectors, dtype=np.float32))
        if self._index is not None and kind_of(self._index) == self.index_kind != "ivf":
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))  # append, no rebuild
        else:
            self._index = None
        self.manifest.documents[doc.doc_id] = doc
        self.manifest.updated = now()

    def delete(self, doc_ids: list[str]) -> None:
        drop = set(doc_ids)
        keep = np.array([c.doc_id not in drop for c in self._chunks], dtype=bool)
        self._chunks = [c for c, k in zip(self._chunks, keep) if k]
        self._terms = [t for t, k in zip(self._terms, keep) if k]
        self._keyword = self._row_of = None
        self._vectors = np.ascontiguousarray(self._vectors[keep])
        if self._xl is not None:
            self._xl = self._xl.take(np.flatnonzero(keep))
        self._index = None  # rebuilt from the kept vectors: the removed ones are gone
        for doc_id in drop:
            self.manifest.documents.pop(doc_id, None)
            self._texts.pop(doc_id, None)
        self.manifest.updated = now()

    # ---------------------------------------------------------------- reads

    def faiss_index(self) -> faiss.Index:
        """The FAISS index over the current rows, built on first use after a change."""
        if self._index is None:
            self._index = build_faiss_index(self._vectors, self.index_kind)
        return self._index

    def _rows_of(self, doc_ids: set[str] | None) -> np.ndarray | None:
        """Row numbers of these documents' chunks (None: all rows)."""
        if doc_ids is None:
            return None
        return np.flatnonzero([c.doc_id in doc_ids for c in self._chunks]).astype(np.int64)

    def _keyword_index(self) -> KeywordIndex:
        if self._keyword is None:
            analyzer = Analyzer.of(self.manifest.keyword)
            self._keyword = KeywordIndex(self._terms, analyzer.k1, analyzer.b)
        return self._keyword

    def vocabulary(self) -> frozenset[str]:
        return self._keyword_index().vocabulary

    def keyword_ceiling(self, query_terms: list[str]) -> float | None:
        """The query's BM25 ceiling (KeywordIndex.ceiling)."""
        return self._keyword_index().ceiling(query_terms)

    def cross_vectors(self) -> PassageVectors | None:
        return self._xl

    def keyword_search(self, query_terms: list[str], k: int, doc_ids: set[str] | None = None) -> list[tuple[float, Chunk]]:
        """BM25 over the stored terms: the k best chunks with any query term, best first."""
        scores, rows = self._keyword_index().search(query_terms, k, self._rows_of(doc_ids))
        return [(float(s), self._chunks[i]) for s, i in zip(scores, rows)]

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None) -> list[list[tuple[float, Chunk]]]:
        rows = self._rows_of(doc_ids)
        if rows is not None and not len(rows):
            return [[] for _ in range(len(queries))]
        k = min(k, len(self) if rows is None else len(rows))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        index = self.faiss_index()
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k,
                                   params=_search_params(index, rows))
        return [[(float(s), self._chunks[i]) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

    def dense_scores(self, queries: np.ndarray, chunk_ids: list[list[str]]) -> list[np.ndarray]:
        """Exact inner products from the stored vectors (whatever kind the FAISS index is)."""
        if self._row_of is None:
            self._row_of = {c.chunk_id: i for i, c in enumerate(self._chunks)}
        return [self._vectors[[self._row_of[c] for c in ids]] @ np.asarray(q, dtype=np.float32)
                for q, ids in zip(queries, chunk_ids)]

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, PassageVectors | None]:
        rows = np.flatnonzero([c.doc_id == doc_id for c in self._chunks])
        xl = PassageVectors.gather([(self._xl, int(r)) for r in rows]) if self._xl is not None else None
        return [self._chunks[r] for r in rows], np.asarray(self._vectors[rows], dtype=np.float32), xl

    def document_text(self, doc_id: str) -> str:
        return self._texts[doc_id]

    def recall_vs_exact(self, k: int = 10, sample: int = 200, seed: int = 0) -> float | None:
        """Recall@k of the FAISS index against exact search, using stored vectors as queries
        (None for an exact index: nothing to measure)."""
        index = self.faiss_index()
        if kind_of(index) == "flat" or not len(self):
            return None
        rng = np.random.default_rng(seed)
        queries = self._vectors[rng.choice(len(self), size=min(sample, len(self)), replace=False)]
        k = min(k, len(self))
        _, approx = index.search(queries, k)
        _, exact = faiss.knn(queries, self._vectors, k, metric=faiss.METRIC_INNER_PRODUCT)  # blocked, exact
        return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))

    def vectors(self) -> np.ndarray:
        return self._vectors

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return sorted((c for c in self._chunks if c.doc_id == doc_id), key=lambda c: c.position)

    def all_chunks(self) -> list[Chunk]:
        return list(self._chunks)

    # ---------------------------------------------------------------- disk

    def save(self) -> None:
        """Write a complete new generation, then switch to it."""
        index = self.faiss_index()
        with new_generation(self.path) as gen:
            (gen / "manifest.json").write_text(json.dumps(self.manifest.to_json(), ensure_ascii=False, indent=1),
                                               encoding="utf-8")
            with open(gen / "chunks.jsonl", "w", encoding="utf-8") as fh:
                for chunk in self._chunks:
                    fh.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            with open(gen / "texts.jsonl", "w", encoding="utf-8") as fh:
                for doc_id, text in self._texts.items():
                    fh.write(json.dumps({"doc_id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            with open(gen / "terms.jsonl", "w", encoding="utf-8") as fh:
                for terms in self._terms:
                    fh.write(json.dumps(terms, ensure_ascii=False) + "\n")
            np.save(gen / "vectors.npy", self._vectors)
            if self._xl is not None:
                save_xl(gen / XL_FILE, self._xl)
            faiss.write_index(index, str(gen / "index.faiss"))
            self.generation = gen.name.lstrip(".").removesuffix(".tmp")

    @staticmethod
    def exists(path: Path) -> bool:
        """Whether there is an index at `path`: False for no folder or an empty one, True for an
        index; a StoreError for anything else, so a damaged index is never written over."""
        path = Path(path)
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return False
        current_generation(path)
        return True

    @staticmethod
    def lock(path: Path):
        """The writers' lock of the index at `path` (a file lock beside the folder). A folder that
        holds other things and no index is refused: an index is never written into it."""
        path = Path(path)
        if path.is_dir() and any(path.iterdir()) and not any(
                p.name == "CURRENT" or p.name.startswith(("gen-", ".gen-")) for p in path.iterdir()):
            raise StoreError(f"{path} is a folder with other files, not an index; choose another --index")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} is a file, not an index folder")
        return writer_lock(Path(path), timeout=float(os.environ.get(LOCK_TIMEOUT_ENV, "600")))

    def is_current(self) -> bool:
        """False once another process has switched in a newer generation."""
        return self.generation == current_generation(self.path).name

    @property
    def location(self) -> str:
        return str(self.path)

    @classmethod
    def load(cls, path: Path) -> "FaissStore":
        """Load the live generation, checking that its parts agree; a StoreError says what is wrong."""
        gen = current_generation(path)
        for name in FILES:
            if not (gen / name).is_file():
                raise StoreError(f"{path}: index file {name} is missing")
        manifest = read_manifest(gen)
        try:
            chunks = [_chunk_from_json(line) for line in
                      (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if line]
            texts = {row["doc_id"]: row["text"] for row in map(json.loads,
                     (gen / "texts.jsonl").read_text(encoding="utf-8").splitlines()) if row}
            terms = [json.loads(line) for line in (gen / "terms.jsonl").read_text(encoding="utf-8").splitlines()]
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{path}: chunk or text records are damaged ({exc})") from exc
        try:
            vectors = np.load(gen / "vectors.npy", mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(f"{path}: vectors.npy is damaged ({exc})") from exc
        try:  # IVF lists are memory-mapped (FAISS reads flat and HNSW indexes whole); vectors.npy is mapped above
            ivf = choose_index_type(manifest.index_type, len(chunks)) == "ivf"
            index = faiss.read_index(str(gen / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if ivf else 0)
        except RuntimeError as exc:
            raise StoreError(f"{path}: index.faiss is damaged") from exc
        xl = load_xl(gen / XL_FILE, str(path)) if manifest.crosslingual else None
        store = cls(path, manifest, chunks, np.ascontiguousarray(vectors, dtype=np.float32), index, texts, terms, xl)
        store.generation = gen.name
        problems = store.problems()
        if problems:
            raise StoreError(f"{path}: {problems[0]}")
        return store

    def problems(self) -> list[str]:
        """Inconsistencies between manifest, chunk records, vectors and FAISS index (empty: none)."""
        out = []
        n, docs = len(self._chunks), self.manifest.documents
        if self._vectors.shape != (n, self.manifest.dim):
            out.append(f"vectors are {self._vectors.shape}, expected ({n}, {self.manifest.dim})")
        if self._index is not None and self._index.ntotal != n:
            out.append(f"FAISS index holds {self._index.ntotal} vectors but there are {n} chunks")
        if self._index is not None and self._index.d != self.manifest.dim:
            out.append(f"FAISS index has dimension {self._index.d}, manifest says {self.manifest.dim}")
        counts: dict[str, int] = {}
        for c in self._chunks:
            counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
        if len(self._terms) != n:
            out.append(f"{len(self._terms)} keyword term lists for {n} chunks")
        if set(self._texts) != set(docs):
            out.append("document texts disagree with the manifest")
        if set(counts) - set(docs):
            out.append(f"chunks of unknown documents: {sorted(set(counts) - set(docs))[:3]}")
        bad = [d for d, rec in docs.items() if counts.get(d, 0) != rec.chunks]
        if bad:
            out.append(f"chunk count disagrees with the manifest for {bad[:3]}")
        if len({c.chunk_id for c in self._chunks}) != n:
            out.append("duplicate chunk ids")
        if n and not np.all(np.isfinite(self._vectors)):
            out.append("vectors contain NaN or infinity")
        if self._xl is not None:
            out.extend(self._xl.problems(n, self.manifest.dim if self.manifest.crosslingual.get("e5_sentences") else None))
        return out


def save_xl(path: Path, xl: PassageVectors) -> None:
    """The sentence table as one .npz (PassageVectors.to_bytes)."""
    path.write_bytes(xl.to_bytes())


def load_xl(path: Path, where: str) -> PassageVectors:
    """Read what save_xl wrote; a StoreError names a missing or damaged file."""
    if not path.is_file():
        raise StoreError(f"{where}: index file {path.name} is missing (the cross-lingual vectors)")
    try:
        return PassageVectors.from_bytes(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise StoreError(f"{where}: {path.name} is damaged ({exc})") from exc


def read_manifest(gen: Path) -> Manifest:
    """Parse manifest.json of a generation; refuse a newer format than this code knows."""
    try:
        data = json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise StoreError(f"{gen.parent}: manifest.json is damaged ({exc})") from exc
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{gen.parent}: index format version {version!r} is newer than this tool "
                         f"understands ({FORMAT_VERSION}); upgrade the tool")
    try:
        return Manifest.from_json(data)
    except TypeError as exc:
        raise StoreError(f"{gen.parent}: manifest.json is damaged ({exc})") from exc


def _chunk_from_json(line: str) -> Chunk:
    data = json.loads(line)
    data["section_path"] = tuple(data.get("section_path", ()))
    return Chunk(**data)
