"""The Milvus store against real servers: an embedded Milvus 2.3 server (`milvus-server`) and milvus-lite.

The server is started once for this module on 127.0.0.1:19530 by bench/milvus_server.py (its ports
are fixed, so one such server runs at a time: the port must be free); tests that need it fail, with
the server's log tail, if it cannot start, and it is stopped by its process group's id.

Each passage set (the speech, CMRC 2018 trial, DRCD dev) is embedded once per session into a folder
index, and its chunks, vectors, terms and cross-lingual vectors are copied as they are into Milvus,
so the two stores are compared on identical data; query vectors are encoded once too. Milvus 2.3
has no BM25, so the server's stores use the project's BM25 (identical to the folder index);
milvus-lite 3.2 has one, and the server-BM25 route is measured there. milvus-lite (in process) also
tests the generation switch and its failures, and the page against a Milvus location.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.milvus_server import FAST_CONFIG, HOST, PORT, SameQueries, ServerError, copy_into
from bench.milvus_server import MilvusServer as EmbeddedServer
from conftest import DATA, ROOT, SHARED, SPEECH, whole_table
from indexer.chunking import Chunk
from indexer.crosslingual import USE_DIM, USE_NAME, PassageVectors
from indexer.engine import Engine, IndexSettings
from indexer.errors import ModelError, StoreError
from indexer.evaluation import evaluate, read_labelled
from indexer.keyword import LEGACY, Segmenter
from indexer.store import milvus_store as ms
from indexer.store.base import DocRecord, Manifest
from indexer.store.faiss_store import FaissStore
from indexer.store.milvus_store import BM25_ENV, MilvusStore, parse_location, server_has_bm25

QUESTION = "私立学校怎样建立党组织？"
ENGLISH = "How do private schools set up Party organisations?"
EVAL = SHARED / "eval"
SETS = {"cmrc": EVAL / "cmrc2018_trial_retrieval", "drcd": EVAL / "drcd_dev_retrieval_simplified"}


# ---------------------------------------------------------------- the server


class MilvusServer(EmbeddedServer):
    """The shared start-up, with test manners: a failure to start fails the test; a stop drops the
    process's connections to the server (they are dead)."""

    def start(self, timeout: float = 180.0) -> None:
        try:
            super().start(timeout)
        except ServerError as exc:
            pytest.fail(str(exc))

    def stop(self) -> None:
        super().stop()
        ms._CLIENTS.clear()


def chunked(store, hits: list[tuple[float, int]]) -> list[tuple[float, object]]:
    """A store's (score, row) results with the rows' chunk records (the engine reads them the same way)."""
    return list(zip([s for s, _ in hits], store.chunks([r for _, r in hits])))


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "data", FAST_CONFIG)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def default_bm25_route(monkeypatch):
    """Each test starts from the default BM25 route (auto), whatever the caller's environment says."""
    monkeypatch.delenv(BM25_ENV, raising=False)


# ---------------------------------------------------------------- shared data


@pytest.fixture(scope="module")
def same(encoder):
    return SameQueries(encoder)


def loc(name: str) -> str:
    return f"milvus://{HOST}:{PORT}/{name}"


def _speech_labels():
    return read_labelled(DATA / "speech_qa_zh.jsonl") + read_labelled(DATA / "speech_qa_en.jsonl")


@pytest.fixture(scope="module")
def shared_sets(tmp_path_factory, same):
    """CMRC and DRCD folder indexes, embedded once (without the cross-lingual index: their questions
    are Chinese), built on first use."""
    built: dict[str, Path] = {}

    def get(name: str) -> tuple[Path, list]:
        if not SETS[name].is_dir():  # ../shared sits beside the clone in CI; elsewhere it may not
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{SETS[name]} is not there (../shared/eval)")
        if name not in built:
            built[name] = tmp_path_factory.mktemp(name) / "index"
            Engine(built[name], encoder=same, settings=IndexSettings(crosslingual=False)).build(
                [SETS[name] / "passages.jsonl"])
        return built[name], read_labelled(SETS[name] / "queries.jsonl")

    return get


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


def _scores(results):
    return [h.score for hits in results for h in hits]


