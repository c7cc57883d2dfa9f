"""FAISS at scale: build time, memory, disk size, one-query latency and recall@10 vs exact search.

Data: a Gaussian mixture on the unit sphere in 384 dimensions, shaped like e5 embeddings rather
than uniform noise (uniform random vectors make ANN look far worse than on real text, a single
blob far better):
  x = normalise(1.0·c + 0.45·μ_k + 0.35·ε),  c one shared direction (e5 vectors are anisotropic:
  random passage pairs have cosine ≈ 0.75), μ_k one of ≈√n topic centres with uneven (log-normal)
  weights, ε noise with a decaying spectrum (s_i ∝ (i+1)^-0.5 after a random rotation), so each
  topic has a low effective dimension as real embeddings do. Centres use the same spectrum.
Queries are 1,000 fresh draws of the same mixture (not database rows). The JSON records the mean
cosine of random pairs and of each query's true nearest neighbour, to compare with real vectors.
"""
from __future__ import annotations

import ctypes
import gc
import os
import tempfile
import time

import faiss
import numpy as np

from .common import ms, pct, rss_mb
from indexer.store.segment import IVF_NPROBE

D = 384
K = 10
N_QUERIES = 1000  # recall@10 is averaged over these (one batch search)
N_LATENCY = 200  # single-query latency (nq=1) is measured on the first of these
HNSW_M, HNSW_EFC = 32, 80  # as indexer/store/segment.py builds it
EF_SEARCH = (64, 128, 256)
NPROBE = (8, 16, 32, 64)
KINDS = ("flat", "hnsw", "hnsw-fp16", "hnsw-sq8", "ivf", "ivf-sq8", "ivf-pq48")
KINDS_1M = ("flat", "hnsw", "ivf", "ivf-sq8")  # PQ48 (recall 0.40), HNSW-SQ8 (0.97) lose at 100k; fp16 skipped for time


def mixture(n: int, seed: int, n_queries: int = N_QUERIES, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """(database [n, d], queries [n_queries, d]), float32, L2-normalised; deterministic in (n, seed)."""
    rng = np.random.default_rng(seed)
    k = max(16, int(round(np.sqrt(n))))
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = (np.arange(d) + 1.0) ** -0.5
    spectrum /= np.sqrt((spectrum ** 2).sum())
    rot = (spectrum[:, None] * rot.T).astype(np.float32)  # z @ rot: spectrum-shaped, randomly rotated

    def shaped(m):
        return rng.standard_normal((m, d), dtype=np.float32) @ rot

    common = rng.standard_normal(d).astype(np.float32)
    common /= np.linalg.norm(common)
    centres = shaped(k)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, k)
    weights /= weights.sum()

    def draw(m):
        out = np.empty((m, d), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            lab = rng.choice(k, size=e - s, p=weights)
            x = common + 0.45 * centres[lab] + 0.35 * shaped(e - s)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def _disk_mb(index) -> float:
    fd, path = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    try:
        faiss.write_index(index, path)
        return os.path.getsize(path) / 2**20
    finally:
        os.unlink(path)


def _latency(index, xq, n=N_LATENCY, threads: int | None = None) -> tuple[float, float]:
    """p50, p95 (ms) of one query at a time, k=10; `threads` caps FAISS's OpenMP threads meanwhile."""
    before = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        index.search(xq[:5], K)  # warm
        times = []
        for i in range(min(n, len(xq))):
            t = time.perf_counter()
            index.search(xq[i:i + 1], K)
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(before)
    return ms(pct(times, 50)), ms(pct(times, 95))


def _recall(index, xq, gt) -> float:
    _, ids = index.search(xq, K)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, gt)]))


