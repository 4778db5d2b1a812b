"""The routing-score op in XLA: its definitions (checks, reductions) and the one-GEMM tile math.

This module is the op's home. The training path (`msa_jax.model.routing`), bank routing
(`msa_jax.memory.routing`), the Pallas kernel (`kernel.py`) and its test oracle
(`reference.py`) all take from here what defines the op:

  s[b, t, h] = <q[b, t, h], keys[c, h // R]> * scale
  head reduce   (mean | max over the H heads)                                -> [B, T]
  query reduce  (max | mean over the valid tokens, or the value at the last valid one)
  chunk -> document  (max | mean over a document's chunks, -inf with no chunk)

and the way XLA scores a tile of the bank fast (`query_operand`, `tile_chunk_scores`), with the
algebra of each reduction: a query reduce that is exact on the queries ("last"; "mean" with the
head mean) is done there, one row per question (`fold_query_reduce`, the Pallas wrapper's too);
for a query max, masked tokens get a copy of a valid token's queries, so the max over a tile's
score rows needs no mask pass; with head_reduce="mean" each kv group's R query heads are summed
before the dot (the mean is linear). A tile then costs ONE GEMM [tile, J * D] x [J * D, B * T']
and one unmasked max over T'. The keys are the GEMM's left operand, streamed row by row in the
layout the bank stores them in, and the few query rows are the right one: on the CPU this is
the cheaper orientation for a skinny product (measured on one core, YNNPACK, jax 0.10, tiles of
2048 chunks: at B = 1 the transposed product [B * T, J * D] x [J * D, tile] took 1.4x as long,
at B = 8 it was ~8 % faster; B = 1 is the common case of a question being asked). The masked
max was the largest cost beyond the GEMM (2026-12-05, 2-core AMD EPYC, one router layer, 1M
tokens, B = 1, 16,384-chunk tiles: 0.91 -> 0.54 ms with the copied rows, the whole-bank GEMM
0.46 ms).

Letters as in `msa_jax.model`: B questions, T routing-query tokens, H query heads, J kv heads,
R = H / J, D head dim, C chunks.
"""

from __future__ import annotations

from typing import NamedTuple

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


def last_valid_token(q_mask: jax.Array) -> jax.Array:
  """[B] int32 index of each question's last valid token, -1 for a question with none."""
  return jnp.max(jnp.where(q_mask, jnp.arange(q_mask.shape[1]), -1), axis=1)


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
  last = last_valid_token(q_mask)
  idx = jnp.maximum(last, 0).reshape((-1, 1) + (1,) * (s.ndim - 2))
  picked = jnp.take_along_axis(s, idx, axis=1)[:, 0]
  return jnp.where((last >= 0).reshape((-1,) + (1,) * (s.ndim - 2)), picked, NEG_INF)


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


class TileQueries(NamedTuple):
  """The routing queries as the right operand of every tile's GEMM (`query_operand`).

  Attributes:
    q: [B * T', J * D] (head mean: each kv group's heads pre-summed and scaled) or
      [J, B * T' * R, D] (head max: every head, grouped by kv head).
    mask: [B, T'] bool, the tokens the query reduce takes.
    query_reduce: what is left to do over the T' rows of each question: "max" (the rows of
      masked tokens are copies of a valid one, so no mask is applied; a question with no
      valid token scores -inf) or "mean" (masked mean; head max only, where it is not linear).
  """

  q: jax.Array
  mask: jax.Array
  query_reduce: str


def fold_query_reduce(rq: jax.Array, q_mask: jax.Array, head_reduce: str,
                       query_reduce: str) -> tuple[jax.Array, jax.Array, str]:
  """(rq [B, T', H, D], mask [B, T'], reduce) with the query reduce done on the queries where
  that is exact: "last" picks the last valid token's queries (T' = 1; a question without one
  keeps mask False, -inf), "mean" with the head mean is linear (scores of the mean of the
  valid tokens' queries, summed in float32; T' = 1, mask True: no valid token gives the zero
  query, score 0). Both leave a max over one token; T' times fewer rows in every GEMM."""
  b = q_mask.shape[0]
  if query_reduce == "last":
    last = last_valid_token(q_mask)
    picked = jnp.take_along_axis(rq, jnp.maximum(last, 0)[:, None, None, None], axis=1)
    return picked, (last >= 0)[:, None], "max"
  if query_reduce == "mean" and head_reduce == "mean":
    count = jnp.maximum(q_mask.sum(axis=1), 1).astype(jnp.float32)
    total = jnp.where(q_mask[..., None, None], rq.astype(jnp.float32), 0.0).sum(axis=1)
    return (total / count[:, None, None])[:, None], jnp.ones((b, 1), jnp.bool_), "max"
  return rq, q_mask, query_reduce


def _fill_masked(rq: jax.Array, q_mask: jax.Array) -> jax.Array:
  """rq [B, T, H, D] with each masked token's queries replaced by the question's first valid
  token's (token 0's for a question with none): a max over all T rows then equals the max
  over the valid ones, with no mask pass over the scores."""
  t = q_mask.shape[1]
  first = jnp.argmax(q_mask, axis=1)
  src = jnp.where(q_mask, jnp.arange(t), first[:, None])
  return jnp.take_along_axis(rq, src[:, :, None, None], axis=1)


