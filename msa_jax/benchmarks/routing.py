"""Routing stage of the benchmark suite: `routing.route` vs the equal-work numpy GEMM.

The bank is one router layer at the sizes of `msa_jax.inference.routing_benchmark`: random
L2-normalised float32 keys [C, J=2, D=64] of chunks of P=64 tokens in 512-token documents, B
questions of T=16 routing tokens with H=4 heads, head mean / query max / chunk max, top 16.
Ours is the whole jitted `route` (scores, per-document max, top-k). The baseline is the GEMM
that scoring needs at the least: the head-summed queries [B * T, J * D] times the same keys
[C, J * D] transposed, twice: in numpy (`blas.Worker`: a process with the host's native
OpenBLAS kernel; the faster of the two orientations, [B * T, J * D] x [J * D, C] and
[C, J * D] x [J * D, B * T]: on one core the second is ~2x faster at B = 1), and as one XLA
dot over the whole bank in this process (keys [C, J * D] x [J * D, B * T], the orientation
`route` uses; it writes all C * B * T scores, which `route`'s tiles never hold). Each case gives two rows, one per baseline. The three are timed in
interleaved repeats after a warm-up each; `flops` is that GEMM's 2 * B * T * J * D * C.

On a loaded machine numpy's threaded OpenBLAS slows down far more than XLA (its 2 threads wait
on each other), so the numpy ratio then flatters us; the XLA GEMM, run by the same runtime on
the same threads, is the steadier yardstick. For a number that the load hardly moves, run the
stage alone on one core:

    python -m msa_jax.benchmarks.routing --config=configs/benchmarks.py:one_core

which re-runs itself pinned to one CPU with XLA and OpenBLAS single-threaded and compares
process CPU seconds (medians) instead of wall time: the work each side does per core.

Where `route`'s time goes beyond the GEMM (issue 17's 1.2x target; 2026-12-03, jax 0.10,
1M tokens, one core, CPU ms, medians of 41 interleaved repeats): B = 8: whole-bank XLA GEMM
8.24, the same GEMM in `route`'s tiles of 2048 chunks 8.44 (1.02x), plus the masked query max
over the T routing tokens 10.39 (1.26x; unmasked 9.23), `route` 10.83 (1.31x); B = 1: 1.79 and
2.02 (1.13x). The loop and the per-document scatter cost little; the query reduction is a
second pass over the [tile, B * T] scores that XLA:CPU does not fuse into the dot, and no
layout tried removed it (scores [B * T, tile] with a max over rows; query rows ordered
(t, b); tiles of 256-8192). In wall time (2 threads) a 2048-chunk tile is too small for both
cores at B = 1 (10M tokens: 1.42-1.58x); one GEMM over the whole bank with the query max,
a sorted segment max and top-k is 1.19x there but 1.39x at B = 8 (its [C, B * T] scores
leave the cache) and holds scores the size of the bank. Reaching 1.2x everywhere needs the
query max fused into the GEMM (a CPU kernel; the Pallas kernel does it on GPU).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from msa_jax import validation
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


@jax.jit
def _xla_gemm(keys: jax.Array, qbar: jax.Array) -> jax.Array:
  """keys [C, J * D] x qbar [B * T, J * D]^T -> [C, B * T] float32: the equal-work XLA GEMM."""
  return jax.lax.dot_general(keys, qbar, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _time_once(fn, *args, clock=time.perf_counter) -> float:
  t0 = clock()
  jax.block_until_ready(fn(*args))
  return clock() - t0


def run(quick: bool, tile_chunks: int = routing.DEFAULT_TILE_CHUNKS,
        cpu_time: bool = False) -> list[dict]:
  """Two rows per (bank size, batch): route vs the numpy GEMM, and vs the XLA GEMM (medians of
  interleaved repeats); wall seconds, or process CPU seconds with `cpu_time`."""
  clock = time.process_time if cpu_time else time.perf_counter
  key = "cpu" if cpu_time else "s"
  sizes = QUICK if quick else FULL
  rows = []
  with Worker() as blas, tempfile.TemporaryDirectory() as tmp:
    core = blas.call("info")["coretype"]
    for tokens in sizes["tokens"]:
      keys, chunk_doc, num_docs = make_bank(tokens)
      c = keys.shape[0]
      np.save(os.path.join(tmp, "b.npy"), keys.reshape(c, J * D))
      dev_keys, dev_doc = jax.device_put(keys), jax.device_put(chunk_doc)
      dev_flat = jax.device_put(keys.reshape(c, J * D))
      fn = jax.jit(lambda rq, m, k, d, num_docs=num_docs: routing.route(
          rq, m, k, d, num_docs, top_k=TOP_K, scale=1.0, tile_chunks=tile_chunks))
      for b in sizes["batches"]:
        rq, mask = make_questions(b)
        qbar = rq.reshape(b, T, J, H // J, D).sum(axis=3) / H
        np.save(os.path.join(tmp, "a.npy"), qbar.reshape(b * T, J * D))
        blas.call("load", a=os.path.join(tmp, "a.npy"), b=os.path.join(tmp, "b.npy"))
        args = (jax.device_put(rq), jax.device_put(mask), dev_keys, dev_doc)
        gemm_args = (dev_flat, jax.device_put(qbar.reshape(b * T, J * D)))
        _time_once(fn, *args)
        _time_once(_xla_gemm, *gemm_args)
        blas.call("time")
        ours, base, xla = [], [], []
        for _ in range(sizes["iters"]):
          ours.append(_time_once(fn, *args, clock=clock))
          base.append(blas.call("time")[key])
          xla.append(_time_once(_xla_gemm, *gemm_args, clock=clock))
        row = dict(stage="routing", case=f"{tokens / 1e6:g}M tokens B={b}",
                   ours_s=statistics.median(ours), flops=2.0 * b * T * J * D * c)
        rows.append(dict(row, baseline=f"numpy sgemm ({core})",
                         baseline_s=statistics.median(base)))
        rows.append(dict(row, baseline="XLA GEMM", baseline_s=statistics.median(xla)))
  return rows


_PINNED = "MSA_ROUTING_BENCH_PINNED"


def one_core_env(env: dict) -> dict:
  """`env` for the pinned re-run: XLA's and OpenBLAS' thread pools single-threaded."""
  xla_flags = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  return dict(env, XLA_FLAGS=xla_flags, OPENBLAS_NUM_THREADS="1", **{_PINNED: "1"})


def format_rows(rows: list[dict], unit: str) -> str:
  """Markdown table: case, ours, baseline, its time, ratio."""
  lines = [f"| case | ours {unit} | baseline | baseline {unit} | ratio |", "| --- " * 5 + "|"]
  for r in rows:
    lines.append(f"| {r['case']} | {r['ours_s']:.3g} | {r['baseline']} | {r['baseline_s']:.3g} "
                 f"| {r['ours_s'] / r['baseline_s']:.2f} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  """The routing stage alone, an absl app taking the suite's config:
  `python -m msa_jax.benchmarks.routing --config=configs/benchmarks.py[:quick|:one_core]`."""
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise validation.UserError(
        "--config is required (e.g. --config=configs/benchmarks.py:one_core)")
  if config.one_core and not os.environ.get(_PINNED):
    cpu = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-m", "msa_jax.benchmarks.routing", *sys.argv[1:]]
    proc = subprocess.run(cmd, env=one_core_env(os.environ),
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}), check=False)
    sys.exit(proc.returncode)
  print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        f"{f'; pinned to CPU {sorted(os.sched_getaffinity(0))}' if config.one_core else ''}",
        flush=True)
  rows = run(config.quick, cpu_time=config.one_core)
  print(format_rows(rows, "CPU s" if config.one_core else "s"))


if __name__ == "__main__":  # flags only here: the suite imports this module beside its own
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help(
          "The routing benchmark stage", "configs/benchmarks.py",
          "configs/benchmarks.py:one_core"), lock_config=True)
  validation.run_app(main)
