"""What every store keeps and answers: the narrow interface the engine talks to."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from ..chunking import Chunk

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
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    documents: dict[str, DocRecord] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        docs = {k: DocRecord(**v) for k, v in data.get("documents", {}).items()}
        return cls(**{**data, "documents": docs})


class Store(Protocol):
    """Vectors + chunk records + manifest, updated per document, searched by vector."""

    manifest: Manifest

    def __len__(self) -> int: ...

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Put a document's chunks and vectors in place of any it had."""

    def delete(self, doc_ids: list[str]) -> None:
        """Remove documents with all their chunks and vectors."""

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None) -> list[list[tuple[float, Chunk]]]:
        """For each query vector, the k best chunks by inner product, best first."""

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        """A document's chunks in order."""

    def all_chunks(self) -> list[Chunk]:
        """Every chunk, in store order."""

    def save(self) -> None:
        """Persist atomically: the previous state stays intact until the new one is complete."""
