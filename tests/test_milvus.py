"""The Milvus store against real servers: an embedded Milvus 2.3 server (`milvus-server`) and milvus-lite.

The server is started once for this module on 127.0.0.1:19530 (its client port and several others
are fixed, so one such server runs at a time: the port must be free); tests that need it fail, with
the server's log tail, if it cannot start, and it is stopped by its process group's id. The sample
speech is copied into Milvus from the FAISS index the conftest builds (same chunks, same vectors),
so the two stores are compared on identical data; the engine's own add/replace/remove paths embed
only small documents. milvus-lite (in process) tests the generation switch and its failures.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, ROOT, SHARED, SPEECH
from indexer.chunking import Chunk
from indexer.engine import Engine
from indexer.errors import ModelError, StoreError
from indexer.evaluation import evaluate, read_labelled
from indexer.keyword import Segmenter
from indexer.store import milvus_store as ms
from indexer.store.base import DocRecord, Manifest
from indexer.store.faiss_store import FaissStore
from indexer.store.milvus_store import MilvusStore, parse_location

PORT = 19530
HOST = "127.0.0.1"
QUESTION = "私立学校怎样建立党组织？"


# ---------------------------------------------------------------- the server


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


SERVER_SHIM = """
import socket, sys
import milvus

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # still fails when a server listens there
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


class MilvusServer:
    """`milvus-server --data DIR` in its own process group, stopped by that group's id."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.log = data.parent / f"{data.name}.log"
        self.proc: subprocess.Popen | None = None

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        logs = sorted((self.data / "logs").glob("*.log")) if (self.data / "logs").is_dir() else []
        for path in logs[-1:]:
            text += f"\n--- {path.name} ---\n" + path.read_text(errors="replace")[-3000:]
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 180.0) -> None:
        if _port_open(PORT):
            pytest.fail(f"port {PORT} is already in use: another Milvus (or something else) is running here; "
                        "stop it first (the embedded server's ports are fixed)")
        if not Path(sys.executable).with_name("milvus-server").exists():
            pytest.fail("milvus-server is missing: pip install -r requirements.txt (package `milvus`)")
        with open(self.log, "ab") as log:
            # `milvus-server` with three changes for tests: its port probe sets SO_REUSEADDR (else a port
            # left in TIME_WAIT by the previous server makes it move the client port to 19531); a 50 ms
            # time tick instead of 200 ms (each Strong read waits for one); 10 s sessions instead of 30 s
            # (after a kill, a restarted server waits for the dead one's sessions to expire).
            self.proc = subprocess.Popen([sys.executable, "-c", SERVER_SHIM, "--data", str(self.data),
                                          "--extra-config", "proxy.timeTickInterval=50",
                                          "--extra-config", "common.session.ttl=10"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        healthy_since = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"milvus-server exited with {self.proc.returncode}:\n{self.tail()}")
            healthy = self._answers()
            if healthy and _port_open(PORT):
                return
            healthy_since = (healthy_since or time.monotonic()) if healthy else None
            if healthy_since and time.monotonic() - healthy_since > 15:
                self.stop()
                pytest.fail(f"milvus-server is up but not on port {PORT} (see {self.data}/configs/milvus.yaml):\n"
                            f"{self.tail()}")
            time.sleep(1)
        self.stop()
        pytest.fail(f"milvus-server did not answer on {PORT} within {timeout:.0f} s:\n{self.tail()}")

    @staticmethod
    def _answers() -> bool:
        """The server's own health check (HTTP on its metrics port 9091) says it is up."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{HOST}:9091/healthz", timeout=3) as reply:
                return reply.read().strip() == b"OK"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGINT to the wrapper (its own clean stop), then SIGKILL to the group (wrapper and `milvus run`)."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGKILL, 30.0)):
            try:
                if sig == signal.SIGINT:
                    os.kill(self.proc.pid, sig)
                else:
                    os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(self.proc.pid):
                break
        self.proc.poll()
        self.proc = None
        ms._CLIENTS.clear()  # connections to the stopped server are dead
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _port_open(PORT):
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- shared data


