"""Phrase and exclusion questions on a big index.

    python -m bench.phrases /tmp/bench-scale/stub-100000     # narrowed by posting lists, against reading every text
    python -m bench.phrases /tmp/bench-scale/stub-1000000 --compare 0d898a2   # this tree beside a revision

The first form times each question with its phrases' bigram posting lists narrowing the rows, and
with the store's `rows_with_terms` switched off (every allowed text read), alternating in one
process. `--compare REV` times the questions from this tree and from REV instead, each tree in a
fresh process that loads the index once, the trees alternating; best of three searches each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_line

QUESTIONS = ('"党组织" 学校', '"历史" 文化', '"中国" 发展', '台湾 -"台北"', '学校 -学生')


def narrowed_against_scan(index: str, rounds: int) -> None:
    from indexer.engine import Engine

    engine = Engine(index)
    engine.search("学校", k=5)  # the model and the index load
    store = engine.store
    narrowed = store.rows_with_terms
    print(machine_line() + "\n")
    print("| question | postings ms | every text ms | hits |\n|---|---|---|---|")
    for _ in range(rounds):
        for question in QUESTIONS:
            times = []
            for how in (narrowed, lambda terms: None):
                store.rows_with_terms = how
                engine.searcher.publish(store)  # a fresh view: no folded texts kept from the other way
                start = time.perf_counter()
                hits = engine.search(question, k=5)
                times.append((time.perf_counter() - start) * 1e3)
            print(f"| {question} | {times[0]:.0f} | {times[1]:.0f} | {len(hits)} |", flush=True)


def timed_here(index: str) -> dict[str, tuple[float, int]]:
    """Each question's best of three searches (ms) and its hit count, in this process."""
    from indexer.engine import Engine

    engine = Engine(index)
    engine.search("学校", k=5)
    out = {}
    for question in QUESTIONS:
        times, hits = [], []
        for _ in range(3):
            start = time.perf_counter()
            hits = engine.search(question, k=5)
            times.append((time.perf_counter() - start) * 1e3)
        out[question] = (round(min(times)), len(hits))
    return out


def against_revision(index: str, rev: str, rounds: int) -> None:
    from .speed import _alternating, _trees

    revs = ["HEAD", rev]
    runs: dict[str, list[dict]] = {r: [] for r in revs}
    with tempfile.TemporaryDirectory(prefix="bench-phrases-") as tmp, _trees(revs, Path(tmp)) as trees:
        for _, r in _alternating(revs, rounds):
            proc = subprocess.run([sys.executable, __file__, index, "--here"], cwd=trees[r], capture_output=True,
                                  text=True, check=True, env={**os.environ, "PYTHONPATH": str(trees[r])})  # its indexer
            runs[r].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(machine_line() + "\n")
    print(f"| question | this tree ms | {rev} ms | hits |\n|---|---|---|---|")
    for q in QUESTIONS:
        best = {r: min(run[q][0] for run in runs[r]) for r in revs}
        print(f"| {q} | {best['HEAD']:.0f} | {best[rev]:.0f} | {runs['HEAD'][0][q][1]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", metavar="REV", help="time this tree beside REV instead")
    ap.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # one tree's child: JSON out
    args = ap.parse_args()
    if args.here:
        print(json.dumps(timed_here(args.index), ensure_ascii=False))
    elif args.compare:
        against_revision(args.index, args.compare, args.rounds)
    else:
        narrowed_against_scan(args.index, args.rounds)


if __name__ == "__main__":
    main()
