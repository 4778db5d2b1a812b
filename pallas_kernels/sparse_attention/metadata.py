"""Host-side metadata helpers: map the training forward's per-sample memory to the bank layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def per_sample_memory_to_bank(
    mem_k: jax.Array,
    mem_v: jax.Array,
    chunk_mask: jax.Array,
    doc_index: jax.Array,
    selected: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Flatten per-sample memory [B, N, Cd, J, D] into the kernel's bank layout (a free reshape).

  Document n of sample b becomes the chunks (b*N + n)*Cd ... of the bank; a selected slot
  points at it with doc_first_chunk = (b*N + n)*Cd and doc_num_chunks = its valid chunks.

  Args:
    mem_k: [B, N, Cd, J, D] pooled keys of the N document slots of each sample.
    mem_v: [B, N, Cd, J, D] pooled values.
    chunk_mask: [B, N, Cd] bool, valid chunks. They must be a prefix of each document's Cd
      chunks (documents are contiguous; only the count is used).
    doc_index: [B, K] int, the selected document slot (0..N-1) of each of the K slots; a
      negative index marks an unused slot.
    selected: optional [B, K] bool, False marks an unused slot (as returned by
      `msa_jax.model.routing.select_top_k`).

  Returns:
    (bank_k [B*N*Cd, J, D], bank_v, doc_first_chunk [B, K] int32, doc_num_chunks [B, K] int32),
    ready for `sparse_attention(..., max_doc_chunks=Cd)`.
  """
  if mem_k.ndim != 5 or mem_v.shape != mem_k.shape:
    raise ValueError(f"mem_k.shape={mem_k.shape} and mem_v.shape={mem_v.shape} must both be "
                     "[B, N, Cd, J, D]")
  b, n, cd, j, d = mem_k.shape
  if chunk_mask.shape != (b, n, cd):
    raise ValueError(f"chunk_mask.shape={chunk_mask.shape} must be [B, N, Cd]={(b, n, cd)}")
  if doc_index.ndim != 2 or doc_index.shape[0] != b:
    raise ValueError(f"doc_index.shape={doc_index.shape} must be [B, K] with B={b}")
  if selected is not None and selected.shape != doc_index.shape:
    raise ValueError(f"selected.shape={selected.shape} must equal "
                     f"doc_index.shape={doc_index.shape}")
  used = doc_index >= 0
  if selected is not None:
    used = used & selected
  slot = jnp.clip(doc_index, 0, n - 1).astype(jnp.int32)
  first = (jnp.arange(b, dtype=jnp.int32)[:, None] * n + slot) * cd
  counts = chunk_mask.sum(axis=-1).astype(jnp.int32)  # [B, N]
  num = jnp.where(used, jnp.take_along_axis(counts, slot, axis=1), 0)
  return (mem_k.reshape(b * n * cd, j, d), mem_v.reshape(b * n * cd, j, d),
          first.astype(jnp.int32), num.astype(jnp.int32))
