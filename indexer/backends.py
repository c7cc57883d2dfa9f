"""Encoder backends: the same sentence-transformers model folder run by torch (fp32 or bf16
weights) or by onnxruntime (fp32 or dynamically quantised int8).

    backend = load_backend("models/multilingual-e5-small", "onnx")
    vectors = backend.encode(["query: ..."], prompt="")          # or prompt="query: "
    vectors = backend.encode(passages, prompt=backend.prompts["document"])

Every backend returns float32 [n, dim] L2-normalised vectors (mean pooling, as the folder's
1_Pooling declares for e5), truncating at the model's token limit, and offers the same
`tokenizer` (the folder's fast tokenizer), `prompts`, `dim` and `max_tokens`.

The ONNX files are exported into a folder beside the model
(`models/multilingual-e5-small-onnx/`: model.onnx, source.json, and model-int8.onnx when the
int8 backend is asked for), by `make model` or else on first use, through a temporary folder and
one rename, so a crash or a concurrent first use never leaves a half export. The model folder
itself is only read. The export is redone when the model's weights change (source.json records
their size and mtime).

`plan(model, "auto")` picks the pair the Encoder uses (bench/README.md has the measurements):
OpenVINO for questions and documents, in bf16 where the CPU computes bf16 natively (AMX /
AVX512-BF16) and in float32 elsewhere: its fused attention beats torch bf16 on long passages,
one question runs in half onnxruntime's time, and it loads without importing torch.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

BACKENDS = ("torch", "bf16", "onnx", "onnx-int8", "openvino")
ONNX_FILE, ONNX_INT8_FILE, STAMP_FILE = "model.onnx", "model-int8.onnx", "source.json"
OPSET = 17
Progress = bool | Callable[[float], None]


class BackendError(RuntimeError):
    """A backend cannot be loaded (unknown name, missing package, failed export)."""


# ------------------------------------------------------------------------------ common model facts


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_prompts(model_path: str | Path) -> dict[str, str]:
    """The prompts the folder declares (config_sentence_transformers.json), e.g. query/document."""
    return dict(_read_json(Path(model_path) / "config_sentence_transformers.json").get("prompts") or {})


def _pooling_mode(model_path: Path) -> str:
    cfg = _read_json(model_path / "1_Pooling" / "config.json")
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _pooled(hidden, attention_mask, pooling: str):
    """Sentence vectors from token states (torch tensors): the first token's ("cls") or the mean over
    the unmasked tokens, L2-normalised. The torch backend and the ONNX export use this one function."""
    if pooling == "cls":
        vecs = hidden[:, 0]
    else:
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        vecs = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return vecs / vecs.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _max_tokens(model_path: Path, tokenizer) -> int:
    st = _read_json(model_path / "sentence_bert_config.json").get("max_seq_length")
    hf = _read_json(model_path / "config.json")
    limit = int(st or getattr(tokenizer, "model_max_length", 512) or 512)
    if hf.get("model_type") in ("xlm-roberta", "roberta", "camembert") and hf.get("max_position_embeddings"):
        limit = min(limit, int(hf["max_position_embeddings"]) - 2)
    return min(limit, 512) if limit > 100_000 else limit


class FolderTokenizer:
    """A model folder's `tokenizer.json` run by the `tokenizers` library itself, offering what this
    package calls of a transformers fast tokenizer: `tok(texts, add_special_tokens=True,
    truncation=False, max_length=None)["input_ids"]` and the special tokens' ids. transformers'
    AutoTokenizer builds the same pipeline from the same file, but importing it imports torch:
    about 6 of a cold `search`'s 12 seconds, for a question that OpenVINO encodes without torch."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()
        names = {**_read_json(folder / "special_tokens_map.json"), **_read_json(folder / "tokenizer_config.json")}
        for role in ("pad", "cls", "sep", "unk"):
            name = names.get(f"{role}_token")
            name = name.get("content") if isinstance(name, dict) else name
            setattr(self, f"{role}_token_id", self._tok.token_to_id(name) if isinstance(name, str) else None)

    def __call__(self, text: str | list[str], *, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None) -> dict[str, list]:
        """Token ids of one text (a list) or of many (a list of lists). With `truncation`, a text is
        cut to `max_length` tokens, special tokens included, as transformers cuts it."""
        texts = [text] if isinstance(text, str) else list(text)
        room = None
        if truncation and max_length:
            room = max_length - (self._tok.num_special_tokens_to_add(False) if add_special_tokens else 0)
        rows = []
        for enc in self._tok.encode_batch(texts, add_special_tokens=False):
            if room is not None and len(enc) > room:
                enc.truncate(room)
            rows.append((self._tok.post_process(enc) if add_special_tokens else enc).ids)
        return {"input_ids": rows[0] if isinstance(text, str) else rows}


