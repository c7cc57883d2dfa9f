"""Shared fixtures: the real model (loaded once per session) and the sample speech."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "data" / "speech.txt"
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared"


def whole_table(store):
    """A store's sentence table joined whole, row-aligned with its rows (None: it keeps none)."""
    from indexer.crosslingual import PassageVectors

    return PassageVectors.concat([t for _, t in store.sentence_tables()]) if store.manifest.crosslingual else None


@pytest.fixture(scope="session")
def encoder():
    from indexer.embedding import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def speech_text() -> str:
    return SPEECH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def speech_index(tmp_path_factory, encoder) -> Path:
    """An index of the speech, built once; tests that change an index copy it first."""
    from indexer.engine import Engine

    path = tmp_path_factory.mktemp("speech") / "index"
    Engine(path, encoder=encoder).build([SPEECH])
    return path


@pytest.fixture
def speech_engine(speech_index, encoder, tmp_path):
    """A private, writable copy of the speech index."""
    from indexer.engine import Engine

    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    return Engine(path, encoder=encoder)


START_TIMEOUT = 180  # seconds: a server imports torch and loads the model before it answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], health: str, log: Path, env: dict | None = None):
    """Run `cmd` (a server: the page or the API) in its own process group until `health` answers
    200; yields the process; always stopped afterwards, the whole group."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2:4]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{health} did not answer in {START_TIMEOUT}s:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.25)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
