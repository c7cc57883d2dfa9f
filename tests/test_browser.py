"""The page in a real browser: `python -m indexer page` (as `make run` starts it) on a free port,
driven by Playwright in Debian's Chromium, signed in by the login link its terminal shows where a
test writes.

Screenshots go to test-output/browser/ (look at them: a missing CJK font still passes a text check
while a person sees empty boxes). `make test` installs Chromium and the font first; this test
installs them itself when it can, and fails rather than skips when it cannot.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, free_port, running

OUT = ROOT / "test-output" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
QUESTION = "私立学校怎样建立党组织？"
MINBAN = "市教育局党组继续贯彻"
ENGLISH = "How are young cadres trained?"
RESULT_TIMEOUT = 90_000  # ms


def _have_cjk_font() -> bool:
    try:
        out = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return Path("/usr/share/fonts/opentype/noto").is_dir()
    return bool(out.strip())


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium and a CJK font, installed here if missing (root or sudo)."""
    if not (os.access(CHROMIUM, os.X_OK) and _have_cjk_font()):
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "fonts-noto-cjk"]):
            done = subprocess.run(sudo + cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                pytest.fail(f"cannot install Chromium for the browser test ({' '.join(cmd)}): "
                            f"{(done.stderr or done.stdout).strip()[-500:]}; run `make browser`")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing after installing the chromium package")
    return CHROMIUM


LOGIN_LINK = r"(http://127\.0\.0\.1:\d+/\?login=[A-Za-z0-9_-]+)"  # as the page's terminal shows it


@contextlib.contextmanager
def serve(index: Path, log: Path, access: Path, host: str = "127.0.0.1", terminal: bool = True):
    """`python -m indexer page` (what `make run` starts) on a free port, keys in `access`; yields
    (URL, the process); always stopped. On a terminal (`proc.terminal`), it shows the login link
    there (`login_link`), and at its first start the write key it made."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "indexer", "page", "--index", str(index), "--host", host, "--port", str(port),
           "--access", str(access)]
    with running(cmd, f"{url}/_stcore/health", log, terminal=terminal) as proc:
        yield url, proc


def login_link(proc) -> str:
    """The one-time login link the page showed on its terminal."""
    return proc.terminal.wait_for(LOGIN_LINK).group(1)


@contextlib.contextmanager
def browser_page(chromium_path: str, flags: tuple[str, ...] | list[str] = ()):
    """A page of a fresh Chromium (with these `flags` beside CHROMIUM_FLAGS); closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=[*CHROMIUM_FLAGS, *flags])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100}, locale="zh-CN")
            yield page
        finally:
            browser.close()


def ask(page, question: str) -> None:
    box = page.get_by_role("textbox", name="Question 问题")
    box.fill(question)
    box.press("Enter")


