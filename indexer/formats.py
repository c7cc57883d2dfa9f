"""Readers for tables (.xlsx, .csv), slides (.pptx), web pages (.html) and, through LibreOffice,
the legacy and OpenDocument formats (.doc .wps .rtf .odt → .docx; .xls .et .ods → .xlsx;
.ppt .dps .odp → .pptx).

Each reader returns (text, declared title or "", reader name). Tables give one line per row that
keeps its column headers ("学校：一中，人数：1200"), with two blank lines between rows so the
chunker never groups more than a short run of rows. Cells are joined by "，", which the chunker
cuts at only inside a sentence too long for a passage ("；" would make every cell a sentence, and
a long row after short ones could then be cut between its cells): a passage never splits a row
unless the row alone is longer than a passage (or holds sentence ends of its own). Sheets and slides are sections: a `# 标题` line.
"""
from __future__ import annotations

import atexit
import csv
import datetime as dt
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .decoding import decode_bytes, normalise_newlines
from .errors import ReadError

# LibreOffice converts these into the format whose reader does the rest.
LIBREOFFICE_TARGETS = {
    ".doc": "docx", ".wps": "docx", ".rtf": "docx", ".odt": "docx",
    ".xls": "xlsx", ".et": "xlsx", ".ods": "xlsx",
    ".ppt": "pptx", ".dps": "pptx", ".odp": "pptx",
}
LIBREOFFICE_PACKAGES = "libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui"
LIBREOFFICE_BATCH = 20  # files per soffice call: start-up (about 1.2 s) is paid once per batch
LIBREOFFICE_TIMEOUT_ENV = "INDEXER_LIBREOFFICE_TIMEOUT"
_BASE_TIMEOUT_S = 60.0
_TIMEOUT_PER_FILE_S = 20.0
ROW_SEPARATOR = "\n\n\n"  # two blank lines: the chunker's "detached block" boundary
_CELL_SEPARATOR = "，"
_HEADER_SEPARATOR = "："
_CSV_DELIMITERS = ",\t;|"
_HEADER_SEARCH_ROWS = 10
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_profile_dir: str | None = None
_soffice_lock = threading.Lock()  # one soffice at a time per process: they would share its profile
_version: str | None = None

Place = tuple[int, dict]  # where a part of a document starts (a character offset) and what it is: page, slide, sheet, row
Read = tuple[str, tuple[Place, ...], str, str]  # text, its places, the declared title ("" if none), the reader


def joined(parts: Iterable[tuple[dict, str]], separator: str) -> tuple[str, tuple[Place, ...]]:
    """Parts of a document (what each is, its text) joined by `separator`, and where each starts
    in the joined text. Newlines are normalised first, so the offsets are the document's own."""
    texts, places, at = [], [], 0
    for where, text in parts:
        text = normalise_newlines(text)
        if texts:
            at += len(separator)
        places.append((at, where))
        texts.append(text)
        at += len(text)
    return separator.join(texts), tuple(places)


# ---------------------------------------------------------------------------- tables


def table_text(sheets: Iterable[tuple[str | None, list[list[str]]]]) -> tuple[str, tuple[Place, ...]]:
    """Sheets (name or None, rows of cell strings) as sections of row paragraphs with headers, and
    where each sheet and row starts (rows numbered as in the sheet, from 1)."""
    parts: list[tuple[dict, str]] = []
    for name, rows in sheets:
        sheet = {"sheet": name} if name else {}
        lines = _row_lines([(n, row) for n, row in enumerate(rows, 1) if any(row)])
        if lines:
            parts += ([(sheet, f"# {name}")] if name else []) + [({**sheet, "row": n}, line) for n, line in lines]
    return joined(parts, ROW_SEPARATOR)


def _row_lines(rows: list[tuple[int, list[str]]]) -> list[tuple[int, str]]:
    """Rows (numbered) under the header as "header：value，…", title rows above it as their values;
    each with its row number."""
    start = _header_index([row for _, row in rows])
    if start == len(rows) - 1:  # nothing under the header: every row is a plain line
        return [(n, _values(row)) for n, row in rows]
    header = rows[start][1]
    return [(n, _values(row)) for n, row in rows[:start]] + [(n, _with_headers(header, row)) for n, row in rows[start + 1:]]