class SameQueries:
    """The session encoder, remembering query vectors: both stores are asked exactly the same vectors."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_queries(self, texts):
        key = tuple(texts)
        if key not in self._cache:
            self._cache[key] = self._encoder.encode_queries(list(texts))
        return self._cache[key]


@pytest.fixture(scope="module")
def same(encoder):
    return SameQueries(encoder)


def copy_into(folder: Path, location: str) -> None:
    """Put a folder index's documents into a Milvus location as they are (no re-embedding)."""
    src = FaissStore.load(folder)
    manifest = Manifest.from_json({**src.manifest.to_json(), "documents": {}})
    dst = MilvusStore(location, manifest)
    segmenter = Segmenter(tuple(src.manifest.keyword.get("user_terms", ())))
    chunks, vectors = src.all_chunks(), src.vectors()
    for doc in src.manifest.documents.values():
        rows = [i for i, c in enumerate(chunks) if c.doc_id == doc.doc_id]
        mine = [chunks[i] for i in rows]
        dst.upsert(doc, mine, vectors[rows], src.document_text(doc.doc_id), segmenter.terms_many(c.text for c in mine))
    dst.save()


def loc(name: str) -> str:
    return f"milvus://{HOST}:{PORT}/{name}"


@pytest.fixture(scope="module")
def milvus_speech(milvus_server, speech_index) -> str:
    """The speech index, copied into the collection `speech` (read-only for the tests using it)."""
    location = loc("speech")
    copy_into(speech_index, location)
    return location


@pytest.fixture
def milvus_copy(milvus_server, speech_index, request) -> str:
    """A private writable collection holding the speech."""
    location = loc("t_" + request.node.name.replace("[", "_").replace("]", "")[:40])
    copy_into(speech_index, location)
    return location


def _ids(results):
    return [[h.chunk_id for h in hits] for hits in results]


def _labels():
    return read_labelled(DATA / "speech_qa_zh.jsonl") + read_labelled(DATA / "speech_qa_en.jsonl")


# ---------------------------------------------------------------- no server needed


def test_locations_parse_and_never_show_secrets(monkeypatch):
    monkeypatch.delenv("INDEXER_MILVUS_TOKEN", raising=False)
    t = parse_location("milvus://db.example:19531/docs?token=root:S3cret")
    assert (t.uri, t.collection, t.token, t.display) == ("http://db.example:19531", "docs", "root:S3cret",
                                                        "milvus://db.example:19531/docs")
    t = parse_location("milvus+tls://alice:pw0rd@db.example/prod/docs")
    assert (t.uri, t.db, t.collection, t.user, t.password) == ("https://db.example:19530", "prod", "docs", "alice", "pw0rd")
    assert "pw0rd" not in t.display and "alice" not in t.display
    monkeypatch.setenv("INDEXER_MILVUS_USER", "bob")
    monkeypatch.setenv("INDEXER_MILVUS_PASSWORD", "hunter2")
    t = parse_location("milvus://h:1/c")
    assert (t.user, t.password) == ("bob", "hunter2") and t.redact("login hunter2 failed") == "login *** failed"
    lite = parse_location("milvus-lite:///tmp/x/index.db?collection=news")
    assert lite.lite and lite.uri == "/tmp/x/index.db" and lite.collection == "news"
    assert lite.lock_path == Path("/tmp/x/index.db.lock")
    assert parse_location("milvus://h:1/c").lock_path != parse_location("milvus://h:1/d").lock_path
    for bad in ("milvus://h:1/", "milvus://h:1/a/b/c", "milvus://h:1/9lives?token=TOPSECRET", "milvus://:1/c",
                "milvus://h:1/bad-name?password=TOPSECRET"):
        with pytest.raises(StoreError) as err:
            parse_location(bad)
        assert "TOPSECRET" not in str(err.value) and "\n" not in str(err.value)


