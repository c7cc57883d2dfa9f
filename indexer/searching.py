"""Answering questions: the reader side of an engine (as tantivy's IndexReader beside its
IndexWriter). A Searcher holds the last committed snapshot of an index and moves to a newer one
when a writer commits (`publish`, in this process) or another process has (checked at each
question, one read of the commit generation): a question in flight keeps the snapshot it began on,
and no question ever waits for a write. Questions run the routes of indexer.search over the
snapshot, are fused, grouped, and turned into hits with their answering sentences at the end.
"""
from __future__ import annotations

import collections
import functools
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Generic, Hashable, Iterable, TypeVar

import numpy as np

from . import filters
from .analysis import Analyzer, Segmenter, char_ngrams, phrase_is_term, phrase_terms, with_synonyms
from .chunking import Chunk
from .crosslingual import Translator, is_cross_lingual
from .errors import QueryError
from .models import Models
from .querytext import ParsedQuery, holds, parse_query
from .results import DocHit, Hit, Result, SearchOptions, explain
from .search import (DenseRoute, FusionSettings, KeywordRoute, QueryPlan, Scored, UseRoute, best_sentence,
                     group_documents, retrieve)
from .settings import IndexSettings
from .store import Snapshot
from .store.base import DocRecord

DOC_POOL = 10  # grouped by documents: the best k × 10 passages are grouped into k documents
MAX_QUERY_CHARS = 2000  # the model reads ~512 tokens; longer questions are cut here, visibly
RECENT_ROWS = 8192  # chunk records, and texts folded to the index's script, a snapshot's view keeps (the last used)

K, V = TypeVar("K", bound=Hashable), TypeVar("V")


class Recent(Generic[K, V]):
    """A map of at most `size` items, the least recently used dropped first; safe across threads
    (the questions of a server share a view)."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict[K, V](), threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def clean_query(query: str) -> str:
    """Strip control characters and outer space; refuse a question with nothing in it."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(query)).strip()
    if not text:
        raise QueryError("the question is empty")
    return text[:MAX_QUERY_CHARS]