def _xl_rows(store) -> dict[str, tuple]:
    """chunk id → (passage vector, [(span, sentence vector)]) of a store's cross-lingual vectors."""
    xl, out = whole_table(store), {}
    for row, c in enumerate(store.all_chunks()):
        sel = xl.sentences_of(row)
        out[c.chunk_id] = (xl.chunks[row], [(tuple(s), v) for s, v in zip(xl.spans[sel].tolist(), xl.sentences[sel])])
    return out


TIE = 1e-6  # float32 inner products of 384-d unit vectors, summed in another order, differ by up to ~1e-7


def same_up_to_ties(x, y, k: int = 10) -> bool:
    """Two exact top-k lists (score, chunk) agree: the same scores, and the same chunk at every place
    but where two chunks' scores are equal to within TIE (each side rounds its float32 sums its own
    way, so such chunks may change places, also with the next one beyond the list: x and y hold k+1)."""
    if len(x) != len(y) or any(abs(sx - sy) > 1e-5 for (sx, _), (sy, _) in zip(x, y)):
        return False
    for i in range(min(k, len(x))):
        if x[i][1].chunk_id != y[i][1].chunk_id:
            tied = [j for j in (i - 1, i + 1) if 0 <= j < len(x) and (abs(x[j][0] - x[i][0]) <= TIE or abs(y[j][0] - y[i][0]) <= TIE)]
            if not tied:
                return False
    return True


def assert_same_xl(a, b, atol: float = 0.0) -> None:
    """Two stores hold the same cross-lingual vectors for the same chunks, in row order."""
    assert [c.chunk_id for c in a.all_chunks()] == [c.chunk_id for c in b.all_chunks()]
    xa, xb = whole_table(a).take(a.live_rows()), whole_table(b).take(b.live_rows())  # without deleted rows
    np.testing.assert_array_equal(xa.owner, xb.owner)
    np.testing.assert_array_equal(xa.spans, xb.spans)
    np.testing.assert_allclose(xa.chunks, xb.chunks, atol=atol, rtol=0)
    np.testing.assert_allclose(xa.sentences, xb.sentences, atol=atol, rtol=0)


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


def test_server_bm25_is_detected_by_version():
    assert server_has_bm25("milvus_lite-3.2.2") and server_has_bm25("v2.5.4") and server_has_bm25("v2.6.0")
    assert not server_has_bm25("v2.3.5-lite") and not server_has_bm25("v2.4.13") and not server_has_bm25("")
    assert not server_has_bm25("milvus_lite-2.4.10") and not server_has_bm25(None)


# ---------------------------------------------------------------- generations (milvus-lite, in process)

DIM = 8


def _doc(doc_id: str, n: int, seed: int, word: str, sentences: int = 0):
    """A synthetic document of n one-line chunks, random unit vectors, its terms, and (sentences > 0)
    random cross-lingual vectors with that many sentences per chunk."""
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
    out = [record, chunks, vectors, text, [[word, doc_id] for _ in range(n)]]
    if sentences:
        xl = PassageVectors(rng.standard_normal((n, USE_DIM)).astype(np.float32),
                            rng.standard_normal((n * sentences, USE_DIM)).astype(np.float32),
                            np.repeat(np.arange(n), sentences), np.tile([[0, 2]], (n * sentences, 1)).astype(np.int32))
        out.append(xl)
    return tuple(out)


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
    return ([[(round(s, 5), c.chunk_id) for s, c in chunked(store, hits)] for hits in store.search(queries, 4)],
            [(round(s, 5), c.chunk_id) for s, c in chunked(store, store.keyword_search(["苹果"], 10))], sorted(store.manifest.documents))


