"""Chunk pooling, routing scores and top-k document selection: the pure math of MSA routing.

Shapes (letters as in `msa_jax.model`): B batch, N documents, G document tokens, C chunks per
document (ceil(G / P)), T prompt tokens, H query heads, J kv heads, R = H / J, D head dim,
K selected documents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.routing_scores.xla import reduce_queries

# Masked scores: -inf, so a masked entry never wins a max and softmax-style losses ignore it.
NEG_INF = float("-inf")


def num_chunks(doc_len: int, chunk_size: int) -> int:
  return -(-doc_len // chunk_size)


def chunk_mask(doc_lengths: jax.Array, doc_len: int, chunk_size: int) -> jax.Array:
  """[..., C] bool: chunk c of a document of length n exists iff c * P < n."""
  c = jnp.arange(num_chunks(doc_len, chunk_size)) * chunk_size
  return c < doc_lengths[..., None]


def chunk_mean(x: jax.Array, doc_lengths: jax.Array, chunk_size: int) -> jax.Array:
  """Mean of x over each chunk's real tokens: [..., G, *F] -> [..., C, *F].

  A document of length n has ceil(n / P) chunks; the last one averages only its own
  n - (C-1) P tokens (padding never leaks in). Chunks past the document are 0. Sums run in
  float32; the result has x's dtype.
  """
  lead = doc_lengths.ndim
  g = x.shape[lead]
  c = num_chunks(g, chunk_size)
  feat = x.shape[lead + 1:]
  valid = jnp.arange(c * chunk_size) < doc_lengths[..., None]  # [..., C*P]
  x32 = x.astype(jnp.float32)
  pad = [(0, 0)] * lead + [(0, c * chunk_size - g)] + [(0, 0)] * len(feat)
  x32 = jnp.pad(x32, pad)
  x32 = jnp.where(valid.reshape(valid.shape + (1,) * len(feat)), x32, 0.0)
  sums = x32.reshape(x.shape[:lead] + (c, chunk_size) + feat).sum(axis=lead + 1)
  counts = valid.reshape(valid.shape[:-1] + (c, chunk_size)).sum(-1).astype(jnp.float32)
  mean = sums / jnp.maximum(counts, 1.0).reshape(counts.shape + (1,) * len(feat))
  return mean.astype(x.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize), in float32."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


def chunk_scores(rq: jax.Array, query_mask: jax.Array, keys: jax.Array, chunks: jax.Array, *,
                 scale: float, head_reduce: str, query_reduce: str) -> jax.Array:
  """Per-chunk routing scores [B, N, C] (float32, -inf where the chunk does not exist).

  Args:
    rq: [B, T, H, D] routing query vectors.
    query_mask: [B, T] bool, the routing-query tokens.
    keys: [B, N, C, J, D] pooled routing keys; head h uses kv head h // R.
    chunks: [B, N, C] bool, existing chunks.
    scale: multiplies every dot product.
    head_reduce: "mean" | "max" over the H heads.
    query_reduce: "max" | "mean" over the routing-query tokens, or "last" (the last one).
  """
  s = token_chunk_scores(rq, keys, scale=scale, head_reduce=head_reduce)
  return jnp.where(chunks, reduce_queries(s, query_mask, query_reduce), NEG_INF)


def token_chunk_scores(rq: jax.Array, keys: jax.Array, *, scale: float,
                       head_reduce: str) -> jax.Array:
  """Every query token's own chunk scores [B, T, N, C] (float32, before the query reduction
  and the chunk mask); arguments as `chunk_scores`."""
  b, t, h, d = rq.shape
  j = keys.shape[-2]
  rqg = rq.reshape(b, t, j, h // j, d)
  s = jnp.einsum("BTJRD,BNCJD->BTNCJR", rqg, keys,
                 preferred_element_type=jnp.float32) * scale
  s = s.reshape(s.shape[:4] + (h,))
  return s.mean(-1) if head_reduce == "mean" else s.max(-1)


def doc_scores(scores: jax.Array, chunks: jax.Array, reduce: str) -> jax.Array:
  """Chunk scores [B, N, C] -> document scores [B, N] (-inf for documents with no chunk)."""
  if reduce == "max":
    return jnp.where(chunks, scores, NEG_INF).max(-1)
  if reduce == "mean":
    count = chunks.sum(-1)
    total = jnp.where(chunks, scores, 0.0).sum(-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), NEG_INF)
  raise ValueError(f"chunk_reduce={reduce!r}; expected 'max' or 'mean'")


def select_top_k(scores: jax.Array, docs: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
  """The k_b = min(top_k, documents present) best documents per sample.

  Args:
    scores: [B, N] document scores.
    docs: [B, N] bool, documents present.
    top_k: documents to select.

  Returns:
    (indices [B, K], selected [B, K] bool) with K = min(top_k, N), by descending score; slot
    i is used iff i < k_b. Ties go to the lower document index.
  """
  k = min(top_k, scores.shape[-1])
  masked = jnp.where(docs, scores, NEG_INF)
  _, idx = jax.lax.top_k(masked, k)
  present = docs.sum(-1)
  return idx, jnp.arange(k)[None, :] < present[:, None]
