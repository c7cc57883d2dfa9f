"""Documents → chunks: one paragraph per chunk with its heading and short lines, split when too long.

A paragraph is one non-empty line. Headings and short lines (a title, "同志们：") are not chunks
by themselves: they join the chunk they introduce, or the one before them when nothing follows
in their section. A paragraph over the token limit is cut at sentence ends (then at commas, then
anywhere), repeating `overlap` sentences. Offsets always satisfy text == doc.text[start:end].
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .reading import Document

CountTokens = Callable[[str], int]
Span = tuple[int, int]
Splitter = Callable[[str], list[Span]]

MAX_HEADING_CHARS = 60
MAX_NUMBERED_HEADING_CHARS = 40
DETACHED_BLANK_LINES = 2
DETACHED_MIN_CHARS_FACTOR = 3

_CLOSERS = "”’」』）)】》\"'"
_SENTENCE_END = re.compile(rf"[。！？；!?;]+[{_CLOSERS}]*|\.+[{_CLOSERS}]*(?=\s|$)|\n")
_CLAUSE_END = re.compile(r"[，,、]+")
_NUMERALS = "〇零一二三四五六七八九十百千"
# (pattern, level): a lower level is a bigger division; a new heading closes same-or-lower levels.
_MARKED_HEADINGS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(rf"第[{_NUMERALS}\d]+(?:篇|部分)"), 1),
    (re.compile(rf"第[{_NUMERALS}\d]+章"), 2),
    (re.compile(rf"第[{_NUMERALS}\d]+节"), 3),
    (re.compile(rf"[{_NUMERALS}]+、"), 4),
    (re.compile(rf"[（(][{_NUMERALS}]+[）)]"), 5),
)
_NUMBERED_HEADING = re.compile(r"\d{1,3}(?:[.．](?!\d)|、)\s*\S")
_NUMBERED_LEVEL = 6
_MARKDOWN_HEADING = re.compile(r"(#{1,6})\s+(.*?)(?:\s+#+)?$")
_INLINE_TITLE_END = re.compile(r"[。：:！？!?；;]")
_SENTENCE_FINAL = re.compile(r"[。！？；!?;]")
_LATIN_RUN = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class ChunkSettings:
    """How documents are cut into chunks."""

    max_tokens: int = 256  # hard ceiling per chunk, as measured by the count function (docs/decisions/chunk-length.md: 256 against 480 and 128)
    overlap: int = 1  # sentences repeated at the start of the next piece when a paragraph is split
    min_chars: int = 30  # shorter lines are not chunks by themselves

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.overlap < 0 or self.min_chars < 0:
            raise ValueError(f"invalid chunk settings: {self}")


@dataclass(frozen=True)
class Chunk:
    """A passage of a document; text == document.text[start:end]."""

    chunk_id: str
    doc_id: str
    position: int
    paragraph: int
    section: str
    section_path: tuple[str, ...]
    start: int
    end: int
    text: str
    place: dict = field(default_factory=dict, hash=False)  # where it starts in the original: page (and ocr), slide, sheet, row


@dataclass(frozen=True)
class _Heading:
    level: int
    title: str
    standalone: bool  # the whole line is the heading (else: a heading sentence opening a paragraph)


@dataclass(frozen=True)
class _Line:
    index: int  # 0-based among the document's non-empty lines
    start: int  # offsets of the stripped line in the document text
    end: int
    blanks_before: int
    heading: _Heading | None
    short: bool

    @property
    def is_heading(self) -> bool:
        """True if the whole line is a heading."""
        return self.heading is not None and self.heading.standalone


@dataclass
class _Unit:
    """Lines that form one chunk unless it is too long: short lines, at most one paragraph."""

    lines: list[_Line]
    path: tuple[str, ...]

    @property
    def main(self) -> _Line:
        """The line the unit's text is about: its first paragraph, else its first non-heading line."""
        body = [line for line in self.lines if not line.is_heading]
        return next((line for line in body if not line.short), body[0] if body else self.lines[0])


