"""Fused routing-score kernel: stream the bank's routing keys once, score every document.

What it computes is `reference.routing_doc_scores_reference` (same signature, same math).
How:

* The grid is (row blocks, chunk tiles). A program holds the routing queries of up to
  `block_rows` (question, token) rows (a question longer than that is cut into segments of
  `block_rows` tokens whose results the wrapper reduces: max of maxima, sum of weighted sums,
  so shared memory stays bounded; one of 512 tokens asked for 320 KiB of the H200's 227 KiB
  before) and one tile of `block_c` chunks of the key bank
  [C, J, D], which it reads in a loop over the J kv heads (a [block_c, D] slice each, so
  Triton can pipeline the loads), doing the dots on the tensor cores with float32
  accumulation. When B * T_pad <= block_rows there is a single row block, so the bank is read
  from HBM exactly once; the kernel is memory-bound (about B*T flops per key byte for the head
  mean). `routing_chunk_scores` is the kernel alone ([B, C] chunk scores, the piece to tile
  over a sharded bank).
* Head mean is fused before the dots: mean_h <q_h, k_{h//R}> = sum_j <(1/H) sum_{h in j} q_h,
  k_j>, so the wrapper pre-sums each kv group's R query heads in float32 (a cheap pass over q)
  and the kernel does J dots instead of H. Those J dots into one float32 accumulator are the
  K-loop of ONE GEMM [rows, J*D] x [J*D, block_c] per tile, tiled along K by kv head (the
  same shape `msa_jax.memory.routing` gives XLA), which keeps a [rows, D] slice of q and
  a [block_c, D] slice of keys live rather than J*D-wide operands. Head max does the H dots
  and a running max (exact: the max is not linear).
* The query reduce (max | mean | last): where it is exact the wrapper does it on the queries
  first (`xla.fold_query_reduce`: "last" picks the last valid token, "mean" with the head mean
  averages the valid tokens' queries), leaving one row per question, T times fewer rows and
  row blocks (so fewer passes over the bank for a large batch). Otherwise it is fused: the
  wrapper turns q_mask into per-row weights (mask, or 1/count), the kernel reduces the rows
  of each question. Padding chunks (chunk_doc < 0) and the ragged tail (c >= C, read with masked
  loads) score -inf.
* The chunk -> document reduction is NOT fused: it is a segment max/mean (XLA scatter) after
  the kernel on the [B, C] float32 chunk scores, which are J*D*itemsize/4 times smaller than
  the keys (512x for J=8, D=128, bf16), so it adds well under 1 % of the kernel's traffic and
  stays exact and deterministic. Fusing it would need cross-program reductions (documents span
  tiles) via atomics.
* Gradients (training with the kernel on): `routing_chunk_scores` has a custom VJP whose
  backward is XLA, the VJP of the reference w.r.t. q and keys (as sparse attention's; a
  fused Pallas backward is future work).

Backend: Pallas **Triton** lowering, chosen over Mosaic GPU, deliberately:

* The kernel body uses only the backend-neutral Pallas subset (BlockSpecs, ref loads with
  masks, `dot_general`, elementwise ops, reductions), so the very same code runs in Pallas'
  generic interpret mode on CPU (how it is tested here: this project's CI and dev machines have
  no GPU) and compiles with Triton on H100/H200. A Mosaic GPU kernel would need its own
  primitives (TMA copies, barriers, warpgroup layouts, 64-row wgmma tiles) whose constraints the
  CPU interpreter does not check, so it could not be validated without a GPU.
* Re-decided against the JAX 0.11.0 release notes (Pallas changelog, "Released with JAX
  0.11.0", July 2026): the Triton backend is deprecated there and is to be removed in a later
  version, but 0.11.x ships it, so it runs with the GPU machines' JAX 0.11.2; the notes after
  0.11.0 go on to deprecate the Triton-based ops of `jax.experimental.pallas.ops.gpu` and
  `pl.core_map` (for `pl.kernel`), i.e. new GPU work goes to Mosaic GPU. Decision: keep Triton
  while the supported range (jax < 0.13) still ships it, because it is the only backend this
  project can validate without a GPU, and the port below must land before a JAX that drops
  it is allowed. Seen on one H200 with JAX 0.11.2 (2026-12-04, `scripts/gpu_check.sh`): it
  compiles and runs, within 1.2e-4 of the XLA reference in bf16, streaming the Qwen3-4B-sized
  bank at 2.40 TB/s (50 % of 4.8) at 1M chunks and 3.84 TB/s (80 %) at 10M chunks, level with
  XLA's own fusion (1.14x and 1.00x its speed). JAX >= 0.10 sends a `pallas_call` without
  compiler params to Mosaic GPU, so `pltriton.CompilerParams` is passed explicitly.
* Triton's constraints are enforced by `RoutingBlockSizes` and the wrapper: power-of-two tile
  sides >= 16 (every `dot` side), D a power of two, rows padded to a power of two. Without a
  GPU the tests still lower the kernel to Triton IR for CUDA (JAX 0.10 does that on CPU),
  which catches unsupported primitives, dtype mismatches and non-power-of-two tensors; only
  Triton's own compilation to PTX needs the GPU (the `gpu`-marked tests).
* The port to Mosaic GPU (`plgpu.kernel`: JAX's development head also deprecates
  `pallas_call` for Mosaic GPU; TMA-pipelined key tiles, wgmma) is the follow-up once a GPU is
  available to validate it; the wrapper, the reference and the tests stay as they are.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common
from pallas_kernels.routing_scores.reference import routing_chunk_scores_reference
from pallas_kernels.routing_scores.xla import (NEG_INF, check_inputs, chunks_to_docs,
                                               fold_query_reduce)


@dataclasses.dataclass(frozen=True)
class RoutingBlockSizes:
  """Tiling and launch parameters of the routing kernel.

  Attributes:
    block_c: chunks per program (one tile of the key bank is streamed per program).
    block_rows: target number of (question, token) rows per program. Every question's T
      tokens sit in one program (padded to a power of two); rows beyond the batch are padded.
      When B * T is at most this, the bank is streamed exactly once.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth.
  """
  block_c: int = 128
  block_rows: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    _common.check_block("block_c", self.block_c)
    _common.check_block("block_rows", self.block_rows)
    _common.check_launch(self.num_warps, self.num_stages)


def _routing_kernel(q_ref, w_ref, keys_ref, doc_ref, out_ref, *, num_chunks: int, groups: int,
                    heads_per_group: int, head_mean: bool, query_max: bool, segment: int,
                    scale: float, precision):
  """One (row block, chunk tile) program.

  Refs: q_ref [J*heads_per_group, rows, D] (compute dtype), w_ref [rows] f32 row weights,
  keys_ref [block_c, J, D], doc_ref [block_c] int32, out_ref [rows // segment, block_c] f32
  (one row per question segment of `segment` tokens).
  """
  block_c = keys_ref.shape[0]
  d = keys_ref.shape[2]
  c0 = pl.program_id(1) * block_c
  in_bounds = c0 + lax.broadcasted_iota(jnp.int32, (block_c,), 0) < num_chunks
  doc = _common.masked_load(doc_ref, in_bounds, -1)
  valid = in_bounds & (doc >= 0)
  key_mask = jnp.broadcast_to(in_bounds[:, None], (block_c, d))
  rows = q_ref.shape[1]

  def kv_head(j, acc):  # a loop, not unrolled: Triton pipelines the key loads across it
    k_j = _common.masked_load(keys_ref.at[:, j, :], key_mask)  # [block_c, D]
    for r in range(heads_per_group):
      s = lax.dot_general(q_ref[j * heads_per_group + r], k_j, (((1,), (1,)), ((), ())),
                          precision=precision, preferred_element_type=jnp.float32) * scale
      acc = acc + s if head_mean else jnp.maximum(acc, s)
    return acc

  acc = jnp.full((rows, block_c), 0.0 if head_mean else NEG_INF, jnp.float32)
  acc = lax.fori_loop(0, groups, kv_head, acc)
  w = w_ref[...]
  if query_max:
    acc = jnp.where(w[:, None] > 0, acc, NEG_INF)
  else:
    acc = acc * w[:, None]
  questions = rows // segment
  if questions == 1:
    red = acc.max(axis=0, keepdims=True) if query_max else acc.sum(axis=0, keepdims=True)
  else:
    acc = acc.reshape(questions, segment, block_c)
    red = acc.max(axis=1) if query_max else acc.sum(axis=1)
  out_ref[...] = jnp.where(valid[None, :], red, NEG_INF)


def _row_weights(q_mask: jax.Array, query_reduce: str) -> jax.Array:
  """[B, T] f32 weights that turn the fused row reduction into the query reduce ("max" or
  "mean"; "last" is folded into the queries before)."""
  m = q_mask.astype(jnp.float32)
  if query_reduce == "max":
    return m
  return m / jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)


def _layout(b: int, t: int, block: RoutingBlockSizes) -> tuple[int, int, int, int]:
  """(segment, splits, rows per program, padded segment count) for B questions of T tokens.

  A question's T_pad tokens (T padded to a power of two) are `splits` segments of `segment`
  tokens, each at most `block_rows` (a program's query operand, and so its shared memory, is
  bounded by `block_rows` whatever T is); the B * splits segments fill programs of `rows`
  rows, `rows // segment` segments each, and the wrapper reduces a question's segments.
  """
  t_pad = _common.next_power_of_two(t)
  cap = max(block.block_rows, 16)
  segment = min(t_pad, cap)
  splits = t_pad // segment
  segments = b * splits
  rows = min(max(_common.next_power_of_two(segments * segment), 16), cap)  # >= segment
  per_block = rows // segment
  return segment, splits, rows, -(-segments // per_block) * per_block


@functools.partial(jax.jit, static_argnames=("scale", "head_reduce", "query_reduce", "block",
                                             "interpret", "debug"))
def routing_chunk_scores(
    q: jax.Array,
    q_mask: jax.Array,
    keys: jax.Array,
    chunk_doc: jax.Array,
    *,
    scale: float,
    head_reduce: str = "mean",
    query_reduce: str = "max",
    block: RoutingBlockSizes | None = None,
    interpret: bool = False,
    debug: bool = False,
) -> jax.Array:
  """Chunk routing scores [B, C] float32 with the fused Pallas kernel (the kernel alone).

  The arguments are those of `routing_doc_scores`. Padding chunks (chunk_doc < 0) score -inf.
  This is the piece to tile over a sharded bank (per-tile top-k, then a merge), and the one
  training differentiates: a custom VJP whose backward is XLA, the VJP of
  `routing_chunk_scores_reference` (gradients w.r.t. q and keys; none flow to padding chunks).
  """
  check_inputs(q, q_mask, keys, chunk_doc, 1, scale, head_reduce, query_reduce, "max")
  block = RoutingBlockSizes() if block is None else block
  d = q.shape[-1]
  if not _common.is_power_of_two(d) or d < 16:
    raise ValueError(f"head dim D={d} must be a power of two >= 16 for the kernel "
                     f"(q.shape={q.shape})")
  static = (("scale", float(scale)), ("head_reduce", head_reduce),
            ("query_reduce", query_reduce), ("block", block), ("interpret", interpret),
            ("debug", debug))
  return _scores(static, q, keys, q_mask, chunk_doc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scores(static, q, keys, q_mask, chunk_doc):
  return _forward(q, q_mask, keys, chunk_doc, **dict(static))


def _scores_fwd(static, q, keys, q_mask, chunk_doc):
  return _scores(static, q, keys, q_mask, chunk_doc), (q, keys, q_mask, chunk_doc)


def _scores_bwd(static, residuals, g):
  q, keys, q_mask, chunk_doc = residuals
  opts = dict(static)

  def ref(q, keys):
    return routing_chunk_scores_reference(q, q_mask, keys, chunk_doc, scale=opts["scale"],
                                          head_reduce=opts["head_reduce"],
                                          query_reduce=opts["query_reduce"])

  _, vjp = jax.vjp(ref, q, keys)
  return (*vjp(g), None, None)


_scores.defvjp(_scores_fwd, _scores_bwd)


def _forward(q, q_mask, keys, chunk_doc, *, scale: float, head_reduce: str, query_reduce: str,
             block: RoutingBlockSizes, interpret: bool, debug: bool) -> jax.Array:
  """The `pallas_call` of `routing_chunk_scores` (inputs checked)."""
  q, q_mask, query_reduce = fold_query_reduce(q, q_mask, head_reduce, query_reduce)
  b, t, h, d = q.shape
  c, j, _ = keys.shape
  segment, splits, rows, s_pad = _layout(b, t, block)
  t_pad = segment * splits
  r = h // j
  if head_reduce == "mean":  # pre-sum each kv group's heads: J dots per tile instead of H
    qk = q.reshape(b, t, j, r, d).astype(jnp.float32).sum(axis=3) / h
    heads_per_group = 1
  else:
    qk = q
    heads_per_group = r
  # Padded to [B_pad, T_pad] = [s_pad segments, segment] (only short questions share a
  # program, so only they pad the batch: s_pad = B * splits whenever splits > 1).
  b_pad = s_pad // splits
  qk = jnp.pad(qk.astype(keys.dtype), ((0, b_pad - b), (0, t_pad - t), (0, 0), (0, 0)))
  qk = qk.reshape(s_pad * segment, -1, d).transpose(1, 0, 2)  # [G, rows_total, D]
  w = jnp.pad(_row_weights(q_mask, query_reduce), ((0, b_pad - b), (0, t_pad - t)))
  w = w.reshape(-1)
  n_tiles = pl.cdiv(c, block.block_c)
  kernel = functools.partial(
      _routing_kernel, num_chunks=c, groups=j, heads_per_group=heads_per_group,
      head_mean=head_reduce == "mean", query_max=query_reduce == "max", segment=segment,
      scale=float(scale), precision=_common.dot_precision(keys.dtype))
  g = qk.shape[0]
  out = pl.pallas_call(
      kernel,
      grid=(s_pad * segment // rows, n_tiles),
      in_specs=[
          pl.BlockSpec((g, rows, d), lambda i, k: (0, i, 0)),
          pl.BlockSpec((rows,), lambda i, k: (i,)),
          pl.BlockSpec((block.block_c, j, d), lambda i, k: (k, 0, 0)),
          pl.BlockSpec((block.block_c,), lambda i, k: (k,)),
      ],
      out_specs=pl.BlockSpec((rows // segment, block.block_c), lambda i, k: (i, k)),
      out_shape=jax.ShapeDtypeStruct((s_pad, n_tiles * block.block_c), jnp.float32),
      compiler_params=_common.compiler_params(block.num_warps, block.num_stages),
      interpret=interpret,
      debug=debug,
      name="msa_routing_scores",
  )(qk, w, keys, chunk_doc.astype(jnp.int32))
  chunk_scores = out[:b * splits, :c].reshape(b, splits, c)
  # A question's segments: the max of their maxima, or the sum of their weighted sums (padding
  # chunks are -inf in every segment, so in the sum too).
  return chunk_scores.max(axis=1) if query_reduce == "max" else chunk_scores.sum(axis=1)


@functools.partial(jax.jit, static_argnames=(
    "num_docs", "scale", "head_reduce", "query_reduce", "chunk_reduce", "return_chunk_scores",
    "block", "interpret", "debug"))
def routing_doc_scores(
    q: jax.Array,
    q_mask: jax.Array,
    keys: jax.Array,
    chunk_doc: jax.Array,
    num_docs: int,
    *,
    scale: float,
    head_reduce: str = "mean",
    query_reduce: str = "max",
    chunk_reduce: str = "max",
    return_chunk_scores: bool = False,
    block: RoutingBlockSizes | None = None,
    interpret: bool = False,
    debug: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Document routing scores: the fused Pallas kernel, then a segment max/mean over chunks.

  Args:
    q: [B, T, H, D] routing query vectors (L2-normalised by the caller); float32 or bfloat16.
    q_mask: [B, T] bool, valid routing-query tokens.
    keys: [C, J, D] pooled routing keys of the whole bank (L2-normalised), q's dtype. Head h
      uses kv head h // (H // J).
    chunk_doc: [C] int, the document of each chunk (documents are contiguous runs of chunks);
      -1 marks a padding chunk, which is ignored.
    num_docs: static number of documents (columns of the result).
    scale: multiplies every dot product.
    head_reduce: "mean" | "max" over the H heads.
    query_reduce: "max" | "mean" over valid tokens, or "last" (the last valid token).
    chunk_reduce: "max" | "mean" over a document's chunks.
    return_chunk_scores: also return the [B, C] chunk scores.
    block: tiling and launch parameters (`RoutingBlockSizes()` when None).
    interpret: run the kernel in Pallas interpret mode (any backend, e.g. CPU).
    debug: print the kernel's jaxpr and lowered module.

  Returns:
    doc_scores [B, num_docs] float32 (-inf for documents with no chunk), and chunk_scores
    [B, C] float32 (-inf for padding chunks) if asked for. Dots run in the inputs' dtype with
    float32 accumulation (exact fp32 products for fp32 inputs).
  """
  check_inputs(q, q_mask, keys, chunk_doc, num_docs, scale, head_reduce, query_reduce,
               chunk_reduce)
  chunk_scores = routing_chunk_scores(q, q_mask, keys, chunk_doc, scale=scale,
                                      head_reduce=head_reduce, query_reduce=query_reduce,
                                      block=block, interpret=interpret, debug=debug)
  doc_scores = chunks_to_docs(chunk_scores, chunk_doc, num_docs, chunk_reduce)
  return (doc_scores, chunk_scores) if return_chunk_scores else doc_scores
