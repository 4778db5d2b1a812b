"""Model-level properties: logical axes, dtypes, masks, RoPE, the attention reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.model import (Transformer, abstract_params, dot_product_attention, get_preset,
                           init_params)
from msa_jax.model import attention, layers, rope

LOGICAL_AXES = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm"}


@pytest.mark.parametrize("name", ["tiny", "smollm2_135m", "qwen3_4b"])
def test_every_parameter_has_logical_axis_names(name):
  leaves = jax.tree.leaves(abstract_params(Transformer(get_preset(name))),
                           is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == len(x.value.shape) and set(x.names) <= LOGICAL_AXES, x


def test_abstract_params_traces_a_model_once(monkeypatch):
  """`abstract_params` traces the init once per equal model and returns a tree of its own each
  time; the train state's shapes built from it equal those of tracing the whole init."""
  import optax
  from msa_jax.model import transformer
  from msa_jax.train import step as step_lib
  traced = []
  init = transformer._init_variables
  monkeypatch.setattr(transformer, "_init_variables", lambda *a: traced.append(1) or init(*a))
  cfg = get_preset("tiny").replace(num_layers=1, vocab_size=97)  # a model no other test uses
  first = abstract_params(Transformer(cfg))
  first["embed"] = None
  second = abstract_params(Transformer(cfg))
  assert len(traced) == 1 and second["embed"] is not None
  assert jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(second)) == jax.tree.map(
      lambda x: (x.shape, x.dtype), nn.unbox(jax.eval_shape(
          Transformer(cfg).init, jax.random.key(0), *Transformer(cfg).example_inputs())[
              "params"]))
  tx = optax.adamw(1e-3)
  ours = step_lib.abstract_train_state(Transformer(cfg), tx)
  assert len(traced) == 1
  assert jax.tree.map(lambda x: (x.shape, x.dtype), ours) == jax.tree.map(
      lambda x: (x.shape, x.dtype),
      jax.eval_shape(step_lib.init_fn(Transformer(cfg), tx), jax.random.key(0)))


@pytest.mark.slow
def test_bf16_compute_with_fp32_storage_tracks_fp32():
  cfg = get_preset("tiny")
  params = init_params(Transformer(cfg), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)
  want, _ = Transformer(cfg).apply({"params": params}, tokens)
  got, _ = Transformer(cfg, dtype=jnp.bfloat16).apply({"params": params}, tokens)
  assert got.dtype == jnp.float32 and jax.tree.leaves(params)[0].dtype == jnp.float32
  rel = float(jnp.abs(got - want).max() / jnp.abs(want).max())
  assert 0 < rel < 5e-2  # bf16 really used, and still close


