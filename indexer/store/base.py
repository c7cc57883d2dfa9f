"""What every store keeps and answers: the narrow interface the engine talks to."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..chunking import Chunk

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..crosslingual import PassageVectors

FORMAT_VERSION = 1


def now() -> str:
    """UTC timestamp, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class DocRecord:
    """What the index remembers of one document."""

    doc_id: str
    content_hash: str
    title: str
    source: str
    encoding: str | None
    chunks: int
    added: str
    chars: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """Plain data describing an index; saved as manifest.json."""

    model: str
    dim: int
    chunking: dict
    index_type: str = "auto"
    keyword: dict = field(default_factory=dict)  # {"user_terms": [...]}: how terms were segmented
    crosslingual: dict = field(default_factory=dict)  # {"encoder", "dim"} when the second (USE) index is kept
    vectors: dict = field(default_factory=dict)  # {"milvus", "collection", "first"} when Milvus keeps the vectors
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    documents: dict[str, DocRecord] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain data (the documents read whole, however the store keeps them)."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "documents"}
        return {**out, "documents": {d.doc_id: asdict(d) for d in self.documents.values()}}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        docs = {k: DocRecord(**v) for k, v in data.get("documents", {}).items()}
        return cls(**{**data, "documents": docs})


def check_upsert(chunks: list[Chunk], vectors: np.ndarray, terms: list[list[str]], xl, crosslingual: bool) -> None:
    """The arguments of `upsert` agree: one vector and one term list per chunk, and cross-lingual
    vectors exactly when the index keeps them."""
    if not len(chunks) == len(vectors) == len(terms):
        raise ValueError("one vector and one term list per chunk")
    if crosslingual != (xl is not None) or (xl is not None and len(xl) != len(chunks)):
        raise ValueError("cross-lingual vectors are needed for every chunk exactly when the index keeps them")


def empty_table(manifest: Manifest) -> "PassageVectors":
    """The empty sentence table of an index that keeps one (with e5 sentence vectors if it keeps them)."""
    from ..crosslingual import PassageVectors

    return PassageVectors.empty(manifest.dim if manifest.crosslingual.get("e5_sentences") else None)


class Store(Protocol):
    """Vectors + chunk records + manifest, updated per document, searched by vector and keywords.

    Rows are integers: a chunk's position in the loaded index (indexer.store.faiss_store: over its
    segments, deleted rows included; `live_rows()` are the others). Searches return rows and
    scores; records are read for the rows a caller shows (`chunks`).
    """

    manifest: Manifest
    generation: str | None
    location: str  # where the index is, as given (a folder, or a Milvus address)
    keyword_backend: str  # which BM25 scores the keyword route, as shown by `info`
    index_kind: str  # the vector index, as shown by `info` ("flat", "ivf", "flat+ivf" …)

    # the index at a location (class-level)
    @staticmethod
    def exists(location) -> bool:
        """Whether an index is there (a StoreError for a location that holds something else)."""

    @staticmethod
    def lock(location):
        """The writers' lock of that index: a context manager; two writers never overlap."""

    @classmethod
    def load(cls, location) -> "Store":
        """The index as last committed there."""

    @classmethod
    def upgrade(cls, location) -> str:
        """Convert an index of the previous format in place (lock held) and say what was done."""

    @staticmethod
    def display(location: str) -> str:
        """The location as shown to people (no secrets)."""

    def __len__(self) -> int: ...

    # writes, kept in memory until save
    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: "PassageVectors | None" = None) -> None:
        """Put a document's chunks, vectors, terms (and cross-lingual vectors) in place of any it had."""

    def delete(self, doc_ids: list[str]) -> None:
        """Remove documents with all their chunks and vectors."""

    def flush(self) -> None:
        """Write what is pending into the commit being made, and let it go from memory (a build
        stays within bounded memory); nothing is visible before `save`."""

    def save(self) -> None:
        """Commit atomically: the previous state stays intact until the new one is complete."""

    def rollback(self) -> None:
        """Drop an unfinished commit: the index stays as it was."""

    def optimize(self) -> int:
        """Merge what the store keeps in pieces into one; how many pieces there were."""

    def reopened(self) -> "Store":
        """The store as last committed (reusing what is still valid)."""

    def is_current(self) -> bool:
        """False once another process has committed a newer generation."""

    # rows
    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None) -> list[list[tuple[float, int]]]:
        """For each query vector, the k best (score, row) by inner product, best first."""

    def dense_scores(self, queries: np.ndarray, rows: list[list[int]]) -> list[np.ndarray]:
        """For each query vector, its exact inner product with each of the given rows (float32)."""

    def keyword_search(self, query_terms: list[str], k: int, doc_ids: set[str] | None = None,
                       rows: np.ndarray | None = None) -> list[tuple[float, int]]:
        """The k best (score, row) by BM25 of the query terms, best first, among the rows of these
        documents (None: all) that are among `rows` (ascending; None: all)."""

    def keyword_ceiling(self, query_terms: list[str]) -> float | None:
        """Σ idf of the query's terms (None where the BM25 is not the project's): BM25's ceiling."""

    def rows_of(self, doc_ids: set[str]) -> np.ndarray:
        """The live rows of these documents, ascending."""

    def live_rows(self) -> np.ndarray:
        """Every live row, ascending."""

    def rows_with_terms(self, terms: list[str]) -> np.ndarray | None:
        """The live rows indexed under every one of these keyword terms, ascending (None: this store
        cannot tell without reading the texts)."""

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """The chunk records of these rows, in the order given."""

    def doc_ids(self, rows: list[int]) -> list[str]:
        """The document of each of these rows."""

    def tie_keys(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """Each row's chunk id as (document id, position): the order of equal scores (indexer.topk)."""

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A row's sentences: spans in its text, USE vectors, e5 vectors (None unless kept)."""

    def sentence_tables(self) -> "Iterator[tuple[int, PassageVectors]]":
        """The sentence table of every row in pieces, (first row, its rows' table), in row order;
        nothing where the index keeps none (the USE route scores one piece at a time)."""

    def sentence_count(self) -> int:
        """How many sentences the sentence table holds (0 without one)."""

    def vocabulary(self) -> frozenset[str]:
        """Every keyword term of the indexed chunks."""

    # documents
    def document_text(self, doc_id: str) -> str: ...

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, "PassageVectors | None"]:
        """A saved document's chunks with their vectors and cross-lingual vectors, row-aligned
        (what an update reuses for the chunks whose text did not change)."""

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        """A document's chunks in order."""

    def problems(self) -> list[str]:
        """What `check` reports (empty: consistent)."""

    def recall_vs_exact(self) -> float | None:
        """Recall@10 of the vector search against exact search (None: it is exact)."""
