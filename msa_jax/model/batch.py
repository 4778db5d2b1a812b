"""The MSA training batch: memory documents and the prompt/answer sequence, with static shapes.

One sample is N memory documents of up to G tokens each plus one sequence of T "prompt"
tokens (template, routing query, answer). Documents are processed independently (causal within
themselves, positions restarting at 0 by default), so `[B, N, G]` is ordinary batched attention.
The prompt sequence is causal; in router layers its tokens from `memory_index` on also attend to
the pooled chunks of the routed documents, which sit between `tokens[:memory_index]` and
`tokens[memory_index:]` in the official flat layout.

`check_batch` validates a host-side batch and raises `BatchError` naming the first bad field
and sample; the jitted forward itself never raises.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

IGNORE = -100  # label value the losses skip (the HF / PyTorch convention)


class BatchError(ValueError):
  """A batch that the MSA forward cannot process meaningfully."""


@flax.struct.dataclass
class MSABatch:
  """Inputs of the MSA training forward (all arrays; None for unused optional fields).

  Attributes:
    doc_tokens: [B, N, G] int32 document token ids (padding anywhere past `doc_lengths`).
    doc_lengths: [B, N] int32 tokens per document; 0 marks an unused document slot, and
      unused slots come after the sample's documents.
    tokens: [B, T] int32 prompt/answer token ids.
    token_mask: [B, T] bool, True for real tokens, which come first (right padding).
    positions: [B, T] int32 RoPE positions of the prompt tokens (e.g. the official layout:
      template head at 0..h-1, the rest from h + top_k on; see `prompt_positions`).
    query_mask: [B, T] bool, the routing-query tokens (official doc_id == 0).
    memory_index: [B] int32, prompt tokens at index >= memory_index[b] come after the memory
      and see the routed chunks in router layers; earlier ones (a template head) do not.
    labels: [B, T] int32 next-token labels (unshifted, as in HF), IGNORE where not trained.
    route_labels: [B, N] 0/1 routing targets, one per document slot (1: relevant document).
    doc_positions: [B, N, G] int32 document RoPE positions, or None for document-wise RoPE
      (0..G-1 in every document; see `global_doc_positions` for the ablation).
    answer_labels: [B, T] int32 labels of the optional answer loss, or None.
    answer_mask: [B] bool, samples that contribute to the answer loss, or None.
  """

  doc_tokens: jax.Array
  doc_lengths: jax.Array
  tokens: jax.Array
  token_mask: jax.Array
  positions: jax.Array
  query_mask: jax.Array
  memory_index: jax.Array
  labels: jax.Array | None = None
  route_labels: jax.Array | None = None
  doc_positions: jax.Array | None = None
  answer_labels: jax.Array | None = None
  answer_mask: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int, int, int]:
    """(B, N, G, T)."""
    b, n, g = self.doc_tokens.shape
    return b, n, g, self.tokens.shape[1]


def prompt_positions(num_tokens: int, head: int | np.ndarray, offset: int) -> np.ndarray:
  """The official position layout of the prompt sequence, [B, T] (or [T] for a scalar head).

  The first `head` tokens (template head) take positions 0..head-1; the memory sits at the
  next `offset` positions (officially offset = top_k, one per retrieved document), and the
  remaining tokens continue from head + offset.
  """
  head = np.asarray(head)
  t = np.arange(num_tokens)
  return np.where(t < head[..., None], t, t + offset).astype(np.int32)


def global_doc_positions(doc_lengths: jax.Array, num_tokens: int,
                         start: int | jax.Array = 0) -> jax.Array:
  """[B, N, G] positions that run on across a sample's documents (the global-RoPE ablation):
  document n starts where document n-1 ended, the first at `start`."""
  lengths = jnp.asarray(doc_lengths, jnp.int32)
  first = jnp.cumsum(lengths, axis=-1) - lengths + jnp.asarray(start, jnp.int32)[..., None]
  return first[..., None] + jnp.arange(num_tokens, dtype=jnp.int32)


def _np(x: Any) -> np.ndarray | None:
  return None if x is None else np.asarray(jax.device_get(x))


def check_batch(batch: MSABatch, *, vocab_size: int, need_route_labels: bool = False) -> None:
  """Raises BatchError on anything the forward would silently get wrong.

  Checks shapes and dtypes, token ids in [0, vocab_size), document lengths within [0, G] with
  unused slots last and at least one document per sample, right-padded prompts, at least one
  real routing-query
  token per sample, memory_index within [0, T], finite 0/1 routing labels with a positive
  among each sample's documents (when `need_route_labels`), and finite inputs throughout.
  """
  f = {name: _np(getattr(batch, name)) for name in batch.__dataclass_fields__}
  if f["doc_tokens"].ndim != 3:
    raise BatchError(f"doc_tokens must be [B, N, G], got shape {f['doc_tokens'].shape}")
  b, n, g = f["doc_tokens"].shape
  if f["tokens"].ndim != 2 or f["tokens"].shape[0] != b:
    raise BatchError(f"tokens must be [B={b}, T], got shape {f['tokens'].shape}")
  t = f["tokens"].shape[1]
  if n == 0 or g == 0:
    raise BatchError(f"no documents: doc_tokens has shape {(b, n, g)}")
  if t == 0:
    raise BatchError("no prompt tokens: tokens has shape "
                     f"{f['tokens'].shape}")
  expected = {"doc_lengths": (b, n), "token_mask": (b, t), "positions": (b, t),
              "query_mask": (b, t), "memory_index": (b,), "labels": (b, t),
              "route_labels": (b, n), "doc_positions": (b, n, g), "answer_labels": (b, t),
              "answer_mask": (b,)}
  for name, shape in expected.items():
    x = f[name]
    if x is None:
      continue
    if x.shape != shape:
      raise BatchError(f"{name} must have shape {shape}, got {x.shape}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
      bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
      raise BatchError(f"{name} has a non-finite value {x[bad]} at {bad}")
  for name in ("doc_tokens", "tokens", "doc_lengths", "positions", "memory_index", "labels",
               "doc_positions", "answer_labels"):
    if f[name] is not None and not np.issubdtype(f[name].dtype, np.integer):
      raise BatchError(f"{name} must be integers, got dtype {f[name].dtype}")

  lengths = f["doc_lengths"]
  for s, row in enumerate(lengths):
    if (row < 0).any() or (row > g).any():
      raise BatchError(f"sample {s}: doc_lengths {row.tolist()} outside [0, G={g}]")
    used = row > 0
    if not used.any():
      raise BatchError(f"sample {s} has no documents (all doc_lengths are 0)")
    if not used[:used.sum()].all():
      raise BatchError(f"sample {s}: empty document slot before a used one in doc_lengths "
                       f"{row.tolist()}; put unused (length-0) slots last")
  in_doc = np.arange(g) < lengths[..., None]
  mask = f["token_mask"].astype(bool)
  for name, ids, valid in (("doc_tokens", f["doc_tokens"], in_doc),
                           ("tokens", f["tokens"], mask)):
    bad = valid & ((ids < 0) | (ids >= vocab_size))
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise BatchError(f"{name}{list(where)} = {ids[where]} is not a token id in "
                       f"[0, {vocab_size})")
  for s, row in enumerate(mask):
    if row[row.sum():].any():
      raise BatchError(f"sample {s}: token_mask {row.astype(int).tolist()} is not right "
                       "padding (real tokens must come first)")
  queries = f["query_mask"].astype(bool) & mask
  for s in range(b):
    if not queries[s].any():
      raise BatchError(f"sample {s} has no routing-query tokens (query_mask & token_mask is "
                       "empty), so it cannot be routed")
  mi = f["memory_index"]
  if (mi < 0).any() or (mi > t).any():
    raise BatchError(f"memory_index {mi.tolist()} outside [0, T={t}]")
  if f["labels"] is not None:
    lab = f["labels"]
    bad = (lab != IGNORE) & ((lab < 0) | (lab >= vocab_size))
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise BatchError(f"labels{list(where)} = {lab[where]} is neither {IGNORE} nor a token id")
  if need_route_labels:
    y = f["route_labels"]
    if y is None:
      raise BatchError("route_labels are required by the routing (aux) loss")
    used = lengths > 0
    if not np.isin(y[used], (0, 1)).all():
      raise BatchError(f"route_labels must be 0 or 1 on used slots, got {np.unique(y[used])}")
    for s in range(b):
      if not (y[s][used[s]] > 0).any():
        raise BatchError(f"sample {s}: route_labels {y[s][used[s]].tolist()} have no positive "
                         "among its documents")