class SnapshotView:
    """What questions keep of one committed snapshot: the settings it was built with (and their
    segmenter), the translator over its vocabulary (made on the first cross-lingual question),
    the chunk records and texts folded to the index's script that questions read last (a question's
    wording part, grouping and hits read many of the same rows), and for each reader's scope the
    documents it allows and a translator over their vocabulary alone."""

    def __init__(self, store: Snapshot) -> None:
        self.store = store
        self.settings = IndexSettings.of_manifest(store.manifest)
        self.segmenter = self.settings.segmenter
        self._chunks: Recent[int, Chunk] = Recent(RECENT_ROWS)
        self._folded: Recent[int, str] = Recent(RECENT_ROWS)
        self._titles: Recent[str, tuple[str, str]] = Recent(RECENT_ROWS)
        self._within: dict[tuple[str, ...], dict[str, DocRecord]] = {}
        self._translators: dict[tuple[str, ...], Translator] = {}

    @functools.cached_property
    def by_source(self) -> dict[str, int]:
        """How many documents each source holds (worked out once per snapshot, and only for an
        index that follows folders)."""
        if not self.store.manifest.sources:
            return {}
        return dict(collections.Counter(r.source for r in self.store.manifest.documents.values()))

    @functools.cached_property
    def translator(self) -> Translator:
        return Translator(self.store.vocabulary())

    def within(self, scope: tuple[str, ...]) -> dict[str, DocRecord]:
        """The documents a reader bound to the filters `scope` may see, by id, in the index's order
        (every document for no scope); worked out once per snapshot and scope. A field no document
        has is met by none, without an error that would name the fields of other documents."""
        if not scope:
            return self.store.manifest.documents
        found = self._within.get(scope)
        if found is None:
            docs = self.store.manifest.documents
            met = filters.matching(docs.values(), filters.parse(scope), strict=False)
            found = self._within[scope] = {d: r for d, r in docs.items() if d in met}
        return found

    def translator_within(self, scope: tuple[str, ...]) -> Translator:
        """The translator over the terms of the documents a scope allows: a translation term held
        only by other documents would tell a reader that they exist."""
        if not scope:
            return self.translator
        found = self._translators.get(scope)
        if found is None:
            rows = self.store.rows_of(set(self.within(scope)))
            found = self._translators[scope] = Translator(self.store.vocabulary(rows))
        return found

    def scope(self, parsed: ParsedQuery, allowed: np.ndarray | None,
              segmenter: Segmenter) -> tuple[np.ndarray | None, frozenset[int]]:
        """(scope, excluded) of a question, comparing in the index's script (the segmenter's fold:
        a Simplified phrase finds its Traditional text). With phrases, the scope is the rows (of the
        allowed ones; None: every live row) that hold them and none of its exclusions, ascending;
        with exclusions alone, the scope is None and `excluded` the rows that hold an excluded word,
        so the routes search as usual and drop those. Posting lists answer first: a two-character
        phrase or word is held exactly by the rows indexed under it (`phrase_is_term`), and a longer
        phrase only by rows indexed under all its bigrams (`phrase_terms`), so the texts read are
        those of the candidates for what the lists cannot decide, never the index's."""
        if not parsed.constrained:
            return None, frozenset()
        fold, analyzer = segmenter.fold, segmenter.analyzer
        phrases, excluded = tuple(map(fold, parsed.phrases)), tuple(map(fold, parsed.excluded))
        rows = self.store.rows_of() if allowed is None else allowed
        held = {x: self._holding(rows, (x,), analyzer) for x in excluded}
        decided = {x: told and self._exact(x, analyzer) for x, (_, told) in held.items()}  # the list alone tells
        known = [held[x][0] for x in excluded if decided[x]]
        unsure_out = tuple(x for x in excluded if not decided[x])
        if phrases:
            suspects, told = self._holding(rows, phrases, analyzer)
            for gone in known:
                suspects = np.setdiff1d(suspects, gone, assume_unique=True)
            unsure = ParsedQuery(parsed.text, tuple(p for p in phrases if not (told and self._exact(p, analyzer))),
                                 unsure_out)
            failed = np.fromiter(self._failing(suspects, unsure, fold), np.int64)
            return np.setdiff1d(suspects, failed, assume_unique=True), frozenset()
        suspects = np.unique(np.concatenate([held[x][0] for x in unsure_out] or [np.zeros(0, np.int64)]))
        gone = frozenset(np.concatenate(known).tolist()) if known else frozenset()
        return None, gone | self._failing(suspects, ParsedQuery(parsed.text, (), unsure_out), fold)

    def _exact(self, phrase: str, analyzer: Analyzer) -> bool:
        """Whether the rows indexed under this phrase's one term are exactly those whose text holds
        it: a two-character phrase is its own bigram, unless a document's title (whose terms its
        chunks are indexed under too: IndexSettings.title_terms) holds it."""
        return phrase_is_term(phrase, analyzer) and not (self.settings.title_terms and phrase in self.titles)

    @functools.cached_property
    def titles(self) -> str:
        """Every document's title in the index's script, one a line (read once per snapshot)."""
        return "\n".join(self.segmenter.fold(d.title) for d in self.store.manifest.documents.values())

    def _failing(self, rows: np.ndarray, wanted: ParsedQuery, fold: Callable[[str], str]) -> frozenset[int]:
        """Those of `rows` whose text does not hold `wanted` (its phrases, none of its exclusions):
        their texts are read, unless there is nothing to check."""
        if not wanted.constrained or not len(rows):
            return frozenset()
        return frozenset(row for row, c in zip(rows.tolist(), self.chunks(rows.tolist()))
                         if not holds(self.folded(row, c.text, fold), wanted))

    def _holding(self, rows: np.ndarray, phrases: tuple[str, ...], analyzer: Analyzer) -> tuple[np.ndarray, bool]:
        """Those of `rows` indexed under every term that all holders of these phrases have, and
        whether the posting lists told (False: all `rows`, as there is no such term or the store
        cannot tell)."""
        must = [t for p in phrases for t in phrase_terms(p, analyzer)]
        held = self.store.rows_with_terms(must) if must else None
        return (rows, False) if held is None else (np.intersect1d(rows, held, assume_unique=True), True)

    def keyword_texts(self, rows: list[int]) -> list[str]:
        """These rows' keyword texts (IndexSettings.keyword_text: the title where the index keeps
        title terms, and the text) in the index's script: what a question's wording is found in."""
        fold = self.segmenter.fold
        return [self.settings.keyword_text(self.folded_title(c.doc_id), self.folded(row, c.text, fold))
                for row, c in zip(rows, self.chunks(rows))]

    def chunks(self, rows: list[int]) -> list[Chunk]:
        """These rows' chunk records, in the order given: those read lately from memory, the others
        in one read of the store."""
        found = [self._chunks.get(row) for row in rows]
        missing = list(dict.fromkeys(row for row, c in zip(rows, found) if c is None))
        if missing:
            read = dict(zip(missing, self.store.chunks(missing)))
            for row, chunk in read.items():
                self._chunks.put(row, chunk)
            found = [read[row] if c is None else c for row, c in zip(rows, found)]
        return found

    def title(self, doc_id: str) -> str:
        """A document's title ("" when a newer commit removed it while the question was answered)."""
        return self._titles_of(doc_id)[0]

    def folded_title(self, doc_id: str) -> str:
        """A document's title in the index's script."""
        return self._titles_of(doc_id)[1]

    def _titles_of(self, doc_id: str) -> tuple[str, str]:
        """A document's title as it is and folded, kept among the recent ones."""
        titles = self._titles.get(doc_id)
        if titles is None:
            record = self.store.manifest.documents.get(doc_id)
            title = record.title if record is not None else ""
            titles = (title, self.segmenter.fold(title))
            self._titles.put(doc_id, titles)
        return titles

    def folded(self, row: int, original: str, fold: Callable[[str], str]) -> str:
        """Row `row`'s text in the index's script (kept among the recent ones). OpenCC's t2s
        maps character for character; were a length to change, the original text stands."""
        text = self._folded.get(row)
        if text is None:
            text = fold(original)
            text = text if len(text) == len(original) else original
            self._folded.put(row, text)
        return text


