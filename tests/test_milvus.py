"""Milvus as the vector index of a folder index, against real servers: an embedded Milvus 2.3 server
(`milvus-server`) and milvus-lite.

The server is started once for this module on 127.0.0.1:19530 by bench/milvus_server.py (its ports
are fixed, so one such server runs at a time: the port must be free); tests that need it fail, with
the server's log tail, if it cannot start, and it is stopped by its process group's id.

Each passage set (the speech, CMRC 2018 trial, DRCD dev) is embedded once per session into a folder
index, and copied as it is (bench/milvus_server.copy_into) into a second folder whose vectors a Milvus
collection keeps: the records, postings, sentence tables and commits are the same code, so the two
are compared on identical data; query vectors are encoded once too. milvus-lite (in process) tests
the commits, what a failed write leaves, the clean-up, and the page.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.milvus_server import FAST_CONFIG, HOST, PORT, SameQueries, ServerError, copy_into
from bench.milvus_server import MilvusServer as EmbeddedServer
from conftest import DATA, ROOT, SHARED, SPEECH, assert_same_ranking, whole_table
from indexer.chunking import Chunk
from indexer.crosslingual import USE_NAME
from indexer.engine import Engine, IndexSettings
from indexer.errors import ModelError, StoreError
from indexer.evaluation import evaluate, read_labelled
from indexer.store import milvus_vectors as mv
from indexer.store.base import DocRecord, Manifest
from indexer.store import segment
from indexer.store import Snapshot, Writer
from indexer.store.records import Records
from indexer.store.milvus_vectors import MilvusVectors, parse_location

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
        mv._CLIENTS.clear()
        mv._LOADED.clear()


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
    are Chinese), built on first use, with a sample of their questions: the suite's longest tests, so
    500 of CMRC's 1,000 questions over its 256 passages, and 353 of DRCD's 3,524 (every tenth) over
    the 353 of its 1,000 passages that answer them (each answers about 3.5 questions; fewer passages
    to embed, every question still has its own)."""
    built: dict[str, tuple[Path, list]] = {}

    def get(name: str) -> tuple[Path, list]:
        if not SETS[name].is_dir():  # ../shared sits beside the clone in CI; elsewhere it may not
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{SETS[name]} is not there (../shared/eval)")
        if name not in built:
            labels = read_labelled(SETS[name] / "queries.jsonl")[::10 if name == "drcd" else 2]
            wanted = {r for label in labels for r in label.relevant}
            folder = tmp_path_factory.mktemp(name)
            lines = (SETS[name] / "passages.jsonl").read_text(encoding="utf-8").splitlines()
            (folder / "passages.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["id"] in wanted),
                                                   encoding="utf-8")
            Engine(folder / "index", encoder=same, settings=IndexSettings(crosslingual=False)).build(
                [folder / "passages.jsonl"])
            built[name] = folder / "index", labels
        return built[name]

    return get


@pytest.fixture(scope="module")
def milvus_speech(milvus_server, speech_index, tmp_path_factory) -> Path:
    """The speech index copied into a folder whose vectors the server's collection `speech` keeps
    (read-only for the tests using it)."""
    folder = tmp_path_factory.mktemp("milvus_speech") / "index"
    copy_into(speech_index, folder, loc("speech"))
    return folder


@pytest.fixture
def milvus_copy(milvus_server, speech_index, tmp_path, request) -> Path:
    """A private writable copy of the speech index, its vectors in a collection of its own."""
    copy_into(speech_index, tmp_path / "milvus", loc("t_" + request.node.name.replace("[", "_").replace("]", "")[:40]))
    return tmp_path / "milvus"


def assert_same_lists(a: list, b: list, what: object = "") -> None:
    """Per question, the same ranking (conftest.assert_same_ranking) from both indexes."""
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        assert_same_ranking(x, y, what)


def _xl_rows(store) -> dict[str, tuple]:
    """chunk id → (passage vector, [(span, sentence vector)]) of a store's cross-lingual vectors."""
    xl, out = whole_table(store), {}
    for row, c in enumerate(store.all_chunks()):
        sel = xl.sentences_of(row)
        out[c.chunk_id] = (xl.chunks[row], [(tuple(s), v) for s, v in zip(xl.spans[sel].tolist(), xl.sentences[sel])])
    return out


