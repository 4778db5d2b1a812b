"""The inputs of top-k block-sparse attention: checks and defaults shared by the kernel and the
reference (one definition of what the op accepts).

They live here, not in `kernel.py`, because the kernel's backward is the VJP of the reference,
so `kernel.py` imports `reference.py` and the reference cannot import the kernel module back.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check_int(name: str, x: jax.Array, shape: tuple[int, ...]) -> None:
  if x.shape != shape:
    raise ValueError(f"{name}.shape={x.shape} must be {shape}")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name}.dtype={x.dtype} must be an integer type")


def check_inputs(q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
                 q_offset, kv_len, max_doc_chunks, scale, hidden_start=None, hidden_stop=None,
                 kv_heads_first=False) -> None:
  """Raises ValueError naming the bad value; shared by the kernel and the reference."""
  if q.ndim != 4:
    raise ValueError(f"q.shape={q.shape} must be [B, T, H, D]")
  b, t, h, d = q.shape
  layout = "[B, J, S, D]" if kv_heads_first else "[B, S, J, D]"
  if k.ndim != 4 or k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"k.shape={k.shape} must be {layout} with B={b}, D={d}")
  if v.shape != k.shape:
    raise ValueError(f"v.shape={v.shape} must equal k.shape={k.shape}")
  s_len, j = (k.shape[2], k.shape[1]) if kv_heads_first else (k.shape[1], k.shape[2])
  if h % j:
    raise ValueError(f"H={h} query heads must be a multiple of J={j} kv heads "
                     f"(q.shape={q.shape}, k.shape={k.shape})")
  if bank_k.ndim != 3 or bank_k.shape[1:] != (j, d):
    raise ValueError(f"bank_k.shape={bank_k.shape} must be [C, J, D] with J={j}, D={d}")
  if bank_v.shape != bank_k.shape:
    raise ValueError(f"bank_v.shape={bank_v.shape} must equal bank_k.shape={bank_k.shape}")
  dtypes = {x.dtype for x in (q, k, v, bank_k, bank_v)}
  if len(dtypes) != 1 or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError(f"q, k, v, bank_k, bank_v must share one float dtype, got "
                     f"{[str(x.dtype) for x in (q, k, v, bank_k, bank_v)]}")
  if doc_first_chunk.ndim != 2 or doc_first_chunk.shape[0] != b:
    raise ValueError(f"doc_first_chunk.shape={doc_first_chunk.shape} must be [B, K] with B={b}")
  if min(b, t, s_len, bank_k.shape[0], doc_first_chunk.shape[1]) < 1:
    raise ValueError(f"empty input: q.shape={q.shape}, k.shape={k.shape}, "
                     f"bank_k.shape={bank_k.shape}, doc_first_chunk.shape={doc_first_chunk.shape}")
  _check_int("doc_first_chunk", doc_first_chunk, doc_first_chunk.shape)
  _check_int("doc_num_chunks", doc_num_chunks, doc_first_chunk.shape)
  if memory_visible.shape != (b, t) or memory_visible.dtype != jnp.bool_:
    raise ValueError(f"memory_visible (shape={memory_visible.shape}, "
                     f"dtype={memory_visible.dtype}) must be bool [B, T]={(b, t)}")
  _check_int("q_offset", q_offset, (b,))
  _check_int("kv_len", kv_len, (b,))
  for name, x in (("hidden_start", hidden_start), ("hidden_stop", hidden_stop)):
    if x is not None:
      _check_int(name, x, (b,))
  if not isinstance(max_doc_chunks, int) or isinstance(max_doc_chunks, bool) or max_doc_chunks < 1:
    raise ValueError(f"max_doc_chunks={max_doc_chunks!r} must be a static int >= 1")
  if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
    raise ValueError(f"scale={scale!r} must be a Python float or None")


def fill_defaults(q, k, memory_visible, q_offset, kv_len, hidden_start=None, hidden_stop=None,
                  kv_heads_first=False):
  """None -> all tokens see the memory, q_offset 0, kv_len S, no hidden slots (a plain causal
  prefill). Returns (memory_visible, q_offset, kv_len, hidden_start, hidden_stop)."""
  b, t = q.shape[:2]
  if memory_visible is None:
    memory_visible = jnp.ones((b, t), jnp.bool_)
  if q_offset is None:
    q_offset = jnp.zeros((b,), jnp.int32)
  if kv_len is None:
    kv_len = jnp.full((b,), k.shape[2 if kv_heads_first else 1], jnp.int32)
  if hidden_start is None:
    hidden_start = jnp.zeros((b,), jnp.int32)
  if hidden_stop is None:
    hidden_stop = jnp.zeros((b,), jnp.int32)
  return memory_visible, q_offset, kv_len, hidden_start, hidden_stop


def default_scale(d: int, scale: float | None) -> float:
  return 1.0 / math.sqrt(d) if scale is None else float(scale)
