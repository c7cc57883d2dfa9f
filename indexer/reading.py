"""Files → documents: decode text files, split JSON Lines, extract office files, tables, slides,
web pages and PDFs (OCR for scanned pages and images), each with the metadata people filter on.

The other formats' readers live in indexer/formats.py (tables, slides, HTML, LibreOffice) and
indexer/ocr.py (RapidOCR).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from . import formats
from .decoding import MAX_CONTROL_SHARE, decode_bytes, normalise_newlines
from .errors import ReadError
from .formats import Place, joined

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.table import Table

MAX_DOC_MB_ENV = "INDEXER_MAX_DOC_MB"
DEFAULT_MAX_DOC_MB = 20  # embedding 20 MB of Chinese takes about an hour on 2 cores
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".text"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
MIN_PDF_PAGE_CHARS = 10  # a PDF page with a shorter text layer (a scan's typed "- 3 -") is also recognised
# read by LibreOffice into .docx/.xlsx/.pptx first (indexer/formats.py LIBREOFFICE_TARGETS)
LIBREOFFICE_SUFFIXES = frozenset({".doc", ".wps", ".rtf", ".odt", ".xls", ".et", ".ods", ".ppt", ".dps", ".odp"})
SUPPORTED_SUFFIXES = (
    TEXT_SUFFIXES | IMAGE_SUFFIXES | HTML_SUFFIXES | LIBREOFFICE_SUFFIXES
    | {".jsonl", ".docx", ".pdf", ".xlsx", ".csv", ".pptx"}
)

_JSONL_FIELDS = frozenset({"id", "text", "title"})


@dataclass(frozen=True)
class Document:
    """One document: its decoded text and where it came from."""

    doc_id: str
    text: str
    title: str = ""
    origin: str = ""  # where its text came from: a file's path, upload:NAME, pasted, FILE#L3 for a JSON Lines line
    encoding: str | None = None
    meta: dict = field(default_factory=dict, hash=False)
    places: tuple[Place, ...] = field(default=(), hash=False)  # where its pages, slides, sheets or rows start
    source: str = ""  # the source (a folder followed by name) it came from, if any
    file: dict = field(default_factory=dict, hash=False)  # its file as read: size, mtime_ns, sha256 (`file_state`)

    @property
    def content_hash(self) -> str:
        """SHA-256 hex digest of the text encoded as UTF-8."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SourceFile:
    """One file to read, with the id its document takes (its path relative to the common root)."""

    path: Path
    doc_id: str
    size: int  # bytes
    folder: str = ""  # its folder relative to the folder the user gave (posix; "" at the top level)
    source: str = ""  # the source (a folder followed by name) it belongs to; its id is SOURCE/path under the folder


@dataclass(frozen=True)
class _Extract:
    """What a format reader got out of a file."""

    text: str
    places: tuple[Place, ...]  # where its pages, slides, sheets or rows start (formats.joined)
    title: str  # the title the file declares, "" if none
    reader: str  # what read it, e.g. "python-docx", "pypdf + rapidocr (2 of 5 pages)"
    encoding: str | None = None


# ---------------------------------------------------------------------------- public API


def plan_files(paths: Iterable[str | Path], sources: dict[Path, str] | None = None) -> list[SourceFile]:
    """The files of these paths (folders recursively, sorted), with their ids, sizes and folders.

    A folder named in `sources` (its name) is a source: its files' ids are SOURCE/path/under/it,
    so two folders' 通知.docx never share an id. The other files are named by their path from
    the deepest folder that holds them all (a file given alone: its name)."""
    found = _collect_files([Path(p) for p in paths])
    named = {Path(folder).resolve(): name for folder, name in (sources or {}).items()}
    loose = [file for file, base in found if base is None or base.resolve() not in named]
    root = _common_root(loose) if loose else None
    out = []
    for file, base in found:
        source = named.get(base.resolve()) if base is not None else None
        doc_id = f"{source}/{file.relative_to(base).as_posix()}" if source else _relative_id(file, root)
        out.append(SourceFile(file, doc_id, _size(file), _folder(file, base), source or ""))
    return out