def test_generation_switch_and_failures(tmp_path, monkeypatch):
    location = f"milvus-lite://{tmp_path}/lite.db"
    assert not MilvusStore.exists(location)
    first = MilvusStore(location, Manifest(model="m", dim=DIM, chunking={}))
    first.upsert(*_doc("a", 3, 1, "苹果"))
    first.upsert(*_doc("b", 2, 2, "香蕉"))
    first.save()
    assert first.generation == "gen-000001" and MilvusStore.exists(location)
    before = _answers(MilvusStore.load(location))
    assert before[2] == ["a", "b"] and {cid.split("#")[0] for _, cid in before[1]} == {"a"}

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
    monkeypatch.delenv(BM25_ENV, raising=False)
    raw = _raw_counts(store)
    assert sum(raw.values()) > 0 and raw[store._chunks_name(1)] == 5 + 6  # generation 2's rows were written…
    again = MilvusStore.load(location)
    assert again.generation == "gen-000001" and _answers(again) == before  # …and nobody sees them
    assert again.problems() == [] and len(again) == 5

    # 2. killed half-way through inserting the chunk rows
    real_insert = ms._insert

    def dies_midway(client, name, rows, **kwargs):
        if not name.endswith("_chunks"):
            return real_insert(client, name, rows, **kwargs)
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
    monkeypatch.delenv(BM25_ENV, raising=False)
    assert _answers(MilvusStore.load(location)) == before

    # 3. a complete save: leftovers of both failures are gone, old chunks of b and all of a too
    store = MilvusStore.load(location)
    change(store)
    store.save()
    after = MilvusStore.load(location)
    assert after.generation == "gen-000002" and sorted(after.manifest.documents) == ["b", "c"]
    assert [c.chunk_id for c in after.chunks_of("b")] == [f"b#{i}" for i in range(4)]
    assert after.document_text("b").startswith("苹果b第0段") and after.problems() == []
    assert {c.doc_id for _, c in chunked(after, after.keyword_search(["苹果"], 10))} == {"b"}
    assert all(c.doc_id != "a" for hits in after.search(np.eye(DIM, dtype=np.float32), 10) for _, c in chunked(after, hits))
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
    monkeypatch.delenv(BM25_ENV, raising=False)
    half = MilvusStore.load(location)
    assert half.generation == "gen-000003" and sorted(half.manifest.documents) == ["c"] and not half._clean
    assert _raw_counts(half)[half._chunks_name(1)] == 6  # b's rows are still stored…
    assert {c.doc_id for hits in half.search(np.eye(DIM, dtype=np.float32), 10) for _, c in chunked(half, hits)} == {"c"}  # …unseen
    assert half.keyword_search(["苹果"], 10) == [] and half.keyword_search(["樱桃"], 10)
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
    assert not list(loaded.sentence_tables())  # an index without cross-lingual vectors keeps none

    # 6. an approximate index (HNSW asked for) measures its recall against exact search
    ann = MilvusStore(location + "?collection=ann", Manifest(model="m", dim=DIM, chunking={}, index_type="hnsw"))
    for i in range(4):
        ann.upsert(*_doc(f"d{i}", 10, 10 + i, "梨"))
    ann.save()
    ann = MilvusStore.load(location + "?collection=ann")
    assert ann.index_kind == "hnsw" and ann.recall_vs_exact() == 1.0 and len(ann) == 40


def test_cross_lingual_vectors_follow_generations(tmp_path, monkeypatch):
    """The USE vectors are written, hidden, superseded and cleaned up with their documents, and a
    store loaded at any point holds exactly what the folder index holds after the same operations."""
    def manifest():
        return Manifest(model="m", dim=DIM, chunking={}, crosslingual={"encoder": USE_NAME, "dim": USE_DIM})

    location = f"milvus-lite://{tmp_path}/xl.db"
    milvus, folder = MilvusStore(location, manifest()), FaissStore(tmp_path / "folder", manifest())
    big = _doc("big", 12, 7, "苹果", sentences=6)  # 72 sentences: its payload takes two pieces
    for store in (milvus, folder):
        store.upsert(*_doc("a", 3, 1, "苹果", sentences=2))
        store.upsert(*big)
        store.upsert(*_doc("e", 0, 9, "空", sentences=1))  # a document without chunks
        store.save()
    with pytest.raises(ValueError, match="cross-lingual vectors are needed"):
        milvus.upsert(*_doc("x", 2, 8, "梨"))  # this index keeps them: they must come with every document
    assert_same_xl(MilvusStore.load(location), FaissStore.load(folder.path))
    xl_name = milvus._xl_name(1)
    assert _raw_counts(milvus)[xl_name] == 1 + 2 + 1

    def change(store):
        store.upsert(*_doc("a", 4, 3, "香蕉", sentences=3))  # replaced
        store.upsert(*_doc("c", 2, 4, "樱桃", sentences=1))
        store.delete(["big"])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    before = MilvusStore.load(location)
    store = MilvusStore.load(location)
    change(store)
    monkeypatch.setattr(MilvusStore, "_switch", killed)  # killed before the switch
    with pytest.raises(KeyboardInterrupt):
        store.save()
    monkeypatch.undo()
    monkeypatch.delenv(BM25_ENV, raising=False)
    assert _raw_counts(store)[xl_name] == 4 + 2  # the new payloads were written, and are not read
    assert_same_xl(MilvusStore.load(location), before)

    store = MilvusStore.load(location)
    change(store)
    monkeypatch.setattr(MilvusStore, "_collect", killed)  # killed after the switch, before the clean-up
    with pytest.raises(KeyboardInterrupt):
        store.save()
    monkeypatch.undo()
    monkeypatch.delenv(BM25_ENV, raising=False)
    change(folder)
    folder.save()
    half = MilvusStore.load(location)
    assert not half._clean and _raw_counts(half)[xl_name] == 4 + 2  # old payloads still stored, hidden
    assert_same_xl(half, FaissStore.load(folder.path)) and half.problems() == []

    for store in (MilvusStore.load(location), folder):  # the next writer cleans up first
        store.upsert(*_doc("d", 1, 5, "葡萄", sentences=2))
        store.save()
    after = MilvusStore.load(location)
    assert_same_xl(after, FaissStore.load(folder.path))
    assert _raw_counts(after)[xl_name] == 4  # a, c, d and the empty e: superseded payloads deleted
    assert [c.doc_id for c in after.all_chunks()] == ["a"] * 4 + ["c"] * 2 + ["d"]

    client = ms._connect(after.target)  # a torn payload is found by load and check
    client.insert(xl_name, [{"doc_id": "d", "gen": after._doc_gen["d"], "seq": 0, "part": 1, "parts": 2,
                             "body": "", "vec": [1.0, 0.0]}])
    with pytest.raises(StoreError, match="cross-lingual vectors of \\['d'\\] are incomplete") as err:
        MilvusStore.load(location)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- BM25 routes and the server's BM25


