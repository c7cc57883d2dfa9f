"""What the fused parts cost a question: hybrid questions asked one at a time, as a person asks,
with the default fusion and with its later parts switched off, taking turns in one process on one
index (same encoders, same caches), so the ratios compare like with like.

    python -m bench.fusion_cost                      # the policy notices (documents and passages) and the speech
    python -m bench.fusion_cost --keep /tmp/ncp      # reuse the indexes bench.ncp_labels keeps there

Settings: `default` (every part), `without wording` (FusionSettings.wording_share 0) and `without
document and wording` (doc_share 0 too: the fusion before the policy-notice work).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from indexer.engine import Engine
from indexer.evaluation import read_labelled
from indexer.results import SearchOptions

from .common import build_once, machine_line, pct, work_folder
from .ncp_labels import SETS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"default": {}, "without wording": {"wording_share": 0.0},
            "without document and wording": {"doc_share": 0.0, "wording_share": 0.0}}


def timings(engine: Engine, questions: list[str], group: str) -> dict[str, list[float]]:
    """Seconds per question under each setting; the settings take turns, their order turning too."""
    base, names = engine.fusion, list(SETTINGS)
    fusions = {name: replace(base, **over) for name, over in SETTINGS.items()}
    options = SearchOptions(10, "hybrid", group)
    for q in questions[:5]:  # warm: models, maps, document statistics
        for fusion in fusions.values():
            engine.fusion = fusion
            engine.answer([q], options)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i, q in enumerate(questions):
        for name in names[i % len(names):] + names[:i % len(names)]:
            engine.fusion = fusions[name]
            start = time.perf_counter()
            engine.answer([q], options)
            out[name].append(time.perf_counter() - start)
    engine.fusion = base
    return out


def report(work: Path, n: int) -> None:
    """Build (or reuse) the indexes under `work` and print the table."""
    cases = [(f"ncp {group}", folder / "passages.jsonl", folder / "queries.jsonl", work / group, group)
             for group, folder in SETS.items()]
    cases.append(("speech (Chinese questions)", ROOT / "data" / "speech.txt", ROOT / "tests" / "data" / "speech_qa_zh.jsonl",
                  work / "speech", "passages"))
    print(machine_line() + "\n")
    print("| index, grouped by | setting | questions | p50 ms | p90 ms | p50 × without both |\n|---|---|---|---|---|---|")
    for label, source, questions, index, group in cases:
        asked = [q.query for q in read_labelled(questions)][:n]
        times = timings(Engine(str(build_once(source, index))), asked, group)
        before = pct(times["without document and wording"], 50)
        for name, seconds in times.items():
            print(f"| {label}, {group} | {name} | {len(seconds)} | {pct(seconds, 50) * 1000:.1f} | "
                  f"{pct(seconds, 90) * 1000:.1f} | {pct(seconds, 50) / before:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build the indexes here (reused when present)")
    parser.add_argument("-n", type=int, default=200, help="questions per index")
    args = parser.parse_args(argv)
    with work_folder(args.keep, "fusion-cost-") as work:
        report(Path(work), args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
