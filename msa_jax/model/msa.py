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

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

import pallas_kernels
from msa_jax.model import attention
from msa_jax.model import layers
from msa_jax.model import losses
from msa_jax.model import routing
from msa_jax.model.batch import MSABatch
from msa_jax.model.config import ModelConfig, MSAConfig

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
      document of the batch (sample-major), with `MSAConfig.batch_negatives`; else None.
  """

  doc_scores: jax.Array
  chunk_scores: jax.Array
  indices: jax.Array
  selected: jax.Array
  batch_scores: jax.Array | None = None


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


def _use_pallas(impl: str, head_dim: int) -> bool:
  """"auto" takes the kernel on GPU when it supports the head dim (a power of two >= 16)."""
  supported = head_dim >= 16 and head_dim & (head_dim - 1) == 0
  return impl == "pallas" or (impl == "auto" and jax.default_backend() == "gpu" and supported)


def _xla_routed_attention(q, k, v, pooled_k, pooled_v, chunks, indices, selected, sees_memory,
                          self_mask):
  """Gathers the selected documents' chunks next to the prompt's own keys; dense attention.

  pooled_k/v [B, N, C, J, D], chunks [B, N, C], indices/selected [B, K], sees_memory [B, T],
  self_mask [B, T, T] -> [B, T, H, D].
  """
  b, kk = indices.shape
  c = chunks.shape[-1]

  def gather(x):  # [B, N, C, ...] -> [B, K*C, ...]
    picked = jnp.take_along_axis(x, indices.reshape((b, kk) + (1,) * (x.ndim - 2)), axis=1)
    return picked.reshape((b, kk * c) + x.shape[3:])

  mem_valid = gather(chunks) & jnp.repeat(selected, c, axis=1)  # [B, K*C]
  mask = jnp.concatenate([sees_memory[:, :, None] & mem_valid[:, None, :], self_mask], -1)
  return attention.dot_product_attention(
      q, jnp.concatenate([gather(pooled_k), k], 1), jnp.concatenate([gather(pooled_v), v], 1),
      mask)


def _pallas_routed_attention(q, k, v, pooled_k, pooled_v, chunks, indices, selected,
                             sees_memory, token_mask):
  """The same attention with the Pallas top-k block-sparse kernel, reading the selected
  documents' chunks in place (interpret mode off GPU). The prompt must be right-padded."""
  bank_k, bank_v, first, num = pallas_kernels.per_sample_memory_to_bank(
      pooled_k, pooled_v, chunks, indices, selected)
  return pallas_kernels.sparse_attention(
      q, k, v, bank_k, bank_v, first, num, memory_visible=sees_memory,
      kv_len=token_mask.sum(1).astype(jnp.int32), max_doc_chunks=chunks.shape[-1],
      interpret=jax.default_backend() != "gpu")


def _batch_scores(rq, query_mask, keys, chunks, msa: MSAConfig, head_dim: int) -> jax.Array:
  """[B, B * N] document scores of every sample's routing query against all documents of the
  batch: keys [B, N, C, J, D] and chunks [B, N, C] flattened to one memory of B * N."""
  b, n = chunks.shape[:2]
  flat = lambda x: jnp.broadcast_to(x.reshape((1, b * n) + x.shape[2:]),
                                    (b, b * n) + x.shape[2:])
  all_chunks = flat(chunks)
  s = routing.chunk_scores(rq, query_mask, flat(keys), all_chunks,
                           scale=msa.routing_scale(head_dim), head_reduce=msa.head_reduce,
                           query_reduce=msa.query_reduce)
  return routing.doc_scores(s, all_chunks, msa.chunk_reduce)


