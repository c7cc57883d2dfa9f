"""Questions while the index is written: does a question wait for a write?

    python -m bench.concurrency                          # the engine in process, then over HTTP
    python -m bench.concurrency --compare f549d43        # the engine of a revision beside this tree's

One person asks questions one after another (a short pause between them, as a person reads);
meanwhile another adds a long document (about 60,000 characters), then rebuilds the index. Each
phase reports the questions' latency, p50 and max, beside the idle phase before it:
- `engine`: one Engine in this process (the page keeps one for all its sessions), a questioner
  thread and a writer thread;
- `http`: `python -m indexer serve` on loopback, the questioner a client of /search, the add a POST
  /documents, the rebuild another process's (the server follows its commit);
- `page`: the page in Chromium, two sessions: the time from a question's Enter to its first passage
  on screen, idle, then while the other session adds the long document.
Goals: no question waits for a write (max ≤ 0.5 s), p50 at most 3x idle; on the page, at most 2x.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import fmt_table, ms, pct
from .queries import questions

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "data" / "speech.txt"
PAUSE = 0.1  # seconds between one person's questions
IDLE_SECONDS = 15


def long_document(chars: int = 60_000) -> str:
    """About `chars` characters of the speech's paragraphs, each numbered so that none repeats."""
    paragraphs = [p for p in SPEECH.read_text(encoding="utf-8").split("\n") if len(p) > 40]
    out, n = [], 0
    while sum(len(p) for p in out) < chars:
        out.append(f"（{n + 1}）{paragraphs[n % len(paragraphs)]}")
        n += 1
    return "\n\n".join(out)


class Questioner(threading.Thread):
    """Asks `ask(question)` one after another until stopped, recording each latency by phase."""

    def __init__(self, ask) -> None:
        super().__init__(daemon=True)
        self.ask, self.phase, self.latencies = ask, "idle", {}
        self._stop_asking = threading.Event()

    def run(self) -> None:
        for question in questions(100_000):
            if self._stop_asking.is_set():
                return
            phase, start = self.phase, time.perf_counter()
            self.ask(question)
            self.latencies.setdefault(phase, []).append(time.perf_counter() - start)
            time.sleep(PAUSE)

    def stop(self) -> dict:
        self._stop_asking.set()
        self.join(timeout=60)
        return self.latencies


def rows(latencies: dict[str, list[float]], where: str) -> list[dict]:
    idle = pct(latencies["idle"], 50)
    return [{"where": where, "phase": phase, "questions": len(x), "p50_ms": ms(pct(x, 50)), "max_ms": ms(max(x)),
             "p50_vs_idle": round(pct(x, 50) / idle, 2)} for phase, x in latencies.items()]


def engine_section(index: Path, log) -> dict[str, list[float]]:
    """The phases over one Engine in this process (what the page keeps)."""
    from indexer.engine import Engine
    from indexer.reading import Document

    engine = Engine(index)
    engine.encoder.encode_documents(["预热"])  # as the page and the API warm up (in any revision's engine):
    engine.search("预热", k=5)  # both sides of the encoder, the index, the translator
    engine.search("warm up", k=5)
    return phases(lambda q: engine.search(q, k=5), lambda: engine.add_documents([Document("long.txt", long_document())]),
                  engine.rebuild, log)


def phases(ask, add, rebuild, log) -> dict[str, list[float]]:
    """One person asking (`ask`) while idle, during `add`, during `rebuild`: each phase's latencies."""
    asker = Questioner(ask)
    asker.start()
    time.sleep(IDLE_SECONDS)
    for phase, write in (("during an add", add), ("during a rebuild", rebuild)):
        asker.phase = phase
        start = time.perf_counter()
        write()
        log(f"  {phase}: the write took {time.perf_counter() - start:.1f} s")
        asker.phase = "idle after"
        time.sleep(2)
    return asker.stop()


def http_section(index: Path, log) -> dict[str, list[float]]:
    """The phases over the HTTP API on loopback."""
    import httpx

    from .load import READ_KEY, WRITE_KEY, api_server

    with api_server(index, index.parent / "server.log") as url:  # with keys, as a team's server runs
        http = httpx.Client(base_url=url, timeout=120)
        rebuild = [sys.executable, "-c", f"from indexer.engine import Engine; Engine({str(index)!r}).rebuild()"]
        return phases(lambda q: http.post("/search", json={"query": q, "k": 5},
                                          headers={"X-API-Key": READ_KEY}).raise_for_status(),
                      lambda: http.post("/documents", timeout=600, headers={"X-API-Key": WRITE_KEY}, files={
                          "files": ("long.txt", long_document().encode("utf-8"), "text/plain")}).raise_for_status(),
                      lambda: subprocess.run(rebuild, cwd=ROOT, check=True), log)


