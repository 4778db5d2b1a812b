"""The MSA inference engine: memory encoding, bank routing and sparse generation (paper §3.4).

Stage 1, `encode_documents` / `encode_corpus`: every document runs once through the document
stream of the model (up to the last router layer; documents never see the prompt) and each
router layer's `MemoryBlocks` (pooled routing keys, pooled K and V) go into a `MemoryBank`.

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
import dataclasses
import functools
import hashlib
import itertools
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.inference import decode
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.memory import routing as bank_routing
from msa_jax.memory.bank import BankError, MemoryBank, fingerprint_diff
from msa_jax.model import attention
from msa_jax.model import msa as msa_lib
from msa_jax.model.batch import prompt_positions
from msa_jax.model.config import ModelConfig, MSAArch, MSAConfig
from msa_jax.model.msa import MSATransformer, RoutedBlocks
from msa_jax.validation import format_duration

Dtype = Any


# --------------------------------------------------------------------------------------------
# Jitted stages of the model, one program per static configuration
# --------------------------------------------------------------------------------------------

# How many times each jitted stage has been traced (a test checks that calls do not retrace).
TRACES: collections.Counter = collections.Counter()


def inference_msa(msa: MSAConfig) -> MSAConfig:
  """The parts of `msa` that inference reads: architecture and runtime (the loss part is the
  default), so a loss setting can neither change inference nor compile another program."""
  return MSAConfig(arch=msa.arch, runtime=msa.runtime)


def _model(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype) -> MSATransformer:
  return MSATransformer(cfg, inference_msa(msa), dtype=dtype)


@functools.lru_cache(maxsize=16)
def _encode_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, out_dtype: Dtype):
  """jit(params, tokens [b, G], lengths [b], positions [b, G]) -> {layer: MemoryBlocks [b, C]}
  in `out_dtype` (cast on the device: a bfloat16 bank moves half the bytes to the host)."""
  model = _model(cfg, msa, dtype)

  def run(params, tokens, lengths, positions):
    TRACES["encode"] += 1
    out = model.apply({"params": params}, tokens, lengths, positions, method="document_memory")
    return jax.tree.map(lambda a: a.astype(out_dtype), out)

  return jax.jit(run)


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
    cache = tuple(msa_lib.prefill_cache(kv, num_slots) for kv in kvs)
    return model.apply({"params": params}, x, method="head"), cache

  return jax.jit(run)


# --------------------------------------------------------------------------------------------
# Stage 1: memory encoding
# --------------------------------------------------------------------------------------------


def bank_fingerprint(cfg: ModelConfig, msa: MSAArch, params, dtype: Dtype) -> dict:
  """What a bank's contents depend on: the model config, the MSA architecture (`msa.arch`;
  loss and runtime settings do not change a bank) and the parameters that the document
  stream reads (embedding and layers up to the last router layer).

  The parameter digest hashes every such tensor's shape and up to 65,536 evenly strided
  values, so any other checkpoint (or a fine-tuned one) is told apart at little cost.
  """
  router_ids = msa.router_layer_ids(cfg.num_layers)
  digest = hashlib.sha256()
  names = ["embed"] + [f"layers_{i}" for i in range(max(router_ids) + 1)]
  for name in names:
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params[name])[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
      step = max(1, leaf.size // 65536)
      sample = jax.device_get(jnp.ravel(leaf)[::step].astype(jnp.float32))  # only the sample
      digest.update(f"{name}{jax.tree_util.keystr(path)}{leaf.shape}".encode())
      digest.update(np.ascontiguousarray(sample).tobytes())
  model = {k: v for k, v in dataclasses.asdict(cfg).items()}
  # `normalize_routing` is `cosine_routing` under the name banks written before have recorded.
  return dict(model=model, router_layers=list(router_ids), chunk_size=msa.chunk_size,
              decouple_router=msa.decouple_router, normalize_routing=msa.cosine_routing,
              compute_dtype=jnp.dtype(dtype).name, params=digest.hexdigest())


def progress_line(what: str, done: int, total: int | None, tokens: int, elapsed: float,
                  committed: int | None = None) -> str:
  """`[what] done/total documents (pct) | docs/s tokens/s | committed N | ETA`."""
  rate = done / max(elapsed, 1e-9)
  head = f"[{what}] {done:,}/{total:,} documents ({100 * done / max(total, 1):.1f}%)" \
      if total else f"[{what}] {done:,} documents"
  line = f"{head} | {rate:,.0f} docs/s {tokens / max(elapsed, 1e-9):,.0f} tokens/s"
  if committed is not None:
    line += f" | committed {committed:,}"
  if total and done:
    line += f" | ETA {format_duration((total - done) / rate)}"
  return line + f" | {format_duration(elapsed)} elapsed"


def _encode_batch(fn, params, doc_tokens: Sequence[Sequence[int]], starts: np.ndarray, *,
                  max_tokens: int, batch_size: int, chunk_size: int
                  ) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, np.ndarray]]]:
  """Up to `batch_size` documents through `fn` (padded to batch_size rows): (lengths, chunk
  counts, {layer: {"keys", "k", "v": [sum(counts), J, D]}}), each document's chunks in order."""
  n = len(doc_tokens)
  tokens = np.zeros((batch_size, max_tokens), np.int32)
  lens = np.ones((batch_size,), np.int32)  # padding rows: one token, discarded
  for r, toks in enumerate(doc_tokens):
    toks = np.asarray(toks[:max_tokens])
    tokens[r, :len(toks)] = toks
    lens[r] = len(toks)
  pos = np.zeros((batch_size,), np.int64)
  pos[:n] = starts
  positions = (pos[:, None] + np.arange(max_tokens)).astype(np.int32)
  out = jax.device_get(fn(params, tokens, lens, positions))
  lengths = lens[:n].astype(np.int64)
  counts = -(-lengths // chunk_size)
  some = next(iter(out.values())).keys
  valid = np.zeros(some.shape[:2], bool)
  valid[:n] = np.arange(some.shape[1])[None, :] < counts[:, None]
  arrays = {i: {name: np.asarray(getattr(mem, name))[valid] for name in ("keys", "k", "v")}
            for i, mem in out.items()}
  return lengths, counts, arrays


def _concat_arrays(parts: Sequence[dict[int, dict[str, np.ndarray]]]
                   ) -> dict[int, dict[str, np.ndarray]]:
  return {i: {name: np.concatenate([p[i][name] for p in parts]) for name in parts[0][i]}
          for i in parts[0]}


def encode_documents(cfg: ModelConfig, msa: MSAConfig, params, doc_tokens: Sequence[Sequence[int]],
                     *, max_tokens: int, batch_size: int = 16, dtype: Dtype = jnp.float32,
                     position_starts: Sequence[int] | None = None,
                     progress=sys.stderr) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
  """Runs documents through the document stream; returns what a `MemoryBank.add` takes.

  Args:
    cfg, msa, params: the model.
    doc_tokens: M token-id lists (each non-empty; longer ones are cut to `max_tokens`).
    max_tokens: G, the document slot length (one compiled program per (G, batch_size)).
    batch_size: documents per forward (the last batch is padded).
    dtype: compute dtype.
    position_starts: [M] first RoPE position of each document (global-RoPE ablation); None:
      document-wise positions 0..G-1 (the MSA default).
    progress: a stream for progress lines, or None.

  Returns:
    (lengths [M], num_chunks [M], {layer: {"keys", "k", "v": [sum(num_chunks), J, D]}}) with
    float32 numpy arrays, each document's chunks contiguous and in order.
  """
  m = len(doc_tokens)
  if max_tokens < 1 or batch_size < 1:
    raise ValueError(f"max_tokens={max_tokens} and batch_size={batch_size} must be >= 1")
  empty = [d for d in range(m) if len(doc_tokens[d]) < 1]
  if empty:
    raise ValueError(f"document {empty[0]} has no tokens")
  starts = np.zeros(m, np.int64) if position_starts is None else np.asarray(position_starts)
  if starts.shape != (m,):
    raise ValueError(f"position_starts must have shape ({m},), got {starts.shape}")
  fn = _encode_fn(cfg, inference_msa(msa), jnp.dtype(dtype), jnp.dtype(jnp.float32))
  parts, start, tokens = [], time.perf_counter(), 0
  every = max(1, (m // batch_size) // 10) * batch_size
  for lo in range(0, m, batch_size):
    hi = min(lo + batch_size, m)
    parts.append(_encode_batch(fn, params, doc_tokens[lo:hi], starts[lo:hi],
                               max_tokens=max_tokens, batch_size=batch_size,
                               chunk_size=msa.arch.chunk_size))
    tokens += int(parts[-1][0].sum())
    if progress is not None and (hi == m or hi % every == 0):
      print(progress_line("encode", hi, m, tokens, time.perf_counter() - start), file=progress,
            flush=True)
  if not parts:
    shape = (0, cfg.num_kv_heads, cfg.head_dim)
    return (np.zeros(0, np.int64), np.zeros(0, np.int64),
            {i: {n: np.zeros(shape, np.float32) for n in ("keys", "k", "v")}
             for i in msa.arch.router_layer_ids(cfg.num_layers)})
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
          _concat_arrays([p[2] for p in parts]))


def create_bank(path, cfg: ModelConfig, msa: MSAConfig, params, *, dtype: Dtype = jnp.float32,
                bank_dtype: str = "float32", overwrite: bool = False,
                metadata: dict | None = None, staged: bool = False) -> MemoryBank:
  """An empty bank whose fingerprint ties it to this model (`staged`: built beside the bank at
  `path`, published by `MemoryBank.publish`)."""
  return MemoryBank.create(
      path, fingerprint=bank_fingerprint(cfg, msa.arch, params, dtype),
      layer_ids=msa.arch.router_layer_ids(cfg.num_layers), num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, chunk_size=msa.arch.chunk_size, dtype=bank_dtype, overwrite=overwrite,
      metadata=metadata, staged=staged)


@dataclasses.dataclass(frozen=True)
class EncodeStats:
  """What one `encode_corpus` call did: documents and tokens added, wall seconds, commits."""

  docs: int
  tokens: int
  seconds: float
  commits: int

  @property
  def tokens_per_second(self) -> float:
    return self.tokens / max(self.seconds, 1e-9)


def encode_corpus(bank: MemoryBank, cfg: ModelConfig, msa: MSAConfig, params,
                  doc_ids: Iterable[str], doc_tokens: Iterable[Sequence[int]],
                  texts: Iterable[str | None] | None = None, *, max_tokens: int,
                  batch_size: int = 16, commit_every: int = 4096, commit_seconds: float = 30.0,
                  total: int | None = None, dtype: Dtype = jnp.float32,
                  progress=sys.stderr, progress_seconds: float = 10.0) -> EncodeStats:
  """Encodes documents (streamed) and adds them to `bank`, committing small increments.

  A commit (one atomic `MemoryBank.add`) happens at the end of the batch that brings the
  uncommitted documents to `commit_every` or their work to `commit_seconds`, whichever comes
  first, so a run that stops midway loses at most that much: the bank keeps every commit made,
  and a rerun can continue after them.

  Args:
    bank: an open bank (published or staged).
    doc_ids, doc_tokens, texts: parallel iterables (sequences or generators; texts None: none
      stored). Ids already in the bank are refused (before anything is encoded when `doc_ids`
      is a sequence, else at the commit that meets them).
    max_tokens, batch_size, dtype: as `encode_documents`.
    total: how many documents the iterables hold (default their length when they have one),
      for the progress line's percentage and ETA.
    progress: a stream for progress lines (one after the first batch, then at every commit and
      at least every `progress_seconds`), or None.

  Returns:
    The run's `EncodeStats`.
  """
  if max_tokens < 1 or batch_size < 1 or commit_every < 1 or not commit_seconds > 0:
    raise ValueError(f"max_tokens={max_tokens}, batch_size={batch_size} and "
                     f"commit_every={commit_every} must be >= 1 and commit_seconds="
                     f"{commit_seconds} > 0")
  if isinstance(doc_ids, Sequence):
    if total is None:
      total = len(doc_ids)
    present = set(bank.doc_ids)
    dup = [i for i in doc_ids if i in present]
    if dup:
      raise BankError(f"{len(dup)} document ids are already in the bank, e.g. {dup[0]!r}; "
                      "remove them first")
  docs = zip(doc_ids, doc_tokens, itertools.repeat(None) if texts is None else texts)
  fn = _encode_fn(cfg, inference_msa(msa), jnp.dtype(dtype), jnp.dtype(bank.dtype))
  start = last_commit = last_line = time.perf_counter()
  done = tokens = committed = commits = shown = 0
  pending: list[tuple[list, list, tuple]] = []

  def commit():
    nonlocal committed, commits, last_commit
    ids = [i for p in pending for i in p[0]]
    bank.add(ids, None if texts is None else [t for p in pending for t in p[1]],
             np.concatenate([p[2][0] for p in pending]),
             np.concatenate([p[2][1] for p in pending]),
             _concat_arrays([p[2][2] for p in pending]))
    committed += len(ids)
    commits += 1
    pending.clear()
    last_commit = time.perf_counter()

  while True:
    batch = list(itertools.islice(docs, batch_size))
    if not batch:
      break
    empty = [d for d, toks, _ in batch if len(toks) < 1]
    if empty:
      raise ValueError(f"document {empty[0]!r} has no tokens")
    out = _encode_batch(fn, params, [t for _, t, _ in batch], np.zeros(len(batch), np.int64),
                        max_tokens=max_tokens, batch_size=batch_size,
                        chunk_size=msa.arch.chunk_size)
    pending.append(([d for d, _, _ in batch], [t for _, _, t in batch], out))
    done += len(batch)
    tokens += int(out[0].sum())
    now = time.perf_counter()
    if done - committed >= commit_every or now - last_commit >= commit_seconds:
      commit()
    if progress is not None and (done == len(batch) or committed == done
                                 or now - last_line >= progress_seconds):
      print(progress_line("encode", done, total, tokens, now - start, committed),
            file=progress, flush=True)
      last_line, shown = now, committed
  if pending:
    commit()
  seconds = time.perf_counter() - start
  if progress is not None and shown != committed:
    print(progress_line("encode", done, total, tokens, seconds, committed), file=progress,
          flush=True)
  return EncodeStats(docs=done, tokens=tokens, seconds=seconds, commits=commits)


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
  """logits [Q, T, V]; memory {router layer: RoutedMemory}; cache (one heads-first KVCache
  per layer, the decode loop's layout: `msa.prefill_cache`)."""

  logits: jax.Array
  memory: dict[int, RoutedMemory]
  cache: tuple[attention.KVCache, ...]


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
    tile_chunks: routing tile size (chunks per step).
    check_fingerprint: refuse a bank encoded with another model or config.
  """

  def __init__(self, config: ModelConfig, msa: MSAConfig, params, bank: MemoryBank, *,
               dtype: Dtype = jnp.float32, mesh=None, tile_chunks: int = 512,
               check_fingerprint: bool = True):
    msa = inference_msa(msa)
    self.config, self.msa, self.params, self.bank = config, msa, params, bank
    self.dtype = jnp.dtype(dtype)
    self.mesh = mesh
    self.tile_chunks = tile_chunks
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
    self._chunk_doc = None
    self.max_chunks = int(bank.chunk_counts.max()) if bank.num_docs else 0

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

  def route(self, layer: int, rq: jax.Array, query_mask: jax.Array) -> bank_routing.RouteResult:
    """Routes Q questions' routing queries [Q, T, H, D] against the whole bank."""
    if self.bank.num_docs == 0:
      raise BankError(f"bank {self.bank.path} is empty: add documents before asking questions")
    keys, chunk_doc = self._routing_keys(layer)
    arch = self.msa.arch
    kw = dict(top_k=arch.top_k, scale=arch.routing_scale(self.config.head_dim),
              head_reduce=arch.head_reduce, query_reduce=arch.query_reduce,
              chunk_reduce=arch.chunk_reduce, tile_chunks=self.tile_chunks,
              kernel_impl=self.msa.runtime.kernel_impl)
    rq = rq.astype(self.bank.dtype)  # a bfloat16 bank routes in bfloat16
    if self.mesh is not None:
      return bank_routing.route_sharded(self.mesh, rq, query_mask, keys, chunk_doc,
                                        self.bank.num_docs, **kw)
    return bank_routing.route(rq, query_mask, keys, chunk_doc, self.bank.num_docs, **kw)

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
              keep_scores: bool = False) -> PrefillOutput:
    """The prompt stream over routed memory: logits of every prompt token, the routing of
    every router layer (with every document's score when `keep_scores`) and a decode cache of
    `cache_len` slots (default T).

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
      mem = self._gather(r, self.route(r, rq, query_mask), keep_scores)
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
               rng: jax.Array | None = None, keep_scores: bool = False
               ) -> tuple[np.ndarray, np.ndarray, PrefillOutput]:
    """Prefill, then decode up to `sampling.max_new_tokens` tokens per question
    (`decode.decode_loop` over the routed memory).

    Returns:
      (tokens [Q, max_new_tokens] (pad after a stop), lengths [Q] (a final stop token
      included), the prefill output with the routing).
    """
    t = np.asarray(prompts.tokens).shape[1]
    pre = self.prefill(prompts, cache_len=decode.decode_slots(t, sampling),
                       keep_scores=keep_scores)
    lengths = np.asarray(prompts.token_mask).sum(1).astype(np.int32)
    last_pos = np.asarray(prompts.positions)[np.arange(len(lengths)), lengths - 1]
    rng = jax.random.key(0) if rng is None else rng
    fn = _decode_fn(self.config, self.msa, self.dtype, sampling)
    last = jnp.take_along_axis(pre.logits, jnp.asarray(lengths - 1)[:, None, None], axis=1)[:, 0]
    # Only what decoding reads: a bank of another size (doc_scores [Q, M]) must not retrace.
    blocks = {i: m.blocks for i, m in pre.memory.items()}
    out_tokens, out_lengths = fn(self.params, last, pre.cache, blocks, jnp.asarray(lengths),
                                 jnp.asarray(last_pos, jnp.int32), rng)
    return np.asarray(out_tokens), np.asarray(out_lengths), pre


@functools.lru_cache(maxsize=16)
def _decode_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, sampling: SamplingConfig):
  """The jitted decode loop over fixed routed memory (see `MSAEngine.generate`)."""
  model = _model(cfg, msa, dtype)

  def run(params, last_logits, cache, blocks, lengths, last_pos, rng):
    TRACES["decode"] += 1
    prompt_slots = cache[0].k.shape[2] - sampling.max_new_tokens + 1
    return decode.decode_loop(model, params, sampling, last_logits, cache, lengths,
                              prompt_slots, last_pos, rng, memory=blocks)

  return jax.jit(run)


def routed_doc_ids(bank: MemoryBank, memory: RoutedMemory) -> list[list[str]]:
  """The bank ids of each question's valid routed documents, best first."""
  idx, sel = np.asarray(memory.doc_indices), np.asarray(memory.selected)
  ids = bank.doc_ids
  return [[ids[int(d)] for d, s in zip(row, ok) if s] for row, ok in zip(idx, sel)]

