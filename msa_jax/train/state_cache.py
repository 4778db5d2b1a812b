"""Frozen-backbone states that MSA routers read, computed once and kept on disk.

A router layer i scores documents with `router_k_proj(attn_norm(h_i))` pooled over chunks of P
tokens and questions with `router_q_proj(attn_norm(h_i))` per query token, where h_i is the
residual stream entering layer i. With the backbone frozen these inputs never change, and the
pooling is a mean, which commutes with an affine projection:

  chunk_mean(W x + b) = W chunk_mean(x) + b.

So a router is trained on
  * `DocStates`: per router layer, the chunk means of attn_norm(h_i) of every document
    ([sum of chunk counts, E], each document's chunks contiguous, as in a `MemoryBank`);
  * `QueryStates`: per router layer, attn_norm(h_i) of every routing-query token of every prompt.
Documents run through the document stream exactly as `memory.encode.encode_documents` runs
them. Prompts run through the prompt stream without memory: exact for the first router layer;
at inference a later router layer's queries have also read the memory routed by earlier router
layers.

Each layer's states are stored under `<cache_dir>/<kind>-<key>/` (`states.npz` + `meta.json`,
written to a temporary folder and renamed, so an interrupted run leaves nothing half-written),
where `key` hashes everything they depend on: the backbone's config and the parameters the
stream reads (embedding and the layers below), the layer, P, the compute dtype and the token
ids (and prompt layout) of the inputs. A run with the same model and data loads the states
instead of recomputing them; one that adds a router layer computes only that layer's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.model import attention
from msa_jax.model import routing
from msa_jax.model.config import ModelConfig
from msa_jax.model.transformer import Transformer
from msa_jax.loading.pretrained import is_fresh

FORMAT = 1


@dataclasses.dataclass
class DocStates:
  """Pooled router inputs of M documents.

  Attributes:
    num_chunks: [M] chunks per document (ceil(length / P)).
    offsets: [M + 1] first row of each document in the per-layer arrays.
    chunks: {layer: [sum(num_chunks), E] float32} chunk means of attn_norm(h_layer).
    paths: {layer: where its states are stored}; reused: all loaded rather than computed.
  """

  num_chunks: np.ndarray
  offsets: np.ndarray
  chunks: dict[int, np.ndarray]
  paths: dict[int, Path]
  reused: bool


@dataclasses.dataclass
class QueryStates:
  """Router inputs of the routing-query tokens of Q prompts.

  Attributes:
    lengths: [Q] routing-query tokens per prompt; offsets: [Q + 1] their first rows.
    tokens: {layer: [sum(lengths), E] float32} attn_norm(h_layer) of those tokens, in order.
    paths, reused: as in `DocStates`.
  """

  lengths: np.ndarray
  offsets: np.ndarray
  tokens: dict[int, np.ndarray]
  paths: dict[int, Path]
  reused: bool


def params_digest(params, layer_ids: Sequence[int]) -> str:
  """sha256 over the backbone parameters that states of `layer_ids` depend on (embedding and
  layers 0..max(layer_ids), MSA additions excluded): every tensor's name, shape and up to
  65,536 evenly strided values."""
  digest = hashlib.sha256()
  for name in ["embed"] + [f"layers_{i}" for i in range(max(layer_ids) + 1)]:
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params[name])[0],
                             key=lambda kv: jax.tree_util.keystr(kv[0])):
      keys = tuple(str(getattr(k, "key", k)) for k in path)
      if is_fresh(keys):
        continue
      step = max(1, leaf.size // 65536)
      sample = np.asarray(jax.device_get(jnp.ravel(leaf)[::step]), np.float32)
      digest.update(f"{name}/{'/'.join(keys)}{tuple(leaf.shape)}".encode())
      digest.update(np.ascontiguousarray(sample).tobytes())
  return digest.hexdigest()


def _key(parts: dict) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _tokens_digest(*arrays) -> str:
  h = hashlib.sha256()
  for rows in arrays:
    for row in rows:
      h.update(np.asarray(row, np.int64).tobytes())
      h.update(b"|")
  return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _doc_fn(cfg: ModelConfig, layer_ids: tuple[int, ...], chunk_size: int, dtype):
  """jit(params, tokens [b, G], lengths [b]) -> {layer: chunk means [b, C, E] float32}."""
  backbone = Transformer(cfg, dtype=dtype)  # router projections in params are not read

  def run(params, tokens, lengths):
    b, g = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b, g))
    states = backbone.apply({"params": params}, tokens, lengths, positions, layer_ids,
                            method="document_states")
    return {i: routing.chunk_mean(x.astype(jnp.float32), lengths, chunk_size)
            for i, x in states.items()}

  return jax.jit(run)


@functools.lru_cache(maxsize=8)
def _query_fn(cfg: ModelConfig, layer_ids: tuple[int, ...], dtype):
  """jit(params, tokens [q, T], token_mask, positions) -> {layer: attn_norm(h) [q, T, E]}."""
  backbone = Transformer(cfg, dtype=dtype)

  def run(params, tokens, token_mask, positions):
    mask = attention.causal_mask(tokens.shape[1]) & token_mask[:, None, :]
    states = backbone.apply({"params": params}, tokens, positions, mask, layer_ids,
                            method="prompt_states")
    return {i: x.astype(jnp.float32) for i, x in states.items()}

  return jax.jit(run)


def _progress(stream, what: str, done: int, total: int, start: float) -> None:
  if stream is None:
    return
  elapsed = time.perf_counter() - start
  eta = elapsed / max(done, 1) * (total - done)
  print(f"[state cache] {what} {done}/{total} ({elapsed:.0f} s, ETA {eta:.0f} s)", file=stream,
        flush=True)


def _load(path: Path, key: str):
  meta_file = path / "meta.json"
  if not meta_file.is_file():
    return None
  meta = json.loads(meta_file.read_text())
  if meta.get("key") != key or meta.get("format") != FORMAT:
    return None
  with np.load(path / "states.npz") as f:
    return meta, {k: f[k] for k in f.files}


def _store(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  np.savez(tmp / "states.npz", **arrays)
  (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
  shutil.rmtree(path, ignore_errors=True)
  tmp.rename(path)


def _fingerprint(cfg: ModelConfig, params, layer_ids, dtype, **extra) -> dict:
  return dict(format=FORMAT, model=dataclasses.asdict(cfg), layers=list(layer_ids),
              params=params_digest(params, layer_ids), dtype=jnp.dtype(dtype).name, **extra)


def _per_layer(cache_dir, kind: str, fingerprints: dict[int, dict], compute, progress
               ) -> tuple[dict[int, np.ndarray], dict[int, Path], bool]:
  """Each layer's array from `<cache_dir>/<kind>-<key>` when stored, the missing ones from
  one `compute(missing layers)` pass, then stored. Returns (arrays, paths, all reused)."""
  keys = {i: _key(fp) for i, fp in fingerprints.items()}
  paths = {i: Path(cache_dir) / f"{kind}-{keys[i]}" for i in keys}
  arrays = {}
  for i in keys:
    loaded = _load(paths[i], keys[i])
    if loaded is not None:
      arrays[i] = loaded[1]["states"]
  missing = tuple(i for i in keys if i not in arrays)
  if missing:
    start = time.perf_counter()
    computed = compute(missing)
    seconds = round(time.perf_counter() - start, 1)
    for i in missing:
      _store(paths[i], dict(key=keys[i], format=FORMAT, fingerprint=fingerprints[i],
                            seconds=seconds), {"states": computed[i]})
      arrays[i] = computed[i]
  elif progress is not None:
    print(f"[state cache] {kind}: reusing {', '.join(str(p) for p in paths.values())}",
          file=progress, flush=True)
  return arrays, paths, not missing


def doc_states(cache_dir: str | Path, cfg: ModelConfig, params, layer_ids: Sequence[int],
               chunk_size: int, doc_tokens: Sequence[Sequence[int]], *, max_tokens: int,
               batch_size: int = 16, dtype=jnp.float32, progress=sys.stdout) -> DocStates:
  """The documents' pooled router inputs, per layer loaded from `cache_dir` or computed (all
  missing layers in one pass) and stored."""
  layer_ids = tuple(sorted(layer_ids))
  lengths = np.array([min(len(t), max_tokens) for t in doc_tokens], np.int64)
  if len(lengths) and lengths.min() < 1:
    raise ValueError(f"document {int(np.argmin(lengths))} has no tokens")
  docs = _tokens_digest([t[:max_tokens] for t in doc_tokens])
  fps = {i: _fingerprint(cfg, params, (i,), dtype, chunk_size=chunk_size, max_tokens=max_tokens,
                         docs=docs, num_docs=len(doc_tokens)) for i in layer_ids}
  num_chunks = -(-lengths // chunk_size)
  offsets = np.concatenate([[0], np.cumsum(num_chunks)])

  def compute(missing):
    fn = _doc_fn(cfg, missing, chunk_size, jnp.dtype(dtype))
    parts = {i: [] for i in missing}
    m, start = len(doc_tokens), time.perf_counter()
    for lo in range(0, m, batch_size):
      hi = min(lo + batch_size, m)
      tokens = np.zeros((batch_size, max_tokens), np.int32)
      lens = np.ones((batch_size,), np.int32)  # padding rows: one token, discarded
      for r, d in enumerate(range(lo, hi)):
        tokens[r, :lengths[d]] = doc_tokens[d][:max_tokens]
        lens[r] = lengths[d]
      out = jax.device_get(fn(params, jnp.asarray(tokens), jnp.asarray(lens)))
      for i, pooled in out.items():
        parts[i] += [np.asarray(pooled[r, :num_chunks[d]]) for r, d in enumerate(range(lo, hi))]
      if (lo // batch_size) % 20 == 0 or hi == m:
        _progress(progress, "documents", hi, m, start)
    e = cfg.embed_dim
    return {i: np.concatenate(v) if v else np.zeros((0, e), np.float32) for i, v in parts.items()}

  chunks, paths, reused = _per_layer(cache_dir, "docs", fps, compute, progress)
  return DocStates(num_chunks, offsets, chunks, paths, reused)


def query_states(cache_dir: str | Path, cfg: ModelConfig, params, layer_ids: Sequence[int],
                 tokens: np.ndarray, token_mask: np.ndarray, positions: np.ndarray,
                 query_mask: np.ndarray, *, batch_size: int = 32, dtype=jnp.float32,
                 progress=sys.stdout) -> QueryStates:
  """The routing-query tokens' router inputs of prompts laid out as an `engine.PromptBatch`
  ([Q, T] arrays), loaded from `cache_dir` or computed and stored."""
  layer_ids = tuple(sorted(layer_ids))
  tokens, token_mask = np.asarray(tokens, np.int32), np.asarray(token_mask, bool)
  positions, query_mask = np.asarray(positions, np.int32), np.asarray(query_mask, bool)
  query_mask = query_mask & token_mask
  lengths = query_mask.sum(1).astype(np.int64)
  if len(lengths) and lengths.min() < 1:
    raise ValueError(f"prompt {int(np.argmin(lengths))} has no routing-query token")
  prompts = _tokens_digest(tokens, token_mask, positions, query_mask)
  fps = {i: _fingerprint(cfg, params, (i,), dtype, prompts=prompts, num_prompts=len(tokens))
         for i in layer_ids}
  offsets = np.concatenate([[0], np.cumsum(lengths)])

  def compute(missing):
    fn = _query_fn(cfg, missing, jnp.dtype(dtype))
    parts = {i: [] for i in missing}
    q, start = len(tokens), time.perf_counter()
    for lo in range(0, q, batch_size):
      rows = np.arange(lo, lo + batch_size).clip(max=q - 1)  # pad with the last prompt
      out = jax.device_get(fn(params, jnp.asarray(tokens[rows]), jnp.asarray(token_mask[rows]),
                              jnp.asarray(positions[rows])))
      for i, x in out.items():
        parts[i] += [np.asarray(x[r][query_mask[p]])
                     for r, p in enumerate(range(lo, min(lo + batch_size, q)))]
      if (lo // batch_size) % 10 == 0 or lo + batch_size >= q:
        _progress(progress, "prompts", min(lo + batch_size, q), q, start)
    e = cfg.embed_dim
    return {i: np.concatenate(v) if v else np.zeros((0, e), np.float32) for i, v in parts.items()}

  states, paths, reused = _per_layer(cache_dir, "queries", fps, compute, progress)
  return QueryStates(lengths, offsets, states, paths, reused)


def size_bytes(states: DocStates | QueryStates) -> int:
  """Bytes on disk of a state set (all its layers)."""
  return sum(f.stat().st_size for p in states.paths.values() for f in p.iterdir() if f.is_file())


def describe(states: DocStates | QueryStates) -> str:
  """One line: where, how big, computed or reused."""
  folder = next(iter(states.paths.values())).parent
  return (f"{len(states.paths)} layer(s) in {folder}, {size_bytes(states) / 2 ** 20:.1f} MiB, "
          f"{'reused' if states.reused else 'computed'}")
