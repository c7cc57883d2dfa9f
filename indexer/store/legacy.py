"""Reading an index of format 1 (one generation folder, rewritten whole on every change), for
`python -m indexer upgrade` only: the store refuses to open one, so it is never silently misread.

Format 1 kept, in DIR/gen-NNNNNN/ named by DIR/CURRENT: manifest.json, chunks.jsonl, texts.jsonl,
terms.jsonl, vectors.npy, index.faiss and (with the cross-lingual table) xl.npz.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..crosslingual import PassageVectors
from ..errors import StoreError
from .base import Manifest
from .records import chunk_from_json

CURRENT = "CURRENT"
FILES = ("manifest.json", "chunks.jsonl", "texts.jsonl", "terms.jsonl", "vectors.npy")


def is_legacy(path: Path) -> bool:
    """Whether `path` holds a format-1 index (a CURRENT pointer and no record database)."""
    return (Path(path) / CURRENT).is_file()


def read_legacy(path: Path) -> tuple[Manifest, list[Chunk], dict[str, str], list[list[str]], np.ndarray,
                                     PassageVectors | None]:
    """Manifest, chunks, texts, terms, vectors and sentence table of a format-1 index."""
    path = Path(path)
    gen = path / (path / CURRENT).read_text(encoding="utf-8").strip()
    for name in FILES:
        if not (gen / name).is_file():
            raise StoreError(f"{path}: index file {name} is missing; it cannot be upgraded")
    try:
        manifest = Manifest.from_json(json.loads((gen / "manifest.json").read_text(encoding="utf-8")))
        lines = (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
        chunks = [chunk_from_json(line) for line in lines if line]
        texts = {row["doc_id"]: row["text"] for row in map(json.loads,
                 (gen / "texts.jsonl").read_text(encoding="utf-8").splitlines()) if row}
        terms = [json.loads(line) for line in (gen / "terms.jsonl").read_text(encoding="utf-8").splitlines()]
        vectors = np.load(gen / "vectors.npy")
        xl = PassageVectors.from_bytes((gen / "xl.npz").read_bytes()) if manifest.crosslingual else None
    except (ValueError, TypeError, KeyError, OSError, EOFError) as exc:
        raise StoreError(f"{path}: the format-1 index is damaged ({exc}); it cannot be upgraded") from None
    if not len(chunks) == len(terms) == len(vectors):
        raise StoreError(f"{path}: the format-1 index's parts disagree; it cannot be upgraded")
    return manifest, chunks, texts, terms, vectors, xl
