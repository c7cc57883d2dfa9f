"""Access on the page, in a real browser, started as `make run` starts it (`python -m indexer page`):

- on 127.0.0.1 with a terminal and no access file (a new user's first start): the terminal, and
  only the terminal, shows the write key it made and a one-time login link; without the link the
  page is read-only, loopback or not; the attacks on it are refused (a foreign Host on the page
  and on its websocket, a foreign Origin or a cross-site websocket, the page reached under a
  rebound name in Chromium); a reader's key shows only its department's documents; the link signs
  the browser in, the sign-in survives a reload, and the link works once;
- on 0.0.0.0 with no terminal (so no key is made): read-only until a write key is set and given
  as the password, a wrong one refused; with a read key set, nothing shown until a key is given.

Screenshots go to test-output/access/ (look at them: the Chinese must render).
"""
from __future__ import annotations

import shutil
import socket

import httpx
import pytest

from conftest import INSIDE, OUTSIDE, PANDA_ENGLISH, PANDA_QUESTION, ROOT, SCOPE
from test_api import GENERATED, READ_KEY, READER_KEY, REBIND, WRITE_KEY, add_reader, set_key
from test_browser import QUESTION, RESULT_TIMEOUT, ask, browser_page, chromium, login_link, serve, settle  # noqa: F401

OUT = ROOT / "test-output" / "access"
WRITE_BUTTONS = ("Add the uploaded files", "Add the pasted text", "Remove from the index", "Rebuild the index 重建索引")
PASTED_TITLE = "熊猫基地"
PASTED = "成都大熊猫繁育研究基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果。"


def open_documents_tab(page) -> None:
    """The Documents tab, shown (its controls are counted next: the tab's panel must be visible)."""
    from playwright.sync_api import expect

    page.get_by_role("tab").filter(has_text="Documents").click()
    expect(page.get_by_text("In the index 已收录")).to_be_visible(timeout=RESULT_TIMEOUT)
    settle(page)


def write_controls(page) -> int:
    return sum(page.get_by_role("button", name=name, exact=True).count() for name in WRITE_BUTTONS)


def documents(index) -> list[str]:
    """The document ids committed in an index folder (what a refused attack must leave as it was)."""
    from indexer.store import Snapshot

    return sorted(Snapshot.load(index).manifest.documents)


