"""Micro-benchmarks of the Pallas kernels against their XLA references (`pallas_kernels`).

  # routing-score kernel: GB/s vs the device's peak HBM bandwidth, speed-up over XLA (GPU sizes)
  python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py
  python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py \
      --config.routing_scores.chunks=1048576 --config.sweep=True
  # block-sparse attention kernel: TFLOP/s and GB/s vs XLA, decode and prefill
  python -m pallas_kernels.sparse_attention.benchmark --config=configs/kernel_benchmarks.py \
      --config.sparse_attention.modes=decode --config.sparse_attention.batch=32
  # tiny sizes in interpret mode: a few seconds on CPU (a smoke test), either kernel
  python -m pallas_kernels.routing_scores.benchmark --config=configs/kernel_benchmarks.py:small

One file for both kernels: the shared fields (timing, reference, interpret mode, sweep) at the
top, each kernel's sizes and block sizes in its own section. Block-size defaults are the
kernels' (`RoutingBlockSizes`, `SparseAttentionBlockSizes`). Variants: "" (GPU sizes: Qwen3-4B
heads, H=32, J=8, D=128, bf16), "small" (tiny float32 sizes, interpret mode).
"""

import ml_collections

VARIANTS = ("small",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.iters = 20  # timed calls per measurement (the median is reported)
  c.warmup = 3  # untimed calls first
  c.reference = True  # also time the XLA reference and report the max |difference|
  c.interpret = False  # Pallas interpret mode (forced on when no GPU is visible)
  c.sweep = False  # also time block-size variants of the kernel

  r = c.routing_scores = ml_collections.ConfigDict()
  r.chunks = "1048576,4194304,10485760"  # comma-separated bank sizes C (chunks)
  r.batch = 1  # questions B
  r.tokens = 16  # routing tokens per question T
  r.heads = 32  # query heads H
  r.kv_heads = 8  # kv heads J
  r.dim = 128  # head dim D
  r.dtype = "bfloat16"  # bfloat16 | float32
  r.chunks_per_doc = 16
  r.head_reduce = "mean"  # mean | max (max makes the reference hold [B, T, C, H] float32)
  r.query_reduce = "max"  # max | mean | last
  r.chunk_reduce = "max"  # max | mean
  r.block_c = 128  # RoutingBlockSizes
  r.block_rows = 64
  r.num_warps = 4
  r.num_stages = 2
  r.peak_gbps = 0.0  # assumed peak HBM bandwidth in GB/s (0: from the device kind)

  s = c.sparse_attention = ml_collections.ConfigDict()
  s.modes = "decode,prefill"  # comma-separated: decode, prefill
  s.batch = 8  # B (prefill uses max(1, B // 8))
  s.prefill_tokens = 2048  # prefill T (= S)
  s.cache = 4096  # decode cache slots S
  s.heads = 32  # query heads H
  s.kv_heads = 8  # kv heads J
  s.dim = 128  # head dim D
  s.top_k = 16  # selected documents K
  s.doc_chunks = 64  # max chunks per document Cd
  s.bank_chunks = 1 << 20  # chunks C in the bank
  s.ragged = False  # random 1..Cd chunks per document and an unused slot
  s.dtype = "bfloat16"  # bfloat16 | float32
  s.block_q = 64  # SparseAttentionBlockSizes
  s.block_c = 64
  s.block_k = 64
  s.kv_splits = 0  # 0: 1 for prefill, enough for ~2 programs per SM in decode
  s.num_warps = 4
  s.num_stages = 2
  s.backward = False  # also time value-and-grad (the kernel's backward is XLA)

  if arg == "small":
    c.update(iters=2, warmup=1, interpret=True)
    r.update(chunks="2048", batch=1, tokens=4, heads=4, kv_heads=2, dim=32, dtype="float32",
             block_c=128, block_rows=16)
    s.update(batch=2, prefill_tokens=32, cache=64, heads=4, kv_heads=2, dim=32, top_k=3,
             doc_chunks=20, bank_chunks=256, dtype="float32", block_q=16, block_c=16, block_k=16)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/kernel_benchmarks.py; known: "
                     f"{list(VARIANTS)}")
  return c
