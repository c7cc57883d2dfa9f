"""Files → documents: decode text files, split JSON Lines, extract .docx and .pdf text."""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import IndexerError

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.table import Table

MAX_DOC_MB_ENV = "INDEXER_MAX_DOC_MB"
DEFAULT_MAX_DOC_MB = 20  # embedding 20 MB of Chinese takes about an hour on 2 cores
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".text"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".docx", ".pdf"}

# Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "utf-16"),
)
# File signatures that cannot start a text file (ones holding NUL bytes are caught anyway).
_BINARY_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"PK\x03\x04", b"PK\x05\x06",
    b"%PDF-", b"\x7fELF", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07",
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
)
_GB_FAMILY = frozenset({"gb2312", "gbk", "gb18030"})
# Among guesses charset-normalizer rates (almost) equally good, these win, in this order:
# short GB text also "decodes" as Big5 or CP949, short Western text as any Latin code page.
_PREFERRED_ENCODINGS = ("gb18030", "cp1252")
_CHAOS_MARGIN = 0.02
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
_MAX_CONTROL_SHARE = 0.02
# UTF-16 read with the wrong byte order gives newlines as U+0A00, spaces as U+2000, and so on.
_PLAUSIBLE_CHARS = re.compile(
    "[\t\n\r\x20-\x7e\u00a0-\u024f\u0370-\u04ff\u2010-\u206f\u3000-\u30ff"
    "\u4e00-\u9fff\uac00-\ud7a3\uff00-\uffef]"
)
_MIN_PLAUSIBLE_SHARE = 0.9
_JSONL_FIELDS = frozenset({"id", "text", "title"})


class ReadError(IndexerError):
    """A file or folder that cannot be read; the message is one line naming the file."""


@dataclass(frozen=True)
class Document:
    """One document: its decoded text and where it came from."""

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    encoding: str | None = None
    meta: dict = field(default_factory=dict, hash=False)

    @property
    def content_hash(self) -> str:
        """SHA-256 hex digest of the text encoded as UTF-8."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- public API


def read_paths(paths: Iterable[str | Path], *, skip_bad_lines: bool = False) -> list[Document]:
    """Read files and folders (recursively) into documents with ids relative to their common root."""
    files = _collect_files([Path(p) for p in paths])
    root = _common_root(files)
    docs = [
        doc for file in files for doc in _read_file(file, _relative_id(file, root), skip_bad_lines=skip_bad_lines)
    ]
    _check_unique_ids(docs)
    return docs


def read_file(path: Path, *, skip_bad_lines: bool = False) -> list[Document]:
    """Read one file; a .jsonl file gives one document per line, other files give one."""
    path = Path(path)
    _require_file(path)
    docs = _read_file(path, path.name, skip_bad_lines=skip_bad_lines)
    _check_unique_ids(docs)
    return docs


def decode_bytes(data: bytes, name: str) -> tuple[str, str]:
    """Decode a text file's bytes: (text with newlines normalised to "\\n", encoding name)."""
    if data.startswith(_BINARY_MAGIC):
        raise ReadError(f"{name}: binary file, not text")
    text, encoding = _decode(data, name)
    if _looks_binary(text):
        raise ReadError(f"{name}: binary file, not text")
    return normalise_newlines(text), encoding


def normalise_newlines(text: str) -> str:
    """Turn "\\r\\n" and lone "\\r" into "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- finding files


def _collect_files(paths: list[Path]) -> list[Path]:
    """Expand the given paths into files, without repeats; a file given by name is always read."""
    if not paths:
        raise ReadError("no input paths given")
    seen: set[Path] = set()
    files: list[Path] = []
    for path in paths:
        for file in [path] if _require_file_or_dir(path) else _walk(path):
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def _require_file_or_dir(path: Path) -> bool:
    """True for a file, False for a folder; anything else is a ReadError."""
    if path.is_dir():
        return False
    _require_file(path)
    return True


def _require_file(path: Path) -> None:
    """Raise ReadError unless the path is an existing regular file."""
    if not path.exists():
        raise ReadError(f"{path}: no such file or directory")
    if not path.is_file():
        raise ReadError(f"{path}: not a regular file")


def _walk(folder: Path) -> list[Path]:
    """Supported, non-hidden files under a folder, sorted by relative path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath, name)
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES
        )
    if not found:
        raise ReadError(f"{folder}: no readable files (supported: {', '.join(sorted(SUPPORTED_SUFFIXES))})")
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def _raise_walk_error(error: OSError) -> None:
    """os.walk error hook: turn an unreadable folder into a ReadError."""
    raise ReadError(f"{error.filename}: cannot read folder ({error.strerror})")


