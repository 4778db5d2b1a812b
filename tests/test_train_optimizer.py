"""Optimiser, schedules, loss-weight phases, accumulation, clipping and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msa_jax.train import optimizer as opt_lib

PAPER_PHASES = [dict(steps=100, learning_rate=1e-4, lm_weight=0.1, aux_weight=1.0),
                dict(steps=900, learning_rate=6e-6, lm_weight=1.0, aux_weight=0.1)]


def _lr(cfg, steps):
  schedule = opt_lib.make_lr_schedule(cfg)
  return np.asarray([float(schedule(s)) for s in steps])


def test_cosine_schedule_warmup_peak_and_end():
  cfg = dict(learning_rate=1e-3, schedule="cosine", warmup_steps=10, total_steps=110,
             end_lr_factor=0.1)
  lr = _lr(cfg, [0, 5, 10, 60, 110, 500])
  np.testing.assert_allclose(lr[:3], [0.0, 5e-4, 1e-3], rtol=1e-6)
  np.testing.assert_allclose(lr[3], 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)  # half-way
  np.testing.assert_allclose(lr[4:], [1e-4, 1e-4], rtol=1e-6)


def test_constant_schedule_with_and_without_warmup():
  np.testing.assert_allclose(_lr(dict(learning_rate=3e-4, schedule="constant"), [0, 1, 10**6]),
                             [3e-4] * 3, rtol=1e-6)
  lr = _lr(dict(learning_rate=3e-4, schedule="constant", warmup_steps=4), [0, 2, 4, 1000])
  np.testing.assert_allclose(lr, [0.0, 1.5e-4, 3e-4, 3e-4], rtol=1e-6)


def test_two_phase_schedule_boundaries():
  cfg = dict(phases=PAPER_PHASES)
  lr = _lr(cfg, [0, 99, 100, 999, 5000])
  np.testing.assert_allclose(lr, [1e-4, 1e-4, 6e-6, 6e-6, 6e-6], rtol=1e-6)
  weights = jax.jit(opt_lib.make_loss_weights(cfg))
  got = [tuple(float(w) for w in weights(jnp.int32(s))) for s in (0, 99, 100, 999, 5000)]
  np.testing.assert_allclose(got, [(0.1, 1.0)] * 2 + [(1.0, 0.1)] * 3, rtol=1e-6)


def test_phase_warmup_and_default_weights():
  lr = _lr(dict(warmup_steps=10, phases=PAPER_PHASES), [0, 5, 10, 100])
  np.testing.assert_allclose(lr, [0.0, 5e-5, 1e-4, 6e-6], rtol=1e-6)
  lm, aux = opt_lib.make_loss_weights(dict(), lm_weight=1.0, aux_weight=0.25)(jnp.int32(7))
  assert (float(lm), float(aux)) == (1.0, 0.25)


@pytest.mark.parametrize("cfg, match", [
    (dict(schedul="cosine"), "unknown optimizer config keys"),
    (dict(schedule="linear"), "schedule='linear'"),
    (dict(schedule="cosine", total_steps=None), "total_steps=None"),
    (dict(grad_accum_steps=0), "grad_accum_steps=0"),
    (dict(phases=[dict(steps=10, learning_rate=1e-4)]), "missing keys"),
    (dict(phases=[dict(steps=0, learning_rate=1e-4, lm_weight=1, aux_weight=0)]),
     "phases\\[0\\].steps=0"),
])
def test_bad_configs_name_the_value(cfg, match):
  with pytest.raises(ValueError, match=match):
    opt_lib.make_optimizer(cfg)


def _regression(seed=0, n=16):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                      "bias": jnp.zeros((3,), jnp.float32)}}

  def loss(p, x, y):
    return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)
  return params, loss, x, y


def _apply(tx, params, grads_seq):
  state = tx.init(params)
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_accumulation_equals_big_batch_step():
  params, loss, x, y = _regression()
  base = dict(learning_rate=1e-2, schedule="constant", weight_decay=0.1, grad_clip_norm=0.5)
  big = _apply(opt_lib.make_optimizer(base), params, [jax.grad(loss)(params, x, y)])
  tx = opt_lib.make_optimizer(dict(base, grad_accum_steps=4))
  state = tx.init(params)
  p = params
  for i in range(4):
    sl = slice(4 * i, 4 * i + 4)
    updates, state = tx.update(jax.grad(loss)(p, x[sl], y[sl]), state, p)
    p = optax.apply_updates(p, updates)
    if i < 3:  # nothing moves until the k-th micro-batch
      jax.tree.map(np.testing.assert_array_equal, p, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p, big)
  assert not np.allclose(p["dense"]["kernel"], params["dense"]["kernel"])


def test_global_norm_clipping():
  params, _, _, _ = _regression()
  rng = np.random.default_rng(1)
  grads = [jax.tree.map(lambda a, s=s: jnp.asarray(rng.normal(size=a.shape) * s, a.dtype), params)
           for s in (100.0, 0.01)]
  cfg = dict(learning_rate=1e-2, schedule="constant", grad_clip_norm=1.0)
  ours = _apply(opt_lib.make_optimizer(cfg), params, grads)

  def clip(g):
    return jax.tree.map(lambda a: a * jnp.minimum(1.0, 1.0 / optax.tree.norm(g)), g)
  reference = _apply(optax.adamw(1e-2, weight_decay=0.0), params, [clip(g) for g in grads])
  unclipped = _apply(optax.adamw(1e-2, weight_decay=0.0), params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               ours, reference)
  assert not np.allclose(ours["dense"]["kernel"], unclipped["dense"]["kernel"], atol=1e-5)


def test_weight_decay_mask_skips_norms_and_vectors():
  params = {"embed": {"embedding": jnp.ones((4, 2))},
            "layers_0": {"attn": {"q_proj": {"kernel": jnp.ones((2, 2, 3))}},
                         "attn_norm": {"scale": jnp.ones((2,))}},
            "final_norm": {"scale": jnp.ones((2,))},
            "aux_bias": jnp.ones(())}
  mask = opt_lib.weight_decay_mask(params)
  assert mask == {"embed": {"embedding": True},
                  "layers_0": {"attn": {"q_proj": {"kernel": True}},
                               "attn_norm": {"scale": False}},
                  "final_norm": {"scale": False}, "aux_bias": False}
  # Zero gradients: AdamW's update is then exactly -lr * wd * p on the decayed leaves only.
  tx = opt_lib.make_optimizer(dict(learning_rate=0.5, schedule="constant", weight_decay=0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  expected = jax.tree.map(lambda p, m: -0.05 * p if m else jnp.zeros_like(p), params, mask)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


@pytest.mark.slow
def test_train_step_applies_phase_weights():
  """One jitted train step of a tiny MSA model reports the phase's weights and a finite loss."""
  from msa_jax.model import ModelConfig, MSAConfig, MSATransformer
  from msa_jax.train import init_train_state, make_eval_step, make_train_step
  from tests.test_train_sharding import tiny_batch

  config = ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
  msa = MSAConfig(top_k=2, chunk_size=2, kernel_impl="xla")
  model = MSATransformer(config, msa, dtype=jnp.bfloat16)
  cfg = dict(phases=[dict(steps=1, learning_rate=1e-3, lm_weight=0.1, aux_weight=1.0),
                     dict(steps=1, learning_rate=1e-4, lm_weight=1.0, aux_weight=0.1)],
             grad_accum_steps=1)
  tx = opt_lib.make_optimizer(cfg)
  state, _ = init_train_state(model, tx, jax.random.key(0))
  step = make_train_step(model, config, msa.loss, tx, opt_lib.make_loss_weights(cfg),
                         lr_schedule=opt_lib.make_lr_schedule(cfg))
  batch = jax.tree.map(jnp.asarray, tiny_batch(0, b=2))
  seen = []
  for _ in range(2):
    state, m = step(state, batch)
    seen.append((float(m["lm_weight"]), float(m["aux_weight"]), float(m["learning_rate"])))
    np.testing.assert_allclose(float(m["loss"]), float(m["lm_weight"] * m["lm_loss"]
                                                       + m["aux_weight"] * m["aux_loss"]),
                               rtol=1e-6)
  np.testing.assert_allclose(seen, [(0.1, 1.0, 1e-3), (1.0, 0.1, 1e-4)], rtol=1e-6)
  assert int(state.step) == 2
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # fp32 params, bf16 compute
  metrics = make_eval_step(model, config, msa.loss)(state.params, batch)
  assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_eval_step_reads_the_train_steps_weights_under_accumulation():
  """With grad_accum_steps=2, the eval step at micro-step s uses the weights the train step
  uses at s (those of optimiser step s // 2), not those of optimiser step s."""
  from msa_jax.model import ModelConfig, MSAConfig, MSATransformer
  from msa_jax.train import init_train_state, make_eval_step, make_train_step
  from tests.test_train_sharding import tiny_batch

  config = ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8)
  msa = MSAConfig(top_k=2, chunk_size=2, kernel_impl="xla")
  model = MSATransformer(config, msa)
  cfg = dict(phases=[dict(steps=1, learning_rate=1e-3, lm_weight=0.1, aux_weight=1.0),
                     dict(steps=1, learning_rate=1e-4, lm_weight=1.0, aux_weight=0.1)],
             grad_accum_steps=2)
  tx = opt_lib.make_optimizer(cfg)
  weights = opt_lib.make_loss_weights(cfg)
  state, _ = init_train_state(model, tx, jax.random.key(0))
  train = make_train_step(model, config, msa.loss, tx, weights, grad_accum_steps=2, donate=False)
  evaluate = make_eval_step(model, config, msa.loss, weights, grad_accum_steps=2)
  batch = jax.tree.map(jnp.asarray, tiny_batch(0, b=2))
  seen = []
  for _ in range(4):
    at = int(state.step)
    evaluated = evaluate(state.params, batch, at)
    state, trained = train(state, batch)
    seen.append((float(trained["lm_weight"]), float(trained["aux_weight"])))
    assert (float(evaluated["lm_weight"]), float(evaluated["aux_weight"])) == seen[-1], at
  np.testing.assert_allclose(seen, [(0.1, 1.0), (0.1, 1.0), (1.0, 0.1), (1.0, 0.1)], rtol=1e-6)


