"""Decoding settings and next-token sampling (greedy, temperature, top-k, nucleus)."""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from msa_jax.validation import is_int


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How `generate` picks tokens. Frozen and hashable: one compiled program per config.

  Attributes:
    temperature: logits are divided by it before sampling; 0 means greedy (argmax).
    top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
      reaches top_p (1 keeps everything).
    top_k: keep only the k most likely tokens (0 keeps everything).
    max_new_tokens: tokens generated per prompt, the stop token included.
    stop_tokens: ids that end a row; the stop token is emitted, then `pad_id` only.
    pad_id: id emitted after a row has stopped (and used to pad prompts in `generate_text`).
  """

  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 32
  stop_tokens: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    t = self.temperature
    if not (isinstance(t, numbers.Real) and not isinstance(t, bool) and 0 <= t < math.inf):
      raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
    p = self.top_p
    if not (isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 < p <= 1):
      raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if not (is_int(self.top_k) and self.top_k >= 0):
      raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
    if not (is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
      raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
    if isinstance(self.stop_tokens, (str, bytes)) or not hasattr(self.stop_tokens, "__iter__"):
      raise ValueError(f"stop_tokens must be a sequence of ints, got {self.stop_tokens!r}")
    stop_tokens = tuple(self.stop_tokens)
    for tok in stop_tokens:
      if not (is_int(tok) and tok >= 0):
        raise ValueError(f"stop_tokens must be ints >= 0, got {tok!r} in {stop_tokens!r}")
    if not (is_int(self.pad_id) and self.pad_id >= 0):
      raise ValueError(f"pad_id must be an int >= 0, got {self.pad_id!r}")
    object.__setattr__(self, "stop_tokens", tuple(int(tok) for tok in stop_tokens))


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float, top_p: float = 1.0,
                  top_k: int = 0) -> jax.Array:
  """Draws one token per row.

  Args:
    logits: [B, V] next-token logits.
    rng: a PRNG key (unused when greedy).
    temperature: Python float; 0 takes the argmax, otherwise logits are divided by it.
    top_p: Python float in (0, 1]; after top-k, keep the smallest set of most likely tokens whose
      cumulative probability reaches top_p (the most likely token is always kept).
    top_k: Python int; if > 0, keep only the top_k largest logits.
    Tokens tied with the last one kept by top-k or top-p are kept too.

  Returns:
    [B] int32 token ids.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1:
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    # Token i (in descending order) is kept iff the tokens before it sum to less than top_p.
    num_kept = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(desc, num_kept - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
