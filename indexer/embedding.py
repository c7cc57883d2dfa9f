"""The encoder: one sentence-transformers model, loaded once, used for queries and passages."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .backends import BackendError, load_backend, plan
from .errors import ModelError
from .modelprep import DEFAULT_MODEL_DIR

MODEL_ENV = "INDEXER_MODEL"
BACKEND_ENV = "INDEXER_BACKEND"
OWN_MODEL_PER_SIDE = frozenset({"openvino"})  # backends whose questions and documents get a compiled model each


def resolve_model(model: str | Path | None = None) -> str:
    """The model to load: the argument, else $INDEXER_MODEL, else the provisioned default folder."""
    return str(model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL_DIR)


def model_name(model: str) -> str:
    """A stable name for a model: a folder's name, or the hub id as given."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


class Encoder:
    """Embeds queries and passages with the prompts the model declares; vectors are L2-normalised.

    `Encoder()` loads the default folder `models/multilingual-e5-small`; any local folder or hub
    id that sentence-transformers can load works too (the hub needs a network). `backend` (or
    $INDEXER_BACKEND) is "auto" or one of indexer.backends.BACKENDS: auto runs both sides on
    OpenVINO, a compiled model each (see `indexer.backends.plan`). Side `first` (0 questions, 1
    documents) loads now and the other on its first use: a search-only process
    never loads the document side, and a build never loads the question side.
    """

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 32, device: str = "cpu",
                 backend: str | None = None, first: int = 0) -> None:
        self.model_path = resolve_model(model)
        self.name = model_name(self.model_path)
        self.batch_size = batch_size
        self.device = device
        self.backend = backend or os.environ.get(BACKEND_ENV) or "auto"
        _check_folder(self.model_path)
        try:
            self.backends = plan(self.model_path, self.backend, device)  # (questions, documents)
        except BackendError as exc:
            raise ModelError(str(exc)) from None
        self._loaded: dict[tuple[str, int | None], object] = {}  # (backend, side, or None where the sides share it)
        self._lock = threading.Lock()
        loaded = self._side(first)
        self.dim, self.max_tokens = int(loaded.dim), int(loaded.max_tokens)
        self.tokenizer, self.prompts = loaded.tokenizer, dict(loaded.prompts)

    def _side(self, which: int):
        """The loaded backend for questions (0) or documents (1), loaded once. OpenVINO runs one
        request at a time on a compiled model (the latency hint's one stream), so each side has its
        own: a question never waits behind a batch of documents (3 s against 38 ms, bench/README.md);
        the other backends run requests side by side, and both sides share one."""
        name = self.backends[which]
        key = (name, which if name in OWN_MODEL_PER_SIDE else None)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load(self.model_path, self.device, name)
            return self._loaded[key]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query vectors, float32 [n, dim]."""
        return self._encode(0, texts, self.prompts.get("query", ""))

    def encode_documents(self, texts: list[str], *, progress: bool | Callable[[float], None] = False) -> np.ndarray:
        """Passage vectors, float32 [n, dim].

        `progress` is True for a console bar, or a callback given the fraction done. With a callback
        the texts are sorted by length and encoded in blocks, so each block pads little.
        """
        prompt = self.prompts.get("document", self.prompts.get("passage", ""))
        if not callable(progress):
            return self._encode(1, texts, prompt, progress=progress)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        block = self.batch_size * 8
        for start in range(0, len(texts), block):
            rows = order[start:start + block]
            out[rows] = self._encode(1, [texts[i] for i in rows], prompt)
            progress(min(1.0, (start + len(rows)) / len(texts)))
        return out

    def _encode(self, which: int, texts: list[str], prompt: str, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._side(which).encode(list(texts), prompt, batch_size=self.batch_size, progress=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` as a passage, prompt and special tokens included."""
        prompt = self.prompts.get("document", self.prompts.get("passage", ""))
        return len(self.tokenizer(prompt + text, add_special_tokens=True, truncation=False)["input_ids"])


def _check_folder(model: str) -> None:
    """The default folder must have been provisioned; say how, in one line."""
    path = Path(model)
    if str(path.resolve()) == str(DEFAULT_MODEL_DIR.resolve()) and not (path / "modules.json").exists():
        raise ModelError(f"model folder {path} is missing; provision it with `make model` "
                         "(python -m indexer.modelprep)")


def _load(model: str, device: str, backend: str):
    """Load the model with one encoder backend, or raise one clear ModelError."""
    try:
        return load_backend(model, backend, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {model!r} ({backend}): {first}") from exc
