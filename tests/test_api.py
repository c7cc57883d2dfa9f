"""The HTTP API over real HTTP: `python -m indexer serve` started here on a free port, on a copy
of the speech index, with the real model; every endpoint, every kind of bad request (a 4xx with a
one-sentence JSON error, and the index unchanged), access with and without keys, and each attack
the server must refuse: writes without a key (loopback included), DNS rebinding (a foreign Host),
cross-site writes (a foreign Origin, `Sec-Fetch-Site: cross-site`, a form in Chromium), a reader
reaching past its scope, and requests over the rate.

One server per scenario, shared by the module: loopback as a new user starts it (`api`: no access
file, a terminal, so its first start makes the write key and shows it there), one bound to 0.0.0.0
whose keys are set while it runs, one over two departments' documents with a scoped reader, and
one with tiny rates behind a trusted proxy.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import (INSIDE, OUTSIDE, PANDA_ENGLISH, PANDA_QUESTION, ROOT, SCOPE, as_hits, assert_same_ranking,
                      free_port, running)
from test_browser import browser_page, chromium  # noqa: F401 - chromium is a fixture

QUESTION = "私立学校怎样建立党组织？"
ENGLISH = "How are young cadres trained?"
PANDA = ("成都大熊猫繁育研究基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果，"
         "成年大熊猫一天要吃二十多公斤竹子。\n")
WRITE_KEY = "write-key-7Qm2-correct-horse"
READ_KEY = "read-key-9Zx4-battery-staple"
READER_KEY = "reader-key-5Tq8-education-office"
NO_KEY = {"X-API-Key": ""}  # a request of a client whose default headers carry a key, sent without one
REBIND = "rebind.example.com"
EVIL = "http://evil.example.com"
OUT = ROOT / "test-output" / "api"
LIMITS = ["--max-k", "50", "--max-batch", "8", "--max-body-kb", "64", "--max-upload-mb", "1",
          "--key-rate", "1000", "--address-rate", "1000"]  # these tests ask faster than people do (limited_api: rates)


@contextlib.contextmanager
def api_server(index: Path, access: Path, log: Path, host: str = "127.0.0.1", extra: tuple[str, ...] = (),
               terminal: bool = False):
    """`python -m indexer serve` on a free port; yields an httpx client on http://127.0.0.1:PORT
    (with `proc`, the server's process, and `port`)."""
    port = free_port()
    cmd = [sys.executable, "-m", "indexer", "serve", "--index", str(index), "--host", host, "--port", str(port),
           "--access", str(access), *LIMITS, *extra]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, f"{url}/health", log, terminal=terminal) as proc, httpx.Client(base_url=url, timeout=120) as client:
        client.proc, client.port, client.access, client.log = proc, port, access, log
        yield client