def settle(page) -> None:
    """Wait until the script run is over and the layout has stopped moving (an expander opening)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=RESULT_TIMEOUT)
    height = None
    for _ in range(40):
        now = page.evaluate("() => Array.from(document.querySelectorAll('details'))"
                            ".map(d => d.getBoundingClientRect().height).join(',')")
        if now == height:
            return
        height = now
        page.wait_for_timeout(150)


def test_page_in_a_real_browser(speech_index, tmp_path, chromium):
    """No index → the message and the build button; the index appears on disk → the page picks it up;
    a Chinese question → the 民办学校 passage first, marked, its answering sentence set off, with its
    context; an English one → its Chinese search terms shown, and every hit's sentence set off."""
    from playwright.sync_api import expect

    OUT.mkdir(parents=True, exist_ok=True)
    index = tmp_path / "index"
    with serve(index, OUT / "server.log", tmp_path / "access.json") as (url, proc), browser_page(chromium) as page:
        page.goto(login_link(proc), wait_until="domcontentloaded")  # signed in: the build button is there
        expect(page.get_by_text("There is no index at")).to_be_visible(timeout=RESULT_TIMEOUT)
        expect(page.get_by_role("button", name="Build the index from data/speech.txt")).to_be_visible()
        settle(page)
        page.screenshot(path=str(OUT / "empty.png"), full_page=True)

        staging = tmp_path / "staging"  # another process writes the index: it appears in one rename
        shutil.copytree(speech_index, staging)
        staging.rename(index)
        page.reload(wait_until="domcontentloaded")
        page.set_viewport_size({"width": 1440, "height": 2000})
        expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        ask(page, QUESTION)
        first = page.locator(".passage").first
        expect(first).to_contain_text("民办学校", timeout=RESULT_TIMEOUT)
        assert first.inner_text().strip().startswith(MINBAN)
        assert first.locator("mark").count() > 0  # the question's words are marked
        head = page.locator(".hit-head").first.inner_text()
        assert "#1" in head and "四、加强民办学校党建工作" in head
        page.locator("summary").filter(has_text="Context").first.click()  # the paragraphs around it
        expect(page.locator(".context .ctx-hit").first).to_contain_text(MINBAN)
        settle(page)
        page.screenshot(path=str(OUT / "search.png"), full_page=True)

        assert first.locator(".answer").count() == 1  # its answering sentence is set off
        assert "民办学校" in first.locator(".answer").inner_text()

        ask(page, ENGLISH)  # an English question over the Chinese speech
        chips = page.locator(".terms")
        expect(chips).to_contain_text("→", timeout=RESULT_TIMEOUT)
        expect(chips).to_contain_text("干部")  # cadres → 干部, searched in Chinese
        settle(page)
        assert page.locator(".passage").count() == 5
        assert page.locator(".passage .answer").count() == 5  # every hit shows its answering sentence
        assert page.locator(".passage mark").count() > 0  # the translated terms are marked
        page.screenshot(path=str(OUT / "search-en.png"), full_page=True)


def test_documents_score_breakdown_and_originals_in_a_real_browser(encoder, tmp_path, chromium):
    """Each hit says where it is (its document, a PDF's page) and links to its original: a PDF
    opens inline at the hit's page (#page=N), anything else comes as a sandboxed download, and a
    forged link is refused. With "Why each hit ranks" on, each hit shows its score's parts (cosine
    and BM25, summing to the score, and the terms matched); "documents" ranks whole documents,
    each with its best passages."""
    from fpdf import FPDF
    from playwright.sync_api import expect

    from indexer.engine import Engine

    notices = tmp_path / "notices"
    notices.mkdir()
    (notices / "民办学校通知.txt").write_text("关于民办学校党组织建设的通知\n各民办学校要在年内建立党组织。\n"
                                       "党组织书记由上级党组织选派。", encoding="utf-8")
    (notices / "民辦學校報告.txt").write_text("民辦學校黨建工作報告\n全市民辦學校黨組織覆蓋率達到百分之百。", encoding="utf-8")
    shutil.copy(ROOT / "data" / "speech.txt", notices / "speech.txt")
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for line in ("Annual report of the sports centre: cover page.",
                 "The school swimming pool opens at nine in the morning during the summer holiday."):
        pdf.add_page()
        pdf.multi_cell(0, 8, text=line)
    pdf.output(str(notices / "pool.pdf"))
    index = tmp_path / "index"
    Engine(index, encoder=encoder).build([notices])
    OUT.mkdir(parents=True, exist_ok=True)
    with serve(index, OUT / "server-documents.log", tmp_path / "access.json") as (url, _), browser_page(chromium) as page:
        page.goto(url, wait_until="domcontentloaded")
        page.set_viewport_size({"width": 1440, "height": 2200})
        expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        ask(page, QUESTION)
        where = page.locator(".where").first
        expect(where).to_contain_text("notices/", timeout=RESULT_TIMEOUT)
        settle(page)
        assert page.locator(".why").count() == 0  # the parts wait behind the toggle
        link = where.get_by_role("link", name="open original 打开原文")
        doc_id = where.locator(".id").inner_text()
        got = page.request.get(url + link.get_attribute("href"))
        assert got.status == 200 and got.body() == (tmp_path / doc_id).read_bytes()
        assert got.headers["content-disposition"].startswith("attachment")
        assert got.headers["x-content-type-options"] == "nosniff" and "sandbox" in got.headers["content-security-policy"]
        forged = link.get_attribute("href").replace("?t=", "?t=x")
        assert page.request.get(url + forged).status == 403

        page.get_by_text("Why each hit ranks 评分明细").click()
        why = page.locator(".why").first
        expect(why).to_contain_text("bm25", timeout=RESULT_TIMEOUT)
        parts = why.inner_text()
        assert "dense" in parts and "matched" in parts and "党组织" in parts

        ask(page, "When does the swimming pool open in the summer holiday?")
        where = page.locator(".where").first
        expect(where).to_contain_text("notices/pool.pdf", timeout=RESULT_TIMEOUT)
        settle(page)
        assert "page 2" in where.inner_text()
        href = where.get_by_role("link", name="open original 打开原文").get_attribute("href")
        assert href.endswith("#page=2")
        got = page.request.get(url + href.split("#")[0])
        assert got.status == 200 and got.body() == (notices / "pool.pdf").read_bytes()
        assert got.headers["content-type"] == "application/pdf" and got.headers["content-disposition"].startswith("inline")
        assert got.headers["x-content-type-options"] == "nosniff" and "sandbox" not in got.headers["content-security-policy"]
        page.screenshot(path=str(OUT / "hit-places.png"), full_page=True)

        ask(page, QUESTION)
        page.get_by_test_id("stRadioGroup").get_by_text("documents 文档").click()
        heads = page.locator(".doc-head")
        expect(heads.first).to_be_visible(timeout=RESULT_TIMEOUT)
        settle(page)
        titles = heads.all_inner_texts()
        assert len(titles) == 4 and all(t.startswith(f"#{n}") for n, t in enumerate(titles, 1))
        assert "notices/pool.pdf" in titles[-1]  # the English notice last
        assert any("民辦學校報告" in t for t in titles)  # a Traditional document found by a Simplified question
        assert page.locator(".passage").count() >= 4  # each document with its best passages
        page.screenshot(path=str(OUT / "documents.png"), full_page=True)


