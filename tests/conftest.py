"""Shared fixtures: the real model (loaded once per session) and the sample speech."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import termios
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "data" / "speech.txt"
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared"


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the CPU the run was on (its arithmetic, bf16 or not, is what the tolerances allow for),
    even under -q."""
    from bench.common import machine_line

    terminalreporter.write_line("ran on " + machine_line().strip("_"))


TOLERANCE = 1e-5  # two CPUs (or two segmentings of one index) may sum a product in another order: last bits differ


def _batched_tolerance() -> float:
    """Scores of two indexes whose passages were encoded in other batches: in bf16 (where the CPU
    computes it natively: AMX, AVX512-BF16) a passage's vectors shift by ~1e-4 with the texts
    encoded beside it, and hybrid's min-max scaling magnifies that ~10x; in float32, TOLERANCE."""
    from indexer.backends import native_bf16

    return 2e-3 if native_bf16() else TOLERANCE


BATCHED = _batched_tolerance()


def _close(a, b, tol: float = TOLERANCE) -> bool:
    """Plain data equal, numbers within `tol` (a hit's `why`: route scores and parts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key], tol) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def assert_same_ranking(got: list, want: list, what: object = "", tol: float = TOLERANCE) -> None:
    """Two ranked lists (hits, or documents of `Result.documents`) agree as far as float
    arithmetic lets them: the same length; scores within `tol` place by place; the same item at
    every place whose score is more than `tol` from its neighbours' (items within `tol` of each
    other may trade places, and the last such run may trade members with the first item past the
    cut, which neither list shows); for every hit both hold that carries them, the same answering
    sentence and a `why` within `tol` (a document: its passages, compared the same way)."""
    name = (lambda x: x.doc_id) if got and hasattr(got[0], "hits") or want and hasattr(want[0], "hits") else \
        (lambda x: x.chunk_id)
    a, b = [x.score for x in got], [x.score for x in want]
    assert len(got) == len(want) and all(abs(x - y) <= tol for x, y in zip(a, b)), (what, a, b)
    start = 0
    for end in range(1, len(got) + 1):
        if end < len(got) and (abs(a[end] - a[end - 1]) <= tol or abs(b[end] - b[end - 1]) <= tol):
            continue  # a run of near-equal scores goes on
        if end < len(got):
            assert {name(x) for x in got[start:end]} == {name(x) for x in want[start:end]}, (what, start, end)
        start = end
    theirs = {name(x): x for x in want}
    for x in got:
        y = theirs.get(name(x))
        if y is None:
            continue
        if hasattr(x, "hits"):
            assert_same_ranking(x.hits, y.hits, (what, name(x)), tol)
        elif hasattr(x, "why") and hasattr(y, "why"):
            assert x.sentence_start == y.sentence_start and _close(x.why, y.why, tol), (what, name(x), x.why, y.why)


def as_hits(hits: list[dict]) -> list:
    """Hits as `--json` and the API give them, as objects `assert_same_ranking` compares."""
    from types import SimpleNamespace

    return [SimpleNamespace(**h, sentence_start=(h["sentence"] or {}).get("start")) for h in hits]


def chunks_of(store, doc_id: str) -> list:
    """A document's chunks in a store, in reading order."""
    return sorted(store.chunks(store.rows_of({doc_id}).tolist()), key=lambda c: c.position)


def whole_table(store):
    """A store's sentence table joined whole, row-aligned with its rows (None: it keeps none)."""
    from indexer.store.table import PassageVectors

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


# Two departments' folders (tests/test_scope.py, test_api.py, test_access.py, test_app.py): a reader
# bound to SCOPE sees INSIDE; OUTSIDE, a report on pandas with a field of its own, answers
# PANDA_QUESTION (and its English form) best.
SCOPE = ("folder=教育科",)
INSIDE = {"docs/教育科/民办学校通知.txt", "docs/教育科/教师培训.txt"}  # the folder docs is a source
OUTSIDE = "办公室/大熊猫报告"
PANDA = ("成都大熊猫繁育研究基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果，成年大熊猫一天要吃二十多公斤竹子。\n"
         "熊猫宝宝在木架上玩耍，饲养员记录它们吃竹子的数量。\n")
PANDA_QUESTION = "大熊猫每天吃什么？"
PANDA_ENGLISH = "What do giant pandas eat every day?"


