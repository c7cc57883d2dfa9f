"""The keyword reference: character-bigram BM25 over whole texts, on every shared set, so that the
engine's eval table can be read beside it (docs/quality.md).

    python -m bench.baseline                       # every set in ../shared/eval, and the speech
    python -m bench.baseline --speech-index indexes/default

Each text's terms are its overlapping character bigrams (indexer.analysis.bigrams: a one-character
CJK run alone, Latin letters and digits whole); bm25s scores them (k1 1.2, b 0.75). The paragraph
sets are scored on paragraphs, drcd_dev_articles on whole documents, the speech on the engine's
chunks (its labels are substrings of the answering passage). Cross-script rows ask one script's
questions over the other script's paragraphs. The policy notices (ncp_policy_dev) are scored on
title + text, documents and passages.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from indexer.evaluation import Labelled, metrics, read_labelled, relevance_matrix
from indexer.analysis import bigrams

from .common import machine_line

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"


def bigram_bm25(texts: list[str], questions: list[str], k: int = 10) -> list[list[int]]:
    """Per question, the rows of its k best texts by character-bigram BM25 (zero scores left out)."""
    import bm25s

    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index([bigrams(t) or [""] for t in texts], show_progress=False)
    out = []
    for q in questions:
        terms = [t for t in bigrams(q) if t in index.vocab_dict]
        scores = np.asarray(index.get_scores(terms), np.float64) if terms else np.zeros(len(texts))
        top = np.argsort(-scores, kind="stable")[:k]
        out.append([int(i) for i in top if scores[i] > 0])
    return out


def score(ids: list[str], texts: list[str], labels: list[Labelled], k: int = 10) -> dict[str, float]:
    """The eval figures of the baseline's rankings (a hit is (id, text), as indexer.evaluation reads it)."""
    ranked = bigram_bm25(texts, [label.query for label in labels], k)
    return metrics(relevance_matrix([[(ids[i], texts[i]) for i in rows] for rows in ranked], labels), k)


def _passages(folder: Path, titled: bool) -> tuple[list[str], list[str]]:
    """Each passage's id and text, its title in front when `titled`."""
    rows = [json.loads(line) for line in (folder / "passages.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return [r["id"] for r in rows], [(r.get("title", "") + "\n" if titled else "") + r["text"] for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--speech-index", default=str(ROOT / "indexes" / "default"))
    args = parser.parse_args(argv)
    simplified, traditional = args.eval_dir / "drcd_dev_retrieval_simplified", args.eval_dir / "drcd_dev_retrieval_traditional"
    ncp = args.eval_dir / "ncp_policy_dev"
    # (row, texts, questions, whether a title goes in front of each text: the policy notices'
    # headings name their subject, and the set's README defines its baseline so)
    rows = [(name, args.eval_dir / name, args.eval_dir / name / "queries.jsonl", False)
            for name in ("cmrc2018_trial_retrieval", "drcd_dev_retrieval_simplified", "drcd_dev_retrieval_traditional",
                         "drcd_dev_articles")]
    rows += [("Simplified questions → Traditional paragraphs", traditional, simplified / "queries.jsonl", False),
             ("Traditional questions → Simplified paragraphs", simplified, traditional / "queries.jsonl", False),
             ("ncp_policy_dev, documents, title + text", ncp, ncp / "queries.jsonl", True),
             ("ncp_policy_dev, passages, title + text", ncp / "chunks", ncp / "chunks" / "queries.jsonl", True)]
    print(machine_line() + "\n")
    print("| set (questions) | Hit@1 / Hit@3 / Recall@10 / MRR@10 |\n|---|---|")
    for name, folder, queries, titled in rows:
        if not folder.is_dir():
            continue
        labels = read_labelled(queries)
        figures = score(*_passages(folder, titled), labels)
        print(f"| {name} ({len(labels)}) | " + " / ".join(f"{figures[m]:.3f}" for m in
                                                       ("hit@1", "hit@3", "recall@10", "mrr@10")) + " |", flush=True)
    from indexer.engine import Engine

    engine = Engine(args.speech_index)
    if engine.exists():
        chunks = engine.store.all_chunks()
        labels = read_labelled(ROOT / "tests" / "data" / "speech_qa_zh.jsonl")
        figures = score([c.doc_id for c in chunks], [c.text for c in chunks], labels)
        print(f"| speech, Chinese ({len(labels)}) | " + " / ".join(f"{figures[m]:.3f}" for m in
                                                                  ("hit@1", "hit@3", "recall@10", "mrr@10")) + " |")


if __name__ == "__main__":
    main()