def iter_documents(
    files: list[SourceFile], *, skip_bad_lines: bool = False, ocr: bool = True
) -> Iterator[tuple[SourceFile, list[Document] | ReadError]]:
    """Each file's documents, in order, or the ReadError saying why not (one line naming the file).

    One bad file never stops the others. Files LibreOffice converts are converted in batches
    (one soffice start for up to LIBREOFFICE_BATCH of them), when the first of them comes up.
    """
    converted: dict[Path, bytes | ReadError] = {}
    first_origin: dict[str, str] = {}
    for index, file in enumerate(files):
        if file.path.suffix.lower() == ".jsonl" and file.size > max_document_bytes():
            yield from _jsonl_parts(file, first_origin, skip_bad_lines)
            continue
        try:
            if _needs_libreoffice(file.path) and file.path not in converted and file.size <= max_document_bytes():
                converted.update(_convert_ahead(files[index:], converted))
            docs = _read_source(file, converted.pop(file.path, None), skip_bad_lines=skip_bad_lines, ocr=ocr)
            _check_unique_ids(docs, first_origin)
        except ReadError as error:
            yield file, error
        except Exception as error:  # noqa: BLE001 - a library's own failure on a damaged file: one line
            yield file, ReadError(f"{file.path}: cannot read ({type(error).__name__}: {_one_line(error)})")
        else:
            first_origin.update((doc.doc_id, doc.origin) for doc in docs)
            yield file, docs


def read_paths(paths: Iterable[str | Path], *, skip_bad_lines: bool = False, ocr: bool = True) -> list[Document]:
    """Read files and folders (recursively) into documents; the first unreadable file raises."""
    return _all_or_raise(iter_documents(plan_files(paths), skip_bad_lines=skip_bad_lines, ocr=ocr))


def read_file(path: Path, *, skip_bad_lines: bool = False, ocr: bool = True) -> list[Document]:
    """Read one file; a .jsonl file gives one document per line, other files give one."""
    path = Path(path)
    _require_file(path)
    file = SourceFile(path, path.name, _size(path))
    return _all_or_raise(iter_documents([file], skip_bad_lines=skip_bad_lines, ocr=ocr))


def read_upload(name: str, data: bytes, *, ocr: bool = True) -> list[Document]:
    """An uploaded file (its name as the browser sent it, its bytes), read like a file on disk.

    Only the name's last part is kept; an empty or hidden name, or an unsupported suffix, is a
    ReadError. Documents get the origin "upload:<name>", and errors name the upload, not a temp path.
    """
    clean = upload_name(name)
    with tempfile.TemporaryDirectory(prefix="indexer-upload-") as tmp:
        path = Path(tmp, clean)
        path.write_bytes(data)
        try:
            docs = read_file(path, ocr=ocr)
        except ReadError as error:
            raise ReadError(str(error).replace(str(path), clean)) from error
    kept = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # the bytes the index keeps (store.originals)
    return [replace(doc, origin=f"upload:{clean}", file=kept) for doc in docs]


def read_uploads(files: list[tuple[str, bytes]], tags: Iterable[str] = (), *, ocr: bool = True) -> list[Document]:
    """Uploaded files (name, bytes) → documents (`read_upload`), with these tags; two documents
    with one id are a ReadError."""
    if not files:
        raise ReadError("no files uploaded")
    docs = [tagged(doc, tags) for name, data in files for doc in read_upload(name, data, ocr=ocr)]
    _check_unique_ids(docs, {})
    return docs


def tagged(doc: Document, tags: Iterable[str]) -> Document:
    """The document with these tags added to its `tags` (kept sorted, without repeats)."""
    tags = [str(t).strip() for t in tags if str(t).strip()]
    if not tags:
        return doc
    own = doc.meta.get("tags", [])
    own = own if isinstance(own, list) else [own]
    return replace(doc, meta={**doc.meta, "tags": sorted({str(t) for t in own} | set(tags))})


def upload_name(name: str) -> str:
    """The base name of an uploaded file, or a ReadError if it cannot name a readable file."""
    clean = PurePosixPath(str(name or "").replace("\\", "/")).name.strip()
    if not clean or clean.startswith("."):
        raise ReadError(f"{name!r}: not a usable file name (empty or hidden)")
    if PurePosixPath(clean).suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ReadError(f"{clean}: not a supported file type (use {', '.join(sorted(SUPPORTED_SUFFIXES))})")
    return clean


def max_document_bytes() -> int:
    """The largest file read as documents: $INDEXER_MAX_DOC_MB megabytes (default 20)."""
    return int(float(os.environ.get(MAX_DOC_MB_ENV, DEFAULT_MAX_DOC_MB)) * 1_000_000)


# ---------------------------------------------------------------------------- finding files


