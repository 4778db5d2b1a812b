"""Pure-jnp reference of the fused routing-score kernel (same signature as the kernel).

Memory Sparse Attention routes a question against the pooled routing keys K̄^R of the whole
memory bank. Per chunk c of the bank (letters as in `msa_jax.model`; C chunks, J kv heads,
R = H / J query heads per kv head):

  s[b, t, h] = <q[b, t, h], keys[c, h // R]> * scale
  head reduce   (mean | max over the H heads)                    -> [B, T]
  query reduce  (max | mean over the valid tokens, or the value at the last valid token) -> [B]
  chunk score   = that value, -inf for padding chunks (chunk_doc < 0)

and per document d: max (or mean) of the scores of its chunks (-inf for a document with no
chunk). A question with no valid routing token scores -inf under "max" and "last" and 0 under
"mean" (the convention of `msa_jax.model.routing.chunk_scores`).

This module also holds what the kernel shares with it: the input checks and the chunk -> doc
segment reduction.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import _common

HEAD_REDUCES = ("mean", "max")
QUERY_REDUCES = ("max", "mean", "last")
CHUNK_REDUCES = ("max", "mean")
NEG_INF = float("-inf")


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


def check_inputs(q, q_mask, keys, chunk_doc, num_docs, scale, head_reduce, query_reduce,
                 chunk_reduce) -> None:
  """Raises ValueError naming the bad value; shared by the kernel and the reference."""
  if q.ndim != 4:
    raise ValueError(f"q.shape={q.shape} must be [B, T, H, D]")
  b, t, h, d = q.shape
  if keys.ndim != 3 or keys.shape[-1] != d:
    raise ValueError(f"keys.shape={keys.shape} must be [C, J, D] with D={d} (q.shape={q.shape})")
  c, j, _ = keys.shape
  if min(b, t, c) < 1:
    raise ValueError(f"empty input: q.shape={q.shape}, keys.shape={keys.shape}")
  if h % j:
    raise ValueError(f"H={h} query heads must be a multiple of J={j} kv heads "
                     f"(q.shape={q.shape}, keys.shape={keys.shape})")
  if q_mask.shape != (b, t):
    raise ValueError(f"q_mask.shape={q_mask.shape} must be [B, T]={(b, t)}")
  if q_mask.dtype != jnp.bool_:
    raise ValueError(f"q_mask.dtype={q_mask.dtype} must be bool")
  if chunk_doc.shape != (c,):
    raise ValueError(f"chunk_doc.shape={chunk_doc.shape} must be [C]={(c,)}")
  if not jnp.issubdtype(chunk_doc.dtype, jnp.integer):
    raise ValueError(f"chunk_doc.dtype={chunk_doc.dtype} must be an integer type")
  if q.dtype != keys.dtype or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError(f"q.dtype={q.dtype} and keys.dtype={keys.dtype} must be the same float type")
  if not isinstance(num_docs, int) or isinstance(num_docs, bool) or num_docs < 1:
    raise ValueError(f"num_docs={num_docs!r} must be a static int >= 1")
  if not isinstance(scale, (int, float)) or isinstance(scale, bool):
    raise ValueError(f"scale={scale!r} must be a Python float")
  if head_reduce not in HEAD_REDUCES:
    raise ValueError(f"head_reduce={head_reduce!r}; expected one of {HEAD_REDUCES}")
  if query_reduce not in QUERY_REDUCES:
    raise ValueError(f"query_reduce={query_reduce!r}; expected one of {QUERY_REDUCES}")
  if chunk_reduce not in CHUNK_REDUCES:
    raise ValueError(f"chunk_reduce={chunk_reduce!r}; expected one of {CHUNK_REDUCES}")


def chunks_to_docs(chunk_scores: jax.Array, chunk_doc: jax.Array, num_docs: int,
                   chunk_reduce: str) -> jax.Array:
  """Document scores [B, num_docs] from chunk scores [B, C] by a segment max or mean.

  Chunks with chunk_doc outside [0, num_docs) are dropped; a document with no chunk gets -inf.
  The ids need not be sorted (padding chunks may sit anywhere).
  """
  seg = jnp.where(chunk_doc >= 0, chunk_doc, num_docs).astype(jnp.int32)
  if chunk_reduce == "max":
    return jax.vmap(lambda s: jax.ops.segment_max(s, seg, num_segments=num_docs))(chunk_scores)
  valid = (chunk_doc >= 0).astype(jnp.float32)
  count = jax.ops.segment_sum(valid, seg, num_segments=num_docs)
  total = jax.vmap(lambda s: jax.ops.segment_sum(jnp.where(valid > 0, s, 0.0), seg,
                                                 num_segments=num_docs))(chunk_scores)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), NEG_INF)


def reduce_queries(s: jax.Array, q_mask: jax.Array, query_reduce: str) -> jax.Array:
  """[B, T, ...] head-reduced scores -> [B, ...] by the query reduce over valid tokens.

  "max" and "last" give -inf, "mean" gives 0, for a question with no valid token. This is the
  one definition; `msa_jax.model.routing.chunk_scores` uses it too.
  """
  m = q_mask.reshape(q_mask.shape + (1,) * (s.ndim - 2))
  if query_reduce == "max":
    return jnp.where(m, s, NEG_INF).max(axis=1)
  if query_reduce == "mean":
    count = jnp.maximum(q_mask.sum(axis=1), 1).astype(jnp.float32)
    return jnp.where(m, s, 0.0).sum(axis=1) / count.reshape((-1,) + (1,) * (s.ndim - 2))
  if query_reduce != "last":
    raise ValueError(f"query_reduce={query_reduce!r}; expected 'max', 'mean' or 'last'")
  t = q_mask.shape[1]
  last = jnp.max(jnp.where(q_mask, jnp.arange(t), -1), axis=1)  # -1: no valid token
  idx = jnp.maximum(last, 0).reshape((-1, 1) + (1,) * (s.ndim - 2))
  picked = jnp.take_along_axis(s, idx, axis=1)[:, 0]
  return jnp.where((last >= 0).reshape((-1,) + (1,) * (s.ndim - 2)), picked, NEG_INF)


@functools.partial(jax.jit, static_argnames=("scale", "head_reduce", "query_reduce", "block",
                                             "interpret", "debug"))
def routing_chunk_scores_reference(
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
  """Chunk routing scores [B, C] float32 (-inf for padding chunks), in plain jnp (XLA).

  The first half of `routing_doc_scores_reference`; the arguments are the same. `block`,
  `interpret` and `debug` are ignored (accepted so reference and kernel are interchangeable).
  """
  del block, interpret, debug
  check_inputs(q, q_mask, keys, chunk_doc, 1, scale, head_reduce, query_reduce, "max")
  b, t, h, d = q.shape
  j = keys.shape[1]
  qg = q.reshape(b, t, j, h // j, d)
  if head_reduce == "mean":
    s = jnp.einsum("btjrd,cjd->btc", qg, keys, preferred_element_type=jnp.float32) * (scale / h)
  else:
    s = jnp.einsum("btjrd,cjd->btcjr", qg, keys, preferred_element_type=jnp.float32)
    s = (s * scale).max(axis=(3, 4))
  chunk_scores = reduce_queries(s, q_mask, query_reduce)
  return jnp.where(chunk_doc[None, :] >= 0, chunk_scores, NEG_INF)


@functools.partial(jax.jit, static_argnames=(
    "num_docs", "scale", "head_reduce", "query_reduce", "chunk_reduce", "return_chunk_scores",
    "block", "interpret", "debug"))
def routing_doc_scores_reference(
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
  """Document routing scores, in plain jnp (XLA). See the module docstring for the math.

  Args:
    q: [B, T, H, D] routing query vectors (L2-normalised by the caller).
    q_mask: [B, T] bool, valid routing-query tokens.
    keys: [C, J, D] pooled routing keys of the whole bank (L2-normalised); q's dtype.
    chunk_doc: [C] int, the document of each chunk; -1 marks a padding chunk.
    num_docs: static number of documents (columns of the result).
    scale: multiplies every dot product.
    head_reduce: "mean" | "max" over the H heads.
    query_reduce: "max" | "mean" over valid tokens, or "last" (the last valid token).
    chunk_reduce: "max" | "mean" over a document's chunks.
    return_chunk_scores: also return the [B, C] chunk scores.
    block: ignored (the kernel's tiling); accepted so the two are interchangeable.
    interpret: ignored, as `block`.
    debug: ignored, as `block`.

  Returns:
    doc_scores [B, num_docs] float32, and chunk_scores [B, C] float32 if asked for.
  """
  check_inputs(q, q_mask, keys, chunk_doc, num_docs, scale, head_reduce, query_reduce,
               chunk_reduce)
  chunk_scores = routing_chunk_scores_reference(q, q_mask, keys, chunk_doc, scale=scale,
                                                head_reduce=head_reduce,
                                                query_reduce=query_reduce)
  doc_scores = chunks_to_docs(chunk_scores, chunk_doc, num_docs, chunk_reduce)
  return (doc_scores, chunk_scores) if return_chunk_scores else doc_scores
