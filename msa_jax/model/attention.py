"""Grouped-query attention: the pure math, masks, the KV cache and the linen module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from msa_jax.model import layers
from msa_jax.model import rope

Dtype = Any
# Masked logits get the most negative float32 rather than -inf, so a row with no visible key
# (a pad query) gives a uniform softmax instead of NaN.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)


class KVCache(NamedTuple):
  """One layer's cache: keys and values [B, S, J, D] (post-RoPE keys) for S cache slots."""

  k: jax.Array
  v: jax.Array


def init_cache(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
               dtype: Dtype = jnp.float32) -> tuple[KVCache, ...]:
  """An all-zero cache for every layer: num_layers x KVCache([B, S, J, D])."""
  shape = (batch, max_len, num_kv_heads, head_dim)
  return tuple(KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
               for _ in range(num_layers))


def causal_mask(num_tokens: int, segment_ids: jax.Array | None = None) -> jax.Array:
  """[B or 1, T, T] bool: token t sees token s iff s <= t (and, with segment_ids [B, T],
  both are in the same segment and the key is not padding, segment id 0)."""
  idx = jnp.arange(num_tokens)
  mask = (idx[None, :, None] >= idx[None, None, :])
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = mask & same & (segment_ids[:, None, :] != 0)
  return mask


def cache_mask(cache_index: jax.Array, num_tokens: int, cache_len: int) -> jax.Array:
  """[B, T, S] bool for T new tokens written at slots cache_index[b] + t: a token sees every
  slot up to and including its own. Slots past it (stale or never written) are hidden."""
  query_slot = cache_index[:, None] + jnp.arange(num_tokens)[None, :]
  return jnp.arange(cache_len)[None, None, :] <= query_slot[:, :, None]


def update_cache(cache: KVCache, k: jax.Array, v: jax.Array, cache_index: jax.Array) -> KVCache:
  """Writes k, v [B, T, J, D] into the cache at slots cache_index[b] .. cache_index[b] + T - 1."""

  def write(buf, new, start):
    return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (start, 0, 0))

  return KVCache(jax.vmap(write)(cache.k, k, cache_index),
                 jax.vmap(write)(cache.v, v, cache_index))


@flax.struct.dataclass
class OwnSlots:
  """Which of their own kv slots B rows of query tokens see (prefill and decode alike).

  Token t of row b sits at slot `offset[b] + t` and sees slot s iff s <= offset[b] + t,
  s < length[b] and s is not in [hidden_start[b], hidden_stop[b]) (the padding between a
  right-padded prompt and the tokens decoded after it). The Pallas sparse attention kernel
  takes these four [B] int32 vectors as they are; `mask` is the dense form.
  """

  offset: jax.Array
  length: jax.Array
  hidden_start: jax.Array
  hidden_stop: jax.Array

  @classmethod
  def prefill(cls, lengths: jax.Array) -> OwnSlots:
    """Right-padded prompts of `lengths` [B] at slots 0..T-1: causal, padding keys hidden."""
    zero = jnp.zeros_like(lengths, jnp.int32)
    return cls(zero, lengths.astype(jnp.int32), zero, zero)

  @classmethod
  def decode(cls, prompt_lengths: jax.Array, prompt_slots: int, slot: jax.Array) -> OwnSlots:
    """A token written at the shared `slot` after prompts right-padded to `prompt_slots`."""
    b = prompt_lengths.shape[0]
    slot = jnp.broadcast_to(jnp.asarray(slot, jnp.int32), (b,))
    return cls(slot, slot + 1, prompt_lengths.astype(jnp.int32),
               jnp.full((b,), prompt_slots, jnp.int32))

  def mask(self, num_tokens: int, num_slots: int) -> jax.Array:
    """[B, T, S] bool."""
    return self.mask_at(num_tokens, jnp.arange(num_slots))

  def mask_at(self, num_tokens: int, slots: jax.Array) -> jax.Array:
    """[B, T, len(slots)] bool: `mask` at the given slot indices only."""
    s = slots[None, None, :]
    query_slot = self.offset[:, None, None] + jnp.arange(num_tokens)[None, :, None]
    hidden = (s >= self.hidden_start[:, None, None]) & (s < self.hidden_stop[:, None, None])
    return (s <= query_slot) & (s < self.length[:, None, None]) & ~hidden