def test_bm25_route_is_chosen_by_the_server_and_shown(tmp_path, monkeypatch):
    location = f"milvus-lite://{tmp_path}/route.db"
    segmenter = Segmenter()
    docs = [(record, chunks, vectors, text, segmenter.terms_many(c.text for c in chunks))  # the project's terms
            for record, chunks, vectors, text, _ in (_doc("a", 3, 1, "苹果"), _doc("b", 2, 2, "香蕉"),
                                                      _doc("c", 2, 3, "苹果香蕉"))]

    def build(where):
        store = MilvusStore(where, Manifest(model="m", dim=DIM, chunking={}))
        for doc in docs:
            store.upsert(*doc)
        store.save()
        return MilvusStore.load(where)

    server = build(location)  # milvus-lite 3 has full-text search: used by default
    assert server.keyword_backend.startswith("server BM25 (Milvus milvus_lite-3.2.2")
    monkeypatch.setenv(BM25_ENV, "local")
    local = build(location + "?collection=local")
    assert local.keyword_backend == "local BM25 (indexer.keyword) over the keyword terms stored in Milvus (INDEXER_MILVUS_BM25=local at build)"
    monkeypatch.setenv(BM25_ENV, "bm42")
    with pytest.raises(StoreError, match="not a BM25 route; use auto, local or server"):
        build(location + "?collection=bad")
    monkeypatch.delenv(BM25_ENV)
    for terms in (["苹果"], ["香蕉"], ["苹果", "香蕉"]):
        got, want = chunked(server, server.keyword_search(terms, 10)), chunked(local, local.keyword_search(terms, 10))
        scores = [s for s, _ in got]
        assert scores and all(s > 0 for s in scores) and scores == sorted(scores, reverse=True)  # BM25, best first
        assert {c.chunk_id for _, c in got} == {c.chunk_id for _, c in want}
        np.testing.assert_allclose(scores, [s for s, _ in want], rtol=1e-5)  # the same BM25 (k1, b, scale)
    assert [c.doc_id for _, c in chunked(server, server.keyword_search(["苹果"], 10, doc_ids={"c"}))] == ["c", "c"]
    some = np.array([0, 5, 6], np.int64)  # a phrase's scope: rows of a and c; the server filters by document
    got, want = server.keyword_search(["苹果"], 10, rows=some), local.keyword_search(["苹果"], 10, rows=some)
    assert {r for _, r in got} <= set(some.tolist()) and len(got) == 3
    assert [c.chunk_id for _, c in chunked(server, got)] == [c.chunk_id for _, c in chunked(local, want)]
    assert server.keyword_search(["西瓜"], 10) == [] and server.keyword_search([], 10) == []
    assert server.vocabulary() == local.vocabulary()
    reopened = MilvusStore.load(location)  # the route is kept with the index; an add keeps it
    record, chunks, vectors, text, _ = _doc("d", 1, 4, "苹果")
    reopened.upsert(record, chunks, vectors, text, segmenter.terms_many(c.text for c in chunks))
    reopened.save()
    assert MilvusStore.load(location).keyword_backend.startswith("server BM25")
    reloaded = MilvusStore.load(location)
    assert "d" in {c.doc_id for _, c in chunked(reloaded, reloaded.keyword_search(["苹果"], 10))}


