"""Which words of a question to mark in a passage: terms, their spans, and safe HTML.

Pure functions (regex, no Streamlit), used by the search page. The terms are the ones the question
was searched with (`Result.terms`, cut by the index's own analyzer), so a long word and its parts
are all tried (私立学校 → 私立, 学校, 私立学校); only terms of two or more CJK characters, or Latin
words of three or more letters, are kept, less a short list of question words. A term is found in
a passage (in the index's script: `Engine.fold`) case-insensitively; a Latin term only as a whole
word or with a common ending (cadre → cadres, train → trained).
"""
from __future__ import annotations

import html
import re

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_TERM = re.compile(f"[{CJK}]{{2,}}")
_LATIN_TERM = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")

STOPWORDS = frozenset({
    # Chinese question words and fillers
    "怎样", "如何", "什么", "哪些", "怎么", "是否", "为什么", "怎么样", "什么样", "哪个", "哪里", "多少",
    "有关", "关于", "进行", "我们", "他们", "可以", "需要", "应该", "应当", "这个", "那个", "一些", "有没有",
    "讲话", "提到", "说了",
    # English question words and fillers (≥3 letters; shorter words are dropped anyway)
    "the", "and", "what", "how", "why", "when", "where", "which", "who", "whom", "whose", "are", "was",
    "were", "does", "did", "done", "for", "with", "from", "about", "into", "onto", "that", "this", "these",
    "those", "there", "their", "they", "them", "you", "your", "can", "could", "should", "would", "will",
    "shall", "not", "any", "all", "has", "have", "had", "been", "being", "its", "say", "says", "said",
    "tell", "speech", "text", "document", "mention", "mentions", "according",
})


def worth_marking(terms: list[str]) -> list[str]:
    """Of a question's search terms (`Result.terms`: the analyzer's words and bigrams, or a
    cross-lingual question's Chinese translations), those worth marking in a passage, in order, no
    repeats: two or more CJK characters, or a Latin word of three or more letters, less a short
    list of question words.

    >>> worth_marking(["私立", "学校", "私立学校", "立学", "党", "怎样", "how", "cadres"])
    ['私立', '学校', '私立学校', '立学', 'cadres']
    """
    out: list[str] = []
    for term in terms:
        parts = _CJK_TERM.findall(term) + [p.lower() for p in _LATIN_TERM.findall(term) if len(p) >= 3]
        out.extend(p for p in parts if p not in STOPWORDS and p not in out)
    return out


def _pattern(term: str) -> str:
    escaped = re.escape(term)
    if term[:1].isascii() and term[:1].isalpha():  # a whole word, or the word with a common ending
        return rf"(?<![A-Za-z]){escaped}(?:s|es|d|ed|ing)?(?![A-Za-z])"
    return escaped


def highlight_spans(text: str, terms: list[str]) -> list[tuple[int, int]]:
    """Where the terms occur in the text: sorted, merged, non-overlapping (start, end) offsets.

    Overlapping or touching occurrences become one span (党组 + 组织 in 党组织 → one span).
    """
    terms = sorted({t for t in terms if t}, key=len, reverse=True)
    if not text or not terms:
        return []
    raw = []
    for term in terms:  # one pass per term: an alternation would miss overlapping occurrences
        raw.extend((m.start(), m.end()) for m in re.finditer(_pattern(term), text, flags=re.IGNORECASE))
    return merge_spans(raw)


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort spans and join the ones that overlap or touch."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def to_html(text: str, spans: list[tuple[int, int]], sentence: tuple[int, int] | None = None) -> str:
    """The text HTML-escaped, each span wrapped in <mark>, newlines as <br>; the `sentence` span
    (the answering sentence), if given, wrapped in <span class="answer"> around its own marks.

    Spans are taken as given after merging; ones outside the text are clipped.
    """
    n = len(text)
    if sentence is not None and 0 <= sentence[0] < sentence[1] <= n:
        s, e = sentence
        inside = [(max(a, s) - s, min(b, e) - s) for a, b in spans if a < e and b > s]
        return (to_html(text[:s], [(a, min(b, s)) for a, b in spans if a < s])
                + f'<span class="answer">{to_html(text[s:e], inside)}</span>'
                + to_html(text[e:], [(max(a, e) - e, b - e) for a, b in spans if b > e]))
    out: list[str] = []
    pos = 0
    for start, end in merge_spans([(max(0, s), min(n, e)) for s, e in spans]):
        if start < pos:
            continue
        out.append(_escape(text[pos:start]))
        out.append(f"<mark>{_escape(text[start:end])}</mark>")
        pos = end
    out.append(_escape(text[pos:]))
    return "".join(out)


def _escape(text: str) -> str:
    return html.escape(text, quote=True).replace("\n", "<br>")