def _collect_files(paths: list[Path]) -> list[tuple[Path, Path | None]]:
    """Expand the given paths into (file, the folder it was found under or None), without repeats."""
    if not paths:
        raise ReadError("no input paths given")
    seen: set[Path] = set()
    files: list[tuple[Path, Path | None]] = []
    for path in paths:
        for file, base in [(path, None)] if _require_file_or_dir(path) else ((f, path) for f in _walk(path)):
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append((file, base))
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


def _folder(file: Path, base: Path | None) -> str:
    """The file's folder relative to the folder it was found under ("" for a file given by name)."""
    if base is None:
        return ""
    folder = file.parent.relative_to(base).as_posix()
    return "" if folder == "." else folder


def _size(path: Path) -> int:
    """The file's size in bytes (0 if it cannot be stat'ed: reading it will say why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_unique_ids(docs: list[Document], first_origin: dict[str, str]) -> None:
    """Raise ReadError naming both sources if a document's id was seen before (or twice here)."""
    seen = dict(first_origin)
    for doc in docs:
        if doc.doc_id in seen:
            raise ReadError(f"{doc.origin}: duplicate id {doc.doc_id!r} (also in {seen[doc.doc_id]})")
        seen[doc.doc_id] = doc.origin


def _all_or_raise(results: Iterator[tuple[SourceFile, list[Document] | ReadError]]) -> list[Document]:
    """All documents, or the first ReadError raised."""
    docs: list[Document] = []
    for _, result in results:
        if isinstance(result, ReadError):
            raise result
        docs.extend(result)
    return docs


def _one_line(error: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split())[:200]


# ---------------------------------------------------------------------------- per format


def _needs_libreoffice(path: Path) -> bool:
    """True for the formats LibreOffice converts before they are read."""
    return path.suffix.lower() in LIBREOFFICE_SUFFIXES


def _convert_ahead(files: list[SourceFile], done: dict[Path, object]) -> dict[Path, bytes | ReadError]:
    """Convert the next files LibreOffice reads (up to a batch, within the size limit, not done yet)
    in one go."""
    batch = [f.path for f in files
             if _needs_libreoffice(f.path) and f.size <= max_document_bytes() and f.path not in done]
    return formats.convert_with_libreoffice(batch[:formats.LIBREOFFICE_BATCH]) if batch else {}


def _read_source(file: SourceFile, converted: bytes | ReadError | None, *, skip_bad_lines: bool,
                 ocr: bool) -> list[Document]:
    """A file's documents, each with the file's metadata under its own (JSONL fields win)."""
    path = file.path
    _check_size(path)
    meta, state = _file_meta(file), file_state(path)
    if path.suffix.lower() == ".jsonl":
        return [replace(doc, meta={**meta, **doc.meta}, file=state) for doc in _read_jsonl(path, file, skip_bad_lines)]
    extract = _extract(path, converted, ocr=ocr)
    text = normalise_newlines(extract.text)
    _require_content(text, str(path))
    return [Document(doc_id=file.doc_id, text=text, title=extract.title.strip() or path.stem,
                     origin=os.path.abspath(path), encoding=extract.encoding, meta={**meta, "reader": extract.reader},
                     places=extract.places, source=file.source, file=state)]


def _extract(path: Path, converted: bytes | ReadError | None, *, ocr: bool) -> _Extract:
    """Dispatch on the file's suffix; unknown suffixes are read as text."""
    suffix, name = path.suffix.lower(), str(path)
    if isinstance(converted, ReadError):
        raise converted
    if suffix in LIBREOFFICE_SUFFIXES:
        inner = _extract_converted(converted, formats.libreoffice_target(path), name)
        if inner.text.count("\ufffd") > MAX_CONTROL_SHARE * max(len(inner.text), 1):
            raise ReadError(f"{name}: damaged, or not a {suffix} file (LibreOffice could only import it as text)")
        return replace(inner, reader=f"{formats.libreoffice_version()} + {inner.reader}")
    if suffix == ".docx":
        return _read_docx(path, name)
    if suffix == ".pdf":
        return _read_pdf(path, ocr=ocr)
    if suffix in IMAGE_SUFFIXES:
        from .ocr import read_image

        return _Extract(read_image(path, ocr=ocr), ((0, {"ocr": True}),), "", "rapidocr")
    table_or_page = {".xlsx": formats.read_xlsx, ".pptx": formats.read_pptx}.get(suffix)
    if table_or_page is not None:
        return _Extract(*table_or_page(path, name))
    if suffix == ".csv":
        return _Extract(*formats.read_csv(_read_bytes(path), name))
    if suffix in HTML_SUFFIXES:
        return _Extract(*formats.read_html(_read_bytes(path), name))
    text, encoding = decode_bytes(_read_bytes(path), name)
    return _Extract(text, (), "", "text", encoding)


