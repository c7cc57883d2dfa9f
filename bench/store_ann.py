"""The store's own approximate indexes (indexer.store.segment.build_faiss_index), IVF against HNSW,
on the faiss section's e5-shaped mixture: build time, recall@10 against exact search over 1,000
queries, and one query's p50 over 300.

    python -m bench.store_ann 1000000          # also: 200000, or several sizes
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from indexer.store.segment import build_faiss_index

from .faiss_bench import mixture


def measure(n: int, kinds: tuple[str, ...] = ("ivf", "hnsw")) -> list[dict]:
    xb, xq = mixture(n, 0, n_queries=1000)
    gt = np.concatenate([np.argpartition(-(xq[s:s + 100] @ xb.T), 10, axis=1)[:, :10] for s in range(0, len(xq), 100)])
    rows = []
    for kind in kinds:
        start = time.perf_counter()
        index = build_faiss_index(xb, kind)
        build = time.perf_counter() - start
        _, found = index.search(xq, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, gt)]))
        times = []
        for q in xq[:300]:
            start = time.perf_counter()
            index.search(q[None], 10)
            times.append(time.perf_counter() - start)
        rows.append({"n": n, "kind": kind, "build_s": round(build, 1), "recall@10": round(recall, 4),
                     "p50_ms": round(float(np.median(times)) * 1e3, 2)})
        print(f"| {n:,} | {kind} | {build:.1f} | {recall:.4f} | {np.median(times) * 1e3:.2f} |", flush=True)
        del index
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", type=int, nargs="+")
    args = ap.parse_args()
    print("| vectors | kind | build s | recall@10 | p50 ms |\n|---|---|---|---|---|")
    for n in args.sizes:
        measure(n)


if __name__ == "__main__":
    main()
