"""`optimize` of a big index: wall time and peak memory, split into anonymous memory and mapped
file pages (both count in RSS, but the kernel can drop clean file pages; anonymous memory it
cannot), this tree beside a revision, each on a fresh copy of the index, alternating.

    python -m bench.optimize_memory /tmp/bench-scale/stub-1000000 --compare 9f62e2e
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_line
from .speed import _alternating, _trees

FIELDS = ("RssAnon", "RssFile")


def _status(pid: int) -> dict[str, float]:
    """RssAnon and RssFile of a process now, MiB (empty once it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in lines) if k in FIELDS}


def optimize_copy(tree: Path, index: Path, work: Path) -> dict:
    """One `python -m indexer optimize` from `tree` on a copy of `index`, sampled every 50 ms."""
    copy = work / "copy"
    shutil.copytree(index, copy)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "indexer", "optimize", "--index", str(copy)], cwd=tree,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = dict.fromkeys(FIELDS, 0.0)
        while proc.poll() is None:
            for k, v in _status(proc.pid).items():
                peak[k] = max(peak[k], v)
            time.sleep(0.05)
        out = proc.stdout.read().strip()
        if proc.returncode:
            raise RuntimeError(f"optimize from {tree} failed: {out[-300:]}")
        return {"wall_s": round(time.perf_counter() - start, 1), **{k: round(v) for k, v in peak.items()}}
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path)
    ap.add_argument("--compare", metavar="REV", required=True)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    revs = ["HEAD", args.compare]
    print(machine_line() + "\n")
    print("| tree | wall s | peak anonymous MiB | peak mapped file MiB |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-optimize-", dir="/tmp") as tmp, _trees(revs, Path(tmp)) as trees:
        for _, rev in _alternating(revs, args.rounds):
            row = optimize_copy(trees[rev], args.index, Path(tmp))
            print(f"| {rev} | {row['wall_s']} | {row['RssAnon']:,} | {row['RssFile']:,} |", flush=True)


if __name__ == "__main__":
    main()
