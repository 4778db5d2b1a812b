"""The routing-score op in XLA: its definitions (checks, reductions) and the one-GEMM tile math.

This module is the op's home. The training path (`msa_jax.model.routing`), bank routing
(`msa_jax.memory.routing`), the Pallas kernel (`kernel.py`) and its test oracle
(`reference.py`) all take from here what defines the op:

  s[b, t, h] = <q[b, t, h], keys[c, h // R]> * scale
  head reduce   (mean | max over the H heads)                                -> [B, T]
  query reduce  (max | mean over the valid tokens, or the value at the last valid one)
  chunk -> document  (max | mean over a document's chunks, -inf with no chunk)

and the way XLA scores a tile of the bank fast (`query_operand`, `tile_chunk_scores`): with
head_reduce="mean" each kv group's R query heads are summed before the dot (the mean is
linear), so a tile costs ONE GEMM [tile, J * D] x [J * D, B * T], R times fewer FLOPs than
scoring every head. The keys are the GEMM's left operand, streamed row by row in the layout
the bank stores them in, and the few query rows are the right one: on the CPU this is the
cheaper orientation for a skinny product (measured on one core, YNNPACK, jax 0.10, tiles of
2048 chunks: at B = 1 the transposed product [B * T, J * D] x [J * D, tile] took 1.4x as long,
at B = 8 it was ~8 % faster; B = 1 is the common case of a question being asked).

Letters as in `msa_jax.model`: B questions, T routing-query tokens, H query heads, J kv heads,
R = H / J, D head dim, C chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HEAD_REDUCES = ("mean", "max")
QUERY_REDUCES = ("max", "mean", "last")
CHUNK_REDUCES = ("max", "mean")
NEG_INF = float("-inf")


def check_inputs(q, q_mask, keys, chunk_doc, num_docs, scale, head_reduce, query_reduce,
                 chunk_reduce) -> None:
  """Raises ValueError naming the bad value; shared by every implementation of the op."""
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


def reduce_queries_minor(s: jax.Array, q_mask: jax.Array, query_reduce: str) -> jax.Array:
  """`reduce_queries` for scores [C, B, T] (tokens minor, as the keys-major GEMM leaves
  them) -> [B, C]."""
  if query_reduce == "last":
    t = q_mask.shape[1]
    last = jnp.max(jnp.where(q_mask, jnp.arange(t), -1), axis=1)  # -1: no valid token
    picked = jnp.take_along_axis(s, jnp.maximum(last, 0)[None, :, None], axis=2)[..., 0]
    return jnp.where(last >= 0, picked, NEG_INF).T
  if query_reduce == "max":
    return jnp.where(q_mask, s, NEG_INF).max(axis=2).T
  if query_reduce != "mean":
    raise ValueError(f"query_reduce={query_reduce!r}; expected 'max', 'mean' or 'last'")
  count = jnp.maximum(q_mask.sum(axis=1), 1).astype(jnp.float32)
  return (jnp.where(q_mask, s, 0.0).sum(axis=2) / count).T


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


def query_operand(rq: jax.Array, num_kv_heads: int, *, scale: float, head_reduce: str,
                  dtype) -> jax.Array:
  """The routing queries as the right operand of the per-tile GEMM (built once per call).

  head_reduce="mean" is linear: mean_h <q_h, k_{h // R}> * scale = <qbar, k> with qbar[j] =
  (scale / H) * sum_r q[j, r] (summed in float32) and the J kv heads flattened into the
  contraction, so a tile of keys [tile, J * D] is scored by ONE GEMM [tile, J * D] x
  [J * D, B * T]. Returns qbar [B * T, J * D].

  head_reduce="max" keeps every head's dot (the max is not linear): returns the heads grouped
  by kv head, [J, B * T * R, D] (one batched GEMM over J per tile); `scale` is applied after
  the max (exact: rounding is monotone).

  The result has `dtype` (the keys'): for bfloat16 keys qbar is rounded to bfloat16, as in
  the Pallas kernel.
  """
  b, t, h, d = rq.shape
  j = num_kv_heads
  q = rq.reshape(b, t, j, h // j, d)
  if head_reduce == "mean":
    qbar = q.astype(jnp.float32).sum(axis=3) * (scale / h)
    return qbar.reshape(b * t, j * d).astype(dtype)
  return q.transpose(2, 0, 1, 3, 4).reshape(j, b * t * (h // j), d).astype(dtype)


def tile_chunk_scores(q: jax.Array, query_mask: jax.Array, keys: jax.Array, *, scale: float,
                      head_reduce: str, query_reduce: str) -> jax.Array:
  """Chunk scores [B, C] of one tile of keys [C, J, D]; q from `query_operand`.

  Equal to `msa_jax.model.routing.chunk_scores`' math up to float rounding (the head mean is a
  sum of pre-summed heads, so a score may differ from the training path's by a few ulps).
  Every chunk is scored (no -inf masking: the caller drops padding rows).
  """
  c, j, d = keys.shape
  b, t = query_mask.shape
  if head_reduce == "mean":
    s = jax.lax.dot_general(keys.reshape(c, j * d), q, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)  # [C, B * T]
  else:
    s = jax.lax.dot_general(keys, q, (((2,), (2,)), ((1,), (0,))),
                            preferred_element_type=jnp.float32)  # [J, C, B * T * R]
    s = s.reshape(j, c, b * t, -1)
    s = s.max(axis=(0, 3)) * scale if scale >= 0 else s.min(axis=(0, 3)) * scale
  return reduce_queries_minor(s.reshape(c, b, t), query_mask, query_reduce)
