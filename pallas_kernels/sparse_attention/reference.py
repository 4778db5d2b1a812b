"""Pure-jnp reference of the top-k block-sparse attention kernel (same signature as the kernel).

Memory Sparse Attention lets the query tokens of a router layer attend, with one softmax, to

* the pooled K̄/V̄ blocks (one per chunk) of the top-k documents the routing selected, read from
  a flat bank `bank_k`/`bank_v` [C, J, D]: selected slot i of row b covers the chunks
  `doc_first_chunk[b, i] + c` for `0 <= c < min(doc_num_chunks[b, i], max_doc_chunks)`
  (a count of 0 marks an unused slot; chunk ids outside [0, C) are skipped), and
* their own causal context k, v [B, S, J, D]: query t of row b sits at slot
  `q_offset[b] + t` and sees own slots `s <= q_offset[b] + t` with `s < kv_len[b]`, except
  slots in `[hidden_start[b], hidden_stop[b])` (a decode cache's padding after a right-padded
  prompt). A decode cache may be passed heads first, [B, J, S, D] (`kv_heads_first`).

`memory_visible[b, t]` says whether query token t sees the memory at all (prompt tokens placed
before the memory see none). Query head h uses kv head h // R (GQA, R = H / J). Logits and the
softmax are float32 with scale 1/sqrt(D) by default; the output has q's dtype; a query that
sees nothing outputs 0.

Shapes (letters as in `msa_jax.model`): B batch, T query tokens, S own kv slots, H query
heads, J kv heads, D head dim, C bank chunks, K selected documents, Cd = max_doc_chunks.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels import _common
from pallas_kernels.sparse_attention.inputs import check_inputs, default_scale, fill_defaults


@functools.partial(jax.jit, static_argnames=("max_doc_chunks", "scale", "kv_heads_first", "block",
                                             "interpret", "debug"))
def sparse_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bank_k: jax.Array,
    bank_v: jax.Array,
    doc_first_chunk: jax.Array,
    doc_num_chunks: jax.Array,
    memory_visible: jax.Array | None = None,
    q_offset: jax.Array | None = None,
    kv_len: jax.Array | None = None,
    hidden_start: jax.Array | None = None,
    hidden_stop: jax.Array | None = None,
    *,
    max_doc_chunks: int,
    scale: float | None = None,
    kv_heads_first: bool = False,
    block: Any = None,
    interpret: bool = False,
    debug: bool = False,
) -> jax.Array:
  """Top-k block-sparse attention in plain jnp (XLA): gathers the blocks, then dense softmax.

  Args:
    q: [B, T, H, D] queries.
    k: [B, S, J, D] own keys (the prompt's, or a decode cache).
    v: [B, S, J, D] own values.
    bank_k: [C, J, D] pooled keys of the memory bank.
    bank_v: [C, J, D] pooled values of the memory bank.
    doc_first_chunk: [B, K] int, first bank chunk of each selected document.
    doc_num_chunks: [B, K] int, its number of chunks (0: unused slot; clipped to
      max_doc_chunks). Chunk ids outside [0, C) are skipped.
    memory_visible: [B, T] bool, tokens that see the memory (None: all).
    q_offset: [B] int, own slot of query token 0 (None: 0).
    kv_len: [B] int, valid own slots (None: S).
    hidden_start, hidden_stop: [B] int, own slots hidden_start <= s < hidden_stop are not
      seen (None: none; the padding between a right-padded prompt and its decoded tokens).
    max_doc_chunks: static bound on the chunks per document (Cd).
    scale: logit scale (None: 1/sqrt(D)).
    kv_heads_first: k and v are [B, J, S, D] (a decode cache's layout).
    block: ignored (the kernel's `SparseAttentionBlockSizes`); accepted so the two are
      interchangeable.
    interpret: ignored, as `block`.
    debug: ignored, as `block`.

  Returns:
    [B, T, H, D] in q's dtype; 0 for a query that sees nothing.
  """
  del block, interpret, debug
  memory_visible, q_offset, kv_len, hidden_start, hidden_stop = fill_defaults(
      q, k, memory_visible, q_offset, kv_len, hidden_start, hidden_stop, kv_heads_first)
  check_inputs(q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
               q_offset, kv_len, max_doc_chunks, scale, hidden_start, hidden_stop,
               kv_heads_first)
  if kv_heads_first:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  b, t, h, d = q.shape
  s_len, j = k.shape[1], k.shape[2]
  c = bank_k.shape[0]
  scale = default_scale(d, scale)
  # Memory entries: [B, K * Cd] chunk ids and validity.
  slot = jnp.arange(max_doc_chunks)
  n = jnp.clip(doc_num_chunks, 0, max_doc_chunks)
  idx = (doc_first_chunk[:, :, None] + slot[None, None, :]).reshape(b, -1)
  mem_valid = (slot[None, None, :] < n[:, :, None]).reshape(b, -1) & (idx >= 0) & (idx < c)
  idx = jnp.where(mem_valid, idx, 0)
  keys = jnp.concatenate([bank_k[idx], k], axis=1)  # [B, K*Cd + S, J, D]
  values = jnp.concatenate([bank_v[idx], v], axis=1)
  own = jnp.arange(s_len)[None, None, :]
  pos = q_offset[:, None, None] + jnp.arange(t)[None, :, None]
  hidden = (own >= hidden_start[:, None, None]) & (own < hidden_stop[:, None, None])
  own_valid = (own <= pos) & (own < kv_len[:, None, None]) & ~hidden  # [B, T, S]
  mem_valid = memory_visible[:, :, None] & mem_valid[:, None, :]  # [B, T, K*Cd]
  valid = jnp.concatenate([mem_valid, own_valid], axis=2)[:, :, None, None, :]
  qg = q.reshape(b, t, j, h // j, d)
  logits = jnp.einsum("btjrd,bsjd->btjrs", qg, keys, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(valid, logits, _common.NEG)
  m = logits.max(axis=-1, keepdims=True)
  p = jnp.where(valid, jnp.exp(logits - m), 0.0)
  l = p.sum(axis=-1)
  o = jnp.einsum("btjrs,bsjd->btjrd", p.astype(values.dtype), values,
                 preferred_element_type=jnp.float32)
  o = o / jnp.where(l > 0, l, 1.0)[..., None]
  return o.reshape(b, t, h, d).astype(q.dtype)
