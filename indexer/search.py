"""Dense, keyword and cross-lingual retrieval over a store, the fusion of ranked lists, and the
sentence of a passage that answers.

Routes, per question:
    dense   e5 vectors, inner product (the store's vector index)
    bm25    BM25 of the question's keyword terms (jieba; for a cross-lingual question the Chinese
            terms its English words translate to)
    use     cross-lingual questions only: USE multilingual vectors, a passage scored by
            (1 - w)·cos(passage) + w·cos(its best sentence)
`mode` picks the family: dense (dense, and use for cross-lingual questions), bm25, or hybrid (all
that apply, fused). Hybrid fuses a question's dense and BM25 lists by their normalised scores
(`score_fuse`); a cross-lingual question's three lists by weighted reciprocal rank (`rrf_fuse`).
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
    """How hybrid mode joins the routes' top `candidates`.

    Chinese (and other) questions, `method="score"`: each candidate of either list scores
    bm25_share · bm25 / (the question's best bm25) + (1 - bm25_share) · min-max(cosine over the
    candidates) (`score_fuse`). Measured on the three Chinese sets (README, "Retrieval quality"),
    it beat reciprocal-rank fusion and both single routes on each: rank fusion drops how far BM25's
    first hit is ahead of its second, which on keyword-heavy questions is the best evidence there
    is. `method="rrf"` keeps the previous fusion: Σ weight / (rrf_k + rank), BM25 at twice dense.
    Cross-lingual questions (no CJK, some Latin): dense, USE and translated BM25 by reciprocal rank
    at equal weights, rrf_k 10 (tests/data/README-crosslingual.md). `use_route` and `translate`
    switch those two routes off.
    """

    method: str = "score"
    bm25_share: float = 0.45
    rrf_k: int = 10
    dense_weight: float = 1.0
    bm25_weight: float = 2.0
    candidates: int = 50
    sentence_share: float = 0.5  # with e5 sentence vectors: cosine = 0.5·chunk + 0.5·best sentence
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


def score_fuse(dense: Ranked, bm25: Ranked, dense_more: dict[str, float], bm25_share: float) -> Ranked:
    """Fuse a dense and a BM25 list by normalised scores (FusionSettings): every candidate needs its
    cosine (`dense_more` gives it for chunks only the BM25 list has); a chunk the BM25 list lacks
    scores 0 there. No BM25 hit: the dense order. Ties keep the order of first appearance."""
    cosine = {c.chunk_id: s for s, c in dense}
    cosine.update(dense_more)
    keyword = {c.chunk_id: s for s, c in bm25}
    chunks = {c.chunk_id: c for _, c in dense + bm25}
    ids = list(chunks)
    cos = np.array([cosine[i] for i in ids], np.float64)
    kw = np.array([keyword.get(i, 0.0) for i in ids], np.float64)
    spread = max(float(cos.max() - cos.min()), 1e-6) if len(ids) else 1.0
    fused = (1 - bm25_share) * (cos - (cos.min() if len(ids) else 0.0)) / spread
    if len(ids) and kw.max() > 0:
        fused += bm25_share * kw / kw.max()
    order = np.argsort(-fused, kind="stable")
    return [(float(fused[i]), chunks[ids[i]]) for i in order]


def use_rankings(xl: PassageVectors, query_vectors: np.ndarray, chunks: list[Chunk], k: int,
                 rows: np.ndarray | None = None) -> list[Ranked]:
    """The k best chunks per USE query vector (passage + best sentence score), within `rows`."""
    if not len(query_vectors):
        return []
    scores = use_scores(query_vectors, xl)
    return [[(float(s), chunks[r]) for s, r in zip(top_s, top_r)] for top_s, top_r in top_rows(scores, k, rows)]


@dataclass(frozen=True)
class RowIndex:
    """The store's rows as the routes need them: chunks in row order, chunk id → row, and the rows
    a document filter allows (None: all)."""

    chunks: list[Chunk]
    row_of: dict[str, int]
    allowed: np.ndarray | None = None

    @staticmethod
    def of(store, doc_ids: set[str] | None = None) -> "RowIndex":
        chunks = store.all_chunks()
        allowed = None if doc_ids is None else np.array(
            [i for i, c in enumerate(chunks) if c.doc_id in doc_ids], np.int64)
        return RowIndex(chunks, {c.chunk_id: i for i, c in enumerate(chunks)}, allowed)


def sentence_rescored(cosine: dict[str, float], query_vector: np.ndarray, table: PassageVectors,
                      row_of: dict[str, int], share: float) -> dict[str, float]:
    """(1 - share)·cos(chunk) + share·max cos(its sentences' e5 vectors), per chunk id; a chunk
    without sentences keeps its own cosine. Long passages blur a question into their average;
    their best sentence does not (DRCD's dense Hit@1 .780 → .915 in the research for it)."""
    q = np.asarray(query_vector, dtype=np.float32)
    out = {}
    for cid, cos in cosine.items():
        sel = table.sentences_of(row_of[cid])
        out[cid] = (1 - share) * cos + share * float(np.max(table.dense[sel] @ q)) if sel.stop > sel.start else cos
    return out


def retrieve(store, query_vectors: np.ndarray | None, plans: list[QueryPlan], k: int, mode: str,
             doc_ids: set[str] | None = None, fusion: FusionSettings = FusionSettings(),
             index: RowIndex | None = None) -> list[Ranked]:
    """The k best chunks per question under `mode` (module docstring). `index` (the store's rows,
    made from the store when not given) serves the USE route and sentence scores. One route
    alone returns its own scores; several are fused.

    Where the index keeps e5 sentence vectors, a Chinese (not cross-lingual) question's cosine for
    each candidate becomes `sentence_rescored`, in dense mode and in hybrid alike.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    n = max(k, fusion.candidates)
    index = index if index is not None else RowIndex.of(store, doc_ids)
    table = store.cross_vectors()
    by_sentence = table is not None and table.dense is not None and fusion.sentence_share > 0
    dense = store.search(query_vectors, n, doc_ids) if mode != "bm25" else [None] * len(plans)
    use_at = [i for i, p in enumerate(plans) if p.use_vector is not None and mode != "bm25"]
    use = dict(zip(use_at, use_rankings(table, np.stack([plans[i].use_vector for i in use_at]), index.chunks, n,
                                        index.allowed) if use_at else []))
    keyword = [store.keyword_search(p.terms, n, doc_ids) for p in plans] if mode != "dense" else [None] * len(plans)
    by_score = [i for i, p in enumerate(plans)
                if mode == "hybrid" and fusion.method == "score" and not p.cross_lingual]
    seen = {i: {c.chunk_id for _, c in dense[i]} for i in by_score}
    missing = {i: [c.chunk_id for _, c in keyword[i] if c.chunk_id not in seen[i]] for i in by_score}
    found = store.dense_scores(query_vectors[by_score], [missing[i] for i in by_score]) if by_score else []
    more = {i: dict(zip(missing[i], map(float, scores))) for i, scores in zip(by_score, found)}
    if by_sentence:
        for i, plan in enumerate(plans):
            if dense[i] is None or plan.cross_lingual:
                continue
            chunk_of = {c.chunk_id: c for _, c in dense[i]}
            scored = sentence_rescored({c.chunk_id: s for s, c in dense[i]}, query_vectors[i], table, index.row_of,
                                       fusion.sentence_share)
            dense[i] = sorted(((scored[cid], chunk_of[cid]) for cid in chunk_of), key=lambda sc: -sc[0])
            if i in more:
                more[i] = sentence_rescored(more[i], query_vectors[i], table, index.row_of, fusion.sentence_share)
    out = []
    for i, plan in enumerate(plans):
        if i in more:
            out.append(score_fuse(dense[i], keyword[i], more[i], fusion.bm25_share)[:k])
            continue
        routes: list[tuple[Ranked, float]] = []
        xl = plan.cross_lingual
        if dense[i] is not None:
            routes.append((dense[i], fusion.xl_dense_weight if xl else fusion.dense_weight))
        if i in use:
            routes.append((use[i], fusion.xl_use_weight))
        if keyword[i] is not None:
            routes.append((keyword[i], fusion.xl_bm25_weight if xl else fusion.bm25_weight))
        if len(routes) == 1:
            out.append(routes[0][0][:k])
        else:
            out.append(rrf_fuse([r for r, _ in routes], [w for _, w in routes], fusion.rrf_k)[:k])
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
