"""Routing stage of the benchmark suite: `routing.route` vs the equal-work numpy GEMM.

The bank is one router layer at the sizes of `msa_jax.inference.routing_benchmark`: random
L2-normalised float32 keys [C, J=2, D=64] of chunks of P=64 tokens in 512-token documents, B
questions of T=16 routing tokens with H=4 heads, head mean / query max / chunk max, top 16.
Ours is the whole jitted `route` (scores, per-document max, top-k). The baseline is the GEMM
that scoring needs at the least: the head-summed queries [B * T, J * D] times the same keys
[C, J * D] transposed, in numpy (`blas.Worker`: a process with the host's native OpenBLAS
kernel). The two are timed in interleaved repeats after a warm-up each; `flops` is that GEMM's
2 * B * T * J * D * C.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import numpy as np

from msa_jax.benchmarks.blas import Worker
from msa_jax.memory import routing

T, H, J, D, P, DOC_TOKENS, TOP_K = 16, 4, 2, 64, 64, 512, 16
FULL = dict(tokens=(1_000_000, 10_000_000), batches=(1, 8), iters=11)
QUICK = dict(tokens=(65_536,), batches=(1, 8), iters=3)


def make_bank(tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
  """(keys [C, J, D] float32, chunk_doc [C] int32, documents M) of a `tokens`-token bank."""
  chunks = -(-tokens // P)
  per_doc = DOC_TOKENS // P
  keys = np.random.default_rng(seed).standard_normal((chunks, J, D), dtype=np.float32)
  keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
  chunk_doc = (np.arange(chunks) // per_doc).astype(np.int32)
  return keys, chunk_doc, int(chunk_doc[-1]) + 1


def make_questions(b: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  rq = np.random.default_rng(seed).standard_normal((b, T, H, D), dtype=np.float32)
  rq /= np.linalg.norm(rq, axis=-1, keepdims=True)
  return rq, np.ones((b, T), bool)


def _time_once(fn, *args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def run(quick: bool, tile_chunks: int = routing.DEFAULT_TILE_CHUNKS) -> list[dict]:
  """One row per (bank size, batch): route vs numpy GEMM, medians of interleaved repeats."""
  sizes = QUICK if quick else FULL
  rows = []
  with Worker() as blas, tempfile.TemporaryDirectory() as tmp:
    core = blas.call("info")["coretype"]
    for tokens in sizes["tokens"]:
      keys, chunk_doc, num_docs = make_bank(tokens)
      c = keys.shape[0]
      np.save(os.path.join(tmp, "b.npy"), keys.reshape(c, J * D))
      dev_keys, dev_doc = jax.device_put(keys), jax.device_put(chunk_doc)
      fn = jax.jit(lambda rq, m, k, d, num_docs=num_docs: routing.route(
          rq, m, k, d, num_docs, top_k=TOP_K, scale=1.0, tile_chunks=tile_chunks))
      for b in sizes["batches"]:
        rq, mask = make_questions(b)
        qbar = rq.reshape(b, T, J, H // J, D).sum(axis=3) / H
        np.save(os.path.join(tmp, "a.npy"), qbar.reshape(b * T, J * D))
        blas.call("load", a=os.path.join(tmp, "a.npy"), b=os.path.join(tmp, "b.npy"))
        args = (jax.device_put(rq), jax.device_put(mask), dev_keys, dev_doc)
        _time_once(fn, *args)
        blas.call("time")
        ours, base = [], []
        for _ in range(sizes["iters"]):
          ours.append(_time_once(fn, *args))
          base.append(blas.call("time")["s"])
        rows.append(dict(stage="routing", case=f"{tokens / 1e6:g}M tokens B={b}",
                         ours_s=statistics.median(ours), baseline=f"numpy sgemm ({core})",
                         baseline_s=statistics.median(base), flops=2.0 * b * T * J * D * c))
  return rows
