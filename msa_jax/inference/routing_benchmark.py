"""Scale benchmark of stage-2 routing: one router layer's bank, growing memory sizes.

    python -m msa_jax.inference.routing_benchmark                       # CPU: 100k, 1M, 10M tokens
    python -m msa_jax.inference.routing_benchmark --paper               # GPU: 100M tokens, Qwen3-4B
    python -m msa_jax.inference.routing_benchmark --paper --memory-devices=8   # Memory Parallel
    python -m msa_jax.inference.routing_benchmark --small               # seconds, a smoke test

For each size it builds a synthetic bank on the device (random L2-normalised routing keys,
documents of `--doc-tokens` tokens, chunks of `--chunk-size`), jits `route` (or `route_sharded`
over `--memory-devices` devices), and prints the median time of a warm call for a batch of
questions, the time per 1M memory tokens (flat when routing is linear in the bank), the bank's
bytes, and memory: the compiled executable's temporary and argument bytes
(`memory_analysis()`; temporaries stay O(Q * tile * T * H + Q * M)) and the process's max RSS.
`--paper` uses the paper's sizes: 100M tokens, Qwen3-4B's routing dims (H=32, J=8, D=128),
bf16, 18 router layers; one layer is timed and the total is per-layer x router layers.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from msa_jax import runtime
from msa_jax.memory import routing
from msa_jax.runtime.sharding import make_mesh
from pallas_kernels.routing_scores.reference import CHUNK_REDUCES, HEAD_REDUCES, QUERY_REDUCES

SMALL = dict(tokens="2048,8192", questions=2, query_tokens=4, heads=4, kv_heads=2, dim=16,
             chunk_size=16, doc_tokens=64, tile_chunks=64, iters=2, warmup=1)
PAPER = dict(tokens="100000000", heads=32, kv_heads=8, dim=128, dtype="bfloat16",
             router_layers=18, tile_chunks=2048)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tokens", default="100000,1000000,10000000",
                 help="comma-separated memory sizes in tokens")
  p.add_argument("--chunk-size", type=int, default=64, help="tokens per chunk P")
  p.add_argument("--doc-tokens", type=int, default=512, help="tokens per document")
  p.add_argument("--questions", type=int, default=8, help="questions routed together (B)")
  p.add_argument("--query-tokens", type=int, default=16, help="routing tokens per question T")
  p.add_argument("--heads", type=int, default=4, help="query heads H")
  p.add_argument("--kv-heads", type=int, default=2, help="kv heads J")
  p.add_argument("--dim", type=int, default=64, help="head dim D")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--top-k", type=int, default=16)
  p.add_argument("--head-reduce", default="mean", choices=HEAD_REDUCES)
  p.add_argument("--query-reduce", default="max", choices=QUERY_REDUCES)
  p.add_argument("--chunk-reduce", default="max", choices=CHUNK_REDUCES)
  p.add_argument("--tile-chunks", type=int, default=routing.DEFAULT_TILE_CHUNKS)
  p.add_argument("--router-layers", type=int, default=1,
                 help="layers that route (total time = per-layer time x this)")
  p.add_argument("--memory-devices", type=int, default=0,
                 help="route_sharded over this many devices (0: single-device route)")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--paper", action="store_true",
                 help="100M tokens, Qwen3-4B dims (H=32, J=8, D=128), bf16, 18 router layers")
  p.add_argument("--small", action="store_true", help="tiny sizes, a few seconds (smoke test)")
  args = p.parse_args(argv)
  for flag, preset in (("small", SMALL), ("paper", PAPER)):
    if getattr(args, flag):
      for key, value in preset.items():
        if p.get_default(key) == getattr(args, key):
          setattr(args, key, value)
  for name in ("chunk_size", "doc_tokens", "questions", "query_tokens", "heads", "kv_heads",
               "dim", "top_k", "tile_chunks", "router_layers", "iters"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
  if args.heads % args.kv_heads:
    raise ValueError(f"--heads={args.heads} must be a multiple of --kv-heads={args.kv_heads}")
  if args.memory_devices > len(jax.devices()):
    raise ValueError(f"--memory-devices={args.memory_devices} but JAX sees "
                     f"{len(jax.devices())} devices")
  return args


def bank_shape(tokens: int, args: argparse.Namespace) -> tuple[int, int]:
  """(chunks C, documents M) of a bank of `tokens` tokens in documents of --doc-tokens.

  With --memory-devices=S, C is rounded up so that each shard holds whole documents and whole
  tiles (so no padding rows are needed).
  """
  per_doc = math.ceil(args.doc_tokens / args.chunk_size)
  chunks = math.ceil(tokens / args.chunk_size)
  if args.memory_devices:
    unit = args.memory_devices * math.lcm(per_doc, args.tile_chunks)
    chunks = math.ceil(chunks / unit) * unit
  return chunks, math.ceil(chunks / per_doc)


def make_bank(chunks: int, args: argparse.Namespace, mesh=None):
  """Random normalised keys [C, J, D] and chunk_doc [C], built on (and sharded over) devices."""
  dtype = jnp.dtype(args.dtype)
  per_doc = math.ceil(args.doc_tokens / args.chunk_size)

  def build(key):
    k = jax.random.normal(key, (chunks, args.kv_heads, args.dim), jnp.float32)
    k = k * jax.lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True))
    return k.astype(dtype), (jnp.arange(chunks, dtype=jnp.int32) // per_doc)

  out = None if mesh is None else NamedSharding(mesh, P("memory"))
  return jax.jit(build, out_shardings=out)(jax.random.key(args.seed))


def make_questions(args: argparse.Namespace):
  kq = jax.random.key(args.seed + 1)
  rq = jax.random.normal(kq, (args.questions, args.query_tokens, args.heads, args.dim))
  rq = rq / jnp.linalg.norm(rq, axis=-1, keepdims=True)
  mask = jnp.ones((args.questions, args.query_tokens), jnp.bool_)
  return rq.astype(args.dtype), mask


def max_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(tokens: int, args: argparse.Namespace, mesh) -> dict:
  """Builds one bank, compiles and times routing; returns one row of the table."""
  chunks, num_docs = bank_shape(tokens, args)
  keys, chunk_doc = make_bank(chunks, args, mesh)
  rq, mask = make_questions(args)
  kw = dict(top_k=args.top_k, scale=1.0, head_reduce=args.head_reduce,
            query_reduce=args.query_reduce, chunk_reduce=args.chunk_reduce,
            tile_chunks=args.tile_chunks)
  if mesh is None:
    fn = jax.jit(lambda rq, mask, keys, doc: routing.route(rq, mask, keys, doc, num_docs, **kw))
  else:
    fn = jax.jit(lambda rq, mask, keys, doc: routing.route_sharded(
        mesh, rq, mask, keys, doc, num_docs, return_doc_scores=False, **kw))
  compiled = fn.lower(rq, mask, keys, chunk_doc).compile()
  mem = compiled.memory_analysis()
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(rq, mask, keys, chunk_doc))
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(rq, mask, keys, chunk_doc))
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  bank_bytes = keys.nbytes + chunk_doc.nbytes
  del keys, chunk_doc
  return dict(tokens=tokens, chunks=chunks, docs=num_docs, bank_bytes=bank_bytes,
              seconds=seconds, seconds_per_1m=seconds / (tokens / 1e6),
              total_seconds=seconds * args.router_layers,
              temp_bytes=getattr(mem, "temp_size_in_bytes", -1) if mem else -1,
              arg_bytes=getattr(mem, "argument_size_in_bytes", -1) if mem else -1,
              max_rss=max_rss_bytes())


def _mib(n: int) -> str:
  return "n/a" if n < 0 else f"{n / 2**20:,.2f}"


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
  cols = ["memory tokens", "chunks", "docs", "bank MiB", "route ms", "ms / 1M tok",
          f"x{args.router_layers} layers ms", "XLA temp MiB", "XLA args MiB", "max RSS MiB"]
  cols = [c.rjust(12) for c in cols]
  lines = [" | ".join(cols), " | ".join("-" * len(c) for c in cols)]
  for r in rows:
    cells = [f"{r['tokens']:,}", f"{r['chunks']:,}", f"{r['docs']:,}", _mib(r["bank_bytes"]),
             f"{1e3 * r['seconds']:,.2f}", f"{1e3 * r['seconds_per_1m']:,.2f}",
             f"{1e3 * r['total_seconds']:,.1f}", _mib(r["temp_bytes"]), _mib(r["arg_bytes"]),
             _mib(r["max_rss"])]
    lines.append(" | ".join(c.rjust(len(h)) for c, h in zip(cells, cols)))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  runtime.enable_compilation_cache()
  mesh = None
  if args.memory_devices:
    mesh = make_mesh({"memory": args.memory_devices}, jax.devices()[:args.memory_devices])
  print(f"device: {jax.devices()[0].device_kind} x{max(args.memory_devices, 1)} "
        f"({'route_sharded' if mesh else 'route'}); B={args.questions} T={args.query_tokens} "
        f"H={args.heads} J={args.kv_heads} D={args.dim} {args.dtype}; P={args.chunk_size}, "
        f"{args.doc_tokens}-token documents, top_k={args.top_k}, tile={args.tile_chunks}, "
        f"reduce {args.head_reduce}/{args.query_reduce}/{args.chunk_reduce}", flush=True)
  rows = []
  for tokens in (int(float(t)) for t in args.tokens.split(",")):
    rows.append(run_one(tokens, args, mesh))
    print(format_table(rows[-1:], args).splitlines()[-1] if len(rows) > 1 else
          format_table(rows, args), flush=True)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
