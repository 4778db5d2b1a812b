"""Micro-benchmark: top-k block-sparse attention kernel vs the XLA reference on the same inputs.

    python -m pallas_kernels.sparse_attention.benchmark --config=configs/kernel_benchmarks.py
    python -m pallas_kernels.sparse_attention.benchmark --config=configs/kernel_benchmarks.py \
        --config.sparse_attention.modes=decode --config.sparse_attention.batch=32
    python -m pallas_kernels.sparse_attention.benchmark --config=configs/kernel_benchmarks.py:small

The config's shared fields and its `sparse_attention` section set the sizes (default decode +
prefill at Qwen3-4B heads, bf16; `:small` tiny ones in interpret mode on CPU). Prints, per
mode, the kernel's time, its achieved TFLOP/s (useful flops only: 4*D per visible (query head,
entry) pair) and GB/s (q, the selected blocks, the visible own kv, the output), the fractions
of the device's assumed peaks, and the speed-up over the XLA reference (which gathers the
selected blocks into a dense copy and runs a masked softmax). `sparse_attention.backward` also
times value-and-grad (the kernel's backward is the reference's, in XLA).
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
from pallas_kernels.sparse_attention.kernel import SparseAttentionBlockSizes, sparse_attention
from pallas_kernels.sparse_attention.reference import sparse_attention_reference

KERNEL = "sparse_attention"  # the section of configs/kernel_benchmarks.py
MODES = ("decode", "prefill")


def parse_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The shared fields and the sparse_attention section of a configs/kernel_benchmarks.py
  config, flat and checked (`_bench.kernel_args`)."""
  args = _bench.kernel_args(
      config, KERNEL, positive=("batch", "prefill_tokens", "cache", "heads", "kv_heads", "dim",
                                "top_k", "doc_chunks", "bank_chunks"),
      choices={"dtype": ("bfloat16", "float32")})
  modes = args.modes.split(",")
  if not modes or any(m not in MODES for m in modes):
    raise validation.UserError(f"--config.{KERNEL}.modes={args.modes!r}: expected "
                               f"comma-separated modes of {list(MODES)}")
  validation.check_at_least(f"--config.{KERNEL}.kv_splits", args.kv_splits, 0)
  if args.doc_chunks > args.bank_chunks:
    raise validation.UserError(f"--config.{KERNEL}.doc_chunks={args.doc_chunks} must be at "
                               f"most --config.{KERNEL}.bank_chunks={args.bank_chunks}")
  return args