def test_server_bm25_hybrid_within_two_points_of_local(tmp_path, speech_index, shared_sets, same):
    """The server's own BM25 (milvus-lite 3.2, jieba analyzer) in hybrid search, against the folder
    index cut the same way (jieba words alone: the server's analyzer cannot fold scripts or add
    bigrams), on the speech (Chinese and English questions) and every other CMRC 2018 trial question: within 2 points."""
    cmrc, cmrc_labels = shared_sets("cmrc")
    jieba_only = {"user_terms": [], "analyzer": LEGACY.to_json()}
    folders = {"speech": speech_index, "cmrc": cmrc}
    cases = [("speech zh", "speech", read_labelled(DATA / "speech_qa_zh.jsonl")),
             ("speech en", "speech", read_labelled(DATA / "speech_qa_en.jsonl")),
             ("cmrc", "cmrc", cmrc_labels[::2])]  # 500 of 1,000: two engines evaluate each (test time)
    copied = {}
    for name, key, labels in cases:
        if key not in copied:
            folder = tmp_path / key
            copy_into(folders[key], folder, jieba_only)
            copied[key] = (folder, f"milvus-lite://{tmp_path}/eval.db?collection={key}")
            copy_into(folder, copied[key][1])
        folder, location = copied[key]
        lite = Engine(location, encoder=same)
        assert lite.info()["keyword_backend"].startswith("server BM25")
        mine, theirs = evaluate(lite, labels, "hybrid"), evaluate(Engine(folder, encoder=same), labels, "hybrid")
        print(f"{name} hybrid: milvus-lite server BM25 {mine} folder {theirs}")
        for figure, value in theirs.items():
            assert abs(mine[figure] - value) <= 0.02, (name, figure, mine, theirs)


# ---------------------------------------------------------------- the real server: exact equality


@pytest.mark.parametrize("name", ["speech", "cmrc", "drcd"])
def test_exact_dense_top10_equals_faiss_and_eval_matches(name, milvus_server, speech_index, shared_sets, same):
    """Exact dense search on Milvus (FLAT) returns the same top-10 chunks, with the same scores, as
    FAISS exact search for every question of the set; hybrid evaluation figures agree."""
    folder, labels = (speech_index, _speech_labels()) if name == "speech" else shared_sets(name)
    labels = labels[::6] if name == "drcd" else labels  # 588 of DRCD's 3,524 questions: the suite's longest test
    location = loc(f"exact_{name}")
    copy_into(folder, location)
    local, milvus = FaissStore.load(folder), MilvusStore.load(location)
    assert milvus.index_kind == "flat" and local.index_kind == "flat" and milvus.problems() == []
    queries = [label.query for label in labels]
    vectors = same.encode_queries(queries)
    a = [chunked(milvus, hits) for hits in milvus.search(vectors, 11)]
    b = [chunked(local, hits) for hits in local.search(vectors, 11)]  # the 11th tells a tie at the 10th place
    assert len(a) == len(b) == len(queries)
    same_ids = sum([c.chunk_id for _, c in x[:10]] == [c.chunk_id for _, c in y[:10]] for x, y in zip(a, b))
    differ = [(q, x, y) for q, x, y in zip(queries, a, b) if not same_up_to_ties(x, y)]
    print(f"{name}: {same_ids} of {len(queries)} top-10 lists identical, the others differ only within ties")
    assert not differ, [(q, [(round(s, 7), c.chunk_id) for s, c in x], [(round(s, 7), c.chunk_id) for s, c in y])
                        for q, x, y in differ[:3]]
    np.testing.assert_allclose([s for x in a for s, _ in x], [s for y in b for s, _ in y], atol=1e-5)
    mine, theirs = evaluate(Engine(location, encoder=same), labels, "hybrid"), evaluate(Engine(folder, encoder=same), labels, "hybrid")
    print(f"{name} ({len(queries)} questions, {len(local)} chunks) hybrid: milvus {mine} folder {theirs}")
    for key, value in theirs.items():
        assert abs(mine[key] - value) <= 0.02, (key, mine, theirs)
    assert milvus.keyword_backend == ("local BM25 (indexer.keyword) over the keyword terms stored in Milvus (the index's analyzer "
                                      "folds scripts and adds bigrams and codes: the server's cannot)")


