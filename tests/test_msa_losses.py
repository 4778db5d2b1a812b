"""Routing losses and metrics against direct transcriptions of the official formulas.

The official `MSAForCausalLM` computes each aux loss on one sample's present documents (a
1-D vector, `calculate_*` in src/msa/model.py). The transcriptions below follow those formulas
in float64 numpy, one sample at a time; ours are vectorised over samples with absent documents
masked, so the test also checks that padding slots change nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.model import losses
from msa_jax.model.batch import IGNORE


def log_softmax(z):
  z = z - z.max()
  return z - np.log(np.exp(z).sum())


def official(method, z, y, tau=0.05, gamma=2.0, b=-20.0):
  t = np.clip(tau, 0.001, 0.5)
  num_pos = max(y.sum(), 1.0)
  if method == "infonce":
    return -(log_softmax(z / t) * y / num_pos).sum()
  if method == "infonce_focal":
    lp = log_softmax(z / t)
    return -((1 - np.exp(lp)) ** gamma * lp * y / num_pos).sum()
  s = z / t
  e = np.exp(s - s.max())
  neg = (e * (1 - y)).sum()
  if method == "infonce_decouple":
    return -((s - s.max() - np.log(e + neg + 1e-10)) * y / num_pos).sum()
  if method == "infonce_decouple_focal":
    p = e / (e + neg)
    return (-(1 - p) ** gamma * np.log(p + 1e-10) * y).sum() / (y.sum() + 1e-6)
  if method == "bce":
    sign = np.where(y > 0, 1.0, -1.0)
    return -np.mean(-np.logaddexp(0.0, -(z + b) * sign))
  raise ValueError(method)


@pytest.mark.parametrize("method", ["infonce", "infonce_focal", "infonce_decouple",
                                    "infonce_decouple_focal", "bce"])
def test_aux_losses_match_official_formulas(method):
  rng = np.random.default_rng(0)
  b, n = 6, 7
  present = np.arange(n)[None, :] < rng.integers(1, n + 1, size=(b, 1))
  scores = rng.normal(size=(b, n)).astype(np.float32) * 0.3
  labels = (rng.random((b, n)) < 0.4).astype(np.float32) * present
  labels[np.arange(b), 0] = 1.0  # >= 1 positive per sample
  # Padding slots carry junk that must not matter.
  scores_in = np.where(present, scores, 123.0).astype(np.float32)
  labels_in = np.where(present, labels, 1.0).astype(np.float32)
  got = losses.aux_loss(method, jnp.asarray(scores_in), jnp.asarray(present),
                        jnp.asarray(labels_in), temperature=0.05, gamma=2.0,
                        bias=jnp.float32(-20.0))
  want = [official(method, scores[s][present[s]].astype(np.float64), labels[s][present[s]])
          for s in range(b)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-5)


def test_temperature_is_clamped_like_the_official_code():
  z, y, docs = jnp.array([[0.3, -0.1]]), jnp.array([[1.0, 0.0]]), jnp.ones((1, 2), bool)
  np.testing.assert_allclose(losses.infonce(z, docs, y, 5.0), losses.infonce(z, docs, y, 0.5))
  np.testing.assert_allclose(losses.infonce(z, docs, y, 1e-6),
                             losses.infonce(z, docs, y, 0.001))


def test_lm_cross_entropy_shifts_and_ignores():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
  labels = np.full((2, 5), IGNORE)
  labels[0, 2], labels[0, 3], labels[1, 4] = 4, 7, 10
  loss, count = losses.lm_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  want = [-log_softmax(logits[0, 1])[4], -log_softmax(logits[0, 2])[7],
          -log_softmax(logits[1, 3])[10]]
  assert int(count) == 3
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-6)
  weighted, _ = losses.lm_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                        weights=jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(float(weighted), want[2], rtol=1e-6)
  # No target at all: 0, not NaN (the official Liger loss does the same).
  empty, _ = losses.lm_cross_entropy(jnp.asarray(logits), jnp.full((2, 5), IGNORE))
  assert float(empty) == 0.0
  grads = jax.grad(lambda x: losses.lm_cross_entropy(x, jnp.full((2, 5), IGNORE))[0])(
      jnp.asarray(logits))
  assert np.isfinite(np.asarray(grads)).all()


def test_routing_recall():
  scores = jnp.array([[0.9, 0.1, 0.5, -1.0], [0.2, 0.8, 0.1, 0.0]])
  docs = jnp.array([[True, True, True, False], [True, True, True, True]])
  labels = jnp.array([[0, 0, 1, 1], [1, 0, 1, 0]])
  # Sample 0: the only present positive ranks 2nd. Sample 1: positives rank 2nd and 3rd.
  np.testing.assert_allclose(losses.routing_recall(scores, docs, labels, 1), [0.0, 0.0])
  np.testing.assert_allclose(losses.routing_recall(scores, docs, labels, 2), [1.0, 0.5])
  np.testing.assert_allclose(losses.routing_recall(scores, docs, labels, 10), [1.0, 1.0])