def _common_root(files: list[Path]) -> Path:
    """The deepest folder holding every file: ids are paths relative to it."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))


def _relative_id(file: Path, root: Path) -> str:
    """A file's id: its path relative to the common root, with forward slashes."""
    return Path(os.path.abspath(file)).relative_to(root).as_posix()


def _check_unique_ids(docs: list[Document]) -> None:
    """Raise ReadError naming both sources if two documents share an id."""
    first_source: dict[str, str] = {}
    for doc in docs:
        if doc.doc_id in first_source:
            raise ReadError(f"{doc.source}: duplicate id {doc.doc_id!r} (also in {first_source[doc.doc_id]})")
        first_source[doc.doc_id] = doc.source


# ---------------------------------------------------------------------------- per format


def _read_file(path: Path, doc_id: str, *, skip_bad_lines: bool) -> list[Document]:
    """Dispatch on the file's extension; unknown extensions are tried as text."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, doc_id, skip_bad_lines=skip_bad_lines)
    if suffix == ".docx":
        return [_read_docx(path, doc_id)]
    if suffix == ".pdf":
        return [_read_pdf(path, doc_id)]
    return [_read_text(path, doc_id)]


def max_document_bytes() -> int:
    """The largest file read as documents: $INDEXER_MAX_DOC_MB megabytes (default 20)."""
    return int(float(os.environ.get(MAX_DOC_MB_ENV, DEFAULT_MAX_DOC_MB)) * 1_000_000)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, or a ReadError saying why not (unreadable, or over the size limit)."""
    try:
        size, limit = path.stat().st_size, max_document_bytes()
        if size > limit:
            raise ReadError(f"{path}: {size / 1e6:.1f} MB is over the {limit / 1e6:g} MB limit for one file "
                            f"(split it, or raise ${MAX_DOC_MB_ENV})")
        return path.read_bytes()
    except OSError as error:
        raise ReadError(f"{path}: cannot read ({error.strerror or error})") from error


def _read_text(path: Path, doc_id: str) -> Document:
    """A plain-text file as one document."""
    text, encoding = decode_bytes(_read_bytes(path), str(path))
    _require_content(text, str(path))
    return Document(doc_id=doc_id, text=text, title=path.stem, source=str(path), encoding=encoding)


def _require_content(text: str, name: str) -> None:
    """Raise ReadError if the text is empty or whitespace only."""
    if not text.strip():
        raise ReadError(f"{name}: empty document")


def _read_jsonl(path: Path, base_id: str, *, skip_bad_lines: bool) -> list[Document]:
    """One document per non-blank line of a JSON Lines file."""
    text, _ = decode_bytes(_read_bytes(path), str(path))
    _require_content(text, str(path))
    docs: list[Document] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            docs.append(_jsonl_document(line, path, base_id, line_no))
        except ReadError:
            if not skip_bad_lines:
                raise
    if not docs:
        raise ReadError(f"{path}: no valid lines")
    return docs


def _jsonl_document(line: str, path: Path, base_id: str, line_no: int) -> Document:
    """Parse one JSON Lines record: {"id"?, "text", "title"?, ...extra → meta}."""
    where = f"{path}: line {line_no}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ReadError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ReadError(f"{where}: expected a JSON object")
    text = record.get("text")
    if not isinstance(text, str):
        raise ReadError(f"{where}: missing or non-string \"text\"")
    _require_content(text, where)
    return Document(
        doc_id=_jsonl_id(record.get("id"), where) or f"{base_id}#{line_no}",
        text=normalise_newlines(text),
        title=_jsonl_title(record.get("title"), path),
        source=f"{path}#L{line_no}",
        encoding=None,
        meta={key: value for key, value in record.items() if key not in _JSONL_FIELDS},
    )


def _jsonl_id(value: object, where: str) -> str | None:
    """The record's id as a string, None if absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ReadError(f"{where}: \"id\" must be a string or a number")
    return str(value) if str(value).strip() else None


def _jsonl_title(value: object, path: Path) -> str:
    """The record's title, else the file's stem."""
    return str(value) if value not in (None, "") else path.stem


def _read_docx(path: Path, doc_id: str) -> Document:
    """A Word document: paragraphs and table rows, one per line, in document order."""
    import docx  # imported lazily: only needed for .docx input

    try:
        document = docx.Document(str(path))
    except Exception as error:  # python-docx raises many types for a damaged package
        raise ReadError(f"{path}: not a valid .docx file ({type(error).__name__})") from error
    text = normalise_newlines("\n".join(_docx_lines(document)))
    _require_content(text, str(path))
    title = (document.core_properties.title or "").strip() or path.stem
    return Document(doc_id=doc_id, text=text, title=title, source=str(path), encoding=None)


def _docx_lines(document: DocxDocument) -> Iterator[str]:
    """Lines of a python-docx document: each paragraph, each table row (cells joined by tabs)."""
    from docx.table import Table as DocxTable

    for block in document.iter_inner_content():
        if isinstance(block, DocxTable):
            yield from _table_lines(block)
        else:
            yield block.text


def _table_lines(table: Table) -> Iterator[str]:
    """One line per table row; merged cells are listed once."""
    for row in table.rows:
        cells = []
        for cell in row.cells:
            if not cells or cell._tc is not cells[-1]._tc:
                cells.append(cell)
        yield "\t".join(cell.text for cell in cells)


def _read_pdf(path: Path, doc_id: str) -> Document:
    """A PDF's text layer, pages joined by newlines."""
    text = normalise_newlines("\n".join(_pdf_pages(path)))
    if not text.strip():
        raise ReadError(f"{path}: has no text layer (scanned?)")
    return Document(doc_id=doc_id, text=text, title=path.stem, source=str(path), encoding=None)


