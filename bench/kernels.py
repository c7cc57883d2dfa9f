"""Which kernel settings change the numbers: the same computations run in fresh processes under
lower SIMD levels, each compared with the machine's own.

    python -m bench.kernels                   # the settings below, on the speech index (indexes/default)

Another CPU sums a product in another order; so does this CPU told to use narrower kernels. Each
setting here is one a library reads at start-up: OpenBLAS's core type (numpy's matrix products),
oneDNN's widest instruction set (torch: the USE encoder's bulk forward), FAISS's SIMD level, and
all of them at once. For each computation the table gives the largest difference from the
machine's own run (0: every bit the same). The test suite is meant to pass under every row
(`ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell FAISS_OPT_LEVEL=AVX2 make test`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import fmt_table

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "this CPU's own": {},
    "OPENBLAS_CORETYPE=Haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "FAISS_OPT_LEVEL=AVX2": {"FAISS_OPT_LEVEL": "AVX2"},
    "all three": {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2", "FAISS_OPT_LEVEL": "AVX2"},
}
QUESTIONS = ["私立学校怎样建立党组织？", "如何加强党风廉政建设", "逢年过节要提醒干部什么", "三会一课",
             "How should private schools set up Party organisations?", "What are the rules on integrity?"]


def probe(index: str) -> dict[str, list]:
    """Every computation once, in this process: what the parent compares."""
    import faiss

    from indexer.crosslingual import USEEncoder
    from indexer.embedding import Encoder
    from indexer.engine import Engine

    rng = np.random.default_rng(0)
    base = rng.standard_normal((2000, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:40] + 0.1 * rng.standard_normal((40, 384)).astype(np.float32)
    flat = faiss.IndexFlatIP(384)
    flat.add(base)
    engine = Engine(index)
    passages = [c.text for c in engine.store.all_chunks()]
    encoder = Encoder()
    use = USEEncoder()
    return {
        "numpy matmul (OpenBLAS)": (queries @ base.T).ravel().tolist(),
        "FAISS flat, 1 query": flat.search(queries[:1], 10)[0].ravel().tolist(),
        "FAISS flat, 40 queries": flat.search(queries, 10)[0].ravel().tolist(),
        "e5 questions": encoder.encode_queries(QUESTIONS).ravel().tolist(),
        "e5 passages": encoder.encode_documents(passages[:16]).ravel().tolist(),
        "USE questions (numpy)": use.encode_queries(QUESTIONS).ravel().tolist(),
        "USE passages (torch)": use.encode_documents((passages * 5)[:100]).ravel().tolist(),  # > bulk: torch
        "hybrid scores": [h.score for r in engine.query(QUESTIONS, k=10) for h in r.hits],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "default"))
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.index)))
        return 0
    runs = {}
    for name, env in SETTINGS.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "bench.kernels", "--probe", "--index", args.index], cwd=ROOT,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, check=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    own = runs["this CPU's own"]
    rows = []
    for what in own:
        row = {"what": what}
        for name in SETTINGS:
            a, b = np.asarray(own[what]), np.asarray(runs[name][what])
            row[name] = "length differs" if a.shape != b.shape else f"{float(np.max(np.abs(a - b))):.1e}"
        rows.append(row)
    print("\n### The largest difference from this CPU's own kernels (0: every bit the same)\n")
    print(fmt_table(rows, [("what", "computation")] + [(name, name) for name in SETTINGS if name != "this CPU's own"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