def access_command(access: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    """`python -m indexer access ARGS --access FILE`, a key (if any) on stdin."""
    return subprocess.run([sys.executable, "-m", "indexer", "access", *args, "--access", str(access)],
                          input=(key or "") + "\n", capture_output=True, text=True, cwd=ROOT, timeout=60)


def set_key(access: Path, right: str, key: str) -> subprocess.CompletedProcess:
    """`python -m indexer access set-RIGHT-key`, the key on stdin."""
    return access_command(access, f"set-{right}-key", key=key)


def add_reader(access: Path, name: str, where: tuple[str, ...], key: str) -> subprocess.CompletedProcess:
    """`python -m indexer access add-reader NAME --where … --key-stdin`."""
    return access_command(access, "add-reader", name, *(a for w in where for a in ("--where", w)), "--key-stdin", key=key)


GENERATED = r"\n\s+([0-9a-f]{8}\.[A-Za-z0-9_-]{32})\s*\n"  # a key `serve` made, as its terminal shows it


@pytest.fixture(scope="module")
def api(speech_index, tmp_path_factory):
    """`python -m indexer serve` on 127.0.0.1 as a new user starts it: no access file, a terminal.
    Its first start makes the write key and shows it on the terminal (`api.key`); the client sends
    that key by default (NO_KEY leaves it out)."""
    tmp = tmp_path_factory.mktemp("api")
    shutil.copytree(speech_index, tmp / "index")
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log", terminal=True) as client:
        client.index, client.key = tmp / "index", client.proc.terminal.wait_for(GENERATED).group(1)
        client.headers["X-API-Key"] = client.key
        yield client


@pytest.fixture(scope="module")
def open_api(speech_index, tmp_path_factory):
    """A server bound to 0.0.0.0 (reached on 127.0.0.1), with no terminal (so no key is made for
    it); keys are set by the tests while it runs."""
    tmp = tmp_path_factory.mktemp("open-api")
    shutil.copytree(speech_index, tmp / "index")
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log", host="0.0.0.0") as client:
        yield client


@pytest.fixture(scope="module")
def departments_api(departments_index, tmp_path_factory):
    """A server over the two departments' documents (conftest.departments_index) with the write
    key, the read key and a reader bound to 教育科's folder, set with the `access` commands."""
    tmp = tmp_path_factory.mktemp("departments-api")
    shutil.copytree(departments_index, tmp / "index")
    for done in (set_key(tmp / "access.json", "write", WRITE_KEY), set_key(tmp / "access.json", "read", READ_KEY),
                 add_reader(tmp / "access.json", "教育科", SCOPE, READER_KEY)):
        assert done.returncode == 0, done.stderr
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log") as client:
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
    one = api.get("/documents/reports/2020/panda").json()  # one document, its id holding "/"
    assert one["doc_id"] == "reports/2020/panda" and one["title"] == "熊猫" and one["text"] == PANDA
    assert api.get("/info").json()["generation"] == body["generation"]
    hit = api.post("/search", json={"query": PANDA_QUESTION, "k": 1, "where": ["tag=动物"]}).json()["hits"][0]
    assert hit["doc_id"] in ("熊猫.md", "reports/2020/panda") and "竹子" in hit["text"]

    for doc_id in ("reports/2020/panda", "reports/2021/other", "熊猫.md"):  # ids with "/" are one path
        gone = api.delete(f"/documents/{doc_id}")
        assert gone.status_code == 200, gone.text
        assert [(d["doc_id"], d["status"]) for d in gone.json()["documents"]] == [(doc_id, "removed")]
    assert [d["doc_id"] for d in api.get("/documents").json()] == ["speech.txt"]
    assert all(h["doc_id"] == "speech.txt" for h in api.post("/search", json={"query": PANDA_QUESTION}).json()["hits"])


def test_originals_come_back_as_they_were_and_never_run_in_the_servers_origin(api):
    """An upload keeps its bytes (counted in /info, gone with its document); a PDF comes inline as
    application/pdf, anything else as a download under a CSP sandbox, never sniffed; the speech
    comes from its file on disk."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="The school swimming pool opens at nine in the morning.")
    pdf_bytes = bytes(pdf.output())
    page = "<html><body><h1>通知</h1><p>学校游泳池暑假早上九点开放。</p><script>fetch('/documents')</script></body></html>"
    resp = api.post("/documents", files=[("files", ("pool.pdf", pdf_bytes, "application/pdf")),
                                         ("files", ("游泳池.html", page.encode("utf-8"), "text/html"))])
    assert resp.status_code == 200, resp.text
    assert api.get("/info").json()["originals"]["files"] == 2
    got = api.get("/documents/pool.pdf/file")
    assert got.status_code == 200 and got.content == pdf_bytes
    assert got.headers["content-type"] == "application/pdf" and got.headers["content-disposition"].startswith("inline")
    assert got.headers["x-content-type-options"] == "nosniff"
    got = api.get("/documents/游泳池.html/file")
    assert got.status_code == 200 and got.content == page.encode("utf-8")
    assert got.headers["content-disposition"].startswith("attachment") and "%E6%B8%B8" in got.headers["content-disposition"]
    assert got.headers["content-security-policy"].startswith("sandbox") and got.headers["x-content-type-options"] == "nosniff"
    assert api.get("/documents/speech.txt/file").content == (ROOT / "data" / "speech.txt").read_bytes()
    for doc_id in ("pool.pdf", "游泳池.html"):
        assert api.delete(f"/documents/{doc_id}").status_code == 200
        one_sentence(api.get(f"/documents/{doc_id}/file"), 404)
    assert api.get("/info").json()["originals"]["files"] == 0
    assert not list((api.index / "originals").glob("*/*"))


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
        assert page.locator(".opblock").count() == 9  # every endpoint, /documents/{id}/file among them
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


# ---------------------------------------------------------------------------- access and the attacks


def test_the_first_start_makes_a_write_key_shown_only_on_the_terminal(api):
    """`serve` with no access file: the key it made is on its terminal, stored only as a hash,
    never in its log (the access log included) nor in an error; it writes, no other key does."""
    stored = json.loads(api.access.read_text())["keys"]
    assert list(stored) == ["write"] and api.key not in api.access.read_text()
    assert api.key.split(".")[0] == stored["write"]["id"]  # its ID names its record: one scrypt to check it
    before = state(api)
    refused = [one_sentence(api.delete("/documents/speech.txt", headers=NO_KEY), 401),
               one_sentence(api.delete("/documents/speech.txt", headers={"X-API-Key": api.key + "x"}), 403)]
    assert state(api) == before and not any(api.key in m for m in refused)
    added = api.post("/documents", files={"files": ("熊猫.txt", PANDA.encode("utf-8"))})
    assert added.status_code == 200 and api.delete("/documents/熊猫.txt").status_code == 200
    log = api.log.read_text(errors="replace")
    assert '"DELETE /documents/speech.txt HTTP/1.1" 401' in log and api.key not in log  # the access log is on


def test_loopback_writes_need_the_key(api):
    """No exemption for loopback: `curl -X DELETE 127.0.0.1:8000/documents/speech.txt` from any
    process on the machine (or from a reverse proxy) is refused, and so is an upload."""
    before = state(api)
    assert "needs a write key" in one_sentence(api.delete("/documents/speech.txt", headers=NO_KEY), 401)
    one_sentence(api.post("/documents", files={"files": ("熊猫.txt", PANDA.encode())}, headers=NO_KEY), 401)
    assert state(api) == before


@pytest.mark.parametrize("host", [REBIND, f"{REBIND}:8000", "localhost.evil.example.com", "127.0.0.1.nip.io"])
def test_dns_rebinding_a_foreign_host_is_refused_for_reads_and_writes(api, host):
    """A page that rebinds its own name to 127.0.0.1 sends its own name as Host: refused (400)
    before anything is read, even with the write key (as if the page had it)."""
    before = state(api)
    for method, url, extra in (("GET", "/documents", {}), ("GET", "/info", {}), ("GET", "/documents/speech.txt", {}),
                               ("POST", "/search", {"json": {"query": QUESTION}}),
                               ("DELETE", "/documents/speech.txt", {}),
                               ("POST", "/documents", {"files": {"files": ("熊猫.txt", PANDA.encode())}})):
        message = one_sentence(api.request(method, url, headers={"Host": host}, **extra), 400)
        assert "does not answer to the host" in message and "--allowed-host" in message
    assert state(api) == before
    for ours in ("localhost", f"127.0.0.1:{api.port}", f"[::1]:{api.port}", socket.gethostname()):
        assert api.get("/info", headers={"Host": ours}).status_code == 200, ours


@pytest.mark.parametrize("headers", [{"Origin": EVIL}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"},
                                     {"Sec-Fetch-Site": "cross-site"}],
                         ids=["another site", "null", "another port", "cross-site"])
def test_a_cross_site_write_is_refused(api, headers):
    """A form on another site posts multipart/form-data with no preflight: its Origin (or
    Sec-Fetch-Site) gives it away. Refused with 403 before the key is looked at, so even a key
    would not help; reads are not writes."""
    before = state(api)
    upload = {"files": ("熊猫.txt", PANDA.encode("utf-8"), "text/plain")}
    for key in (NO_KEY, {}):
        assert "refused" in one_sentence(api.post("/documents", files=upload, headers={**headers, **key}), 403)
        one_sentence(api.delete("/documents/speech.txt", headers={**headers, **key}), 403)
    assert state(api) == before
    assert api.get("/documents", headers=headers).status_code == 200


def test_a_write_from_the_servers_own_origin_is_allowed(api):
    own = {"Origin": f"http://127.0.0.1:{api.port}", "Sec-Fetch-Site": "same-origin"}
    added = api.post("/documents", files={"files": ("熊猫.txt", PANDA.encode("utf-8"))}, headers=own)
    assert added.status_code == 200, added.text
    assert api.delete("/documents/熊猫.txt", headers=own).status_code == 200


def test_a_cross_site_form_and_a_rebound_name_in_chromium(api, chromium, tmp_path):
    """The attacks as a browser makes them: a page on another origin that submits a multipart
    upload form to the API, and the API reached under a foreign name resolved to 127.0.0.1 (what
    DNS rebinding does). Both refused, and the index unchanged."""
    import http.server
    import threading

    form = (f'<form id="f" method="post" enctype="multipart/form-data" action="{api.base_url}/documents">'
            '<input type="hidden" name="tags" value="csrf"></form><script>'
            'const d = new DataTransfer(); d.items.add(new File(["大熊猫每天吃竹子。"], "csrf.txt", {type: "text/plain"}));'
            'const i = document.createElement("input"); i.type = "file"; i.name = "files"; i.files = d.files;'
            'document.getElementById("f").appendChild(i); document.getElementById("f").submit();</script>')
    (tmp_path / "index.html").write_text(form, encoding="utf-8")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **kw)  # noqa: E731
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    before = state(api)
    try:
        with browser_page(chromium, [f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"]) as page:
            with page.expect_response(f"{api.base_url}/documents") as answer:
                page.goto(f"http://127.0.0.1:{evil.server_address[1]}/", wait_until="domcontentloaded")
            assert answer.value.status == 403 and "refused" in answer.value.json()["error"]
            rebound = page.goto(f"http://{REBIND}:{api.port}/documents")
            assert rebound.status == 400 and "does not answer to the host" in rebound.json()["error"]
            page.screenshot(path=str(OUT / "rebound.png"))
    finally:
        evil.shutdown()
    assert state(api) == before


def test_without_a_write_key_no_one_writes_until_one_is_set(open_api):
    """A server with no terminal makes no key (no one could read it): it refuses every write
    until the operator sets one, which applies while it runs; then a read key locks reading."""
    before = state(open_api)
    upload = {"files": ("熊猫.txt", PANDA.encode("utf-8"))}
    assert "none is set" in one_sentence(open_api.post("/documents", files=upload), 403)
    assert "none is set" in one_sentence(open_api.delete("/documents/speech.txt"), 403)
    assert state(open_api) == before
    assert open_api.post("/search", json={"query": QUESTION}).status_code == 200  # reading needs no key yet
    assert "no write key is set" in open_api.log.read_text(errors="replace")  # what the operator is told

    done = set_key(open_api.access, "write", WRITE_KEY)
    assert done.returncode == 0 and WRITE_KEY not in done.stdout + done.stderr
    assert "needs a write key" in one_sentence(open_api.post("/documents", files=upload), 401)
    assert "does not allow writing" in one_sentence(
        open_api.post("/documents", files=upload, headers={"Authorization": "Bearer not-the-write-key"}), 403)
    assert state(open_api) == before
    added = open_api.post("/documents", files=upload, headers={"X-API-Key": WRITE_KEY})
    assert added.status_code == 200 and added.json()["documents"][0]["status"] == "added"
    removed = open_api.delete("/documents/熊猫.txt", headers={"Authorization": f"Bearer {WRITE_KEY}"})
    assert removed.status_code == 200, removed.text

    assert set_key(open_api.access, "read", READ_KEY).returncode == 0
    assert "needs a read key" in one_sentence(open_api.post("/search", json={"query": QUESTION}), 401)
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


def test_a_server_on_every_interface_answers_to_the_machines_names_and_addresses(open_api):
    from indexer.guard import machine_addresses

    for host in (socket.gethostname(), *machine_addresses()):
        assert open_api.get("/health", headers={"Host": f"[{host}]" if ":" in host else host}).status_code == 200, host
    one_sentence(open_api.get("/health", headers={"Host": REBIND}), 400)


def test_a_scoped_reader_never_sees_a_document_outside_its_scope(departments_api, departments_index):
    """The reader of 教育科's folder asks what the 办公室 document answers best: no hit, list
    entry, count, text, translation term or error of the API tells that document is there."""
    api, reader, whole = departments_api, {"X-API-Key": READER_KEY}, {"X-API-Key": READ_KEY}
    best = api.post("/search", json={"query": PANDA_QUESTION, "k": 3}, headers=whole).json()["hits"]
    assert best[0]["doc_id"] == OUTSIDE  # the premise: unscoped, it answers best
    asked = [{"query": q, "k": 10, **o} for q in (PANDA_QUESTION, PANDA_ENGLISH, '"熊猫" 竹子')
             for o in ({}, {"mode": "bm25"}, {"group": "documents"})]
    answers = [api.post("/search", json=body, headers=reader).json() for body in asked]
    answers += api.post("/batch", json={"queries": [PANDA_QUESTION, PANDA_ENGLISH], "k": 10}, headers=reader).json()
    for answer in answers:
        hits = answer["hits"] if "hits" in answer else [p for d in answer["documents"] for p in d["passages"]]
        assert {h["doc_id"] for h in hits} <= INSIDE and not any("熊猫" in h["text"] for h in hits), answer
        if answer["cross_lingual"]:  # no translation term of the other document's
            assert "熊猫" not in json.dumps([answer["terms"], answer["translations"]], ensure_ascii=False), answer
    assert {d["doc_id"] for d in api.get("/documents", headers=reader).json()} == INSIDE
    assert OUTSIDE in {d["doc_id"] for d in api.get("/documents", headers=whole).json()}
    info = api.get("/info", headers=reader).json()
    assert info["documents"] == 2 and info["chunks"] < api.get("/info", headers=whole).json()["chunks"]
    assert "师德培训" in api.get("/documents/docs/教育科/教师培训.txt", headers=reader).json()["text"]
    outside = one_sentence(api.get(f"/documents/{OUTSIDE}", headers=reader), 404)
    assert one_sentence(api.get(f"/documents/{OUTSIDE}/file", headers=reader), 404) == outside  # its original too
    inside = sorted(INSIDE)[0]
    assert api.get(f"/documents/{inside}/file", headers=reader).content == \
        (departments_index.parent / inside).read_bytes()  # the source's file, from its folder
    assert "no file of its own" in one_sentence(api.get(f"/documents/{OUTSIDE}/file", headers=whole), 404)
    assert outside == one_sentence(api.get("/documents/办公室/没有", headers=reader), 404).replace("没有", "大熊猫报告")
    by_id = one_sentence(api.post("/search", json={"query": "竹子", "doc": [OUTSIDE]}, headers=reader), 400)
    assert by_id == one_sentence(api.post("/search", json={"query": "竹子", "doc": ["办公室/没有"]}, headers=reader),
                                 400).replace("办公室/没有", OUTSIDE)
    field = one_sentence(api.post("/search", json={"query": "竹子", "where": ["secret_level=内部"]}, headers=reader), 400)
    assert "secret_level" not in field.split("(fields:")[1]  # the fields named are the scope's
    one_sentence(api.post("/documents", files={"files": ("x.txt", PANDA.encode())}, headers=reader), 403)
    log = api.log.read_text(errors="replace")
    assert not any(key in log for key in (WRITE_KEY, READ_KEY, READER_KEY))


@pytest.fixture(scope="module")
def limited_api(speech_index, tmp_path_factory):
    """A server with one request per key (and per address) in about 17 minutes, and a burst of
    one, behind a trusted proxy on 127.0.0.1 (its X-Forwarded-For names the client)."""
    tmp = tmp_path_factory.mktemp("limited-api")
    shutil.copytree(speech_index, tmp / "index")
    assert set_key(tmp / "access.json", "write", WRITE_KEY).returncode == 0
    rates = ("--key-rate", "0.001", "--address-rate", "0.001", "--trusted-proxy", "127.0.0.1")
    with api_server(tmp / "index", tmp / "access.json", tmp / "server.log", extra=rates) as client:
        yield client


def test_request_rates_per_key_and_per_address(limited_api):
    api, key = limited_api, {"X-API-Key": WRITE_KEY}
    assert api.get("/info", headers=key).status_code == 200  # its first use: counted against the address
    assert api.get("/info", headers=key).status_code == 200  # known now: counted against the key
    refused = api.get("/info", headers=key)
    assert "too many requests" in one_sentence(refused, 429) and int(refused.headers["Retry-After"]) >= 1
    one_sentence(api.get("/info"), 429)  # the address has had its request
    one_sentence(api.get("/info", headers={"X-API-Key": "a-wrong-key-of-some-length"}), 429)  # before scrypt
    for client in ("203.0.113.9", "203.0.113.10"):  # behind the trusted proxy: each client its own
        assert api.get("/info", headers={"X-Forwarded-For": f"198.51.100.1, {client}"}).status_code == 200
    one_sentence(api.get("/info", headers={"X-Forwarded-For": "203.0.113.9"}), 429)
    assert api.get("/health").status_code == 200  # monitoring is not counted


def test_access_commands(tmp_path):
    access = tmp_path / "keys" / "access.json"
    short = set_key(access, "write", "short")
    assert short.returncode == 1 and short.stderr.strip().count("\n") == 0 and "12 characters" in short.stderr
    assert not access.exists()
    assert set_key(access, "write", WRITE_KEY).returncode == 0
    assert oct(access.stat().st_mode & 0o777) == "0o600"
    same = set_key(access, "read", WRITE_KEY)
    assert same.returncode == 1 and "must differ" in same.stderr
    made = access_command(access, "add-reader", "教育科", "--where", "folder=教育科", "--where", "year>=2020")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    bad = access_command(access, "add-reader", "办公室", "--where", "folder=>办公室")
    assert bad.returncode == 1 and "cannot read the filter" in bad.stderr and bad.stderr.count("\n") == 1
    show = access_command(access, "show")
    assert "write: write and read" in show.stdout and "教育科: read, only where folder=教育科 and year>=2020" in show.stdout
    assert key not in show.stdout + access.read_text() and json.loads(access.read_text())["keys"]["write"]["hash"] not in show.stdout
    from indexer.access import Access

    assert Access(access).grant_of(key).where == ("folder=教育科", "year>=2020")
    assert access_command(access, "remove-reader", "教育科").returncode == 0 and Access(access).grant_of(key) is None
    assert "a reader: access remove-reader" in access_command(access, "clear", "教育科").stderr
    clear = access_command(access, "clear", "write")
    assert clear.returncode == 0 and json.loads(access.read_text())["keys"] == {}


def test_key_rules(tmp_path):
    from indexer.access import ANYONE, Access, AccessError, add_reader as add, ensure_write_key, hash_key, set_key as store

    path = tmp_path / "access.json"
    access = Access(path)
    with pytest.raises(AccessError) as refused:
        access.check("write", None)  # no write key: no one writes, loopback or not
    assert refused.value.status == 403 and access.check("read", None) == ANYONE
    made = ensure_write_key(path)
    assert made and ensure_write_key(path) is None  # made once
    assert access.check("write", made).may("write") and access.check("read", None) == ANYONE
    store(path, "write", WRITE_KEY)  # replaced: applies at once
    assert access.grant_of(made) is None and access.allows("write", WRITE_KEY) and not access.allows("write", None)
    reader = add(path, "教育科", ["folder=教育科"])
    assert access.reading_locked() and not access.allows("read", None)  # a reader locks reading for the others
    grant = access.check("read", reader)
    assert grant.where == ("folder=教育科",) and not grant.may("write") and access.known(reader) == grant
    with pytest.raises(AccessError):
        access.check("write", reader)
    old = tmp_path / "format-1.json"  # an access file as the previous version wrote it
    old.write_text(json.dumps({"format": 1, "keys": {"write": hash_key(WRITE_KEY), "read": hash_key(READ_KEY)}}))
    assert Access(old).check("write", WRITE_KEY).may("write") and Access(old).check("read", READ_KEY).where == ()


def test_the_client_address_behind_proxies():
    from indexer.guard import Limits

    limits = Limits(trusted_proxies=("10.0.0.0/8", "127.0.0.1"))
    assert limits.client("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert limits.client("127.0.0.1", "203.0.113.9, 10.1.2.3") == "203.0.113.9"  # two proxies of ours
    assert limits.client("127.0.0.1", "198.51.100.7, 203.0.113.9") == "203.0.113.9"  # the first hop may lie
    assert limits.client("192.0.2.5", "203.0.113.9") == "192.0.2.5"  # not a proxy of ours: its header is ignored
