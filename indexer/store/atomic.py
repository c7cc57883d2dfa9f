"""Crash-safe index folders: each save is a new generation folder, switched in by one rename.

Layout of an index folder DIR:
    DIR/CURRENT          the name of the live generation (replaced atomically with os.replace)
    DIR/gen-000007/      one complete generation: written in full, fsynced, then made current
    DIR/.lock            a file lock that serialises writers (readers never wait)
A crash at any point leaves CURRENT naming a complete generation: the old one or the new one.
"""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import StoreError

CURRENT = "CURRENT"
_GEN = re.compile(r"^gen-(\d{6,})$")


def current_generation(index_dir: Path) -> Path:
    """The folder of the live generation, or a StoreError saying what is missing."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise StoreError(f"no index at {index_dir}: build one with `python -m indexer build PATHS --index {index_dir}`")
    pointer = index_dir / CURRENT
    if not pointer.is_file():
        raise StoreError(f"{index_dir} is not an index folder (no {CURRENT} file)")
    name = pointer.read_text(encoding="utf-8").strip()
    gen = index_dir / name
    if not _GEN.match(name) or not gen.is_dir():
        raise StoreError(f"{index_dir}: {CURRENT} names {name!r}, which is not a generation folder")
    return gen


def _next_name(index_dir: Path) -> str:
    numbers = [int(m.group(1)) for p in index_dir.iterdir() if (m := _GEN.match(p.name.lstrip(".").split(".")[0]))]
    return f"gen-{max(numbers, default=0) + 1:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for item in path.rglob("*"):
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    for folder in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        _fsync_dir(folder)


@contextmanager
def new_generation(index_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit it becomes the live generation.

    On an exception (or a kill) the temporary folder is dropped and CURRENT is untouched.
    Older generations are removed after the switch, keeping the one before for readers that are
    still loading it.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    name = _next_name(index_dir)
    tmp = index_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, index_dir / name)
        pointer_tmp = index_dir / f".{CURRENT}.tmp"
        pointer_tmp.write_text(name + "\n", encoding="utf-8")
        with open(pointer_tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(pointer_tmp, index_dir / CURRENT)
        _fsync_dir(index_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _collect_garbage(index_dir, keep=name)


def _collect_garbage(index_dir: Path, keep: str) -> None:
    """Remove generations older than the one before `keep`, and stale temporary folders."""
    keep_n = int(_GEN.match(keep).group(1))
    for path in index_dir.iterdir():
        m = _GEN.match(path.name)
        stale_tmp = path.name.startswith(".gen-") and path.name.endswith(".tmp")
        if (m and int(m.group(1)) < keep_n - 1) or stale_tmp:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def writer_lock(index_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """Serialise writers of one index across processes; a second writer waits, then fails clearly."""
    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(index_dir) + ".lock", timeout=timeout)
    try:
        with lock:
            yield
    except Timeout as exc:
        raise StoreError(f"{index_dir} is being updated by another process; gave up after {timeout:.0f} s") from exc