def test_a_question_is_answered_while_another_session_adds_a_long_document(speech_index, tmp_path, chromium):
    """Two people on one page (one engine for all sessions): while one adds a long document (about
    60,000 characters: tens of seconds of encoding), the other's question is answered, from the last
    commit, before the add ends; once it ends, the new document is searchable."""
    from playwright.sync_api import expect

    from bench.concurrency import long_document

    OUT.mkdir(parents=True, exist_ok=True)
    index = tmp_path / "index"
    shutil.copytree(speech_index, index)
    with serve(index, OUT / "server-two-sessions.log", tmp_path / "access.json") as (url, proc), \
            browser_page(chromium) as reader:
        writer = reader.context.browser.new_context(viewport={"width": 1440, "height": 1100}, locale="zh-CN").new_page()
        for page, address in ((reader, url), (writer, login_link(proc))):  # the writer signed in by the link
            page.goto(address, wait_until="domcontentloaded")
            expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=RESULT_TIMEOUT)
        writer.get_by_role("tab", name="Documents").click()
        writer.get_by_role("textbox", name="Title 标题").fill("长篇通知")
        writer.get_by_role("textbox", name="Text 文本").fill(long_document())
        writer.get_by_role("button", name="Add the pasted text").click()
        expect(writer.get_by_text("Embedding…")).to_be_visible(timeout=RESULT_TIMEOUT)  # the add is under way

        ask(reader, QUESTION)
        expect(reader.locator(".passage").first).to_contain_text("民办学校", timeout=RESULT_TIMEOUT)
        done = writer.get_by_text("Index updated")
        assert not done.is_visible()  # the answer came while the add was still running
        reader.screenshot(path=str(OUT / "answer-during-add.png"), full_page=True)
        expect(done).to_be_visible(timeout=600_000)
        ask(reader, "长篇通知里第一百二十段讲了什么")
        reader.get_by_test_id("stRadioGroup").get_by_text("documents 文档").click()
        expect(reader.locator(".doc-head").first).to_be_visible(timeout=RESULT_TIMEOUT)
        assert any("长篇通知" in t for t in reader.locator(".doc-head").all_inner_texts())
