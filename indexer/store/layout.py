"""What an index folder is: whether one is there, its format, its manifest, and the writers' lock.

    DIR/records.db     the records and the commit point (indexer.store.records), format 2 and 3
    DIR/seg-NNNNNN/    one segment (indexer.store.segment)
    DIR/CURRENT        a format-1 index (indexer.store.migrate converts it)
    DIR.lock           the writers' lock, beside the folder (readers never take it)
Formats: 1, one generation folder rewritten whole; 2, segments and records.db with chunk records
keyed (segment, row); 3 (this one), records keyed by a stable id, each segment mapping its rows to
ids (ids.npy). A folder of an earlier format is refused with the command that converts it, so it
is never silently misread; one of a later format, with the advice to upgrade the tool.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import StoreError
from .atomic import writer_lock
from .base import Manifest
from .records import DB_FILE, Records

FOLDER_FORMAT = 3
CURRENT = "CURRENT"  # a format-1 index's pointer to its generation folder
LOCK_TIMEOUT_ENV = "INDEXER_LOCK_TIMEOUT"  # seconds a writer waits for another writer


def is_legacy(path: Path) -> bool:
    """Whether `path` holds a format-1 index (a CURRENT pointer and no record database)."""
    return (Path(path) / CURRENT).is_file()


def exists(path: Path) -> bool:
    """Whether there is an index at `path`: False for no folder or an empty one, True for an index
    (of this format or an earlier one); a StoreError for a folder of other files."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    if (path / DB_FILE).is_file() or is_legacy(path):
        return True
    raise StoreError(f"{path} is not an index folder (no {DB_FILE})")


def lock(path: Path):
    """The writers' lock of the index at `path` (a file lock beside the folder). A folder that
    holds other things and no index is refused: an index is never written into it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file, not an index folder")
    exists(path)  # a folder of other files: refused
    return writer_lock(path, timeout=float(os.environ.get(LOCK_TIMEOUT_ENV, "600")))


def upgrade_hint(path: Path, version: int) -> str:
    what = {1: "rewritten whole on every change", 2: "its chunk records keyed by segment and row"}[version]
    return f"{path} is an index of format {version} ({what}); convert it once with `python -m indexer upgrade --index {path}`"


def records_of(path: Path) -> Records:
    """The record database of the committed index at `path` (a StoreError naming the way out
    where there is none, or an index of format 1)."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"no index at {path}: build one with `python -m indexer build PATHS --index {path}`")
    if not (path / DB_FILE).is_file():
        raise StoreError(upgrade_hint(path, 1) if is_legacy(path) else f"{path} is not an index folder (no {DB_FILE})")
    return Records(path / DB_FILE)


def read_manifest(records: Records, path: Path, upgrading: bool = False) -> Manifest:
    """The manifest kept in the record database; refuse a newer format than this code knows (and,
    unless `upgrading`, an older one)."""
    raw = records.meta().get("manifest")
    if raw is None:
        raise StoreError(f"no index at {path} (nothing was committed): build one with "
                         f"`python -m indexer build PATHS --index {path}`")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{path}: the manifest in {DB_FILE} is damaged ({exc})") from None
    version = data.get("format_version")
    if not isinstance(version, int) or version > FOLDER_FORMAT:
        raise StoreError(f"{path}: index format version {version!r} is newer than this tool "
                         f"understands ({FOLDER_FORMAT}); upgrade the tool")
    if version < FOLDER_FORMAT and not upgrading:
        raise StoreError(upgrade_hint(path, version))
    try:
        return Manifest.from_json({**data, "documents": {}})
    except TypeError as exc:
        raise StoreError(f"{path}: the manifest in {DB_FILE} is damaged ({exc})") from None
