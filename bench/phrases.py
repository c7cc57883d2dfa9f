"""Phrase questions on a big index: narrowed by their bigrams' posting lists, against reading
every allowed text (the store's `rows_with_terms` switched off), alternating in one process.

    python -m bench.phrases /tmp/bench-scale/stub-100000     # a stub index of the scale section
"""
from __future__ import annotations

import argparse
import time

QUESTIONS = ('"党组织" 学校', '"历史" 文化', '"中国" 发展', '台湾 -"台北"')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from indexer.engine import Engine

    engine = Engine(args.index)
    engine.search("学校", k=5)  # the model and the index load
    store = engine.store
    narrowed = store.rows_with_terms
    print("| question | postings ms | every text ms | hits |\n|---|---|---|---|")
    for _ in range(args.rounds):
        for question in QUESTIONS:
            times = []
            for how in (narrowed, lambda terms: None):
                store.rows_with_terms = how
                engine._view = None  # no folded texts kept from the other way
                start = time.perf_counter()
                hits = engine.search(question, k=5)
                times.append((time.perf_counter() - start) * 1e3)
            print(f"| {question} | {times[0]:.0f} | {times[1]:.0f} | {len(hits)} |", flush=True)


if __name__ == "__main__":
    main()
