"""Access on the page, in a real browser: the page served on 0.0.0.0 (reached through 127.0.0.1;
the rule is about the bind address) shows no write controls while no write key is set, asks for
the password once one is, refuses a wrong one, and unlocks adding and removing with the right one;
with a read key set, it shows nothing until a key is given, and the read key does not write.

Screenshots go to test-output/access/ (look at them: the Chinese must render).
"""
from __future__ import annotations

import shutil
import sys

import pytest

from conftest import ROOT, free_port, running
from test_api import READ_KEY, WRITE_KEY, set_key
from test_browser import APP, QUESTION, RESULT_TIMEOUT, ask, browser_page, chromium, settle  # noqa: F401 - chromium is a fixture

OUT = ROOT / "test-output" / "access"
WRITE_BUTTONS = ("Add the uploaded files", "Add the pasted text", "Remove from the index", "Rebuild the index 重建索引")
PASTED_TITLE = "熊猫基地"
PASTED = "成都大熊猫繁育研究基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果。"


@pytest.fixture(scope="module")
def open_page(speech_index, tmp_path_factory):
    """`streamlit run search_app.py --server.address 0.0.0.0` on a copy of the speech index;
    yields (url, access file); the access file does not exist yet (no keys)."""
    tmp = tmp_path_factory.mktemp("access-page")
    shutil.copytree(speech_index, tmp / "index")
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port),
           "--server.address", "0.0.0.0", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
           "--", "--access", str(tmp / "access.json")]
    url = f"http://127.0.0.1:{port}"
    OUT.mkdir(parents=True, exist_ok=True)
    with running(cmd, f"{url}/_stcore/health", OUT / "server.log", {"INDEXER_INDEX": str(tmp / "index")}):
        yield url, tmp / "access.json"


def open_documents_tab(page) -> None:
    page.get_by_role("tab").filter(has_text="Documents").click()
    settle(page)


def write_controls(page) -> int:
    return sum(page.get_by_role("button", name=name, exact=True).count() for name in WRITE_BUTTONS)


def test_page_open_to_the_network_is_read_only_until_the_password_is_given(open_page, chromium):
    from playwright.sync_api import expect

    url, access = open_page
    with browser_page(chromium) as page:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        ask(page, QUESTION)  # reading needs no key
        expect(page.locator(".passage").filter(has_text="民办学校").first).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_text("this page is open to the network").first).to_be_visible()
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
    assert WRITE_KEY not in log and READ_KEY not in log
