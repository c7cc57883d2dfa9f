"""The models an engine encodes with, loaded on first need and shared by its reader and its writer:
e5 (questions and documents: indexer.embedding), USE (English questions: indexer.crosslingual), and
the threads that encode beside the rest of a question's or a batch's work."""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .crosslingual import USEEncoder
from .embedding import BACKEND_ENV, Encoder, resolve_model
from .errors import ModelError
from .store.base import Manifest


class Models:
    """One e5 encoder (`model`: a folder or hub name; or an `encoder` already loaded), one USE
    encoder, one thread pool; each made once, under a lock, the first time it is asked for."""

    def __init__(self, model: str | Path | None = None, encoder: Encoder | None = None) -> None:
        self._model, self._e5, self._use = model, encoder, None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def e5(self, side: int = 0) -> Encoder:
        """The e5 encoder, made (if not yet) with `side` (0 questions, 1 documents) loaded first: a
        build or an add never loads the question side (4 s and 0.5 GB of ONNX it would not use)."""
        if self._e5 is None:
            with self._lock:
                if self._e5 is None:
                    self._e5 = Encoder(self._model, first=side)
        return self._e5

    def use(self) -> USEEncoder:
        """The cross-lingual (USE) encoder."""
        if self._use is None:
            with self._lock:
                if self._use is None:
                    self._use = USEEncoder()
        return self._use

    def pool(self) -> ThreadPoolExecutor:
        """Threads that encode questions with e5 while the calling thread does the rest of the
        question's work (keywords, translation, the USE vector), and cut a batch's keyword terms
        while its passages are encoded: onnxruntime and numpy release the GIL, so the two overlap
        on two cores."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="indexer-encode")
        return self._pool

    def check(self, manifest: Manifest, shown: str) -> None:
        """Refuse to mix vectors of two models in one index (`shown`: the index, as people see it)."""
        enc = self.e5()
        if manifest.model != enc.name or manifest.dim != enc.dim:
            raise ModelError(f"index {shown} was built with model {manifest.model} (dim {manifest.dim}), "
                             f"not {enc.name} (dim {enc.dim}); use that model or rebuild the index")


def shared(model: str | None = None) -> Models:
    """This process's models for `model` (None: $INDEXER_MODEL or the default folder) and the
    encoder backends $INDEXER_BACKEND asks for: every engine made without an encoder of its own
    shares them, so a server holding several engines (one per index) loads each model once."""
    return _shared(resolve_model(model), os.environ.get(BACKEND_ENV))


@functools.lru_cache(maxsize=None)
def _shared(model: str, backend: str | None) -> Models:
    return Models(model)
