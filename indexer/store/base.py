"""What every store keeps and answers: the narrow interface the engine talks to."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..chunking import Chunk
from .table import PassageVectors

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    origin: str  # where its text came from: a file's path, upload:NAME, pasted
    encoding: str | None
    chunks: int
    added: str
    chars: int = 0
    meta: dict = field(default_factory=dict)
    source: str = ""  # the source (a folder the index follows) it came from; "" for a file, upload or paste of its own
    file: dict = field(default_factory=dict)  # its file as last read: size, mtime_ns, sha256 (what `sync` compares)

    @staticmethod
    def from_json(data: dict) -> "DocRecord":
        """A record as stored; one of before sources kept the file's path as its `source`."""
        if "origin" not in data:
            data = {**data, "origin": data.get("source", "")}
            data.pop("source", None)
        return DocRecord(**data)


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
    sources: dict = field(default_factory=dict)  # name → {"root", "include", "exclude", "synced"}: the folders it follows
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
        docs = {k: DocRecord.from_json(v) for k, v in data.get("documents", {}).items()}
        return cls(**{**data, "documents": docs})


def document_key(doc: DocRecord) -> str:
    """What a document's chunks are grouped by when its BM25 is taken whole: the document, or the
    document a JSON Lines passage names as its own (a `doc_id` field: passages cut elsewhere)."""
    return str(doc.meta.get("doc_id") or doc.doc_id)


def check_upsert(chunks: list[Chunk], vectors: np.ndarray, terms: list[list[str]], xl, crosslingual: bool) -> None:
    """The arguments of `upsert` agree: one vector and one term list per chunk, and cross-lingual
    vectors exactly when the index keeps them."""
    if not len(chunks) == len(vectors) == len(terms):
        raise ValueError("one vector and one term list per chunk")
    if crosslingual != (xl is not None) or (xl is not None and len(xl) != len(chunks)):
        raise ValueError("cross-lingual vectors are needed for every chunk exactly when the index keeps them")


def empty_table(manifest: Manifest) -> PassageVectors:
    """The empty sentence table of an index that keeps one (with e5 sentence vectors if it keeps them)."""
    return PassageVectors.empty(manifest.dim if manifest.crosslingual.get("e5_sentences") else None)


class IndexReader(Protocol):
    """One committed snapshot of an index, searched by vector and keywords (indexer.store.snapshot).

    Rows are integers: a chunk's position in the snapshot (over its segments, deleted rows
    included; `rows_of()` are the live ones). Searches return rows and scores; records are read
    for the rows a caller shows (`chunks`). A snapshot never changes: `reopened()` gives the
    newer one once another writer has committed. (It is opened by its class: `Snapshot.load`.)
    """

    manifest: Manifest
    generation: str  # the commit it holds, gen-NNNNNN
    location: str  # where the index is, as given

    def reopened(self) -> "IndexReader":
        """This snapshot while it is the last commit, else the last commit (reusing what is still valid)."""

    def stats(self, recall: bool = False) -> dict:
        """What `info` shows of the store: chunks, index_type, keyword_backend, sentences (and, with
        `recall`, the vector index's recall@10 against exact search)."""

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

    def document_bm25(self, query_terms: list[str], rows: list[int]) -> np.ndarray:
        """The BM25 of each row's document taken whole (its chunks' counts summed), for the query."""

    def rows_of(self, doc_ids: set[str] | None = None) -> np.ndarray:
        """The live rows of these documents (None: every live row), ascending."""

    def rows_with_terms(self, terms: list[str]) -> np.ndarray | None:
        """The live rows indexed under every one of these keyword terms, ascending (None: this store
        cannot tell without reading the texts)."""

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """The chunk records of these rows, in the order given."""

    def tie_keys(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """Each row's chunk id as (document id, position): the order of equal scores (indexer.topk)."""

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A row's sentences: spans in its text, USE vectors, e5 vectors (None unless kept)."""

    def sentence_tables(self) -> "Iterator[tuple[int, PassageVectors]]":
        """The sentence table of every row in pieces, (first row, its rows' table), in row order;
        nothing where the index keeps none (the USE route scores one piece at a time)."""

    def vocabulary(self) -> frozenset[str]:
        """Every keyword term of the live chunks."""

    def document_text(self, doc_id: str) -> str:
        """A document's whole text, as it was read (a KeyError for an unknown id)."""


class IndexWriter(Protocol):
    """Changes to an index, kept in memory (and in its open commit) until `commit` makes them
    visible at once (indexer.store.writer). One writer at a time, under the writers' lock."""

    manifest: Manifest  # as it will be committed; its documents include the pending changes
    snapshot: IndexReader | None  # the last commit (None for a new index before its first commit)

    @classmethod
    def create(cls, location, manifest: Manifest, vectors: str | None = None) -> "IndexWriter":
        """A writer of a new index there, which replaces any index there at its first commit."""

    @classmethod
    def open(cls, location) -> "IndexWriter":
        """A writer over the index last committed there."""

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: "PassageVectors | None" = None) -> None:
        """Put a document's chunks, vectors, terms (and sentence table) in place of any it had."""

    def delete(self, doc_ids: list[str]) -> None:
        """Remove documents with all their chunks and vectors."""

    def touch(self, record: DocRecord) -> None:
        """Rewrite a committed document's record alone (no chunk is written)."""

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, "PassageVectors | None"]:
        """A committed document's chunks with their vectors and sentence table, row-aligned (what an
        update reuses for the chunks whose text did not change)."""

    def flush(self) -> None:
        """Write what is pending into the commit being made, and let it go from memory (a build
        stays within bounded memory); nothing is visible before `commit`."""

    def commit(self) -> IndexReader:
        """Commit atomically (the previous state stays intact until the new one is complete); the
        snapshot of what was committed."""

    def rollback(self) -> None:
        """Drop an unfinished commit: the index stays as it was."""

    def optimize(self) -> int:
        """Merge what the store keeps in pieces into one; how many pieces there were."""

    def merge(self, positions: list[int]) -> None:
        """Merge these pieces (segments, by position) into one."""
