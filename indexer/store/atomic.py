"""What every folder-index write needs for crash safety: fsync of files and folders (a segment is
on disk before the commit that names it), and the writers' lock.

    DIR.lock   a file lock beside the index folder that serialises writers (readers never wait)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import StoreError


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
