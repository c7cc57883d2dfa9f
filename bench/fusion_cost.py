"""What the fused parts cost a question: hybrid questions asked one at a time, as a person asks,
with the default fusion and with its later parts switched off, taking turns in one process on one
index (same encoders, same caches), so the ratios compare like with like.

    python -m bench.fusion_cost                      # the policy notices (documents and passages) and the speech
    python -m bench.fusion_cost --keep /tmp/ncp      # reuse the indexes bench.ncp_labels keeps there
    python -m bench.fusion_cost --keep /tmp/ncp --compare bd982b9   # the default fusion, this tree beside a revision

`--compare REV`: each tree's code (REV checked out as a git worktree) answers the same questions
over the same indexes in a process of its own, the two taking turns over `--rounds`, so a change's
cost or gain is measured beside the code before it (runs minutes apart differ by more than many
changes do). The indexes are built by this tree's code: both revisions must read them.

Settings: `default` (every part), `without wording` (FusionSettings.wording_share 0) and `without
document and wording` (doc_share 0 too: the fusion before the policy-notice work).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from indexer.engine import Engine
from indexer.evaluation import read_labelled
from indexer.results import SearchOptions

from .common import build_once, machine_line, pct, work_folder
from .ncp_labels import SETS
from .speed import _alternating, _trees

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


def cases(work: Path) -> list[tuple[str, Path, Path, Path, str]]:
    """(label, source, questions, index folder under `work`, grouping): the policy notices grouped by
    documents and by passages, and the speech."""
    out = [(f"ncp {group}", folder / "passages.jsonl", folder / "queries.jsonl", work / group, group)
           for group, folder in SETS.items()]
    out.append(("speech (Chinese questions)", ROOT / "data" / "speech.txt", ROOT / "tests" / "data" / "speech_qa_zh.jsonl",
                work / "speech", "passages"))
    return out


def report(work: Path, n: int) -> None:
    """Build (or reuse) the indexes under `work` and print the table."""
    print(machine_line() + "\n")
    print("| index, grouped by | setting | questions | p50 ms | p90 ms | p50 × without both |\n|---|---|---|---|---|---|")
    for label, source, questions, index, group in cases(work):
        asked = [q.query for q in read_labelled(questions)][:n]
        times = timings(Engine(str(build_once(source, index))), asked, group)
        before = pct(times["without document and wording"], 50)
        for name, seconds in times.items():
            print(f"| {label}, {group} | {name} | {len(seconds)} | {pct(seconds, 50) * 1000:.1f} | "
                  f"{pct(seconds, 90) * 1000:.1f} | {pct(seconds, 50) / before:.2f} |", flush=True)


# one tree's questions, run with that tree's indexer (PYTHONPATH): the p50 in ms, printed
WORKER = """
import statistics, sys, time
from indexer.engine import Engine
from indexer.evaluation import read_labelled
from indexer.results import SearchOptions
index, questions, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
asked = [q.query for q in read_labelled(questions)][:n]
options, engine, seconds = SearchOptions(10, "hybrid", group), Engine(index), []
for q in asked[:5]:
    engine.answer([q], options)
for q in asked:
    start = time.perf_counter()
    engine.answer([q], options)
    seconds.append(time.perf_counter() - start)
print(statistics.median(seconds) * 1000)
"""


def compare(work: Path, n: int, rev: str, rounds: int) -> None:
    """The default fusion's p50 with this tree's code and with `rev`'s, per index, taking turns."""
    revs = ["HEAD", rev]
    print(machine_line() + "\n")
    print(f"| index, grouped by | questions | p50 ms, this tree (per round) | p50 ms, {rev} (per round) "
          f"| this tree × {rev} (medians) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fusion-cost-") as tmp, _trees(revs, Path(tmp)) as trees:
        for label, source, questions, index, group in cases(work):
            build_once(source, index)
            runs: dict[str, list[float]] = {r: [] for r in revs}
            for _, r in _alternating(revs, rounds):
                proc = subprocess.run([sys.executable, "-c", WORKER, str(index), str(questions), group, str(n)],
                                      capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(trees[r]), "HF_HUB_OFFLINE": "1"})
                runs[r].append(float(proc.stdout.strip().splitlines()[-1]))
            shown = {r: " / ".join(f"{x:.1f}" for x in v) for r, v in runs.items()}
            ratio = statistics.median(runs["HEAD"]) / statistics.median(runs[rev])
            print(f"| {label}, {group} | {n} | {shown['HEAD']} | {shown[rev]} | {ratio:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build the indexes here (reused when present)")
    parser.add_argument("-n", type=int, default=200, help="questions per index")
    parser.add_argument("--compare", metavar="REV", help="the default fusion, this tree beside REV's code")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: processes per tree and index")
    args = parser.parse_args(argv)
    with work_folder(args.keep, "fusion-cost-") as work:
        if args.compare:
            compare(Path(work), args.n, args.compare, args.rounds)
        else:
            report(Path(work), args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
