"""Scale benchmark of stage-2 routing (`python -m msa_jax.inference.routing_benchmark`).

  # CPU: 100k, 1M, 10M tokens
  python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py
  # GPU: 100M tokens, Qwen3-4B; Memory Parallel over 8 devices
  python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py:paper \
      --config.memory_devices=8
  # seconds, a smoke test
  python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py:small

Variants: "" (CPU sizes), "paper" (100M tokens, Qwen3-4B's routing dims H=32, J=8, D=128, bf16,
18 router layers), "small" (tiny sizes, a smoke test).
"""

import ml_collections

VARIANTS = ("paper", "small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tokens = "100000,1000000,10000000"  # comma-separated memory sizes in tokens
  c.chunk_size = 64  # tokens per chunk P
  c.doc_tokens = 512  # tokens per document
  c.questions = 8  # questions routed together (B)
  c.query_tokens = 16  # routing tokens per question T
  c.heads = 4  # query heads H
  c.kv_heads = 2  # kv heads J
  c.dim = 64  # head dim D
  c.dtype = "float32"  # float32 | bfloat16
  c.top_k = 16
  c.head_reduce = "mean"
  c.query_reduce = "max"
  c.chunk_reduce = "max"
  c.tile_chunks = 0  # chunks scored per step; 0: route's automatic tile (one device) or
  # routing.DEFAULT_TILE_CHUNKS (memory_devices)
  c.kernel_impl = "auto"  # auto (the Pallas routing-score kernel on GPU) | xla | pallas
  c.router_layers = 1  # layers that route (total time = per-layer time x this)
  c.memory_devices = 0  # route_sharded over this many devices (0: single-device route)
  c.iters = 5
  c.warmup = 1
  c.seed = 0
  if arg == "small":
    c.update(tokens="2048,8192", questions=2, query_tokens=4, heads=4, kv_heads=2, dim=16,
             chunk_size=16, doc_tokens=64, tile_chunks=64, iters=2, warmup=1)
  elif arg == "paper":
    c.update(tokens="100000000", heads=32, kv_heads=8, dim=128, dtype="bfloat16",
             router_layers=18)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/routing_benchmark.py; known: "
                     f"{list(VARIANTS)}")
  return c
