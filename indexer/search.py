"""Retrieval as parts: routes that each rank chunks for a batch of questions, a planner that picks
a question's routes, and the fusion that joins them; then the sentence of a passage that answers.

Routes (`Route.run(plans, n) → per question, chunk ids with scores, best first`):
    dense   e5 vectors, inner product (the store's vector index); where the index keeps e5 sentence
            vectors, a Chinese question's cosine is rescored by the chunk's best sentence
    bm25    BM25 of the question's keyword terms (jieba; for a cross-lingual question the Chinese
            terms its English words translate to)
    use     cross-lingual questions only: USE multilingual vectors, a passage scored by
            (1 - w)·cos(passage) + w·cos(its best sentence)
`plan_routes` picks them: mode dense (dense, and use for a cross-lingual question), bm25, or hybrid
(all that apply). `fuse` joins a question's lists: one list stands as it is; hybrid's dense and
BM25 lists by their normalised scores, with the BM25 of each candidate's document taken whole and
the share of the question's wording the candidate repeats as two more parts (`score_fuse`);
anything else (a cross-lingual question's three lists) by weighted reciprocal rank (`rrf_fuse`).
Every result keeps each route's own score and its part of the fused score (the parts sum to it),
so a hit can say why it ranks where it does. Results are the chunks' rows in the loaded index
(ints) and scores throughout; the engine turns them into hits at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from .analysis import wording_share
from .crosslingual import sentence_spans, use_search
from .topk import TieKeys, best_first

if TYPE_CHECKING:
    from .store.base import Store

MODES = ("dense", "bm25", "hybrid")
Ranked = list[tuple[int, float]]  # chunk rows with their scores, best first


@dataclass(frozen=True)
class Scored:
    """One fused result: the chunk's row, its fused score, each route's own score (`raw`: cosine, BM25,
    USE) and each route's part of the fused score (`parts`, summing to `score`)."""

    row: int
    score: float
    raw: dict[str, float]
    parts: dict[str, float]


@dataclass(frozen=True)
class FusionSettings:
    """How hybrid mode joins the routes' top `candidates`.

    Chinese (and other) questions, `method="score"`: each candidate of either list scores
    bm25_share · bm25 / (the question's best bm25) + (1 - bm25_share) · min-max(cosine over the
    candidates) (`score_fuse`). Measured on the three Chinese sets (docs/quality.md; docs/decisions/fusion.md),
    it beat reciprocal-rank fusion and both single routes on each: rank fusion drops how far BM25's
    first hit is ahead of its second, which on keyword-heavy questions is the best evidence there
    is. Beside them, doc_share · the candidate's document BM25 / the best candidate document's
    (the document's chunks counted together): a long notice's evidence beyond its one best chunk,
    which lifted the policy notices by 3 points and left every other set within 0.4 (fitted by
    cross-validation with folds split by document: decisions/fusion.md). And wording_share · the
    share of the question's character `wording_chars`-grams that stand in the candidate's keyword
    text (title and text): questions repeat the wording of the sentence that answers them, which
    words and bigrams scored one by one do not see (policy notices +1 point: fusion.md). All the
    parts are divided by 1 + doc_share + wording_share · the best candidate's share, so a score
    stays within 0-1 and a question no candidate repeats scores as without the wording part.
    `method="rrf"` keeps the previous fusion: Σ weight / (rrf_k + rank), BM25 at twice dense.
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
    doc_share: float = 0.75  # hybrid, Chinese questions: the weight of a candidate's document BM25 (0: left out)
    wording_share: float = 0.5  # … of the share of the question's character n-grams it holds (0: left out)
    wording_chars: int = 4  # … those n-grams' length
    sentence_share: float = 0.5  # with e5 sentence vectors: cosine = 0.5·chunk + 0.5·best sentence
    use_route: bool = True
    translate: bool = True
    xl_dense_weight: float = 1.0
    xl_use_weight: float = 1.0
    xl_bm25_weight: float = 1.0
    doc_weights: tuple[float, ...] = (1.0,)  # grouped by documents: weights of a document's best passages
    cosine_floor: float = 0.80  # readable hybrid scores (`readable`): e5-small's cosine of an unrelated passage
    cosine_full: float = 0.95  # … and of a passage that answers outright

    def weights(self, cross_lingual: bool) -> dict[str, float]:
        """Each route's weight in reciprocal-rank fusion."""
        if cross_lingual:
            return {"dense": self.xl_dense_weight, "use": self.xl_use_weight, "bm25": self.xl_bm25_weight}
        return {"dense": self.dense_weight, "use": self.xl_use_weight, "bm25": self.bm25_weight}