def test_route_labels_are_needed_when_any_phase_trains_routing():
  """Phases override msa.aux_weight: route labels are needed iff some phase weights the aux
  loss (a schedule that starts at 0 and switches it on later still needs them)."""
  phase = lambda aux: dict(steps=1, learning_rate=1e-3, lm_weight=1.0, aux_weight=aux)
  assert opt_lib.uses_aux_loss(dict(phases=[phase(0.0), phase(0.5)]), aux_weight=0.0)
  assert not opt_lib.uses_aux_loss(dict(phases=[phase(0.0), phase(0.0)]), aux_weight=0.1)
  assert opt_lib.uses_aux_loss({}, aux_weight=0.1)
  assert not opt_lib.uses_aux_loss(None, aux_weight=0.0)


def test_phase_top_k_is_the_phase_holding_the_step():
  """A phase's `top_k` (the documents routed to the LM during it) overrides the model's; a
  phase without one, or no phases at all, keeps the model's."""
  phase = lambda steps, **kw: dict(steps=steps, learning_rate=1e-3, lm_weight=1.0,
                                   aux_weight=1.0, **kw)
  cfg = dict(phases=[phase(3), phase(2, top_k=1), phase(4, top_k=4)])
  got = [opt_lib.phase_top_k(cfg, s, default=16) for s in range(11)]
  assert got == [16] * 3 + [1] * 2 + [4] * 6  # the last phase's after the end
  assert opt_lib.phase_top_k({}, 5, default=2) == 2
  assert opt_lib.phase_top_k(dict(phases=PAPER_PHASES), 500, default=3) == 3


@pytest.mark.parametrize("top_k", [0, 2.0, True])
def test_bad_phase_top_k_names_the_value(top_k):
  phases = [dict(steps=1, learning_rate=1e-3, lm_weight=1.0, aux_weight=1.0, top_k=top_k)]
  with pytest.raises(ValueError, match=f"phases\\[0\\].top_k={top_k!r}"):
    opt_lib.make_optimizer(dict(phases=phases))
