"""Shared fixtures: the real model (loaded once per session) and the sample speech."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "data" / "speech.txt"
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared"


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