def write_slots(cache: KVCache, k: jax.Array, v: jax.Array, slot: jax.Array) -> KVCache:
  """Writes k, v [..., B, T, J, D] into a heads-first cache ([..., B, J, S, D] arrays: one
  layer's, or every layer's stacked) at slots slot..slot+T-1 of every row: one in-place
  dynamic-update-slice (a slot per row would compile to a scatter per layer and step)."""

  def write(buf, new):
    start = (0,) * (buf.ndim - 2) + (slot, 0)
    return jax.lax.dynamic_update_slice(buf, jnp.swapaxes(new, -3, -2).astype(buf.dtype), start)

  return KVCache(write(cache.k, k), write(cache.v, v))


def grouped_logits(qg, k, heads_first=False, scale=None, query_rows=False):
  """[B, J, R, T, S] float32 logits of grouped queries qg [B, T, J, R, D] over keys k
  ([B, S, J, D], or [B, J, S, D] with `heads_first`), times `scale` (default 1/sqrt(D));
  `query_rows`: see `dot_product_attention`."""
  scale = qg.shape[-1] ** -0.5 if scale is None else scale
  b, t, j, r, d = qg.shape
  if t == 1 and heads_first:  # one decode token: see `_grouped_values`
    f32 = jnp.float32
    logits = jnp.sum(qg[:, 0, :, :, None, :].astype(f32) * k[:, :, None].astype(f32), -1)
    return logits[:, :, :, None, :] * scale
  if t == 1 or not query_rows:
    eqn = "BTJRD,BJSD->BJRTS" if heads_first else "BTJRD,BSJD->BJRTS"
    return jnp.einsum(eqn, qg, k, preferred_element_type=jnp.float32) * scale
  q_rows = qg.transpose(0, 2, 3, 1, 4).reshape(b, j, r * t, d)
  logits = jnp.einsum("BJMD,BJSD->BJMS", q_rows, k if heads_first else k.transpose(0, 2, 1, 3),
                      preferred_element_type=jnp.float32)
  return logits.reshape(b, j, r, t, -1) * scale