def test_param_dtype_sets_storage():
  params = init_params(Transformer(get_preset("tiny"), param_dtype=jnp.bfloat16),
                       jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_causal_mask_with_segments_and_padding():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  want = np.array([[1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 1, 1, 0],
                   [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(attention.causal_mask(5, seg)[0], want)


def test_attention_reference_matches_naive_per_head_loop():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((2, 5, 6, 8), (2, 7, 2, 8),
                                                              (2, 7, 2, 8)))
  mask = rng.random((2, 5, 7)) < 0.7
  mask[..., 0] = True
  got = np.asarray(dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                         jnp.asarray(mask)))
  for b in range(2):
    for h in range(6):
      logits = q[b, :, h] @ k[b, :, h // 3].T / np.sqrt(8)
      logits = np.where(mask[b], logits, -np.inf)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      np.testing.assert_allclose(got[b, :, h], p @ v[b, :, h // 3], atol=1e-5)


def test_attention_with_blocks_and_heads_first_cache_is_one_softmax():
  """Blocks of more keys (memory, decode tokens beside their cache) join the same softmax
  without being concatenated, one or several, and a heads-first cache gives the same result:
  all against the plain reference over the concatenated keys."""
  rng = np.random.default_rng(1)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  q, k, v, mem_k, mem_v = normal(2, 3, 4, 8), normal(2, 6, 2, 8), normal(2, 6, 2, 8), \
      normal(2, 5, 2, 8), normal(2, 5, 2, 8)
  mask = jnp.asarray(rng.random((2, 3, 6)) < 0.6)
  mem_mask = jnp.asarray(rng.random((2, 3, 5)) < 0.6)
  want = dot_product_attention(q, jnp.concatenate([mem_k, k], 1), jnp.concatenate([mem_v, v], 1),
                               jnp.concatenate([mem_mask, mask], -1))
  got = dot_product_attention(q, k, v, mask, blocks=[(mem_k, mem_v, mem_mask)])
  np.testing.assert_allclose(got, want, atol=1e-6)
  got = dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask,
                              heads_first=True, blocks=[(mem_k, mem_v, mem_mask)])
  np.testing.assert_allclose(got, want, atol=1e-6)
  two = [(mem_k[:, :2], mem_v[:, :2], mem_mask[..., :2]),
         (mem_k[:, 2:], mem_v[:, 2:], mem_mask[..., 2:])]
  for query_rows in (False, True):  # the inference layout gives the same values
    got = dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask,
                                heads_first=True, blocks=two, query_rows=query_rows)
    np.testing.assert_allclose(got, want, atol=1e-6)
    got = dot_product_attention(q, k, v, mask, blocks=two, query_rows=query_rows)
    np.testing.assert_allclose(got, want, atol=1e-6)
  # One decode token (T = 1) over a heads-first cache and one block of its own k, v.
  got = dot_product_attention(q[:, :1], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                              mask[:, :1], heads_first=True, blocks=[(
                                  mem_k[:, :1], mem_v[:, :1], jnp.ones((1, 1, 1), bool))])
  want = dot_product_attention(q[:, :1], jnp.concatenate([k, mem_k[:, :1]], 1),
                               jnp.concatenate([v, mem_v[:, :1]], 1),
                               jnp.concatenate([mask[:, :1], jnp.ones((2, 1, 1), bool)], -1))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_own_slots_masks():
  prefill = attention.OwnSlots.prefill(jnp.array([3, 1])).mask(3, 3)
  np.testing.assert_array_equal(prefill[0], np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(prefill[1], [[1, 0, 0]] * 3)  # padding keys hidden
  # Prompts padded to 3 slots, lengths 2 and 3; the second decoded token at slot 4.
  own = attention.OwnSlots.decode(jnp.array([2, 3]), 3, jnp.int32(4))
  decode = own.mask(1, 6)
  np.testing.assert_array_equal(decode[:, 0], [[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(own.mask_at(1, jnp.array([4, 2, 5])), decode[..., [4, 2, 5]])


def test_rope_is_a_rotation_by_relative_offset():
  """<rope(q, m), rope(k, n)> depends on m - n only (the property document-wise RoPE uses)."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 32)), jnp.float32) for _ in range(2))

  def score(m, n):
    return float(jnp.sum(rope.apply_rope(q, jnp.array([[m]]), 1e4) *
                         rope.apply_rope(k, jnp.array([[n]]), 1e4)))

  assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (8, 1), (4, 8), (1, 33)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_logits_equal_float64_on_both_paths(shape, dtype):
  """The tied LM head, a multiply-reduce at 2..FEW_ROWS rows on CPU and a dot otherwise, is
  x @ embedding^T to float32 (bfloat16) rounding, in x's dtype and shape."""
  assert 8 <= layers.FEW_ROWS < 33  # the shapes above cover both paths
  v, e = 1000, 96
  x = jax.random.normal(jax.random.key(0), (*shape, e)).astype(dtype)
  emb = jax.random.normal(jax.random.key(1), (v, e)).astype(dtype)
  got = jax.jit(layers.tied_logits)(x, emb)
  assert got.shape == (*shape, v) and got.dtype == dtype
  want = np.asarray(x, np.float64) @ np.asarray(emb, np.float64).T
  tol = 2e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * 10)