@dataclass(frozen=True)
class QueryPlan:
    """What one question brings to the routes."""

    terms: list[str]  # keyword terms (for a cross-lingual question: its translated terms)
    cross_lingual: bool = False
    use_vector: np.ndarray | None = None  # set when the USE route runs for this question
    vector: np.ndarray | None = None  # its e5 vector (not needed in bm25 mode)
    scope: np.ndarray | None = None  # the only rows it may return, ascending (quoted phrases)
    excluded: frozenset[int] = frozenset()  # rows it must not return (exclusions alone: the few holding an excluded word)
    grams: frozenset[str] = frozenset()  # its character n-grams (FusionSettings.wording_chars), folded


# ---------------------------------------------------------------------------- fusion (pure functions)


def rrf_fuse(rankings: dict[str, Ranked], weights: dict[str, float], rrf_k: int = 60,
             ties: TieKeys | None = None) -> list[Scored]:
    """Fuse ranked lists by reciprocal rank: Σ weight / (rrf_k + rank); equal sums by chunk id
    (`ties`, indexer.topk)."""
    parts: dict[str, dict[str, float]] = {}
    raw: dict[str, dict[str, float]] = {}
    for name, ranking in rankings.items():
        for rank, (cid, score) in enumerate(ranking, start=1):
            parts.setdefault(cid, {})[name] = weights[name] / (rrf_k + rank)
            raw.setdefault(cid, {})[name] = score
    total = {cid: sum(p.values()) for cid, p in parts.items()}
    return [Scored(cid, score, raw[cid], parts[cid]) for cid, score in best_first(list(total.items()), len(total), ties)]


def score_fuse(dense: Ranked, bm25: Ranked, dense_more: dict[int, float], bm25_share: float,
               ties: TieKeys | None = None, documents: dict[int, float] | None = None,
               doc_share: float = 0.0, wording: dict[int, float] | None = None,
               wording_share: float = 0.0) -> list[Scored]:
    """Fuse a dense and a BM25 list by normalised scores (FusionSettings): every candidate needs its
    cosine (`dense_more` gives it for chunks only the BM25 list has); a chunk the BM25 list lacks
    scores 0 there. With `documents` (each candidate's document BM25, taken whole) a third part,
    doc_share · its share of the best candidate document's; with `wording` (each candidate's share
    of the question's n-grams, 0-1) a fourth, wording_share · that share. The parts are divided by
    1 + doc_share + wording_share · the best candidate's share (a divisor common to the question's
    candidates, so it keeps their order): the fused score stays within 0-1, a candidate best in
    every part scores 1, and a question none of whose candidates repeats its wording scores as it
    would without that part. No BM25 hit: the dense order. Equal scores by chunk id (`ties`,
    indexer.topk)."""
    cosine = dict(dense)
    cosine.update(dense_more)
    keyword = dict(bm25)
    ids = list(dict.fromkeys([cid for cid, _ in dense] + [cid for cid, _ in bm25]))
    if not ids:
        return []
    cos = np.array([cosine[i] for i in ids], np.float64)
    kw = np.array([keyword.get(i, 0.0) for i in ids], np.float64)
    doc = np.array([documents[i] for i in ids], np.float64) if documents is not None else None
    share = np.array([wording[i] for i in ids], np.float64) if wording is not None else None
    whole = 1.0 + (doc_share if doc is not None else 0.0) + (wording_share * float(share.max()) if share is not None else 0.0)
    parts = {"dense": (1 - bm25_share) * (cos - cos.min()) / max(float(cos.max() - cos.min()), 1e-6) / whole,
             "bm25": bm25_share * kw / kw.max() / whole if kw.max() > 0 else np.zeros_like(kw)}
    extra = {}  # the further parts' own values, per candidate
    if doc is not None:
        extra["doc"] = doc
        parts["doc"] = doc_share * doc / doc.max() / whole if doc.max() > 0 else np.zeros_like(doc)
    if share is not None:
        extra["wording"] = share
        parts["wording"] = wording_share * share / whole
    fused = sum(parts.values())
    out, position = [], {row: i for i, row in enumerate(ids)}
    for row, _ in best_first(list(zip(ids, fused.tolist())), len(ids), ties):
        i = position[row]
        raw = {"dense": float(cos[i]), **({"bm25": float(kw[i])} if ids[i] in keyword else {}),
               **{name: float(values[i]) for name, values in extra.items()}}
        out.append(Scored(ids[i], float(fused[i]), raw, {name: float(part[i]) for name, part in parts.items()}))
    return out


