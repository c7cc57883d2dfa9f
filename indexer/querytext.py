"""What a question asks beyond its words: quoted phrases that must occur in a hit, and `-词`
exclusions that must not.

    "三重一大" 怎样落实        → the hit holds 三重一大 (straight, curly or corner quotes)
    民办学校 党建 -幼儿园       → the hit does not hold 幼儿园 (a minus after a space or at the start;
                                 the hyphen inside PPR-9087 is part of the word)
    台湾 -"台北市"              → the hit does not hold the phrase 台北市 (a minus before quotes)

The routes read the question without its quotes and exclusions; the phrases and exclusions
decide which chunks it may return (indexer.engine's `_StoreView.scope`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_PHRASE = re.compile(r'"([^"]+)"|“([^”]+)”|「([^」]+)」|『([^』]+)』|‘([^’]+)’')
_EXCLUDED = re.compile(r"(?:^|(?<=\s))[-－]([^\s\"“”「」『』]+)")
_EXCLUDED_PHRASE = re.compile(r"(?:^|(?<=\s))[-－](?:" + _PHRASE.pattern + ")")


@dataclass(frozen=True)
class ParsedQuery:
    """A question split into the text the routes read, its phrases and its exclusions."""

    text: str
    phrases: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        return bool(self.phrases or self.excluded)


def _quoted(match: re.Match) -> str:
    return next(g for g in match.groups() if g)


def parse_query(question: str) -> ParsedQuery:
    """Split out quoted phrases (kept in the text, without their quotes), `-"phrase"` and `-word`
    exclusions (dropped from the text). A question of nothing but exclusions keeps its text as typed."""
    excluded = [_quoted(m).strip() for m in _EXCLUDED_PHRASE.finditer(question)]
    rest = _EXCLUDED_PHRASE.sub(" ", question)
    phrases = tuple(dict.fromkeys(_quoted(m).strip() for m in _PHRASE.finditer(rest)))
    unquoted = _PHRASE.sub(lambda m: " " + _quoted(m) + " ", rest)
    excluded += [m.group(1) for m in _EXCLUDED.finditer(unquoted)]
    text = " ".join(_EXCLUDED.sub(" ", unquoted).split())
    return ParsedQuery(text or question.strip(), tuple(p for p in phrases if p), tuple(dict.fromkeys(x for x in excluded if x)))


def holds(text: str, parsed: ParsedQuery) -> bool:
    """Whether a passage holds every phrase and none of the excluded words (case ignored)."""
    lowered = text.lower()
    return (all(p.lower() in lowered for p in parsed.phrases)
            and not any(x.lower() in lowered for x in parsed.excluded))
