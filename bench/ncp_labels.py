"""How far the policy-notice labels let any ranker go: `ncp_policy_dev` scored strictly (the one
labelled notice or passage) and by its answers (any notice or passage that holds the labelled
answer verbatim counts too), for the engine's three routes and the character-bigram baseline.

    python -m bench.ncp_labels                       # builds both sets into a temporary folder
    python -m bench.ncp_labels --keep /tmp/ncp       # or keeps (and later reuses) the indexes there

The same notice is often published by several bodies (a ministry, a province, a news site), so a
question's answer can stand word for word in several notices while the label names one of them.
`ceiling` is the strict MRR@10 of a ranker that puts every text holding the answer first but
cannot tell which of them the labeller had in mind (their order at random), and is right on every
other question. Answers shorter than --min-answer characters are left out of the answer judgement
(a date or a number stands in many notices that do not answer).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from math import comb
from pathlib import Path

import numpy as np

from indexer.engine import Engine
from indexer.results import SearchOptions

from .baseline import bigram_bm25
from .common import build_once, machine_line, work_folder

ROOT = Path(__file__).resolve().parent.parent
NCP = ROOT.parent / "shared" / "eval" / "ncp_policy_dev"
SETS = {"documents": NCP, "passages": NCP / "chunks"}


def _plain(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judgements(folder: Path, min_answer: int) -> tuple[list[str], list[str], list[set[str]], list[set[str]]]:
    """The questions, each text's id, and per question its labelled ids and the ids of every text
    holding one of its answers (of at least `min_answer` characters) verbatim."""
    texts = _rows(folder / "passages.jsonl")
    plain = {t["id"]: _plain(t.get("title", "") + t["text"]) for t in texts}
    questions, strict, answered = [], [], []
    for q in _rows(folder / "queries.jsonl"):
        answers = [a for a in map(_plain, q.get("answers", [])) if len(a) >= min_answer]
        questions.append(q["query"])
        strict.append(set(q["positive_ids"]))
        answered.append({i for i, t in plain.items() if any(a in t for a in answers)} | strict[-1])
    return questions, list(plain), strict, answered


def reciprocal_ranks(ranked: list[list[str]], relevant: list[set[str]], k: int = 10) -> np.ndarray:
    """Per question, 1 / the rank of its first relevant id within the first k (0 when none)."""
    return np.array([next((1 / (r + 1) for r, i in enumerate(ids[:k]) if i in rel), 0.0)
                     for ids, rel in zip(ranked, relevant)])


def chance_rr(m: int, r: int, k: int = 10) -> float:
    """Expected reciprocal rank of the first of r relevant texts among m shuffled at the top (0 past k)."""
    return sum(comb(m - i, r - 1) / comb(m, r) / i for i in range(1, min(m - r + 1, k) + 1))


def ceiling(strict: list[set[str]], answered: list[set[str]]) -> float:
    """Strict MRR of a ranker that ranks every text holding the answer first, in random order."""
    return float(np.mean([chance_rr(len(a), len(s)) if s <= a else 1.0 for s, a in zip(strict, answered)]))


def engine_rankings(index: Path, questions: list[str], group: str) -> dict[str, list[list[str]]]:
    """Each route's ranked ids (documents or passages) for every question, as `eval` ranks them."""
    engine = Engine(str(index))
    out = {}
    for mode in ("hybrid", "bm25", "dense"):
        results = engine.answer(questions, SearchOptions(10, mode, group), sentences=False)
        out[mode] = [[d.doc_id for d in r.documents] if group == "documents" else [h.doc_id for h in r.hits]
                     for r in results]
    return out


def report(work: Path, min_answer: int) -> None:
    """Build (or reuse) both sets' indexes under `work` and print the table."""
    print(machine_line() + "\n")
    print("| set | questions | answer also in an unlabelled text | route | strict MRR@10 / Hit@1 | by answer MRR@10 / Hit@1 |"
          "\n|---|---|---|---|---|---|")
    for group, folder in SETS.items():
        questions, ids, strict, answered = judgements(folder, min_answer)
        rankings = engine_rankings(build_once(folder / "passages.jsonl", work / group), questions, group)
        texts = {t["id"]: t.get("title", "") + "\n" + t["text"] for t in _rows(folder / "passages.jsonl")}
        rankings["bigram BM25 (title + text)"] = [[ids[r] for r in rows] for rows in
                                                   bigram_bm25([texts[i] for i in ids], questions)]
        also = sum(len(a) > len(s) for s, a in zip(strict, answered))
        for route, ranked in rankings.items():
            s, a = reciprocal_ranks(ranked, strict), reciprocal_ranks(ranked, answered)
            print(f"| {group} | {len(questions)} | {also} | {route} | {s.mean():.3f} / {(s == 1).mean():.3f} | "
                  f"{a.mean():.3f} / {(a == 1).mean():.3f} |", flush=True)
        print(f"| {group} | | | ceiling of the strict labels | {ceiling(strict, answered):.3f} | |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build the indexes here (reused when present)")
    parser.add_argument("--min-answer", type=int, default=8, help="shortest answer, in characters, to judge by")
    args = parser.parse_args(argv)
    with work_folder(args.keep, "ncp-labels-") as work:
        report(Path(work), args.min_answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
