"""Keyword retrieval for Chinese and other languages: jieba segmentation + BM25 (bm25s).

jieba finds Chinese words (its search mode also emits the shorter words inside long ones, so
三重一大 and 重大 both match); a user dictionary adds terms it does not know. Latin words are
lower-cased; punctuation and a short stopword list are dropped. bm25s scores with sparse
matrices, so one query is one vectorised pass over the postings.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[\w\u4e00-\u9fff]", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 也 都 就 而 之 其 这 那 有 被 把 对 为 以 于 从 中 上 下 个 们 "
    "吗 呢 吧 啊 哪些 什么 怎样 怎么 如何 是否 为什么 哪个 哪里 多少 几 要 该 应该 可以 能 会 "
    "a an the of to in on for and or is are was were be been by with as at from what how why "
    "which who whom does do did should can could would will about into this that these those it its".split()
)


@dataclass(frozen=True)
class Segmenter:
    """Text → index terms. `user_terms` are words jieba must keep whole (e.g. 三重一大)."""

    user_terms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        tokenizer = jieba.Tokenizer()
        for term in self.user_terms:
            tokenizer.add_word(term, freq=None)
        object.__setattr__(self, "_jieba", tokenizer)

    def terms(self, text: str) -> list[str]:
        """Index terms of a text, in order, repeats kept (BM25 counts them)."""
        out = []
        for token in self._jieba.lcut_for_search(text):
            token = token.strip().lower()
            if token and token not in STOPWORDS and _WORD.search(token):
                out.append(token)
        return out

    def terms_many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.terms(t) for t in texts]


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