def query_operand(rq: jax.Array, q_mask: jax.Array, num_kv_heads: int, *, scale: float,
                  head_reduce: str, query_reduce: str, dtype) -> TileQueries:
  """The routing queries as the right operand of the per-tile GEMM (built once per call).

  The reductions' algebra is used so a tile costs the fewest FLOPs and one pass:
  * the query reduce is done on the queries where it is exact (`fold_query_reduce`: "last",
    and "mean" with the head mean), leaving one row per question;
  * for a query max, masked tokens get a copy of a valid token's queries, so the max over the
    score rows needs no mask (`_fill_masked`);
  * head_reduce="mean" is linear: mean_h <q_h, k_{h // R}> * scale = <qbar, k> with qbar[j] =
    (scale / H) * sum_r q[j, r] (summed in float32) and the J kv heads flattened into the
    contraction, so a tile of keys [tile, J * D] is scored by ONE GEMM [tile, J * D] x
    [J * D, B * T']: q is qbar [B * T', J * D];
  * head_reduce="max" keeps every head's dot (the max is not linear): q is the heads grouped
    by kv head, [J, B * T' * R, D] (one batched GEMM over J per tile); `scale` is applied
    after the max (exact: rounding is monotone).

  q has `dtype` (the keys'): for bfloat16 keys qbar is rounded to bfloat16, as in the Pallas
  kernel. Scores equal the unreduced math up to float rounding (the sums' order differs).
  """
  folded_mean = query_reduce == "mean" and head_reduce == "mean"
  rq, q_mask, query_reduce = fold_query_reduce(rq, q_mask, head_reduce, query_reduce)
  if query_reduce == "max":
    rq = _fill_masked(rq, q_mask)
  b, t, h, d = rq.shape
  j = num_kv_heads
  q = rq.reshape(b, t, j, h // j, d)
  if head_reduce == "mean":
    heads = q.astype(jnp.float32)
    if folded_mean:  # one reduce with the token sum before it (XLA fuses the two)
      qsum = heads.sum(axis=3)
    else:  # a left fold of adds (the reduce's bits for R = 2-16, jit and eager): XLA:CPU
      qsum = heads[:, :, :, 0]  # fuses it with the fill and the scale; a reduce was a YNNPACK
      #                           call of its own
      for r in range(1, h // j):
        qsum = qsum + heads[:, :, :, r]
    q = (qsum * (scale / h)).reshape(b * t, j * d)
  else:
    q = q.transpose(2, 0, 1, 3, 4).reshape(j, b * t * (h // j), d)
  return TileQueries(q.astype(dtype), q_mask, query_reduce)


def no_valid_token(q_mask: jax.Array, query_reduce: str) -> jax.Array:
  """[B] bool: the questions whose every score is -inf: a query max or "last" over no valid
  token (a mean over none is 0), from the mask as given or as `query_operand` folded it."""
  if query_reduce == "mean":
    return jnp.zeros(q_mask.shape[:1], jnp.bool_)
  return ~q_mask.any(axis=1)


def empty_questions(queries: TileQueries) -> jax.Array:
  """[B] bool: `no_valid_token` of the questions' `query_operand` (its reduce is "max" or
  "mean": "last" is folded into a max over one token)."""
  return no_valid_token(queries.mask, queries.query_reduce)


def score_columns(queries: TileQueries) -> int:
  """Float32 scores a tile's GEMM writes per chunk (its output's columns, all kv heads)."""
  return queries.q.shape[0] if queries.q.ndim == 2 else queries.q.shape[0] * queries.q.shape[1]


def tile_chunk_scores(queries: TileQueries, keys: jax.Array, *, scale: float,
                      head_reduce: str, mask_empty: bool = True) -> jax.Array:
  """Chunk scores [B, C] of one tile of keys [C, J, D]; `queries` from `query_operand`.

  Equal to `msa_jax.model.routing.chunk_scores`' math up to float rounding (pre-summed heads
  and folded query reduces sum in another order, so a score may differ from the training
  path's by a few ulps). Every chunk is scored (no -inf masking: the caller drops padding
  rows). With `mask_empty=False` a question without a valid token (-inf with a query max)
  keeps its token 0's scores and the caller masks it (`empty_questions`) once on its reduced
  scores: a select over every tile's [B, tile] output was a pass of its own beside the fused
  GEMM (route at 1M tokens, B = 8: 4.1 -> 3.7 ms on a 2-core AMD EPYC, jax 0.10).
  """
  c, j, d = keys.shape
  b, t = queries.mask.shape
  if head_reduce == "mean":
    s = jax.lax.dot_general(keys.reshape(c, j * d), queries.q, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)  # [C, B * T']
  else:
    s = jax.lax.dot_general(keys, queries.q, (((2,), (2,)), ((1,), (0,))),
                            preferred_element_type=jnp.float32)  # [J, C, B * T' * R]
    s = s.reshape(j, c, b * t, -1)
    s = s.max(axis=(0, 3)) * scale if scale >= 0 else s.min(axis=(0, 3)) * scale
  s = s.reshape(c, b, t)
  if queries.query_reduce == "max":
    s = s.max(axis=2)
    return (jnp.where(empty_questions(queries)[None], NEG_INF, s) if mask_empty else s).T
  count = jnp.maximum(queries.mask.sum(axis=1), 1).astype(jnp.float32)
  return (jnp.where(queries.mask, s, 0.0).sum(axis=2) / count).T
