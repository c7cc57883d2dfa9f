"""Commands on a big index beside the same commands on a tiny one (issue 15).

    python -m bench.run --only scale --scale-sizes 100000 --out bench/results/scale.json

Big indexes (100k and 1M chunks by default) are built with stub vectors, where the model would take
hours, but through the real store (`Writer.upsert` and `commit`, a commit every `--scale-commit`
chunks): chunk texts are ~3k passages cut from the shared DRCD (Simplified and Traditional) and
CMRC paragraphs with their real keyword terms (the engine's Segmenter), reused round-robin, five
chunks per document, and each document's first chunk opens with its own archive number, so the
vocabulary grows with the index; vectors are seeded random unit vectors. The tiny index
(`--scale-tiny`, 200 chunks) is made the same way, so size is the only difference. Cross-lingual
(USE) vectors are off for both unless `--scale-xl` (then a stub sentence table: a random 512-d
vector per chunk and per third of it).

Then, in rounds alternating tiny and big, each command runs as a user runs it, in a fresh process
with the real model: `search` (cold: wall time and peak RSS of the process), `add` of one small
new document, `remove` of one stub document, `check`, `optimize` (of a copy, since it merges the
segments the other commands see; "n/a" where the CLI has no such command), and the page's reload:
one process holds an Engine that has answered, another process adds a document, and the next
`Engine.search` (which loads the new commit) is timed. Reported: the
median of each, big/tiny, and big − tiny (for add and remove: the time beyond the model's load),
beside the goals of issue 15.

`--scale-milvus`: the same with every index's vectors in a Milvus collection (`build --vectors`),
on the embedded Milvus 2.3.5 server this section starts on 127.0.0.1:19530 (bench/milvus_server.py,
time tick 50 ms as the tests run it); stub folders `stub-N-milvus`. `optimize` of a copy shares the
original's collection, which a merge does not change.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import fmt_table, pct

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
POOL_SOURCES = ("drcd_dev_retrieval_simplified", "cmrc2018_trial_retrieval", "drcd_dev_retrieval_traditional")
QUESTIONS = EVAL / "drcd_dev_retrieval_simplified" / "queries.jsonl"
ENGLISH = "How should schools fight corruption?"  # with cross-lingual on: the USE route reads the sentence table
RELOADS = 3  # adds per round, each followed by the page's first search: the figures are their medians
POOL_SIZE = 3000
CHUNKS_PER_DOC = 5
PIECE_MIN, PIECE_MAX = 160, 300  # characters of a pool text: about a chunk of the engine's 256 tokens
XL_SENTENCES = 3  # stub sentences per chunk in the cross-lingual table
NOT_A_COMMAND = ("No such command", "invalid choice")
# issue 15: (measure, kind, limit); kind "ratio" = big/tiny at most limit, "beyond" = big − tiny at most limit s
GOALS = {
    100_000: [("search_s", "ratio", 1.5), ("search_rss_mib", "ratio", 1.5), ("search_en_s", "ratio", 1.5),
              ("search_en_rss_mib", "ratio", 1.5), ("add_s", "ratio", 1.5),
              ("remove_s", "ratio", 1.5), ("check_s", "ratio", 1.5), ("optimize_s", "ratio", 1.5),
              ("reload_s", "ratio", 1.5)],
    1_000_000: [("search_s", "ratio", 2.0), ("search_en_s", "ratio", 2.0), ("add_s", "beyond", 3.0),
                ("remove_s", "beyond", 3.0)],
}
MEASURES = [("search_s", "search (cold): wall s"), ("search_rss_mib", "search (cold): peak RSS MiB"),
            ("search_en_s", "search in English (cold): wall s"), ("search_en_rss_mib", "search in English: peak RSS MiB"),
            ("add_s", "add one small document: wall s"), ("add_rss_mib", "add: peak RSS MiB"),
            ("remove_s", "remove one document: wall s"), ("remove_rss_mib", "remove: peak RSS MiB"),
            ("check_s", "check: wall s"), ("check_rss_mib", "check: peak RSS MiB"),
            ("optimize_s", "optimize (a copy of the index): wall s"), ("optimize_rss_mib", "optimize: peak RSS MiB"),
            ("reload_s", "page: first search after an add, s"),
            ("warm_s", "page: a search before it (no change), s"),
            ("en_warm_s", "page: a question in English, warm, s")]


# ---------------------------------------------------------------- the stub index

@functools.lru_cache(maxsize=1)
def pool_texts(size: int = POOL_SIZE) -> list[str]:
    """Distinct passages of PIECE_MIN–PIECE_MAX characters cut at sentence ends from the shared sets."""
    out: dict[str, None] = {}
    for name in POOL_SOURCES:
        for line in (EVAL / name / "passages.jsonl").read_text(encoding="utf-8").splitlines():
            piece = ""
            for sentence in re.findall(r"[^。！？；]*[。！？；]+|[^。！？；]+$", json.loads(line)["text"]):
                piece += sentence
                while len(piece) > PIECE_MAX:
                    out[piece[:PIECE_MAX]] = None
                    piece = piece[PIECE_MAX:]
                if len(piece) >= PIECE_MIN:
                    out[piece] = None
                    piece = ""
            if len(out) >= size:
                return list(out)[:size]
    return list(out)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _stub_xl(rng: np.random.Generator, texts: list[str]):
    """A stub sentence table: a random USE vector per chunk and per third of its text."""
    from indexer.store.table import USE_DIM, PassageVectors

    spans = np.array([(len(t) * j // XL_SENTENCES, len(t) * (j + 1) // XL_SENTENCES)
                      for t in texts for j in range(XL_SENTENCES)], np.int32).reshape(-1, 2)
    return PassageVectors(_unit(rng, len(texts), USE_DIM), _unit(rng, len(spans), USE_DIM),
                          np.repeat(np.arange(len(texts), dtype=np.int64), XL_SENTENCES), spans)


def new_manifest(crosslingual: bool):
    """The manifest Indexer._new_store makes for the default settings and the default model, without
    loading the model (its name is what Encoder reports; its dimension from its config)."""
    from indexer.embedding import model_name, resolve_model
    from indexer.settings import IndexSettings

    model = resolve_model(None)
    dim = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    return IndexSettings(crosslingual=crosslingual).manifest(model_name(model), dim)


def build_stub(path: Path, n: int, crosslingual: bool = False, seed: int = 0, commit: int = 20_000,
               vectors: str | None = None) -> dict:
    """An index of `n` stub chunks at `path`, through Writer.upsert and a commit every `commit`
    chunks (its vectors in the Milvus collection at `vectors`, if given)."""
    from indexer.chunking import Chunk
    from indexer.engine import IndexSettings
    from indexer.analysis import Segmenter
    from indexer.reading import Document
    from indexer.store import Writer, lock
    from indexer.store.base import DocRecord, now

    start = time.perf_counter()
    segmenter = Segmenter.of(IndexSettings().keyword())
    pool = pool_texts()
    pool_terms = segmenter.terms_many(pool)
    pool_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    manifest = new_manifest(crosslingual)
    store = Writer.create(path, manifest, vectors=vectors)
    saves, since, done = [], 0, 0
    with lock(path):
        for d in range((n + CHUNKS_PER_DOC - 1) // CHUNKS_PER_DOC):
            picks = [(done + j) % len(pool) for j in range(min(CHUNKS_PER_DOC, n - done))]
            doc_id = f"stub/{d:07d}.txt"
            head = f"档案编号SC-{d:07d}。"
            texts = [head + pool[picks[0]], *(pool[i] for i in picks[1:])]
            terms = [segmenter.terms(head) + pool_terms[picks[0]], *(pool_terms[i] for i in picks[1:])]
            doc = Document(doc_id, "\n".join(texts), f"档案 {d}", doc_id, "utf-8",
                           {"type": "txt", "folder": "stub", "reader": "bench.scale stub"})
            chunks, at = [], 0
            for j, text in enumerate(texts):
                chunks.append(Chunk(chunk_id=f"{doc_id}#{j}", doc_id=doc_id, position=j, paragraph=j, section="",
                                    section_path=(), start=at, end=at + len(text), text=text))
                at += len(text) + 1
            record = DocRecord(doc_id=doc_id, content_hash=doc.content_hash, title=doc.title, origin=doc.origin,
                               encoding=doc.encoding, chunks=len(chunks), added=now(), chars=len(doc.text),
                               meta={**doc.meta, "size": len(doc.text.encode("utf-8"))})
            store.upsert(record, chunks, _unit(rng, len(chunks), manifest.dim), doc.text, terms,
                         _stub_xl(rng, texts) if crosslingual else None)
            done += len(chunks)
            since += len(chunks)
            if since >= commit or done == n:
                t = time.perf_counter()
                store.commit()
                saves.append(time.perf_counter() - t)
                since = 0
    return {"chunks": done, "documents": len(manifest.documents), "crosslingual": crosslingual,
            "index_kind": getattr(store, "index_kind", None), "seconds": round(time.perf_counter() - start, 1),
            "pool_s": round(pool_s, 1), "saves": len(saves), "save_s": round(sum(saves), 1),
            "last_save_s": round(saves[-1], 1), "disk_mib": round(_disk_mib(path))}


def _disk_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


# ---------------------------------------------------------------- running commands

# A process's ru_maxrss starts at its parent's peak (Linux carries the forked copy's high-water mark
# across exec), so each command is started by a small launcher and its peak read there.
LAUNCHER = ("import os, subprocess, sys, time; t = time.perf_counter(); p = subprocess.Popen(sys.argv[1:]); "
            "_, status, usage = os.wait4(p.pid, 0); "
            "print(f'\\n@usage {time.perf_counter() - t} {usage.ru_maxrss}', flush=True); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def timed(cmd: list[str], allow_missing: bool = False) -> tuple[float | None, float | None, str]:
    """(wall s, peak RSS MiB, output) of one command in a fresh process; (None, None, why) for a
    CLI command that does not exist when `allow_missing`; a RuntimeError for any other failure."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    out, _, usage = proc.stdout.rpartition("\n@usage ")
    if proc.returncode != 0:
        if allow_missing and any(s in out for s in NOT_A_COMMAND):
            return None, None, out.strip().splitlines()[-1]
        raise RuntimeError(f"{' '.join(cmd[2:])} failed: {out.strip()[-400:]}")
    wall, rss_kib = usage.split()
    return float(wall), int(rss_kib) / 1024, out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "indexer", *args]