def readable(fused: list[Scored], ceiling: float | None, fusion: FusionSettings) -> list[Scored]:
    """Hybrid scores on one scale for every question: each is multiplied by how well the question
    is answered at all, judged on its top result,
        g = bm25_share · min(1, BM25 / the question's BM25 ceiling)
            + (1 - bm25_share) · clip((cosine - cosine_floor) / (cosine_full - cosine_floor), 0, 1),
    so the order and the parts' sum are kept, and a minimum score means the same on every question
    (min-max alone puts every question's top at 1). Measured on the shared sets, g separates
    questions the index answers from ones it cannot (AUC .985-.996; the cut keeping 95% of
    answerable questions lies at .37-.43 on all three). Without a ceiling (the server's BM25), the
    keyword share counts whole when BM25 found the top result."""
    if not fused:
        return fused
    top = fused[0]
    bm25 = top.raw.get("bm25", 0.0)
    words = (1.0 if bm25 > 0 else 0.0) if not ceiling else min(1.0, bm25 / ceiling)
    meaning = float(np.clip((top.raw["dense"] - fusion.cosine_floor) / (fusion.cosine_full - fusion.cosine_floor), 0, 1))
    g = fusion.bm25_share * words + (1 - fusion.bm25_share) * meaning
    return [Scored(r.row, r.score * g, r.raw, {k: v * g for k, v in r.parts.items()}) for r in fused]


def single(name: str, ranking: Ranked) -> list[Scored]:
    """One route's list as results: its own scores."""
    return [Scored(cid, score, {name: score}, {name: score}) for cid, score in ranking]


# ---------------------------------------------------------------------------- routes


class Route(Protocol):
    """One way of ranking chunks: per question (of those that take it), ids with scores, best first."""

    name: str

    def run(self, plans: list[QueryPlan], n: int) -> list[Ranked]: ...


@dataclass
class DenseRoute:
    """e5 vectors against the store's vector index, within the allowed documents; with e5 sentence
    vectors, a Chinese question's cosines become `sentence_rescored`."""

    store: Store
    allowed: set[str] | None = None
    sentence_share: float = 0.0  # > 0 where the index keeps e5 sentence vectors
    name: str = "dense"

    def run(self, plans: list[QueryPlan], n: int) -> list[Ranked]:
        """The index's nearest chunks; a question with a scope scores exactly the chunks in it, one
        with excluded rows asks for as many more and drops them."""
        free = [i for i, p in enumerate(plans) if p.scope is None]
        more = max((len(plans[i].excluded) for i in free), default=0)
        found = self.store.search(np.stack([plans[i].vector for i in free]), n + more, self.allowed) if free else []
        scores = {i: {row: s for s, row in ranked if row not in plans[i].excluded} for i, ranked in zip(free, found)}
        scoped = [i for i, p in enumerate(plans) if p.scope is not None]
        scores.update(zip(scoped, self.cosines([plans[i] for i in scoped], [plans[i].scope.tolist() for i in scoped])))
        return [best_first(list((self._rescored(p, scores[i]) if p.scope is None else scores[i]).items()), n,
                           self.store.tie_keys) for i, p in enumerate(plans)]

    def cosines(self, plans: list[QueryPlan], rows: list[list[int]]) -> list[dict[int, float]]:
        """Each question's exact (rescored) cosine with the given rows: one store call for all."""
        if not plans:
            return []
        found = self.store.dense_scores(np.stack([p.vector for p in plans]), rows)
        return [self._rescored(p, dict(zip(r, map(float, s)))) for p, r, s in zip(plans, rows, found)]

    def _rescored(self, plan: QueryPlan, cosine: dict[int, float]) -> dict[int, float]:
        if self.sentence_share <= 0 or plan.cross_lingual:
            return cosine
        return sentence_rescored(cosine, plan.vector, lambda row: self.store.sentences(row)[2], self.sentence_share)


