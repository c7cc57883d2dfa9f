"""Postings and BM25: what the keyword route searches (the terms come from indexer.analysis).

Each segment keeps its postings as arrays (`Postings`, memory-mapped .npy files). BM25 (`bm25`)
reads the query terms' posting lists of every segment and scores with the statistics of all of
them, as Lucene does: bm25s bakes idf and the average length into its matrix when it indexes, so
its scores could not be joined across segments exactly. Its parameters (`BM25`) are kept in the
index's manifest beside the analyzer.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .topk import TieKeys, top_k


@dataclass(frozen=True)
class BM25:
    """BM25's parameters, as the manifest keeps them (`keyword.bm25`)."""

    k1: float = 1.2
    b: float = 0.75

    @staticmethod
    def of(keyword: dict) -> "BM25":
        """The parameters of an index's keyword settings (earlier indexes kept them in `analyzer`)."""
        given = keyword.get("bm25") or keyword.get("analyzer") or {}
        return BM25(float(given.get("k1", 1.2)), float(given.get("b", 0.75)))

    def to_json(self) -> dict:
        return asdict(self)


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