def test_unreachable_server_is_one_quick_line():
    location = "milvus://127.0.0.1:1/docs?token=root:TOPSECRET"  # nothing listens on port 1
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        Engine(location, encoder=object()).search(QUESTION)
    message = str(err.value)
    assert time.monotonic() - start < 10
    assert "cannot reach the Milvus server" in message and "127.0.0.1:1" in message
    assert "TOPSECRET" not in message and "\n" not in message
    with pytest.raises(StoreError):
        MilvusStore.exists(location)

    silent = socket.socket()  # accepts connections and never answers: a hung host, not a refused port
    silent.bind((HOST, 0))
    silent.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="cannot reach the Milvus server within"):
            MilvusStore.load(f"milvus://{HOST}:{silent.getsockname()[1]}/docs")
        assert time.monotonic() - start < 20
    finally:
        silent.close()


# ---------------------------------------------------------------- generations (milvus-lite, in process)

DIM = 8


def _doc(doc_id: str, n: int, seed: int, word: str):
    """A synthetic document of n one-line chunks, random unit vectors, and its terms."""
    lines = [f"{word}{doc_id}第{i}段" for i in range(n)]
    text = "\n".join(lines)
    chunks, pos = [], 0
    for i, line in enumerate(lines):
        chunks.append(Chunk(f"{doc_id}#{i}", doc_id, i, i, "", (), pos, pos + len(line), line))
        pos += len(line) + 1
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    record = DocRecord(doc_id, f"hash-{seed}", doc_id, doc_id, "utf-8", n, "2024-01-01T00:00:00+00:00", len(text))
    return record, chunks, vectors, text, [[word, doc_id] for _ in range(n)]


def _raw_counts(store: MilvusStore) -> dict[str, int]:
    """Rows physically on the server per collection (live or not)."""
    client = ms._connect(store.target)
    out = {}
    for name in client.list_collections():
        if name.startswith(store.target.collection):
            out[name] = len(client.query(name, filter="gen >= 0", output_fields=["gen"], consistency_level="Strong"))
    return out


def _answers(store: MilvusStore):
    queries = np.eye(DIM, dtype=np.float32)
    return ([[(round(s, 5), c.chunk_id) for s, c in hits] for hits in store.search(queries, 4)],
            store.keyword_search(["苹果"], 10), sorted(store.manifest.documents))


