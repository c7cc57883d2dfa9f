"""Text analysis for keyword search, Chinese and other languages: how a text becomes index terms.

The analyzer (`Analyzer`, kept in the index's manifest so questions are cut as the text was):
- folds Traditional to Simplified with OpenCC (t2s), so either script finds the other;
- takes jieba's search-mode words (三重一大 and 重大 both match; a user dictionary adds terms it
  does not know), lower-cased, without punctuation and a short stopword list;
- adds the overlapping character bigrams of each CJK run (mixed terms: several engines index
  both), which keep a word jieba cut differently in the question and in the text;
- adds codes kept whole (PPR-9087, GB/T 7714-2015, 〔2020〕15号, 2020年, 12.5%), on NFKC text.
Measured on every shared set against jieba alone and bigrams alone (docs/decisions/analyzer.md):
mixed + codes + t2s is at or above both on each. What is done with the terms (postings, BM25) is
indexer.postings.
"""
from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

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

    @staticmethod
    def of(keyword: dict) -> "Analyzer":
        """The analyzer of an index's keyword settings; an index made before analyzers were
        recorded used jieba words alone, unfolded. (Indexes made before BM25's parameters had a
        place of their own keep k1 and b here: indexer.postings.BM25.of reads them.)"""
        if "analyzer" not in keyword:
            return LEGACY
        names = {f.name for f in fields(Analyzer)}
        return Analyzer(**{k: v for k, v in keyword["analyzer"].items() if k in names})

    def to_json(self) -> dict:
        return asdict(self)


LEGACY = Analyzer("jieba", None, False)


@functools.lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def char_ngrams(text: str, n: int) -> list[str]:
    """Overlapping character n-grams of each CJK run (a run of at most n characters stands alone);
    other runs of letters and digits whole, lower-cased, on NFKC text."""
    out: list[str] = []
    for run in _RUN.findall(unicodedata.normalize("NFKC", text).lower()):
        if not _CJK.match(run) or len(run) <= n:
            out.append(run)
        else:
            out.extend(run[i:i + n] for i in range(len(run) - n + 1))
    return out


def bigrams(text: str) -> list[str]:
    """Overlapping character bigrams of each CJK run (a one-character run stands alone); other runs
    of letters and digits whole, lower-cased."""
    return char_ngrams(text, 2)


# What NFKC leaves alone, as far as n-grams go: ASCII, CJK ideographs, and general, CJK and
# full-width punctuation (which it does map, but no n-gram holds punctuation, so finding one is unchanged)
_NFKC_FREE = re.compile(r"[\x00-\x7f\u2000-\u206f\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff01-\uff0f\uff1a-\uff20"
                        r"\uff3b-\uff40\uff5b-\uff65]*")


def wording_share(grams: frozenset[str], text: str) -> float:
    """The share of a question's character n-grams (`char_ngrams`) that stand in `text` (NFKC,
    lower-cased here): how much of the question's own wording a passage repeats, which BM25's
    words and bigrams, scored one by one, do not see. 0 for a question without any."""
    if not grams:
        return 0.0
    plain = text.lower() if _NFKC_FREE.fullmatch(text) else unicodedata.normalize("NFKC", text).lower()
    return sum(g in plain for g in grams) / len(grams)


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
