"""The quality table: every labelled set, every mode, through the command line as a user runs it.

    python -m bench.quality                              # this tree: every set, every mode
    python -m bench.quality --compare c244f2c            # the same sets and questions at a revision, beside
    python -m bench.quality --sets cmrc,ncp_documents    # some of them

Each set's passages (or documents) are built into an index with `python -m indexer build`
(`--no-crosslingual` but for the speech, whose English questions need the USE table) and its
questions scored with `python -m indexer eval --mode all --json`, in a fresh process per command,
from the tree being measured. The figures are Hit@1 / Hit@3 / Recall@10 / MRR@10, as in
docs/quality.md; --compare prints where any figure of the revision differs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import machine_line

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"
DATA = ROOT / "tests" / "data"
FIGURES = ("hit@1", "hit@3", "recall@10", "mrr@10")
# name: (documents to build, questions, build options, eval options)
SETS: dict[str, tuple[Path, Path, list[str], list[str]]] = {
    "speech_zh": (ROOT / "data" / "speech.txt", DATA / "speech_qa_zh.jsonl", [], []),
    "speech_en": (ROOT / "data" / "speech.txt", DATA / "speech_qa_en.jsonl", [], []),
    "cmrc": (EVAL / "cmrc2018_trial_retrieval" / "passages.jsonl", EVAL / "cmrc2018_trial_retrieval" / "queries.jsonl",
             ["--no-crosslingual"], []),
    "cmrc_en": (EVAL / "cmrc2018_trial_retrieval" / "passages.jsonl", DATA / "cmrc_en.jsonl", [], []),
    "drcd_simplified": (EVAL / "drcd_dev_retrieval_simplified" / "passages.jsonl",
                        EVAL / "drcd_dev_retrieval_simplified" / "queries.jsonl", ["--no-crosslingual"], []),
    "drcd_traditional": (EVAL / "drcd_dev_retrieval_traditional" / "passages.jsonl",
                         EVAL / "drcd_dev_retrieval_traditional" / "queries.jsonl", ["--no-crosslingual"], []),
    "drcd_s_to_t": (EVAL / "drcd_dev_retrieval_traditional" / "passages.jsonl",
                    EVAL / "drcd_dev_retrieval_simplified" / "queries.jsonl", ["--no-crosslingual"], []),
    "drcd_t_to_s": (EVAL / "drcd_dev_retrieval_simplified" / "passages.jsonl",
                    EVAL / "drcd_dev_retrieval_traditional" / "queries.jsonl", ["--no-crosslingual"], []),
    "drcd_articles": (EVAL / "drcd_dev_articles" / "passages.jsonl", EVAL / "drcd_dev_articles" / "queries.jsonl",
                      ["--no-crosslingual"], []),
    "ncp_documents": (EVAL / "ncp_policy_dev" / "passages.jsonl", EVAL / "ncp_policy_dev" / "queries.jsonl",
                      ["--no-crosslingual"], ["--group", "documents"]),
    "ncp_passages": (EVAL / "ncp_policy_dev" / "chunks" / "passages.jsonl",
                     EVAL / "ncp_policy_dev" / "chunks" / "queries.jsonl", ["--no-crosslingual"], []),
}


def run(tree: Path, names: list[str], work: Path, log) -> dict[str, dict]:
    """Every set's figures per mode, built and scored by the code in `tree`."""
    out, built = {}, {}
    for name in names:
        docs, questions, build, evaluate = SETS[name]
        key = (docs, tuple(build))
        if key not in built:
            built[key] = work / f"index-{len(built)}"
            log(f"  build {name} ({docs.relative_to(docs.parents[1])})")
            subprocess.run([sys.executable, "-m", "indexer", "build", str(docs), "--index", str(built[key]), *build],
                           cwd=tree, check=True, capture_output=True)
        figures = work / f"{name}.json"
        log(f"  eval {name}")
        subprocess.run([sys.executable, "-m", "indexer", "eval", str(questions), "--index", str(built[key]),
                        "--mode", "all", "--json", str(figures), *evaluate], cwd=tree, check=True, capture_output=True)
        out[name] = json.loads(figures.read_text(encoding="utf-8"))["results"]
    return out


def cell(row: dict) -> str:
    return " / ".join(f"{row[f]:.3f}" for f in FIGURES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--compare", default=None, help="a revision measured the same way, beside this tree")
    ap.add_argument("--json", default=None, help="also write every figure here")
    args = ap.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        runs = {"this tree": run(ROOT, names, Path(tmp) / "here", log)}
        if args.compare:
            from .speed import _trees

            with _trees([args.compare], Path(tmp)) as trees:
                log(f"== {args.compare}")
                runs[args.compare] = run(trees[args.compare], names, Path(tmp) / "there", log)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")
    here = runs["this tree"]
    modes = list(next(iter(here.values())))
    print(f"\n### Every set, every mode ({' / '.join(FIGURES)})\n")
    print(machine_line() + "\n")
    print("| set | " + " | ".join(modes) + " | best single route |\n|---|" + "---|" * (len(modes) + 1))
    for name, rows in here.items():
        best = max((m for m in rows if m != "hybrid"), key=lambda m: rows[m]["mrr@10"])
        print(f"| {name} | " + " | ".join(cell(rows[m]) for m in modes) + f" | {best} |")
    if args.compare:
        there = runs[args.compare]
        differ = [(n, m) for n in here for m in here[n] if cell(here[n][m]) != cell(there[n][m])]
        print(f"\nAgainst {args.compare}: " + ("every figure the same." if not differ else "; ".join(
            f"{n} {m}: {cell(there[n][m])} → {cell(here[n][m])}" for n, m in differ)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
