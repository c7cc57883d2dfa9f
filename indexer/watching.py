"""Keeping the sources in sync while their files change (`watch`, `serve --watch`).

watchdog does the watching: its native observer (inotify, FSEvents, ReadDirectoryChangesW) where
the system reports changes, and its PollingObserver, which compares the folder's listings every
few seconds, for network shares (NFS, SMB, sshfs…): they report no change made on another
machine. Events only mark a source as dirty; once a source has been quiet for `debounce` seconds
(or dirty for ten times that, under a steady stream of writes), one `sync` of it runs, so a folder
copied in lands in a few batched commits, not one per file. A refused sync (a folder unmounted, a
mass deletion) is reported and the watch goes on; the next change tries again.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .errors import IndexerError

if TYPE_CHECKING:
    from .engine import Engine

# file systems whose changes made elsewhere raise no local event (polled instead)
NETWORK_FILE_SYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph",
                                  "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2", "fuse.rclone", "virtiofs"})
_READS = frozenset({"opened", "closed_no_write"})  # the sync's own reading raises these: not changes


def on_network(folder: Path) -> bool:
    """Whether a folder lies on a network file system (the mount holding it, by its type)."""
    import psutil

    path = os.path.realpath(folder)
    mounts = [p for p in psutil.disk_partitions(all=True)
              if path == p.mountpoint or path.startswith(p.mountpoint.rstrip("/") + "/")]
    return bool(mounts) and max(mounts, key=lambda p: len(p.mountpoint)).fstype in NETWORK_FILE_SYSTEMS


class _Marker(FileSystemEventHandler):
    """Marks its source dirty on every event that may change what the folder holds."""

    def __init__(self, name: str, mark: Callable[[str], None], index: Path) -> None:
        self.name, self.mark, self.index = name, mark, os.path.realpath(index) + os.sep

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = os.fsdecode(event.src_path)
        if event.event_type not in _READS and not os.path.realpath(path).startswith(self.index):  # not our commits
            self.mark(self.name)


@dataclass
class Watcher:
    """Watches the named sources (all, when none is named) of an engine's index and syncs each one
    after its changes settle. `run` blocks until `stop` is set."""

    engine: "Engine"
    names: tuple[str, ...] = ()
    poll: bool = False  # poll every folder (else: only those on network file systems)
    interval: float = 5.0  # seconds between two polls of a polled folder
    debounce: float = 2.0  # quiet seconds before a source is synced
    log: Callable[[str], None] = print
    stop: threading.Event = field(default_factory=threading.Event)
    _dirty: dict[str, tuple[float, float]] = field(default_factory=dict)  # source → (first, last) event time
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, name: str) -> None:
        """Note a change in a source's folder."""
        now = time.monotonic()
        with self._lock:
            first, _ = self._dirty.get(name, (now, now))
            self._dirty[name] = (first, now)

    def due(self) -> list[str]:
        """The dirty sources whose changes have settled (or waited too long), taken off the list."""
        now, out = time.monotonic(), []
        with self._lock:
            for name, (first, last) in list(self._dirty.items()):
                if now - last >= self.debounce or now - first >= 10 * self.debounce:
                    out.append(name)
                    del self._dirty[name]
        return sorted(out)

    def run(self) -> None:
        """The first sync of every watched source, then a sync of each source after it changes."""
        sources = self.sources()
        observers = self._observe(sources)
        try:
            self.sync(list(sources))
            while not self.stop.wait(min(0.5, self.debounce / 4)):
                names = self.due()
                if names:
                    self.sync(names)
        finally:
            for observer in observers:
                observer.stop()
            for observer in observers:
                observer.join(timeout=5)

    def sync(self, names: Iterable[str]) -> None:
        """One sync of these sources, each on its own: what changed, or the one line that refused it."""
        for name in names:
            try:
                for plan, reports in self.engine.sync([name]):
                    if plan.new or plan.changed or plan.removed:
                        self.log(f"{time.strftime('%H:%M:%S')} synced {plan.summary()}")
            except IndexerError as exc:
                self.log(f"{time.strftime('%H:%M:%S')} {name}: not synced: {exc}")

    def sources(self) -> dict[str, Path]:
        """The watched sources' folders, by name."""
        sources = {s["name"]: Path(s["root"]) for s in self.engine.sources()}
        if not sources:
            raise IndexerError(f"{self.engine.path} follows no folder: add one first (`add FOLDER`), then watch it")
        unknown = [n for n in self.names if n not in sources]
        if unknown:
            raise IndexerError(f"no source {unknown[0]!r} in {self.engine.path} (see `source list`)")
        return {n: sources[n] for n in (self.names or sorted(sources))}

    def _observe(self, sources: dict[str, Path]) -> list:
        """Observers started on the sources' folders: one native, one polling, as the folders need."""
        native, polling = Observer(), PollingObserver(timeout=self.interval)
        for name, root in sources.items():
            polled = self.poll or on_network(root)
            if root.is_dir():
                (polling if polled else native).schedule(_Marker(name, self.mark, self.engine.path), str(root), recursive=True)
            self.log(f"watching {name} ({root}){' by polling every %gs' % self.interval if polled else ''}")
        started = [o for o in (native, polling) if o.emitters]
        for observer in started:
            observer.start()
        return started


def watch_in_background(engine: "Engine", log: Callable[[str], None], **options) -> Watcher:
    """A Watcher running in a daemon thread (`serve --watch`); set its `stop` to end it."""
    watcher = Watcher(engine, log=log, **options)
    watcher.sources()  # refused now, in the caller, if there is nothing to watch
    threading.Thread(target=watcher.run, name="watch", daemon=True).start()
    return watcher