def make_inputs(mode: str, args, seed: int = 0) -> dict:
  """Random device inputs for one mode: decode (T=1 at the end of a cache) or prefill."""
  dtype = jnp.dtype(args.dtype)
  rng = np.random.default_rng(seed)
  if mode == "decode":
    b, t, s = args.batch, 1, args.cache
    kv_len = rng.integers(s // 2, s + 1, size=b)
    q_offset = kv_len - 1
  else:
    b = max(1, args.batch // 8)
    t = s = args.prefill_tokens
    kv_len = np.full(b, s)
    q_offset = np.zeros(b, np.int64)
  j, d, cd = args.kv_heads, args.dim, args.doc_chunks
  shapes = ((b, t, args.heads, d), (b, s, j, d), (b, s, j, d), (args.bank_chunks, j, d),
            (args.bank_chunks, j, d))
  std = 1.0 / math.sqrt(d)

  @jax.jit
  def draw(key):  # one compile for all five, drawn on the device in the benchmark dtype
    return [jax.random.normal(k, shape, dtype) * jnp.asarray(std, dtype)
            for k, shape in zip(jax.random.split(key, len(shapes)), shapes)]

  if args.interpret:  # CPU: numpy is quicker than compiling the random-bit generator
    host = np.random.default_rng(seed)
    q, k, v, bank_k, bank_v = [jnp.asarray(host.normal(size=shape) * std, dtype)
                               for shape in shapes]
  else:
    q, k, v, bank_k, bank_v = draw(jax.random.key(seed))
  num = np.full((b, args.top_k), cd)
  if args.ragged:
    num = rng.integers(1, cd + 1, size=(b, args.top_k))
    num[:, -1] = 0  # an unused slot
  first = rng.integers(0, args.bank_chunks - cd + 1, size=(b, args.top_k))
  return dict(
      q=q, k=k, v=v, bank_k=bank_k, bank_v=bank_v,
      doc_first_chunk=jnp.asarray(first, jnp.int32), doc_num_chunks=jnp.asarray(num, jnp.int32),
      memory_visible=jnp.ones((b, t), jnp.bool_), q_offset=jnp.asarray(q_offset, jnp.int32),
      kv_len=jnp.asarray(kv_len, jnp.int32))


def work(inputs: dict, args) -> tuple[float, float]:
  """(useful flops, HBM bytes) of one forward."""
  q = inputs["q"]
  b, t, h, d = q.shape
  item = q.dtype.itemsize
  j = args.kv_heads
  mem = np.minimum(np.asarray(inputs["doc_num_chunks"]), args.doc_chunks).sum(axis=1)  # [B]
  pos = np.asarray(inputs["q_offset"])[:, None] + np.arange(t)[None, :]
  own = np.minimum(pos + 1, np.asarray(inputs["kv_len"])[:, None])  # [B, T] visible slots
  entries = float((mem[:, None] + own).sum())
  flops = 4.0 * d * h * entries
  kv_read = (mem.sum() + own.max(axis=1).sum()) * 2 * j * d * item
  return flops, float(kv_read + 2 * q.size * item)


NAMES = ("q", "k", "v", "bank_k", "bank_v", "doc_first_chunk", "doc_num_chunks",
         "memory_visible", "q_offset", "kv_len")


def auto_splits(mode: str, inputs: dict, args, block) -> int:
  """kv splits for a mode: 1 for prefill; in decode enough for ~2 programs per SM (132 SMs)."""
  if args.kv_splits:
    return args.kv_splits
  if mode != "decode":
    return 1
  b, t, h, _ = inputs["q"].shape
  programs = b * args.kv_heads * max(1, -(-t * (h // args.kv_heads) // block.block_q))
  return int(min(args.top_k, max(1, -(-264 // programs))))


def run_mode(mode: str, args, block, peaks) -> dict:
  _, peak_bw, peak_flops = peaks
  inputs = make_inputs(mode, args)
  xs = [inputs[n] for n in NAMES]
  block = dataclasses.replace(block, kv_splits=auto_splits(mode, inputs, args, block))
  time_it = functools.partial(_bench.median_time, warmup=args.warmup, iters=args.iters)
  kernel_fn = jax.jit(functools.partial(sparse_attention, max_doc_chunks=args.doc_chunks,
                                        block=block, interpret=args.interpret))
  t_kernel = time_it(kernel_fn, *xs)
  flops, nbytes = work(inputs, args)
  b, t = inputs["q"].shape[:2]
  rate, bw = flops / t_kernel, nbytes / t_kernel
  res = dict(mode=mode, kv_splits=block.kv_splits, kernel_s=t_kernel, tflops=rate / 1e12,
             gbps=bw / 1e9)
  line = (f"{mode:8s} B={b} T={t} S={inputs['k'].shape[1]} splits={block.kv_splits}: "
          f"kernel {t_kernel * 1e3:9.3f} ms {rate / 1e12:7.2f} TFLOP/s "
          f"({_bench.fraction(rate, peak_flops)}) {bw / 1e9:8.1f} GB/s "
          f"({_bench.fraction(bw, peak_bw)})")
  ref_fn = jax.jit(functools.partial(sparse_attention_reference,
                                     max_doc_chunks=args.doc_chunks))
  if args.reference:
    t_ref = time_it(ref_fn, *xs)
    got, want = kernel_fn(*xs), ref_fn(*xs)
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
    res.update(reference_s=t_ref, speedup=t_ref / t_kernel, max_abs_err=err)
    line += (f" | XLA reference {t_ref * 1e3:9.3f} ms ({flops / t_ref / 1e12:.2f} TFLOP/s) "
             f"speed-up x{t_ref / t_kernel:.2f} max|diff| {err:.2e}")
  print(line, flush=True)
  if args.backward:
    for name, fn in (("kernel", kernel_fn), ("reference", ref_fn)):
      loss = lambda *a, fn=fn: fn(*a, *xs[5:]).astype(jnp.float32).sum()
      grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
      t_grad = time_it(grad, *xs[:5])
      res[f"{name}_grad_s"] = t_grad
      print(f"{mode:8s}   value_and_grad via {name}: {t_grad * 1e3:9.3f} ms", flush=True)
  if args.sweep:
    res["sweep"] = sweep(mode, xs, inputs, args, block, peaks)
  return res


def sweep(mode: str, xs, inputs, args, block, peaks) -> list[dict]:
  """Times (block_q, block_c = block_k, kv_splits, num_warps) variants of the kernel."""
  _, _, peak_flops = peaks
  flops, _ = work(inputs, args)
  decode = mode == "decode"
  out = []
  for bq in (16,) if decode else (16, 32, 64, 128):  # decode has T*R <= 16 rows anyway
    for bk in (32, 64, 128):
      for sp in (1, 2, 4, 8, 16) if decode else (1,):
        for warps in (4, 8):
          cfg = dataclasses.replace(block, block_q=bq, block_c=bk, block_k=bk, kv_splits=sp,
                                    num_warps=warps)
          fn = jax.jit(functools.partial(sparse_attention, max_doc_chunks=args.doc_chunks,
                                         block=cfg, interpret=args.interpret))
          try:
            t = _bench.median_time(fn, *xs, warmup=args.warmup, iters=args.iters)
          except Exception as e:  # a variant that does not compile is reported, not fatal
            print(f"  {cfg}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
            continue
          print(f"  {mode} block_q={bq:3d} block_c=block_k={bk:3d} splits={sp:2d} "
                f"warps={warps}: {t * 1e3:9.3f} ms {flops / t / 1e12:7.2f} TFLOP/s "
                f"({_bench.fraction(flops / t, peak_flops)})", flush=True)
          out.append(dict(block=dataclasses.asdict(cfg), kernel_s=t))
  return out


def run(config: ml_collections.ConfigDict) -> list[dict]:
  """Times the kernel in every mode of a configs/kernel_benchmarks.py config (checked first),
  printing a line each; returns the rows."""
  args = parse_config(config)
  block = SparseAttentionBlockSizes(block_q=args.block_q, block_c=args.block_c,
                                    block_k=args.block_k, num_warps=args.num_warps,
                                    num_stages=args.num_stages)
  peaks = _bench.device_peaks()
  if not args.interpret and not _common.has_gpu():
    print("no GPU visible: running the kernel in interpret mode", flush=True)
    args.interpret = True
  kind, peak_bw, peak_flops = peaks
  bw = "unknown" if peak_bw is None else f"{peak_bw / 1e12:.2f} TB/s"
  fl = "unknown" if peak_flops is None else f"{peak_flops / 1e12:.0f} TFLOP/s (bf16 dense)"
  print(f"device: {kind} (jax {jax.__version__}); assumed peaks {fl}, {bw}; "
        f"interpret={args.interpret}", flush=True)
  print(f"H={args.heads} J={args.kv_heads} D={args.dim} K={args.top_k} Cd={args.doc_chunks} "
        f"C={args.bank_chunks} {args.dtype} ragged={args.ragged} {block}", flush=True)
  return [run_mode(m, args, block, peaks) for m in args.modes.split(",")]


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None,
      validation.config_help("The block-sparse attention kernel benchmark", _bench.CONFIG),
      lock_config=True)
  _bench.run_app(run)
