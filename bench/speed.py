"""How far the document encoders are from this machine's limit, and the build on long documents.

    python -m bench.run --only mfu                        # matmul rates, e5 utilisation per backend
    python -m bench.run --only longbuild --compare 8e0236b  # CLI builds, this tree beside a revision
    python -m bench.run --only coldsearch --compare bedf096 # one CLI search in a fresh process, the same

`mfu`: the machine's sustained matrix-multiply rate in each precision the encoders use (torch
fp32 and bf16 at 2048² and at e5's feed-forward shape; int8 through onnxruntime's MatMulInteger,
which the onnx-int8 backend runs, and torch._int_mm), then each document backend encoding the
chunks the engine makes of a long-document corpus (drcd_dev_articles: 383 articles), with tokens,
chunks and characters per second, and the model FLOP utilisation: e5's FLOPs for those chunks'
real tokens (no padding counted) per second, over the rate of the backend's precision.

`longbuild`: `python -m indexer build` of the same corpus, run the way a user runs it, from this
tree and from each `--compare` revision (a git worktree; the same model folder), in alternating
rounds: wall time, peak RSS, characters and chunks per second.

`coldsearch`: one `python -m indexer search` in a fresh process (model load included), on the
speech index each tree builds, this tree beside each `--compare` revision, alternating.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .common import pct

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "multilingual-e5-small"
LONG_CORPUS = ROOT.parent / "shared" / "eval" / "drcd_dev_articles" / "passages.jsonl"
PRECISION = {"torch": "fp32", "bf16": "bf16", "onnx": "fp32", "onnx-int8": "int8"}


def _rate(run, flops: float, seconds: float = 1.5) -> float:
    """GFLOP/s of `run()` (one call = `flops`), repeated for about `seconds` after a warm-up."""
    run()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        n += 1
    return flops * n / (time.perf_counter() - start) / 1e9


def matmul_rates() -> dict[str, float]:
    """The best sustained GFLOP/s (GOP/s for int8) over a square and e5's feed-forward shape."""
    import torch

    out: dict[str, float] = {}
    shapes = ((2048, 2048, 2048), (8192, 384, 1536))  # (m, k, n): square, and tokens x hidden @ hidden x ffn
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = []
        for m, k, n in shapes:
            a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
            rates.append(_rate(lambda: a @ b, 2.0 * m * k * n))
        out[name] = round(max(rates), 1)
    out["int8"] = round(max(_int8_rates(shapes)), 1)
    return out