def _pdf_pages(path: Path) -> list[str]:
    """The extracted text of every page."""
    from pypdf import PdfReader  # imported lazily: only needed for .pdf input

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError(f"{path}: encrypted PDF, cannot read")
        return [page.extract_text() or "" for page in reader.pages]
    except ReadError:
        raise
    except Exception as error:  # pypdf raises many types for a damaged file
        raise ReadError(f"{path}: not a valid PDF ({type(error).__name__})") from error


# ---------------------------------------------------------------------------- decoding


def _decode(data: bytes, name: str) -> tuple[str, str]:
    """Try, in order: a BOM, UTF-16 if NUL bytes are present, strict UTF-8, then detection."""
    result = _decode_bom(data)
    if result is None and b"\x00" in data:
        result = _decode_utf16_without_bom(data)
        if result is None:
            raise ReadError(f"{name}: binary file, not text")
    result = result or _decode_utf8(data) or _decode_detected(data)
    if result is None:
        raise ReadError(f"{name}: cannot decode (not UTF-8, UTF-16 or GB18030 text)")
    return result


def _decode_bom(data: bytes) -> tuple[str, str] | None:
    """Decode by byte-order mark (the mark itself is dropped)."""
    for bom, codec, reported in _BOMS:
        if data.startswith(bom):
            return _strict(data, codec, reported)
    return None


def _decode_utf16_without_bom(data: bytes) -> tuple[str, str] | None:
    """UTF-16 LE or BE without a BOM: whichever reads as plausible text, if either does."""
    if len(data) % 2:
        return None
    candidates = [found for codec in ("utf-16-le", "utf-16-be") if (found := _strict(data, codec, codec))]
    best = max(candidates, key=lambda found: _plausible_share(found[0]), default=None)
    return best if best and _plausible_share(best[0]) >= _MIN_PLAUSIBLE_SHARE else None


def _plausible_share(text: str) -> float:
    """Share of characters from the scripts and punctuation ordinary documents use."""
    return len(_PLAUSIBLE_CHARS.findall(text)) / max(len(text), 1)


def _decode_utf8(data: bytes) -> tuple[str, str] | None:
    """Strict UTF-8."""
    return _strict(data, "utf-8", "utf-8")


def _decode_detected(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's verdict, preferring GB18030 (then cp1252) among equally good guesses."""
    guesses = _detected_encodings(data)
    if not guesses:
        return _strict(data, "gb18030", "gb18030")
    best_chaos = guesses[0][1]
    tied = [codec for codec, chaos in guesses if chaos <= best_chaos + _CHAOS_MARGIN]
    ordered = [codec for codec in _PREFERRED_ENCODINGS if codec in tied] + [codec for codec, _ in guesses]
    return next((found for codec in ordered if (found := _strict(data, codec, codec))), None)


def _detected_encodings(data: bytes) -> list[tuple[str, float]]:
    """charset-normalizer's plausible encodings, best first: (Python codec name, chaos)."""
    from charset_normalizer import from_bytes  # imported lazily: only needed for non-UTF-8 input

    return [(name, match.chaos) for match in from_bytes(data) if (name := _codec_name(match.encoding))]


def _codec_name(encoding: str) -> str | None:
    """Python's canonical codec name; the GB family (GB2312, GBK) becomes its superset "gb18030"."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return None
    return "gb18030" if name in _GB_FAMILY else name


def _strict(data: bytes, codec: str, reported: str) -> tuple[str, str] | None:
    """(text, reported) if the bytes decode strictly with the codec, else None."""
    try:
        return data.decode(codec), reported
    except (UnicodeDecodeError, LookupError):
        return None


def _looks_binary(text: str) -> bool:
    """True if decoded text holds NULs or too many control characters to be prose."""
    if "\x00" in text:
        return True
    return len(_CONTROL_CHARS.findall(text)) > _MAX_CONTROL_SHARE * max(len(text), 1)
