"""Keyword retrieval for Chinese and other languages: an analyzer (script folding, jieba words,
character bigrams, whole codes) + BM25 over segment postings.

The analyzer (`Analyzer`, kept in the index's manifest so questions are cut as the text was):
- folds Traditional to Simplified with OpenCC (t2s), so either script finds the other;
- takes jieba's search-mode words (三重一大 and 重大 both match; a user dictionary adds terms it
  does not know), lower-cased, without punctuation and a short stopword list;
- adds the overlapping character bigrams of each CJK run (mixed terms: several engines index
  both), which keep a word jieba cut differently in the question and in the text;
- adds codes kept whole (PPR-9087, GB/T 7714-2015, 〔2020〕15号, 2020年, 12.5%), on NFKC text.
Measured on every shared set against jieba alone and bigrams alone (docs/decisions/analyzer.md):
mixed + codes + t2s is at or above both on each. BM25 (`bm25`) reads the query terms' posting
lists of every segment and scores with the statistics of all of them, as Lucene does: bm25s bakes
idf and the average length into its matrix when it indexes, so its scores could not be joined
across segments exactly.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .topk import TieKeys, top_k

_WORD = re.compile(r"[\w\u4e00-\u9fff]", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 有 被 把 对 为 以 于 从 中 上 下 个 们 "
    "吗 呢 吧 啊 哪些 什么 怎样 怎么 如何 是否 为什么 哪个 哪里 多少 几 要 该 应该 可以 能 会 "
    "a an the of to in on for and or is are was were be been by with as at from what how why "
    "which who whom does do did should can could would will about into this that these those it its".split()
)


_CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK_CHARS}]+|[^\W_{_CJK_CHARS}]+", re.UNICODE)  # a CJK run, or other letters/digits
_CODE = re.compile(
    r"[a-z]+/[a-z]+\s?\d+(?:[-.]\d+)*"                 # GB/T 7714-2015
    r"|[a-z]+[-._]?\d+(?:[-/._]\d+)*[a-z]*"           # PPR-9087, v2.1, iso9001
    r"|[\[(〔【]\d{4}[\])〕】]\s*第?\d+号"               # 〔2020〕15号, [2020]第15号
    r"|第?\d+(?:\.\d+)?(?:%|‰|[年月日号条款项章节岁元万亿千百个次人家所倍])",  # 2020年, 30万, 12.5%
    re.IGNORECASE)


@dataclass(frozen=True)
class Analyzer:
    """How text becomes keyword terms; recorded in the manifest (`keyword.analyzer`)."""

    terms: str = "mixed"  # jieba: search-mode words; mixed: those and the CJK character bigrams
    fold: str | None = "t2s"  # OpenCC configuration folding the scripts (None: none)
    codes: bool = True  # also each code (PPR-9087, 〔2020〕15号, 2020年) as one term
    k1: float = 1.2
    b: float = 0.75

    @staticmethod
    def of(keyword: dict) -> "Analyzer":
        """The analyzer of an index's keyword settings; an index made before analyzers were
        recorded used jieba words alone, unfolded."""
        return Analyzer(**keyword["analyzer"]) if "analyzer" in keyword else LEGACY

    def to_json(self) -> dict:
        return asdict(self)


LEGACY = Analyzer("jieba", None, False)


@functools.lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def bigrams(text: str) -> list[str]:
    """Overlapping character bigrams of each CJK run (a one-character run stands alone); other runs
    of letters and digits whole, lower-cased."""
    out: list[str] = []
    for run in _RUN.findall(unicodedata.normalize("NFKC", text).lower()):
        if not _CJK.match(run) or len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i:i + 2] for i in range(len(run) - 1))
    return out


def phrase_terms(phrase: str, analyzer: Analyzer) -> list[str]:
    """Terms that every text holding `phrase` (both in the analyzer's script) is indexed under, so
    their posting lists narrow a phrase search before any text is read: the character bigrams of
    the phrase's CJK runs, which the "mixed" analyzer takes from every CJK run whatever surrounds
    it. None otherwise: jieba's words and Latin runs depend on the text around the phrase."""
    if analyzer.terms != "mixed":
        return []
    return [b for run in _RUN.findall(unicodedata.normalize("NFKC", phrase).lower())
            if _CJK.match(run) and len(run) > 1 for b in bigrams(run)]


def phrase_is_term(phrase: str, analyzer: Analyzer) -> bool:
    """Whether a text holds `phrase` exactly when it is indexed under the phrase's one term: a
    two-character CJK phrase is its own bigram under the "mixed" analyzer, so its posting list
    answers without reading a text."""
    return phrase_terms(phrase, analyzer) == [unicodedata.normalize("NFKC", phrase).lower()]


def codes(text: str) -> list[str]:
    """The codes in a text, each whole and normalised (NFKC, lower case, brackets as (), no 第 or
    spaces), so 〔2020〕第15号 and [2020]15号 are one term."""
    out = []
    for m in _CODE.finditer(unicodedata.normalize("NFKC", text).lower()):
        code = re.sub(r"\s+", "", m.group(0)).replace("第", "")
        out.append(re.sub(r"[\]〕】]", ")", re.sub(r"[\[〔【]", "(", code)))
    return out


@dataclass(frozen=True)
class Segmenter:
    """Text → index terms under an analyzer. `user_terms` are words jieba keeps whole (三重一大)."""

    user_terms: tuple[str, ...] = ()
    analyzer: Analyzer = LEGACY

    def __post_init__(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        tokenizer = jieba.Tokenizer()
        for term in self.user_terms:
            tokenizer.add_word(self.fold(term), freq=None)
        object.__setattr__(self, "_jieba", tokenizer)

    @staticmethod
    def of(keyword: dict, extra_terms: Iterable[str] = ()) -> "Segmenter":
        """The segmenter of an index's keyword settings (its user terms, synonyms and analyzer)."""
        words = [*keyword.get("user_terms", ()), *(w for g in keyword.get("synonyms", ()) for w in g), *extra_terms]
        return Segmenter(tuple(dict.fromkeys(words)), Analyzer.of(keyword))

    def fold(self, text: str) -> str:
        """The text in the analyzer's script (unchanged when it folds none). OpenCC's t2s maps
        character for character, so offsets into the folded text are offsets into the original."""
        return _converter(self.analyzer.fold).convert(text) if self.analyzer.fold and text else text

    def terms(self, text: str) -> list[str]:
        """Index terms of a text, in order, repeats kept (BM25 counts them)."""
        text = self.fold(text)
        if self.analyzer != LEGACY:
            text = unicodedata.normalize("NFKC", text)  # full-width letters, digits and brackets as plain ones
        out = []
        for token in self._jieba.lcut_for_search(text):
            token = token.strip().lower()
            if token and token not in STOPWORDS and _WORD.search(token):
                out.append(token)
        if self.analyzer.terms == "mixed":
            out += bigrams(text)
        if self.analyzer.codes:
            out += codes(text)
        return out

    def terms_many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.terms(t) for t in texts]


def with_synonyms(terms: list[str], groups: Iterable[Iterable[str]]) -> list[str]:
    """The terms, each followed by the other words of any synonym group it is in."""
    lookup: dict[str, list[str]] = {}
    for group in groups:
        words = [w.lower() for w in group]
        for w in words:
            lookup.setdefault(w, []).extend(x for x in words if x != w)
    return [x for t in terms for x in [t, *lookup.get(t, [])]]  # repeats kept: BM25 counts them


def read_synonyms(lines: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Synonym groups, one per line: words separated by spaces, commas, 、 or =; # starts a comment."""
    groups = []
    for line in lines:
        words = [w for w in re.split(r"[\s,，、=;；]+", line.split("#", 1)[0]) if w]
        if len(words) > 1:
            groups.append(tuple(dict.fromkeys(words)))
    return tuple(groups)


def term_keys(terms: Iterable[str]) -> np.ndarray:
    """Stable 64-bit keys of terms (blake2b): posting lists are found by key, so a segment's
    dictionary is a sorted int64 array that is memory-mapped, not a Python dict read on open."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
                     for t in terms], dtype=np.int64)


POSTING_ARRAYS = ("keys", "starts", "rows", "tf", "lengths")


@dataclass(frozen=True)
class Postings:
    """One segment's inverted index: per term (by its key, sorted) the rows that hold it and how
    often, and every row's length in terms. Arrays only, so a segment's postings are saved as .npy
    files and memory-mapped: opening an index reads none of them, a question reads its terms' lists."""

    keys: np.ndarray  # int64 [V], sorted
    starts: np.ndarray  # int64 [V + 1]: term j's postings are rows[starts[j]:starts[j + 1]]
    rows: np.ndarray  # int32 [nnz]
    tf: np.ndarray  # float32 [nnz]
    lengths: np.ndarray  # int32 [n]: terms per row (repeats counted)

    @staticmethod
    def build(term_lists: list[list[str]]) -> tuple["Postings", list[str]]:
        """The postings of these rows' terms, and the terms in key order (the vocabulary)."""
        ids: dict[str, int] = {}
        term_ids, rows, tf = [], [], []
        for row, terms in enumerate(term_lists):
            for term, count in Counter(t for t in terms if t).items():
                term_ids.append(ids.setdefault(term, len(ids)))
                rows.append(row)
                tf.append(count)
        vocab = list(ids)
        keys = term_keys(vocab)
        order = np.argsort(keys, kind="stable")
        rank = np.empty(len(vocab), np.int64)
        rank[order] = np.arange(len(vocab))
        t = rank[np.asarray(term_ids, np.int64)]
        by = np.lexsort((np.asarray(rows, np.int64), t))
        starts = np.zeros(len(vocab) + 1, np.int64)
        np.cumsum(np.bincount(t, minlength=len(vocab)), out=starts[1:])
        lengths = np.array([sum(1 for x in terms if x) for terms in term_lists], np.int32)
        return (Postings(keys[order], starts, np.asarray(rows, np.int32)[by], np.asarray(tf, np.float32)[by], lengths),
                [vocab[i] for i in order])

    @staticmethod
    def merge(parts: list[tuple["Postings", np.ndarray | None]]) -> "Postings":
        """One segment's postings from the live rows (mask; None: all) of several, rows renumbered
        in order: what a merge writes, without the terms being cut again.

        Each part's lists are already in key order with ascending rows, and the parts' rows follow
        each other, so every posting's place in the merged lists is known without a sort: a term's
        list is its parts' lists one after the other. The postings are scattered straight into the
        merged arrays, one part at a time (a sort of every posting by key and row took several
        times the merged arrays' memory: 10.5 GB for a million rows)."""
        kept, lengths, base = [], [], 0
        for p, live in parts:
            counts = np.diff(p.starts)
            rows, tf = p.rows.astype(np.int64) + base, p.tf
            if live is not None:
                keep = live[p.rows]
                if len(counts):
                    counts = np.add.reduceat(keep.astype(np.int64), p.starts[:-1])
                rows, tf = (np.cumsum(live) - 1)[p.rows[keep]] + base, tf[keep]
            lengths.append(p.lengths if live is None else p.lengths[live])
            base += len(lengths[-1])
            kept.append((p.keys, counts, rows, tf))
        keys = np.unique(np.concatenate([k for k, *_ in kept] or [np.zeros(0, np.int64)]))
        where = [np.searchsorted(keys, k) for k, *_ in kept]
        total = np.zeros(len(keys), np.int64)
        for at, (_, counts, _, _) in zip(where, kept):
            total[at] += counts  # a part holds each key once
        starts = np.zeros(len(keys) + 1, np.int64)
        np.cumsum(total, out=starts[1:])
        out_rows, out_tf = np.empty(starts[-1], np.int32), np.empty(starts[-1], np.float32)
        filled = starts[:-1].copy()  # where each term's next posting goes
        for at, (_, counts, rows, tf) in zip(where, kept):
            first = np.repeat(filled[at] - (np.cumsum(counts) - counts), counts)
            place = first + np.arange(len(rows))
            out_rows[place], out_tf[place] = rows, tf
            filled[at] += counts
        held = total > 0  # a term whose every row was removed goes
        starts = np.zeros(int(held.sum()) + 1, np.int64)
        np.cumsum(total[held], out=starts[1:])
        return Postings(keys[held], starts, out_rows, out_tf,
                        np.concatenate(lengths or [np.zeros(0, np.int32)]).astype(np.int32))

    def __len__(self) -> int:
        return len(self.lengths)

    def lookup(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, term frequencies) of the term with this key (empty when no row holds it)."""
        j = int(np.searchsorted(self.keys, key))
        if j == len(self.keys) or self.keys[j] != key:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        return self.rows[self.starts[j]:self.starts[j + 1]], self.tf[self.starts[j]:self.starts[j + 1]]

    def holding_all(self, keys: np.ndarray) -> np.ndarray:
        """The rows that hold every one of these terms (by key), ascending; the shortest list first."""
        lists = sorted((self.lookup(int(key))[0] for key in keys), key=len)
        rows = lists[0].astype(np.int64) if lists else np.zeros(0, np.int64)
        for more in lists[1:]:
            rows = np.intersect1d(rows, more, assume_unique=True)
        return rows


def bm25(parts: list[tuple[Postings, np.ndarray | None]], terms: list[str], k1: float = 1.2,
         b: float = 0.75) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """BM25 (Lucene's form, as bm25s computes it) of the rows of every part for the query terms,
    repeats counted, with the statistics (rows, average length, document frequencies) of the live
    rows of all the parts together: a row scores the same however the index is split into
    segments. `parts`: each segment's postings and its live rows' mask (None: all live). Returns
    per part the live rows that hold a query term (ascending) with their float32 scores, and the
    query's ceiling, Σ idf of its known terms. Lengths are normalised only for the rows of the
    query's posting lists."""
    keys = dict(zip(dict.fromkeys(t for t in terms if t), term_keys(dict.fromkeys(t for t in terms if t))))
    n = sum(len(p) if live is None else int(np.count_nonzero(live)) for p, live in parts)
    total = sum(int(p.lengths.sum(dtype=np.int64)) if live is None else int(p.lengths[live].sum(dtype=np.int64))
                for p, live in parts)
    found: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    df = dict.fromkeys(keys, 0)
    for p, live in parts:
        got = {}
        for term, key in keys.items():
            rows, tf = p.lookup(key)
            if live is not None and len(rows):
                keep = live[rows]
                rows, tf = rows[keep], tf[keep]
            got[term] = (rows, tf)
            df[term] += len(rows)
        found.append(got)
    idf = {t: np.float32(np.log1p((n - d + 0.5) / (d + 0.5))) for t, d in df.items() if d}
    avg = total / n if n else 1.0
    out = []
    for (p, _), got in zip(parts, found):
        scores = np.zeros(len(p), np.float32)
        for term in terms:
            if term in idf:
                rows, tf = got[term]
                norm = np.float32(k1) * (np.float32(1 - b) + np.float32(b) * p.lengths[rows].astype(np.float32) / np.float32(avg))
                scores[rows] += idf[term] * tf / (norm + tf)
        hit = np.flatnonzero(scores)  # every term's share is positive: the rows holding one
        out.append((hit, scores[hit]))
    return out, float(sum(float(idf[t]) for t in terms if t in idf))


class KeywordIndex:
    """BM25 over one list of chunk term lists (rows are its rows): a single segment's postings."""

    def __init__(self, corpus_terms: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.postings, terms = Postings.build(corpus_terms)
        self.vocabulary = frozenset(terms)  # every term of the corpus
        self.k1, self.b = k1, b

    def ceiling(self, query_terms: list[str]) -> float:
        """Σ idf of the query's terms in the corpus (repeats counted, as in scoring): what BM25 nears
        as a text holds every term often. A score over it is the share of the question's keyword
        weight a text matches, on the same 0–1 scale for every question."""
        return bm25([(self.postings, None)], query_terms, self.k1, self.b)[1]

    def search(self, query_terms: list[str], k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) with a positive score, best first, optionally within `rows`."""
        ((hit, scores),), _ = bm25([(self.postings, None)], query_terms, self.k1, self.b)
        return top_positive(hit, scores, k, rows)


def top_positive(rows: np.ndarray, scores: np.ndarray, k: int, within: np.ndarray | None = None,
                 ties: TieKeys | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best (scores, rows) of scored rows (ascending) with a positive score, best first
    (equal scores by chunk id, `ties`: indexer.topk), optionally only among the rows `within`
    (ascending)."""
    keep = scores > 0
    if within is not None:
        at = np.minimum(np.searchsorted(within, rows), max(len(within) - 1, 0))
        keep &= (within[at] == rows) if len(within) else False
    return top_k(scores[keep], rows[keep], k, ties)
