"""Keyword retrieval for Chinese and other languages: an analyzer (script folding, jieba words,
character bigrams, whole codes) + BM25 (bm25s).

The analyzer (`Analyzer`, kept in the index's manifest so questions are cut as the text was):
- folds Traditional to Simplified with OpenCC (t2s), so either script finds the other;
- takes jieba's search-mode words (三重一大 and 重大 both match; a user dictionary adds terms it
  does not know), lower-cased, without punctuation and a short stopword list;
- adds the overlapping character bigrams of each CJK run (mixed terms: several engines index
  both), which keep a word jieba cut differently in the question and in the text;
- adds codes kept whole (PPR-9087, GB/T 7714-2015, 〔2020〕15号, 2020年, 12.5%), on NFKC text.
Measured on every shared set against jieba alone and bigrams alone (README, "Retrieval quality"):
mixed + codes + t2s is at or above both on each. bm25s scores with sparse matrices, so one
query is one vectorised pass over the postings.
"""
from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

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


class KeywordIndex:
    """BM25 over chunk term lists; rows are the store's rows."""

    def __init__(self, corpus_terms: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        import bm25s

        self.size = len(corpus_terms)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        if self.size:
            # an empty chunk still needs a row; bm25s scores the "" token as nothing
            self._bm25.index([terms or [""] for terms in corpus_terms], show_progress=False)

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every term of the corpus."""
        return frozenset(t for t in (self._bm25.vocab_dict if self.size else ()) if t)

    def ceiling(self, query_terms: list[str]) -> float:
        """Σ idf of the query's terms in the corpus (repeats counted, as in scoring): what BM25 nears
        as a text holds every term often. A score over it is the share of the question's keyword
        weight a text matches, on the same 0–1 scale for every question."""
        if not self.size:
            return 0.0
        vocab, indptr = self._bm25.vocab_dict, self._bm25.scores["indptr"]
        df = np.array([indptr[vocab[t] + 1] - indptr[vocab[t]] for t in query_terms if t and t in vocab], np.float64)
        return float(np.log1p((self.size - df + 0.5) / (df + 0.5)).sum())

    def scores(self, query_terms: list[str]) -> np.ndarray:
        """BM25 score of every row for the query terms (zeros when none is in the corpus)."""
        if not self.size:
            return np.zeros(0, np.float32)
        known = [t for t in query_terms if t in self._bm25.vocab_dict and t]
        if not known:
            return np.zeros(self.size, np.float32)
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)

    def search(self, query_terms: list[str], k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, rows) with a positive score, best first, optionally within `rows`."""
        scores = self.scores(query_terms)
        if rows is not None:
            masked = np.full_like(scores, -np.inf)
            masked[rows] = scores[rows]
            scores = masked
        candidates = np.flatnonzero(scores > 0)
        if not len(candidates):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        top = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
        return scores[top], top
