"""Stage 1 of MSA inference: documents -> the memory bank (paper section 3.4).

Every document runs once through the document stream of the model (up to the last router layer;
documents never see the prompt) and each router layer's `MemoryBlocks` (pooled routing keys,
pooled K and V) go into a `MemoryBank`:

  `encode_documents`  a list of documents -> (lengths, chunk counts, per-layer arrays), what
                      `MemoryBank.add` takes;
  `create_bank`       an empty bank fingerprinted to the model (`bank_fingerprint`);
  `encode_corpus`     documents streamed into a bank, committed in small atomic increments
                      (`EncodeStats`, progress lines by `progress_line`).

`encode_fn` is the jitted document stream, one program per static configuration (`TRACES`
counts its traces).
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

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.memory.bank import BankError, MemoryBank
from msa_jax.model.config import ModelConfig, MSAArch, MSAConfig
from msa_jax.model.msa import MSATransformer
from msa_jax.validation import format_duration

Dtype = Any

# How many times `encode_fn` has been traced (a test checks that calls do not retrace).
TRACES: collections.Counter = collections.Counter()


def inference_msa(msa: MSAConfig) -> MSAConfig:
  """The parts of `msa` that inference reads: architecture and runtime (the loss part is the
  default), so a loss setting can neither change inference nor compile another program."""
  return MSAConfig(arch=msa.arch, runtime=msa.runtime)


@functools.lru_cache(maxsize=16)
def encode_fn(cfg: ModelConfig, msa: MSAConfig, dtype: Dtype, out_dtype: Dtype):
  """jit(params, tokens [b, G], lengths [b], positions [b, G]) -> {layer: MemoryBlocks [b, C]}
  in `out_dtype` (cast on the device: a bfloat16 bank moves half the bytes to the host)."""
  model = MSATransformer(cfg, inference_msa(msa), dtype=dtype)

  def run(params, tokens, lengths, positions):
    TRACES["encode"] += 1
    out = model.apply({"params": params}, tokens, lengths, positions, method="document_memory")
    return jax.tree.map(lambda a: a.astype(out_dtype), out)

  return jax.jit(run)


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
  fn = encode_fn(cfg, msa, jnp.dtype(dtype), jnp.dtype(jnp.float32))
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
      head_dim=cfg.head_dim, chunk_size=msa.arch.chunk_size, dtype=bank_dtype,
      overwrite=overwrite,
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
  fn = encode_fn(cfg, msa, jnp.dtype(dtype), jnp.dtype(bank.dtype))
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
