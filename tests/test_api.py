"""The HTTP API over real HTTP: `python -m indexer serve` started here on a free port, on a copy
of the speech index, with the real model; every endpoint, every kind of bad request (a 4xx with a
one-sentence JSON error, and the index unchanged), and access with and without keys.

One server per scenario, shared by the module: loopback without keys (writes allowed, as `make
run` locally), and one bound to 0.0.0.0 (reached through 127.0.0.1: the rule is about the bind
address) whose keys are set while it runs.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, assert_same_ranking, free_port, running, as_hits
from test_browser import browser_page, chromium  # noqa: F401 - chromium is a fixture

QUESTION = "私立学校怎样建立党组织？"
ENGLISH = "How are young cadres trained?"
PANDA = ("成都大熊猫繁育研究基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果，"
         "成年大熊猫一天要吃二十多公斤竹子。\n")
PANDA_QUESTION = "大熊猫每天吃什么？"
WRITE_KEY = "write-key-7Qm2-correct-horse"
READ_KEY = "read-key-9Zx4-battery-staple"
OUT = ROOT / "test-output" / "api"
LIMITS = ["--max-k", "50", "--max-batch", "8", "--max-body-kb", "64", "--max-upload-mb", "1"]


@contextlib.contextmanager
def api_server(index: Path, access: Path, log: Path, host: str = "127.0.0.1"):
    """`python -m indexer serve` on a free port; yields an httpx client on http://127.0.0.1:PORT."""
    port = free_port()
    cmd = [sys.executable, "-m", "indexer", "serve", "--index", str(index), "--host", host, "--port", str(port),
           "--access", str(access), *LIMITS]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/health", log), httpx.Client(base_url=url, timeout=120) as client:
        yield client