def _int8_rates(shapes) -> list[float]:
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    rates = []
    for m, k, n in shapes:
        graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["C"])], "mm",
                                  [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
                                   helper.make_tensor_value_info("B", TensorProto.INT8, [k, n])],
                                  [helper.make_tensor_value_info("C", TensorProto.INT32, [m, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {"A": rng.integers(0, 255, (m, k), dtype=np.uint8), "B": rng.integers(-128, 127, (k, n), dtype=np.int8)}
        rates.append(_rate(lambda: session.run(None, feed), 2.0 * m * k * n))
        a = torch.randint(-128, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
        try:
            rates.append(_rate(lambda: torch._int_mm(a, b), 2.0 * m * k * n))
        except RuntimeError:  # no int8 matmul kernel for this CPU in this torch build
            pass
    return rates


def e5_flops(config: dict, lengths: np.ndarray) -> float:
    """Forward FLOPs of a BERT-style encoder over sequences of these token lengths: per layer and
    token, the Q/K/V/output projections (8·d²), the feed-forward (4·d·f) and attention's two
    products (4·L·d); embeddings, norms and activations are left out, as MFU counts."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(layers * np.sum(lengths * (8 * d * d + 4 * d * f) + 4 * d * lengths ** 2))


def long_chunks() -> tuple[list[str], int]:
    """The passage texts the engine embeds for the long-document corpus, and its characters."""
    from indexer.engine import Engine
    from indexer.indexing import passage_text
    from indexer.reading import iter_documents, plan_files

    docs = [d for _, got in iter_documents(plan_files([LONG_CORPUS])) for d in got]
    engine = Engine(Path(tempfile.gettempdir()) / "bench-unused")
    bodies = [passage_text(c) for d in docs for c in engine.chunk(d)]
    return bodies, sum(len(d.text) for d in docs)


def section_mfu(backends: list[str], log=print) -> dict:
    """Matmul rates, then each document backend on the long corpus's chunks: speed and MFU."""
    from indexer.backends import load_backend, native_bf16

    rates = matmul_rates()
    log(f"  matmul GFLOP/s: {rates}")
    bodies, chars = long_chunks()
    config = json.loads((MODEL / "config.json").read_text(encoding="utf-8"))
    rows, reference = [], None
    for name in backends:
        start = time.perf_counter()
        backend = load_backend(MODEL, name)
        loaded = time.perf_counter() - start
        prompt = backend.prompts.get("document", "passage: ")
        lengths = np.array([len(ids) for ids in backend.tokenizer([prompt + b for b in bodies], truncation=True,
                                                                 max_length=backend.max_tokens)["input_ids"]])
        backend.encode(bodies[:64], prompt)  # warm-up: kernels for the first shapes
        start = time.perf_counter()
        vecs = backend.encode(bodies, prompt)
        seconds = time.perf_counter() - start
        precision = PRECISION.get(name) or ("bf16" if native_bf16() else "fp32")
        flops = e5_flops(config, lengths)
        reference = vecs if reference is None else reference
        row = {"backend": name, "precision": precision, "load_s": round(loaded, 2), "encode_s": round(seconds, 1),
               "tokens_per_s": round(lengths.sum() / seconds), "chunks_per_s": round(len(bodies) / seconds, 1),
               "chars_per_s": round(chars / seconds), "gflops": round(flops / seconds / 1e9, 1),
               "mfu": round(flops / seconds / 1e9 / rates[precision], 3),
               "cos_to_first_min": round(float(np.min(np.sum(vecs * reference, axis=1))), 5)}
        rows.append(row)
        log(f"  {row}")
        del backend
    return {"matmul_gflops": rates, "corpus": str(LONG_CORPUS.parent.name), "chunks": len(bodies), "chars": chars,
            "tokens": int(lengths.sum()), "gflop_per_token": round(e5_flops(config, lengths) / lengths.sum() / 1e9, 4),
            "backends": rows}


def _tree(rev: str, keep: Path) -> Path:
    """A checkout of `rev` ("HEAD" or "." is this tree itself) as a detached git worktree under `keep`,
    sharing this tree's model folders (not in git)."""
    if rev in (".", "HEAD"):
        return ROOT
    path = keep / f"rev-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                       capture_output=True)
        (path / "models").symlink_to(ROOT / "models")
    return path


@contextlib.contextmanager
def _trees(revs: list[str], keep: Path) -> Iterator[dict[str, Path]]:
    """A checkout of each revision (`_tree`), the worktrees removed afterwards."""
    trees = {r: _tree(r, keep) for r in revs}
    try:
        yield trees
    finally:
        for path in trees.values():
            if path != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def _alternating(revs: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, revision) in rounds that alternate the revisions' order, so neither always goes first."""
    for n in range(rounds):
        for rev in revs if n % 2 == 0 else revs[::-1]:
            yield n, rev


def _timed(tree: Path, *args: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one `python -m indexer ARGS` from `tree`, in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "indexer", *args], cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{args[0]} from {tree} failed: {out[-300:]}")
    return wall, usage.ru_maxrss / 1024, out


def _timed_build(tree: Path, index: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, last line) of one CLI build of the long corpus from `tree`."""
    wall, rss, out = _timed(tree, "build", str(LONG_CORPUS), "--index", str(index), "--model", str(MODEL))
    return wall, rss, out.strip().splitlines()[-1]


def section_longbuild(compare: list[str], rounds: int = 2, log=print) -> dict:
    """CLI builds of the long corpus from this tree and each compared revision, alternating."""
    _, chars = long_chunks()
    revs = ["HEAD"] + [r for r in compare if r not in ("HEAD", ".")]
    runs: dict[str, list[tuple[float, float]]] = {r: [] for r in revs}
    chunks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-longbuild-") as tmp, _trees(revs, Path(tmp)) as trees:
        for n, rev in _alternating(revs, rounds):
            wall, rss, last = _timed_build(trees[rev], Path(tmp) / f"ix-{rev}-{n}")
            chunks[rev] = int(last.split("(")[1].split()[0])  # "added  383 documents (1106 chunks)"
            runs[rev].append((wall, rss))
            log(f"  {rev}: {wall:.1f} s, {rss:.0f} MiB ({last})")
    rows = []
    for rev in revs:
        wall = pct([w for w, _ in runs[rev]], 50)
        rows.append({"tree": rev, "wall_s": round(wall, 1), "peak_rss_mib": round(max(r for _, r in runs[rev])),
                     "chars_per_s": round(chars / wall), "chunks_per_s": round(chunks[rev] / wall, 1),
                     "chunks": chunks[rev]})
    for row in rows:
        row["vs_last"] = round(row["chars_per_s"] / rows[-1]["chars_per_s"], 2)
    return {"corpus": LONG_CORPUS.parent.name, "chars": chars, "rounds": rounds, "builds": rows}


COLD_QUESTIONS = ("民办学校怎样建立党组织？", "How do private schools set up Party organisations?")


def section_coldsearch(compare: list[str], rounds: int = 3, log=print) -> dict:
    """`python -m indexer search` in a fresh process, as a user runs it once, on the speech index that
    each tree builds: from this tree and each compared revision, alternating; median wall and peak RSS
    over the rounds, a Chinese and an English question each round."""
    revs = ["HEAD"] + [r for r in compare if r not in ("HEAD", ".")]
    runs: dict[str, list[tuple[float, float]]] = {r: [] for r in revs}
    speech = ROOT / "data" / "speech.txt"
    with tempfile.TemporaryDirectory(prefix="bench-coldsearch-") as tmp, _trees(revs, Path(tmp)) as trees:
        for rev in revs:
            _timed(trees[rev], "build", str(speech), "--index", str(Path(tmp) / f"ix-{rev}"), "--model", str(MODEL))
        for _, rev in _alternating(revs, rounds):
            for question in COLD_QUESTIONS:
                wall, rss, _ = _timed(trees[rev], "search", question, "--index", str(Path(tmp) / f"ix-{rev}"),
                                      "--model", str(MODEL), "-k", "3")
                runs[rev].append((wall, rss))
                log(f"  {rev}: {wall:.2f} s, {rss:.0f} MiB")
    rows = [{"tree": rev, "wall_s": round(pct([w for w, _ in runs[rev]], 50), 2),
             "peak_rss_mib": round(pct([r for _, r in runs[rev]], 50)), "searches": len(runs[rev])} for rev in revs]
    for row in rows:
        row["vs_last"] = round(rows[-1]["wall_s"] / row["wall_s"], 2)
    return {"questions": list(COLD_QUESTIONS), "rounds": rounds, "searches": rows}
