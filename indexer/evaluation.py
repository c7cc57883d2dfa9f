"""Retrieval metrics over a labelled set: Hit@1, Hit@3, Recall@10, MRR@10."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QueryError
from .results import SearchOptions


@dataclass(frozen=True)
class Labelled:
    """A question and what answers it: document ids or exact substrings of the relevant text."""

    query: str
    relevant: tuple[str, ...]


def read_labelled(path: str | Path) -> list[Labelled]:
    """Lines of {"query", "relevant": [...]} (or "positive_ids", as in the shared public sets);
    a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path}: no such labelled file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rel = row["relevant"] if "relevant" in row else row["positive_ids"]
            rel = [rel] if isinstance(rel, str) else rel
            if not isinstance(row["query"], str) or not rel:
                raise ValueError("needs a query and a non-empty relevant list")
        except (ValueError, KeyError, TypeError) as exc:
            raise QueryError(f"{path}:{n}: {exc}") from exc
        out.append(Labelled(row["query"], tuple(str(r) for r in rel)))
    if not out:
        raise QueryError(f"{path}: no labelled questions")
    return out


def relevance_matrix(ranked: list[list[tuple[str, str]]], labels: list[Labelled]) -> list[np.ndarray]:
    """For each question, a bool matrix [hits, relevant items]: hit i matches item j.

    A hit is (doc_id, text); an item matches when it equals the doc id or occurs in the text.
    """
    out = []
    for hits, label in zip(ranked, labels):
        m = np.array([[item == doc_id or item in text for item in label.relevant] for doc_id, text in hits],
                     dtype=bool).reshape(len(hits), len(label.relevant))
        out.append(m)
    return out


def metrics(matrices: list[np.ndarray], k: int = 10) -> dict[str, float]:
    """Hit@1, Hit@3 (any relevant hit in the top n), Recall@k (share of relevant items found in
    the top k) and MRR@k (1 / rank of the first relevant hit), averaged over questions."""
    hit1, hit3, recall, mrr = [], [], [], []
    for m in matrices:
        m = m[:k]
        any_rel = m.any(axis=1)
        first = int(np.argmax(any_rel)) if any_rel.any() else None
        hit1.append(first is not None and first < 1)
        hit3.append(first is not None and first < 3)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
        recall.append(m.any(axis=0).mean() if m.shape[1] else 0.0)
    return {"n": len(matrices), "hit@1": float(np.mean(hit1)), "hit@3": float(np.mean(hit3)),
            f"recall@{k}": float(np.mean(recall)), f"mrr@{k}": float(np.mean(mrr))}


def by_documents(engine, labels: list[Labelled]) -> bool:
    """Whether every label names an indexed document (then questions are scored on documents)."""
    ids = {d.doc_id for d in engine.documents()}
    return all(item in ids for label in labels for item in label.relevant)


def evaluate(engine, labels: list[Labelled], mode: str, k: int = 10, group: str = "auto", *,
             use: bool = True, translate: bool = True) -> dict[str, float]:
    """Run every labelled question through the engine under `mode` and score the rankings: of
    documents when `group` is "documents" (or "auto" and the labels are document ids), else of
    passages (a passage is relevant when its document id or a labelled substring matches)."""
    docs = group == "documents" or (group == "auto" and by_documents(engine, labels))
    options = SearchOptions(k, mode, "documents" if docs else "passages", use=use, translate=translate)
    results = engine.answer([label.query for label in labels], options, sentences=False)
    ranked = [[(d.doc_id, "") for d in r.documents] if docs else [(h.doc_id, h.text) for h in r.hits]
              for r in results]
    return metrics(relevance_matrix(ranked, labels), k)
