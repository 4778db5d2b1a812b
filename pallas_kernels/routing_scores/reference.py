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

The definitions this oracle shares with the other implementations (input checks, query and
chunk reductions) live with the op in `xla.py`; this module is the op in its most literal
form (an einsum over every head), for tests to pin the XLA and Pallas implementations to.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.routing_scores.xla import (NEG_INF, check_inputs, chunks_to_docs,
                                               reduce_queries)


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
    block: Any = None,
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
    block: Any = None,
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
    block: ignored (the kernel's `RoutingBlockSizes`); accepted so the two are
      interchangeable.
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
