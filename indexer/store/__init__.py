"""Stores: where vectors, chunk records and the manifest live.

An index is a folder (faiss_store.py): immutable segments (vectors, postings, sentence tables;
segment.py) beside a SQLite record database (records.py), the commit point. Its vectors are kept
either in the segments, as FAISS files, or by record id in a Milvus collection (milvus_vectors.py,
chosen when the index is built with `--vectors milvus://…`); records, keywords, sentence tables and
commits are the same code for both. `store_class(location)` gives the implementation of `base.Store`
for an index location, so the engine never branches on where vectors live.
"""
from __future__ import annotations

from ..errors import StoreError


def is_milvus(location: str) -> bool:
    return str(location).startswith(("milvus://", "milvus+tls://", "milvus-lite://"))


def store_class(location: str):
    """The store implementation for an index location (a folder)."""
    if is_milvus(location):
        from .milvus_vectors import parse_location

        shown = parse_location(location).display
        raise StoreError(f"{shown} is a Milvus location, and Milvus keeps only an index's vectors: give the index "
                         f"a folder, and the collection to `build`: `python -m indexer build PATHS --index DIR "
                         f"--vectors {shown}`")
    from .faiss_store import FaissStore

    return FaissStore