def _trim() -> None:
    """Give freed heap back to the OS, so the next RSS difference measures the next index only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _build(make, xb, train_on=None):
    """(index, seconds, RSS growth MiB)."""
    _trim()
    before = rss_mb()
    t = time.perf_counter()
    index = make()
    if not index.is_trained:
        index.train(train_on if train_on is not None else xb)
    index.add(xb)
    secs = time.perf_counter() - t
    return index, secs, rss_mb() - before


def _ivf_quantizer(xb, nlist, seed):
    """A trained coarse quantizer (k-means on a sample), shared by the IVF variants."""
    rng = np.random.default_rng(seed)
    sample = xb[rng.choice(len(xb), size=32 * nlist, replace=False)] if len(xb) > 32 * nlist else xb
    t = time.perf_counter()
    km = faiss.Kmeans(D, nlist, niter=10, spherical=True, seed=seed, verbose=False)
    km.train(sample)
    return km.centroids, time.perf_counter() - t, sample


def bench_size(n: int, seed: int = 0, kinds: tuple[str, ...] | None = None, queries: list[str] | None = None,
               log=print) -> dict:
    """All index kinds at one size; returns {"n", "data", "rows": [...]} (and "encode_search" when
    `queries` are given: real questions encoded one at a time and searched in the HNSW index)."""
    t0 = time.perf_counter()
    xb, xq = mixture(n, seed)
    log(f"  faiss n={n:,}: data {time.perf_counter() - t0:.1f}s")
    rows = []
    encode_search = None

    def row(kind, params, index, secs, mem, extra=None, gt=None):
        p50, p95 = _latency(index, xq)
        p50_1t, _ = _latency(index, xq, n=50, threads=1)
        r = {"n": n, "kind": kind, "params": params, "build_s": round(secs, 2), "mem_mb": round(mem, 1),
             "disk_mb": round(_disk_mb(index), 1), "p50_ms": p50, "p95_ms": p95, "p50_1thread_ms": p50_1t,
             "recall@10": 1.0 if gt is None else round(_recall(index, xq, gt), 4)}
        r.update(extra or {})
        rows.append(r)
        log(f"    {kind:9s} {params:22s} build {r['build_s']:8.1f}s mem {r['mem_mb']:7.0f}MB disk {r['disk_mb']:7.0f}MB "
            f"p50 {p50:7.3f}ms p95 {p95:7.3f}ms recall@10 {r['recall@10']:.4f}")

    # exact
    flat, secs, mem = _build(lambda: faiss.IndexFlatIP(D), xb)
    t = time.perf_counter()
    gt_scores, gt = flat.search(xq, K)
    gt_secs = time.perf_counter() - t
    row("flat", "exact", flat, secs, mem, {"batch_1000_s": round(gt_secs, 3)})
    rng = np.random.default_rng(seed + 1)
    a, b = rng.integers(0, n, 2000), rng.integers(0, n, 2000)
    data = {"clusters": max(16, int(round(np.sqrt(n)))),
            "mean_cos_random_pairs": round(float(np.mean(np.sum(xb[a] * xb[b], axis=1))), 4),
            "mean_cos_query_top1": round(float(gt_scores[:, 0].mean()), 4),
            "mean_cos_query_top10": round(float(gt_scores[:, 9].mean()), 4)}
    log(f"    data: {data}")
    del flat
    _trim()

    # HNSW over full vectors (the store's kind), then over 8-bit scalar-quantised vectors
    def hnsw_flat():
        ix = faiss.IndexHNSWFlat(D, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = HNSW_EFC
        return ix

    def hnsw_sq(qtype):
        def make():
            ix = faiss.IndexHNSWSQ(D, qtype, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            ix.hnsw.efConstruction = HNSW_EFC
            return ix
        return make

    kinds = kinds or KINDS
    for kind, make in (("hnsw", hnsw_flat), ("hnsw-fp16", hnsw_sq(faiss.ScalarQuantizer.QT_fp16)),
                       ("hnsw-sq8", hnsw_sq(faiss.ScalarQuantizer.QT_8bit))):
        if kind not in kinds:
            continue
        ix, secs, mem = _build(make, xb)
        log(f"    {kind} built in {secs:.1f}s")
        for ef in EF_SEARCH:
            ix.hnsw.efSearch = ef
            row(kind, f"M={HNSW_M} efC={HNSW_EFC} ef={ef}", ix, secs, mem, gt=gt)
        if kind == "hnsw" and queries:
            encode_search = encode_and_search(ix, queries, log=log)
        del ix
        gc.collect()

    # IVF family, one shared k-means
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    centroids, km_secs, sample = _ivf_quantizer(xb, nlist, seed)
    log(f"    k-means nlist={nlist} in {km_secs:.1f}s")

    def ivf(kind):
        def make():
            q = faiss.IndexFlatIP(D)
            q.add(centroids)
            if kind == "ivf":
                ix = faiss.IndexIVFFlat(q, D, nlist, faiss.METRIC_INNER_PRODUCT)
            elif kind == "ivf-sq8":
                ix = faiss.IndexIVFScalarQuantizer(q, D, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                   faiss.METRIC_INNER_PRODUCT)
            else:  # ivf-pq: 48 sub-quantisers of 8 bits = 48 bytes a vector
                ix = faiss.IndexIVFPQ(q, D, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
            ix.own_fields = True
            q.this.disown()
            return ix
        return make

    for kind in ("ivf", "ivf-sq8", "ivf-pq48"):
        if kind not in kinds:
            continue
        ix, secs, mem = _build(ivf(kind), xb, train_on=sample)
        secs += km_secs
        for nprobe in sorted(set(NPROBE + (min(nlist, IVF_NPROBE),))):  # the store's default is among them
            ix.nprobe = nprobe
            row(kind, f"nlist={nlist} nprobe={nprobe}", ix, secs, mem, gt=gt)
        del ix
        gc.collect()
    return {"n": n, "data": data, "rows": rows, "encode_search": encode_search,
            "total_s": round(time.perf_counter() - t0, 1)}


def encode_and_search(ix, queries: list[str], ef: int = 128, log=print) -> dict:
    """One question at a time: Encoder.encode_queries + search of the HNSW index `ix` (efSearch=ef)."""
    from indexer.embedding import Encoder

    ix.hnsw.efSearch = ef
    enc = Encoder()
    for q in queries[:5]:
        ix.search(enc.encode_queries([q]), K)
    total, enc_t, search_t = [], [], []
    for q in queries:
        t = time.perf_counter()
        v = enc.encode_queries([q])
        t1 = time.perf_counter()
        ix.search(v, K)
        t2 = time.perf_counter()
        total.append(t2 - t)
        enc_t.append(t1 - t)
        search_t.append(t2 - t1)
    r = {"n": ix.ntotal, "kind": "hnsw", "efSearch": ef, "queries": len(queries),
         "p50_ms": ms(pct(total, 50)), "p95_ms": ms(pct(total, 95)),
         "encode_p50_ms": ms(pct(enc_t, 50)), "search_p50_ms": ms(pct(search_t, 50))}
    log(f"  encode+search n={ix.ntotal:,}: {r}")
    del enc
    gc.collect()
    return r
