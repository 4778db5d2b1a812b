"""Converter from the official MSA flat layout (`doc_ids` per token) to our `MSABatch`.

The official training forward takes one flat row per sample: `doc_ids[b, t] > 0` marks tokens
of document number doc_ids, 0 marks routing-query tokens and < 0 any other prompt token
(template, answer); `attention_mask == 0` marks padding (design/official-semantics.md
section 1). We split each row into its documents (slot n = the n-th document id present, in
increasing order) and its prompt sequence, and keep the flat index of every token so outputs
can be scattered back for comparison.

Rows our layout cannot express are refused with `BatchError`: a document split into several
runs or out of id order (the official code asserts on it too), prompt tokens between two
documents, labels on document tokens, or a label whose preceding token is a document token
(officially it would be predicted by a document token, which never reads the memory).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from msa_jax.model.batch import IGNORE, BatchError, MSABatch


@dataclasses.dataclass(frozen=True)
class FlatIndex:
  """Where our batch's tokens came from in the flat rows.

  Attributes:
    doc_ids: [B, N] official document id of each slot (0: unused slot).
    doc_index: [B, N, G] flat position of each document token (-1: padding).
    prompt_index: [B, T] flat position of each prompt token (-1: padding).
  """

  doc_ids: np.ndarray
  doc_index: np.ndarray
  prompt_index: np.ndarray

  def scatter(self, doc_values: np.ndarray, prompt_values: np.ndarray,
              length: int) -> np.ndarray:
    """Per-token values [B, N, G, ...] and [B, T, ...] -> the flat layout [B, L, ...]
    (0 at padding)."""
    b = self.doc_ids.shape[0]
    out = np.zeros((b, length) + prompt_values.shape[2:], prompt_values.dtype)
    for s in range(b):
      d = self.doc_index[s] >= 0
      out[s, self.doc_index[s][d]] = doc_values[s][d]
      p = self.prompt_index[s] >= 0
      out[s, self.prompt_index[s][p]] = prompt_values[s][p]
    return out


def _runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
  """(value, start, end) of each run of equal values."""
  edges = np.flatnonzero(np.diff(ids)) + 1
  starts = np.concatenate([[0], edges])
  ends = np.concatenate([edges, [len(ids)]])
  return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _check_labels(s: int, name: str, labelled: np.ndarray, doc_ids: np.ndarray,
                  prompt: np.ndarray) -> None:
  bad = labelled[doc_ids[labelled] > 0]
  if bad.size:
    raise BatchError(f"sample {s}: {name} on document tokens (flat {bad.tolist()[:5]}) are "
                     "not supported")
  rank = {int(p): r for r, p in enumerate(prompt)}
  for p in labelled:
    r = rank[int(p)]
    if r == 0 or prompt[r - 1] != p - 1:
      raise BatchError(f"sample {s}: {name} at flat position {p} is not preceded by a prompt "
                       "token, so it would be predicted across a document or padding")


def from_official(input_ids, attention_mask, doc_ids, position_ids, *, labels=None,
                  aux_labels=None, answer_labels=None, train_qa_samples=None,
                  num_docs: int | None = None, doc_len: int | None = None,
                  prompt_len: int | None = None) -> tuple[MSABatch, FlatIndex]:
  """Our batch (numpy arrays) and the flat index, from official [B, L] inputs.

  Args:
    input_ids, attention_mask, doc_ids, position_ids: [B, L] official inputs.
    labels: [B, L] (IGNORE = -100), optional.
    aux_labels: [B, >= docs] 0/1 per present document in increasing id order, padded with
      anything past each sample's document count (the goldens pad with -1), optional.
    answer_labels, train_qa_samples: the answer loss's [B, L] labels and [B] sample flags.
    num_docs, doc_len, prompt_len: pad to these N, G, T (default: the batch's maxima).
  """
  input_ids, mask, doc_ids, pos = (np.asarray(a) for a in
                                   (input_ids, attention_mask, doc_ids, position_ids))
  b, length = input_ids.shape
  for name, a in (("attention_mask", mask), ("doc_ids", doc_ids), ("position_ids", pos)):
    if a.shape != (b, length):
      raise BatchError(f"{name} has shape {a.shape}, expected {(b, length)}")
  if not np.isin(mask, (0, 1)).all():
    raise BatchError(f"attention_mask must be 0/1, got values {np.unique(mask).tolist()}")
  labels = None if labels is None else np.asarray(labels)
  answer_labels = None if answer_labels is None else np.asarray(answer_labels)

  samples = []
  for s in range(b):
    valid = np.flatnonzero(mask[s] == 1)
    docs, prompt, memory_index = [], [], None
    for value, start, end in _runs(np.where(mask[s] == 1, doc_ids[s], 0)[valid]):
      idx = valid[start:end]
      if value > 0:
        if docs and value <= docs[-1][0]:
          raise BatchError(f"sample {s}: document id {value} at flat position {idx[0]} comes "
                           f"after id {docs[-1][0]}; documents must be single runs in "
                           "increasing id order")
        if docs and prompt and memory_index != len(prompt):
          raise BatchError(f"sample {s}: prompt tokens between documents (before flat "
                           f"position {idx[0]}) cannot be expressed in our layout")
        if memory_index is None:
          memory_index = len(prompt)
        docs.append((value, idx))
      else:
        prompt.extend(valid[start:end].tolist())  # query (0) or other prompt tokens (< 0)
    if not docs:
      raise BatchError(f"sample {s} has no document tokens (doc_ids > 0)")
    prompt = np.asarray(prompt, np.int64)
    for name, lab in (("labels", labels), ("answer_labels", answer_labels)):
      if lab is not None:
        labelled = np.flatnonzero((lab[s] != IGNORE) & (mask[s] == 1))
        _check_labels(s, name, labelled, doc_ids[s], prompt)
    samples.append((docs, prompt, memory_index))

  need_n = max(len(d) for d, _, _ in samples)
  need_g = max(len(idx) for d, _, _ in samples for _, idx in d)
  need_t = max(len(p) for _, p, _ in samples)
  n, g, t = num_docs or need_n, doc_len or need_g, prompt_len or need_t
  if need_n > n or need_g > g or need_t > t:
    raise BatchError(f"num_docs={n}, doc_len={g} or prompt_len={t} is too small for the batch")

  doc_tokens = np.zeros((b, n, g), np.int32)
  doc_lengths = np.zeros((b, n), np.int32)
  doc_positions = np.zeros((b, n, g), np.int32)
  index = FlatIndex(np.zeros((b, n), np.int32), np.full((b, n, g), -1, np.int64),
                    np.full((b, t), -1, np.int64))
  tokens = np.zeros((b, t), np.int32)
  token_mask = np.zeros((b, t), bool)
  positions = np.zeros((b, t), np.int32)
  query_mask = np.zeros((b, t), bool)
  memory_index = np.zeros((b,), np.int32)
  out_labels = None if labels is None else np.full((b, t), IGNORE, np.int32)
  out_answer = None if answer_labels is None else np.full((b, t), IGNORE, np.int32)
  route = None if aux_labels is None else np.zeros((b, n), np.int32)
  for s, (docs, prompt, mi) in enumerate(samples):
    for k, (value, idx) in enumerate(docs):
      m = len(idx)
      doc_tokens[s, k, :m] = input_ids[s, idx]
      doc_lengths[s, k] = m
      doc_positions[s, k, :m] = pos[s, idx]
      doc_positions[s, k, m:] = pos[s, idx[-1]] + 1 + np.arange(g - m)
      index.doc_ids[s, k] = value
      index.doc_index[s, k, :m] = idx
    m = len(prompt)
    tokens[s, :m] = input_ids[s, prompt]
    token_mask[s, :m] = True
    positions[s, :m] = pos[s, prompt]
    query_mask[s, :m] = doc_ids[s, prompt] == 0
    memory_index[s] = mi
    index.prompt_index[s, :m] = prompt
    if out_labels is not None:
      out_labels[s, :m] = labels[s, prompt]
    if out_answer is not None:
      out_answer[s, :m] = answer_labels[s, prompt]
    if route is not None:
      row = np.asarray(aux_labels[s])[:len(docs)]
      if row.shape[0] != len(docs):
        raise BatchError(f"sample {s}: {row.shape[0]} aux labels for {len(docs)} documents")
      route[s, :len(docs)] = row
  doc_wise = np.arange(g) < doc_lengths[..., None]
  if (doc_positions == np.arange(g))[doc_wise].all():
    doc_positions = None  # document-wise RoPE: the model's default
  batch = MSABatch(
      doc_tokens=doc_tokens, doc_lengths=doc_lengths, tokens=tokens, token_mask=token_mask,
      positions=positions, query_mask=query_mask, memory_index=memory_index,
      labels=out_labels, route_labels=route, doc_positions=doc_positions,
      answer_labels=out_answer,
      answer_mask=None if train_qa_samples is None else np.asarray(train_qa_samples) > 0)
  return batch, index
