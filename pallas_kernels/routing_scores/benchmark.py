"""Micro-benchmark: fused routing-score kernel vs the XLA reference on the same inputs.

    python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py
    python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py \
        --config.routing_scores.chunks=1048576 --config.sweep=True
    python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py:small

The config's shared fields and its `routing_scores` section set the sizes (default H100/H200
sizes, bf16; `:small` tiny ones in interpret mode on CPU). The kernel is memory-bound: it
prints the achieved bandwidth of the kernel alone (bytes of keys + chunk ids + chunk scores +
queries over its time) and its fraction of the device's assumed peak (H100 SXM 3.35 TB/s,
H200 4.8 TB/s; `routing_scores.peak_gbps` overrides), the time of the full document scoring
(kernel + segment reduce) and its speed-up over the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_flags

from msa_jax import validation
from pallas_kernels import _bench, _common
from pallas_kernels.routing_scores.kernel import (RoutingBlockSizes, routing_chunk_scores,
                                                  routing_doc_scores)
from pallas_kernels.routing_scores.reference import routing_doc_scores_reference
from pallas_kernels.routing_scores.xla import CHUNK_REDUCES, HEAD_REDUCES, QUERY_REDUCES

KERNEL = "routing_scores"  # the section of configs/kernel_benchmarks.py


def parse_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The shared fields and the routing_scores section of a configs/kernel_benchmarks.py config,
  flat and checked (`_bench.kernel_args`)."""
  args = _bench.kernel_args(
      config, KERNEL, positive=("batch", "tokens", "heads", "kv_heads", "dim", "chunks_per_doc"),
      choices={"dtype": ("bfloat16", "float32"), "head_reduce": HEAD_REDUCES,
               "query_reduce": QUERY_REDUCES, "chunk_reduce": CHUNK_REDUCES})
  try:
    sizes = [int(c) for c in args.chunks.split(",")]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise validation.UserError(f"--config.{KERNEL}.chunks={args.chunks!r}: expected "
                               "comma-separated bank sizes >= 1 (chunks)")
  return args


def make_inputs(key, c: int, args) -> tuple[jax.Array, ...]:
  """Random queries and keys on the device, documents of chunks_per_doc chunks.

  Drawn directly in the benchmark dtype with variance 1/D (about unit norm, so cosine-like
  scores) rather than normalised: a 10M-chunk bank then needs no float32 temporary.
  """
  dtype = jnp.dtype(args.dtype)
  std = 1.0 / math.sqrt(args.dim)
  shapes = ((args.batch, args.tokens, args.heads, args.dim), (c, args.kv_heads, args.dim))

  @jax.jit
  def draw(key):  # one compile for both, drawn on the device in the benchmark dtype
    return [jax.random.normal(k, shape, dtype) * jnp.asarray(std, dtype)
            for k, shape in zip(jax.random.split(key), shapes)]

  if args.interpret:  # CPU: numpy is quicker than compiling the random-bit generator
    host = np.random.default_rng(0)
    q, keys = [jnp.asarray(host.normal(size=shape) * std, dtype) for shape in shapes]
  else:
    q, keys = draw(key)
  q_mask = jnp.ones((args.batch, args.tokens), jnp.bool_)
  chunk_doc = jnp.arange(c, dtype=jnp.int32) // args.chunks_per_doc
  return q, q_mask, keys, chunk_doc


def kernel_bytes(c: int, args, block: RoutingBlockSizes) -> int:
  """HBM bytes the kernel must move: keys, chunk ids, the padded chunk-score output, q."""
  item = jnp.dtype(args.dtype).itemsize
  padded_c = math.ceil(c / block.block_c) * block.block_c
  q_bytes = args.batch * args.tokens * args.heads * args.dim * item
  return c * args.kv_heads * args.dim * item + 4 * c + 4 * args.batch * padded_c + q_bytes