def child(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.scale", *args]


def small_document(folder: Path, tag: str) -> Path:
    """A new small document (two paragraphs, about 400 characters) that no index holds yet."""
    pool = pool_texts()
    path = folder / f"small-{tag}.txt"
    n = sum(map(ord, tag))
    path.write_text(f"通知 {tag}\n{pool[n % len(pool)]}\n{pool[(n * 7 + 1) % len(pool)]}\n", encoding="utf-8")
    return path


def reload_probe(index: Path, question: str, docs: list[Path], english: str | None = None) -> dict:
    """What the page sees: an Engine that has answered (cold, then warm), then for each document
    a warm search, the document added by another process, and the next search, which loads the
    new commit; the medians (one search each is at the mercy of a busy moment). With `english`,
    also that question warm (the USE route reads the whole sentence table each time)."""
    from indexer.engine import Engine

    engine = Engine(index)
    engine.search(question)  # cold: the model and the index load
    generation = lambda q: engine.query([q], 5)[0].generation  # noqa: E731 - answer, and say from which commit
    out = {}
    if english:
        generation(english)
        out["en_warm_s"] = float(np.median([_clocked(generation, english)[0] for _ in range(RELOADS)]))
    warm, reload = [], []
    for doc in docs:
        seconds, before = _clocked(generation, question)
        warm.append(seconds)
        timed(cli("add", str(doc), "--index", str(index)))
        seconds, after = _clocked(generation, question)
        reload.append(seconds)
        if after == before:
            raise RuntimeError(f"{index}: the search after an add still answered from {before}")
    return {**out, "warm_s": float(np.median(warm)), "reload_s": float(np.median(reload))}


def _clocked(call, *args):
    """(wall seconds, result) of one call."""
    t = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - t, result


def run_commands(index: Path, question: str, work: Path, tag: str, remove_id: str, optimize: bool = True,
                 english: bool = False) -> dict:
    """One round of the user's commands on one index: wall s and peak RSS MiB of each (`optimize`
    False leaves out the merge of everything, which at 1M chunks takes longer than the rest;
    `english` adds a search in English, which takes the USE route where the index keeps one)."""
    ix = ["--index", str(index)]
    row = {"load_avg": round(os.getloadavg()[0], 2)}  # the machine is shared: how busy it was
    asked = [("search", cli("search", question, *ix))] + ([("search_en", cli("search", ENGLISH, *ix))] if english else [])
    for name, cmd in (*asked,
                      ("add", cli("add", str(small_document(work, f"{tag}-add")), *ix)),
                      ("remove", cli("remove", remove_id, *ix)), ("check", cli("check", *ix))):
        row[f"{name}_s"], row[f"{name}_rss_mib"], _ = timed(cmd)
    copy = work / f"optimize-{tag}"  # optimize merges the segments: on a copy, so every round sees the same index
    if optimize:
        shutil.copytree(index, copy)
        try:
            row["optimize_s"], row["optimize_rss_mib"], _ = timed(cli("optimize", "--index", str(copy)),
                                                                  allow_missing=True)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    docs = [str(small_document(work, f"{tag}-reload{i}")) for i in range(RELOADS)]
    _, _, out = timed(child("reload", str(index), question, *docs, *(["--english", ENGLISH] if english else [])))
    row.update(json.loads(out.strip().splitlines()[-1]))
    return row


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(pct(values, 50), 3) if values else None


def goals_for(n: int) -> int:
    """The size whose goals apply to `n` chunks (development sizes take those of 100k)."""
    return 1_000_000 if n >= 1_000_000 else 100_000


def compare(tiny: list[dict], big: list[dict], n: int) -> list[dict]:
    """Per measure: the medians, big/tiny, big − tiny, and the goal of issue 15 for this size."""
    goals = {key: (kind, limit) for key, kind, limit in GOALS[goals_for(n)]}
    rows = []
    for key, label in MEASURES:
        a, b = _median(tiny, key), _median(big, key)
        if a is None and b is None and key.startswith("search_en"):
            continue  # cross-lingual off: no English search was run
        ratio = round(b / a, 2) if a and b is not None else None
        beyond = round(b - a, 2) if a is not None and b is not None else None
        row = {"measure": label, "key": key, "tiny": "n/a" if a is None else a, "big": "n/a" if b is None else b,
               "ratio": ratio, "beyond": beyond}
        if key in goals:
            kind, limit = goals[key]
            got = ratio if kind == "ratio" else beyond
            row["goal"] = f"≤ {limit}×" if kind == "ratio" else f"≤ +{limit} s"
            row["met"] = "n/a" if got is None else ("yes" if got <= limit else "NO")
        rows.append(row)
    return rows


def _record(index: Path) -> Path:
    """The file beside a stub index that keeps its build figures and how many stub documents the
    rounds have removed."""
    return index.with_name(index.name + ".build.json")


def next_removal(index: Path) -> str:
    """A stub document still in the index, counted off in its record (indexes are reused)."""
    record = _record(index)
    info = json.loads(record.read_text())
    removed = info.get("removed", 0)
    record.write_text(json.dumps({**info, "removed": removed + 1}))
    docs = info["documents"]
    return f"stub/{(docs // 2 + removed) % docs:07d}.txt"


def _built(path: Path, n: int, crosslingual: bool, seed: int, commit: int, log, vectors: str | None = None) -> dict:
    """The stub index at `path`, built in a fresh process (its wall time and peak RSS), or the
    one built there before (its record kept beside it)."""
    from indexer.store import exists

    record = _record(path)
    if record.is_file() and exists(path):
        log(f"  reusing {path}")
        return {**json.loads(record.read_text()), "reused": True}
    shutil.rmtree(path, ignore_errors=True)
    wall, rss, out = timed(child("build", str(path), str(n), "--seed", str(seed), "--commit", str(commit),
                                 *(["--xl"] if crosslingual else []), *(["--vectors", vectors] if vectors else [])))
    info = {**json.loads(out.strip().splitlines()[-1]), "wall_s": round(wall, 1), "peak_rss_mib": round(rss)}
    record.write_text(json.dumps(info))
    log(f"  built {path}: {info}")
    return info


def section(sizes: list[int], tiny: int = 200, rounds: int = 2, crosslingual: bool = False, seed: int = 0,
            commit: int = 20_000, keep: Path | None = None, log=print, save_partial=None,
            optimize: bool = True, milvus: bool = False) -> dict:
    """Per big size: the stub builds, then `rounds` rounds of the commands, tiny and big alternating."""
    question = json.loads(QUESTIONS.read_text(encoding="utf-8").splitlines()[0])["query"]
    out = {"question": question, "crosslingual": crosslingual, "rounds": rounds, "tiny_chunks": tiny, "sizes": {},
           "vectors": "milvus" if milvus else "faiss"}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, contextlib.ExitStack() as stack:
        base = Path(keep) if keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        suffix = ("-xl" if crosslingual else "") + ("-milvus" if milvus else "")
        if milvus:
            stack.enter_context(_milvus_server(base / "milvus-data", log))
        for n in sizes:
            indexes = {"tiny": base / f"stub-{tiny}{suffix}", "big": base / f"stub-{n}{suffix}"}
            builds = {label: _built(path, size, crosslingual, seed, commit, log,
                                    f"milvus://127.0.0.1:19530/{path.name.replace('-', '_')}" if milvus else None)
                      for (label, path), size in zip(indexes.items(), (tiny, n))}
            runs: dict[str, list[dict]] = {"tiny": [], "big": []}
            for r in range(rounds):
                for label in ("tiny", "big") if r % 2 == 0 else ("big", "tiny"):
                    tag = f"{n}-{label}-{r}-{time.time_ns()}"
                    row = run_commands(indexes[label], question, Path(tmp), tag, next_removal(indexes[label]), optimize,
                                       english=crosslingual)
                    runs[label].append(row)
                    log(f"  {label} ({builds[label]['chunks']:,} chunks), round {r + 1}: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if v is not None))
            out["sizes"][str(n)] = {"builds": builds, "runs": runs, "rows": compare(runs["tiny"], runs["big"], n)}
            if save_partial:
                save_partial("scale", out)
    return out


@contextlib.contextmanager
def _milvus_server(data: Path, log):
    """The embedded Milvus server, its data kept in `data` (beside kept stub indexes)."""
    from .milvus_server import FAST_CONFIG, MilvusServer

    server = MilvusServer(data, FAST_CONFIG)
    server.start(timeout=300)
    log(f"  Milvus server up at {server.uri}, data in {data}")
    try:
        yield server
    finally:
        server.stop()


def print_scale(res: dict) -> None:
    xl = "on in both (stub sentence tables)" if res["crosslingual"] else "off in both (--scale-xl: on)"
    for n, r in res["sizes"].items():
        b = r["builds"]
        print(f"\n### Scale: {int(n):,} chunks beside {b['tiny']['chunks']:,} (stub vectors through the real store; "
              f"cross-lingual {xl}; vectors in {res.get('vectors', 'faiss')}; median of {res['rounds']} rounds, "
              f"alternating; goals: issue 15's for "
              f"{goals_for(int(n)):,})\n")
        print(fmt_table(r["rows"], [("measure", "command"), ("tiny", "tiny"), ("big", f"{int(n):,}"),
                                    ("ratio", "big / tiny"), ("beyond", "big − tiny"), ("goal", "goal"),
                                    ("met", "met")]))
        print("\n" + fmt_table([{"index": k, **v} for k, v in b.items()],
                               [("index", "stub build"), ("chunks", "chunks"), ("documents", "documents"),
                                ("index_kind", "vectors"), ("wall_s", "wall s"), ("save_s", "of it in saves s"),
                                ("saves", "saves"), ("last_save_s", "last save s"), ("peak_rss_mib", "peak RSS MiB"),
                                ("disk_mib", "disk MiB"), ("reused", "reused")]))


def main(argv: list[str] | None = None) -> int:
    """The child processes of this section: `build PATH N` (prints its record) and `reload INDEX
    QUESTION FILE…` (prints the page's timings), one JSON line each."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=main.__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build")
    b.add_argument("path", type=Path)
    b.add_argument("n", type=int)
    b.add_argument("--xl", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--commit", type=int, default=20_000)
    b.add_argument("--vectors")
    p = sub.add_parser("reload")
    p.add_argument("index", type=Path)
    p.add_argument("question")
    p.add_argument("docs", type=Path, nargs="+")
    p.add_argument("--english")
    args = ap.parse_args(argv)
    if args.what == "build":
        result = build_stub(args.path, args.n, args.xl, args.seed, args.commit, args.vectors)
    else:
        result = reload_probe(args.index, args.question, args.docs, args.english)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