def _grouped_values(probs, v, heads_first, query_rows=False):
  """[B, T, J, R, D] attention output of probs [B, J, R, T, S] over values v ([B, S, J, D],
  or [B, J, S, D] with `heads_first`); `query_rows`: see `dot_product_attention`."""
  b, j, r, t, s = probs.shape
  if t == 1 and heads_first:
    # One decode token over a heads-first cache: a multiply-reduce XLA fuses into one loop,
    # where the [S, D] x [D, R] batched dot ran XLA:CPU's naive dot emitter (SmolLM2, batch
    # 8, one core: 64 tokens 6.78 -> 6.62 s, the same text).
    out = jnp.sum(probs[:, :, :, 0, :, None].astype(v.dtype) * v[:, :, None], axis=-2)
    return out[:, None]
  if t == 1 or not query_rows:
    eqn = "BJRTS,BJSD->BTJRD" if heads_first else "BJRTS,BSJD->BTJRD"
    return jnp.einsum(eqn, probs.astype(v.dtype), v)
  out = jnp.einsum("BJMS,BJSD->BJMD", probs.reshape(b, j, r * t, s).astype(v.dtype),
                   v if heads_first else v.transpose(0, 2, 1, 3))
  return out.reshape(b, j, r, t, -1).transpose(0, 3, 1, 2, 4)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                          heads_first: bool = False,
                          blocks: Sequence[tuple[jax.Array, jax.Array, jax.Array]] = (),
                          query_rows: bool = False) -> jax.Array:
  """Softmax attention with grouped kv heads (reference implementation).

  Args:
    q: [B, T, H, D] queries.
    k, v: [B, S, J, D] keys and values ([B, J, S, D] with `heads_first`, a decode cache's
      layout); query head h reads kv head h // (H // J).
    mask: [B or 1, T, S] bool, True where a query may attend to a key.
    blocks: more keys and values in the same softmax, read where they are (never
      concatenated with k, v): (k [B, M, J, D], v [B, M, J, D], mask [B or 1, T, M])
      triples, such as MSA's routed memory or decode tokens' own k, v beside the cache.
    query_rows: several query tokens as one [R * T, D] x [D, S] matmul per sample and kv head
      on heads-first operands (k, v transposed here unless they are already), where the
      default is one 'BTJRD,BSJD->BJRTS' einsum. The same values; XLA:CPU runs it 2.2x
      faster (16 SmolLM2 documents of 128 tokens: one layer's attention 18.4 -> 13.7 ms).
      Inference passes True. The training forward keeps False: the gradients' rounding
      differs (within 1e-6 here), and the demo's recipe (configs/demo.py) trained with True
      answered 0.914-0.945 of the held-out questions instead of 1.000.

  Returns:
    [B, T, H, D] in q.dtype. Logits and softmax in float32, scale 1/sqrt(D).
  """
  b, t, h, d = q.shape
  j = k.shape[1 if heads_first else 2]
  if h % j:
    raise ValueError(f"query heads {h} not a multiple of kv heads {j}")
  qg = q.reshape(b, t, j, h // j, d)
  scale = d ** -0.5

  def masked(logits, m):
    return jnp.where(m[:, None, None, :, :], logits, MASK_VALUE)

  logits = masked(grouped_logits(qg, k, heads_first, scale, query_rows), mask)
  if not blocks:
    out = _grouped_values(jax.nn.softmax(logits, axis=-1), v, heads_first, query_rows)
    return out.reshape(b, t, h, d).astype(q.dtype)
  block_logits = [masked(grouped_logits(qg, bk, False, scale, query_rows), m)
                  for bk, _, m in blocks]
  top = logits.max(-1, keepdims=True)
  for x in block_logits:
    top = jnp.maximum(top, x.max(-1, keepdims=True))
  p = jnp.exp(logits - top)
  block_p = [jnp.exp(x - top) for x in block_logits]
  total = sum((x.sum(-1, keepdims=True) for x in block_p), p.sum(-1, keepdims=True))
  out = _grouped_values(p / total, v, heads_first, query_rows)
  for (_, bv, _), x in zip(blocks, block_p):
    out = out + _grouped_values(x / total, bv, False, query_rows)
  return out.reshape(b, t, h, d).astype(q.dtype)


class Attention(nn.Module):
  """GQA self-attention: projections, optional per-head q/k RMSNorm, RoPE, softmax, output.

  `project` and `output` are the two halves around the softmax, so MSA's attention (which
  mixes in memory keys) reuses the same parameters and math.
  """

  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  qk_norm: bool
  norm_eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    e, h, j, d = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.q_proj = layers.Einsum((e, h, d), ("embed", "q_heads", "head_dim"), **kw)
    self.k_proj = layers.Einsum((e, j, d), ("embed", "kv_heads", "head_dim"), **kw)
    self.v_proj = layers.Einsum((e, j, d), ("embed", "kv_heads", "head_dim"), **kw)
    self.o_proj = layers.Einsum((h, d, e), ("q_heads", "head_dim", "embed"), num_in=2, **kw)
    if self.qk_norm:
      self.q_norm = layers.RMSNorm(self.norm_eps, axis_name="head_dim", **kw)
      self.k_norm = layers.RMSNorm(self.norm_eps, axis_name="head_dim", **kw)

  def project(self, x: jax.Array,
              positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, T, E] at `positions` [B, T] -> q [B, T, H, D], k, v [B, T, J, D] (post-RoPE)."""
    q = self.q_proj("BTE,EHD->BTHD", x)
    k = self.k_proj("BTE,EJD->BTJD", x)
    v = self.v_proj("BTE,EJD->BTJD", x)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return (rope.apply_rope(q, positions, self.rope_theta),
            rope.apply_rope(k, positions, self.rope_theta), v)

  def output(self, out: jax.Array) -> jax.Array:
    """Attention output [B, T, H, D] -> [B, T, E]."""
    out = nn.with_logical_constraint(out, ("batch", "length", "q_heads", "head_dim"))
    return self.o_proj("BTHD,HDE->BTE", out)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: KVCache | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    return self.attend(x, positions, mask, cache, cache_index)

  def attend(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
             cache: KVCache | None = None,
             cache_index: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """Self-attention of x [B, T, E] under `mask` [B or 1, T, S]; with a cache ([B, S, J, D]
    arrays) the T new tokens are written at slots cache_index[b] + 0..T-1 first."""
    q, k, v = self.project(x, positions)
    if cache is not None:
      cache = update_cache(cache, k, v, cache_index)
      k, v = cache.k, cache.v
    return self.output(dot_product_attention(q, k, v, mask)), cache
