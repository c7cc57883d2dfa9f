"""Stores: where vectors, chunk records and the manifest live.

An index is a folder: immutable segments (vectors, postings, sentence tables; segment.py) beside a
SQLite record database (records.py), the commit point (layout.py says what a folder holds). Its
vectors are kept either in the segments, as FAISS files, or by record id in a Milvus collection
(vectors.py, milvus_vectors.py; chosen when the index is built with `--vectors milvus://…`);
records, keywords, sentence tables and commits are the same code for both.

Two sides, as in Lucene and tantivy: a `Snapshot` (snapshot.py, `base.IndexReader`) is one commit,
opened for searching, which never changes and reopens to a newer one; a `Writer` (writer.py,
`base.IndexWriter`) changes the index under the writers' lock and commits atomically. The rows of a
snapshot are a `RowMap` (rows.py); when segments merge is merge_policy.py; earlier formats are
converted by migrate.py.
"""
from __future__ import annotations

from ..errors import StoreError
from .layout import exists, lock
from .milvus_vectors import parse_location
from .snapshot import Snapshot
from .migrate import is_current, upgrade
from .writer import Writer

__all__ = ["Snapshot", "Writer", "check_location", "exists", "is_current", "lock", "upgrade"]


def check_location(location: str) -> None:
    """Refuse a location that is not an index folder: a Milvus address keeps only the vectors."""
    if str(location).startswith(("milvus://", "milvus+tls://", "milvus-lite://")):
        shown = parse_location(location).display
        raise StoreError(f"{shown} is a Milvus location, and Milvus keeps only an index's vectors: give the index "
                         f"a folder, and the collection to `build`: `python -m indexer build PATHS --index DIR "
                         f"--vectors {shown}`")