def test_generation_switch_and_failures(tmp_path, monkeypatch):
    location = f"milvus-lite://{tmp_path}/lite.db"
    assert not MilvusStore.exists(location)
    first = MilvusStore(location, Manifest(model="m", dim=DIM, chunking={}))
    first.upsert(*_doc("a", 3, 1, "苹果"))
    first.upsert(*_doc("b", 2, 2, "香蕉"))
    first.save()
    assert first.generation == "gen-000001" and MilvusStore.exists(location)
    before = _answers(MilvusStore.load(location))
    assert before[2] == ["a", "b"] and {c.doc_id for _, c in before[1]} == {"a"}

    def change(store):
        store.upsert(*_doc("b", 4, 3, "苹果"))  # replaced: new text, vectors and chunk count
        store.delete(["a"])
        store.upsert(*_doc("c", 2, 4, "樱桃"))

    # 1. killed between writing generation 2 and switching to it
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    store = MilvusStore.load(location)
    change(store)
    monkeypatch.setattr(MilvusStore, "_switch", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save()
    monkeypatch.undo()
    raw = _raw_counts(store)
    assert sum(raw.values()) > 0 and raw[store._chunks_name(1)] == 5 + 6  # generation 2's rows were written…
    again = MilvusStore.load(location)
    assert again.generation == "gen-000001" and _answers(again) == before  # …and nobody sees them
    assert again.problems() == [] and len(again) == 5

    # 2. killed half-way through inserting the chunk rows
    real_insert = ms._insert

    def dies_midway(client, name, rows):
        if not name.endswith("_chunks"):
            return real_insert(client, name, rows)
        for i, row in enumerate(rows):  # one row at a time, killed at the fourth
            if i == 3:
                raise KeyboardInterrupt
            real_insert(client, name, [row])

    store = MilvusStore.load(location)
    change(store)
    monkeypatch.setattr(ms, "_insert", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        store.save()
    monkeypatch.undo()
    assert _answers(MilvusStore.load(location)) == before

    # 3. a complete save: leftovers of both failures are gone, old chunks of b and all of a too
    store = MilvusStore.load(location)
    change(store)
    store.save()
    after = MilvusStore.load(location)
    assert after.generation == "gen-000002" and sorted(after.manifest.documents) == ["b", "c"]
    assert [c.chunk_id for c in after.chunks_of("b")] == [f"b#{i}" for i in range(4)]
    assert after.document_text("b").startswith("苹果b第0段") and after.problems() == []
    assert {c.doc_id for _, c in after.keyword_search(["苹果"], 10)} == {"b"}
    assert all(c.doc_id != "a" for hits in after.search(np.eye(DIM, dtype=np.float32), 10) for _, c in hits)
    raw = _raw_counts(after)
    assert raw[after._chunks_name(1)] == 6 and raw[after._docs_name(1)] == 2  # nothing else is left
    assert raw[after._meta] == 3  # generation 2's state, pointer and clean mark: older ones are deleted
    np.testing.assert_allclose(after.vectors()[:4], _doc("b", 4, 3, "苹果")[2], atol=1e-6)

    # 4. killed after the switch, before the clean-up: the new generation is live, old rows stay hidden
    store = MilvusStore.load(location)
    store.delete(["b"])
    monkeypatch.setattr(MilvusStore, "_collect", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save()
    monkeypatch.undo()
    half = MilvusStore.load(location)
    assert half.generation == "gen-000003" and sorted(half.manifest.documents) == ["c"] and not half._clean
    assert _raw_counts(half)[half._chunks_name(1)] == 6  # b's rows are still stored…
    assert {c.doc_id for hits in half.search(np.eye(DIM, dtype=np.float32), 10) for _, c in hits} == {"c"}  # …unseen
    half.upsert(*_doc("d", 1, 5, "葡萄"))
    half.save()  # the next writer finishes the clean-up first
    assert _raw_counts(half)[half._chunks_name(1)] == 3

    # 5. a build (a new store at the same location) gets fresh collections; the old ones are dropped
    fresh = MilvusStore(location, Manifest(model="m2", dim=DIM + 2, chunking={}))
    record, chunks, vectors, text, terms = _doc("z", 2, 6, "西瓜")
    fresh.upsert(record, chunks, np.hstack([vectors, np.zeros((2, 2), np.float32)]), text, terms)
    fresh.save()
    loaded = MilvusStore.load(location)
    assert loaded.generation == "gen-000005" and loaded.manifest.model == "m2" and loaded.manifest.dim == DIM + 2
    names = set(ms._connect(loaded.target).list_collections())
    assert names == {"indexer_meta", "indexer__g5_chunks", "indexer__g5_docs"}
    assert loaded.recall_vs_exact() is None  # FLAT: exact already

    # 6. an approximate index (HNSW asked for) measures its recall against exact search
    ann = MilvusStore(location + "?collection=ann", Manifest(model="m", dim=DIM, chunking={}, index_type="hnsw"))
    for i in range(4):
        ann.upsert(*_doc(f"d{i}", 10, 10 + i, "梨"))
    ann.save()
    ann = MilvusStore.load(location + "?collection=ann")
    assert ann.index_kind == "hnsw" and ann.recall_vs_exact() == 1.0 and len(ann) == 40


# ---------------------------------------------------------------- the real server


def test_dense_top10_equals_faiss_and_eval_matches(milvus_speech, speech_index, same):
    milvus = Engine(milvus_speech, encoder=same)
    local = Engine(speech_index, encoder=same)
    queries = [label.query for label in _labels()]
    a, b = milvus.batch(queries, k=10, mode="dense"), local.batch(queries, k=10, mode="dense")
    assert _ids(a) == _ids(b)
    np.testing.assert_allclose([h.score for hits in a for h in hits], [h.score for hits in b for h in hits], atol=1e-5)
    assert milvus.search(QUESTION, k=1)[0].section.startswith("四、")
    for mode in ("hybrid", "bm25"):
        mine, theirs = evaluate(milvus, _labels(), mode), evaluate(local, _labels(), mode)
        for key, value in theirs.items():
            assert abs(mine[key] - value) <= 0.02, (mode, key, mine, theirs)
    info = milvus.info()
    assert info["index_type"] == "flat" and info["chunks"] == len(local.store) and info["generation"] == "gen-000001"
    assert milvus.store.keyword_backend.startswith("local BM25") and milvus.check() == []
    assert [c.chunk_id for c in milvus.store.chunks_of("speech.txt")] == \
        [c.chunk_id for c in local.store.chunks_of("speech.txt")]
    assert milvus.store.document_text("speech.txt") == SPEECH.read_text(encoding="utf-8")
    np.testing.assert_allclose(milvus.store.vectors(), local.store.vectors(), atol=1e-6)
    assert {h.doc_id for h in milvus.search(QUESTION, k=5, docs=["speech.txt"])} == {"speech.txt"}

    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError, match="built with model multilingual-e5-small"):
        Engine(milvus_speech, encoder=Other()).search(QUESTION)


def test_update_roundtrip_equals_folder_index(milvus_copy, speech_index, same, tmp_path):
    extra = tmp_path / "docs"
    extra.mkdir()
    (extra / "a.txt").write_text("学校食堂要严格执行食品安全管理制度，每天公示菜谱和食材来源。", encoding="utf-8")
    (extra / "b.md").write_text("# 教师培训\n\n暑假期间全市教师参加为期两周的信息技术应用能力提升培训。", encoding="utf-8")
    milvus = Engine(milvus_copy, encoder=same)
    milvus.add([extra / "a.txt", extra / "b.md"])
    assert milvus.search("食品安全", k=1)[0].doc_id == "a.txt"  # Strong: seen right after the add
    milvus.remove(["a.txt"])
    reloaded = Engine(milvus_copy, encoder=same)
    local = Engine(tmp_path / "local", encoder=same)
    shutil.copytree(speech_index, tmp_path / "local")
    local.add([extra / "b.md"])
    queries = [QUESTION, "教师暑假培训", "食品安全", "党风廉政建设", "How are young cadres trained?"]
    for mode in ("dense", "hybrid"):
        a, b = reloaded.batch(queries, k=10, mode=mode), local.batch(queries, k=10, mode=mode)
        assert _ids(a) == _ids(b), mode
        np.testing.assert_allclose([h.score for x in a for h in x], [h.score for x in b for h in x], atol=1e-5)
    assert [d.doc_id for d in reloaded.documents()] == ["speech.txt", "b.md"]

    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛，每所学校至少派出一支代表队参加比赛。", encoding="utf-8")
    milvus.add([doc])
    assert milvus.search("足球比赛什么时候举行", k=1)[0].doc_id == "notice.txt"
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛，每所学校至少派出一支合唱团参加演出。", encoding="utf-8")
    assert [r.status for r in milvus.add([doc])] == ["replaced"]
    assert [r.status for r in milvus.add([doc])] == ["unchanged"]
    texts = [c.text for c in milvus.store.chunks_of("notice.txt")]
    assert all("足球" not in t for t in texts) and any("合唱" in t for t in texts)
    for hits in milvus.batch(["足球比赛", "校园足球联赛"], k=50, mode="hybrid"):
        assert all("足球" not in h.text for h in hits)
    milvus.remove(["notice.txt"])
    again = Engine(milvus_copy, encoder=same)
    for hits in again.batch(["足球比赛", "合唱比赛", "校园活动通知"], k=50, mode="hybrid"):
        assert all(h.doc_id in ("speech.txt", "b.md") for h in hits)
    assert len(again.store.vectors()) == len(again.store) and again.check() == []
    counts = _raw_counts(again.store)
    assert counts[again.store._chunks_name(again.store._base)] == len(again.store)  # removed rows really deleted


def test_build_through_the_engine(milvus_server, same, tmp_path):
    doc = tmp_path / "sports.txt"
    doc.write_text("全市中小学将举办阳光体育节，设置跳绳、踢毽子和拔河三个集体项目。", encoding="utf-8")
    location = loc("built") + "?token=root:Milvus"  # auth is off on this server: a token is accepted and unused
    engine = Engine(location, encoder=same)
    assert not engine.exists()
    engine.build([doc])
    assert engine.search("拔河比赛", k=1, mode="hybrid")[0].doc_id == "sports.txt"
    reopened = Engine(location, encoder=same)
    assert reopened.info()["documents"] == 1 and reopened.store.location == loc("built")


def test_engine_never_shows_the_token(milvus_speech, same):
    location = milvus_speech + "?token=root:TOPSECRET"
    engine = Engine(location, encoder=same)
    assert "TOPSECRET" not in str(engine.info())

    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError) as err:
        Engine(location, encoder=Other()).search(QUESTION)
    assert "TOPSECRET" not in str(err.value)


@pytest.mark.skipif(not os.environ.get("INDEXER_SLOW_TESTS"),
                    reason="CMRC 2018 trial set: ~10 min of embedding on 2 busy cores; INDEXER_SLOW_TESTS=1 runs it")
def test_cmrc_dense_and_eval_match_local(milvus_server, same, tmp_path_factory):
    folder = SHARED / "eval" / "cmrc2018_trial_retrieval"
    labels = read_labelled(folder / "queries.jsonl")
    index = tmp_path_factory.mktemp("cmrc") / "index"
    local = Engine(index, encoder=same)
    local.build([folder / "passages.jsonl"])
    copy_into(index, loc("cmrc"))
    milvus = Engine(loc("cmrc"), encoder=same)
    queries = [label.query for label in labels]
    assert _ids(milvus.batch(queries, k=10, mode="dense")) == _ids(local.batch(queries, k=10, mode="dense"))
    for mode in ("dense", "bm25", "hybrid"):
        mine, theirs = evaluate(milvus, labels, mode), evaluate(local, labels, mode)
        print(f"cmrc {mode}: milvus {mine} local {theirs}")
        for key, value in theirs.items():
            assert abs(mine[key] - value) <= 0.02, (mode, key, mine, theirs)


def test_server_stopped_mid_batch_then_restarted(milvus_server, milvus_speech, same, tmp_path):
    """Stop the server while `batch` runs: one line and exit 1; after a restart the answers are as before."""
    queries = [label.query for label in _labels()][:20]
    before = _ids(Engine(milvus_speech, encoder=same).batch(queries, k=10, mode="hybrid"))
    qfile, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    qfile.write_text("\n".join(queries) + "\n", encoding="utf-8")
    script = ("import sys\n"
              "import indexer.store.milvus_store as ms\n"
              "real = ms.MilvusStore.search\n"
              "def paused(self, *a, **k):\n"
              "    print('searching', flush=True); sys.stdin.readline(); return real(self, *a, **k)\n"
              "ms.MilvusStore.search = paused\n"
              "from indexer.cli import main\n"
              f"sys.exit(main(['batch', {str(qfile)!r}, '-o', {str(out)!r}, '--mode', 'hybrid', "
              f"'--index', {milvus_speech + '?token=root:TOPSECRET'!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout.readline().strip() == "searching", proc.stderr.read()
        milvus_server.stop()
        start = time.monotonic()
        _, err = proc.communicate("go\n", timeout=120)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: milvus://127.0.0.1:19530/speech: Milvus search failed"), lines[0]
    assert "TOPSECRET" not in err and not out.exists()
    assert elapsed < 40, elapsed

    milvus_server.start()
    deadline = time.monotonic() + 120
    while True:  # the server reloads its collections after a restart
        try:
            engine = Engine(milvus_speech, encoder=same)
            after = _ids(engine.batch(queries, k=10, mode="hybrid"))
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert after == before and engine.info()["generation"] == "gen-000001"
