"""Rotary position embedding, rotate-half form (HF Qwen3/Llama, not the interleaved form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
  """inv_freq_i = theta^(-2i/D) for i < D/2, in float32."""
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (jnp.float32(theta) ** exponents)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin of positions * inv_freq: [..., T] -> two [..., T, D/2] float32 arrays."""
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates x [B, T, heads, D] by its positions [B, T]; math in float32, result in x.dtype.

  With x = [x1, x2] (halves of D): [x1 cos - x2 sin, x2 cos + x1 sin], i.e.
  x * cos(emb) + rotate_half(x) * sin(emb) with emb = [angles, angles].
  """
  cos, sin = rope_angles(positions, x.shape[-1], theta)
  cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
