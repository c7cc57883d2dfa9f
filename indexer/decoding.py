"""Text files' bytes as text: a byte-order mark, UTF-16 without one, strict UTF-8, then
charset-normalizer's guess (GB18030 first among equally good ones), and binary files refused."""
from __future__ import annotations

import codecs
import re

from .errors import ReadError

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
MAX_CONTROL_SHARE = 0.02
# UTF-16 read with the wrong byte order gives newlines as U+0A00, spaces as U+2000, and so on.
_PLAUSIBLE_CHARS = re.compile(
    "[\t\n\r\x20-\x7e\u00a0-\u024f\u0370-\u04ff\u2010-\u206f\u3000-\u30ff"
    "\u4e00-\u9fff\uac00-\ud7a3\uff00-\uffef]"
)
_MIN_PLAUSIBLE_SHARE = 0.9


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
    return len(_CONTROL_CHARS.findall(text)) > MAX_CONTROL_SHARE * max(len(text), 1)