def quiet_transformers() -> None:
    """transformers without its "Loading weights" bar, and without its warning that a long
    paragraph's token count exceeds the model's limit (counting is not encoding)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def folder_tokenizer(folder: Path):
    """The folder's tokenizer: FolderTokenizer where it has a tokenizer.json, else transformers'."""
    if (folder / "tokenizer.json").exists():
        return FolderTokenizer(folder)
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))


# ------------------------------------------------------------------------------ torch


class _Batched:
    """What both backends share: tokenise with the prompt, sort longest first, and run batches padded
    to their own longest text rounded up to `pad_multiple` tokens; `_forward(ids, mask)` returns
    the batch's L2-normalised float32 vectors."""

    pad_multiple = 1
    tokenizer = None
    dim = 0
    max_tokens = 512

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        width = min(-(-width // self.pad_multiple) * self.pad_multiple, max(width, self.max_tokens))
        ids = np.full((len(rows), width), self.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return self._forward(ids, mask)

    def encode(self, texts: list[str], prompt: str = "", *, batch_size: int = 32,
               progress: Progress = False) -> np.ndarray:
        """Vectors of `prompt + text` for each text, float32 [n, dim], L2-normalised. `progress`: True
        for a console bar, or a callback given the fraction done."""
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        enc = self.tokenizer([prompt + t for t in texts], add_special_tokens=True, truncation=True,
                             max_length=self.max_tokens)["input_ids"]
        order = np.argsort([-len(r) for r in enc], kind="stable")
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="Batches", unit="text")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._run([enc[i] for i in rows])
            if callable(progress):
                progress(min(1.0, (start + len(rows)) / len(texts)))
            elif bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return out


class TorchBackend(_Batched):
    """The sentence-transformers folder run by torch, weights in float32 ("torch") or bfloat16 ("bf16").

    The transformer runs directly (pooling as the folder's 1_Pooling says, normalised in float32)
    on batches padded to a multiple of 32 tokens: oneDNN keeps about 27 MB of compiled kernels per
    input shape it has seen, and sentence-transformers' own encode, which pads to the batch's
    longest text, gave a 10,000-paragraph bf16 build a peak of 5 GB; 32-token steps bound the
    shapes at 16 per batch size.
    """

    pad_multiple = 32

    def __init__(self, model_path: str | Path, backend: str = "torch", *, device: str = "cpu",
                 threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        quiet_transformers()
        if threads:
            torch.set_num_threads(threads)
        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if backend == "bf16" else {}
        self.name = backend
        self.model = SentenceTransformer(str(model_path), device=device, **kwargs)
        self.tokenizer = self.model.tokenizer
        self.prompts = dict(self.model.prompts)
        self.dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.pooling = _pooling_mode(Path(model_path)) if Path(model_path).is_dir() else "mean"
        self._transformer = self.model[0].auto_model
        self._device = device

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids_t = torch.from_numpy(ids).to(self._device)
            mask_t = torch.from_numpy(mask).to(self._device)
            hidden = self._transformer(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.float()
            return _pooled(hidden, mask_t, self.pooling).cpu().numpy()


# ------------------------------------------------------------------------------ onnx


def onnx_dir(model_path: str | Path) -> Path:
    """Where the ONNX export of a model folder lives: a sibling folder named <model>-onnx."""
    p = Path(model_path).resolve()
    return p.parent / f"{p.name}-onnx"


def _source_stamp(model_path: Path) -> dict:
    weights = next((model_path / f for f in ("model.safetensors", "pytorch_model.bin") if (model_path / f).exists()), None)
    if weights is None:
        raise BackendError(f"{model_path}: no model.safetensors to export to ONNX")
    st = weights.stat()
    return {"weights": weights.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "opset": OPSET}


def _export(model_path: Path, out: Path, int8: bool) -> None:
    """Write model.onnx (input_ids, attention_mask → normalised sentence_embedding), and its int8 twin."""
    import torch
    from transformers import AutoModel

    quiet_transformers()
    pooling = _pooling_mode(model_path)
    hf = AutoModel.from_pretrained(str(model_path), dtype=torch.float32, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return _pooled(self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                           attention_mask, pooling)

    ids = torch.tensor([[0, 100, 200, 300, 2], [0, 400, 2, 1, 1]], dtype=torch.long)
    mask = (ids != 1).long()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it treats as dynamic
        torch.onnx.export(Pooled(hf), (ids, mask), str(out / ONNX_FILE), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                        "sentence_embedding": {0: "batch"}},
                          do_constant_folding=True)
    del hf
    if not int8:
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(out / ONNX_FILE), str(out / ONNX_INT8_FILE), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)


def _complete(folder: Path, stamp: dict, int8: bool) -> bool:
    return (_read_json(folder / STAMP_FILE) == stamp and (folder / ONNX_FILE).exists()
            and (not int8 or (folder / ONNX_INT8_FILE).exists()))


def ensure_onnx(model_path: str | Path, *, int8: bool = False) -> Path:
    """The ONNX folder of a model, exported first if missing or made from other weights
    (`int8`: with the dynamically quantised twin too)."""
    model_path = Path(model_path).resolve()
    final = onnx_dir(model_path)
    stamp = _source_stamp(model_path)
    if _complete(final, stamp, int8):
        return final
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _export(model_path, tmp, int8 or (final / ONNX_INT8_FILE).exists())
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            f.chmod(0o644)
        if final.exists():  # stale (or another process just finished): move it aside, then swap in ours
            if _complete(final, stamp, int8):
                return final
            trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its export in first: use that one
            if not (final / ONNX_FILE).exists():
                raise
    except Exception as exc:
        if isinstance(exc, BackendError):
            raise
        raise BackendError(f"cannot export {model_path} to ONNX: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class _OnnxFile(_Batched):
    """What the backends that run the exported graph share: the runtime package's check, the
    folder's tokenizer, prompts and token limit, and the graph file (exported first if missing)."""

    runtime = ""  # the package that runs the graph

    def __init__(self, model_path: str | Path, backend: str, *, threads: int | None = None) -> None:
        if not installed(self.runtime):
            raise BackendError(f"backend {backend!r} needs the {self.runtime} package")
        model_path = Path(model_path)
        folder = ensure_onnx(model_path, int8=backend == "onnx-int8")
        self.name = backend
        self.threads = threads or os.cpu_count() or 1
        self._open(folder / (ONNX_INT8_FILE if backend == "onnx-int8" else ONNX_FILE))
        self.tokenizer = folder_tokenizer(model_path)
        self.prompts = model_prompts(model_path)
        self.max_tokens = _max_tokens(model_path, self.tokenizer)
        self.dim = int(self._run([[self.tokenizer.cls_token_id or 0, self.tokenizer.sep_token_id or 2]]).shape[1])

    def _open(self, path: Path) -> None:
        raise NotImplementedError


class OnnxBackend(_OnnxFile):
    """onnxruntime on the exported graph: fp32 ("onnx") or dynamically quantised int8 ("onnx-int8")."""

    runtime = "onnxruntime"

    def _open(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # no spin-waiting between ops: on a busy 2-core machine spinning threads fight the other work
        # (one question: 24 ms with spinning, 12.6 ms without, at load 4.5; the same 7 ms when idle)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


class OpenVinoBackend(_OnnxFile):
    """OpenVINO's CPU runtime on the exported graph ("openvino"): bf16 where the CPU computes it
    natively (AMX / AVX512-BF16), float32 elsewhere. It loads without torch or sentence-transformers
    (whose import alone takes seconds); bench/README.md ("Long documents") has its figures against torch bf16 and
    onnxruntime. Batches are padded to a multiple of 32 tokens, as for torch, so it compiles
    kernels for a bounded set of shapes. Each thread gets its own infer request. The compiled model
    is kept beside the graph (`_compiled_openvino`), so a process after the first opens it in 0.3 s
    instead of compiling it in 2 s."""

    runtime = "openvino"
    pad_multiple = 32

    def _open(self, path: Path) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if native_bf16() else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads}
        self._compiled, self._blob = _compiled_openvino(core, path, config)
        self._requests = threading.local()  # an infer request per thread: threads may encode at once

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        return request.infer({"input_ids": ids, "attention_mask": mask})[0].copy()


def _compiled_openvino(core, graph: Path, config: dict) -> tuple[object, np.ndarray | None]:
    """The graph compiled for this CPU with `config`, and the memory map it runs from (which must
    live as long as the model): imported from the blob that an earlier process exported beside the
    graph, else compiled and exported for the next one.

    The blob's name hashes everything the compiled model depends on: the OpenVINO version, the
    config, the CPU's model and flags and the graph file's size and time. It is written to a
    temporary file, synced and renamed into place, so a reader sees a whole blob or none (OpenVINO's
    own CACHE_DIR writes its blob in place). A folder that cannot be written only costs the compile.
    Blobs of other keys are removed when a new one is written."""
    import hashlib

    import openvino as ov

    st = graph.stat()
    key = json.dumps([ov.get_version(), sorted(config.items(), key=str), _cpu_signature(), st.st_size,
                      st.st_mtime_ns], default=str)
    blob = graph.parent / f"openvino-{hashlib.sha256(key.encode()).hexdigest()[:16]}.blob"
    if blob.exists():
        try:
            mapped = np.memmap(blob, dtype=np.uint8, mode="c")
            return core.import_model(ov.Tensor(mapped, shared_memory=True), "CPU", config), mapped
        except Exception:  # noqa: BLE001 - an unreadable blob is compiled again and replaced
            pass
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    tmp = blob.with_name(f".{blob.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(compiled.export_model().getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, blob)
        for old in graph.parent.glob("openvino-*.blob"):
            if old != blob:
                old.unlink(missing_ok=True)
    except OSError:
        tmp.unlink(missing_ok=True)
    return compiled, None


def _cpu_signature() -> str:
    """The CPU's model name and flags (a compiled model holds kernels chosen for them)."""
    return " ".join(sorted({line.strip() for line in _cpuinfo().splitlines() if line.startswith(("model name", "flags"))}))


# ------------------------------------------------------------------------------ choosing


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX-BF16 or AVX512-BF16, from /proc/cpuinfo),
    and oneDNN (OpenVINO's and torch's kernels) may use it: `ONEDNN_MAX_CPU_ISA=AVX2` (or any level
    below AVX512_CORE_BF16) keeps them to narrower kernels, where OpenVINO cannot compile a bf16
    graph at all."""
    if not re.search(r"\b(amx_bf16|avx512_bf16)\b", _cpuinfo()):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return isa in ("", "ALL", "DEFAULT") or any(level in isa for level in ("BF16", "FP16", "AMX", "AVX10"))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once a process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return ""


def installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def plan(model_path: str | Path, backend: str = "auto", device: str = "cpu") -> tuple[str, str]:
    """(query backend, document backend) for a setting: "auto", one of BACKENDS for both sides, or
    "QUESTIONS,DOCUMENTS" with each side "auto" or one of BACKENDS (e.g. "onnx-int8,auto").

    auto, for a local folder on the CPU: OpenVINO for both sides (a compiled model each; bf16 where
    native, else float32). Without openvino: questions on ONNX fp32 (onnxruntime), documents on
    torch bf16 on a CPU with native bf16, else the question backend. A hub id or a GPU takes torch.
    """
    sides = [part.strip() for part in backend.split(",")] if "," in backend else [backend, backend]
    if len(sides) != 2 or any(side != "auto" and side not in BACKENDS for side in sides):
        raise BackendError(f"unknown encoder backend {backend!r}; choose auto, one of {', '.join(BACKENDS)}, "
                           "or QUESTIONS,DOCUMENTS (e.g. onnx-int8,auto)")
    local_cpu = device == "cpu" and Path(model_path).is_dir()
    if local_cpu and installed("openvino"):
        query = docs = "openvino"
    else:
        query = "onnx" if local_cpu and installed("onnxruntime") else "torch"
        docs = "bf16" if device == "cpu" and native_bf16() else query
    return (query if sides[0] == "auto" else sides[0]), (docs if sides[1] == "auto" else sides[1])


# ------------------------------------------------------------------------------ entry point


def load_backend(model_path: str | Path, backend: str = "torch", *, device: str = "cpu", threads: int | None = None):
    """A loaded backend: .encode(texts, prompt="", batch_size=32) → float32 [n, dim], normalised;
    .tokenizer, .prompts, .dim, .max_tokens, .name. `backend` is one of BACKENDS. `threads` caps
    the CPU threads (torch: process-wide torch.set_num_threads; onnxruntime: this session)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("torch", "bf16"):
        return TorchBackend(model_path, backend, device=device, threads=threads)
    if device != "cpu":
        raise BackendError(f"backend {backend!r} runs on the CPU only")
    if not Path(model_path).is_dir():
        raise BackendError(f"backend {backend!r} needs a local model folder, not {str(model_path)!r}")
    if backend == "openvino":
        return OpenVinoBackend(model_path, backend, threads=threads)
    return OnnxBackend(model_path, backend, threads=threads)
