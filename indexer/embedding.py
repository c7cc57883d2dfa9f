"""The encoder: one sentence-transformers model, loaded once, used for queries and passages."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ModelError
from .modelprep import DEFAULT_MODEL_DIR

MODEL_ENV = "INDEXER_MODEL"


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
    id that sentence-transformers can load works too (the hub needs a network).
    """

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 32, device: str = "cpu") -> None:
        self.model_path = resolve_model(model)
        self.name = model_name(self.model_path)
        self.batch_size = batch_size
        self._model = _load(self.model_path, device)
        self.dim = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)
        self.tokenizer = self._model.tokenizer
        self.prompts = dict(self._model.prompts)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query vectors, float32 [n, dim]."""
        return self._encode(texts, self._model.encode_query)

    def encode_documents(self, texts: list[str], *, progress: bool | Callable[[float], None] = False) -> np.ndarray:
        """Passage vectors, float32 [n, dim].

        `progress` is True for a console bar, or a callback given the fraction done. With a callback
        the texts are sorted by length and encoded in blocks, so each block pads little.
        """
        if not callable(progress):
            return self._encode(texts, self._model.encode_document, progress=progress)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        block = self.batch_size * 8
        for start in range(0, len(texts), block):
            rows = order[start:start + block]
            out[rows] = self._encode([texts[i] for i in rows], self._model.encode_document)
            progress(min(1.0, (start + len(rows)) / len(texts)))
        return out

    def _encode(self, texts: list[str], fn, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = fn(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                  normalize_embeddings=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` as a passage, prompt and special tokens included."""
        prompt = self.prompts.get("document", self.prompts.get("passage", ""))
        return len(self.tokenizer(prompt + text, add_special_tokens=True, truncation=False)["input_ids"])


def _load(model: str, device: str):
    """Load a SentenceTransformer or raise one clear ModelError."""
    path = Path(model)
    if str(path.resolve()) == str(DEFAULT_MODEL_DIR.resolve()) and not (path / "modules.json").exists():
        raise ModelError(f"model folder {path} is missing; provision it with `make model` "
                         "(python -m indexer.modelprep)")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start
    hf_logging.set_verbosity_error()  # counting a long paragraph's tokens is not an overflow

    try:
        return SentenceTransformer(model, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {model!r}: {first}") from exc