# ---------------------------------------------------------------------------- public API


def chunk_document(
    doc: Document, settings: ChunkSettings = ChunkSettings(), count_tokens: CountTokens | None = None
) -> list[Chunk]:
    """Cut a document into chunks, in order; every non-whitespace character lands in one."""
    count = count_tokens or estimate_tokens
    units = _group_lines(_scan_lines(doc.text, settings.min_chars), settings.min_chars)
    pieces = [(unit, span) for unit in units for span in _split_unit(doc.text, unit, settings, count)]
    return [_make_chunk(doc, position, unit, span) for position, (unit, span) in enumerate(pieces)]


def split_sentences(text: str) -> list[Span]:
    """Spans of the sentences in text (ends: 。！？；!?; a "." before a space, newlines), trimmed."""
    return _split_after(text, _SENTENCE_END)


def split_clauses(text: str) -> list[Span]:
    """Spans of the clauses in text, cut after ，,、 and trimmed."""
    return _split_after(text, _CLAUSE_END)


def is_heading(line: str) -> bool:
    """True if the whole line is a section heading (not an item like 一是…, not a long paragraph)."""
    heading = _parse_heading(line.strip())
    return heading is not None and heading.standalone


def estimate_tokens(text: str) -> int:
    """Conservative token count: CJK and other symbols 1 each, Latin/digit runs len/3, plus 2."""
    runs = _LATIN_RUN.findall(text)
    non_space = len("".join(text.split()))
    latin_chars = sum(map(len, runs))
    return sum(-(-len(run) // 3) for run in runs) + (non_space - latin_chars) + 2


# ---------------------------------------------------------------------------- sentences


def _split_after(text: str, end_pattern: re.Pattern[str]) -> list[Span]:
    """Cut text right after each match of end_pattern; trim whitespace; drop empty pieces."""
    cuts = [match.end() for match in end_pattern.finditer(text)] + [len(text)]
    spans = (_trim(text, start, end) for start, end in zip([0, *cuts], cuts))
    return [span for span in spans if span[0] < span[1]]


def _trim(text: str, start: int, end: int) -> Span:
    """The span without leading and trailing whitespace."""
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


# ---------------------------------------------------------------------------- headings


def _parse_heading(line: str) -> _Heading | None:
    """The heading a stripped line is, or opens with; None for an ordinary line."""
    return _markdown_heading(line) or _marked_heading(line) or _numbered_heading(line)


def _markdown_heading(line: str) -> _Heading | None:
    """`#` … `######` headings; the title is the text without the marks."""
    match = _MARKDOWN_HEADING.fullmatch(line)
    return _Heading(len(match.group(1)), match.group(2) or line, True) if match else None


def _marked_heading(line: str) -> _Heading | None:
    """第X章/节/篇/部分, 一、, （一）: a short one-sentence line, or the first sentence of a long one."""
    level = next((level for pattern, level in _MARKED_HEADINGS if pattern.match(line)), None)
    if level is None:
        return None
    if len(line) <= MAX_HEADING_CHARS and len(split_sentences(line)) <= 1:
        return _Heading(level, line, True)
    title_end = _INLINE_TITLE_END.search(line)
    if title_end is None or title_end.start() > MAX_HEADING_CHARS:
        return None
    return _Heading(level, line[: title_end.start()].strip(), False)


def _numbered_heading(line: str) -> _Heading | None:
    """`1. …` / `1、…`: a heading only when short and without sentence-final punctuation."""
    if (
        _NUMBERED_HEADING.match(line)
        and len(line) <= MAX_NUMBERED_HEADING_CHARS
        and not _SENTENCE_FINAL.search(line)
    ):
        return _Heading(_NUMBERED_LEVEL, line, True)
    return None


# ---------------------------------------------------------------------------- lines → units


def _scan_lines(text: str, min_chars: int) -> list[_Line]:
    """The non-empty lines of text with their stripped offsets and kinds."""
    lines: list[_Line] = []
    blanks = offset = 0
    for raw in text.split("\n"):
        stripped = raw.strip()
        if stripped:
            start = offset + len(raw) - len(raw.lstrip())
            heading = _parse_heading(stripped)
            lines.append(_Line(len(lines), start, start + len(stripped), blanks, heading, len(stripped) < min_chars))
            blanks = 0
        else:
            blanks += 1
        offset += len(raw) + 1
    return lines


def _group_lines(lines: Sequence[_Line], min_chars: int) -> list[_Unit]:
    """Group lines into units, each with at most one paragraph, never across a heading."""
    builder = _UnitBuilder(min_chars)
    for line in lines:
        builder.add(line)
    return builder.finish()


class _UnitBuilder:
    """Walks lines in order, holding back headings and short lines until it knows where they go."""

    def __init__(self, min_chars: int) -> None:
        self.min_chars = min_chars
        self.units: list[_Unit] = []
        self.pending: list[_Line] = []
        self.headings: tuple[_Heading, ...] = ()
        self.section_first_unit = 0

    @property
    def path(self) -> tuple[str, ...]:
        """Titles of the open headings, outermost first."""
        return tuple(heading.title for heading in self.headings)

    def add(self, line: _Line) -> None:
        """Take the next line."""
        if line.heading is not None:
            self._open_section(line.heading)
        if line.is_heading:
            self.pending.append(line)
        else:
            self._add_body(line)

    def finish(self) -> list[_Unit]:
        """Place what is still held back and return the units."""
        self._settle_pending()
        return self.units

    def _open_section(self, heading: _Heading) -> None:
        """Close the current section (unless all it has is parent headings) and enter a new one."""
        if not self._pending_are_parents_of(heading):
            self._settle_pending()
        self.headings = tuple(h for h in self.headings if h.level < heading.level) + (heading,)
        self.section_first_unit = len(self.units)

    def _add_body(self, line: _Line) -> None:
        """A short line waits for what follows; a paragraph takes the waiting lines with it."""
        if line.blanks_before >= DETACHED_BLANK_LINES and self._is_block(self.pending):
            self._flush_pending()
        self.pending.append(line)
        if not line.short:
            self._flush_pending()

    def _settle_pending(self) -> None:
        """Held-back lines with nothing after them in their section: join the previous unit if any."""
        if not self.pending:
            return
        detached = self.pending[0].blanks_before >= DETACHED_BLANK_LINES and self._is_block(self.pending)
        if self.pending[0].is_heading or len(self.units) == self.section_first_unit or detached:
            self._flush_pending()
        else:
            self.units[-1].lines.extend(self.pending)
            self.pending = []

    def _flush_pending(self) -> None:
        """Make the held-back lines a unit of their own."""
        if self.pending:
            self.units.append(_Unit(self.pending, self.path))
            self.pending = []

    def _pending_are_parents_of(self, heading: _Heading) -> bool:
        """True if only headings above the new one's level are held back (they introduce it)."""
        return bool(self.pending) and all(
            line.is_heading and line.heading.level < heading.level for line in self.pending
        )

    def _is_block(self, lines: Sequence[_Line]) -> bool:
        """True if the non-heading lines add up to a block worth a chunk of its own."""
        body = [line.end - line.start for line in lines if not line.is_heading]
        return bool(body) and sum(body) >= DETACHED_MIN_CHARS_FACTOR * self.min_chars


# ---------------------------------------------------------------------------- units → pieces


def _split_unit(text: str, unit: _Unit, settings: ChunkSettings, count: CountTokens) -> list[Span]:
    """The unit's span if it fits, else pieces cut at sentence ends that each fit."""

    def fits(span: Span) -> bool:
        return count(text[span[0] : span[1]]) <= settings.max_tokens

    whole = (unit.lines[0].start, unit.lines[-1].end)
    if fits(whole):
        return [whole]
    atoms = [
        atom
        for line in unit.lines
        for sentence in _sub_spans(text, (line.start, line.end), split_sentences)
        for atom in _fit(text, sentence, fits, (split_clauses,))
    ]
    return _pack(atoms, fits, settings.overlap)


def _sub_spans(text: str, span: Span, splitter: Splitter) -> list[Span]:
    """Split the text of a span, giving spans in document offsets."""
    start, end = span
    return [(start + s, start + e) for s, e in splitter(text[start:end])]


def _fit(text: str, span: Span, fits: Callable[[Span], bool], splitters: Sequence[Splitter]) -> list[Span]:
    """The span if it fits, else its parts by the next splitter, else hard cuts; all parts fit."""
    if fits(span):
        return [span]
    if not splitters:
        return _hard_split(text, span, fits)
    return [part for sub in _sub_spans(text, span, splitters[0]) for part in _fit(text, sub, fits, splitters[1:])]


def _hard_split(text: str, span: Span, fits: Callable[[Span], bool]) -> list[Span]:
    """Cut a span anywhere into the longest pieces that fit."""
    start, end = span
    pieces: list[Span] = []
    while start < end:
        if not fits((start, start + 1)):
            raise ValueError("max_tokens is too small to hold a single character")
        cut = _last_fitting(start + 1, end, lambda stop: fits((start, stop)))
        pieces.append(_trim(text, start, cut))
        start = _trim(text, cut, end)[0]
    return [piece for piece in pieces if piece[0] < piece[1]]


def _pack(atoms: Sequence[Span], fits: Callable[[Span], bool], overlap: int) -> list[Span]:
    """Greedily join consecutive atoms into pieces that fit, repeating `overlap` atoms."""
    pieces: list[Span] = []
    first = 0
    while True:
        last = _last_fitting(first, len(atoms) - 1, lambda i: fits((atoms[first][0], atoms[i][1])))
        pieces.append((atoms[first][0], atoms[last][1]))
        if last == len(atoms) - 1:
            return pieces
        first = _next_first(atoms, first, last, overlap, fits)


def _next_first(atoms: Sequence[Span], first: int, last: int, overlap: int, fits: Callable[[Span], bool]) -> int:
    """Where the next piece starts: up to `overlap` atoms back, as many as leave room for a new one."""
    candidates = range(max(last + 1 - overlap, first + 1), last + 1)
    return next((i for i in candidates if fits((atoms[i][0], atoms[last + 1][1]))), last + 1)


def _last_fitting(low: int, high: int, fits_up_to: Callable[[int], bool]) -> int:
    """Largest i in [low, high] with fits_up_to(i); low is taken to fit.

    Gallops out from low before bisecting, so the cost follows the size of the answer rather
    than of the range: packing a 50 MB one-line file stays linear instead of quadratic.
    """
    step = 1
    while low < high:
        probe = min(low + step, high)
        if not fits_up_to(probe):
            high = probe - 1
            break
        low, step = probe, step * 2
    while low < high:
        middle = (low + high + 1) // 2
        if fits_up_to(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _make_chunk(doc: Document, position: int, unit: _Unit, span: Span) -> Chunk:
    """The chunk for one piece of a unit."""
    start, end = span
    starting_line = next(line for line in reversed(unit.lines) if line.start <= start)
    return Chunk(
        chunk_id=f"{doc.doc_id}#{position}",
        doc_id=doc.doc_id,
        position=position,
        paragraph=max(unit.main.index, starting_line.index),
        section=unit.path[-1] if unit.path else "",
        section_path=unit.path,
        start=start,
        end=end,
        text=doc.text[start:end],
        place=place_at(doc.places, next((line.start for line in unit.lines if line.start >= start and not line.is_heading),
                                        start)),  # where its body starts: a sheet's first row, not its heading
    )


def place_at(places: tuple[tuple[int, dict], ...], offset: int) -> dict:
    """What part of the original (page, slide, sheet and row…) the text at `offset` is in: the last
    place that starts at or before it ({} where the document has none)."""
    at = bisect.bisect_right([start for start, _ in places], offset) - 1
    return dict(places[at][1]) if at >= 0 else {}