@dataclass
class KeywordRoute:
    """BM25 of each question's terms, within the allowed documents (and a question's scope)."""

    store: Store
    allowed: set[str] | None = None
    texts: Callable[[list[int]], list[str]] | None = None  # rows' keyword texts, folded (for `wording`)
    name: str = "bm25"

    def run(self, plans: list[QueryPlan], n: int) -> list[Ranked]:
        return [self._one(p, n) for p in plans]

    def ceiling(self, plan: QueryPlan) -> float | None:
        """The question's BM25 ceiling (Σ idf of its terms; None where the store cannot say)."""
        return self.store.keyword_ceiling(plan.terms)

    def documents(self, plan: QueryPlan, rows: list[int]) -> np.ndarray:
        """The BM25 of each row's document, taken whole, for the question's terms."""
        return self.store.document_bm25(plan.terms, rows) if rows else np.zeros(0)

    def wording(self, plan: QueryPlan, rows: list[int]) -> list[float]:
        """The share of the question's n-grams that stand in each row's keyword text."""
        if not self.texts or not rows or not plan.grams:
            return [0.0] * len(rows)
        return [wording_share(plan.grams, text) for text in self.texts(rows)]

    def _one(self, plan: QueryPlan, n: int) -> Ranked:
        if plan.scope is None:
            found = self.store.keyword_search(plan.terms, n + len(plan.excluded), self.allowed)
            return [(row, s) for s, row in found if row not in plan.excluded][:n]
        found = self.store.keyword_search(plan.terms, n, None, plan.scope)  # within the allowed documents already
        return [(row, s) for s, row in found]


@dataclass
class UseRoute:
    """USE vectors of cross-lingual questions against the index's USE passage and sentence table,
    read from the store piece by piece only when a question takes this route."""

    store: Store
    allowed: np.ndarray | None = None  # the rows the filters allow, ascending (None: every live row)
    name: str = "use"

    def run(self, plans: list[QueryPlan], n: int) -> list[Ranked]:
        if not plans:
            return []
        allowed = self.store.rows_of() if self.allowed is None else self.allowed
        within = [p.scope if p.scope is not None else
                  np.setdiff1d(allowed, np.fromiter(p.excluded, np.int64), assume_unique=True) if p.excluded else
                  allowed for p in plans]
        found = use_search(np.stack([p.use_vector for p in plans]), self.store.sentence_tables(), n, within,
                           self.store.tie_keys)
        return [[(int(r), float(v)) for v, r in zip(top_s, top_r)] for top_s, top_r in found]


def sentence_rescored(cosine: dict[int, float], query_vector: np.ndarray,
                      sentence_vectors: Callable[[int], np.ndarray], share: float) -> dict[int, float]:
    """(1 - share)·cos(chunk) + share·max cos(its sentences' e5 vectors), per row; a chunk
    without sentences keeps its own cosine. Long passages blur a question into their average;
    their best sentence does not (DRCD's dense Hit@1 .780 → .915 in the research for it)."""
    q = np.asarray(query_vector, dtype=np.float32)
    out = {}
    for row, cos in cosine.items():
        vectors = sentence_vectors(row)
        out[row] = (1 - share) * cos + share * float(np.max(vectors @ q)) if len(vectors) else cos
    return out


