"""Dense, keyword and cross-lingual retrieval over a store, the fusion of ranked lists, and the
sentence of a passage that answers.

Routes, per question:
    dense   e5 vectors, inner product (the store's vector index)
    bm25    BM25 of the question's keyword terms (jieba; for a cross-lingual question the Chinese
            terms its English words translate to)
    use     cross-lingual questions only: USE multilingual vectors, a passage scored by
            (1 - w)·cos(passage) + w·cos(its best sentence)
`mode` picks the family: dense (dense, and use for cross-lingual questions), bm25, or hybrid (all
that apply, fused by weighted reciprocal rank).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chunking import Chunk
from .crosslingual import PassageVectors, sentence_spans, top_rows, use_scores

MODES = ("dense", "bm25", "hybrid")
Ranked = list[tuple[float, Chunk]]


@dataclass(frozen=True)
class FusionSettings:
    """Reciprocal-rank fusion: score = Σ weight / (rrf_k + rank) over the routes' top `candidates`.

    Chinese (and other) questions: dense and BM25, tuned on the four labelled sets (README,
    "Retrieval quality"): BM25 at twice the weight of dense with rrf_k 10. Cross-lingual questions
    (no CJK, some Latin): dense, USE and translated BM25 at equal weights, same rrf_k: on the two
    English sets (speech, CMRC) that beat rrf_k 60 on every figure and was within noise of the best
    of 54 weightings (tests/data/README-crosslingual.md). `use_route` and `translate` switch those
    two routes off.
    """

    rrf_k: int = 10
    dense_weight: float = 1.0
    bm25_weight: float = 2.0
    candidates: int = 50
    use_route: bool = True
    translate: bool = True
    xl_dense_weight: float = 1.0
    xl_use_weight: float = 1.0
    xl_bm25_weight: float = 1.0


@dataclass(frozen=True)
class QueryPlan:
    """What one question brings to the routes."""

    terms: list[str]  # keyword terms (for a cross-lingual question: its translated terms)
    cross_lingual: bool = False
    use_vector: np.ndarray | None = None  # set when the USE route runs for this question


def rrf_fuse(rankings: list[Ranked], weights: list[float], rrf_k: int = 60) -> Ranked:
    """Fuse ranked lists by reciprocal rank; ties keep the order of first appearance."""
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, (_, chunk) in enumerate(ranking, start=1):
            scores[chunk.chunk_id] = scores.get(chunk.chunk_id, 0.0) + weight / (rrf_k + rank)
            chunks.setdefault(chunk.chunk_id, chunk)
    order = sorted(scores, key=lambda cid: -scores[cid])
    return [(scores[cid], chunks[cid]) for cid in order]


def use_rankings(xl: PassageVectors, query_vectors: np.ndarray, chunks: list[Chunk], k: int,
                 rows: np.ndarray | None = None) -> list[Ranked]:
    """The k best chunks per USE query vector (passage + best sentence score), within `rows`."""
    if not len(query_vectors):
        return []
    scores = use_scores(query_vectors, xl)
    return [[(float(s), chunks[r]) for s, r in zip(top_s, top_r)] for top_s, top_r in top_rows(scores, k, rows)]


def retrieve(store, query_vectors: np.ndarray | None, plans: list[QueryPlan], k: int, mode: str,
             doc_ids: set[str] | None = None, fusion: FusionSettings = FusionSettings(),
             chunks: list[Chunk] | None = None, rows: np.ndarray | None = None) -> list[Ranked]:
    """The k best chunks per question under `mode` (module docstring).

    `chunks` (the store's rows) and `rows` (the rows `doc_ids` allows) serve the USE route; one
    route alone returns its own scores, several are fused by reciprocal rank.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    n = max(k, fusion.candidates)
    dense = store.search(query_vectors, n, doc_ids) if mode != "bm25" else [None] * len(plans)
    use_at = [i for i, p in enumerate(plans) if p.use_vector is not None and mode != "bm25"]
    use = dict(zip(use_at, use_rankings(store.cross_vectors(), np.stack([plans[i].use_vector for i in use_at]),
                                        chunks if chunks is not None else store.all_chunks(), n, rows)
                   if use_at else []))
    out = []
    for i, plan in enumerate(plans):
        routes: list[tuple[Ranked, float]] = []
        xl = plan.cross_lingual
        if dense[i] is not None:
            routes.append((dense[i], fusion.xl_dense_weight if xl else fusion.dense_weight))
        if i in use:
            routes.append((use[i], fusion.xl_use_weight))
        if mode != "dense":
            routes.append((store.keyword_search(plan.terms, n, doc_ids), fusion.xl_bm25_weight if xl else fusion.bm25_weight))
        if len(routes) == 1:
            out.append(routes[0][0][:k])
        else:
            fused = rrf_fuse([r for r, _ in routes], [w for _, w in routes], fusion.rrf_k)
            out.append(fused[:k])
    return out


# ---------------------------------------------------------------------------- the answering sentence

TERM_WEIGHT = 0.3  # how much the share of the question's terms in a sentence adds to its cosine


def best_sentence(text: str, terms: list[str], spans: np.ndarray | None = None,
                  sentence_vectors: np.ndarray | None = None,
                  query_vector: np.ndarray | None = None) -> tuple[int, int] | None:
    """(start, end) in `text` of the sentence that best answers the question, or None for no text.

    A sentence scores cos(question, sentence) when vectors are given (the cross-lingual index's
    sentence vectors) plus TERM_WEIGHT × the share of the question's terms it contains, longer
    terms counting more; without vectors the terms alone decide, and the first sentence wins ties.
    `spans` default to `sentence_spans(text)`.
    """
    spans = np.asarray(sentence_spans(text) if spans is None else spans, dtype=np.int64).reshape(-1, 2)
    if not len(spans):
        return None
    score = np.zeros(len(spans), np.float32)
    if sentence_vectors is not None and query_vector is not None and len(sentence_vectors) == len(spans):
        score += sentence_vectors @ np.asarray(query_vector, dtype=np.float32)
    distinct = [t for t in dict.fromkeys(t.lower() for t in terms) if t]
    total = sum(len(t) for t in distinct)
    if total:
        lowered = [text[s:e].lower() for s, e in spans]
        score += TERM_WEIGHT * np.array([sum(len(t) for t in distinct if t in sent) for sent in lowered],
                                        np.float32) / total
    best = int(np.argmax(score))
    return int(spans[best, 0]), int(spans[best, 1])