def _values(row: list[str]) -> str:
    """A row's filled cells joined by "，"."""
    return _CELL_SEPARATOR.join(cell for cell in row if cell)


def _with_headers(header: list[str], row: list[str]) -> str:
    """A row's filled cells, each after its column header (第N列 when the header cell is empty)."""
    return _CELL_SEPARATOR.join(
        f"{header[i] if i < len(header) and header[i] else f'第{i + 1}列'}{_HEADER_SEPARATOR}{value}"
        for i, value in enumerate(row)
        if value
    )


def _header_index(rows: list[list[str]]) -> int:
    """The header row: the first of the top rows with over half as many cells as the fullest
    (a sheet often opens with a one-cell title such as "2024年学校名单" above its headers)."""
    top = [sum(1 for cell in row if cell) for row in rows[:_HEADER_SEARCH_ROWS]]
    return next(index for index, filled in enumerate(top) if 2 * filled > max(top))


def _cell_text(value: object) -> str:
    """A cell value as one line of text: whole floats without ".0", dates as ISO, newlines as spaces."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, dt.datetime):
        value = value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    elif isinstance(value, (dt.date, dt.time)):
        value = value.isoformat()
    return " ".join(str(value).split())


def read_xlsx(data: bytes | Path, name: str) -> Read:
    """An Excel workbook: each sheet a section, each row a paragraph keeping its headers."""
    import openpyxl  # imported lazily: only needed for spreadsheets

    try:
        book = openpyxl.load_workbook(_source(data), read_only=True, data_only=True)
        try:
            sheets = [
                (sheet.title, [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)])
                for sheet in book.worksheets
            ]
            title = (book.properties.title or "").strip()
        finally:
            book.close()
    except Exception as error:  # openpyxl raises many types for a damaged package
        raise ReadError(f"{name}: not a valid .xlsx file ({type(error).__name__})") from error
    return *table_text(sheets), title, "openpyxl"


def read_csv(data: bytes, name: str) -> Read:
    """A CSV (or tab-separated) file: each row a paragraph keeping the first row's headers."""
    text, _ = decode_bytes(data, name)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=_CSV_DELIMITERS)
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [[_cell_text(cell) for cell in row] for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as error:
        raise ReadError(f"{name}: not valid CSV ({error})") from error
    return *table_text([(None, rows)]), "", "csv"


# ---------------------------------------------------------------------------- slides


def read_pptx(data: bytes | Path, name: str) -> Read:
    """A PowerPoint deck: each slide a section (its title, else 第N页), then its text and notes."""
    from pptx import Presentation  # imported lazily: only needed for slides

    try:
        deck = Presentation(_source(data))
        slides = [({"slide": number}, _slide_text(slide, number)) for number, slide in enumerate(deck.slides, start=1)]
        title = (deck.core_properties.title or "").strip()
    except Exception as error:  # python-pptx raises many types for a damaged package
        raise ReadError(f"{name}: not a valid .pptx file ({type(error).__name__})") from error
    return *joined(slides, "\n\n"), title, "python-pptx"


def _slide_text(slide, number: int) -> str:
    """One slide: a `# title` heading, its shapes' text in order, then 备注：its notes."""
    title_shape = slide.shapes.title
    title = " ".join(title_shape.text.split()) if title_shape is not None and title_shape.has_text_frame else ""
    lines = [f"# {title or f'第{number}页'}"]
    lines += [line for shape in slide.shapes if shape is not title_shape for line in _shape_lines(shape)]
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        lines += [f"备注：{line}" for line in (notes.text.splitlines() if notes is not None else []) if line.strip()]
    return "\n".join(lines)


def _shape_lines(shape) -> Iterator[str]:
    """The text of a shape: its paragraphs, a table's rows (cells joined by tabs), a group's shapes."""
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        yield from (p.text for p in shape.text_frame.paragraphs if p.text.strip())
    if getattr(shape, "has_table", False) and shape.has_table:
        yield from ("\t".join(cell.text.strip() for cell in row.cells) for row in shape.table.rows)
    if hasattr(shape, "shapes"):  # a group
        for inner in shape.shapes:
            yield from _shape_lines(inner)


# ---------------------------------------------------------------------------- web pages


def read_html(data: bytes, name: str) -> Read:
    """A web page's main text (trafilatura drops navigation, sidebars, footers); title from <title>."""
    import trafilatura
    from trafilatura.utils import load_html

    tree = load_html(data)
    if tree is None:
        raise ReadError(f"{name}: not a readable HTML page")
    title = " ".join((tree.findtext(".//title") or "").split())
    text = trafilatura.extract(tree, include_tables=True, include_comments=False) or ""
    return normalise_newlines(text), (), title, f"trafilatura {trafilatura.__version__}"


# ---------------------------------------------------------------------------- LibreOffice


def libreoffice_target(path: Path) -> str | None:
    """The format LibreOffice converts this file into, None if it is not one of its formats."""
    return LIBREOFFICE_TARGETS.get(path.suffix.lower())


def libreoffice_version() -> str:
    """"libreoffice 7.4.7" (the soffice on PATH), asked once per process."""
    global _version
    if _version is None:
        found = _VERSION.search(_run_soffice([_soffice(), "--version"], 30).stdout or "")
        _version = f"libreoffice {found.group(0) if found else '?'}"
    return _version


def convert_with_libreoffice(paths: list[Path]) -> dict[Path, bytes | ReadError]:
    """Convert files with one soffice call per target format: each file's bytes, or its error."""
    try:
        soffice = _soffice()
    except ReadError as error:
        return {path: ReadError(f"{path}: {error}") for path in paths}
    results: dict[Path, bytes | ReadError] = {}
    with _soffice_lock, tempfile.TemporaryDirectory(prefix="indexer-convert-") as tmp:
        for target in sorted({libreoffice_target(path) for path in paths}):
            group = [path for path in paths if libreoffice_target(path) == target]
            results.update(_convert_group(soffice, group, target, Path(tmp, target)))
    return results


def _convert_group(soffice: str, paths: list[Path], target: str, work: Path) -> dict[Path, bytes | ReadError]:
    """One soffice run over files with the same target; inputs linked as 0.doc, 1.wps… (no name clashes)."""
    inputs, outputs = work / "in", work / "out"
    inputs.mkdir(parents=True)
    links = []
    for number, path in enumerate(paths):
        link = inputs / f"{number}{path.suffix.lower()}"
        link.symlink_to(path.resolve())
        links.append(link)
    timeout = float(os.environ.get(LIBREOFFICE_TIMEOUT_ENV, _BASE_TIMEOUT_S + _TIMEOUT_PER_FILE_S * len(paths)))
    command = [soffice, "--headless", "--norestore", f"-env:UserInstallation={_profile_uri()}",
               "--convert-to", target, "--outdir", str(outputs), *map(str, links)]
    try:
        _run_soffice(command, timeout)
        failure = "LibreOffice could not convert it (damaged, or not a {suffix} file?)"
    except ReadError as error:
        failure = str(error)
    results: dict[Path, bytes | ReadError] = {}
    for number, path in enumerate(paths):
        out = outputs / f"{number}.{target}"
        ok = out.is_file() and out.stat().st_size > 0
        results[path] = out.read_bytes() if ok else ReadError(f"{path}: {failure.format(suffix=path.suffix.lower())}")
    return results


def _soffice() -> str:
    """The soffice executable, or a ReadError saying what to install."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    if not found:
        raise ReadError(f"needs LibreOffice, which is not installed (apt-get install {LIBREOFFICE_PACKAGES})")
    return found


def _run_soffice(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run soffice in its own process group; on timeout kill the whole group and raise ReadError."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise ReadError(f"LibreOffice timed out after {timeout:g} s (raise ${LIBREOFFICE_TIMEOUT_ENV})") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout)


def _profile_uri() -> str:
    """This process's own LibreOffice profile (parallel runs never share a profile lock)."""
    global _profile_dir
    if _profile_dir is None:
        _profile_dir = tempfile.mkdtemp(prefix="indexer-libreoffice-")
        atexit.register(shutil.rmtree, _profile_dir, ignore_errors=True)
    return Path(_profile_dir).as_uri()


def _source(data: bytes | Path):
    """A path as a string, bytes as a file object: what openpyxl and python-pptx open."""
    return str(data) if isinstance(data, Path) else io.BytesIO(data)
