r"""Scale benchmark of stage-2 routing: one router layer's bank, growing memory sizes.

    python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py
    python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py:paper \
        [--config.memory_devices=8]
    python -m msa_jax.inference.routing_benchmark --config=configs/routing_benchmark.py:small

An absl app; configs/routing_benchmark.py holds the sizes (CPU: 100k, 1M, 10M tokens; `:paper`
on a GPU: 100M tokens, Qwen3-4B; `:small`: seconds, a smoke test), each field overridable as
`--config.FIELD=VALUE` (`--help` lists them). For each size it builds a synthetic bank on the
device (random L2-normalised routing keys, documents of `doc_tokens` tokens, chunks of
`chunk_size`), jits `route` (or `route_sharded` over `memory_devices` devices), and prints the
median time of a warm call for a batch of questions, the time per 1M memory tokens (flat when
routing is linear in the bank), the bank's bytes, and memory: the compiled executable's
temporary and argument bytes (`memory_analysis()`; temporaries stay O(Q * tile * T * H + Q * M))
and the process's max RSS. `:paper` uses the paper's sizes: 100M tokens, Qwen3-4B's routing
dims (H=32, J=8, D=128), bf16, 18 router layers; one layer is timed and the total is per-layer
x router layers. `kernel_impl` picks the scorer (`routing.route`'s; "auto": the Pallas
routing-score kernel on a GPU, the tiled XLA GEMMs elsewhere). `run(config)` is the importable
entry point.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.memory import routing
from msa_jax.runtime.sharding import make_mesh
from pallas_kernels.routing_scores.xla import CHUNK_REDUCES, HEAD_REDUCES, QUERY_REDUCES

def check_config(config) -> None:
  """Sizes, reductions and devices (before any bank is built).

  Raises:
    UserError: a size < 1, an unknown reduction or dtype, heads not a multiple of kv heads, more
      memory devices than JAX sees, a bad token list.
  """
  for name in ("chunk_size", "doc_tokens", "questions", "query_tokens", "heads", "kv_heads",
               "dim", "top_k", "router_layers", "iters"):
    validation.check_at_least(f"--config.{name}", config[name], 1)
  validation.check_at_least("--config.tile_chunks", config.tile_chunks, 0)
  validation.check_at_least("--config.warmup", config.warmup, 0)
  validation.check_at_least("--config.memory_devices", config.memory_devices, 0)
  validation.check_choice("--config.dtype", config.dtype, ("float32", "bfloat16"))
  validation.check_choice("--config.kernel_impl", config.kernel_impl, routing.KERNEL_IMPLS)
  for name, choices in (("head_reduce", HEAD_REDUCES), ("query_reduce", QUERY_REDUCES),
                        ("chunk_reduce", CHUNK_REDUCES)):
    validation.check_choice(f"--config.{name}", config[name], choices)
  try:
    sizes = token_sizes(config)
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise validation.UserError(f"--config.tokens={config.tokens!r}: expected comma-separated "
                               "memory sizes >= 1 (e.g. '100000,1e6')")
  if config.heads % config.kv_heads:
    raise validation.UserError(f"--config.heads={config.heads} must be a multiple of "
                               f"--config.kv_heads={config.kv_heads}")
  if config.memory_devices > len(jax.devices()):
    raise validation.UserError(f"--config.memory_devices={config.memory_devices} but JAX sees "
                               f"{len(jax.devices())} devices")


def token_sizes(config) -> list[int]:
  """The memory sizes of `config.tokens` ("100000,1e6")."""
  return [int(float(t)) for t in config.tokens.split(",") if t.strip()]


def tile_chunks(args) -> int | None:
  """The tile `route` gets: `args.tile_chunks`, or for 0 the engine's default
  (`routing.bank_tile_chunks`: automatic on one device, DEFAULT_TILE_CHUNKS sharded)."""
  return routing.bank_tile_chunks(args.tile_chunks or None, bool(args.memory_devices))


def bank_shape(tokens: int, args) -> tuple[int, int]:
  """(chunks C, documents M) of a bank of `tokens` tokens in documents of doc_tokens.

  With memory_devices=S, C is rounded up so that each shard holds whole documents and whole
  tiles (so no padding rows are needed).
  """
  per_doc = math.ceil(args.doc_tokens / args.chunk_size)
  chunks = math.ceil(tokens / args.chunk_size)
  if args.memory_devices:
    unit = args.memory_devices * math.lcm(per_doc, tile_chunks(args))
    chunks = math.ceil(chunks / unit) * unit
  return chunks, math.ceil(chunks / per_doc)


def make_bank(chunks: int, args, mesh=None):
  """Random normalised keys [C, J, D] and chunk_doc [C], built on (and sharded over) devices."""
  dtype = jnp.dtype(args.dtype)
  per_doc = math.ceil(args.doc_tokens / args.chunk_size)

  def build(key):
    k = jax.random.normal(key, (chunks, args.kv_heads, args.dim), jnp.float32)
    k = k * jax.lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True))
    return k.astype(dtype), (jnp.arange(chunks, dtype=jnp.int32) // per_doc)

  out = None if mesh is None else NamedSharding(mesh, P("memory"))
  return jax.jit(build, out_shardings=out)(jax.random.key(args.seed))


def make_questions(args):
  kq = jax.random.key(args.seed + 1)
  rq = jax.random.normal(kq, (args.questions, args.query_tokens, args.heads, args.dim))
  rq = rq / jnp.linalg.norm(rq, axis=-1, keepdims=True)
  mask = jnp.ones((args.questions, args.query_tokens), jnp.bool_)
  return rq.astype(args.dtype), mask


def max_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_one(tokens: int, args, mesh) -> dict:
  """Builds one bank, compiles and times routing; returns one row of the table."""
  chunks, num_docs = bank_shape(tokens, args)
  keys, chunk_doc = make_bank(chunks, args, mesh)
  rq, mask = make_questions(args)
  kw = dict(top_k=args.top_k, scale=1.0, head_reduce=args.head_reduce,
            query_reduce=args.query_reduce, chunk_reduce=args.chunk_reduce,
            tile_chunks=tile_chunks(args), kernel_impl=args.kernel_impl)
  if mesh is None:  # the bank's chunk counts, counted once (the engine passes them too)
    fn = jax.jit(lambda rq, mask, keys, doc, counts: routing.route(
        rq, mask, keys, doc, num_docs, chunk_counts=counts, **kw))
    inputs = (rq, mask, keys, chunk_doc, routing.count_chunks(chunk_doc, num_docs))
  else:
    fn = jax.jit(lambda rq, mask, keys, doc: routing.route_sharded(
        mesh, rq, mask, keys, doc, num_docs, return_doc_scores=False, **kw))
    inputs = (rq, mask, keys, chunk_doc)
  compiled = fn.lower(*inputs).compile()
  mem = compiled.memory_analysis()
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(*inputs))
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  bank_bytes = keys.nbytes + chunk_doc.nbytes
  del keys, chunk_doc, inputs
  return dict(tokens=tokens, chunks=chunks, docs=num_docs, bank_bytes=bank_bytes,
              seconds=seconds, seconds_per_1m=seconds / (tokens / 1e6),
              total_seconds=seconds * args.router_layers,
              temp_bytes=getattr(mem, "temp_size_in_bytes", -1) if mem else -1,
              arg_bytes=getattr(mem, "argument_size_in_bytes", -1) if mem else -1,
              max_rss=max_rss_bytes())


def _mib(n: int) -> str:
  return "n/a" if n < 0 else f"{n / 2**20:,.2f}"


def format_table(rows: list[dict], args) -> str:
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


def run(args) -> list[dict]:
  """Times routing at every size of the config `args` (checked first), printing a table row per
  size; returns the rows."""
  check_config(args)
  mesh = None
  if args.memory_devices:
    mesh = make_mesh({"memory": args.memory_devices}, jax.devices()[:args.memory_devices])
  print(f"device: {jax.devices()[0].device_kind} x{max(args.memory_devices, 1)} "
        f"({'route_sharded' if mesh else 'route'}); B={args.questions} T={args.query_tokens} "
        f"H={args.heads} J={args.kv_heads} D={args.dim} {args.dtype}; P={args.chunk_size}, "
        f"{args.doc_tokens}-token documents, top_k={args.top_k}, "
        f"tile={tile_chunks(args) or 'auto'}, "
        f"kernel_impl={args.kernel_impl}, "
        f"reduce {args.head_reduce}/{args.query_reduce}/{args.chunk_reduce}", flush=True)
  rows = []
  for tokens in token_sizes(args):
    rows.append(run_one(tokens, args, mesh))
    print(format_table(rows[-1:], args).splitlines()[-1] if len(rows) > 1 else
          format_table(rows, args), flush=True)
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None:
    raise validation.UserError("--config is required (e.g. --config=configs/"
                               "routing_benchmark.py)")
  runtime.start_command()
  run(flags.FLAGS.config)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module defines none.
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help("The routing benchmark",
                                             "configs/routing_benchmark.py"), lock_config=True)
  validation.run_app(main)
