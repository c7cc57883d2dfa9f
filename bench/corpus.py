"""A reproducible synthetic Chinese corpus: sentences of data/speech.txt recombined into paragraphs.

`synthetic_corpus(n, seed)` returns n paragraphs of 2–6 sentences each, drawn with a seeded RNG from
the sentences of the speech (sentence ends 。！？；). The same (n, seed) gives the same corpus on
any machine. Write it as a .txt file (one paragraph per line; the chunker makes one chunk per
paragraph) or as JSONL documents.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "data" / "speech.txt"
_SENTENCE = re.compile(r"[^。！？；]*[。！？；]+[”’」』）)]*")


def speech_sentences(path: Path = SPEECH) -> list[str]:
    """The body sentences of the speech: lines of 30+ characters cut at sentence ends."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line) < 30:  # headings, salutations, the banner lines
            continue
        out.extend(s.strip() for s in _SENTENCE.findall(line) if len(s.strip()) >= 6)
    return out


def synthetic_corpus(n: int = 10_000, seed: int = 0, min_sentences: int = 2, max_sentences: int = 6) -> list[str]:
    """n paragraphs, each 2–6 sentences of the speech in random order (seeded)."""
    sentences = speech_sentences()
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_sentences, max_sentences + 1, size=n)
    return ["".join(sentences[i] for i in rng.choice(len(sentences), size=int(k), replace=False)) for k in sizes]


def write_txt(paragraphs: list[str], path: str | Path) -> Path:
    """One paragraph per line (each becomes one chunk)."""
    path = Path(path)
    path.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def write_jsonl(paragraphs: list[str], path: str | Path, per_doc: int = 20) -> Path:
    """JSONL documents of `per_doc` paragraphs each: {"id", "title", "text"}."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for d, start in enumerate(range(0, len(paragraphs), per_doc)):
            text = "\n".join(paragraphs[start:start + per_doc])
            fh.write(json.dumps({"id": f"doc-{d:05d}", "title": f"合成文档 {d}", "text": text}, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a .txt or .jsonl file to write")
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    paras = synthetic_corpus(a.n, a.seed)
    (write_jsonl if a.out.endswith(".jsonl") else write_txt)(paras, a.out)
    print(f"{len(paras)} paragraphs, {sum(map(len, paras))} characters → {a.out}")
