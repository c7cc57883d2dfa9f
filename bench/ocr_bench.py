"""OCR of scanned pages: rendered Chinese notice pages, their accuracy and pages per second.

    python -m bench.run --only ocr

The page is an A4 notice rendered at 150 dpi with Noto Sans CJK (Debian fonts-noto-cjk), saved
as a PDF with no text layer; the "photographed" variant is the same page rotated 2°, with salt
noise, blurred and saved as JPEG q70. tests/test_formats.py uses the same pages for its accuracy
goals (≥ 98% clean, ≥ 95% photographed). Also measured here: rendering a PDF page to pixels with
pypdfium2 (the one indexer/ocr.py uses) beside poppler's pdftoppm, on the same pages.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_line

FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
DPI = 150
A4_INCHES = (8.27, 11.69)
NOTICE_LINES = (
    "关于做好二〇二四年中小学招生入学工作的通知",
    "各区县教育局，市直属各学校：",
    "为进一步规范义务教育招生入学秩序，保障适龄儿童少年",
    "平等接受义务教育的权利，现就有关事项通知如下。",
    "一、坚持免试就近入学，严禁以考试方式选拔学生。",
    "二、公办民办学校同步招生，报名时间为五月二十日至六月五日。",
    "三、各校须在校门口公示招生计划、范围和咨询电话。",
    "市教育局办公室　二〇二四年四月八日",
)


def notice_text(lines: tuple[str, ...] = NOTICE_LINES) -> str:
    """The reference text of a page: its lines joined by newlines."""
    return "\n".join(lines)


def render_page(lines: tuple[str, ...] = NOTICE_LINES, dpi: int = DPI):
    """A white A4 page (PIL RGB image) with the lines in black, 14 pt Noto Sans CJK."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = (round(side * dpi) for side in A4_INCHES)
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.truetype(str(FONT), size=round(14 / 72 * dpi))
    y = round(1.2 * dpi)
    for line in lines:
        draw.text((round(1.0 * dpi), y), line, fill="black", font=font)
        y += round(0.45 * dpi)
    return page


def photographed(page, seed: int = 0):
    """The page as a phone photo of paper might look: rotated 2°, salt noise, blurred, JPEG q70."""
    import numpy as np
    from PIL import Image, ImageFilter

    rotated = page.rotate(2, resample=Image.BICUBIC, expand=True, fillcolor="white")
    pixels = np.asarray(rotated).copy()
    rng = np.random.default_rng(seed)
    noise = rng.random(pixels.shape[:2])
    pixels[noise < 0.01] = 0
    pixels[noise > 0.99] = 255
    blurred = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    blurred.save(buffer, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def save_scanned_pdf(pages: list, path: Path, dpi: int = DPI) -> Path:
    """Pages (PIL images) as a PDF of images only: no text layer, like a scanner's output."""
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=dpi)
    return path


def char_accuracy(reference: str, recognised: str) -> float:
    """1 - edit distance / reference length, whitespace ignored on both sides."""
    ref, hyp = "".join(reference.split()), "".join(recognised.split())
    previous = list(range(len(hyp) + 1))
    for i, ref_char in enumerate(ref, start=1):
        current = [i]
        for j, hyp_char in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_char != hyp_char)))
        previous = current
    return 1 - previous[-1] / max(len(ref), 1)


def _render_pdfium(pdf: Path, dpi: int) -> int:
    """Render every page with pypdfium2; returns the page count."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(pdf))
    try:
        for page in document:
            page.render(scale=dpi / 72).to_pil()
        return len(document)
    finally:
        document.close()


def _render_pdftoppm(pdf: Path, dpi: int) -> int:
    """Render every page with poppler's pdftoppm into PNG files, then load them."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), f"{out}/p"], check=True)
        files = sorted(Path(out).glob("p*.png"))
        for file in files:
            Image.open(file).load()
        return len(files)


def _best_of(runs: int, work) -> float:
    """The fastest of a few timed runs, seconds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def run(pages: int = 4, log=print) -> dict:
    """Measure rendering (pypdfium2 vs pdftoppm) and OCR (pages/s, accuracy, clean and photographed)."""
    from indexer.ocr import recognise_image

    clean = render_page()
    photo = photographed(clean)
    reference = notice_text()
    result: dict = {"pages": pages, "dpi": DPI}
    with tempfile.TemporaryDirectory() as tmp:
        pdf = save_scanned_pdf([clean] * pages, Path(tmp) / "scan.pdf")
        render = {"pypdfium2": _best_of(3, lambda: _render_pdfium(pdf, DPI))}
        if shutil.which("pdftoppm"):
            render["pdftoppm"] = _best_of(3, lambda: _render_pdftoppm(pdf, DPI))
        result["render_pages_per_s"] = {name: round(pages / seconds, 1) for name, seconds in render.items()}
        log(f"render: {result['render_pages_per_s']}")
    recognise_image(clean)  # loads the engine once, outside the timings
    for name, image in (("clean", clean), ("photographed", photo)):
        start = time.perf_counter()
        texts = [recognise_image(image) for _ in range(pages)]
        seconds = time.perf_counter() - start
        result[name] = {"pages_per_s": round(pages / seconds, 2), "accuracy": round(char_accuracy(reference, texts[0]), 4)}
        log(f"{name}: {result[name]}")
    return result


def section(args) -> dict:
    """bench.run's `ocr` section (progress lines on stderr)."""
    return run(pages=2 if args.quick else 4, log=lambda msg: print(msg, file=sys.stderr, flush=True))


def print_table(res: dict) -> None:
    """The OCR section as markdown tables."""
    print(f"\n### OCR (rapidocr-onnxruntime, PP-OCRv4), A4 notice at {res['dpi']} dpi, {res['pages']} pages\n")
    print(machine_line() + "\n")
    print("| page | pages/s | character accuracy |\n|---|---|---|")
    for name in ("clean", "photographed"):
        print(f"| {name} | {res[name]['pages_per_s']} | {res[name]['accuracy']:.1%} |")
    rates = ", ".join(f"{name} {rate} pages/s" for name, rate in res["render_pages_per_s"].items())
    print(f"\nRendering a PDF page to pixels: {rates}")


if __name__ == "__main__":
    print_table(run())