class Searcher:
    """Questions over the index at `path`, encoded with `models`; `fusion` says how routes join."""

    def __init__(self, path: Path, models: Models) -> None:
        self.path, self.models = Path(path), models
        self.fusion = FusionSettings()
        self._snapshot: Snapshot | None = None
        self._view: SnapshotView | None = None
        self._swap = threading.Lock()  # held to look at or replace the snapshot, never across a question or a write

    def current(self) -> tuple[Snapshot, SnapshotView]:
        """The last committed snapshot (and what questions keep of it), reopened when a newer
        commit is there."""
        with self._swap:
            fresh = Snapshot.load(self.path) if self._snapshot is None else self._snapshot.reopened()
            if fresh is not self._snapshot or self._view is None:
                self._snapshot, self._view = fresh, SnapshotView(fresh)
            return fresh, self._view

    def publish(self, snapshot: Snapshot) -> None:
        """A writer of this process committed: later questions take its snapshot (and a new view of it)."""
        with self._swap:
            self._snapshot, self._view = snapshot, SnapshotView(snapshot)

    def forget(self) -> None:
        """Drop the snapshot (an upgrade rewrote the folder): the next question opens it again."""
        with self._swap:
            self._snapshot = self._view = None

    def answer(self, queries: list[str], options: SearchOptions, sentences: bool = True) -> list[Result]:
        """Each question's ranked passages (or documents), with the terms it was searched with and
        each hit's answering sentence; the questions are encoded together.

        mode: dense (embeddings), bm25 (keywords) or hybrid (both, fused: indexer.search). A
        question with no CJK character and some Latin letters is cross-lingual: where the index
        keeps the USE vectors it also takes the USE route, and its English words are translated
        into the corpus's Chinese terms for BM25 (`options.use`, `options.translate` and the
        searcher's `fusion` switch either off). `docs` and `where` limit the search to the
        documents they allow, inside every route; a question's quoted phrases and `-word`
        exclusions (indexer.querytext) limit it to the passages that hold them. Grouped by
        documents, documents are ranked by their passages' evidence (search.group_documents),
        each with its best passages; k then counts documents and min_score applies to them.
        sentences=False leaves out the answering sentences (what `eval` needs no sentence for)."""
        texts = [clean_query(q) for q in queries]
        conditions = filters.parse(options.where)
        fusion = replace(self.fusion, use_route=self.fusion.use_route and options.use,
                         translate=self.fusion.translate and options.translate)
        store, view = self.current()
        self.models.check(store.manifest, str(self.path))
        allowed = self._doc_filter(view.within(options.scope), options.docs, conditions, bool(options.scope))
        segmenter, mode, k, min_score = view.segmenter, options.mode, options.k, options.min_score
        rows = store.rows_of(allowed)
        parsed = [parse_query(t) for t in texts]
        asked = [p.text for p in parsed]  # what the routes read: no quotes, no exclusions
        encoding = self.models.pool().submit(self.models.e5().encode_queries, asked) if mode != "bm25" else None
        plans, translations, use_vecs = self._plans(asked, view, fusion, options.scope)  # meanwhile: keywords, USE vectors
        fold = segmenter.fold
        scopes = [view.scope(p, rows, segmenter) for p in parsed]
        grams = [frozenset() if plan.cross_lingual else frozenset(char_ngrams(fold(p.text), fusion.wording_chars))
                 for plan, p in zip(plans, parsed)]
        plans = [replace(plan, terms=plan.terms + [t for t in (fold(x).lower() for x in p.phrases) if t not in plan.terms],
                         scope=scope, excluded=excluded, grams=g)  # repeats count in BM25
                 for plan, p, (scope, excluded), g in zip(plans, parsed, scopes, grams)]
        if encoding is not None:
            plans = [replace(p, vector=v) for p, v in zip(plans, encoding.result())]
        share = fusion.sentence_share if store.manifest.crosslingual.get("e5_sentences") else 0.0
        routes = {"dense": DenseRoute(store, allowed, share), "use": UseRoute(store, rows),
                  "bm25": KeywordRoute(store, allowed, view.keyword_texts)}
        by_doc = options.group == "documents"
        ranked = retrieve(routes, plans, max(k * DOC_POOL, fusion.candidates) if by_doc else k, mode, fusion,
                          store.tie_keys)
        out = []
        for i, (text, plan) in enumerate(zip(texts, plans)):
            use_vector = None if use_vecs is None else use_vecs[i]
            if not by_doc:
                hits = self._hits(store, view, ranked[i], min_score, plan.terms, use_vector, sentences)
                out.append(Result(text, hits, plan.terms, plan.cross_lingual, translations[i], store.generation))
                continue
            found_rows = [r.row for r in ranked[i]]
            grouped = group_documents(ranked[i], {r: c.doc_id for r, c in zip(found_rows, view.chunks(found_rows))}, k,
                                      fusion.doc_weights)
            found = [DocHit(n, round(d.score, 6), d.doc_id, view.title(d.doc_id),
                            self._hits(store, view, d.chunks, None, plan.terms, use_vector, sentences))
                     for n, d in enumerate((d for d in grouped if min_score is None or d.score >= min_score), 1)]
            out.append(Result(text, [h for d in found for h in d.hits], plan.terms, plan.cross_lingual,
                              translations[i], store.generation, found))
        return out

    def _plans(self, texts: list[str], view: SnapshotView, fusion: FusionSettings,
               scope: tuple[str, ...] = ()) -> tuple[list[QueryPlan], list, np.ndarray | None]:
        """Per question: its keyword terms (translated for a cross-lingual question), its language,
        and its USE vector where the USE route runs; the translations; every question's USE
        vector (which also picks the answering sentences), None when the index keeps no USE vectors.
        Within a reader's scope, translations and synonyms come from its documents' terms alone."""
        cross = [is_cross_lingual(t) for t in texts]
        terms = view.segmenter.terms_many(texts)
        translations: list[list[tuple[str, list[str]]]] = [[] for _ in texts]
        translator = view.translator_within(scope)
        for i, text in enumerate(texts):
            if cross[i] and fusion.translate:
                translations[i] = translator.explain(text)
                terms[i] = list(dict.fromkeys(t for _, part in translations[i] for t in part)) or terms[i]
            own = set(terms[i])
            terms[i] = [t for t in with_synonyms(terms[i], view.settings.synonyms)
                        if not scope or t in own or t in translator.vocabulary]
        use_vecs = self.models.use().encode_queries(texts) if view.store.manifest.crosslingual else None
        plans = [QueryPlan(terms[i], cross[i],
                           use_vecs[i] if use_vecs is not None and cross[i] and fusion.use_route else None)
                 for i in range(len(texts))]
        return plans, translations, use_vecs

    @staticmethod
    def _doc_filter(records: dict[str, DocRecord], docs: Iterable[str] | None, conditions: list[filters.Condition],
                    scoped: bool = False) -> set[str] | None:
        """The documents a question may search (None: all): of `records` (a scope's documents when
        `scoped`, which are then all it may search), the ids given, that meet every filter. An id
        outside them is unknown, as one no document has."""
        wanted = None if docs is None else set(docs)
        unknown = sorted(d for d in wanted or () if d not in records)
        if unknown:
            raise QueryError(f"no document {unknown[0]!r} in the index")
        if conditions:
            met = filters.matching(records.values(), conditions)
            wanted = met if wanted is None else wanted & met
        return set(records) if wanted is None and scoped else wanted

    def _hits(self, store: Snapshot, view: SnapshotView, ranked: list[Scored], min_score: float | None, terms: list[str],
              use_vector: np.ndarray | None, sentences: bool = True) -> list[Hit]:
        """Fused results as hits: each chunk with its answering sentence and why it ranks there
        (terms are matched in the text folded to the index's script; offsets are the original's).
        The chunks' records are read here, for these rows only."""
        table = bool(store.manifest.crosslingual)
        ranked = [r for r in ranked if min_score is None or r.score >= min_score]
        out = []
        for r, c in zip(ranked, view.chunks([r.row for r in ranked])):
            folded = view.folded(r.row, c.text, view.segmenter.fold)
            if not sentences:
                span = None
            elif table:
                spans, vectors, _ = store.sentences(r.row)
                span = best_sentence(folded, terms, spans, vectors, use_vector)
            else:
                span = best_sentence(folded, terms)
            s_start, s_end = (c.start + span[0], c.start + span[1]) if span else (None, None)
            out.append(Hit(len(out) + 1, round(r.score, 6), c.chunk_id, c.doc_id, view.title(c.doc_id), c.section,
                           c.text, c.start, c.end, c.paragraph, c.position, s_start, s_end, explain(r, folded, terms),
                           c.place))
        return out
