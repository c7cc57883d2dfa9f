"""What a search gives and takes, as the shells see it: the options of a question (plain data,
the same for the command line, the page and the API), its ranked hits or documents, and what an
update did to each document."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .chunking import is_heading
from .errors import QueryError
from .search import MODES, Scored

DEFAULT_MODE = "hybrid"  # measured better than dense and bm25 alone (docs/quality.md)
GROUPS = ("passages", "documents")


@dataclass(frozen=True)
class SearchOptions:
    """How to answer a question: how many hits (`k`; documents when grouped), by which route
    (`mode`: dense, bm25 or hybrid), grouped into documents or not, within which documents
    (`where` filters, indexer.filters; `docs` ids), above which score, and whether an English
    question also takes the USE route (`use`) and BM25 over its Chinese translations (`translate`).
    `scope`: a reader's filters (indexer.engine.ScopedEngine sets them): documents outside them are
    searched, named, counted and translated into as if they were not there."""

    k: int = 5
    mode: str = DEFAULT_MODE
    group: str = "passages"
    where: tuple[str, ...] = ()
    docs: tuple[str, ...] | None = None
    min_score: float | None = None
    use: bool = True
    translate: bool = True
    scope: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.k is None or self.k < 1:
            raise QueryError(f"k must be at least 1 (got {self.k})")
        if self.mode not in MODES:
            raise QueryError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.group not in GROUPS:
            raise QueryError(f"unknown grouping {self.group!r}; choose one of {', '.join(GROUPS)}")
        object.__setattr__(self, "where", tuple(self.where or ()))
        object.__setattr__(self, "scope", tuple(self.scope or ()))
        if self.docs is not None:
            object.__setattr__(self, "docs", tuple(self.docs))


@dataclass(frozen=True)
class Hit:
    """One ranked passage."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    title: str
    section: str
    text: str
    start: int
    end: int
    paragraph: int
    position: int
    sentence_start: int | None = None  # the answering sentence, offsets in the document like start/end
    sentence_end: int | None = None
    why: dict = field(default_factory=dict)  # `explain`: each route's score and part of `score`, terms matched
    place: dict = field(default_factory=dict)  # where it starts in the original: page (and ocr), slide, sheet, row

    @property
    def sentence(self) -> str:
        """The answering sentence ("" when none was chosen)."""
        if self.sentence_start is None:
            return ""
        return self.text[self.sentence_start - self.start:self.sentence_end - self.start]

    def split(self) -> tuple[str, str, int]:
        """(heading, body, body start): the heading lines at the top of the passage (joined by
        " › "; else its section) and the text below them, with the body's offset in the document."""
        lines = self.text.split("\n")
        heads = []
        while len(lines) > 1 and is_heading(lines[0]):
            heads.append(lines.pop(0).strip())
        body = "\n".join(lines)
        return " › ".join(heads) if heads else self.section, body, self.end - len(body)

    @property
    def where(self) -> str:
        """The place in words: "page 3 (OCR)", "slide 2", "sheet 学校, row 14" ("" for none)."""
        return describe_place(self.place)

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(data.pop("place"))  # page (1-based), ocr, slide, sheet, row: as the original has them
        start, end = data.pop("sentence_start"), data.pop("sentence_end")
        data["sentence"] = None if start is None else {"start": start, "end": end, "text": self.sentence}
        return data


def describe_place(place: dict) -> str:
    """A chunk's place in the original, in words ("" where the document has no pages, slides or sheets)."""
    parts = [f"page {place['page']}" + (" (OCR)" if place.get("ocr") else "")] if "page" in place else []
    parts += [f"slide {place['slide']}"] if "slide" in place else []
    parts += [f"sheet {place['sheet']}"] if "sheet" in place else []
    parts += [f"row {place['row']}"] if "row" in place else []
    if not parts and place.get("ocr"):
        parts = ["OCR"]
    return ", ".join(parts)


def explain(result: Scored, text: str, terms: list[str]) -> dict:
    """Why a hit ranks where it does: per route its own score (dense: cosine; bm25: BM25; use: USE
    score) and its part of the fused score (the parts sum to the hit's score), and the question's
    keyword terms the passage holds."""
    lowered = text.lower()
    return {"routes": {name: {"score": round(result.raw.get(name, 0.0), 6), "part": round(part, 6)}
                       for name, part in result.parts.items()},
            "matched": [t for t in dict.fromkeys(terms) if t and t.lower() in lowered]}


@dataclass(frozen=True)
class DocHit:
    """One ranked document (`group="documents"`): its score and its best passages."""

    rank: int
    score: float
    doc_id: str
    title: str
    hits: list[Hit]  # its best passages, best first (their rank is within the document)

    def to_json(self) -> dict:
        return {"rank": self.rank, "score": self.score, "doc_id": self.doc_id, "title": self.title,
                "passages": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class Result:
    """One question's answer: its ranked hits (or documents) and how it was searched."""

    query: str
    hits: list[Hit]  # ranked passages; grouped by documents: each document's passages in document order
    terms: list[str]  # the keyword terms searched (a cross-lingual question: its Chinese translations)
    cross_lingual: bool = False  # the question took the cross-lingual route (no CJK, some Latin)
    translations: list[tuple[str, list[str]]] = field(default_factory=list)  # English part → terms kept
    generation: str | None = None  # the committed index generation that answered
    documents: list[DocHit] | None = None  # set when the results are grouped by documents

    def to_json(self) -> dict:
        out = {"query": self.query, "generation": self.generation, "cross_lingual": self.cross_lingual,
               "terms": self.terms, "translations": [{"english": e, "terms": t} for e, t in self.translations]}
        if self.documents is not None:
            return {**out, "group": "documents", "documents": [d.to_json() for d in self.documents]}
        return {**out, "hits": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class DocReport:
    """What an update did to one document (or to a file that could not be read)."""

    doc_id: str
    status: str  # added | replaced | unchanged | removed | failed
    chunks: int
    encoding: str | None = None
    error: str | None = None  # why a file failed: one line naming it


@dataclass(frozen=True)
class Original:
    """A document's original file, as a shell serves it: where its bytes are, the name to offer,
    and its media type."""

    path: Path
    name: str
    media_type: str
