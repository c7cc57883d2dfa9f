"""Text from pictures of pages: RapidOCR (PP-OCRv4 Chinese, models in its wheel) on onnxruntime.

Used for image files and for the PDF pages that have no text layer (rendered with pypdfium2).
One engine per process, loaded on first use. INDEXER_OCR=0 (or ocr=False on the read
functions) turns OCR off.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

OCR_ENV = "INDEXER_OCR"
RENDER_DPI = 150  # a 10.5 pt character is 22 px high: enough for PP-OCRv4, see bench/ocr_bench.py
# A line whose right end reaches this share of the page's widest line continues on the next one,
# unless it ends a sentence.
_FULL_LINE_SHARE = 0.9
_PARAGRAPH_END = tuple("。！？：；!?:;")
_SAME_LINE_OVERLAP = 0.5
_engine = None
_engine_lock = threading.Lock()

Box = tuple[float, float, float, float]  # left, top, right, bottom


def ocr_enabled(ocr: bool = True) -> bool:
    """True unless turned off by the caller or by INDEXER_OCR=0."""
    return ocr and os.environ.get(OCR_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def recognise_image(image: Image) -> str:
    """The text on one page image: visual lines in reading order, joined into paragraphs."""
    import numpy as np

    found, _ = _ocr_engine()(np.asarray(image.convert("RGB")))
    boxes = [(_bounds(points), text) for points, text, _score in found or [] if text.strip()]
    return "\n".join(_paragraphs(_lines(boxes)))


def read_image(path: Path, *, ocr: bool = True) -> str:
    """The text of an image file (every frame of a multi-page TIFF), or a ReadError."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    from .errors import ReadError

    if not ocr_enabled(ocr):
        raise ReadError(f"{path}: an image is read by OCR, which is off (${OCR_ENV}=0)")
    try:
        with Image.open(path) as image:
            frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ReadError(f"{path}: not a readable image ({type(error).__name__})") from error
    text = "\n".join(_progress((recognise_image(frame) for frame in frames), len(frames), path.name))
    if not text.strip():
        raise ReadError(f"{path}: OCR found no text in the image")
    return text


def recognise_pdf_pages(path: Path, indexes: list[int]) -> list[str]:
    """The OCR text of the given PDF pages (0-based), each rendered at RENDER_DPI by pypdfium2."""
    return list(_progress((recognise_image(page) for page in _render_pdf_pages(path, indexes)), len(indexes),
                          path.name))


def _progress(items: Iterable, total: int, label: str) -> Iterator:
    """Items with a tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=f"OCR {label}", unit="page", leave=False,
                    disable=not sys.stderr.isatty())


def _render_pdf_pages(path: Path, indexes: list[int]) -> Iterator[Image]:
    """The given pages of a PDF as RGB images at RENDER_DPI, one at a time."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    try:
        for index in indexes:
            yield document[index].render(scale=RENDER_DPI / 72).to_pil().convert("RGB")
    finally:
        document.close()


def _ocr_engine():
    """The process's RapidOCR engine, created on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            from rapidocr_onnxruntime import RapidOCR

            _engine = RapidOCR()
        return _engine


def _bounds(points: list[list[float]]) -> Box:
    """A detected quadrilateral's axis-aligned bounds."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _lines(boxes: list[tuple[Box, str]]) -> list[tuple[Box, str]]:
    """Merge boxes that share a visual line (left to right, joined by a space), top to bottom."""
    lines: list[list[tuple[Box, str]]] = []
    for box, text in sorted(boxes, key=lambda item: (item[0][1], item[0][0])):
        line = next((line for line in lines if _same_line(line[-1][0], box)), None)
        if line is None:
            lines.append([(box, text)])
        else:
            line.append((box, text))
    merged = []
    for line in lines:
        line.sort(key=lambda item: item[0][0])
        boxes_of_line = [box for box, _ in line]
        bounds = (min(b[0] for b in boxes_of_line), min(b[1] for b in boxes_of_line),
                  max(b[2] for b in boxes_of_line), max(b[3] for b in boxes_of_line))
        merged.append((bounds, " ".join(text.strip() for _, text in line)))
    return sorted(merged, key=lambda item: item[0][1])


def _same_line(a: Box, b: Box) -> bool:
    """True if two boxes overlap vertically by at least half the smaller height."""
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return overlap >= _SAME_LINE_OVERLAP * min(a[3] - a[1], b[3] - b[1])


def _paragraphs(lines: list[tuple[Box, str]]) -> list[str]:
    """Join a visual line to the next when it runs to the right margin without ending a sentence."""
    if not lines:
        return []
    left = min(box[0] for box, _ in lines)
    right = max(box[2] for box, _ in lines)
    full = left + _FULL_LINE_SHARE * (right - left)
    paragraphs: list[str] = []
    continues = False
    for box, text in lines:
        if continues:
            paragraphs[-1] += text if _is_cjk(paragraphs[-1][-1]) or _is_cjk(text[0]) else " " + text
        else:
            paragraphs.append(text)
        continues = box[2] >= full and not text.endswith(_PARAGRAPH_END)
    return paragraphs


def _is_cjk(char: str) -> bool:
    """True for CJK ideographs and full-width punctuation, which join without a space."""
    return "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef"