def _pallas_chunk_scores(rq, query_mask, keys, chunks, *, scale, head_reduce, query_reduce):
  """`routing.chunk_scores` through the fused Pallas routing kernel, one sample's documents
  at a time (vmap); the backward is the jnp function's (the kernel has no VJP of its own)."""
  b, n, c = chunks.shape
  kw = dict(scale=scale, head_reduce=head_reduce, query_reduce=query_reduce)

  def kernel(rq, query_mask, keys, chunks):
    def one(q, m, k, ch):  # one sample: its N*C chunks form the bank
      chunk_doc = jnp.where(ch, jnp.arange(n)[:, None], -1).reshape(n * c)
      s = pallas_kernels.routing_chunk_scores(
          q[None], m[None], k.reshape((n * c,) + k.shape[2:]), chunk_doc,
          interpret=jax.default_backend() != "gpu", **kw)
      return s.reshape(n, c)
    return jax.vmap(one)(rq, query_mask, keys, chunks)

  @jax.custom_vjp
  def scores(rq, keys):
    return kernel(rq, query_mask, keys, chunks)

  def fwd(rq, keys):
    return kernel(rq, query_mask, keys, chunks), (rq, keys)

  def bwd(res, g):
    _, vjp = jax.vjp(lambda q, k: routing.chunk_scores(q, query_mask, k, chunks, **kw), *res)
    return vjp(g)

  scores.defvjp(fwd, bwd)
  return scores(rq, keys)


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

  `__call__` is the training forward (in-batch routing). The inference engine calls the
  parts: `doc_attention` (documents -> output and `MemoryBlocks`), `routing_queries` and
  `prompt_attention` (prompt tokens over given memory blocks and a KV cache).
  """

  msa: MSAConfig = MSAConfig()
  is_router: bool = False

  def setup(self):
    super().setup()
    if self.is_router and self.msa.decouple_router:
      e, h, j, d = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
      kw = dict(use_bias=self.msa.router_bias, dtype=self.dtype, param_dtype=self.param_dtype)
      self.router_q_proj = layers.Einsum((e, h, d), ("embed", "q_heads", "head_dim"), **kw)
      self.router_k_proj = layers.Einsum((e, j, d), ("embed", "kv_heads", "head_dim"), **kw)

  def doc_attention(self, docs, doc_positions, doc_lengths):
    """Documents [B, N, G, E] -> (output [B, N, G, E], MemoryBlocks [B, N, C, ...] or None)."""
    b, n, g, e = docs.shape
    dq, dk, dv = self.project(docs.reshape(b * n, g, e), doc_positions.reshape(b * n, g))
    doc_valid = jnp.arange(g) < doc_lengths.reshape(b * n, 1)
    doc_out = attention.dot_product_attention(
        dq, dk, dv, attention.causal_mask(g) & doc_valid[:, None, :])
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
    if self.msa.normalize_routing:
      keys = routing.l2_normalize(keys)
    return doc_out, MemoryBlocks(keys=keys, k=pooled_k, v=pooled_v,
                                 chunks=routing.chunk_mask(doc_lengths, g, p))

  def _routing_queries(self, x, q):
    rq = self.router_q_proj("BTE,EHD->BTHD", x) if self.msa.decouple_router else q
    return routing.l2_normalize(rq) if self.msa.normalize_routing else rq

  def routing_queries(self, x, positions):
    """Prompt [B, T, E] at `positions` -> routing queries [B, T, H, D] (router layers)."""
    if self.msa.decouple_router:
      return self._routing_queries(x, None)
    return self._routing_queries(x, self.project(x, positions)[0])

  def prompt_attention(self, x, positions, mask, memory_k=None, memory_v=None,
                       memory_mask=None, cache=None, cache_index=None):
    """The prompt stream over given memory chunks (inference).

    Args:
      x: [B, T, E] normed prompt hidden states at `positions` [B, T].
      mask: [B, T, S] bool over the prompt's own keys (S = T, or the cache length).
      memory_k, memory_v: [B, M, J, D] routed pooled chunks, or None (no memory).
      memory_mask: [B, T, M] bool, which query sees which memory chunk.
      cache, cache_index: a KVCache and the slot of the first new token, as in `Attention`.

    Returns:
      (output [B, T, E], updated cache or None).
    """
    q, k, v = self.project(x, positions)
    if cache is not None:
      cache = attention.update_cache(cache, k, v, cache_index)
      k, v = cache.k, cache.v
    if memory_k is not None:
      k = jnp.concatenate([memory_k.astype(k.dtype), k], 1)
      v = jnp.concatenate([memory_v.astype(v.dtype), v], 1)
      mask = jnp.concatenate([memory_mask, jnp.broadcast_to(mask, memory_mask.shape[:2]
                                                             + mask.shape[2:])], -1)
    return self.output(attention.dot_product_attention(q, k, v, mask)), cache

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
    use_pallas = _use_pallas(self.msa.kernel_impl, self.head_dim)
    chunk_scores = (_pallas_chunk_scores if use_pallas else routing.chunk_scores)(
        rq, query_mask & token_mask, mem.keys, mem.chunks,
        scale=self.msa.routing_scale(self.head_dim), head_reduce=self.msa.head_reduce,
        query_reduce=self.msa.query_reduce)
    scores = routing.doc_scores(chunk_scores, mem.chunks, self.msa.chunk_reduce)
    indices, selected = routing.select_top_k(scores, doc_lengths > 0, self.msa.top_k)
    sees_memory = jnp.arange(t)[None, :] >= memory_index[:, None]  # [B, T]
    if use_pallas:
      out = _pallas_routed_attention(q, k, v, mem.k, mem.v, mem.chunks, indices, selected,
                                     sees_memory, token_mask)
    else:
      out = _xla_routed_attention(q, k, v, mem.k, mem.v, mem.chunks, indices, selected,
                                  sees_memory, self_mask)
    batch_scores = None
    if self.msa.batch_negatives:
      batch_scores = _batch_scores(rq, query_mask & token_mask, mem.keys, mem.chunks, self.msa,
                                   self.head_dim)
    route = Route(doc_scores=scores, chunk_scores=chunk_scores, indices=indices,
                  selected=selected, batch_scores=batch_scores)
    return doc_out, self.output(_pad_query_rows(out, token_mask)), route


class MSADecoderLayer(nn.Module):
  """Pre-norm block applied to both streams: h = x + attn(norm(x)); out = h + mlp(norm(h)).

  `__call__` is the training forward; `docs`, `routing_queries` and `prompt` are its parts
  for the inference engine (same parameters, same math).
  """

  config: ModelConfig
  msa: MSAConfig
  is_router: bool
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
        norm_eps=cfg.norm_eps, msa=self.msa, is_router=self.is_router, **kw)

  def _doc_mlp(self, docs, doc_y):
    b, n, g, e = docs.shape
    docs = docs + doc_y
    docs = docs + self.mlp(self.mlp_norm(docs.reshape(b * n, g, e))).reshape(b, n, g, e)
    return nn.with_logical_constraint(docs, ("batch", "docs", "length", "embed"))

  def _prompt_mlp(self, x, y):
    x = x + y
    x = x + self.mlp(self.mlp_norm(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def docs(self, docs, doc_positions, doc_lengths):
    """Document stream only: [B, N, G, E] -> (output, MemoryBlocks or None)."""
    doc_y, mem = self.attn.doc_attention(self.attn_norm(docs), doc_positions, doc_lengths)
    return self._doc_mlp(docs, doc_y), mem

  def routing_queries(self, x, positions):
    """Routing queries [B, T, H, D] of the prompt hidden states entering this layer."""
    return self.attn.routing_queries(self.attn_norm(x), positions)

  def prompt(self, x, positions, mask, memory_k=None, memory_v=None, memory_mask=None,
             cache=None, cache_index=None):
    """Prompt stream only, over given memory chunks; see `MSAAttention.prompt_attention`."""
    y, cache = self.attn.prompt_attention(self.attn_norm(x), positions, mask, memory_k,
                                          memory_v, memory_mask, cache, cache_index)
    return self._prompt_mlp(x, y), cache

  def __call__(self, docs, doc_positions, doc_lengths, x, positions, token_mask, query_mask,
               memory_index):
    doc_y, y, route = self.attn(
        self.attn_norm(docs), doc_positions, doc_lengths, self.attn_norm(x), positions,
        token_mask, query_mask, memory_index)
    return self._doc_mlp(docs, doc_y), self._prompt_mlp(x, y), route


class MSATransformer(nn.Module):
  """The MSA model: `MSABatch` -> `MSAOutput` (see the module docstring).

  Parameter paths are the backbone's (`embed`, `layers_{i}/...`, `final_norm`, `lm_head`) plus
  `layers_{i}/attn/router_{q,k}_proj` (kernel, and bias with `router_bias`) in router layers
  (decoupled mode) and `aux_bias` for the
  BCE aux loss, so a backbone checkpoint loads into it unchanged.
  """

  config: ModelConfig
  msa: MSAConfig = MSAConfig()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def example_inputs(self) -> tuple[MSABatch]:
    """The smallest inputs `init` accepts (parameters do not depend on their shape)."""
    return (example_batch(),)

  @nn.compact
  def __call__(self, batch: MSABatch, doc_logits: bool = False) -> MSAOutput:
    cfg, msa = self.config, self.msa
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, g, t = batch.shape
    doc_positions = batch.doc_positions
    if doc_positions is None:
      doc_positions = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b, n, g))
    token_mask = batch.token_mask.astype(bool)
    query_mask = batch.query_mask.astype(bool)
    doc_lengths = batch.doc_lengths.astype(jnp.int32)
    memory_index = batch.memory_index.astype(jnp.int32)

    embedder = layers.Embedder(cfg.vocab_size, cfg.embed_dim, name="embed", **kw)
    docs = embedder.encode(batch.doc_tokens)
    x = embedder.encode(batch.tokens)
    block = MSADecoderLayer
    if msa.remat:
      block = nn.remat(MSADecoderLayer, prevent_cse=True)
    router_ids = msa.router_layer_ids(cfg.num_layers)
    routes = {}
    for i in range(cfg.num_layers):
      docs, x, route = block(cfg, msa, i in router_ids, name=f"layers_{i}", **kw)(
          docs, doc_positions, doc_lengths, x, batch.positions,
          token_mask, query_mask, memory_index)
      if route is not None:
        routes[i] = route
    final_norm = layers.RMSNorm(cfg.norm_eps, name="final_norm", **kw)
    docs, x = final_norm(docs), final_norm(x)
    if cfg.tie_embeddings:
      head = embedder.decode
    else:
      lm_head = layers.Einsum((cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                              name="lm_head", **kw)
      head = functools.partial(lm_head, "BTE,EV->BTV")
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)
    logits = head(x).astype(out_dtype)
    d_logits = None
    if doc_logits:
      d_logits = head(docs.reshape(b * n, g, -1)).reshape(b, n, g, -1).astype(out_dtype)
    aux_bias = None
    if msa.aux_loss == "bce":
      aux_bias = self.param("aux_bias", nn.with_logical_partitioning(
          nn.initializers.constant(msa.bce_bias_init), ()), (), jnp.float32)
    return MSAOutput(logits=logits, routes=routes, hidden=x, doc_hidden=docs, doc_logits=d_logits,
                     aux_bias=aux_bias)


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
                   msa: MSAConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted total loss and its parts (official `MSAForCausalLM.forward`, training).

  total = lm_weight * L_LM + aux_weight * L_aux + answer_weight * L_answer, where L_LM is the
  shifted cross-entropy over all non-ignored labels of the batch, L_aux the mean over (aux
  layer, sample) pairs of the per-sample routing loss, and L_answer the cross-entropy on
  `answer_labels` of the samples in `answer_mask` (0 if absent). Metrics also hold routing
  recall@{1,5,10} averaged like L_aux.
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
  aux_ids = msa.aux_layer_ids(config.num_layers)
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
  total = msa.lm_weight * lm + msa.aux_weight * aux + msa.answer_weight * answer
  metrics.update(loss=total, lm_loss=lm, aux_loss=aux, answer_loss=answer)
  return total, metrics
