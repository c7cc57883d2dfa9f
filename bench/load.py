"""Load on the HTTP API (`python -m indexer serve`), from a bounded asyncio + httpx generator on 127.0.0.1.

    python -m bench.load                         # 50 clients x 60 s
    python -m bench.run --only load              # the same, as a section of bench.run

The server runs with keys, as a team's does: the write key (the writer's), the read key and a
reader bound to `tag=教育科` (indexer.access), with the default request rates. Its index holds the
speech twice: tagged 教育科 (in the reader's scope) and, as a second document, tagged 办公室 (outside
it, and answering every question as well). First one client asks questions back to back
(`--single-seconds`, with the read key), then `--clients` clients ask for `--seconds`, half with
the read key and half with the reader's, while a writer adds a document (three paragraphs of the
speech under a new id, tagged 教育科 or 办公室 in turn) and removes it again, one write every
`--write-every` seconds. The questions are a fixed mix: Chinese (tests/data/speech_qa_zh.jsonl) and
English (speech_qa_en.jsonl) questions to /search, and /batch requests of `--batch-size` of both.
Beside them, in this process on the same index: `Engine.search` one question at a time and
`Engine.batch` (no HTTP).

Every answer names the generation it came from; the writer records each committed generation's
documents and their tags, and every hit of every answer must be a document of its generation (a
removed document, or one not yet committed, would show up here as `uncommitted`); every hit of an
answer to the reader must be tagged 教育科 (`outside the scope`).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .common import fmt_table, ms, pct, system_info

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SPEECH = ROOT / "data" / "speech.txt"
K = 5
SCOPE_TAG = "教育科"  # the reader's scope is tag=教育科; the other copy of the speech is tagged 办公室
OTHER_TAG = "办公室"
WRITE_KEY, READ_KEY, READER_KEY = "load-write-key-5KqZ", "load-read-key-8WmR", "load-reader-key-3TdX"


def questions(name: str) -> list[str]:
    return [json.loads(line)["query"] for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Tally:
    """Latencies and errors of the requests of one phase, and every answer's generation and hit documents."""

    latencies: list[float] = field(default_factory=list)
    questions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    answers: list[tuple[str, frozenset[str], float, float, bool]] = field(default_factory=list)  # gen, docs, sent, done, scoped

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def row(self, what: str, seconds: float) -> dict:
        n = len(self.latencies)
        return {"what": what, "requests": n, "requests_per_s": round(n / seconds, 2),
                "questions_per_s": round(self.questions / seconds, 2), "p50_ms": ms(pct(self.latencies, 50)),
                "p95_ms": ms(pct(self.latencies, 95)), "p99_ms": ms(pct(self.latencies, 99)),
                "errors": sum(self.errors.values()), "error_kinds": dict(self.errors)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_keys(access: Path) -> None:
    """The write key, the read key and the reader bound to tag=教育科, as `access` commands set them."""
    from indexer.access import add_reader, set_key

    set_key(access, "write", WRITE_KEY)
    set_key(access, "read", READ_KEY)
    add_reader(access, SCOPE_TAG, [f"tag={SCOPE_TAG}"], READER_KEY)


@contextlib.contextmanager
def api_server(index: Path, log: Path, timeout: float = 300):
    """`python -m indexer serve` on 127.0.0.1 and a free port, with the keys of `set_keys`; yields
    its URL; always stopped."""
    port = free_port()
    access = log.with_suffix(".access.json")
    set_keys(access)
    cmd = [sys.executable, "-m", "indexer", "serve", "--index", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--access", str(access)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start:\n{log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Load:
    """The request mix: a client's next request is a Chinese or English /search, or a /batch."""

    def __init__(self, zh: list[str], en: list[str], batch_size: int, mix: tuple[float, float, float]) -> None:
        self.zh, self.en, self.batch_size, self.mix = zh, en, batch_size, mix

    def request(self, rng: random.Random) -> tuple[str, dict, int]:
        kind = rng.choices(("zh", "en", "batch"), weights=self.mix)[0]
        if kind == "batch":
            qs = [rng.choice(self.zh if i % 2 else self.en) for i in range(self.batch_size)]
            return "/batch", {"queries": qs, "k": K}, len(qs)
        return "/search", {"query": rng.choice(self.zh if kind == "zh" else self.en), "k": K}, 1


async def client(http: httpx.AsyncClient, load: Load, rng: random.Random, until: float, tally: Tally,
                 key: str = READ_KEY) -> None:
    """Ask questions until `until`, with `key` (the reader's: its answers are checked against its scope)."""
    while time.perf_counter() < until:
        path, body, n = load.request(rng)
        sent = time.perf_counter()
        try:
            resp = await http.post(path, json=body, headers={"X-API-Key": key})
        except httpx.HTTPError as exc:
            tally.error(type(exc).__name__)
            continue
        done = time.perf_counter()
        if resp.status_code != 200:
            tally.error(f"HTTP {resp.status_code}")
            continue
        tally.latencies.append(done - sent)
        tally.questions += n
        data = resp.json()
        for result in data if isinstance(data, list) else [data]:
            tally.answers.append((result["generation"], frozenset(h["doc_id"] for h in result["hits"]), sent, done,
                                  key == READER_KEY))


async def writer(http: httpx.AsyncClient, paragraphs: list[str], every: float, until: float, rng: random.Random,
                 committed: dict[str, dict[str, bool]], spans: list[tuple[float, float]], errors: dict[str, int]) -> int:
    """Every `every` seconds: add a document (three speech paragraphs under a new id, tagged 教育科
    or 办公室 in turn), or remove the one added before; record each committed generation's
    documents (id → in the reader's scope) and when each write ran."""
    docs = dict(next(iter(committed.values())))
    added, writes, key = None, 0, {"X-API-Key": WRITE_KEY}
    while time.perf_counter() + every < until:
        await asyncio.sleep(every)
        start = time.perf_counter()
        if added is None:
            name, tag = f"load-{writes}.txt", (SCOPE_TAG, OTHER_TAG)[writes // 2 % 2]
            text = "\n".join(rng.sample(paragraphs, 3)) + "\n"
            resp = await http.post("/documents", files={"files": (name, text.encode("utf-8"), "text/plain")},
                                   data={"tags": tag}, headers=key)
        else:
            resp = await http.delete(f"/documents/{added}", headers=key)
        spans.append((start, time.perf_counter()))
        if resp.status_code != 200:
            errors[f"write HTTP {resp.status_code}"] = errors.get(f"write HTTP {resp.status_code}", 0) + 1
            continue
        if added is None:
            docs[name], added = tag == SCOPE_TAG, name
        else:
            docs.pop(added)
            added = None
        committed[resp.json()["generation"]] = dict(docs)
        writes += 1
    return writes


async def phase(url: str, load: Load, clients: int, seconds: float, seed: int, write_every: float | None,
                paragraphs: list[str]) -> dict:
    """`clients` clients for `seconds` (and the writer, if `write_every`); the row of figures."""
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers={"X-API-Key": READ_KEY}) as http:
        gen = (await http.get("/info")).json()["generation"]
        committed = {gen: {d["doc_id"]: SCOPE_TAG in d["meta"].get("tags", []) for d in (await http.get("/documents")).json()}}
        tally, spans, write_errors = Tally(), [], {}
        start = time.perf_counter()
        until = start + seconds
        keys = (READ_KEY, READER_KEY) if clients > 1 else (READ_KEY,)  # half the clients are the reader
        tasks = [client(http, load, random.Random(seed * 1000 + i), until, tally, keys[i % len(keys)])
                 for i in range(clients)]
        if write_every:
            tasks.append(writer(http, paragraphs, write_every, until, random.Random(seed), committed, spans, write_errors))
        done = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    row = tally.row(f"{clients} client{'s' * (clients > 1)}" + (", writes every %gs" % write_every if write_every else ""),
                    elapsed)
    if write_every:
        during = [a for a in tally.answers if any(a[2] < e and a[3] > s for s, e in spans)]
        bad = [a for a in tally.answers if a[0] not in committed or not a[1] <= committed[a[0]].keys()]
        scoped = [a for a in tally.answers if a[4]]
        outside = [a for a in scoped if a[0] not in committed or not all(committed[a[0]].get(d) for d in a[1])]
        others = [a for a in tally.answers if not a[4] and a[0] in committed
                  and not all(committed[a[0]].get(d) for d in a[1])]  # the premise: the read key sees them
        row.update(writes=done[-1], write_errors=sum(write_errors.values()), generations=len(committed),
                   answers=len(tally.answers), answers_during_writes=len(during), uncommitted=len(bad),
                   scoped_answers=len(scoped), outside_scope=len(outside), read_key_answers_with_others=len(others))
        row["errors"] += row["write_errors"]
    return row


def in_process(index: Path, zh: list[str], en: list[str], seconds: float, batch: int) -> list[dict]:
    """Engine.search one question at a time, and Engine.batch, in this process (no HTTP)."""
    from indexer.engine import Engine

    engine = Engine(index)
    mixed = [q for pair in zip(zh, en) for q in pair]
    engine.batch(mixed[:8], k=K)  # load the store, encoders and translator
    rows = []
    for what, size in (("Engine.search, one question at a time (in process)", 1),
                       (f"Engine.batch of {batch} (in process)", batch)):
        lat, n, start, i = [], 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            qs = [mixed[(i + j) % len(mixed)] for j in range(size)]
            i += size
            t = time.perf_counter()
            engine.batch(qs, k=K)
            lat.append(time.perf_counter() - t)
            n += size
        elapsed = time.perf_counter() - start
        rows.append({"what": what, "requests": len(lat), "requests_per_s": round(len(lat) / elapsed, 2),
                     "questions_per_s": round(n / elapsed, 2), "p50_ms": ms(pct(lat, 50)), "p95_ms": ms(pct(lat, 95)),
                     "p99_ms": ms(pct(lat, 99)), "errors": 0})
    return rows


def run(clients: int = 50, seconds: float = 60, single_seconds: float = 20, write_every: float = 3.0,
        batch_size: int = 8, mix: tuple[float, float, float] = (0.45, 0.35, 0.2), seed: int = 0,
        in_process_seconds: float = 15, log=print) -> dict:
    """The whole load section: in-process references, then one client and `clients` clients with the writer."""
    from indexer.engine import Engine

    zh, en = questions("speech_qa_zh.jsonl"), questions("speech_qa_en.jsonl")
    paragraphs = [p for p in SPEECH.read_text(encoding="utf-8").split("\n") if len(p) > 60]
    load = Load(zh, en, batch_size, mix)
    out = {"clients": clients, "seconds": seconds, "single_seconds": single_seconds, "write_every_s": write_every,
           "batch_size": batch_size, "mix_zh_en_batch": list(mix), "questions_zh": len(zh), "questions_en": len(en),
           "k": K, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        base = Path(tmp) / "speech"
        log(f"load: building the index of the speech, tagged {SCOPE_TAG}, and its copy, tagged {OTHER_TAG}")
        copy = Path(tmp) / "copy" / "speech-copy.txt"
        copy.parent.mkdir()
        copy.write_bytes(SPEECH.read_bytes())
        engine = Engine(base)
        engine.build([SPEECH], tags=[SCOPE_TAG])
        engine.add([copy], tags=[OTHER_TAG])
        out["index_chunks"] = Engine(base).info()["chunks"]
        log("load: Engine.search and Engine.batch in process")
        out["rows"] += in_process(base, zh, en, in_process_seconds, 64)
        with api_server(base, Path(tmp) / "server.log") as url:
            for n, secs, every in ((1, single_seconds, None), (clients, seconds, write_every)):
                log(f"load: {n} client(s) for {secs:g} s" + (f", a write every {every:g} s" if every else ""))
                row = asyncio.run(phase(url, load, n, secs, seed, every, paragraphs))
                out["rows"].append({**row, "what": f"HTTP, {row['what']}"})
                log(f"load:   {row['requests_per_s']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                    f"errors {row['errors']}" + (f", uncommitted answers {row['uncommitted']}, answers outside the "
                                                 f"scope {row['outside_scope']} of {row['scoped_answers']} (the read key's answers "
                                                 f"holding them: {row['read_key_answers_with_others']})" if every else ""))
    return out


def print_load(res: dict) -> None:
    print(f"\n### HTTP API under load ({res['clients']} clients x {res['seconds']:g} s; requests: "
          f"{res['mix_zh_en_batch'][0]:.0%} Chinese /search, {res['mix_zh_en_batch'][1]:.0%} English /search, "
          f"{res['mix_zh_en_batch'][2]:.0%} /batch of {res['batch_size']}; k={res['k']}; the speech twice, "
          f"{res['index_chunks']} chunks; with keys, half the clients a reader bound to tag={SCOPE_TAG}; "
          f"a write every {res['write_every_s']:g} s)\n")
    print(fmt_table(res["rows"], [("what", "what"), ("requests_per_s", "requests/s"), ("questions_per_s", "questions/s"),
                                  ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("errors", "errors"),
                                  ("writes", "writes"), ("answers_during_writes", "answers during writes"),
                                  ("uncommitted", "from an uncommitted index"),
                                  ("outside_scope", "reader's answers outside its scope")]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Load on the HTTP API, on 127.0.0.1 (see the module docstring).")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--single-seconds", type=float, default=20)
    ap.add_argument("--write-every", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="bench/results/load.json")
    args = ap.parse_args(argv)
    res = run(args.clients, args.seconds, args.single_seconds, args.write_every, args.batch_size,
              log=lambda m: print(m, file=sys.stderr, flush=True))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"system": system_info(), "load": res}, ensure_ascii=False, indent=1))
    print_load(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