def test_speech_on_the_server_answers_as_the_folder_index(milvus_speech, speech_index, same):
    milvus = Engine(milvus_speech, encoder=same)
    local = Engine(speech_index, encoder=same)
    queries = [label.query for label in _speech_labels()] + [  # phrases and exclusions: Milvus reads the texts
        '"党组织" 学校', '“三会一课”', '民办学校党组织 -民办', '党组织 -"民办学校"', '"党风廉政" -"廉洁"']
    for mode in ("hybrid", "bm25"):
        a, b = milvus.batch(queries, k=10, mode=mode), local.batch(queries, k=10, mode=mode)
        assert _ids(a) == _ids(b), mode
        np.testing.assert_allclose(_scores(a), _scores(b), atol=1e-5)
    assert milvus.search(QUESTION, k=1)[0].section.startswith("四、")
    info = milvus.info()
    assert info["index_type"] == "flat" and info["chunks"] == len(local.store) and info["generation"] == "gen-000001"
    assert info["keyword_backend"].startswith("local BM25") and "the index's analyzer" in info["keyword_backend"]
    assert info["crosslingual"] == local.info()["crosslingual"] and milvus.check() == []
    assert [c.chunk_id for c in milvus.store.chunks_of("speech.txt")] == \
        [c.chunk_id for c in local.store.chunks_of("speech.txt")]
    assert milvus.store.document_text("speech.txt") == SPEECH.read_text(encoding="utf-8")
    np.testing.assert_allclose(milvus.store.vectors(), local.store.vectors(), atol=1e-6)
    assert_same_xl(milvus.store, local.store)  # float16 on both sides: identical
    assert milvus.store.vocabulary() == local.store.vocabulary()
    rows = list(range(len(local.store)))
    picks = [rows[::3], rows[1:7], [], rows[-2:]]
    vectors = same.encode_queries([QUESTION, ENGLISH, "党风廉政", "教师"])
    for x, y in zip(milvus.store.dense_scores(vectors, picks), local.store.dense_scores(vectors, picks)):
        np.testing.assert_array_equal(x, y)  # the same float32 vectors, the same arithmetic
    chunks, vecs, xl = milvus.store.document_vectors("speech.txt")
    want = local.store.document_vectors("speech.txt")
    assert chunks == want[0] and np.array_equal(vecs, want[1]) and np.array_equal(xl.sentences, want[2].sentences)
    assert {h.doc_id for h in milvus.search(QUESTION, k=5, docs=["speech.txt"])} == {"speech.txt"}

    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError, match="built with model multilingual-e5-small"):
        Engine(milvus_speech, encoder=Other()).search(QUESTION)


def test_english_questions_get_the_same_hits_as_on_the_folder_index(milvus_speech, speech_index, same):
    """The cross-lingual route on Milvus: USE vectors loaded from the server, translated terms, the
    answering sentence: every English question of the speech set gets the same hits and scores."""
    milvus, local = Engine(milvus_speech, encoder=same), Engine(speech_index, encoder=same)
    queries = [label.query for label in read_labelled(DATA / "speech_qa_en.jsonl")]
    for mode in ("hybrid", "dense"):
        a, b = milvus.query(queries, k=10, mode=mode), local.query(queries, k=10, mode=mode)
        assert all(r.cross_lingual for r in a)
        assert [r.terms for r in a] == [r.terms for r in b] and [r.translations for r in a] == [r.translations for r in b]
        assert _ids([r.hits for r in a]) == _ids([r.hits for r in b]), mode
        np.testing.assert_allclose(_scores([r.hits for r in a]), _scores([r.hits for r in b]), atol=1e-5)
        assert [(h.sentence_start, h.sentence_end) for r in a for h in r.hits] == \
            [(h.sentence_start, h.sentence_end) for r in b for h in r.hits]
    first = milvus.query([ENGLISH], k=3)[0]
    assert "党组织" in first.terms and any("民办学校" in h.text for h in first.hits)


