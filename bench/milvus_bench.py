"""Milvus (embedded 2.3 server) beside FAISS on one machine: insert rate, query latency, recall@10.

    python -m bench.milvus_bench                       # 200,000 vectors, starts `milvus-server` itself
    python -m bench.milvus_bench --n 20000 --quick     # a smoke run
    python -m bench.milvus_bench --uri http://HOST:19530   # an existing server (its collection is dropped after)
    python -m bench.milvus_bench --eval speech-zh,speech-en,cmrc,drcd   # the same index, vectors in FAISS or Milvus

Data: N random unit vectors in 384 dimensions, drawn from the e5-shaped Gaussian mixture of
bench/faiss_bench.py (`--data uniform` for plain uniform directions, on which every ANN index looks
worse than on text embeddings). Queries are fresh draws; recall@10 is against exact FAISS search.

Measured per index, in one run on the same data:
  FAISS flat / HNSW (M=32, efConstruction=80, efSearch=128: the store's settings), in process;
  Milvus FLAT / HNSW with the same parameters, over gRPC on 127.0.0.1, metric IP.
  insert: rows/s of the inserts (FAISS: add; Milvus: insert calls of 5,000 rows, then flush);
  index: seconds to build the index after the insert (FAISS HNSW builds while adding);
  p50/p95: one query at a time (nq=1, k=10), client-observed; Milvus both at consistency
  Strong (what the store uses) and Bounded; recall@10 over all queries.
Writes bench/results/milvus.json and prints a markdown table.

--eval: retrieval quality on real sets with the vectors in FAISS files or in Milvus. Each set's
passages are embedded once into a folder index (the speech with its cross-lingual index, for the
English questions), which is copied as it is into a second folder whose vectors a milvus-lite
collection keeps (records, postings and sentence tables are the same code). Hit@1 / Hit@3 /
Recall@10 / MRR@10 of each, per mode; writes bench/results/milvus_eval.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from .common import fmt_table, ms, pct, system_info
from .milvus_server import MilvusServer, ServerError, port_open

D, K = 384, 10
HNSW_M, HNSW_EFC, HNSW_EF = 32, 80, 128  # as indexer/store/segment.py and milvus_vectors.py use them
INSERT_BATCH = 5000
OUT = Path(__file__).resolve().parent / "results" / "milvus.json"
OUT_EVAL = Path(__file__).resolve().parent / "results" / "milvus_eval.json"
ROOT = Path(__file__).resolve().parent.parent
SHARED_EVAL = ROOT.parent / "shared" / "eval"
CORPORA = {  # name: (documents, keep the cross-lingual index)
    "speech": ([ROOT / "data" / "speech.txt"], True),
    "cmrc": ([SHARED_EVAL / "cmrc2018_trial_retrieval" / "passages.jsonl"], False),
    "drcd": ([SHARED_EVAL / "drcd_dev_retrieval_simplified" / "passages.jsonl"], False),
}
EVAL_SETS = {  # name: (corpus, labelled questions)
    "speech-zh": ("speech", ROOT / "tests" / "data" / "speech_qa_zh.jsonl"),
    "speech-en": ("speech", ROOT / "tests" / "data" / "speech_qa_en.jsonl"),
    "cmrc": ("cmrc", SHARED_EVAL / "cmrc2018_trial_retrieval" / "queries.jsonl"),
    "drcd": ("drcd", SHARED_EVAL / "drcd_dev_retrieval_simplified" / "queries.jsonl"),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def data(n: int, n_queries: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "mixture":
        from .faiss_bench import mixture

        return mixture(n, seed, n_queries=n_queries)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + n_queries, D), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return round(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, gt)])), 4)


def latencies(search, xq: np.ndarray, n: int) -> tuple[float, float]:
    for q in xq[:5]:
        search(q[None, :])
    times = []
    for q in xq[:n]:
        t = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - t)
    return ms(pct(times, 50)), ms(pct(times, 95))


def bench_faiss(xb, xq, gt, n_latency: int) -> list[dict]:
    rows = []
    flat = faiss.IndexFlatIP(D)
    t = time.perf_counter()
    flat.add(xb)
    secs = time.perf_counter() - t
    p50, p95 = latencies(lambda q: flat.search(q, K), xq, n_latency)
    rows.append({"engine": "FAISS (in process)", "index": "flat (exact)", "insert_rows_s": len(xb) / secs,
                 "index_s": 0.0, "p50_ms": p50, "p95_ms": p95, "recall@10": 1.0})
    log(f"  faiss flat: {rows[-1]}")
    del flat
    hnsw = faiss.IndexHNSWFlat(D, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EFC
    t = time.perf_counter()
    hnsw.add(xb)
    secs = time.perf_counter() - t
    hnsw.hnsw.efSearch = HNSW_EF
    p50, p95 = latencies(lambda q: hnsw.search(q, K), xq, n_latency)
    rows.append({"engine": "FAISS (in process)", "index": f"HNSW M={HNSW_M} efC={HNSW_EFC} ef={HNSW_EF}",
                 "insert_rows_s": len(xb) / secs, "index_s": round(secs, 1), "p50_ms": p50, "p95_ms": p95,
                 "recall@10": recall(hnsw.search(xq, K)[1], gt), "note": "index built while adding"})
    log(f"  faiss hnsw: {rows[-1]}")
    return rows


def bench_milvus(uri: str, xb, xq, gt, n_latency: int, server: MilvusServer | None) -> tuple[list[dict], dict]:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri, timeout=10)
    name = "bench_milvus_vectors"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=D)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    facts = {"server_version": client.get_server_version()}

    t = time.perf_counter()
    for start in range(0, len(xb), INSERT_BATCH):
        block = xb[start:start + INSERT_BATCH]
        client.insert(name, [{"id": start + i, "vector": v} for i, v in enumerate(block.tolist())])
    insert_s = time.perf_counter() - t
    t = time.perf_counter()
    client.flush(name)
    flush_s = time.perf_counter() - t
    facts.update(insert_s=round(insert_s, 1), flush_s=round(flush_s, 1))
    log(f"  milvus: inserted {len(xb):,} in {insert_s:.1f}s, flush {flush_s:.1f}s")

    def measure(label: str, params: dict, index_s: float) -> list[dict]:
        def search(q, level):
            return client.search(name, data=q.tolist(), limit=K, search_params={"metric_type": "IP", "params": params},
                                 consistency_level=level)

        out = []
        ids = []
        for start in range(0, len(xq), 100):
            res = search(xq[start:start + 100], "Bounded")
            ids.extend([[h["id"] for h in hits] for hits in res])
        rec = recall(np.array(ids), gt)
        for level in ("Strong", "Bounded"):
            p50, p95 = latencies(lambda q: search(q, level), xq, n_latency)
            out.append({"engine": f"Milvus {facts['server_version']} (gRPC, {level})", "index": label,
                        "insert_rows_s": len(xb) / (insert_s + flush_s), "index_s": round(index_s, 1),
                        "p50_ms": p50, "p95_ms": p95, "recall@10": rec})
            log(f"  milvus {label} {level}: {out[-1]}")
        return out

    rows = measure("FLAT (exact)", {}, 0.0)
    if server:
        facts["server_rss_mb_flat"] = round(server.rss_mb())

    client.release_collection(name)
    client.drop_index(name, "vector")
    index = client.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": HNSW_M, "efConstruction": HNSW_EFC})
    t = time.perf_counter()
    client.create_index(name, index)
    while True:
        info = client.describe_index(name, "vector")
        if info.get("state") == "Finished" and info.get("indexed_rows", 0) >= info.get("total_rows", 1):
            break
        if info.get("state") == "Failed":
            raise SystemExit(f"Milvus index build failed: {info}")
        time.sleep(1)
    client.load_collection(name)
    index_s = time.perf_counter() - t
    log(f"  milvus: HNSW built and loaded in {index_s:.1f}s")
    rows += measure(f"HNSW M={HNSW_M} efC={HNSW_EFC} ef={HNSW_EF}", {"ef": HNSW_EF}, index_s)
    if server:
        facts["server_rss_mb_hnsw"] = round(server.rss_mb())
    client.drop_collection(name)
    client.close()
    return rows, facts


def bench_eval(names: list[str], workdir: Path, modes=("hybrid", "dense", "bm25")) -> list[dict]:
    """Evaluation figures of one folder index with its vectors in FAISS files and in milvus-lite."""
    from indexer.embedding import Encoder
    from indexer.engine import Engine, IndexSettings
    from indexer.evaluation import evaluate, read_labelled

    from .milvus_server import SameQueries, copy_into

    encoder = SameQueries(Encoder())
    stores: dict[str, dict[str, Path]] = {}
    for corpus in dict.fromkeys(EVAL_SETS[n][0] for n in names):
        paths, xl = CORPORA[corpus]
        folder = workdir / corpus
        t = time.perf_counter()
        Engine(folder, encoder=encoder, settings=IndexSettings(crosslingual=xl)).build(paths)
        log(f"  {corpus}: folder index built in {time.perf_counter() - t:.1f}s")
        copy_into(folder, workdir / f"{corpus}-milvus", f"milvus-lite://{workdir}/{corpus}.db?collection={corpus}")
        stores[corpus] = {"FAISS files": folder, "milvus-lite collection": workdir / f"{corpus}-milvus"}
    rows = []
    for name in names:
        corpus, questions = EVAL_SETS[name]
        labels = read_labelled(questions)
        for mode in modes:
            for label, where in stores[corpus].items():
                engine = Engine(where, encoder=encoder)
                t = time.perf_counter()
                m = evaluate(engine, labels, mode)
                rows.append({"set": f"{name} ({len(labels)})", "mode": mode, "vectors": label,
                             "figures": " / ".join(f"{m[k]:.3f}" for k in ("hit@1", "hit@3", "recall@10", "mrr@10")),
                             "s": round(time.perf_counter() - t, 1),
                             **{k: round(v, 4) for k, v in m.items() if k != "n"}})
                log(f"  {rows[-1]['set']} {mode} {label}: {rows[-1]['figures']}")
    return rows


EVAL_COLUMNS = [("set", "set (questions)"), ("mode", "mode"), ("vectors", "vectors"),
                ("figures", "Hit@1 / Hit@3 / Recall@10 / MRR@10"), ("s", "eval s")]


COLUMNS = [("engine", "engine"), ("index", "index"), ("insert_rows_s", "insert rows/s"),
           ("index_s", "index build s"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("recall@10", "recall@10")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall@10")
    ap.add_argument("--latency", type=int, default=200, help="single queries timed per index")
    ap.add_argument("--data", choices=("mixture", "uniform"), default="mixture")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uri", help="an existing Milvus (default: start the embedded server)")
    ap.add_argument("--quick", action="store_true", help="fewer queries (smoke run)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--eval", metavar="SETS", help=f"evaluate FAISS and Milvus vectors instead, on these sets "
                    f"(comma-separated: {', '.join(EVAL_SETS)})")
    args = ap.parse_args(argv)
    if args.eval:
        names = [n.strip() for n in args.eval.split(",") if n.strip()]
        unknown = [n for n in names if n not in EVAL_SETS]
        if unknown or not names:
            raise SystemExit(f"--eval: unknown set {unknown[:1]}; choose from {', '.join(EVAL_SETS)}")
        t0 = time.perf_counter()
        result = {"system": system_info()}
        with tempfile.TemporaryDirectory(prefix="milvus-eval-") as tmp:
            rows = bench_eval(names, Path(tmp))
        result.update(rows=rows, total_s=round(time.perf_counter() - t0, 1),
                      load_avg_at_end=[round(x, 2) for x in os.getloadavg()])
        print(fmt_table(rows, EVAL_COLUMNS))
        out = args.out or OUT_EVAL
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"\n→ {out}")
        return 0
    args.out = args.out or OUT
    if args.quick:
        args.queries, args.latency = 200, 50
    result = {"system": system_info(), "n": args.n, "dim": D, "data": args.data, "queries": args.queries,
              "latency_queries": args.latency}
    t0 = time.perf_counter()
    xb, xq = data(args.n, args.queries, args.data, args.seed)
    exact = faiss.IndexFlatIP(D)
    exact.add(xb)
    gt = exact.search(xq, K)[1]
    del exact
    log(f"data: {args.n:,} x {D} ({args.data}) in {time.perf_counter() - t0:.1f}s")
    rows = bench_faiss(xb, xq, gt, args.latency)
    if args.uri:
        milvus_rows, facts = bench_milvus(args.uri, xb, xq, gt, args.latency, None)
    else:
        if port_open():
            raise SystemExit("port 19530 is in use: stop the other Milvus first, or pass --uri")
        with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
            server = MilvusServer(Path(tmp) / "data")  # default settings (200 ms time tick), as a cluster ships
            try:
                server.start(timeout=300)
            except ServerError as exc:
                raise SystemExit(str(exc)) from None
            try:
                milvus_rows, facts = bench_milvus(server.uri, xb, xq, gt, args.latency, server)
            finally:
                server.stop()
    rows += milvus_rows
    for r in rows:
        r["insert_rows_s"] = round(r["insert_rows_s"])
    result.update(rows=rows, milvus=facts, total_s=round(time.perf_counter() - t0, 1),
                  load_avg_at_end=[round(x, 2) for x in os.getloadavg()])
    table = fmt_table(rows, COLUMNS)
    print(f"{args.n:,} vectors x {D} ({args.data}), k={K}, {args.latency} single queries, "
          f"recall over {args.queries} queries\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"\n→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
