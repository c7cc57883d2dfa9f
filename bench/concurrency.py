"""Questions while the index is written: does a question wait for a write?

    python -m bench.concurrency                          # the engine in process, then over HTTP
    python -m bench.concurrency --compare f549d43        # the engine of a revision beside this tree's

One person asks questions one after another (a short pause between them, as a person reads);
meanwhile another adds a long document (about 60,000 characters), then rebuilds the index. Each
phase reports the questions' latency, p50 and max, beside the idle phase before it:
- `engine`: one Engine in this process (the page keeps one for all its sessions), a questioner
  thread and a writer thread;
- `http`: `python -m indexer serve` on loopback, the questioner a client of /search, the add a POST
  /documents, the rebuild another process's (the server follows its commit).
Goals: no question waits for a write (max ≤ 0.5 s) and p50 at most 3x idle.
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

    from .load import api_server

    with api_server(index, index.parent / "server.log") as url:
        http = httpx.Client(base_url=url, timeout=120)
        rebuild = [sys.executable, "-c", f"from indexer.engine import Engine; Engine({str(index)!r}).rebuild()"]
        return phases(lambda q: http.post("/search", json={"query": q, "k": 5}).raise_for_status(),
                      lambda: http.post("/documents", timeout=600, files={
                          "files": ("long.txt", long_document().encode("utf-8"), "text/plain")}).raise_for_status(),
                      lambda: subprocess.run(rebuild, cwd=ROOT, check=True), log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="engine,http", help="engine, http or both")
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
            out += rows({"engine": engine_section, "http": http_section}[section](index, log), f"{section}, this tree")
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