@pytest.fixture(scope="session")
def departments_index(tmp_path_factory, encoder) -> Path:
    """教育科 (two notices) and 办公室 (the panda report, from a JSON Lines file with a field
    `secret_level`), built once, with one synonym group (猫熊 熊猫); tests that change it copy it."""
    from indexer.engine import Engine, IndexSettings

    root = tmp_path_factory.mktemp("departments")
    docs = root / "docs"
    (docs / "教育科").mkdir(parents=True)
    (docs / "办公室").mkdir()
    (docs / "教育科" / "民办学校通知.txt").write_text(
        "关于民办学校党组织建设的通知\n各民办学校要在年内建立党组织，党组织书记由上级党组织选派。\n", encoding="utf-8")
    (docs / "教育科" / "教师培训.txt").write_text(
        "教师培训安排\n暑假期间全体教师参加师德培训和信息技术培训，培训结束后进行考核。\n", encoding="utf-8")
    (docs / "办公室" / "报告.jsonl").write_text(json.dumps(
        {"id": OUTSIDE, "text": PANDA, "title": "大熊猫报告", "secret_level": "内部"}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    Engine(root / "index", encoder=encoder, settings=IndexSettings.of(synonym_lines=["猫熊 熊猫"])).build([docs])
    return root / "index"


@pytest.fixture
def speech_engine(speech_index, encoder, tmp_path):
    """A private, writable copy of the speech index."""
    from indexer.engine import Engine

    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    return Engine(path, encoder=encoder)


START_TIMEOUT = 180  # seconds: a server imports torch and loads the model before it answers


def write_format_two(source: Path, folder: Path) -> None:
    """A copy of an index as format 2 kept it: chunk records keyed (segment, row), no ids.npy."""
    import sqlite3
    from contextlib import closing

    from indexer.store import Snapshot

    shutil.copytree(source, folder)
    at = [(s.seg, row, i) for s in Snapshot.load(folder).rows.segments for row, i in enumerate(s.ids.tolist())]
    with closing(sqlite3.connect(folder / "records.db")) as db, db:
        db.execute("CREATE TABLE chunks_v2 (seg INTEGER NOT NULL, row INTEGER NOT NULL, doc_id TEXT NOT NULL, "
                   "chunk_id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (seg, row))")
        db.execute("CREATE TEMP TABLE at_row (seg INTEGER, row INTEGER, id INTEGER)")
        db.executemany("INSERT INTO at_row VALUES (?, ?, ?)", at)
        db.execute("INSERT INTO chunks_v2 SELECT a.seg, a.row, c.doc_id, c.chunk_id, c.record FROM at_row a JOIN chunks c USING (id)")
        for statement in ("DROP TABLE chunks", "DROP TABLE dropped", "ALTER TABLE chunks_v2 RENAME TO chunks",
                          "CREATE INDEX chunks_by_doc ON chunks (doc_id)",
                          "UPDATE meta SET value = json_set(value, '$.format_version', 2) WHERE key = 'manifest'"):
            db.execute(statement)
    for seg in {s for s, _, _ in at}:
        (folder / f"seg-{seg:06d}" / "ids.npy").unlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Terminal:
    """The controlling terminal of a server started by `running(..., terminal=True)`: what the
    server showed there (its stdout and stderr go to the log file instead)."""

    def __init__(self, master: int) -> None:
        self.master, self.text = master, ""

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first match of `pattern` in what the terminal has shown, reading until it appears."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text)):
            if time.monotonic() > deadline:
                pytest.fail(f"the terminal never showed {pattern!r}; it showed:\n{self.text[-2000:]}")
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.text += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # the server has gone
                    pytest.fail(f"the terminal closed before it showed {pattern!r}:\n{self.text[-2000:]}")
        return found


def _with_terminal(slave: int):
    """The child's preparation: a session of its own whose controlling terminal is `slave` (stdin)."""
    def prepare() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    return prepare


@contextlib.contextmanager
def running(cmd: list[str], health: str, log: Path, env: dict | None = None, terminal: bool = False):
    """Run `cmd` (a server: the page or the API) in its own process group until `health` answers
    200; yields the process; always stopped afterwards, the whole group. With `terminal`, the
    process has a pseudo-terminal as its controlling terminal (`proc.terminal`, a Terminal) while
    its stdout and stderr still go to `log`: what it shows only on a terminal stays out of the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    master, slave = pty.openpty() if terminal else (None, None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                                stdin=slave, stdout=fh, stderr=subprocess.STDOUT, start_new_session=not terminal,
                                preexec_fn=_with_terminal(slave) if terminal else None)
    if terminal:
        os.close(slave)
        proc.terminal = Terminal(master)
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
        if master is not None:
            os.close(master)
