"""MSA losses: shifted LM cross-entropy and the auxiliary routing losses.

The auxiliary losses follow the official `MSAForCausalLM` (design/official-semantics.md
section 7), vectorised over samples: each takes document scores [B, N], a mask of the documents
present [B, N] and 0/1 labels [B, N], and returns one loss per sample [B]. Absent documents are
left out exactly as the official code drops its -inf entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msa_jax.model.batch import IGNORE

TEMPERATURE_RANGE = (0.001, 0.5)  # the official clamp


def next_token_targets(labels: jax.Array) -> jax.Array:
  """[B, T] labels -> the target each position predicts (labels[:, t + 1]; IGNORE last)."""
  return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)


def lm_cross_entropy(logits: jax.Array, labels: jax.Array,
                     weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy: logits[:, t] predicts labels[:, t + 1].

  Args:
    logits: [B, T, V].
    labels: [B, T] int, IGNORE where not trained (the last position never has a target).
    weights: optional [B] 0/1 per sample (e.g. the answer loss's sample selection).

  Returns:
    (loss, number of targets): the mean over non-ignored targets of the whole batch, 0 (not
    NaN) when there are none. Computed in float32.
  """
  targets = next_token_targets(labels)
  valid = targets != IGNORE
  if weights is not None:
    valid = valid & (weights[:, None] > 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
  count = valid.sum()
  return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1), count


def _scaled(scores, docs, temperature):
  t = jnp.clip(temperature, *TEMPERATURE_RANGE)
  return jnp.where(docs, scores.astype(jnp.float32) / t, -jnp.inf)


def _num_pos(labels, docs):
  return jnp.maximum(jnp.where(docs, labels, 0.0).sum(-1), 1.0)


def infonce(scores, docs, labels, temperature):
  """Supervised-contrastive loss: -sum_j y_j log softmax(s / tau)_j / max(sum y, 1)."""
  y = jnp.where(docs, labels.astype(jnp.float32), 0.0)
  logp = jax.nn.log_softmax(_scaled(scores, docs, temperature), axis=-1)
  return -jnp.where(y > 0, logp * y, 0.0).sum(-1) / _num_pos(y, docs)


def infonce_focal(scores, docs, labels, temperature, gamma):
  """InfoNCE with each positive's term weighted by (1 - p_j)^gamma (p = softmax(s / tau))."""
  y = jnp.where(docs, labels.astype(jnp.float32), 0.0)
  logp = jax.nn.log_softmax(_scaled(scores, docs, temperature), axis=-1)
  w = (1.0 - jnp.exp(logp)) ** gamma
  return -jnp.where(y > 0, w * logp * y, 0.0).sum(-1) / _num_pos(y, docs)


def _decoupled_logp(scores, docs, labels, temperature):
  """log of exp(s_i) / (exp(s_i) + sum over negatives of exp(s_j)): positives do not compete
  with each other. The max shift is a constant (no gradient), as officially; the official
  +1e-10 inside the log is kept."""
  z = _scaled(scores, docs, temperature)
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  e = jnp.where(docs, jnp.exp(z - m), 0.0)
  neg = jnp.sum(e * (1.0 - labels), axis=-1, keepdims=True)
  return jnp.where(docs, z - m, 0.0), e, jnp.log(e + neg + 1e-10), e + neg


def infonce_decouple(scores, docs, labels, temperature):
  """Decoupled InfoNCE (official INFONCE_DECOUPLE)."""
  y = jnp.where(docs, labels.astype(jnp.float32), 0.0)
  zm, _, log_den, _ = _decoupled_logp(scores, docs, y, temperature)
  return -jnp.where(y > 0, (zm - log_den) * y, 0.0).sum(-1) / _num_pos(y, docs)


def infonce_decouple_focal(scores, docs, labels, temperature, gamma):
  """Decoupled InfoNCE with focal weights (official INFONCE_DECOUPLE_FOCAL).

  The official code passes the positive count where gamma belongs (a bug); we use `gamma`.
  Its normalisation is sum / (#positives + 1e-6), kept here.
  """
  y = jnp.where(docs, labels.astype(jnp.float32), 0.0)
  _, e, _, den = _decoupled_logp(scores, docs, y, temperature)
  p = e / den
  loss = -jnp.where(y > 0, (1.0 - p) ** gamma * jnp.log(p + 1e-10) * y, 0.0).sum(-1)
  return loss / (y.sum(-1) + 1e-6)


def bce(scores, docs, labels, bias):
  """-mean over present documents of log sigmoid((s + b) * (+1 | -1)), b learned."""
  sign = jnp.where(labels > 0, 1.0, -1.0)
  terms = jax.nn.log_sigmoid((scores.astype(jnp.float32) + bias) * sign)
  return -jnp.where(docs, terms, 0.0).sum(-1) / jnp.maximum(docs.sum(-1), 1)


def aux_loss(method: str, scores, docs, labels, *, temperature: float, gamma: float,
             bias: jax.Array | None = None) -> jax.Array:
  """Per-sample routing loss [B] for `method` (an MSALoss.aux_loss name)."""
  if method == "infonce":
    return infonce(scores, docs, labels, temperature)
  if method == "infonce_focal":
    return infonce_focal(scores, docs, labels, temperature, gamma)
  if method == "infonce_decouple":
    return infonce_decouple(scores, docs, labels, temperature)
  if method == "infonce_decouple_focal":
    return infonce_decouple_focal(scores, docs, labels, temperature, gamma)
  if method == "bce":
    if bias is None:
      raise ValueError("the bce aux loss needs its learned bias")
    return bce(scores, docs, labels, bias)
  raise ValueError(f"unknown aux loss {method!r}")


def routing_recall(scores: jax.Array, docs: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-sample recall@k [B]: positives among the top min(k, present) documents, divided by
  min(#positives, k), so 1.0 means the top k is as full of positives as it can be."""
  n = scores.shape[-1]
  kk = min(k, n)
  _, idx = jax.lax.top_k(jnp.where(docs, scores, -jnp.inf), kk)
  rank_ok = jnp.arange(kk)[None, :] < docs.sum(-1, keepdims=True)
  y = jnp.where(docs, labels, 0).astype(jnp.float32)
  hits = (jnp.take_along_axis(y, idx, axis=-1) * rank_ok).sum(-1)
  return hits / jnp.maximum(jnp.minimum(y.sum(-1), jnp.minimum(kk, docs.sum(-1))), 1)
