"""Routing stage of the benchmark suite: `routing.route` vs the equal-work numpy GEMM.

The bank is one router layer at the sizes of `msa_jax.inference.routing_benchmark`: random
L2-normalised float32 keys [C, J=2, D=64] of chunks of P=64 tokens in 512-token documents, B
questions of T=16 routing tokens with H=4 heads, head mean / query max / chunk max, top 16.
Ours is the whole jitted `route` (scores, per-document max, top-k), with the bank as the
engine holds it (keys, chunk_doc and the chunk counts resident; the automatic tile). The
baseline is the GEMM that scoring needs at the least: the head-summed queries [B * T, J * D]
times the same keys [C, J * D] transposed, twice: in numpy (`blas.Worker`: a process with the
host's native OpenBLAS kernel; the faster of the two orientations, [B * T, J * D] x
[J * D, C] and [C, J * D] x [J * D, B * T]: on one core the second is ~2x faster at B = 1),
and as one XLA dot over the whole bank in this process (keys [C, J * D] x [J * D, B * T], the
orientation `route` uses; it writes all C * B * T scores, which `route`'s tiles never hold).
Each case gives two rows, one per baseline; `flops` is that GEMM's 2 * B * T * J * D * C.

Timing: each side's steady state (the median of `REPEAT` back-to-back calls after running it
untimed for `warm_s` = 0.2 s: threads awake, operands in cache, as a server routing question
after question), the three sides interleaved `iters` times, medians. The warm-up outlasts the
~0.1 s OpenBLAS' threads spin after a call, which took a core from the XLA side timed next
(and a pause instead left XLA's threads parked: both slowed route ~2x at 1M tokens).

On a loaded machine numpy's threaded OpenBLAS slows down far more than XLA (its 2 threads wait
on each other), so the numpy ratio then flatters us; the XLA GEMM, run by the same runtime on
the same threads, is the steadier yardstick. For a number that the load hardly moves, run the
stage alone on one core:

    python -m msa_jax.benchmarks.routing --config=configs/benchmarks.py:one_core

which re-runs itself pinned to one CPU with XLA and OpenBLAS single-threaded and compares
process CPU seconds (medians) instead of wall time: the work each side does per core.

Issue 17's target is `route` within 1.2x of its GEMM. Ratios ours / numpy and ours / XLA
GEMM, the range over separate runs (wall time, s18 on Zen 4: 3 runs; s19: 5 runs of this
stage, 3 of them with the numpy rows, and two of the suite; one core: 2 runs), jax 0.10.2:

| host, `route` | case | wall, 2 threads | one core, CPU s |
| --- | --- | --- | --- |
| Zen 4, s18 | 1M tokens B=1 | 0.95-1.08 / 1.16-1.34 | 0.71-0.80 / 0.90-1.50 |
| Zen 4, s18 | 1M tokens B=8 | 1.11-1.26 / 1.18-1.28 | 0.93-0.94 / 0.99-1.00 |
| Zen 4, s18 | 10M tokens B=1 | 0.80-0.94 / 1.08-1.20 | 0.72-0.73 / 0.96-0.97 |
| Zen 4, s18 | 10M tokens B=8 | 0.82-0.85 / 0.59-0.61 | 0.79-0.81 / 0.56-0.57 |
| Zen 2, s18 | 1M tokens B=1 | 0.82 / 1.05-1.25 | |
| Zen 2, s18 | 1M tokens B=8 | 1.64 / 1.28-1.77 | |
| Zen 2, s18 | 10M tokens B=1 | 1.40 / 1.23-1.67 | |
| Zen 2, s18 | 10M tokens B=8 | 0.96 / 0.79-0.85 | |
| Zen 2, s19 | 1M tokens B=1 | 0.78-1.13 / 1.26-1.51 | 0.94-1.02 / 1.17-1.18 |
| Zen 2, s19 | 1M tokens B=8 | 1.07-1.15 / 1.12-1.18 | 1.02-1.21 / 1.14-1.20 |
| Zen 2, s19 | 10M tokens B=1 | 0.84-0.94 / 1.03-1.11 | 0.98-1.00 / 1.00-1.01 |
| Zen 2, s19 | 10M tokens B=8 | 0.84-0.92 / 0.81-1.18 | 0.85 / 0.78 |
| Zen 2, s22 | 1M tokens B=1 | 0.93-0.99 / 1.11-1.35 | 1.00-1.27 / 1.01-1.04 |
| Zen 2, s22 | 1M tokens B=8 | 1.11-1.16 / 1.15-1.21 | 1.12 / 1.06-1.14 |
| Zen 2, s22 | 10M tokens B=1 | 0.86-0.93 / 1.00-1.03 | 0.98-1.07 / 1.01-1.09 |
| Zen 2, s22 | 10M tokens B=8 | 0.94-1.18 / 0.85-1.02 | 0.85-0.98 / 0.77-0.87 |

(Zen 4: a 2-core AMD EPYC VM with AVX-512, 2026-12-05 07:00 UTC, OpenBLAS' SkylakeX kernel;
Zen 2: a 2-core AMD EPYC 7xx2 VM, AVX2, 16 MiB L3, 2026-12-05 21:00 UTC, OpenBLAS' Haswell
kernel. s18 is the code of session s18, timed on the Zen 2 host beside s19's. s22: 3 runs
and 2 `:one_core` runs of session s22's code, 2026-12-06 04:45-04:52 UTC, the same host,
its other tenants busier: the XLA GEMM at 1M tokens B=1 took 0.51-0.62 ms, 0.44-0.47 an hour
before.)

On Zen 2 the tiles were the cost: XLA:CPU copies each tile's slice out of the bank (~9 GB/s
here, as long as a one-question GEMM over the same keys), and a masked max (`where` over the
[tile, B] scores for a question without a valid token) ran as a pass of its own beside the
fused GEMM. `route` now takes a float32 bank in one step when the GEMM is keys-bound (<= 32
score columns) or the bank fits 16 MiB (`routing.auto_tile_chunks`), and masks such a
question once on its document scores. Same process, the s18 code against s19's (steady state,
11-21 interleaved repeats, identical results): 1M tokens B=8 3.88 -> 3.50 ms, 10M tokens B=1
15.4 -> 9.9 ms.

What is left, at 1M tokens B=1 in wall time: s19 measured the fused GEMM and max at ~1.04x
the XLA GEMM and the scatter at ~0.05x, and put the rest (~0.1 ms) on XLA:CPU's executor (a
program of at most 8 thunks runs in the calling thread, a longer one on the thread pool;
`route`'s had 18). Session s22 cut the program to 8 thunks at B=1 (10 at B=8; `routing._select`:
the scatter takes the chunk ids as they are, the valid slots come from the selected scores
and the counts of present documents run in a branch taken only for a question without a
valid token or document): same process, old vs new, interleaved, 1M tokens B=8 1.23-1.49 ->
1.14-1.25 of the XLA GEMM (6 runs), B=1 1.12-1.31 -> 1.09-1.29 (8 runs: within noise).
So the executor was not the B=1 gap. A `jax.profiler` trace of 200 calls (s22) shows it:
the GEMM with its fused query max (one YNNPACK fusion) 521 us against the bare GEMM's 456 us,
the scatter 25 us, top-k 7 us, everything else ~2 us each. Other YNNPACK fusion types for
the program (the compiler option `xla_cpu_experimental_ynn_fusion_type`; one run, ratios to
the XLA GEMM): the default 1.14, YNNPACK's dot alone with XLA's max 1.39, dot fusions 1.22,
reductions only (Eigen's dot) 1.14. Fusing the queries' preparation into the
GEMM (a -inf bias for masked tokens) cost more than it saved (+0.1 ms at B = 1, s19). Tried before (s18, Zen 4) without a robust gain:
the whole bank as one tile at B >= 2 over 10M tokens (the whole-bank GEMM re-reads keys that
no longer stay in cache: 10M tokens, B = 8, 51 ms against 37 in tiles here too), XLA flags
(YNNPACK off, XNNPACK, oneDNN, 512-bit vectors), a host callback to numpy per tile.
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

from msa_jax import runtime, validation
from msa_jax.benchmarks.blas import Worker
from msa_jax.memory import routing

T, H, J, D, P, DOC_TOKENS, TOP_K = 16, 4, 2, 64, 64, 512, 16
# warm_s: each side runs untimed this long before its timed calls; longer than OpenBLAS' threads
# spin after a call (~0.1 s of a core here), which took a core from the XLA side timed next.
FULL = dict(tokens=(1_000_000, 10_000_000), batches=(1, 8), iters=11, warm_s=0.2)
QUICK = dict(tokens=(65_536,), batches=(1, 8), iters=3, warm_s=0.01)
REPEAT = 5  # timed back-to-back calls per side and iteration (`_time_warm`)


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


def _time_warm(fn, *args, warm_s: float, clock=time.perf_counter,
               repeat: int = REPEAT) -> float:
  """Median seconds of `repeat` back-to-back calls of `fn` after running it untimed for
  `warm_s` seconds (at least once), as the worker times numpy: each side in its steady state
  (threads awake, operands in cache, the other side's threads idle), the regime of a server
  routing question after question."""
  end = time.perf_counter() + warm_s
  jax.block_until_ready(fn(*args))
  while time.perf_counter() < end:
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeat):
    t0 = clock()
    jax.block_until_ready(fn(*args))
    times.append(clock() - t0)
  return statistics.median(times)


def run(quick: bool, tile_chunks: int | None = None,
        cpu_time: bool = False) -> list[dict]:
  """Two rows per (bank size, batch): route vs the numpy GEMM, and vs the XLA GEMM (medians over
  `iters` interleaved repeats of each side's steady-state time); wall seconds, or process CPU
  seconds with `cpu_time`."""
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
      # The bank as the engine holds it: keys, chunk_doc and chunk counts resident.
      bank = (jax.device_put(keys), jax.device_put(chunk_doc),
              jax.device_put(np.bincount(chunk_doc, minlength=num_docs).astype(np.int32)))
      dev_flat = jax.device_put(keys.reshape(c, J * D))
      fn = jax.jit(lambda rq, m, k, d, n, num_docs=num_docs: routing.route(
          rq, m, k, d, num_docs, top_k=TOP_K, scale=1.0, tile_chunks=tile_chunks,
          chunk_counts=n))
      for b in sizes["batches"]:
        rq, mask = make_questions(b)
        qbar = rq.reshape(b, T, J, H // J, D).sum(axis=3) / H
        np.save(os.path.join(tmp, "a.npy"), qbar.reshape(b * T, J * D))
        blas.call("load", a=os.path.join(tmp, "a.npy"), b=os.path.join(tmp, "b.npy"))
        args = (jax.device_put(rq), jax.device_put(mask), *bank)
        gemm_args = (dev_flat, jax.device_put(qbar.reshape(b * T, J * D)))
        ours, base, xla = [], [], []
        for _ in range(sizes["iters"]):
          ours.append(_time_warm(fn, *args, warm_s=sizes["warm_s"], clock=clock))
          base.append(blas.call("time", repeat=REPEAT, warm_s=sizes["warm_s"])[key])
          xla.append(_time_warm(_xla_gemm, *gemm_args, warm_s=sizes["warm_s"], clock=clock))
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
  runtime.start_command()  # as the suite and the inference commands
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