def test_update_roundtrip_equals_folder_index(milvus_copy, speech_index, same, tmp_path):
    """add / replace / remove / reload on Milvus and on a copy of the folder index, step by step with
    the same calls (so each side embeds the same batches): the same hits and scores after each step,
    the same USE vectors row for row, and what was replaced or removed is gone from the server."""
    shutil.copytree(speech_index, tmp_path / "local")
    milvus, local = Engine(milvus_copy, encoder=same), Engine(tmp_path / "local", encoder=same)

    def both(call, *args):
        return [getattr(engine, call)(*args) for engine in (milvus, local)]

    def agree(queries, modes=("dense", "hybrid")):
        a, b = Engine(milvus_copy, encoder=same), Engine(tmp_path / "local", encoder=same)  # both reloaded
        for mode in modes:
            x, y = a.query(queries, k=10, mode=mode), b.query(queries, k=10, mode=mode)
            assert _ids([r.hits for r in x]) == _ids([r.hits for r in y]), mode
            np.testing.assert_allclose(_scores([r.hits for r in x]), _scores([r.hits for r in y]), atol=1e-5)
            assert [r.terms for r in x] == [r.terms for r in y]
        assert_same_xl(a.store, b.store)  # float16 on both sides, from the same encoder batches: identical
        assert a.check() == [] and [d.doc_id for d in a.documents()] == [d.doc_id for d in b.documents()]
        return a

    extra = tmp_path / "docs"
    extra.mkdir()
    (extra / "a.txt").write_text("学校食堂要严格执行食品安全管理制度，每天公示菜谱和食材来源。", encoding="utf-8")
    (extra / "b.md").write_text("# 教师培训\n\n暑假期间全市教师参加为期两周的信息技术应用能力提升培训。"
                                "培训结束后要提交学习总结。", encoding="utf-8")
    both("add", [extra / "a.txt", extra / "b.md"])
    assert milvus.search("食品安全", k=1)[0].doc_id == "a.txt"  # Strong: seen right after the add
    assert milvus.search("How is food safety managed in school canteens?", k=1)[0].doc_id == "a.txt"
    both("remove", ["a.txt"])
    agree([QUESTION, "教师暑假培训", "食品安全", "党风廉政建设", "How are young cadres trained?",
           "What must teachers hand in after the summer training?"])

    plan = tmp_path / "plan.txt"  # a replaced document keeps the vectors of its unchanged chunks
    first = "一、课后服务\n各校要在放学后开设课后服务，内容包括作业辅导、体育锻炼和兴趣小组活动。"
    plan.write_text(first + "\n二、家校沟通\n班主任每月至少组织一次家长会，通报学生在校表现。", encoding="utf-8")
    both("add", [plan])
    plan.write_text(first + "\n二、家校沟通\n班主任每学期至少家访一次，并建立家长微信群。", encoding="utf-8")
    assert [[r.status for r in reports] for reports in both("add", [plan])] == [["replaced"]] * 2
    assert milvus.reused == local.reused == 1
    agree(["课后服务有哪些内容？", "How often do class teachers visit families?", "家长会"])
    both("remove", ["plan.txt"])

    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛，每所学校至少派出一支代表队参加比赛。", encoding="utf-8")
    both("add", [doc])
    assert milvus.search("足球比赛什么时候举行", k=1)[0].doc_id == "notice.txt"
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛！每所学校至少派出一支合唱团参加演出。", encoding="utf-8")
    assert [[r.status for r in reports] for reports in both("add", [doc])] == [["replaced"]] * 2
    assert [r.status for r in milvus.add([doc])] == ["unchanged"]
    texts = [c.text for c in milvus.store.chunks_of("notice.txt")]
    assert all("足球" not in t for t in texts) and any("合唱" in t for t in texts)
    for hits in milvus.batch(["足球比赛", "校园足球联赛", "When is the school football league?"], k=50, mode="hybrid"):
        assert all("足球" not in h.text for h in hits)
    agree(["合唱比赛", "Which choir contest is planned?"])
    both("remove", ["notice.txt"])
    again = agree(["足球比赛", "合唱比赛", "校园活动通知", "Which choir contest is planned?"])
    for hits in again.batch(["足球比赛", "合唱比赛", "校园活动通知"], k=50, mode="hybrid"):
        assert all(h.doc_id in ("speech.txt", "b.md") for h in hits)
    assert len(again.store.vectors()) == len(again.store)
    client, base = ms._connect(again.store.target), again.store._base
    for name in (again.store._chunks_name(base), again.store._docs_name(base), again.store._xl_name(base)):
        rows = client.query(name, filter="gen >= 0", output_fields=["doc_id", "gen"], consistency_level="Strong")
        assert {r["doc_id"] for r in rows} == {"speech.txt", "b.md"}, name  # replaced and removed rows deleted
        assert {(r["doc_id"], r["gen"]) for r in rows} == {(d, g) for d, g in again.store._doc_gen.items()}, name
    assert _raw_counts(again.store)[again.store._chunks_name(base)] == len(again.store)


