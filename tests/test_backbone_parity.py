"""Our backbone vs HF transformers (random Qwen3 / Llama from a config, same weights), fp32."""

import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.checkpoint import load_hf_checkpoint
from msa_jax.model import Transformer
from tests import hf_oracle

# (model_type, hidden, heads, kv_heads, head_dim, layers, tied, rope_theta)
CASES = [
    ("qwen3", 64, 4, 2, 16, 2, False, 10_000.0),       # GQA 2:1, untied
    ("qwen3", 96, 6, 1, 32, 3, True, 1_000_000.0),     # MQA, head_dim != hidden/heads, tied
    ("qwen3", 64, 4, 4, 16, 2, True, 10_000.0),        # MHA
    ("llama", 64, 4, 2, 16, 2, False, 10_000.0),       # Llama: no q/k norm
    ("llama", 48, 6, 3, 8, 2, True, 100_000.0),        # Llama, tied, SmolLM2-like GQA 3:1
]
SHAPES = [(1, 1), (2, 17), (3, 64)]
ATOL = 1e-5


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-h{c[2]}kv{c[3]}-tied{c[6]}")
def pair(request, tmp_path_factory):
  model_type, hidden, heads, kv, head_dim, layers, tied, theta = request.param
  hf = hf_oracle.random_hf_model(model_type, hidden=hidden, heads=heads, kv_heads=kv,
                                 head_dim=head_dim, layers=layers, tied=tied, rope_theta=theta)
  path = tmp_path_factory.mktemp(model_type)
  hf.save_pretrained(path)
  cfg, params = load_hf_checkpoint(path, dtype=jnp.float32)
  assert cfg.qk_norm == (model_type == "qwen3") and cfg.tie_embeddings == tied
  return hf, Transformer(cfg), params


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}T{s[1]}")
def test_logits_match_hf(pair, shape):
  hf, model, params = pair
  tokens = np.random.default_rng(shape[1]).integers(0, model.config.vocab_size, shape)
  want = hf_oracle.hf_logits(hf, tokens)
  got, _ = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32))
  err = float(np.max(np.abs(np.asarray(got) - want)))
  print(f"max|logits - HF| = {err:.2e} (logit scale {np.abs(want).max():.2f})")
  assert np.abs(want).max() > 0.5  # the comparison is not between near-zero numbers
  assert err <= ATOL


def test_right_padded_batch_matches_hf(pair):
  """Padding via segment_ids (0 = pad) gives the same valid-position logits as HF's mask."""
  hf, model, params = pair
  lengths = [5, 12, 9]
  tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 12))
  valid = np.arange(12)[None, :] < np.array(lengths)[:, None]
  want = hf_oracle.hf_logits(hf, tokens, valid.astype(np.int64))
  got, _ = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32),
                       segment_ids=jnp.asarray(valid, jnp.int32))
  err = float(np.max(np.abs(np.asarray(got)[valid] - want[valid])))
  print(f"padded batch: max|logits - HF| = {err:.2e}")
  assert err <= ATOL