def _extract_converted(data: bytes | None, target: str | None, name: str) -> _Extract:
    """A LibreOffice conversion (.docx, .xlsx or .pptx bytes) read by that format's reader."""
    if data is None:  # not converted ahead: only when called outside iter_documents
        raise ReadError(f"{name}: was not converted by LibreOffice")
    if target == "docx":
        return _read_docx(data, name)
    return _Extract(*(formats.read_xlsx if target == "xlsx" else formats.read_pptx)(data, name))


def file_state(path: Path, stat: os.stat_result | None = None) -> dict:
    """What tells a file's version without reading it (size, modification time in ns) and what
    tells it for sure (the SHA-256 of its bytes): `sync` compares the first and, where it
    changed, the second, before it reads the file again."""
    stat = stat or path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_hash(path)}


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_meta(file: SourceFile) -> dict:
    """type, size, modified (UTC, ISO 8601 to the second) and folder of a file."""
    stat = file.path.stat()
    modified = dt.datetime.fromtimestamp(int(stat.st_mtime), dt.timezone.utc)
    return {
        "type": file.path.suffix.lower().lstrip("."),
        "size": stat.st_size,
        "modified": modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "folder": file.folder,
    }


def _check_size(path: Path) -> None:
    """Raise ReadError if the file cannot be stat'ed or is over the size limit."""
    try:
        size, limit = path.stat().st_size, max_document_bytes()
    except OSError as error:
        raise ReadError(f"{path}: cannot read ({error.strerror or error})") from error
    if size > limit:
        raise ReadError(f"{path}: {size / 1e6:.1f} MB is over the {limit / 1e6:g} MB limit for one file "
                        f"(split it, or raise ${MAX_DOC_MB_ENV})")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, or a ReadError saying why not (unreadable, or over the size limit)."""
    _check_size(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise ReadError(f"{path}: cannot read ({error.strerror or error})") from error


def _require_content(text: str, name: str) -> None:
    """Raise ReadError if the text is empty or whitespace only."""
    if not text.strip():
        raise ReadError(f"{name}: empty document")


def _read_jsonl(path: Path, file: SourceFile, skip_bad_lines: bool) -> list[Document]:
    """One document per non-blank line of a JSON Lines file."""
    text, _ = decode_bytes(_read_bytes(path), str(path))
    _require_content(text, str(path))
    docs: list[Document] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            docs.append(_jsonl_document(line, file, line_no))
        except ReadError:
            if not skip_bad_lines:
                raise
    if not docs:
        raise ReadError(f"{path}: no valid lines")
    return docs


JSONL_PART_BYTES = 4_000_000  # a JSON Lines file over the one-document limit comes in parts of this size


def _jsonl_parts(file: SourceFile, first_origin: dict[str, str],
                 skip_bad_lines: bool) -> Iterator[tuple[SourceFile, list[Document] | ReadError]]:
    """A JSON Lines file larger than the one-document limit, read line by line (as UTF-8, as JSON
    Lines is), in parts of about JSONL_PART_BYTES: the limit applies to each line, a document, and
    memory does not grow with the file. A first pass checks every line (and the ids), so a bad
    line refuses the whole file as it does for a small one, before any part is given out."""
    limit, meta, state = max_document_bytes(), _file_meta(file), file_state(file.path)
    bad: set[int] = set()
    seen = dict(first_origin)
    try:
        for line_no, raw in _lines(file.path):
            try:
                doc = _jsonl_line(raw, file, line_no, limit)
            except ReadError:
                if not skip_bad_lines:
                    raise
                bad.add(line_no)
                continue
            if doc is not None:
                _check_unique_ids([doc], seen)
                seen[doc.doc_id] = doc.origin
    except ReadError as error:
        yield file, error
        return
    if len(seen) == len(first_origin):
        yield file, ReadError(f"{file.path}: no valid lines")
        return
    part: list[Document] = []
    nbytes = 0
    for line_no, raw in _lines(file.path):
        doc = None if line_no in bad else _jsonl_line(raw, file, line_no, limit)
        if doc is not None:
            part.append(replace(doc, meta={**meta, **doc.meta}, file=state))
        nbytes += len(raw)
        if nbytes >= JSONL_PART_BYTES:
            first_origin.update((d.doc_id, d.origin) for d in part)
            yield replace(file, size=nbytes), part
            part, nbytes = [], 0
    first_origin.update((d.doc_id, d.origin) for d in part)
    yield replace(file, size=nbytes), part


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """A file's lines as bytes, numbered from 1; a ReadError if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            yield from enumerate(fh, start=1)
    except OSError as error:
        raise ReadError(f"{path}: cannot read ({error.strerror or error})") from error


