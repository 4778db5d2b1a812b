"""The MSA model: the backbone with Memory Sparse Attention in its router layers.

Two streams run through every layer with the same weights:
  * documents [B, N, G]: causal attention within each document only, at document positions
    (0..G-1 unless the batch says otherwise), in every layer;
  * the prompt [B, T] (template, routing query, answer): causal among itself; in a router layer
    the tokens at or after `memory_index` also attend to the pooled K, V chunks of the top-k
    documents picked by that layer's router. Non-router layers give it no memory access.

A router layer pools the documents' post-RoPE keys and values over chunks of P tokens (partial
last chunks pooled over their real tokens), scores the pooled routing keys against the routing
queries (`routing.chunk_scores` -> `routing.doc_scores`) and keeps k = min(top_k, present).
The selection is discrete: routing parameters learn only through the aux loss.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp

import pallas_kernels
from msa_jax.model import attention
from msa_jax.model import layers
from msa_jax.model import losses
from msa_jax.model import routing
from msa_jax.model.batch import IGNORE, MSABatch
from msa_jax.model.config import ModelConfig, MSAArch, MSAConfig, MSALoss

Dtype = Any


@flax.struct.dataclass
class Route:
  """One router layer's routing result.

  Attributes:
    doc_scores: [B, N] float32 document scores, -inf for absent documents.
    chunk_scores: [B, N, C] float32 per-chunk scores (after the head and query reductions).
    indices: [B, K] selected document slots, by descending score.
    selected: [B, K] bool, slot i is used (i < min(top_k, documents present)).
    batch_scores: [B, B * N] float32 scores of each sample's routing query against every
      document of the batch (sample-major), with `MSALoss.batch_negatives`; else None.
    token_scores: [B, T, B * N] float32 scores of each prompt token's routing query on its
      own against every document of the batch, with `MSALoss.answer_query_weight`; else None.
    memory_logits: [B, T, H, N * C] float32 attention logits of each prompt token and query
      head over the chunks of all its sample's documents (document i's at i*C..), the
      attention's own q.k/sqrt(D) (float32's min where a chunk is absent), whether routed or
      not; with `MSALoss.answer_attention_weight`, else None.
  """

  doc_scores: jax.Array
  chunk_scores: jax.Array
  indices: jax.Array
  selected: jax.Array
  batch_scores: jax.Array | None = None
  token_scores: jax.Array | None = None
  memory_logits: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class LossOutputs:
  """What a router layer's training forward computes for the loss alone (`Route`'s optional
  fields), from the loss config (`of`); none of it changes logits or routing."""

  batch_scores: bool = False  # MSALoss.batch_negatives
  token_scores: bool = False  # MSALoss.answer_query_weight > 0
  memory_logits: bool = False  # MSALoss.answer_attention_weight > 0

  @classmethod
  def of(cls, loss: MSALoss) -> LossOutputs:
    return cls(batch_scores=loss.batch_negatives, token_scores=loss.answer_query_weight > 0,
               memory_logits=loss.answer_attention_weight > 0)


@flax.struct.dataclass
class MSAOutput:
  """Outputs of the MSA forward.

  Attributes:
    logits: [B, T, V] next-token logits of the prompt tokens (float32 or wider).
    routes: {router layer index: Route}.
    hidden: [B, T, E] final-normed hidden states of the prompt tokens.
    doc_hidden: [B, N, G, E] final-normed hidden states of the document tokens.
    doc_logits: [B, N, G, V] document-token logits, only when asked for (else None).
    aux_bias: the BCE aux loss's learned bias (None for other aux losses).
  """

  logits: jax.Array
  routes: dict[int, Route]
  hidden: jax.Array
  doc_hidden: jax.Array
  doc_logits: jax.Array | None = None
  aux_bias: jax.Array | None = None


def _pad_query_rows(out: jax.Array, valid: jax.Array) -> jax.Array:
  """Zeroes attention outputs of padding rows (officially 0; keeps them out of the MLP's way)."""
  return jnp.where(valid[..., None, None], out, 0).astype(out.dtype)


@flax.struct.dataclass
class RoutedBlocks:
  """The pooled K/V blocks of the K documents routed to each of B prompts, laid out per prompt.

  Attributes:
    k, v: [B, K*Cd, J, D]; document slot i holds its chunks at i*Cd .. i*Cd + num_chunks - 1.
    num_chunks: [B, K] int32, 0 for an unused slot.
  """

  k: jax.Array
  v: jax.Array
  num_chunks: jax.Array

  @property
  def max_doc_chunks(self) -> int:
    return self.k.shape[1] // self.num_chunks.shape[1]

  def valid(self) -> jax.Array:
    """[B, K*Cd] bool, the chunks that exist."""
    b, kk = self.num_chunks.shape
    c = self.max_doc_chunks
    return (jnp.arange(c)[None, None, :] < self.num_chunks[:, :, None]).reshape(b, kk * c)

  def kernel_tables(self):
    """The same blocks as the sparse attention kernel's flat bank and [B, K] tables (free
    reshapes): (bank_k [B*K*Cd, J, D], bank_v, doc_first_chunk, doc_num_chunks)."""
    b, kk = self.num_chunks.shape
    c = self.max_doc_chunks
    first = (jnp.arange(b * kk, dtype=jnp.int32) * c).reshape(b, kk)
    flat = (b * kk * c,) + self.k.shape[2:]
    return self.k.reshape(flat), self.v.reshape(flat), first, self.num_chunks.astype(jnp.int32)


def _kernel_attention(q, k, v, own: attention.OwnSlots, tables, memory_visible, *,
                      max_doc_chunks: int, heads_first: bool = False):
  """Memory blocks (kernel tables) and own kv in one softmax with the Pallas block-sparse
  kernel: the blocks are read by index where they are (interpret mode off GPU)."""
  bank_k, bank_v, first, num = tables
  dt = q.dtype
  return pallas_kernels.sparse_attention(
      q, k.astype(dt), v.astype(dt), bank_k.astype(dt), bank_v.astype(dt), first, num,
      memory_visible, own.offset, own.length, own.hidden_start, own.hidden_stop,
      max_doc_chunks=max_doc_chunks, kv_heads_first=heads_first,
      interpret=jax.default_backend() != "gpu")


def _memory_block(q, memory: RoutedBlocks, memory_visible):
  """The routed blocks as one (k, v, mask) block of `attention.dot_product_attention`."""
  mask = memory_visible[:, :, None] & memory.valid()[:, None, :]
  return memory.k.astype(q.dtype), memory.v.astype(q.dtype), mask


def routed_attention(q, k, v, own: attention.OwnSlots | jax.Array, memory: RoutedBlocks | None,
                     memory_visible: jax.Array | None, *, heads_first: bool, use_pallas: bool):
  """Prompt queries [B, T, H, D] over their own k, v ([B, S, J, D], or [B, J, S, D] with
  `heads_first`) as `own` says (`OwnSlots`, or a [B or 1, T, S] bool mask such as packed
  prompts' `attention.causal_mask(T, segment_ids)`) and, for the tokens in `memory_visible`
  [B, T], the routed `memory` blocks: one softmax, no concatenated copy (XLA or the Pallas
  kernel, which takes `OwnSlots` only)."""
  dense = isinstance(own, jax.Array)
  if memory is not None and use_pallas:
    if dense:
      raise ValueError("the Pallas sparse attention kernel takes OwnSlots, not a dense mask")
    return _kernel_attention(q, k, v, own, memory.kernel_tables(), memory_visible,
                             max_doc_chunks=memory.max_doc_chunks, heads_first=heads_first)
  t, s = q.shape[1], k.shape[2 if heads_first else 1]
  blocks = () if memory is None else [_memory_block(q, memory, memory_visible)]
  return attention.dot_product_attention(q, k, v, own if dense else own.mask(t, s),
                                         heads_first=heads_first, blocks=blocks,
                                         query_rows=True)


def _whole_batch(x: jax.Array) -> jax.Array:
  """[B, N, ...] per-sample memory -> [B, B * N, ...]: every sample sees all B * N documents."""
  b, n = x.shape[:2]
  return jnp.broadcast_to(x.reshape((1, b * n) + x.shape[2:]), (b, b * n) + x.shape[2:])


def _batch_scores(rq, query_mask, keys, chunks, msa: MSAArch, head_dim: int) -> jax.Array:
  """[B, B * N] document scores of every sample's routing query against all documents of the
  batch: keys [B, N, C, J, D] and chunks [B, N, C] flattened to one memory of B * N."""
  all_chunks = _whole_batch(chunks)
  s = routing.chunk_scores(rq, query_mask, _whole_batch(keys), all_chunks,
                           scale=msa.routing_scale(head_dim), head_reduce=msa.head_reduce,
                           query_reduce=msa.query_reduce)
  return routing.doc_scores(s, all_chunks, msa.chunk_reduce)


def _token_scores(rq, keys, chunks, msa: MSAArch, head_dim: int) -> jax.Array:
  """[B, T, B * N] document scores of each prompt token's routing query on its own against
  all documents of the batch (keys [B, N, C, J, D], chunks [B, N, C])."""
  s = routing.token_chunk_scores(rq, _whole_batch(keys), scale=msa.routing_scale(head_dim),
                                 head_reduce=msa.head_reduce)  # [B, T, B * N, C]
  return routing.doc_scores(s, _whole_batch(chunks)[:, None], msa.chunk_reduce)


def _gather_routed(a: jax.Array, indices: jax.Array) -> jax.Array:
  """Per-sample chunk arrays a [B, N, C, ...] -> the routed documents' `indices` [B, K]
  chunks, [B, K * C, ...] (slot i's at i*C ..)."""
  (b, kk), c = indices.shape, a.shape[2]
  picked = jnp.take_along_axis(a, indices.reshape((b, kk) + (1,) * (a.ndim - 2)), axis=1)
  return picked.reshape((b, kk * c) + a.shape[3:])


def _memory_logits(q, mem: MemoryBlocks) -> jax.Array:
  """[B, T, H, N * C] attention logits of the prompt queries q [B, T, H, D] over the pooled
  keys of all N documents of their sample (float32's min where a chunk is absent), as
  `attention.dot_product_attention` computes them for the routed ones."""
  b, t, h, d = q.shape
  n, c, j = mem.k.shape[1:4]
  keys = mem.k.reshape(b, n * c, j, d).astype(q.dtype)
  logits = attention.grouped_logits(q.reshape(b, t, j, h // j, d), keys)
  logits = logits.reshape(b, h, t, n * c).transpose(0, 2, 1, 3)  # heads j-major, as q's
  return jnp.where(mem.chunks.reshape(b, 1, 1, n * c), logits, attention.MASK_VALUE)


def _pallas_chunk_scores(rq, query_mask, keys, chunks, *, scale, head_reduce, query_reduce):
  """`routing.chunk_scores` through the fused Pallas routing kernel, one sample's documents
  at a time (vmap); the kernel's own custom VJP gives the (XLA) backward."""
  n, c = chunks.shape[1:]

  def one(q, m, k, ch):  # one sample: its N*C chunks form the bank
    chunk_doc = jnp.where(ch, jnp.arange(n)[:, None], -1).reshape(n * c)
    s = pallas_kernels.routing_chunk_scores(
        q[None], m[None], k.reshape((n * c,) + k.shape[2:]), chunk_doc, scale=scale,
        head_reduce=head_reduce, query_reduce=query_reduce,
        interpret=jax.default_backend() != "gpu")
    return s.reshape(n, c)

  return jax.vmap(one)(rq, query_mask, keys, chunks)


@flax.struct.dataclass
class MemoryBlocks:
  """A router layer's view of documents: pooled chunks, what the memory bank stores.

  Attributes:
    keys: [..., C, J, D] pooled routing keys (L2-normalised when the config says so).
    k, v: [..., C, J, D] pooled post-RoPE attention keys and values.
    chunks: [..., C] bool, existing chunks.
  """

  keys: jax.Array
  k: jax.Array
  v: jax.Array
  chunks: jax.Array


class MSAAttention(attention.Attention):
  """Attention over both streams; in a router layer, the prompt also reads routed memory.

  `__call__` is the training forward (in-batch routing). Its parts, which the inference engine
  calls through `MSATransformer`'s staged methods: `doc_attention` (documents -> output and
  `MemoryBlocks`), `routing_queries` and `prompt_attention` (prompt tokens over given routed
  blocks, with a decode cache).
  """

  msa: MSAArch = MSAArch()
  is_router: bool = False
  kernel_impl: str = "auto"  # MSARuntime.kernel_impl
  loss_outputs: LossOutputs = LossOutputs()

  def setup(self):
    super().setup()
    if self.is_router and self.msa.decouple_router:
      e, h, j, d = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
      kw = dict(use_bias=self.msa.router_bias, dtype=self.dtype, param_dtype=self.param_dtype)
      self.router_q_proj = layers.Einsum((e, h, d), ("embed", "q_heads", "head_dim"), **kw)
      self.router_k_proj = layers.Einsum((e, j, d), ("embed", "kv_heads", "head_dim"), **kw)

  @property
  def use_pallas(self) -> bool:
    return pallas_kernels.resolves_to_pallas(self.kernel_impl, self.head_dim)

  def doc_attention(self, docs, doc_positions, doc_lengths, query_rows=False):
    """Documents [B, N, G, E] -> (output [B, N, G, E], MemoryBlocks [B, N, C, ...] or None);
    `query_rows` (inference): see `attention.dot_product_attention`."""
    b, n, g, e = docs.shape
    dq, dk, dv = self.project(docs.reshape(b * n, g, e), doc_positions.reshape(b * n, g))
    doc_valid = jnp.arange(g) < doc_lengths.reshape(b * n, 1)
    doc_out = attention.dot_product_attention(
        dq, dk, dv, attention.causal_mask(g) & doc_valid[:, None, :], query_rows=query_rows)
    doc_out = self.output(_pad_query_rows(doc_out, doc_valid)).reshape(b, n, g, e)
    if not self.is_router:
      return doc_out, None
    p = self.msa.chunk_size
    shape5 = (b, n, g) + dk.shape[2:]
    pooled_k = routing.chunk_mean(dk.reshape(shape5), doc_lengths, p)  # [B, N, C, J, D]
    pooled_v = routing.chunk_mean(dv.reshape(shape5), doc_lengths, p)
    if self.msa.decouple_router:
      keys = routing.chunk_mean(self.router_k_proj("BNGE,EJD->BNGJD", docs), doc_lengths, p)
    else:
      keys = pooled_k
    if self.msa.cosine_routing:
      keys = routing.l2_normalize(keys)
    return doc_out, MemoryBlocks(keys=keys, k=pooled_k, v=pooled_v,
                                 chunks=routing.chunk_mask(doc_lengths, g, p))

  def _routing_queries(self, x, q):
    rq = self.router_q_proj("BTE,EHD->BTHD", x) if self.msa.decouple_router else q
    return routing.l2_normalize(rq) if self.msa.cosine_routing else rq

  def routing_queries(self, x, positions):
    """Prompt [B, T, E] at `positions` -> routing queries [B, T, H, D] (router layers)."""
    if self.msa.decouple_router:
      return self._routing_queries(x, None)
    return self._routing_queries(x, self.project(x, positions)[0])

  def prompt_attention(self, x, positions, own: attention.OwnSlots | jax.Array,
                       memory: RoutedBlocks | None = None, memory_visible=None):
    """The prompt stream over given routed blocks (inference), without a cache.

    Args:
      x: [B, T, E] normed prompt hidden states at `positions` [B, T].
      own: which own kv slots each token sees (see `routed_attention`).
      memory: the routed blocks (router layers), or None (no memory).
      memory_visible: [B, T] bool, the tokens that see the memory.

    Returns:
      (output [B, T, E], the T tokens' (k, v) [B, T, J, D] as a KVCache).
    """
    q, k, v = self.project(x, positions)
    out = routed_attention(q, k, v, own, memory, memory_visible, heads_first=False,
                           use_pallas=self.use_pallas)
    return self.output(out), attention.KVCache(k, v)

  def decode_attention(self, x, positions, own: attention.OwnSlots, memory, memory_visible,
                       cache: attention.KVCache, slot):
    """`prompt_attention` of T new tokens over this layer's decode cache ([B, J, S, D]
    arrays), as if their k, v were written at the shared slots slot..slot+T-1 first: the
    cache is only read (slots from `slot` on hidden) and the new k, v join the same softmax
    where they are, so a scan of the layers copies no cache slice (`LayerStack.decode_step`
    writes every layer's at once). The Pallas kernel (routed memory, `use_pallas`) reads own
    kv from one buffer: there the new k, v are written into this layer's slice first.
    Returns (output [B, T, E], the new tokens' (k, v) [B, T, J, D] as a KVCache)."""
    q, k, v = self.project(x, positions)
    if memory is not None and self.use_pallas:
      written = attention.write_slots(cache, k, v, slot)
      out = routed_attention(q, written.k, written.v, own, memory, memory_visible,
                             heads_first=True, use_pallas=True)
      return self.output(out), attention.KVCache(k, v)
    t, s = x.shape[1], cache.k.shape[2]
    old = own.mask(t, s) & (jnp.arange(s) < slot)[None, None, :]
    blocks = [(k, v, own.mask_at(t, slot + jnp.arange(t)))]
    if memory is not None:
      blocks.append(_memory_block(q, memory, memory_visible))
    out = attention.dot_product_attention(q, cache.k, cache.v, old, heads_first=True,
                                          blocks=blocks, query_rows=True)
    return self.output(out), attention.KVCache(k, v)

  def __call__(self, docs, doc_positions, doc_lengths, x, positions, token_mask, query_mask,
               memory_index):
    """Returns (document output [B, N, G, E], prompt output [B, T, E], Route or None)."""
    doc_out, mem = self.doc_attention(docs, doc_positions, doc_lengths)
    t = x.shape[1]
    q, k, v = self.project(x, positions)
    self_mask = attention.causal_mask(t) & token_mask[:, None, :]
    if not self.is_router:
      out = attention.dot_product_attention(q, k, v, self_mask)
      return doc_out, self.output(_pad_query_rows(out, token_mask)), None

    rq = self._routing_queries(x, q)
    chunk_scores = (_pallas_chunk_scores if self.use_pallas else routing.chunk_scores)(
        rq, query_mask & token_mask, mem.keys, mem.chunks,
        scale=self.msa.routing_scale(self.head_dim), head_reduce=self.msa.head_reduce,
        query_reduce=self.msa.query_reduce)
    scores = routing.doc_scores(chunk_scores, mem.chunks, self.msa.chunk_reduce)
    indices, selected = routing.select_top_k(scores, doc_lengths > 0, self.msa.top_k)
    sees_memory = jnp.arange(t)[None, :] >= memory_index[:, None]  # [B, T]
    c = mem.chunks.shape[-1]
    if self.use_pallas:  # the kernel reads the selected documents' chunks in place
      tables = pallas_kernels.per_sample_memory_to_bank(mem.k, mem.v, mem.chunks, indices,
                                                        selected)
      # The prompt is right-padded: padding keys are the slots >= its length.
      own = attention.OwnSlots.prefill(token_mask.sum(1))
      out = _kernel_attention(q, k, v, own, tables, sees_memory, max_doc_chunks=c)
    else:  # gather the selected documents' chunks: [B, K*C, J, D]
      routed = _gather_routed(mem.chunks, indices) & jnp.repeat(selected, c, axis=1)
      mem_mask = sees_memory[:, :, None] & routed[:, None, :]
      memory = (_gather_routed(mem.k, indices), _gather_routed(mem.v, indices), mem_mask)
      out = attention.dot_product_attention(q, k, v, self_mask, blocks=[memory])
    wanted = self.loss_outputs
    batch_scores = None
    if wanted.batch_scores:
      batch_scores = _batch_scores(rq, query_mask & token_mask, mem.keys, mem.chunks, self.msa,
                                   self.head_dim)
    token_scores = None
    if wanted.token_scores:
      token_scores = _token_scores(rq, mem.keys, mem.chunks, self.msa, self.head_dim)
    memory_logits = None
    if wanted.memory_logits:
      memory_logits = _memory_logits(q, mem)
    route = Route(doc_scores=scores, chunk_scores=chunk_scores, indices=indices,
                  selected=selected, batch_scores=batch_scores, token_scores=token_scores,
                  memory_logits=memory_logits)
    return doc_out, self.output(_pad_query_rows(out, token_mask)), route


class MSADecoderLayer(nn.Module):
  """Pre-norm block applied to both streams: h = x + attn(norm(x)); out = h + mlp(norm(h)).

  `__call__` is the training forward; `docs`, `routing_queries` and `prompt` are its parts
  for the inference engine (same parameters, same math), `backbone` the plain block (the
  backbone `Transformer`'s layers are these with `is_router=False`).
  """

  config: ModelConfig
  msa: MSAArch
  is_router: bool
  kernel_impl: str = "auto"
  loss_outputs: LossOutputs = LossOutputs()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.attn_norm = layers.RMSNorm(cfg.norm_eps, **kw)
    self.mlp_norm = layers.RMSNorm(cfg.norm_eps, **kw)
    self.mlp = layers.MLP(cfg.mlp_dim, **kw)
    self.attn = MSAAttention(
        embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm,
        norm_eps=cfg.norm_eps, msa=self.msa, is_router=self.is_router,
        kernel_impl=self.kernel_impl, loss_outputs=self.loss_outputs, **kw)

  def _doc_mlp(self, docs, doc_y):
    b, n, g, e = docs.shape
    docs = docs + doc_y
    docs = docs + self.mlp(self.mlp_norm(docs.reshape(b * n, g, e))).reshape(b, n, g, e)
    return nn.with_logical_constraint(docs, ("batch", "docs", "length", "embed"))

  def _prompt_mlp(self, x, y):
    x = x + y
    x = x + self.mlp(self.mlp_norm(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def router_projections(self) -> None:
    """Applies the decoupled router projections (router layers) to one zero token and
    nothing else: under a mutable "params" collection it creates just their parameters."""
    if self.is_router and self.msa.decouple_router:
      x = jnp.zeros((1, 1, self.config.embed_dim), self.dtype)
      self.attn.router_q_proj("BTE,EHD->BTHD", x)
      self.attn.router_k_proj("BTE,EJD->BTJD", x)

  def docs(self, docs, doc_positions, doc_lengths):
    """Document stream only (inference): [B, N, G, E] -> (output, MemoryBlocks or None)."""
    doc_y, mem = self.attn.doc_attention(self.attn_norm(docs), doc_positions, doc_lengths,
                                         query_rows=True)
    return self._doc_mlp(docs, doc_y), mem

  def input_norm(self, x):
    """The attention input norm of the states entering this layer (a router's input)."""
    return self.attn_norm(x)

  def routing_queries(self, x, positions):
    """Routing queries [B, T, H, D] of the prompt hidden states entering this layer."""
    return self.attn.routing_queries(self.attn_norm(x), positions)

  def prompt(self, x, positions, own, memory=None, memory_visible=None):
    """Prompt stream only, over given routed blocks; see `MSAAttention.prompt_attention`."""
    y, kv = self.attn.prompt_attention(self.attn_norm(x), positions, own, memory,
                                       memory_visible)
    return self._prompt_mlp(x, y), kv

  def decode(self, x, positions, own, memory, memory_visible, cache, slot):
    """`prompt` over this layer's decode cache -> (output, the new tokens' KVCache); see
    `MSAAttention.decode_attention`."""
    y, kv = self.attn.decode_attention(self.attn_norm(x), positions, own, memory,
                                       memory_visible, cache, slot)
    return self._prompt_mlp(x, y), kv

  def backbone(self, x, positions, mask, cache=None, cache_index=None):
    """The plain block over a [B or 1, T, S] mask and an optional `Attention` cache."""
    y, cache = self.attn.attend(self.attn_norm(x), positions, mask, cache, cache_index)
    return self._prompt_mlp(x, y), cache

  def __call__(self, docs, doc_positions, doc_lengths, x, positions, token_mask, query_mask,
               memory_index):
    doc_y, y, route = self.attn(
        self.attn_norm(docs), doc_positions, doc_lengths, self.attn_norm(x), positions,
        token_mask, query_mask, memory_index)
    return self._doc_mlp(docs, doc_y), self._prompt_mlp(x, y), route


def prefill_cache(kvs, num_slots: int) -> attention.KVCache:
  """The prompt's own k, v of every layer ([B, T, J, D] each) as the decode cache: one KVCache
  of [L, B, J, S, D] arrays (heads before slots) with `num_slots` slots."""
  pad = ((0, 0), (0, 0), (0, 0), (0, num_slots - kvs[0].k.shape[1]), (0, 0))
  return attention.KVCache(*(jnp.pad(jnp.stack(a).transpose(0, 1, 3, 2, 4), pad)
                             for a in zip(*kvs)))


def _runs(ids, key) -> list[list[int]]:
  """`ids` split into maximal runs of consecutive layers with equal `key(i)`."""
  runs = []
  for i in ids:
    if runs and key(runs[-1][-1]) == key(i):
      runs[-1].append(i)
    else:
      runs.append([i])
  return runs


def stack_layers(trees: list):
  """Per-layer pytrees of one structure -> one pytree, each leaf stacked on a new leading
  `layers` axis (None leaves stay None)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_layers(tree, n: int) -> list:
  """`stack_layers`' inverse: the n per-layer pytrees."""
  return [jax.tree.map(lambda a: a[j], tree) for j in range(n)]


class LayerStack(nn.Module):
  """What the backbone and the MSA model share: embedding, a list of `MSADecoderLayer`s
  (`layers_{i}`), final norm and LM head (subclasses build them in `setup`), and the staged
  methods that inference calls with `model.apply(variables, ..., method=...)`:
  `embed_tokens`, `prompt_layers` (the prompt stream through a range of layers, over routed
  blocks, with a decode cache), `head` and `decode_step` (one program step of the single
  KV-cached decode loop, `msa_jax.inference.decode`).

  Every loop over layers is `_layer_range`. With `scan_layers` (the subclasses' field, on by
  default) it runs each homogeneous run of two or more layers (the same kind of layer, doing
  the same thing) as one `jax.lax.scan`, so the layers' math is traced and compiled once per
  run, not once per layer; what still grows with depth is per-parameter work (stacking each
  layer's weights, an optimizer's update per parameter). Off, it unrolls the layers (the same
  math; tests/test_scan_layers.py tests the two equal). `decode_step` follows the subclasses'
  `scan_decode` instead (None: unrolled on a CPU backend, else `scan_layers`).

  Parameter layout: the tree keeps one `layers_{i}` subtree per layer, the checkpoint layout
  (HF, GGUF, official MSA and orbax name the same paths), so nothing outside the model sees
  the scan. Inside a program, a run's parameters are stacked along a leading `layers` axis
  (`stack_layers`, one copy of the run's weights per call, which XLA frees after the scan)
  and the layer is applied functionally per slice. (Stacked parameters in the tree itself,
  MaxText's layout, would save that copy but need a stack/unstack at every boundary that
  names layers: HF, GGUF, official MSA, orbax, the engine's per-layer programs, router
  training.) Per-layer inputs (decode caches, routed blocks) are stacked the same way and
  per-layer outputs unstacked, so every method keeps its per-layer signature. Creating
  parameters and `capture_intermediates` (which need one module per layer) unroll; `remat`
  checkpoints the scan body (no CSE barrier: the scan is one already).
  """

  def _scans(self) -> bool:
    """Scan unless creating parameters (`init`, or `apply` with "params" mutable, as
    `loading.pretrained.init_missing` does) or capturing intermediates per layer module."""
    return (self.scan_layers and not self.is_initializing()
            and not self.is_mutable_collection("params")
            and not self.is_mutable_collection("intermediates"))

  def _scans_decode(self) -> bool:
    """Whether `decode_step` scans: where the layers scan at all (`_scans`), `scan_decode` when
    set, else not on a CPU backend (see `decode_step`)."""
    if self.scan_decode is not None:
      return self.scan_decode and self._scans()
    return self._scans() and jax.default_backend() != "cpu"

  def _layer_range(self, start: int, stop: int, fn, carry, per_layer=None, kind=None,
                   scan: bool | None = None):
    """carry, out_i = fn(kind(i), layer i, carry, per_layer(i)) for layers start..stop-1 in
    order; returns (carry, [out_i]).

    `fn` may depend on the layer index only through the static `kind(i)` (default None) and
    on its per-layer input `per_layer(i)` (a pytree, default None): consecutive layers of the
    same kind (router or not, and `kind`) are scanned with `scan_layers` (or `scan`, when
    given).
    """
    kind = kind or (lambda i: None)
    per_layer = per_layer or (lambda i: None)
    outs = []
    scan = self._scans() if scan is None else scan
    runs = (_runs(range(start, stop), lambda i: (self.layers[i].is_router, kind(i)))
            if scan else [[i] for i in range(start, stop)])
    for ids in runs:
      if len(ids) == 1:
        carry, out = fn(kind(ids[0]), self.layers[ids[0]], carry, per_layer(ids[0]))
        outs.append(out)
        continue
      carry, stacked = self._scan_run(ids, functools.partial(fn, kind(ids[0])), carry,
                                      stack_layers([per_layer(i) for i in ids]))
      outs += unstack_layers(stacked, len(ids))
    return carry, outs

  def _scan_run(self, ids, fn, carry, xs):
    """fn(layer, carry, x) over the layers `ids` (all alike) as one scan over their stacked
    parameters and the stacked per-layer inputs `xs`."""
    first = self.layers[ids[0]]
    layer = MSADecoderLayer(first.config, first.msa, first.is_router, first.kernel_impl,
                            first.loss_outputs, dtype=first.dtype,
                            param_dtype=first.param_dtype, parent=None)
    params = stack_layers([self.variables["params"][f"layers_{i}"] for i in ids])

    def body(carry, layer_xs):
      p, x = layer_xs
      return layer.apply({"params": p}, carry, x, method=fn)

    if self.remat_layers:
      body = jax.checkpoint(body, prevent_cse=False)
    return jax.lax.scan(body, carry, (params, xs))

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """Token ids [..., T] -> embeddings [..., T, E] in the compute dtype."""
    return self.embed.encode(tokens)

  def _logits(self, x):
    if self.config.tie_embeddings:
      out = self.embed.decode(x)
    else:
      out = self.lm_head("BTE,EV->BTV", x)
    return out.astype(jnp.promote_types(self.dtype, jnp.float32))

  def head(self, x: jax.Array) -> jax.Array:
    """Hidden states [B, T, E] leaving the last layer -> logits [B, T, V] (float32 or wider)."""
    return self._logits(self.final_norm(x))

  def prompt_layers(self, start: int, stop: int, x, positions, own,
                    memory: dict[int, RoutedBlocks] | None = None, memory_visible=None):
    """The prompt stream through layers start..stop-1, router layers over `memory[i]`.

    Args:
      x: [B, T, E] hidden states entering layer `start`, at `positions` [B, T].
      own, memory_visible: see `MSAAttention.prompt_attention`.
      memory: {router layer: RoutedBlocks} (a layer missing from it reads no memory).

    Returns:
      (hidden states leaving layer stop-1, each layer's (k, v) [B, T, J, D] of the T tokens).
    """
    memory = memory or {}

    def step(_, layer, x, blocks):
      return layer.prompt(x, positions, own, blocks, memory_visible)

    return self._layer_range(start, stop, step, x, memory.get, kind=lambda i: i in memory)

  def document_states(self, doc_tokens, doc_lengths, doc_positions,
                      layer_ids: tuple[int, ...]) -> dict[int, jax.Array]:
    """{i: attn_norm_i(h_i) [b, G, E]}: the normed document states entering layers
    `layer_ids` (what a router's key projection reads) of b documents [b, G]."""
    last = max(layer_ids)

    def step(kind, layer, docs, _):
      wanted, before_last = kind
      state = layer.input_norm(docs[0]) if wanted else None
      if before_last:
        docs, _ = layer.docs(docs, doc_positions[None], doc_lengths[None])
      return docs, state

    _, states = self._layer_range(0, last + 1, step, self.embed_tokens(doc_tokens)[None],
                                  kind=lambda i: (i in layer_ids, i < last))
    return {i: x for i, x in enumerate(states) if x is not None}

  def prompt_states(self, tokens, positions, mask,
                    layer_ids: tuple[int, ...]) -> dict[int, jax.Array]:
    """{i: attn_norm_i(h_i) [B, T, E]}: the normed prompt states entering layers `layer_ids`
    without memory, the tokens seeing each other under `mask` [B or 1, T, T]."""
    last = max(layer_ids)

    def step(kind, layer, x, _):
      wanted, before_last = kind
      state = layer.input_norm(x) if wanted else None
      if before_last:
        x, _ = layer.backbone(x, positions, mask)
      return x, state

    _, states = self._layer_range(0, last + 1, step, self.embed_tokens(tokens),
                                  kind=lambda i: (i in layer_ids, i < last))
    return {i: x for i, x in enumerate(states) if x is not None}

  def decode_step(self, tokens, positions, own: attention.OwnSlots, cache, slot,
                  memory: dict[int, RoutedBlocks] | None = None, memory_visible=None):
    """T new tokens [B, T] at `positions` through every layer over the decode cache (one
    KVCache of [L, B, J, S, D] arrays, `prefill_cache`), written at the shared `slot` ->
    (final hidden states [B, T, E] before the final norm, updated cache).

    The layers read the cache's slices (`MSADecoderLayer.decode`: the new tokens' k, v join
    the softmax beside it) and return only the new k, v [L, B, T, J, D], written at `slot` by
    one in-place dynamic-update-slice after them. Writing each layer's slice in the layer
    scan copied it (SmolLM2, batch 8, 64 tokens, 2 cores: 3.9 -> 3.1 s, the same tokens); so
    did a tuple of per-layer caches stacked and unstacked around the scan at every step.

    The layers are scanned as `_scans_decode` says: by default unrolled on a CPU backend,
    where XLA copies each scanned layer's slice of the stacked weights out of the stack at
    every step before its dots (~14 MB per SmolLM2 layer, a decode step reads all weights
    from DRAM), and scanned like `scan_layers` elsewhere. SmolLM2, 64 greedy tokens, AMD
    EPYC 7002 (2 cores, 2026-12-05, same process, 3 interleaved repeats, the same tokens):
    batch 8 5.03 -> 3.88 s, batch 1 3.39 -> 1.81 s (with the decode program's dots on
    Eigen, `decode.decode_jit`). The unrolled program costs more once per process: SmolLM2,
    3 prompts, 24 tokens, first call 5.2 -> 8.5 s compiling, 2.5 -> 3.8 s loading it from
    the compilation cache, later calls 1.74 -> 1.25 s; `scan_decode=True` favours one-shot
    latency."""
    memory = memory or {}

    def step(_, layer, x, layer_inputs):
      layer_cache, blocks = layer_inputs
      return layer.decode(x, positions, own, blocks, memory_visible, layer_cache, slot)

    x, new = self._layer_range(
        0, self.config.num_layers, step, self.embed_tokens(tokens),
        lambda i: (attention.KVCache(cache.k[i], cache.v[i]), memory.get(i)),
        kind=lambda i: i in memory, scan=self._scans_decode())
    new = stack_layers(new)
    return x, attention.write_slots(cache, new.k, new.v, slot)

  def _build(self, layer_msa: MSAConfig, router_ids):
    """Layers get the architecture and runtime parts (and from the loss only what their
    routes must hold for it, `LossOutputs`)."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = layers.Embedder(cfg.vocab_size, cfg.embed_dim, **kw)
    self.remat_layers = layer_msa.runtime.remat
    block = nn.remat(MSADecoderLayer, prevent_cse=True) if self.remat_layers else MSADecoderLayer
    self.layers = [block(cfg, layer_msa.arch, i in router_ids, layer_msa.runtime.kernel_impl,
                         LossOutputs.of(layer_msa.loss), **kw) for i in range(cfg.num_layers)]
    self.final_norm = layers.RMSNorm(cfg.norm_eps, **kw)
    if not cfg.tie_embeddings:
      self.lm_head = layers.Einsum((cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), **kw)


class MSATransformer(LayerStack):
  """The MSA model: `MSABatch` -> `MSAOutput` (see the module docstring).

  Parameter paths are the backbone's (`embed`, `layers_{i}/...`, `final_norm`, `lm_head`) plus
  `layers_{i}/attn/router_{q,k}_proj` (kernel, and bias with `router_bias`) in router layers
  (decoupled mode) and `aux_bias` for the BCE aux loss, so a backbone checkpoint loads into it
  unchanged. `scan_layers` scans runs of alike layers (see `LayerStack`); the tree is the same.
  `scan_decode` (None: unrolled on CPU, else as `scan_layers`) does the same for the decode
  steps of generation (`LayerStack.decode_step`).

  `__call__` is the training forward. The inference engine runs the same layers in stages
  (`LayerStack`'s methods plus `document_memory`, stage 1, and `routing_queries`).

  `msa` is the whole MSA config: its layers get `msa.arch` and `msa.runtime`; of `msa.loss`
  the model reads only what the training forward must produce for the loss (the BCE loss's
  `aux_bias` parameter, the batch scores of `batch_negatives`, the token scores of
  `answer_query_weight`, the memory logits of `answer_attention_weight`), never anything that
  changes logits or routing.
  """

  config: ModelConfig
  msa: MSAConfig = MSAConfig()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  scan_decode: bool | None = None

  def setup(self):
    self._build(self.msa, self.msa.arch.router_layer_ids(self.config.num_layers))
    if self.msa.loss.aux_loss == "bce":
      self.aux_bias = self.param("aux_bias", nn.with_logical_partitioning(
          nn.initializers.constant(self.msa.loss.bce_bias_init), ()), (), jnp.float32)

  def example_inputs(self) -> tuple[MSABatch]:
    """The smallest inputs `init` accepts (parameters do not depend on their shape)."""
    return (example_batch(),)

  def msa_additions(self) -> None:
    """Touches only what MSA adds to a backbone (every router layer's decoupled router
    projections, the BCE aux bias): applied with the "params" collection mutable it creates
    those parameters, valued as `init` values them (a parameter's key depends only on its
    module's path and its place among that module's parameters), without tracing the
    forward (`loading.pretrained.init_missing`)."""
    for i in self.msa.arch.router_layer_ids(self.config.num_layers):
      self.layers[i].router_projections()
    if self.msa.loss.aux_loss == "bce":
      _ = self.aux_bias  # created by `setup`, which this runs (router layers or not)

  def document_memory(self, doc_tokens, doc_lengths, doc_positions) -> dict[int, MemoryBlocks]:
    """Stage 1: b documents [b, G] (lengths [b], RoPE positions [b, G]) through the document
    stream up to the last router layer -> {router layer: MemoryBlocks [b, C, ...]}.

    The last router layer runs on its own, outside the scan of the layers before it, so XLA
    drops the output nobody reads (its attention output and MLP: ~3 % of SmolLM2's 30)."""
    last = max(self.msa.arch.router_layer_ids(self.config.num_layers))

    def step(_, layer, docs, __):
      return layer.docs(docs, doc_positions[None], doc_lengths[None])

    _, mems = self._layer_range(0, last + 1, step, self.embed_tokens(doc_tokens)[None],
                                kind=lambda i: i == last)
    return {i: jax.tree.map(lambda a: a[0], m) for i, m in enumerate(mems) if m is not None}

  def routing_queries(self, layer: int, x, positions) -> jax.Array:
    """Router layer `layer`'s routing queries [B, T, H, D] of the prompt states x [B, T, E]
    entering it."""
    return self.layers[layer].routing_queries(x, positions)

  def __call__(self, batch: MSABatch, doc_logits: bool = False) -> MSAOutput:
    b, n, g, t = batch.shape
    doc_positions = batch.doc_positions
    if doc_positions is None:
      doc_positions = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b, n, g))
    token_mask = batch.token_mask.astype(bool)
    query_mask = batch.query_mask.astype(bool)
    doc_lengths = batch.doc_lengths.astype(jnp.int32)
    memory_index = batch.memory_index.astype(jnp.int32)

    def step(_, layer, carry, __):
      docs, x = carry
      docs, x, route = layer(docs, doc_positions, doc_lengths, x, batch.positions, token_mask,
                             query_mask, memory_index)
      return (docs, x), route

    (docs, x), routes = self._layer_range(
        0, self.config.num_layers, step,
        (self.embed_tokens(batch.doc_tokens), self.embed_tokens(batch.tokens)))
    docs, x = self.final_norm(docs), self.final_norm(x)
    logits = self._logits(x)
    d_logits = None
    if doc_logits:
      d_logits = self._logits(docs.reshape(b * n, g, -1)).reshape(b, n, g, -1)
    return MSAOutput(logits=logits, routes={i: r for i, r in enumerate(routes) if r is not None},
                     hidden=x, doc_hidden=docs, doc_logits=d_logits,
                     aux_bias=self.aux_bias if self.msa.loss.aux_loss == "bce" else None)


def example_batch(batch: int = 1, num_docs: int = 1, doc_len: int = 1,
                  prompt_len: int = 1) -> MSABatch:
  """An all-zeros batch of the given shape with one routing-query token per sample."""
  b, n, g, t = batch, num_docs, doc_len, prompt_len
  return MSABatch(
      doc_tokens=jnp.zeros((b, n, g), jnp.int32), doc_lengths=jnp.full((b, n), g, jnp.int32),
      tokens=jnp.zeros((b, t), jnp.int32), token_mask=jnp.ones((b, t), bool),
      positions=jnp.zeros((b, t), jnp.int32), query_mask=jnp.ones((b, t), bool),
      memory_index=jnp.zeros((b,), jnp.int32))


def batch_negative_targets(batch: MSABatch) -> tuple[jax.Array, jax.Array]:
  """(documents [B, B * N] bool, labels [B, B * N]) of the batch-negative routing loss.

  Sample b's labels are its own route labels in its own block of N slots and 0 elsewhere; a
  slot of another sample holding a copy of one of b's positives (the same tokens and length)
  is left out (False in documents), so it counts neither as a positive nor as a negative.
  """
  b, n, g = batch.doc_tokens.shape
  present = (batch.doc_lengths > 0).reshape(1, b * n)
  own = jnp.eye(b, dtype=bool)[:, :, None]  # [B, B, 1]: sample b's own block
  labels = jnp.where(own, batch.route_labels[None, :, :], 0).reshape(b, b * n)
  flat_tokens = batch.doc_tokens.reshape(b * n, g)
  flat_lengths = batch.doc_lengths.reshape(b * n)
  same = ((batch.doc_tokens[:, :, None, :] == flat_tokens[None, None]).all(-1)
          & (batch.doc_lengths[:, :, None] == flat_lengths[None, None]))  # [B, N, B * N]
  copy_of_positive = (same & (batch.route_labels[:, :, None] > 0)).any(1)  # [B, B * N]
  docs = present & ~(copy_of_positive & (labels == 0))
  return docs, labels


def compute_losses(out: MSAOutput, batch: MSABatch, config: ModelConfig,
                   msa: MSALoss) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted total loss and its parts (official `MSAForCausalLM.forward`, training).

  total = lm_weight * L_LM + aux_weight * L_aux + answer_weight * L_answer, where L_LM is the
  shifted cross-entropy over all non-ignored labels of the batch, L_aux the mean over (aux
  layer, sample) pairs of the per-sample routing loss (plus `answer_query_weight` times the
  mean routing loss of the answer-predicting tokens, `_answer_query_loss`, and
  `answer_attention_weight` times their memory attention loss, `_answer_attention_loss`), and
  L_answer the cross-entropy on `answer_labels` of the samples in `answer_mask` (0 if
  absent). Metrics also hold routing recall@{1,5,10} averaged like L_aux. `msa` is the loss
  part of the MSA config (the router layers are those of `out.routes`).
  """
  metrics = {}
  if batch.labels is None:
    lm = jnp.zeros((), jnp.float32)
  else:
    lm, metrics["lm_targets"] = losses.lm_cross_entropy(out.logits, batch.labels)
  answer = jnp.zeros((), jnp.float32)
  if batch.answer_labels is not None and batch.answer_mask is not None:
    answer, _ = losses.lm_cross_entropy(out.logits, batch.answer_labels,
                                        weights=batch.answer_mask.astype(jnp.float32))
  aux = jnp.zeros((), jnp.float32)
  aux_ids = msa.aux_layer_ids(tuple(sorted(out.routes)), config.num_layers)
  docs = batch.doc_lengths > 0
  if batch.route_labels is not None and aux_ids:
    per_layer = []
    recalls = {k: [] for k in (1, 5, 10)}
    if msa.batch_negatives:
      batch_docs, batch_labels = batch_negative_targets(batch)
    for i in aux_ids:
      scores = out.routes[i].doc_scores
      if msa.batch_negatives:
        per_layer.append(losses.aux_loss(
            msa.aux_loss, out.routes[i].batch_scores, batch_docs, batch_labels,
            temperature=msa.temperature, gamma=msa.focal_gamma, bias=out.aux_bias))
      else:
        per_layer.append(losses.aux_loss(
            msa.aux_loss, scores, docs, batch.route_labels, temperature=msa.temperature,
            gamma=msa.focal_gamma, bias=out.aux_bias))
      for k in recalls:
        recalls[k].append(losses.routing_recall(scores, docs, batch.route_labels, k))
    aux = jnp.mean(jnp.stack(per_layer))
    for k, v in recalls.items():
      metrics[f"recall@{k}"] = jnp.mean(jnp.stack(v))
    if msa.answer_query_weight and batch.labels is not None:
      answer_query = _answer_query_loss(out, batch, aux_ids, batch_docs, batch_labels, msa)
      metrics["answer_query_loss"] = answer_query
      aux = aux + msa.answer_query_weight * answer_query
    if msa.answer_attention_weight and batch.labels is not None:
      answer_attention = _answer_attention_loss(out, batch, aux_ids)
      metrics["answer_attention_loss"] = answer_attention
      aux = aux + msa.answer_attention_weight * answer_attention
  total = msa.lm_weight * lm + msa.aux_weight * aux + msa.answer_weight * answer
  metrics.update(loss=total, lm_loss=lm, aux_loss=aux, answer_loss=answer)
  return total, metrics


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of x over the positions in `mask` (0 when there are none)."""
  return jnp.where(mask, x, 0.0).sum() / jnp.maximum(mask.sum(), 1)


def _predicts_answer(batch: MSABatch) -> jax.Array:
  """[B, T] bool: the prompt tokens whose next token is a label (the answer's predictors)."""
  return (losses.next_token_targets(batch.labels) != IGNORE) & batch.token_mask.astype(bool)


def _answer_attention_loss(out: MSAOutput, batch: MSABatch, aux_ids) -> jax.Array:
  """The memory attention loss of the tokens that predict an answer token: per query head,
  -log of the softmax mass (over the chunks of all the sample's documents, routed or not) on
  the positive documents' chunks, averaged over heads, those tokens and the aux layers."""
  n = batch.route_labels.shape[1]
  positive = batch.route_labels > 0
  weight = _predicts_answer(batch) & positive.any(1)[:, None]
  per_layer = []
  for i in aux_ids:
    logits = out.routes[i].memory_logits  # [B, T, H, N*C]
    on_positive = jnp.repeat(positive, logits.shape[-1] // n, axis=1)[:, None, None, :]
    per_head = (jax.nn.logsumexp(logits, axis=-1)
                - jax.nn.logsumexp(jnp.where(on_positive, logits, attention.MASK_VALUE), axis=-1))
    per_layer.append(_masked_mean(per_head.mean(-1), weight))
  return jnp.mean(jnp.stack(per_layer))


def _answer_query_loss(out: MSAOutput, batch: MSABatch, aux_ids, docs, labels,
                       msa: MSALoss) -> jax.Array:
  """The routing loss of the tokens that predict an answer token (each its own routing query
  against the batch's documents `docs` [B, B * N], `labels` [B, B * N]), averaged over those
  tokens and the aux layers."""
  b, t = batch.labels.shape
  predicts = _predicts_answer(batch)
  m = docs.shape[-1]
  rows = lambda a: jnp.broadcast_to(a[:, None], (b, t, m)).reshape(b * t, m)
  per_layer = []
  for i in aux_ids:
    per_token = losses.aux_loss(
        msa.aux_loss, out.routes[i].token_scores.reshape(b * t, m), rows(docs), rows(labels),
        temperature=msa.temperature, gamma=msa.focal_gamma, bias=out.aux_bias).reshape(b, t)
    per_layer.append(_masked_mean(per_token, predicts))
  return jnp.mean(jnp.stack(per_layer))


def layer_params(params, i: int):
  """Layer i's parameters in a model tree (for a jitted program of one `MSADecoderLayer`
  that every layer of the same kind shares, compiled once)."""
  return params[f"layers_{i}"]


def router_params(params, layer_ids) -> dict:
  """{layer: {"router_q_proj": {...}, "router_k_proj": {...}}} taken from a model tree."""
  return {i: {name: dict(params[f"layers_{i}"]["attn"][name])
              for name in ("router_q_proj", "router_k_proj")} for i in layer_ids}


def with_routers(params, routers: dict) -> dict:
  """The model tree `params` with the router projections replaced by `routers`."""
  flat = flax.traverse_util.flatten_dict(dict(params))
  for i, layer in routers.items():
    for name, leaves in layer.items():
      for leaf, value in leaves.items():
        path = (f"layers_{i}", "attn", name, leaf)
        if path not in flat:
          raise KeyError(f"the model has no parameter {'/'.join(path)}")
        flat[path] = jnp.asarray(value, flat[path].dtype)
  return flax.traverse_util.unflatten_dict(flat)
