"""The store's own approximate indexes (indexer.store.segment.build_faiss_index), IVF against HNSW,
on the faiss section's e5-shaped mixture: build time, recall@10 against exact search over 1,000
queries, and one query's p50 over 300.

    python -m bench.store_ann 1000000          # also: 200000, or several sizes
"""
from __future__ import annotations

import argparse
import time

from indexer.store.segment import build_faiss_index

from .common import machine_line
from .faiss_bench import K, _latency, _recall, mixture


def measure(n: int, kinds: tuple[str, ...] = ("ivf", "hnsw")) -> list[dict]:
    xb, xq = mixture(n, 0, n_queries=1000)
    _, gt = build_faiss_index(xb, "flat").search(xq, K)  # exact: the ten true nearest
    rows = []
    for kind in kinds:
        start = time.perf_counter()
        index = build_faiss_index(xb, kind)
        build = time.perf_counter() - start
        recall = _recall(index, xq, gt)
        p50, _ = _latency(index, xq, 300)
        rows.append({"n": n, "kind": kind, "build_s": round(build, 1), "recall@10": round(recall, 4), "p50_ms": p50})
        print(f"| {n:,} | {kind} | {build:.1f} | {recall:.4f} | {p50} |", flush=True)
        del index
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", type=int, nargs="+")
    args = ap.parse_args()
    print(machine_line() + "\n")
    print("| vectors | kind | build s | recall@10 | p50 ms |\n|---|---|---|---|---|")
    for n in args.sizes:
        measure(n)


if __name__ == "__main__":
    main()