def set_key(access: Path, right: str, key: str) -> subprocess.CompletedProcess:
    """`python -m indexer access set-RIGHT-key`, the key on stdin."""
    return subprocess.run([sys.executable, "-m", "indexer", "access", f"set-{right}-key", "--access", str(access)],
                          input=key + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def api(speech_index, tmp_path_factory):
    """A loopback server without keys on its own copy of the speech index."""
    tmp = tmp_path_factory.mktemp("api")
    shutil.copytree(speech_index, tmp / "index")
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log") as client:
        client.index, client.access = tmp / "index", tmp / "access.json"
        yield client


@pytest.fixture(scope="module")
def open_api(speech_index, tmp_path_factory):
    """A server bound to 0.0.0.0 (reached on 127.0.0.1), keys set by the tests while it runs."""
    tmp = tmp_path_factory.mktemp("open-api")
    shutil.copytree(speech_index, tmp / "index")
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log", host="0.0.0.0") as client:
        client.access, client.log = tmp / "access.json", tmp / "server.log"
        yield client


def state(client: httpx.Client, **headers) -> tuple[list, str]:
    """The document list and the generation: what a rejected request must leave unchanged."""
    docs = client.get("/documents", headers=headers).json()
    return sorted((d["doc_id"], d["content_hash"]) for d in docs), client.get("/info", headers=headers).json()["generation"]


def one_sentence(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------------------- the endpoints


def test_search_returns_the_json_of_the_command_line(api, encoder):
    from indexer.engine import Engine

    resp = api.post("/search", json={"query": QUESTION, "k": 3})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    want = Engine(api.index, encoder=encoder).query([QUESTION], 3)[0].to_json()  # what `search --json` prints
    assert list(got) == list(want)
    assert_same_ranking(as_hits(got["hits"]), as_hits(want["hits"]))
    theirs = {w["chunk_id"]: w for w in want["hits"]}
    for g in got["hits"]:
        w = theirs.get(g["chunk_id"], g)
        assert {k: v for k, v in g.items() if k not in ("score", "why", "rank")} == \
            {k: v for k, v in w.items() if k not in ("score", "why", "rank")}
    assert got["terms"] == want["terms"] and got["generation"] == api.get("/info").json()["generation"]
    assert any("民办学校" in h["text"] for h in got["hits"]) and all(h["sentence"]["text"] for h in got["hits"])


def test_batch_answers_each_question_in_order(api):
    resp = api.post("/batch", json={"queries": [ENGLISH, QUESTION], "k": 2})
    assert resp.status_code == 200, resp.text
    en, zh = resp.json()
    assert en["query"] == ENGLISH and en["cross_lingual"] and en["translations"] and len(en["hits"]) == 2
    assert zh["query"] == QUESTION and not zh["cross_lingual"] and any("民办学校" in h["text"] for h in zh["hits"])


def test_search_options_mode_document_filter_min_score_and_routes(api):
    bm25 = api.post("/search", json={"query": QUESTION, "k": 4, "mode": "bm25"}).json()
    dense = api.post("/search", json={"query": QUESTION, "k": 4, "mode": "dense"}).json()
    assert [h["chunk_id"] for h in bm25["hits"]] != [h["chunk_id"] for h in dense["hits"]]
    floor = (dense["hits"][1]["score"] + dense["hits"][2]["score"]) / 2
    kept = api.post("/search", json={"query": QUESTION, "k": 4, "mode": "dense", "min_score": floor}).json()
    assert [h["chunk_id"] for h in kept["hits"]] == [h["chunk_id"] for h in dense["hits"][:2]]
    only = api.post("/search", json={"query": QUESTION, "doc": ["speech.txt"], "where": ["id=speech.txt"]}).json()
    assert only["hits"] and {h["doc_id"] for h in only["hits"]} == {"speech.txt"}
    plain = api.post("/search", json={"query": ENGLISH, "use": False, "translate": False}).json()
    assert plain["cross_lingual"] and plain["translations"] == []
    grouped = api.post("/search", json={"query": QUESTION, "k": 2, "group": "documents"}).json()
    assert grouped["group"] == "documents" and [d["doc_id"] for d in grouped["documents"]] == ["speech.txt"]
    assert 1 <= len(grouped["documents"][0]["passages"]) <= 3 and "hits" not in grouped
    phrase = api.post("/search", json={"query": '"三会一课" 怎样落实', "k": 5}).json()
    assert phrase["hits"] and all("三会一课" in h["text"] for h in phrase["hits"])


def test_upload_list_search_and_remove_documents(api):
    notes = "\n".join(json.dumps(row, ensure_ascii=False) for row in (
        {"id": "reports/2020/panda", "text": PANDA, "title": "熊猫"},
        {"id": "reports/2021/other", "text": "另一份报告，讲的是城市绿化和公园建设。"}))
    resp = api.post("/documents", files=[("files", ("熊猫.md", PANDA.encode("utf-8"), "text/markdown")),
                                         ("files", ("notes.jsonl", notes.encode("utf-8"), "application/jsonl"))],
                    data={"tags": ["动物,2020", "上传"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert sorted((d["doc_id"], d["status"]) for d in body["documents"]) == [
        ("reports/2020/panda", "added"), ("reports/2021/other", "added"), ("熊猫.md", "added")]
    listed = {d["doc_id"]: d for d in api.get("/documents").json()}
    assert set(listed) == {"speech.txt", "熊猫.md", "reports/2020/panda", "reports/2021/other"}
    assert set(listed["熊猫.md"]["meta"]["tags"]) == {"动物", "2020", "上传"}
    assert api.get("/info").json()["generation"] == body["generation"]
    hit = api.post("/search", json={"query": PANDA_QUESTION, "k": 1, "where": ["tag=动物"]}).json()["hits"][0]
    assert hit["doc_id"] in ("熊猫.md", "reports/2020/panda") and "竹子" in hit["text"]

    for doc_id in ("reports/2020/panda", "reports/2021/other", "熊猫.md"):  # ids with "/" are one path
        gone = api.delete(f"/documents/{doc_id}")
        assert gone.status_code == 200, gone.text
        assert [(d["doc_id"], d["status"]) for d in gone.json()["documents"]] == [(doc_id, "removed")]
    assert [d["doc_id"] for d in api.get("/documents").json()] == ["speech.txt"]
    assert all(h["doc_id"] == "speech.txt" for h in api.post("/search", json={"query": PANDA_QUESTION}).json()["hits"])


def test_info_health_and_the_openapi_page(api):
    info = api.get("/info").json()
    assert info["documents"] >= 1 and info["chunks"] >= 22 and info["model"] == "multilingual-e5-small"
    assert "recall@10_vs_exact" not in info  # measured only when asked: clients poll /info
    assert api.get("/info", params={"recall": "true"}).json()["recall@10_vs_exact"] is None  # exact index
    assert api.get("/health").json() == {"status": "ok"}
    assert "swagger" in api.get("/docs").text.lower()
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/search", "/batch", "/documents", "/documents/{doc_id}", "/info", "/health"} <= set(paths)
    answers = paths["/search"]["post"]["responses"]
    assert "422" not in answers and answers["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_the_openapi_page_renders_from_this_server_alone(api, chromium):
    """/docs in a real browser: Swagger UI comes from the server itself, not a CDN (an intranet
    has no internet), lists every endpoint and offers to send a key."""
    from playwright.sync_api import expect

    OUT.mkdir(parents=True, exist_ok=True)
    fetched: list[str] = []
    with browser_page(chromium) as page:
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(f"{api.base_url}/docs", wait_until="domcontentloaded")
        expect(page.locator(".opblock-summary-path").filter(has_text="/search").first).to_be_visible(timeout=60_000)
        assert page.locator(".opblock").count() == 7
        expect(page.get_by_role("button", name="Authorize")).to_be_visible()
        page.screenshot(path=str(OUT / "docs.png"), full_page=True)
    assert fetched and all(url.startswith((str(api.base_url), "data:")) for url in fetched), fetched


# ---------------------------------------------------------------------------- bad requests


def _chunks(data: bytes):
    yield from (data[i:i + 16384] for i in range(0, len(data), 16384))


BAD = {
    "malformed JSON": (400, dict(method="POST", url="/search", content=b'{"query": ', headers={"content-type": "application/json"})),
    "no body": (400, dict(method="POST", url="/search")),
    "a list for a body": (400, dict(method="POST", url="/search", json=[QUESTION])),
    "missing question": (400, dict(method="POST", url="/search", json={"k": 3})),
    "empty question": (400, dict(method="POST", url="/search", json={"query": "  \n "})),
    "k zero": (400, dict(method="POST", url="/search", json={"query": QUESTION, "k": 0})),
    "k over the limit": (400, dict(method="POST", url="/search", json={"query": QUESTION, "k": 51})),
    "k not a number": (400, dict(method="POST", url="/search", json={"query": QUESTION, "k": "many"})),
    "unknown mode": (400, dict(method="POST", url="/search", json={"query": QUESTION, "mode": "semantic"})),
    "unknown field": (400, dict(method="POST", url="/search", json={"query": QUESTION, "top_k": 3})),
    "unknown grouping": (400, dict(method="POST", url="/search", json={"query": QUESTION, "group": "chapters"})),
    "bad filter": (400, dict(method="POST", url="/search", json={"query": QUESTION, "where": ["year>>2020"]})),
    "unknown document": (400, dict(method="POST", url="/search", json={"query": QUESTION, "doc": ["nope.txt"]})),
    "empty batch": (400, dict(method="POST", url="/batch", json={"queries": []})),
    "batch over the limit": (400, dict(method="POST", url="/batch", json={"queries": [QUESTION] * 9})),
    "batch with an empty question": (400, dict(method="POST", url="/batch", json={"queries": [QUESTION, ""]})),
    "oversize body": (413, dict(method="POST", url="/search", json={"query": "问" * 40_000})),
    "oversize body, chunked": (413, dict(method="POST", url="/search", content=_chunks(b" " * 100_000),
                                         headers={"content-type": "application/json"})),
    "oversize upload": (413, dict(method="POST", url="/documents", files={"files": ("big.txt", "大".encode() * 400_000)})),
    "upload escaping its folder": (400, dict(method="POST", url="/documents", files={"files": ("../../x.txt", PANDA.encode())})),
    "upload escaping, backslashes": (400, dict(method="POST", url="/documents", files={"files": ("..\\..\\x.txt", PANDA.encode())})),
    "upload with a folder": (400, dict(method="POST", url="/documents", files={"files": ("reports/x.txt", PANDA.encode())})),
    "unsupported file type": (415, dict(method="POST", url="/documents", files={"files": ("tool.exe", b"MZ\x90\x00")})),
    "damaged docx": (400, dict(method="POST", url="/documents", files={"files": ("report.docx", b"not a zip file")})),
    "two uploads, one bad": (415, dict(method="POST", url="/documents", files=[("files", ("ok.txt", PANDA.encode())),
                                                                                ("files", ("bad.exe", b"MZ"))])),
    "upload without files": (400, dict(method="POST", url="/documents", data={"tags": "x"})),
    "remove an unknown document": (404, dict(method="DELETE", url="/documents/reports/none.txt")),
    "unknown endpoint": (404, dict(method="GET", url="/nowhere")),
    "wrong method": (405, dict(method="PUT", url="/search")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_4xx_sentence_and_changes_nothing(api, case):
    status, request = BAD[case]
    before = state(api)
    message = one_sentence(api.request(**request), status)
    assert state(api) == before, message
    if "escaping" in case:
        assert "not a plain file name" in message


# ---------------------------------------------------------------------------- access


def test_a_server_open_to_the_network_is_read_only_until_a_write_key_is_set(open_api):
    before = state(open_api)
    upload = {"files": ("熊猫.txt", PANDA.encode("utf-8"))}
    assert "read-only" in one_sentence(open_api.post("/documents", files=upload), 403)
    assert "read-only" in one_sentence(open_api.delete("/documents/speech.txt"), 403)
    assert state(open_api) == before
    assert open_api.post("/search", json={"query": QUESTION}).status_code == 200  # reading needs no key

    done = set_key(open_api.access, "write", WRITE_KEY)
    assert done.returncode == 0 and WRITE_KEY not in done.stdout + done.stderr
    assert "needs the write key" in one_sentence(open_api.post("/documents", files=upload), 401)
    assert "does not allow writing" in one_sentence(
        open_api.post("/documents", files=upload, headers={"Authorization": "Bearer not-the-write-key"}), 403)
    assert state(open_api) == before
    added = open_api.post("/documents", files=upload, headers={"X-API-Key": WRITE_KEY})
    assert added.status_code == 200 and added.json()["documents"][0]["status"] == "added"
    removed = open_api.delete("/documents/熊猫.txt", headers={"Authorization": f"Bearer {WRITE_KEY}"})
    assert removed.status_code == 200, removed.text

    assert set_key(open_api.access, "read", READ_KEY).returncode == 0
    assert "needs the read key" in one_sentence(open_api.post("/search", json={"query": QUESTION}), 401)
    assert one_sentence(open_api.get("/documents", headers={"X-API-Key": "wrong-read-key"}), 403)
    assert open_api.post("/search", json={"query": QUESTION}, headers={"X-API-Key": READ_KEY}).status_code == 200
    assert open_api.get("/info", headers={"X-API-Key": WRITE_KEY}).status_code == 200  # the write key reads too
    assert "does not allow writing" in one_sentence(
        open_api.post("/documents", files=upload, headers={"X-API-Key": READ_KEY}), 403)
    assert open_api.get("/health").status_code == 200  # monitoring needs no key

    stored = open_api.access.read_text()
    log = open_api.log.read_text(errors="replace")
    for key in (WRITE_KEY, READ_KEY):
        assert key not in stored and key not in log
    assert '"POST /documents HTTP/1.1" 401' in log  # the access log is on, without the keys


def test_with_a_write_key_even_loopback_needs_it(api):
    """A key, once set, is needed everywhere: loopback is only the default when none is set."""
    assert set_key(api.access, "write", WRITE_KEY).returncode == 0
    try:
        before = state(api)
        one_sentence(api.delete("/documents/speech.txt"), 401)
        assert state(api) == before
    finally:
        api.access.unlink()
    assert api.post("/documents", files={"files": ("熊猫.txt", PANDA.encode("utf-8"))}).status_code == 200


def test_access_commands(tmp_path):
    access = tmp_path / "keys" / "access.json"
    short = set_key(access, "write", "short")
    assert short.returncode == 1 and short.stderr.strip().count("\n") == 0 and "12 characters" in short.stderr
    assert not access.exists()
    assert set_key(access, "write", WRITE_KEY).returncode == 0
    assert oct(access.stat().st_mode & 0o777) == "0o600"
    same = set_key(access, "read", WRITE_KEY)
    assert same.returncode == 1 and "must differ" in same.stderr
    show = subprocess.run([sys.executable, "-m", "indexer", "access", "show", "--access", str(access)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "write key: set" in show.stdout and "read key: not set" in show.stdout
    assert json.loads(access.read_text())["keys"]["write"]["hash"] not in show.stdout
    clear = subprocess.run([sys.executable, "-m", "indexer", "access", "clear", "write", "--access", str(access)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert clear.returncode == 0 and json.loads(access.read_text())["keys"] == {}


def test_loopback_and_key_rules(tmp_path):
    from indexer.access import Access, AccessError, is_loopback, set_key as store

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("", "0.0.0.0", "::", "192.168.1.20", "example.org"))
    path = tmp_path / "access.json"
    local, open_ = Access(path, "127.0.0.1"), Access(path, "0.0.0.0")
    local.check("write", None)
    with pytest.raises(AccessError) as refused:
        open_.check("write", None)
    assert refused.value.status == 403
    store(path, "write", WRITE_KEY)  # applies at once to both, loopback included
    for access in (local, open_):
        assert access.allows("write", WRITE_KEY) and access.allows("read", None)
        assert not access.allows("write", None) and not access.allows("write", WRITE_KEY + "x")