def test_build_through_the_engine(milvus_server, same, tmp_path, monkeypatch):
    doc = tmp_path / "sports.txt"
    doc.write_text("全市中小学将举办阳光体育节，设置跳绳、踢毽子和拔河三个集体项目。", encoding="utf-8")
    location = loc("built") + "?token=root:Milvus"  # auth is off on this server: a token is accepted and unused
    engine = Engine(location, encoder=same)
    assert not engine.exists()
    monkeypatch.setenv(BM25_ENV, "server")  # asked for explicitly: a clear error, why it cannot be had
    with pytest.raises(StoreError, match="INDEXER_MILVUS_BM25=server needs the server's own analyzer"):
        engine.build([doc])  # the default analyzer folds scripts and adds bigrams: no server analyzer does
    with pytest.raises(StoreError, match="INDEXER_MILVUS_BM25=server, but Milvus v2.3.5-lite has no full-text search"):
        Engine(location, encoder=same, settings=IndexSettings(analyzer=LEGACY)).build([doc])
    monkeypatch.delenv(BM25_ENV)
    engine.build([doc])
    assert engine.search("拔河比赛", k=1, mode="hybrid")[0].doc_id == "sports.txt"
    assert engine.search("Which team sports are on the programme?", k=1)[0].doc_id == "sports.txt"
    reopened = Engine(location, encoder=same)
    assert reopened.info()["documents"] == 1 and reopened.store.location == loc("built")
    assert reopened.info()["crosslingual"].startswith(USE_NAME) and reopened.check() == []


def test_engine_never_shows_the_token(milvus_speech, same):
    location = milvus_speech + "?token=root:TOPSECRET"
    engine = Engine(location, encoder=same)
    assert "TOPSECRET" not in str(engine.info())

    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError) as err:
        Engine(location, encoder=Other()).search(QUESTION)
    assert "TOPSECRET" not in str(err.value)


def test_server_stopped_mid_batch_then_restarted(milvus_server, milvus_speech, speech_index, same, tmp_path):
    """Stop the server while `batch` runs: one line and exit 1; after a restart the answers are as before."""
    queries = [label.query for label in _speech_labels()][:20]
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
    assert_same_xl(engine.store, FaissStore.load(speech_index))


# ---------------------------------------------------------------- the page on a Milvus location


def test_page_on_a_milvus_lite_location(speech_index, tmp_path, monkeypatch):
    """The search page opened on milvus-lite:///….db: the 民办学校 passage first for the Chinese
    question, and an English question shows its translated terms."""
    from test_app import MINBAN, MINBAN_SECTION, ask, heads, passages, run_app, text_of

    location = f"milvus-lite://{tmp_path}/page.db"
    copy_into(speech_index, location)
    monkeypatch.setenv("INDEXER_INDEX", location)
    at = run_app()
    assert at.sidebar.metric[0].value == "1" and int(at.sidebar.metric[1].value) > 10
    ask(at, QUESTION)
    first = passages(at)[0]
    assert text_of(first).startswith(MINBAN) and "民办学校" in text_of(first)
    assert MINBAN_SECTION in heads(at)[0] and "<mark>党组织</mark>" in first
    ask(at, ENGLISH)
    chips = [m.value for m in at.markdown if m.value.startswith('<div class="terms">')]
    assert len(chips) == 1 and "Party organisations → <b>党组织</b>" in chips[0]
    shown = passages(at)
    assert shown and all(p.count('<span class="answer">') == 1 for p in shown)
    assert any("民办学校" in text_of(p) for p in shown[:3])