def assert_same_xl(a, b, atol: float = 0.0) -> None:
    """Two stores hold the same cross-lingual vectors for the same chunks, in row order."""
    assert [c.chunk_id for c in a.all_chunks()] == [c.chunk_id for c in b.all_chunks()]
    xa, xb = whole_table(a).take(a.rows_of()), whole_table(b).take(b.rows_of())  # without deleted rows
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
    assert parse_location(t.display).display == t.display  # what the folder keeps reads back the same
    monkeypatch.setenv("INDEXER_MILVUS_USER", "bob")
    monkeypatch.setenv("INDEXER_MILVUS_PASSWORD", "hunter2")
    t = parse_location("milvus://h:1/c")
    assert (t.user, t.password) == ("bob", "hunter2") and t.redact("login hunter2 failed") == "login *** failed"
    lite = parse_location("milvus-lite:///tmp/x/index.db?collection=news")
    assert lite.lite and lite.uri == "/tmp/x/index.db" and lite.collection == "news"
    assert parse_location(lite.display) == lite
    for bad in ("milvus://h:1/", "milvus://h:1/a/b/c", "milvus://h:1/9lives?token=TOPSECRET", "milvus://:1/c",
                "milvus://h:1/bad-name?password=TOPSECRET"):
        with pytest.raises(StoreError) as err:
            parse_location(bad)
        assert "TOPSECRET" not in str(err.value) and "\n" not in str(err.value)


DIM = 8


def _doc(doc_id: str, n: int, seed: int, word: str):
    """A synthetic document of n one-line chunks, random unit vectors and its terms."""
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


def _manifest() -> Manifest:
    return Manifest(model="m", dim=DIM, chunking={})


def test_unreachable_server_is_one_quick_line(tmp_path):
    """A build whose vectors go to a server that is not there, or does not answer: one line naming it
    (no secret), within seconds, and no index is left half made."""
    location = "milvus://127.0.0.1:1/docs?token=root:TOPSECRET"  # nothing listens on port 1
    store = Writer.create(tmp_path / "a", _manifest(), vectors=location)
    store.upsert(*_doc("a", 3, 1, "苹果"))
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.commit()
    message = str(err.value)
    assert time.monotonic() - start < 10
    assert "cannot reach the Milvus server" in message and "127.0.0.1:1" in message
    assert "TOPSECRET" not in message and "\n" not in message
    with pytest.raises(StoreError, match="nothing was committed"):
        Snapshot.load(tmp_path / "a")

    silent = socket.socket()  # accepts connections and never answers: a hung host, not a refused port
    silent.bind((HOST, 0))
    silent.listen(8)
    try:
        store = Writer.create(tmp_path / "b", _manifest(), vectors=f"milvus://{HOST}:{silent.getsockname()[1]}/docs")
        store.upsert(*_doc("a", 3, 1, "苹果"))
        start = time.monotonic()
        with pytest.raises(StoreError, match="cannot reach the Milvus server within"):
            store.commit()
        assert time.monotonic() - start < 20
    finally:
        silent.close()


