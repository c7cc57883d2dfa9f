"""One embedded Milvus server on 127.0.0.1, started and stopped for the tests and the bench; with
`copy_into`, which puts a folder index into a Milvus location without embedding again, and
`SameQueries`, an encoder that encodes each list of questions once.

The PyPI package `milvus` (2.3.5) ships `milvus-server --data DIR`: the real server with etcd
inside. Its client port (19530) and several others (etcd 2379/2380, metrics and health 9091) are
fixed, so one such server runs at a time; `start` refuses when the port is taken. The server runs
in its own process group and `stop` ends that group by its id (the wrapper first gets SIGINT, its
own clean stop; then the group SIGKILL), never anything found by name.

Used by tests/test_milvus.py and bench/milvus_bench.py; the product never imports it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
PORT = 19530
HEALTH_URL = f"http://{HOST}:9091/healthz"

# For tests: a 50 ms time tick instead of 200 ms (each Strong read waits for one), and 10 s sessions
# instead of 30 s (after a kill, a restarted server waits for the dead one's sessions to expire).
FAST_CONFIG = {"proxy.timeTickInterval": "50", "common.session.ttl": "10"}

# `milvus-server` whose port probe sets SO_REUSEADDR: otherwise a port left in TIME_WAIT by the
# previous server makes it quietly move the client port to 19531. Binding still fails while a
# server listens there.
SHIM = """
import socket, sys
import milvus

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

milvus.MilvusServerConfig.try_bind_port = try_bind_port
sys.argv[0] = "milvus-server"
sys.exit(milvus.main())
"""


class ServerError(RuntimeError):
    """The server could not be started (the message says why, with its log's tail)."""


def port_open(port: int = PORT, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def healthy() -> bool:
    """The server's own health check (HTTP on its metrics port) says it is up."""
    try:
        with urllib.request.urlopen(HEALTH_URL, timeout=3) as reply:
            return reply.read().strip() == b"OK"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class MilvusServer:
    """`milvus-server --data DIR` on 127.0.0.1:19530 in its own process group.

    `start()` returns once the server answers on its client port (a ServerError otherwise, with
    the log's tail); `stop()` ends the group and waits for the port to close. Also a context manager.
    """

    def __init__(self, data: Path, config: dict[str, str] | None = None) -> None:
        self.data = Path(data)
        self.config = dict(config or {})
        self.log = self.data.parent / f"{self.data.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{PORT}"

    def tail(self, lines: int = 25) -> str:
        """The last lines of the wrapper's output and of the server's newest log file."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        logs = sorted((self.data / "logs").glob("*.log")) if (self.data / "logs").is_dir() else []
        for path in logs[-1:]:
            text += f"\n--- {path.name} ---\n" + path.read_text(errors="replace")[-3000:]
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 180.0) -> None:
        if port_open(PORT):
            raise ServerError(f"port {PORT} is already in use: another Milvus (or something else) is running "
                              "here; stop it first (the embedded server's ports are fixed)")
        if not Path(sys.executable).with_name("milvus-server").exists():
            raise ServerError("milvus-server is missing: pip install -r requirements.txt (package `milvus`)")
        self.data.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-c", SHIM, "--data", str(self.data)]
        for key, value in self.config.items():
            args += ["--extra-config", f"{key}={value}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        healthy_since = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise ServerError(f"milvus-server exited with {code}:\n{self.tail()}")
            up = healthy()
            if up and port_open(PORT):
                return
            healthy_since = (healthy_since or time.monotonic()) if up else None
            if healthy_since and time.monotonic() - healthy_since > 15:
                self.stop()
                raise ServerError(f"milvus-server is up but not on port {PORT} (see {self.data}/configs/milvus.yaml):"
                                  f"\n{self.tail()}")
            time.sleep(1)
        self.stop()
        raise ServerError(f"milvus-server did not answer on {PORT} within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGINT to the wrapper (its own clean stop), then SIGKILL to the group (wrapper and `milvus run`)."""
        if self.proc is None:
            return
        pid = self.proc.pid
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGKILL, 30.0)):
            try:
                if sig == signal.SIGINT:
                    os.kill(pid, sig)
                else:
                    os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(pid):
                break
        self.proc.poll()
        self.proc = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and port_open(PORT):
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """Resident memory of the server's process group, in MB."""
        import psutil

        total = 0
        for p in psutil.process_iter(["pid"]):
            try:
                if self.proc is not None and os.getpgid(p.pid) == self.proc.pid:
                    total += p.memory_info().rss
            except (ProcessLookupError, psutil.Error):
                pass
        return total / 2**20

    def __enter__(self) -> "MilvusServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def copy_into(folder: Path, dest: Path, vectors: str | None = None):
    """Put a folder index's documents into a new index at `dest` as they are: the same chunks,
    vectors, terms and cross-lingual vectors, no re-embedding (so the two hold identical data), its
    vectors in the Milvus collection at `vectors` (None: FAISS files). Returns the saved store."""
    from collections import defaultdict

    import numpy as np

    from indexer.store.table import PassageVectors
    from indexer.settings import IndexSettings
    from indexer.store.base import Manifest
    from indexer.store import Snapshot, Writer

    src = Snapshot.load(folder)
    manifest = Manifest.from_json({**src.manifest.to_json(), "documents": {}, "vectors": {}})
    dst = Writer.create(Path(dest), manifest, vectors=vectors)
    settings = IndexSettings.of_manifest(manifest)  # terms cut as the indexer cuts them (a title's too)
    chunks, vecs, xl = src.all_chunks(), src.all_vectors(), PassageVectors.concat([t for _, t in src.sentence_tables()])
    xl = xl.take(src.rows_of()) if src.manifest.crosslingual else None  # the table has a row for every row, deleted ones too
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(chunks):
        rows_of[c.doc_id].append(i)
    for doc in src.manifest.documents.values():
        rows = np.asarray(rows_of[doc.doc_id], np.int64)
        mine = [chunks[i] for i in rows]
        dst.upsert(doc, mine, vecs[rows], src.document_text(doc.doc_id),
                   settings.segmenter.terms_many([settings.keyword_text(doc.title, c.text) for c in mine]),
                   None if xl is None else xl.take(rows))
    dst.commit()
    return dst


class SameQueries:
    """An encoder that remembers query vectors: every store compared is asked exactly the same vectors,
    and each set's questions are encoded once."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._cache: dict[tuple[str, ...], object] = {}

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_queries(self, texts):
        key = tuple(texts)
        if key not in self._cache:
            self._cache[key] = self._encoder.encode_queries(list(texts))
        return self._cache[key]
