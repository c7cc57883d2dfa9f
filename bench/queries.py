"""Benchmark questions: the labelled speech questions (63 Chinese, 53 English), repeated with small
deterministic perturbations (a polite prefix, a missing question mark, a suffix) to any count."""
from __future__ import annotations

from pathlib import Path

from indexer.evaluation import read_labelled

ROOT = Path(__file__).resolve().parent.parent
LABELLED = {"zh": ROOT / "tests/data/speech_qa_zh.jsonl", "en": ROOT / "tests/data/speech_qa_en.jsonl"}

_ZH = (lambda q: q, lambda q: "请问" + q, lambda q: q.rstrip("？?"), lambda q: q.rstrip("？?") + "，具体怎么做？",
       lambda q: "关于这篇讲话：" + q)
_EN = (lambda q: q, lambda q: "Please tell me: " + q, lambda q: q.rstrip("?"), lambda q: q.rstrip("?") + ", in short?",
       lambda q: "In the speech, " + q[0].lower() + q[1:])


def labelled(lang: str):
    return read_labelled(LABELLED[lang])


def questions(count: int) -> list[str]:
    """`count` questions: first every labelled one as written, then perturbed rounds, alternating languages."""
    zh = [x.query for x in labelled("zh")]
    en = [x.query for x in labelled("en")]
    out: list[str] = []
    r = 0
    while len(out) < count:
        for a, b in zip(zh + [None] * max(0, len(en) - len(zh)), en + [None] * max(0, len(zh) - len(en))):
            if a is not None:
                out.append(_ZH[r % len(_ZH)](a))
            if b is not None:
                out.append(_EN[r % len(_EN)](b))
        r += 1
    return out[:count]
