"""The MSA inference engine: bank routing and sparse generation (paper §3.4).

Stage 1 (documents -> a `MemoryBank`: `encode_documents`, `create_bank`, `encode_corpus`)
lives in `msa_jax.memory.encode`; the engine reads the bank it builds.

Stage 2 and 3, `MSAEngine`: the prompt stream runs layer by layer. Entering a router layer, the
layer's routing queries are scored against the whole bank (`routing.route`, or `route_sharded`
over a `memory` mesh axis), the top-k documents' pooled K/V blocks are gathered from the bank
(host memory) and moved to the device, and the prompt tokens at or after `memory_index` attend
to them next to their own keys, exactly as in the training forward. Decoding then reuses the
same routed blocks with a KV cache (the routing queries are the question's tokens, which the
generated tokens do not change).

Shapes: Q questions, T prompt tokens, S cache slots, K routed documents, Cm the bank's largest
chunk count, J kv heads, D head dim.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.inference import decode
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.memory import routing as bank_routing
from msa_jax.memory.bank import BankError, MemoryBank, fingerprint_diff
from msa_jax.memory.encode import bank_fingerprint, inference_msa
from msa_jax.model import attention
from msa_jax.model import msa as msa_lib
from msa_jax.model.batch import prompt_positions
from msa_jax.model.config import ModelConfig, MSAConfig
from msa_jax.model.msa import MSATransformer, RoutedBlocks
from msa_jax.validation import optional_flag

Dtype = Any


# --------------------------------------------------------------------------------------------
# Jitted stages of the model, one program per static configuration
# --------------------------------------------------------------------------------------------

# How many times each jitted stage has been traced (a test checks that calls do not retrace).
TRACES: collections.Counter = collections.Counter()


def _model(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype,
           scan_decode: bool | None = None) -> MSATransformer:
  """The engine's model; `msa` is already `inference_msa`'s (see `MSAEngine.__init__`)."""
  return MSATransformer(cfg, msa, dtype=dtype, scan_decode=scan_decode)


@functools.lru_cache(maxsize=64)
def _segment_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, start: int, stop: int,
                with_memory: bool, next_router: int | None):
  """jit(params, x, positions, own, memory, sees_memory) -> (x, [(k, v)] of layers
  start..stop-1, routing queries of layer `next_router` or None): one prefill segment, the
  router layer `start` reading `memory` when `with_memory`."""
  model = _model(cfg, msa, dtype)

  def run(params, x, positions, own, memory, sees_memory):
    TRACES["segment"] += 1
    variables = {"params": params}
    x, kvs = model.apply(variables, start, stop, x, positions, own,
                         {start: memory} if with_memory else None, sees_memory,
                         method="prompt_layers")
    rq = None
    if next_router is not None:
      rq = model.apply(variables, next_router, x, positions, method="routing_queries")
    return x, kvs, rq

  return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _router_layer_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, next_queries: bool):
  """jit(layer params, next layer params, x, positions, own, memory, sees_memory) -> (x,
  [(k, v)], the next router layer's routing queries or None): one router layer over its
  memory. Every router layer followed by a router layer (or by none) runs the same program,
  compiled once, where a `_segment_fn` per layer would compile one program per layer."""
  layer = msa_lib.MSADecoderLayer(cfg, msa.arch, True, msa.runtime.kernel_impl, dtype=dtype)

  def run(p, p_next, x, positions, own, memory, sees_memory):
    TRACES["router_layer"] += 1
    x, kv = layer.apply({"params": p}, x, positions, own, memory, sees_memory,
                        method="prompt")
    rq = None
    if next_queries:
      rq = layer.apply({"params": p_next}, x, positions, method="routing_queries")
    return x, [kv], rq

  return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _embed_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype):
  model = _model(cfg, msa, dtype)

  def run(params, tokens):
    TRACES["embed"] += 1
    return model.apply({"params": params}, tokens, method="embed_tokens")

  return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _head_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, num_slots: int):
  """jit(params, x, kvs) -> (logits, the prefill's decode cache of `num_slots` slots)."""
  model = _model(cfg, msa, dtype)

  def run(params, x, kvs):
    TRACES["head"] += 1
    cache = msa_lib.prefill_cache(kvs, num_slots)
    return model.apply({"params": params}, x, method="head"), cache

  return jax.jit(run)


# --------------------------------------------------------------------------------------------
# Stages 2 and 3: routing and sparse generation
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class PromptBatch:
  """Q questions laid out as the prompt part of an `MSABatch` (right-padded).

  Attributes:
    tokens: [Q, T] int32; token_mask: [Q, T] bool; positions: [Q, T] int32;
    query_mask: [Q, T] bool (the routing-query tokens); memory_index: [Q] int32.
  """

  tokens: jax.Array
  token_mask: jax.Array
  positions: jax.Array
  query_mask: jax.Array
  memory_index: jax.Array

  @classmethod
  def from_segments(cls, heads: Sequence[Sequence[int]], queries: Sequence[Sequence[int]],
                    tails: Sequence[Sequence[int]], *, position_offset: int, pad_id: int = 0,
                    length: int | None = None) -> PromptBatch:
    """Prompts `head | query | tail` (the query routes; memory is seen from the query on),
    with the official position layout (`prompt_positions`)."""
    rows = [list(h) + list(q) + list(t) for h, q, t in zip(heads, queries, tails)]
    if not rows or not all(len(q) for q in queries):
      raise ValueError("every prompt needs at least one routing-query token")
    t = max(map(len, rows)) if length is None else length
    if max(map(len, rows)) > t:
      raise ValueError(f"a prompt has {max(map(len, rows))} tokens, more than length={t}")
    n = len(rows)
    tokens = np.full((n, t), pad_id, np.int32)
    query_mask = np.zeros((n, t), bool)
    positions = np.zeros((n, t), np.int32)
    for r, (row, h, q) in enumerate(zip(rows, heads, queries)):
      tokens[r, :len(row)] = row
      query_mask[r, len(h):len(h) + len(q)] = True
      positions[r] = prompt_positions(t, len(h), position_offset)
    lengths = np.array(list(map(len, rows)))
    return cls(tokens=tokens, token_mask=np.arange(t) < lengths[:, None], positions=positions,
               query_mask=query_mask,
               memory_index=np.array([len(h) for h in heads], np.int32))


@flax.struct.dataclass
class RoutedMemory:
  """One router layer's routed documents for Q questions.

  Attributes:
    doc_indices: [Q, K] bank document indices by descending score.
    scores: [Q, K] their routing scores.
    selected: [Q, K] bool, valid slots.
    blocks: their pooled K/V chunks on the device ([Q, K*Cm, J, D], `RoutedBlocks`).
    doc_scores: [Q, M] the scores of every bank document (only with `keep_scores`), else None.
  """

  doc_indices: jax.Array
  scores: jax.Array
  selected: jax.Array
  blocks: RoutedBlocks
  doc_scores: jax.Array | None = None


@flax.struct.dataclass
class PrefillOutput:
  """logits [Q, T, V]; memory {router layer: RoutedMemory}; cache (the decode loop's: one
  KVCache of every layer's heads-first slots, [L, Q, J, S, D] arrays, `msa.prefill_cache`)."""

  logits: jax.Array
  memory: dict[int, RoutedMemory]
  cache: attention.KVCache


class MSAEngine:
  """Questions against a memory bank: routing (optionally Memory Parallel) and generation.

  The model runs through `MSATransformer`'s staged methods (the training forward's layers):
  prefill in one jitted segment per router layer (the layer reading its routed memory, the
  layers up to the next router layer and that layer's routing queries; one program shared by
  every router layer followed by a router layer), with routing against the bank between
  segments; generation in `decode.decode_loop`. With `msa.runtime.kernel_impl`
  resolving to Pallas, router layers attend to their routed blocks with the block-sparse
  kernel (interpret mode off GPU).

  Args:
    config, msa, params: the model (its fingerprint must match the bank's). The engine keeps
      `msa`'s architecture and runtime parts (`inference_msa`) as `self.msa`.
    bank: an opened `MemoryBank`.
    dtype: compute dtype.
    mesh: a mesh with a `memory` axis to shard the routing keys over (Memory Parallel), or
      None (one device).
    tile_chunks: routing tile size (chunks per step); None: `route`'s automatic tile on one
      device, `DEFAULT_TILE_CHUNKS` with a mesh (the bank's shard layout unit).
    check_fingerprint: refuse a bank encoded with another model or config.
    scan_decode: the decode steps' layer loop (`MSATransformer.scan_decode`): None unrolls
      it on a CPU backend (faster steps, a longer first compile: what evaluation and repeated
      questions want), True scans it (one SmolLM2 question, 16 tokens, `python -m msa_jax.bank
      ... :ask`: 26.0-28.2 -> 19.9-20.6 s on an empty compilation cache, 13.0-14.2 -> 12.2-12.4
      s on a warm one; 2-core AMD EPYC, 2026-12-06).
  """

  def __init__(self, config: ModelConfig, msa: MSAConfig, params, bank: MemoryBank, *,
               dtype: Dtype = jnp.float32, mesh=None, tile_chunks: int | None = None,
               check_fingerprint: bool = True, scan_decode: bool | None = None):
    self.scan_decode = optional_flag("scan_decode", scan_decode)
    msa = inference_msa(msa)
    self.config, self.msa, self.params, self.bank = config, msa, params, bank
    self.dtype = jnp.dtype(dtype)
    self.mesh = mesh
    self.tile_chunks = bank_routing.bank_tile_chunks(tile_chunks, mesh is not None)
    self.router_ids = msa.arch.router_layer_ids(config.num_layers)
    if check_fingerprint:
      expected = bank_fingerprint(config, msa.arch, params, self.dtype)
      diff = fingerprint_diff(bank.fingerprint, expected)
      if diff:
        raise BankError(f"bank {bank.path} was encoded with another model or config: "
                        + "; ".join(diff[:5]))
    if tuple(bank.layer_ids) != tuple(self.router_ids):
      raise BankError(f"bank layers {list(bank.layer_ids)} != router layers "
                      f"{list(self.router_ids)}")
    self._keys = {}
    counts = bank.chunk_counts
    self._chunk_counts = jnp.asarray(counts, jnp.int32)  # `route` skips counting chunk_doc
    self.max_chunks = int(counts.max()) if bank.num_docs else 0

  def _routing_keys(self, layer: int):
    """Device-resident routing keys (sharded over `memory` with a mesh) and chunk_doc."""
    if layer not in self._keys:
      keys = bank_routing.host_keys(self.bank.layer_arrays(layer)[0])
      chunk_doc = self.bank.chunk_doc()
      if self.mesh is not None:
        keys, chunk_doc = bank_routing.shard_bank(self.mesh, keys, chunk_doc,
                                                  tile_chunks=self.tile_chunks)
      else:
        keys, chunk_doc = jnp.asarray(keys), jnp.asarray(chunk_doc)
      self._keys[layer] = (keys, chunk_doc)
    return self._keys[layer]

  def route(self, layer: int, rq: jax.Array, query_mask: jax.Array,
            doc_mask: jax.Array | None = None) -> bank_routing.RouteResult:
    """Routes Q questions' routing queries [Q, T, H, D] against the whole bank, or against
    the documents `doc_mask` ([M] or [Q, M] bool, bank order) keeps."""
    if self.bank.num_docs == 0:
      raise BankError(f"bank {self.bank.path} is empty: add documents before asking questions")
    keys, chunk_doc = self._routing_keys(layer)
    arch = self.msa.arch
    kw = dict(top_k=arch.top_k, scale=arch.routing_scale(self.config.head_dim),
              head_reduce=arch.head_reduce, query_reduce=arch.query_reduce,
              chunk_reduce=arch.chunk_reduce, tile_chunks=self.tile_chunks,
              kernel_impl=self.msa.runtime.kernel_impl,
              doc_mask=None if doc_mask is None else jnp.asarray(doc_mask, bool))
    rq = rq.astype(self.bank.dtype)  # a bfloat16 bank routes in bfloat16
    if self.mesh is not None:
      return bank_routing.route_sharded(self.mesh, rq, query_mask, keys, chunk_doc,
                                        self.bank.num_docs, **kw)
    return bank_routing.route(rq, query_mask, keys, chunk_doc, self.bank.num_docs,
                              chunk_counts=self._chunk_counts, **kw)

  def _gather(self, layer: int, result: bank_routing.RouteResult,
              keep_scores: bool = False) -> RoutedMemory:
    """Moves the selected documents' pooled K/V blocks (only those) to the device, each
    question's documents in its own row: [Q, K*Cm, J, D]."""
    idx = np.asarray(result.indices)
    sel = np.asarray(result.selected)
    q, kk = idx.shape
    k, v, valid = self.bank.gather(layer, idx.reshape(-1), max_chunks=self.max_chunks)
    c = self.max_chunks
    shape = (q, kk * c) + k.shape[2:]
    num = np.where(sel, np.asarray(valid).reshape(q, kk, c).sum(-1), 0).astype(np.int32)
    blocks = RoutedBlocks(k=jnp.asarray(np.asarray(k, np.float32).reshape(shape), self.dtype),
                          v=jnp.asarray(np.asarray(v, np.float32).reshape(shape), self.dtype),
                          num_chunks=jnp.asarray(num))
    return RoutedMemory(doc_indices=result.indices, scores=result.scores,
                        selected=result.selected, blocks=blocks,
                        doc_scores=result.doc_scores if keep_scores else None)

  def prefill(self, prompts: PromptBatch, cache_len: int | None = None,
              keep_scores: bool = False, doc_mask=None) -> PrefillOutput:
    """The prompt stream over routed memory: logits of every prompt token, the routing of
    every router layer (with every document's score when `keep_scores`) and a decode cache of
    `cache_len` slots (default T). `doc_mask` ([M] or [Q, M] bool, or None: all) restricts
    every router layer's routing to the bank documents it keeps (`routing.route`).

    The prompts must be right-padded (as `PromptBatch.from_segments` makes them)."""
    cfg, msa, dt = self.config, self.msa, self.dtype
    tokens = jnp.asarray(prompts.tokens, jnp.int32)
    q, t = tokens.shape
    s = t if cache_len is None else cache_len
    if s < t:
      raise ValueError(f"cache_len={s} is shorter than the prompts ({t} tokens)")
    positions = jnp.asarray(prompts.positions, jnp.int32)
    token_mask = jnp.asarray(prompts.token_mask, bool)
    query_mask = jnp.asarray(prompts.query_mask, bool) & token_mask
    sees_memory = jnp.arange(t)[None, :] >= jnp.asarray(prompts.memory_index)[:, None]
    own = attention.OwnSlots.prefill(token_mask.sum(1))
    x = _embed_fn(cfg, msa, dt)(self.params, tokens)
    bounds = list(self.router_ids) + [cfg.num_layers]
    memory, kvs = {}, []
    x, seg_kvs, rq = _segment_fn(cfg, msa, dt, 0, bounds[0], False, bounds[0])(
        self.params, x, positions, own, None, None)
    kvs += seg_kvs
    for r, stop in zip(bounds[:-1], bounds[1:]):
      mem = self._gather(r, self.route(r, rq, query_mask, doc_mask), keep_scores)
      memory[r] = mem
      nxt = stop if stop < cfg.num_layers else None
      if stop == r + 1:  # the next layer is a router layer, or there is none
        fn = _router_layer_fn(cfg, msa, dt, nxt is not None)
        x, seg_kvs, rq = fn(msa_lib.layer_params(self.params, r),
                            None if nxt is None else msa_lib.layer_params(self.params, nxt),
                            x, positions, own, mem.blocks, sees_memory)
      else:
        x, seg_kvs, rq = _segment_fn(cfg, msa, dt, r, stop, True, nxt)(
            self.params, x, positions, own, mem.blocks, sees_memory)
      kvs += seg_kvs
    logits, cache = _head_fn(cfg, msa, dt, s)(self.params, x, kvs)
    return PrefillOutput(logits=logits, memory=memory, cache=cache)

  def generate(self, prompts: PromptBatch, sampling: SamplingConfig,
               rng: jax.Array | None = None, keep_scores: bool = False, doc_mask=None
               ) -> tuple[np.ndarray, np.ndarray, PrefillOutput]:
    """Prefill (`doc_mask`, `keep_scores` as there), then decode up to
    `sampling.max_new_tokens` tokens per question (`decode.decode_loop` over the routed
    memory).

    Returns:
      (tokens [Q, max_new_tokens] (pad after a stop), lengths [Q] (a final stop token
      included), the prefill output with the routing).
    """
    t = np.asarray(prompts.tokens).shape[1]
    pre = self.prefill(prompts, cache_len=decode.decode_slots(t, sampling),
                       keep_scores=keep_scores, doc_mask=doc_mask)
    lengths = np.asarray(prompts.token_mask).sum(1).astype(np.int32)
    last_pos = np.asarray(prompts.positions)[np.arange(len(lengths)), lengths - 1]
    rng = jax.random.key(0) if rng is None else rng
    fn = _decode_fn(self.config, self.msa, self.dtype, sampling, self.scan_decode)
    last = jnp.take_along_axis(pre.logits, jnp.asarray(lengths - 1)[:, None, None], axis=1)[:, 0]
    # Only what decoding reads: a bank of another size (doc_scores [Q, M]) must not retrace.
    blocks = {i: m.blocks for i, m in pre.memory.items()}
    out_tokens, out_lengths = fn(self.params, last, pre.cache, blocks, jnp.asarray(lengths),
                                 jnp.asarray(last_pos, jnp.int32), rng)
    return np.asarray(out_tokens), np.asarray(out_lengths), pre


@functools.lru_cache(maxsize=16)
def _decode_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, sampling: SamplingConfig,
               scan_decode: bool | None):
  """The jitted decode loop over fixed routed memory (see `MSAEngine.generate`)."""
  model = _model(cfg, msa, dtype, scan_decode)

  def run(params, last_logits, cache, blocks, lengths, last_pos, rng):
    TRACES["decode"] += 1
    prompt_slots = cache.k.shape[3] - sampling.max_new_tokens + 1
    return decode.decode_loop(model, params, sampling, last_logits, cache, lengths,
                              prompt_slots, last_pos, rng, memory=blocks)

  return decode.decode_jit(run)


def routed_doc_ids(bank: MemoryBank, memory: RoutedMemory) -> list[list[str]]:
  """The bank ids of each question's valid routed documents, best first."""
  idx, sel = np.asarray(memory.doc_indices), np.asarray(memory.selected)
  ids = bank.doc_ids
  return [[ids[int(d)] for d, s in zip(row, ok) if s] for row, ok in zip(idx, sel)]