def run_size(c: int, args, block: RoutingBlockSizes, peak_bw: float | None) -> dict:
  q, q_mask, keys, chunk_doc = make_inputs(jax.random.key(0), c, args)
  num_docs = math.ceil(c / args.chunks_per_doc)
  opts = dict(scale=1.0, head_reduce=args.head_reduce, query_reduce=args.query_reduce)
  time_it = functools.partial(_bench.median_time, warmup=args.warmup, iters=args.iters)
  chunk_fn = jax.jit(functools.partial(routing_chunk_scores, block=block,
                                       interpret=args.interpret, **opts))
  doc_opts = dict(num_docs=num_docs, chunk_reduce=args.chunk_reduce, **opts)
  kernel_fn = jax.jit(functools.partial(routing_doc_scores, block=block,
                                        interpret=args.interpret, **doc_opts))
  t_chunk = time_it(chunk_fn, q, q_mask, keys, chunk_doc)
  t_kernel = time_it(kernel_fn, q, q_mask, keys, chunk_doc)
  gbps = kernel_bytes(c, args, block) / t_chunk
  res = dict(chunks=c, kernel_s=t_chunk, doc_scores_s=t_kernel, gbps=gbps / 1e9)
  line = (f"C={c:>10,d}  kernel {t_chunk * 1e3:9.3f} ms  {gbps / 1e9:8.1f} GB/s "
          f"({_bench.fraction(gbps, peak_bw)} of peak)  kernel+segment "
          f"{t_kernel * 1e3:9.3f} ms")
  if args.reference:
    ref_fn = jax.jit(functools.partial(routing_doc_scores_reference, **doc_opts))
    t_ref = time_it(ref_fn, q, q_mask, keys, chunk_doc)
    got, want = kernel_fn(q, q_mask, keys, chunk_doc), ref_fn(q, q_mask, keys, chunk_doc)
    finite = jnp.isfinite(want)
    err = float(jnp.max(jnp.where(finite, jnp.abs(got - want), 0.0)))
    res.update(reference_s=t_ref, speedup=t_ref / t_kernel, max_abs_err=err)
    line += (f"  | XLA reference {t_ref * 1e3:9.3f} ms  "
             f"speed-up x{t_ref / t_kernel:.2f}  max|diff| {err:.2e}")
  print(line, flush=True)
  return res


def sweep(c: int, args, peak_bw: float | None) -> list[dict]:
  q, q_mask, keys, chunk_doc = make_inputs(jax.random.key(0), c, args)
  out = []
  for block_c in (64, 128, 256, 512):
    for warps in (4, 8):
      block = RoutingBlockSizes(block_c=block_c, block_rows=args.block_rows, num_warps=warps,
                                num_stages=args.num_stages)
      fn = jax.jit(functools.partial(
          routing_chunk_scores, scale=1.0, head_reduce=args.head_reduce,
          query_reduce=args.query_reduce, block=block, interpret=args.interpret))
      try:
        t = _bench.median_time(fn, q, q_mask, keys, chunk_doc, warmup=args.warmup,
                               iters=args.iters)
      except Exception as e:  # a variant that does not compile is reported, not fatal
        print(f"  {block}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
        continue
      gbps = kernel_bytes(c, args, block) / t
      print(f"  block_c={block_c:4d} num_warps={warps}: {t * 1e3:9.3f} ms "
            f"{gbps / 1e9:8.1f} GB/s ({_bench.fraction(gbps, peak_bw)})", flush=True)
      out.append(dict(block=dataclasses.asdict(block), kernel_s=t, gbps=gbps / 1e9))
  return out


def run(config: ml_collections.ConfigDict) -> list[dict]:
  """Times the kernel at every bank size of a configs/kernel_benchmarks.py config (checked
  first; its `sweep`: also block-size variants), printing a line each; returns the rows."""
  args = parse_config(config)
  block = RoutingBlockSizes(block_c=args.block_c, block_rows=args.block_rows,
                            num_warps=args.num_warps, num_stages=args.num_stages)
  kind, peak_bw, _ = _bench.device_peaks()
  if args.peak_gbps > 0:
    peak_bw = args.peak_gbps * 1e9
  if not args.interpret and not _common.has_gpu():
    print("no GPU visible: running the kernel in interpret mode", flush=True)
    args.interpret = True
  peak = "unknown" if peak_bw is None else f"{peak_bw / 1e12:.2f} TB/s"
  print(f"device: {kind} (jax {jax.__version__}); assumed peak HBM bandwidth {peak}; "
        f"interpret={args.interpret}", flush=True)
  print(f"B={args.batch} T={args.tokens} H={args.heads} J={args.kv_heads} D={args.dim} "
        f"{args.dtype} head={args.head_reduce} query={args.query_reduce} "
        f"chunk={args.chunk_reduce} {block}", flush=True)
  results = [run_size(int(c), args, block, peak_bw) for c in args.chunks.split(",")]
  if args.sweep:
    results += sweep(int(args.chunks.split(",")[0]), args, peak_bw)
  return results


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help("The routing-score kernel benchmark", _bench.CONFIG),
      lock_config=True)
  _bench.run_app(run)