# ---------------------------------------------------------------------------- planner and retrieval


def plan_routes(plan: QueryPlan, mode: str) -> tuple[str, ...]:
    """The routes one question takes under `mode`, in fusion order."""
    names: tuple[str, ...] = ()
    if mode != "bm25":
        names += ("dense", "use") if plan.use_vector is not None else ("dense",)
    if mode != "dense":
        names += ("bm25",)
    return names


def by_score(names: tuple[str, ...], plan: QueryPlan, fusion: FusionSettings) -> bool:
    """Whether a question's lists are fused by normalised scores (else by reciprocal rank)."""
    return names == ("dense", "bm25") and fusion.method == "score" and not plan.cross_lingual


def retrieve(routes: dict[str, Route], plans: list[QueryPlan], k: int, mode: str,
             fusion: FusionSettings = FusionSettings(), ties: TieKeys | None = None) -> list[list[Scored]]:
    """The k best chunks per question under `mode` (module docstring): each route runs once for
    the questions that take it, then each question's lists are fused (equal scores by chunk id,
    `ties`: indexer.topk)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    n = max(k, fusion.candidates)
    taken = [plan_routes(p, mode) for p in plans]
    lists: list[dict[str, Ranked]] = [{} for _ in plans]
    for name, route in routes.items():
        who = [i for i, names in enumerate(taken) if name in names]
        for i, ranked in zip(who, route.run([plans[i] for i in who], n)):
            lists[i][name] = ranked
    scored = [i for i, names in enumerate(taken) if by_score(names, plans[i], fusion)]
    missing = [[cid for cid, _ in lists[i]["bm25"] if cid not in dict(lists[i]["dense"])] for i in scored]
    more = dict(zip(scored, routes["dense"].cosines([plans[i] for i in scored], missing))) if scored else {}
    out = []
    for i, plan in enumerate(plans):
        got = {name: lists[i][name] for name in taken[i]}
        if i in more:
            keyword = routes["bm25"]
            rows = list(dict.fromkeys([row for row, _ in got["dense"]] + [row for row, _ in got["bm25"]]))
            documents = dict(zip(rows, keyword.documents(plan, rows).tolist())) if fusion.doc_share > 0 else None
            wording = dict(zip(rows, keyword.wording(plan, rows))) if fusion.wording_share > 0 else None
            fused = readable(score_fuse(got["dense"], got["bm25"], more[i], fusion.bm25_share, ties, documents,
                                        fusion.doc_share, wording, fusion.wording_share), keyword.ceiling(plan), fusion)
        elif len(got) == 1:
            fused = single(*next(iter(got.items())))
        else:
            fused = rrf_fuse(got, fusion.weights(plan.cross_lingual), fusion.rrf_k, ties)
        out.append(fused[:k])
    return out


# ---------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class DocScored:
    """A document ranked by its passages' evidence, with its best passages, best first."""

    doc_id: str
    score: float
    chunks: list[Scored]


def group_documents(ranked: list[Scored], doc_of: dict[int, str] | Callable[[int], str], k: int,
                    weights: tuple[float, ...] = (1.0,), per_doc: int = 3) -> list[DocScored]:
    """The k best documents of a fused chunk list: a document scores Σ weights[i] × its i-th best
    passage's score (weights (1,): its best passage; (1, .5, .25): a decayed sum of its top three),
    and keeps its `per_doc` best passages. Equal scores: the lower document id first."""
    find = doc_of.__getitem__ if isinstance(doc_of, dict) else doc_of
    by_doc: dict[str, list[Scored]] = {}
    for r in ranked:
        by_doc.setdefault(find(r.row), []).append(r)
    scores = {d: sum(w * r.score for w, r in zip(weights, rs)) for d, rs in by_doc.items()}
    order = sorted(by_doc, key=lambda d: (-scores[d], d))[:k]
    return [DocScored(d, scores[d], by_doc[d][:per_doc]) for d in order]


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