def test_an_index_at_a_milvus_location_is_refused_with_the_command():
    """`--index milvus://…` (how an earlier version kept a whole index in Milvus): one line saying how
    to give the vectors to Milvus now, without the credentials, exit 1."""
    run = subprocess.run([sys.executable, "-m", "indexer", "search", "党建", "--index",
                          "milvus://bob:TOPSECRET@db.example:19530/docs?token=TOPSECRET"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: milvus://db.example:19530/docs is a Milvus location")
    assert "--index DIR --vectors milvus://db.example:19530/docs" in run.stderr and "TOPSECRET" not in run.stderr


# ---------------------------------------------------------------- commits (milvus-lite, in process)


def _view(store: Snapshot | Writer) -> Snapshot:
    """A snapshot, or a writer's last commit."""
    return store.snapshot if isinstance(store, Writer) else store


def _held(store: Snapshot | Writer) -> list[int]:
    """The record ids the collection holds."""
    return _view(store).vectors.collection.ids().tolist()


def _collections(client, prefix: str) -> list[str]:
    return sorted(n for n in client.list_collections() if n.startswith(prefix))


def _live_ids(store: Snapshot | Writer) -> list[int]:
    return sorted(_view(store).rows.ids(_view(store).rows_of()).tolist())


def _answers(store: Snapshot | Writer):
    """Dense search (all, and within one document) and BM25, as (score, chunk id)."""
    store = _view(store)
    queries = np.eye(DIM, dtype=np.float32)

    def shown(hits):
        return [(round(s, 5), c.chunk_id) for s, c in chunked(store, hits)]

    return ([shown(h) for h in store.search(queries, 4)], [shown(h) for h in store.search(queries, 3, {"b"})],
            [shown(h) for h in store.search(queries, 5, {"a", "b", "c", "d"})],
            shown(store.keyword_search(["苹果"], 10)), sorted(store.manifest.documents))


def test_commits_failures_and_clean_up(tmp_path, monkeypatch):
    """The folder with its vectors in milvus-lite, beside the same writes to a folder with FAISS files:
    the same answers after every commit; the collection holds exactly the live rows' ids; a write that
    fails before its commit, or whose clean-up fails after it, changes no answer and is tidied by the
    next write or merge; a rebuild makes a new collection and drops the old one."""
    lite = f"milvus-lite://{tmp_path}/lite.db?collection=docs"
    milvus, folder = Writer.create(tmp_path / "m", _manifest(), vectors=lite), Writer.create(tmp_path / "f", _manifest())
    steps = [[("a", 5, 1, "苹果"), ("b", 6, 2, "香蕉"), ("c", 4, 3, "苹果")],  # the first commit
             [("d", 3, 4, "樱桃"), ("b", 2, 5, "香蕉")],  # add d, replace b
             [("e", 4, 6, "苹果"), "-a"]]  # add e, remove a
    for step in steps:
        for store in (milvus, folder):
            for change in step:
                store.delete([change[1:]]) if isinstance(change, str) else store.upsert(*_doc(*change))
            store.commit()
        m, f = Snapshot.load(tmp_path / "m"), Snapshot.load(tmp_path / "f")
        assert _answers(m) == _answers(f)
        assert _held(m) == _live_ids(m) and m.problems() == []
    m = Snapshot.load(tmp_path / "m")
    with monkeypatch.context() as patch:  # documents asked one at a time, the lists joined: the same
        patch.setattr(mv, "DOC_FILTER", 1)
        assert _answers(m) == _answers(Snapshot.load(tmp_path / "f"))
    assert re.fullmatch(r"docs_[0-9a-f]{8}", m.manifest.vectors["collection"])
    assert m.stats()["index_type"].startswith("Milvus flat (milvus-lite://")
    assert len(m.rows.segments) == 3 and all(s.vectors is None for s in m.rows.segments)
    assert not list((tmp_path / "m").glob("seg-*/vectors.npy"))  # the collection keeps them, nothing else
    np.testing.assert_array_equal(m.all_vectors(), Snapshot.load(tmp_path / "f").all_vectors())
    before = _answers(m)

    # a write that fails before its commit: its vectors are in the collection, no record holds them
    def fails(self, db, gen):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(Writer, "_commit_meta", fails)
        store = Writer.open(tmp_path / "m")
        store.upsert(*_doc("x", 5, 7, "苹果"))
        with pytest.raises(OSError):
            store.commit()
    m = Snapshot.load(tmp_path / "m")
    assert _answers(m) == before and m.problems() == []
    assert len(_held(m)) == len(_live_ids(m)) + 5  # passed over by every search
    m = Writer.open(tmp_path / "m")
    for store in (m, folder):  # y's ids are the ones x had: the next write clears what no commit holds
        store.upsert(*_doc("y", 2, 8, "梨"))
        store.commit()
    assert _held(m) == _live_ids(m) and "y" in m.manifest.documents and "x" not in m.manifest.documents
    f = Snapshot.load(tmp_path / "f")
    np.testing.assert_array_equal(m.snapshot.all_vectors(), f.all_vectors())  # y's vectors, not x's under the same ids
    assert _answers(m) == _answers(f) and m.snapshot.problems() == []

    # a removal whose clean-up fails after its commit: a warning; the removed rows are passed over
    def down(self, ids):
        raise StoreError("milvus-lite: Milvus delete failed: down")

    with monkeypatch.context() as patch:
        patch.setattr(MilvusVectors, "remove", down)
        m.delete(["c"])
        m.commit()
    m = Snapshot.load(tmp_path / "m")
    assert "c" not in m.manifest.documents and len(_held(m)) == len(_live_ids(m)) + 4
    assert all(not c.chunk_id.startswith("c#") for hits in m.search(np.eye(DIM, dtype=np.float32), 20)
               for _, c in chunked(m, hits))
    segmented = _answers(m)
    m = Writer.open(tmp_path / "m")
    assert m.optimize() > 1 and len(m.snapshot.rows.segments) == 1
    assert _answers(Snapshot.load(tmp_path / "m")) == segmented  # one segment or many: the same answers
    m.upsert(*_doc("z", 2, 9, "梨"))
    m.commit()  # the merged-away rows' records go a commit later, their vectors with them
    assert _held(m) == _live_ids(m) and m.snapshot.problems() == []

    # a rebuild: a new collection; the old one stays for readers of the previous commit, and goes
    # with the next one
    client = mv._connect(m._vectors.collection.target)
    first = m.manifest.vectors["collection"]
    new = Writer.create(tmp_path / "m", _manifest(), vectors=lite)
    new.upsert(*_doc("n", 3, 10, "苹果"))
    new.commit()
    second = new.manifest.vectors["collection"]
    assert second != first and _collections(client, "docs_") == sorted([first, second])
    old = m.snapshot  # a reader of the previous commit
    seen = {c.doc_id for hits in old.search(np.eye(DIM, dtype=np.float32), 4) for _, c in chunked(old, hits)}
    assert seen and seen <= {"a", "b", "d", "e", "y", "z"}  # a reader of the previous commit still answers
    new.upsert(*_doc("o", 2, 12, "梨"))
    new.commit()
    assert _collections(client, "docs_") == [second]
    assert _held(Snapshot.load(tmp_path / "m")) == _live_ids(new) and new.snapshot.problems() == []
    # a rebuild with FAISS files: the collection goes a commit later too
    plain = Writer.create(tmp_path / "m", _manifest())
    plain.upsert(*_doc("p", 3, 11, "苹果"))
    plain.commit()
    assert _collections(client, "docs_") == [second] and Snapshot.load(tmp_path / "m").stats()["index_type"] == "flat"
    plain.delete(["p"])
    plain.commit()
    assert _collections(client, "docs_") == []
    assert "vectors" not in json.loads(Records(tmp_path / "m" / "records.db").meta()["manifest"])  # as format 3 was

    # a build that fails before its commit takes its new collection with it
    broken = Writer.create(tmp_path / "m", _manifest(), vectors=lite)
    broken.upsert(*_doc("q", 3, 13, "苹果"))
    with monkeypatch.context() as patch:
        patch.setattr(Writer, "_commit_meta", fails)
        with pytest.raises(OSError):
            broken.commit()
    assert _collections(client, "docs_") == [] and Snapshot.load(tmp_path / "m").stats()["index_type"] == "flat"

    # check names a collection that lost vectors
    gone = Writer.create(tmp_path / "g", _manifest(), vectors=f"milvus-lite://{tmp_path}/lite.db?collection=gone")
    gone.upsert(*_doc("a", 5, 1, "苹果"))
    gone.commit()
    MilvusVectors.remove(gone._vectors.collection, [_live_ids(gone)[0]])
    assert Snapshot.load(tmp_path / "g").problems() == [
        f"milvus-lite://{tmp_path}/lite.db?collection=gone: the vectors of 1 chunks are missing "
        f"(record ids [{_live_ids(gone)[0]}])"]


def test_two_folders_one_name_and_the_index_growing_past_flat(tmp_path, monkeypatch):
    """Two folders built with the same location keep a collection each, and rebuilding one (with
    the location spelled another way) leaves the other alone. Past the flat size (lowered here to
    40 rows) the collection's index becomes IVF_FLAT; a kill between dropping the old index and
    building the new one is mended by the next process that opens the collection."""
    lite = f"milvus-lite://{tmp_path}/lite.db?collection=docs"
    a, b = Writer.create(tmp_path / "a", _manifest(), vectors=lite), Writer.create(tmp_path / "b", _manifest(), vectors=lite)
    a.upsert(*_doc("a", 5, 1, "苹果"))
    b.upsert(*_doc("b", 6, 2, "香蕉"))
    a.commit()
    b.commit()  # the same record ids in both folders
    assert a.manifest.vectors["collection"] != b.manifest.vectors["collection"]
    again = Writer.create(tmp_path / "b", _manifest(), vectors=f"milvus-lite://{tmp_path}/./lite.db?collection=docs")
    again.upsert(*_doc("c", 4, 3, "苹果"))
    again.commit()
    again.delete(["c"])
    again.commit()  # b's first collection goes now, nothing else
    for store, docs in ((Snapshot.load(tmp_path / "a"), ["a"]), (Snapshot.load(tmp_path / "b"), [])):
        assert sorted(store.manifest.documents) == docs and store.problems() == []
        assert {c.doc_id for hits in store.search(np.eye(DIM, dtype=np.float32), 3) for _, c in chunked(store, hits)} \
            == set(docs)
    client = mv._connect(a._vectors.collection.target)
    assert _collections(client, "docs_") == sorted([a.manifest.vectors["collection"], again.manifest.vectors["collection"]])

    monkeypatch.setattr(segment, "APPROX_ABOVE", 40)
    grown = Writer.open(tmp_path / "a")
    name = grown.manifest.vectors["collection"]
    assert grown.snapshot.stats()["index_type"].startswith("Milvus flat")
    before = _answers(grown)

    def killed(self, name, index_params, **kwargs):
        raise KeyboardInterrupt  # after the old index was dropped, before the new one is built

    with monkeypatch.context() as patch:
        patch.setattr(type(client), "create_index", killed)
        grown.upsert(*_doc("d", 40, 4, "樱桃"))
        with pytest.raises(KeyboardInterrupt):
            grown.commit()  # committed; the index switch is cut short
    assert mv._index_of(client, name) is None
    mv._LOADED.clear()  # as a new process would
    reopened = Snapshot.load(tmp_path / "a")
    assert "d" in reopened.manifest.documents and len(reopened.search(np.eye(DIM, dtype=np.float32), 3)[0]) == 3
    assert mv._index_of(client, name) == "IVF_FLAT" and reopened.stats()["index_type"].startswith("Milvus ivf")
    vectors, live = reopened.all_vectors(), reopened.rows_of()  # IVF with one list here: exact
    exact = [[int(live[j]) for j in np.argsort(-(vectors @ q))[:3]] for q in np.eye(DIM, dtype=np.float32)]
    assert [[r for _, r in hits] for hits in reopened.search(np.eye(DIM, dtype=np.float32), 3)] == exact
    assert reopened.problems() == [] and before[4] == ["a"]


# ---------------------------------------------------------------- the real server: exact equality


@pytest.mark.parametrize("name", ["speech", "cmrc", "drcd"])
def test_exact_dense_top10_equals_faiss_and_eval_matches(name, milvus_server, speech_index, shared_sets, same, tmp_path):
    """Exact dense search on Milvus (FLAT) returns the same top-10 chunks, with the same scores, as
    FAISS exact search for every question of the set; hybrid evaluation figures agree."""
    folder, labels = (speech_index, _speech_labels()) if name == "speech" else shared_sets(name)
    copy_into(folder, tmp_path / "milvus", loc(f"exact_{name}"))
    local, milvus = Snapshot.load(folder), Snapshot.load(tmp_path / "milvus")
    assert milvus.stats()["index_type"] == f"Milvus flat ({loc('exact_' + name)})" and local.stats()["index_type"] == "flat"
    assert milvus.problems() == []
    queries = [label.query for label in labels]
    vectors = same.encode_queries(queries)
    a = [chunked(milvus, hits) for hits in milvus.search(vectors, 11)]
    b = [chunked(local, hits) for hits in local.search(vectors, 11)]  # the 11th tells a tie at the 10th place
    assert len(a) == len(b) == len(queries)
    same_ids = sum([c.chunk_id for _, c in x[:10]] == [c.chunk_id for _, c in y[:10]] for x, y in zip(a, b))
    print(f"{name}: {same_ids} of {len(queries)} top-10 lists identical, the others differ only within ties")
    for q, x, y in zip(queries, a, b):
        assert_same_ranking([SimpleNamespace(chunk_id=c.chunk_id, score=s) for s, c in x],
                            [SimpleNamespace(chunk_id=c.chunk_id, score=s) for s, c in y], q)
    mine = evaluate(Engine(tmp_path / "milvus", encoder=same), labels, "hybrid")
    theirs = evaluate(Engine(folder, encoder=same), labels, "hybrid")
    print(f"{name} ({len(queries)} questions, {len(local)} chunks) hybrid: milvus {mine} folder {theirs}")
    for key, value in theirs.items():
        assert abs(mine[key] - value) <= 0.02, (key, mine, theirs)


def test_speech_on_the_server_answers_as_the_folder_index(milvus_speech, speech_index, same):
    """Chinese questions (with phrases and exclusions) in every mode, and English ones through the
    cross-lingual route: the same hits, scores, terms and answering sentences as the folder index."""
    milvus, local = Engine(milvus_speech, encoder=same), Engine(speech_index, encoder=same)
    queries = [label.query for label in _speech_labels()] + [
        '"党组织" 学校', '“三会一课”', '民办学校党组织 -民办', '党组织 -"民办学校"', '"党风廉政" -"廉洁"']
    for mode in ("hybrid", "dense", "bm25"):
        assert_same_lists(milvus.batch(queries, k=10, mode=mode), local.batch(queries, k=10, mode=mode), mode)
    english = [label.query for label in read_labelled(DATA / "speech_qa_en.jsonl")]
    for mode in ("hybrid", "dense"):
        a, b = milvus.query(english, k=10, mode=mode), local.query(english, k=10, mode=mode)
        assert all(r.cross_lingual for r in a) and [r.translations for r in a] == [r.translations for r in b]
        assert_same_lists([r.hits for r in a], [r.hits for r in b], mode)  # answering sentences too
    assert milvus.search(QUESTION, k=1)[0].section.startswith("四、")
    info = milvus.info()
    assert info["index_type"] == f"Milvus flat ({loc('speech')})" and info["chunks"] == len(local.store)
    assert info["crosslingual"] == local.info()["crosslingual"] and milvus.check() == []
    np.testing.assert_array_equal(milvus.store.all_vectors(), local.store.all_vectors())
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


def test_update_roundtrip_equals_folder_index(milvus_copy, speech_index, same, tmp_path):
    """add / replace / remove / reload with the vectors on the server and in FAISS files, step by step
    with the same calls (so each side embeds the same batches): the same hits and scores after each
    step, and the collection holds exactly the live chunks' vectors."""
    shutil.copytree(speech_index, tmp_path / "local")
    milvus, local = Engine(milvus_copy, encoder=same), Engine(tmp_path / "local", encoder=same)

    def both(call, *args):
        return [getattr(engine, call)(*args) for engine in (milvus, local)]

    def agree(queries, modes=("dense", "hybrid")):
        a, b = Engine(milvus_copy, encoder=same), Engine(tmp_path / "local", encoder=same)  # both reloaded
        for mode in modes:
            x, y = a.query(queries, k=10, mode=mode), b.query(queries, k=10, mode=mode)
            assert_same_lists([r.hits for r in x], [r.hits for r in y], mode)
        assert a.check() == [] and [d.doc_id for d in a.documents()] == [d.doc_id for d in b.documents()]
        assert _held(a.store) == _live_ids(a.store)
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
    assert milvus.reused == local.reused == 1  # its vector read back from the server
    agree(["课后服务有哪些内容？", "How often do class teachers visit families?", "家长会"])
    both("remove", ["plan.txt"])

    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛，每所学校至少派出一支代表队参加比赛。", encoding="utf-8")
    both("add", [doc])
    assert milvus.search("足球比赛什么时候举行", k=1)[0].doc_id == "notice.txt"
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛！每所学校至少派出一支合唱团参加演出。", encoding="utf-8")
    assert [[r.status for r in reports] for reports in both("add", [doc])] == [["replaced"]] * 2
    assert [r.status for r in milvus.add([doc])] == ["unchanged"]
    for hits in milvus.batch(["足球比赛", "校园足球联赛", "When is the school football league?"], k=50, mode="hybrid"):
        assert all("足球" not in h.text for h in hits)
    agree(["合唱比赛", "Which choir contest is planned?"])
    both("remove", ["notice.txt"])
    both("optimize")
    again = agree(["足球比赛", "合唱比赛", "校园活动通知", "Which choir contest is planned?"])
    for hits in again.batch(["足球比赛", "合唱比赛", "校园活动通知"], k=50, mode="hybrid"):
        assert all(h.doc_id in ("speech.txt", "b.md") for h in hits)


def test_build_through_the_engine_never_shows_the_token(milvus_server, same, tmp_path):
    """A build with `vectors` (a token in the location): searchable at once; the folder keeps the
    location without the token, reopened it finds its collection; no message shows the token."""
    doc = tmp_path / "sports.txt"
    doc.write_text("全市中小学将举办阳光体育节，设置跳绳、踢毽子和拔河三个集体项目。", encoding="utf-8")
    location = loc("built") + "?token=root:TOPSECRET"  # auth is off on this server: a token is accepted and unused
    engine = Engine(tmp_path / "index", encoder=same, settings=IndexSettings(vectors=location))
    engine.build([doc])
    assert engine.search("拔河比赛", k=1, mode="hybrid")[0].doc_id == "sports.txt"
    assert engine.search("Which team sports are on the programme?", k=1)[0].doc_id == "sports.txt"
    reopened = Engine(tmp_path / "index", encoder=same)
    info = reopened.info()
    assert info["documents"] == 1 and info["index_type"] == f"Milvus flat ({loc('built')})"
    assert info["crosslingual"].startswith(USE_NAME) and reopened.check() == []
    assert "TOPSECRET" not in str(info) and "TOPSECRET" not in Records(tmp_path / "index" / "records.db").meta()["manifest"]
    assert not [f for f in (tmp_path / "index").rglob("*") if f.is_file() and b"TOPSECRET" in f.read_bytes()]

    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError) as err:
        Engine(tmp_path / "index", encoder=Other()).search(QUESTION)
    assert "TOPSECRET" not in str(err.value)
    first = reopened.store.manifest.vectors["collection"]
    reopened.rebuild()  # (the page's Rebuild): the vectors stay in Milvus, in a new collection
    assert reopened.info()["index_type"] == f"Milvus flat ({loc('built')})"
    assert reopened.store.manifest.vectors["collection"] != first and reopened.check() == []


def test_server_stopped_mid_batch_then_restarted(milvus_server, milvus_speech, speech_index, same, tmp_path):
    """Stop the server while `batch` runs: one line and exit 1; after a restart the answers are as before."""
    queries = [label.query for label in _speech_labels()][:20]
    before = Engine(milvus_speech, encoder=same).batch(queries, k=10, mode="hybrid")
    qfile, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    qfile.write_text("\n".join(queries) + "\n", encoding="utf-8")
    script = ("import sys\n"
              "import indexer.store.milvus_vectors as mv\n"
              "real = mv.MilvusVectors.search\n"
              "def paused(self, *a, **k):\n"
              "    self._client()  # connected, the collection loaded: then the server goes\n"
              "    print('searching', flush=True); sys.stdin.readline(); return real(self, *a, **k)\n"
              "mv.MilvusVectors.search = paused\n"
              "from indexer.cli import main\n"
              f"sys.exit(main(['batch', {str(qfile)!r}, '-o', {str(out)!r}, '--mode', 'hybrid', "
              f"'--index', {str(milvus_speech)!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "INDEXER_MILVUS_TOKEN": "root:TOPSECRET"})
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
            after = engine.batch(queries, k=10, mode="hybrid")
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert_same_lists(after, before)
    assert engine.check() == []


# ---------------------------------------------------------------- the CLI and the page


def test_cli_builds_with_milvus_lite_vectors(tmp_path):
    """`build --vectors milvus-lite://…` as the README says, then `search`, `info` and `check` on the folder."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    index, lite = tmp_path / "index", f"milvus-lite://{tmp_path}/vectors.db?collection=speech"
    built = cli("build", str(SPEECH), "--index", str(index), "--vectors", lite)
    assert built.returncode == 0, built.stderr
    assert f"Milvus flat ({lite})" in built.stdout
    found = cli("search", QUESTION, "--index", str(index), "-k", "1", "--json")
    assert found.returncode == 0, found.stderr
    assert '"section": "四、加强民办学校党建工作' in found.stdout
    checked = cli("check", "--index", str(index))
    assert checked.returncode == 0 and checked.stdout.startswith(f"ok: {index}"), checked.stderr


def test_page_on_an_index_with_milvus_lite_vectors(speech_index, tmp_path, monkeypatch):
    """The search page on a folder whose vectors milvus-lite keeps: the 民办学校 passage first for the
    Chinese question, and an English question shows its translated terms."""
    from test_app import MINBAN, MINBAN_SECTION, ask, heads, passages, run_app, text_of

    copy_into(speech_index, tmp_path / "index", f"milvus-lite://{tmp_path}/page.db")
    monkeypatch.setenv("INDEXER_INDEX", str(tmp_path / "index"))
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
