"""`python -m indexer upgrade`: indexes of earlier formats converted into this one. The store
refuses to open one (indexer.store.layout), so it is never silently misread.

Format 1 kept, in DIR/gen-NNNNNN/ named by DIR/CURRENT: manifest.json, chunks.jsonl, texts.jsonl,
terms.jsonl, vectors.npy, index.faiss and (with the cross-lingual table) xl.npz. It is read whole
and written again as segments.
Format 2 is format 3 with its chunk records keyed (segment, row), so that a merge copied them; it
is converted in place (`stable_ids`): every record gets an id and every segment its ids.npy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..chunking import Chunk
from ..errors import StoreError
from .atomic import _fsync_dir
from .base import Manifest
from .layout import CURRENT, FOLDER_FORMAT, is_legacy, read_manifest
from .records import DB_FILE, SCHEMA, Records, chunk_from_json
from .table import PassageVectors
from .writer import Writer

FILES = ("manifest.json", "chunks.jsonl", "texts.jsonl", "terms.jsonl", "vectors.npy")


def is_current(path: Path) -> bool:
    """Whether the index at `path` is of this code's folder format (an upgrade has nothing to convert)."""
    path = Path(path)
    if not (path / DB_FILE).is_file():
        if not is_legacy(path):
            raise StoreError(f"no index at {path} to upgrade")
        return False
    return read_manifest(Records(path / DB_FILE), path, upgrading=True).format_version == FOLDER_FORMAT


def upgrade(path: Path) -> str:
    """Convert an index of an earlier format at `path` into this one and say what was done
    (format 1: its records into records.db, its rows into one segment, its vectors unchanged;
    format 2: in place, `stable_ids`). Call with the writers' lock held."""
    path = Path(path)
    if (path / DB_FILE).is_file():
        records = Records(path / DB_FILE)
        version = read_manifest(records, path, upgrading=True).format_version
        if version == FOLDER_FORMAT:
            raise StoreError(f"{path} is already an index of format {FOLDER_FORMAT}; nothing to upgrade")
        segments, chunks = stable_ids(path, records, FOLDER_FORMAT)
        Writer.open(path)._after_commit()  # the retired segments' folders go
        return (f"upgraded {path} from format {version} to {FOLDER_FORMAT}: its {chunks} chunk records are keyed "
                f"by a stable id and each of its {segments} segments maps its rows to theirs (ids.npy), so a "
                "merge no longer copies records; vectors and postings unchanged")
    if not is_legacy(path):
        raise StoreError(f"no index at {path} to upgrade")
    manifest, chunks, texts, terms, vectors, xl = read_legacy(path)
    docs, manifest.documents = manifest.documents, {}
    manifest.format_version = FOLDER_FORMAT
    writer = Writer.create(path, manifest)
    rows_of: dict[str, list[int]] = {}
    for row, c in enumerate(chunks):
        rows_of.setdefault(c.doc_id, []).append(row)
    for doc_id, record in docs.items():
        rows = rows_of.get(doc_id, [])
        writer.upsert(record, [chunks[r] for r in rows], vectors[rows], texts.get(doc_id, ""),
                      [terms[r] for r in rows], xl.take(np.asarray(rows, np.int64)) if xl is not None else None)
    writer.commit()
    return (f"upgraded {path} from format 1 to {FOLDER_FORMAT}: {len(docs)} documents and {len(chunks)} chunks "
            f"now in {DB_FILE} and one segment (vectors unchanged); the format-1 files were removed")


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


def stable_ids(path: Path, records: Records, version: int) -> tuple[int, int]:
    """Convert a format-2 folder index at `path` to `version` in place: (segments, chunk records).

    Each live segment gets ids.npy first (the next ids in (segment, row) order; a format-2 reader
    ignores the file), then one transaction renumbers the records, forgets the retired segments
    and their records, and sets the format: a kill leaves format 2 whole, or format 3."""
    segments = records.segments()
    first = 1
    for seg, rows, _ in segments:
        folder = path / f"seg-{seg:06d}"
        if not folder.is_dir():
            raise StoreError(f"{path}: segment {folder.name} is missing; it cannot be upgraded")
        tmp = folder / ".ids.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(first, first + rows, dtype=np.int64))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / "ids.npy")
        _fsync_dir(folder)
        first += rows
    chunks_table = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS chunks"):SCHEMA.index("CREATE INDEX")]
    with records.transaction() as db:
        db.execute("ALTER TABLE chunks RENAME TO chunks_by_row")
        db.execute("DROP INDEX IF EXISTS chunks_by_doc")
        db.execute(chunks_table)
        db.execute("INSERT INTO chunks SELECT row_number() OVER (ORDER BY seg, row), doc_id, chunk_id, record "
                   "FROM chunks_by_row WHERE seg IN (SELECT seg FROM segments) ORDER BY seg, row")
        db.execute("DROP TABLE chunks_by_row")
        for statement in SCHEMA.split(";"):  # the index on documents and the new tables
            if statement.strip():
                db.execute(statement)
        db.execute("DELETE FROM retired")
        moved = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        if moved != first - 1:
            raise StoreError(f"{path}: the segments hold {first - 1} rows but there are {moved} chunk records; "
                             "it cannot be upgraded")
        db.execute("UPDATE meta SET value = json_set(value, '$.format_version', ?) WHERE key = 'manifest'", [version])
    return len(segments), moved
