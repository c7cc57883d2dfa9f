"""Stores: where vectors, chunk records and the manifest live.

`store_class(location)` picks the implementation from the index location: a folder is the
embedded store (the default: immutable FAISS/postings segments beside a SQLite record database,
faiss_store.py, segment.py, records.py); `milvus://HOST:PORT/COLLECTION` (or `milvus+tls://`) is a
Milvus server, `milvus-lite:///path/file.db` an in-process milvus-lite file. Both offer the
interface of `base.Store` (rows and scores out, records read for the rows shown), so the engine
never branches on the store.
"""
from __future__ import annotations


def is_milvus(location: str) -> bool:
    return str(location).startswith(("milvus://", "milvus+tls://", "milvus-lite://"))


def store_class(location: str):
    """The store implementation for an index location."""
    if is_milvus(location):
        from .milvus_store import MilvusStore

        return MilvusStore
    from .faiss_store import FaissStore

    return FaissStore