def handshake(port: int, **headers: str) -> int:
    """The HTTP status of a websocket handshake with the page's stream (101: opened)."""
    lines = ["GET /_stcore/stream HTTP/1.1", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    if "Host" not in headers:
        lines.append(f"Host: 127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


@pytest.fixture(scope="module")
def local_page(departments_index, tmp_path_factory):
    """The page on 127.0.0.1 over a copy of the departments' index, started on a terminal with no
    access file; yields (url, process, index folder, access file, log)."""
    tmp = tmp_path_factory.mktemp("local-page")
    shutil.copytree(departments_index, tmp / "index")
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "local-page.log"
    with serve(tmp / "index", log, tmp / "access.json") as (url, proc):
        yield url, proc, tmp / "index", tmp / "access.json", log


def test_the_first_start_shows_a_key_and_a_login_link_on_the_terminal_only(local_page):
    url, proc, _, access, log = local_page
    key, link = proc.terminal.wait_for(GENERATED).group(1), login_link(proc)
    assert link.startswith(f"{url}/?login=")
    token = link.split("login=")[1]
    stored = access.read_text()
    assert key not in stored and '"write"' in stored and token not in stored
    served = log.read_text(errors="replace")
    assert key not in served and token not in served and "You can now view" in served  # the log is written to


def test_without_the_link_the_page_is_read_only_even_on_loopback(local_page, chromium):
    from playwright.sync_api import expect

    url = local_page[0]
    with browser_page(chromium) as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_label("Password 密码", exact=True)).to_be_visible()
        expect(page.get_by_text("open the login link").first).to_be_visible()
        open_documents_tab(page)
        assert write_controls(page) == 0
        page.screenshot(path=str(OUT / "loopback-read-only.png"), full_page=True)


def test_attacks_on_the_page_are_refused(local_page, chromium):
    """DNS rebinding (a foreign Host, on the page and on its websocket, and the page reached
    under a rebound name in Chromium), cross-site websockets and uploads: refused before the
    script runs."""
    url, proc, index, _, _ = local_page
    port = int(url.rsplit(":", 1)[1])
    before = documents(index)
    page = httpx.get(url, headers={"Host": f"{REBIND}:{port}"})
    assert page.status_code == 400 and "does not answer to the host" in page.json()["error"]
    assert handshake(port, Host=f"{REBIND}:{port}", Origin=f"http://{REBIND}:{port}") == 403
    assert handshake(port, Origin="http://evil.example.com") == 403
    assert handshake(port, Origin=url, Sec_Fetch_Site="cross-site") == 403
    assert handshake(port, Origin=url, Sec_Fetch_Site="same-origin") == 101  # the page's own
    for headers in ({"Origin": "http://evil.example.com"}, {"Sec-Fetch-Site": "cross-site"}):  # the page's uploads
        upload = httpx.put(f"{url}/_stcore/upload_file/session/file", headers=headers, files={"file": ("x.txt", b"x")})
        assert upload.status_code == 403 and "refused" in upload.json()["error"]
    with browser_page(chromium, [f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"]) as browser:
        rebound = browser.goto(login_link(proc).replace("127.0.0.1", REBIND))  # even with the login link
        assert rebound.status == 400 and "does not answer to the host" in browser.content()
    assert documents(index) == before


def test_a_readers_key_shows_only_its_documents(local_page, chromium):
    """A reader bound to 教育科's folder, added while the page runs: the counts, the lists, the
    answers (to the question 办公室's report answers best) and the English question's
    translations hold nothing of the other department."""
    from playwright.sync_api import expect

    url, _, _, access, log = local_page
    assert add_reader(access, "教育科", SCOPE, READER_KEY).returncode == 0
    with browser_page(chromium) as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("This page needs a password")).to_be_visible(timeout=RESULT_TIMEOUT)
        assert page.get_by_text("Chunks 段落").count() == 0  # nothing of the index before a key
        password = page.get_by_label("Password 密码", exact=True)
        password.fill(READER_KEY)
        password.press("Enter")
        expect(page.get_by_text("Reading as 教育科")).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_test_id("stMetricValue").first).to_have_text("2")
        ask(page, PANDA_QUESTION)
        expect(page.locator(".passage").first).to_be_visible(timeout=RESULT_TIMEOUT)
        settle(page)
        shown = page.get_by_test_id("stMain").inner_text()
        assert "熊猫" not in shown.replace(PANDA_QUESTION, "") and OUTSIDE not in shown
        page.screenshot(path=str(OUT / "reader.png"), full_page=True)
        ask(page, PANDA_ENGLISH)
        expect(page.locator(".passage").first).to_be_visible(timeout=RESULT_TIMEOUT)
        settle(page)
        assert "熊猫" not in page.get_by_test_id("stMain").inner_text()
        open_documents_tab(page)
        expect(page.get_by_text(f"In the index 已收录 ({len(INSIDE)})")).to_be_visible()
        assert OUTSIDE not in page.content() and write_controls(page) == 0
        page.screenshot(path=str(OUT / "reader-documents.png"), full_page=True)
    assert READER_KEY not in log.read_text(errors="replace")


def test_the_login_link_signs_the_browser_in_once_and_survives_a_reload(local_page, chromium):
    from playwright.sync_api import expect

    url, proc, index, _, log = local_page
    link = login_link(proc)
    with browser_page(chromium) as page:
        page.goto(link, wait_until="domcontentloaded")
        assert "login=" not in page.url  # the token has left the address bar
        expect(page.get_by_text("Signed in 已登录")).to_be_visible(timeout=RESULT_TIMEOUT)
        cookie = next(c for c in page.context.cookies() if c["name"].startswith("indexer_signin_"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.reload(wait_until="domcontentloaded")
        expect(page.get_by_text("Signed in 已登录")).to_be_visible(timeout=RESULT_TIMEOUT)
        open_documents_tab(page)
        for name in WRITE_BUTTONS:  # the run after the reload may still be drawing them: wait, then count
            expect(page.get_by_role("button", name=name, exact=True)).to_be_visible(timeout=RESULT_TIMEOUT)
        assert write_controls(page) == len(WRITE_BUTTONS)
        page.get_by_role("textbox", name="Title 标题").fill(PASTED_TITLE)
        page.get_by_role("textbox", name="Text 文本").fill(PASTED)
        page.get_by_role("button", name="Add the pasted text").click()
        expect(page.get_by_text("Index updated")).to_be_visible(timeout=RESULT_TIMEOUT)
        settle(page)
        page.screenshot(path=str(OUT / "signed-in.png"), full_page=True)
        assert PASTED_TITLE in documents(index)

        other = page.context.browser.new_context(locale="zh-CN").new_page()  # another browser: no cookie
        other.goto(link, wait_until="domcontentloaded")
        expect(other.get_by_text("That login link was used already")).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(other.get_by_text("This page needs a password")).to_be_visible()  # a reader exists now: no key, nothing
        assert other.get_by_text("Signed in 已登录").count() == 0 and write_controls(other) == 0
    assert link.split("login=")[1] not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def open_page(speech_index, tmp_path_factory):
    """`python -m indexer page --host 0.0.0.0` with no terminal on a copy of the speech index;
    yields (url, access file); the access file does not exist yet, and none is made."""
    tmp = tmp_path_factory.mktemp("access-page")
    shutil.copytree(speech_index, tmp / "index")
    OUT.mkdir(parents=True, exist_ok=True)
    with serve(tmp / "index", OUT / "server.log", tmp / "access.json", host="0.0.0.0", terminal=False) as (url, _):
        yield url, tmp / "access.json"


def test_page_open_to_the_network_is_read_only_until_the_password_is_given(open_page, chromium):
    from playwright.sync_api import expect

    url, access = open_page
    with browser_page(chromium) as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        ask(page, QUESTION)  # reading needs no key
        expect(page.locator(".passage").filter(has_text="民办学校").first).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_text("no write password is set").first).to_be_visible()
        assert page.get_by_label("Password 密码", exact=True).count() == 0  # no key set: nothing to unlock with
        assert write_controls(page) == 0
        settle(page)
        page.screenshot(path=str(OUT / "read-only-search.png"), full_page=True)
        open_documents_tab(page)
        expect(page.get_by_text("In the index 已收录")).to_be_visible()
        assert write_controls(page) == 0
        page.screenshot(path=str(OUT / "read-only.png"), full_page=True)

        assert set_key(access, "write", WRITE_KEY).returncode == 0  # applies to the running page
        page.reload(wait_until="domcontentloaded")
        password = page.get_by_label("Password 密码", exact=True)
        expect(password).to_be_visible(timeout=RESULT_TIMEOUT)
        password.fill("not-the-write-password")
        password.press("Enter")
        expect(page.get_by_text("Wrong password 密码错误")).to_be_visible(timeout=RESULT_TIMEOUT)
        open_documents_tab(page)
        assert write_controls(page) == 0  # a wrong password: still no way to write
        page.screenshot(path=str(OUT / "wrong-password.png"), full_page=True)

        password.fill(WRITE_KEY)
        password.press("Enter")
        expect(page.get_by_text("Editing unlocked 已解锁")).to_be_visible(timeout=RESULT_TIMEOUT)
        settle(page)
        expect(page.get_by_role("button", name="Rebuild the index 重建索引")).to_be_visible()
        expect(page.get_by_role("button", name="Remove from the index")).to_be_visible()
        page.get_by_role("textbox", name="Title 标题").fill(PASTED_TITLE)
        page.get_by_role("textbox", name="Text 文本").fill(PASTED)
        page.get_by_role("button", name="Add the pasted text").click()
        expect(page.get_by_text("Index updated")).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_text("In the index 已收录 (2)")).to_be_visible()
        settle(page)
        page.screenshot(path=str(OUT / "unlocked.png"), full_page=True)

        assert set_key(access, "read", READ_KEY).returncode == 0  # now even reading needs a key
        page.reload(wait_until="domcontentloaded")
        expect(page.get_by_text("This page needs a password")).to_be_visible(timeout=RESULT_TIMEOUT)
        assert page.get_by_role("textbox", name="Question 问题").count() == 0
        assert page.get_by_text("Chunks 段落").count() == 0  # nor anything about the index
        password = page.get_by_label("Password 密码", exact=True)
        password.fill(READ_KEY)
        password.press("Enter")
        ask(page, QUESTION)
        expect(page.locator(".passage").filter(has_text="民办学校").first).to_be_visible(timeout=RESULT_TIMEOUT)
        open_documents_tab(page)
        assert write_controls(page) == 0  # the read key does not write
        page.screenshot(path=str(OUT / "read-key.png"), full_page=True)
    log = (OUT / "server.log").read_text(errors="replace")
    assert WRITE_KEY not in log and READ_KEY not in log and "no write key is set" in log