def page_section(index: Path, log, rounds: int = 5) -> dict[str, list[float]]:
    """The page in a real browser (two sessions of one `streamlit run`): the time from a question's
    Enter to its first passage on screen, idle, then while the other session adds the long
    document (pasted text)."""
    import socket

    from playwright.sync_api import expect, sync_playwright

    from .load import READ_KEY, WRITE_KEY, set_keys

    set_keys(index.parent / "page-access.json")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "search_app.py"), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false", "--", "--access", str(index.parent / "page-access.json")]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "INDEXER_INDEX": str(index), "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out: dict[str, list[float]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            reader, writer = (browser.new_page(viewport={"width": 1440, "height": 1100}) for _ in range(2))
            for page, key in ((reader, READ_KEY), (writer, WRITE_KEY)):  # each signs in with its key
                for _ in range(240):
                    try:
                        page.goto(url, wait_until="domcontentloaded")
                        break
                    except Exception:  # noqa: BLE001 - the server is still starting
                        time.sleep(0.5)
                password = page.get_by_label("Password 密码", exact=True)
                password.fill(key)
                password.press("Enter")
                expect(page.get_by_text("Chunks 段落")).to_be_visible(timeout=300_000)

            heads = "() => Array.from(document.querySelectorAll('.hit-head')).map(e => e.innerText).join('|')"

            def ask(question: str) -> float:
                """Seconds from Enter to the new answer on screen (its hits' heads differ from the last's)."""
                box = reader.get_by_role("textbox", name="Question 问题")
                box.fill(question)
                before = reader.evaluate(heads)
                start = time.perf_counter()
                box.press("Enter")
                reader.wait_for_function(f"(before) => {{ const now = ({heads})(); return now && now !== before; }}",
                                         arg=before, timeout=300_000, polling=10)
                return time.perf_counter() - start

            asked = questions(4 * rounds + 2)
            ask(asked[-1])  # the first answer loads what the page keeps
            out["idle"] = [ask(q) for q in asked[:rounds]]
            writer.get_by_role("tab", name="Documents").click()
            writer.get_by_role("textbox", name="Title 标题").fill("长篇通知")
            writer.get_by_role("textbox", name="Text 文本").fill(long_document())
            writer.get_by_role("button", name="Add the pasted text").click()
            expect(writer.get_by_text("Embedding…")).to_be_visible(timeout=300_000)
            done = writer.get_by_text("Index updated")
            out["during an add"] = []
            for q in asked[rounds:]:
                if done.is_visible():
                    break
                out["during an add"].append(ask(q))
            log(f"  {len(out['during an add'])} questions answered during the add")
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="engine,http,page", help="of engine, http, page (the page in a browser)")
    ap.add_argument("--compare", default=None, help="a revision whose engine section runs beside this tree's")
    ap.add_argument("--here", default=None, help=argparse.SUPPRESS)  # a revision's run: the engine section's JSON
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
        index = Path(tmp) / "index"
        if args.here:
            shutil.copytree(args.here, index)
            print(json.dumps(engine_section(index, log)))
            return 0
        from indexer.engine import Engine

        Engine(Path(tmp) / "base").build([SPEECH])
        out: list[dict] = []
        for section in [s for s in args.only.split(",") if s]:
            shutil.rmtree(index, ignore_errors=True)
            shutil.copytree(Path(tmp) / "base", index)
            log(f"== {section}")
            sections = {"engine": engine_section, "http": http_section, "page": page_section}
            out += rows(sections[section](index, log), f"{section}, this tree")
        if args.compare:
            from .speed import _trees

            with _trees([args.compare], Path(tmp)) as trees:
                log(f"== engine at {args.compare}")
                tree = trees[args.compare]
                shutil.copy(Path(__file__), tree / "bench" / "concurrency.py")  # this bench over that tree's engine
                proc = subprocess.run([sys.executable, "-m", "bench.concurrency", "--here", str(Path(tmp) / "base")],
                                      cwd=tree, capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"})
                out += rows(json.loads(proc.stdout.strip().splitlines()[-1]), f"engine, {args.compare}")
    print("\n### Questions while the index is written (one person asking, a 0.1 s pause between questions)\n")
    print(fmt_table(out, [("where", "where"), ("phase", "phase"), ("questions", "questions"), ("p50_ms", "p50 ms"),
                          ("max_ms", "max ms"), ("p50_vs_idle", "p50 × idle")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