def _jsonl_line(raw: bytes, file: SourceFile, line_no: int, limit: int) -> Document | None:
    """One line of a large JSON Lines file as a document (None: a blank line)."""
    if len(raw) > limit:
        raise ReadError(f"{file.path}: line {line_no}: {len(raw) / 1e6:.1f} MB is over the {limit / 1e6:g} MB "
                        f"limit for one document (split it, or raise ${MAX_DOC_MB_ENV})")
    try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError:
        raise ReadError(f"{file.path}: line {line_no} is not UTF-8 (a JSON Lines file over "
                        f"{limit / 1e6:g} MB is read line by line, as UTF-8)") from None
    return _jsonl_document(line, file, line_no) if line.strip() else None


def _jsonl_document(line: str, file: SourceFile, line_no: int) -> Document:
    """Parse one JSON Lines record: {"id"?, "text", "title"?, ...extra → meta}; its id is the
    record's own, as the user named it (in a source too: a clash with another's is refused when
    added), else the file's id and its line number."""
    path = file.path
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
        doc_id=_jsonl_id(record.get("id"), where) or f"{file.doc_id}#{line_no}",
        text=normalise_newlines(text),
        title=_jsonl_title(record.get("title"), path),
        origin=f"{os.path.abspath(path)}#L{line_no}",
        encoding=None,
        meta={"reader": "jsonl", **{key: value for key, value in record.items() if key not in _JSONL_FIELDS}},
        source=file.source,
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


def _read_docx(source: Path | bytes, name: str) -> _Extract:
    """A Word document: paragraphs and table rows, one per line, in document order."""
    import io

    import docx  # imported lazily: only needed for .docx input

    try:
        document = docx.Document(str(source) if isinstance(source, Path) else io.BytesIO(source))
        text = "\n".join(_docx_lines(document))
    except Exception as error:  # python-docx raises many types for a damaged package
        raise ReadError(f"{name}: not a valid .docx file ({type(error).__name__})") from error
    return _Extract(text, (), document.core_properties.title or "", "python-docx")


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


def _read_pdf(path: Path, *, ocr: bool) -> _Extract:
    """A PDF's text layer, pages joined by newlines; pages with (next to) no text layer, such as a
    scan with a typed page number, are recognised by OCR, and the longer of the two is kept."""
    from .ocr import ocr_enabled, recognise_pdf_pages

    pages, title = _pdf_pages(path)
    scanned = [index for index, page in enumerate(pages) if len("".join(page.split())) < MIN_PDF_PAGE_CHARS]
    reader, recognised = "pypdf", set()
    if scanned and ocr_enabled(ocr):
        for index, text in zip(scanned, recognise_pdf_pages(path, scanned)):
            if len(text.strip()) > len(pages[index].strip()):
                pages[index] = text
                recognised.add(index)
        reader = f"pypdf + rapidocr ({len(scanned)} of {len(pages)} pages)"
    text, places = joined((({"page": n + 1, "ocr": n in recognised}, page) for n, page in enumerate(pages)), "\n")
    if not text.strip():
        why = "OCR found no text either" if scanned and ocr_enabled(ocr) else "scanned?"
        raise ReadError(f"{path}: has no text layer ({why})")
    return _Extract(text, places, title, reader)


def _pdf_pages(path: Path) -> tuple[list[str], str]:
    """The extracted text of every page, and the /Title the PDF declares ("" if none)."""
    from pypdf import PdfReader  # imported lazily: only needed for .pdf input

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings ("EOF marker not found") would cut the progress bar
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError(f"{path}: encrypted PDF, cannot read")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
        return pages, title if isinstance(title, str) else ""
    except ReadError:
        raise
    except Exception as error:  # pypdf raises many types for a damaged file
        raise ReadError(f"{path}: not a valid PDF ({type(error).__name__})") from error
