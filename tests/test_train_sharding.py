"""Sharded training on 8 fake CPU devices gives the single-device losses.

The pytest process has one CPU device, so the check runs this file as a script in a subprocess
with `XLA_FLAGS=--xla_force_host_platform_device_count=8`; the script prints one JSON line.
"""

import json

import numpy as np
import pytest

from tests.fake_devices import run_on_fake_devices

MESHES = {"dp4_fsdp2": {"data": 4, "fsdp": 2, "tensor": 1},
          "dp2_fsdp2_tp2": {"data": 2, "fsdp": 2, "tensor": 2}}
STEPS = 3


def tiny_batch(seed: int = 0, b: int = 8, n: int = 4, g: int = 6, t: int = 8, vocab: int = 64):
  """A valid numpy MSABatch: right-padded prompts with >= 1 query token, documents of length
  >= 1 with unused slots last, and one positive route label per sample."""
  from msa_jax.model.batch import IGNORE, MSABatch
  rng = np.random.default_rng(seed)
  num_docs = rng.integers(2, n + 1, size=b)
  doc_lengths = np.where(np.arange(n) < num_docs[:, None], rng.integers(1, g + 1, (b, n)), 0)
  prompt_len = rng.integers(3, t + 1, size=b)
  token_mask = np.arange(t) < prompt_len[:, None]
  query_len = rng.integers(1, 3, size=b)
  query_mask = (np.arange(t) >= 1) & (np.arange(t) < 1 + query_len[:, None]) & token_mask
  tokens = np.where(token_mask, rng.integers(0, vocab, (b, t)), 0)
  labels = np.where(token_mask & (np.arange(t) >= 1 + query_len[:, None]), tokens, IGNORE)
  route_labels = np.zeros((b, n), np.int32)
  route_labels[np.arange(b), rng.integers(0, num_docs)] = 1
  return MSABatch(
      doc_tokens=rng.integers(0, vocab, (b, n, g)).astype(np.int32),
      doc_lengths=doc_lengths.astype(np.int32), tokens=tokens.astype(np.int32),
      token_mask=token_mask, positions=np.broadcast_to(np.arange(t), (b, t)).astype(np.int32),
      query_mask=query_mask, memory_index=np.ones((b,), np.int32),
      labels=labels.astype(np.int32), route_labels=route_labels)


def _worker() -> None:
  """Trains STEPS steps on one device and on each mesh; prints losses and param shardings."""
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  from msa_jax.model import ModelConfig, MSAConfig, MSATransformer, check_batch
  from msa_jax.train import (init_train_state, make_loss_weights, make_mesh, make_optimizer,
                             make_train_step, shard_batch)

  config = ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, tie_embeddings=False)
  msa = MSAConfig(top_k=2, chunk_size=2, kernel_impl="xla")
  model = MSATransformer(config, msa)
  opt_cfg = dict(learning_rate=1e-2, schedule="constant", warmup_steps=1, weight_decay=0.01,
                 phases=[dict(steps=2, learning_rate=1e-2, lm_weight=0.1, aux_weight=1.0),
                         dict(steps=5, learning_rate=3e-3, lm_weight=1.0, aux_weight=0.1)])
  optimizer = make_optimizer(opt_cfg)
  weights = make_loss_weights(opt_cfg)
  batches = [tiny_batch(seed) for seed in range(STEPS)]
  for batch in batches:
    check_batch(batch, vocab_size=config.vocab_size, need_route_labels=True)
  result = {"devices": jax.device_count()}

  def run(mesh):
    state, shardings = init_train_state(model, optimizer, jax.random.key(0), mesh)
    step = make_train_step(model, config, msa.loss, optimizer, weights, mesh=mesh,
                           shardings=shardings)
    losses = []
    for batch in batches:
      batch = jax.tree.map(jax.numpy.asarray, batch) if mesh is None else shard_batch(batch, mesh)
      state, metrics = step(state, batch)
      losses.append([float(metrics[k]) for k in ("loss", "lm_loss", "aux_loss")])
    return state, losses

  _, result["single"] = run(None)
  for name, shape in MESHES.items():
    state, losses = run(make_mesh(shape))
    p = state.params
    result[name] = {
        "losses": losses,
        "q_kernel": str(p["layers_1"]["attn"]["q_proj"]["kernel"].sharding.spec),
        "q_kernel_shards": len({str(s.index) for s in
                                p["layers_1"]["attn"]["q_proj"]["kernel"].addressable_shards}),
        "mu_gate": str(state.opt_state[1][0].mu["layers_0"]["mlp"]["gate_proj"]["kernel"]
                       .sharding.spec),
        "step": int(state.step),
    }
  print(json.dumps(result))


@pytest.fixture(scope="module")
def worker_result():
  return run_on_fake_devices(__file__)


@pytest.mark.slow
def test_worker_sees_eight_devices(worker_result):
  assert worker_result["devices"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_losses_match_single_device(worker_result, mesh):
  single = np.asarray(worker_result["single"])
  sharded = np.asarray(worker_result[mesh]["losses"])
  assert single.shape == (STEPS, 3) and np.isfinite(single).all()
  assert not np.allclose(single[0], single[-1])  # training moves the losses
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  assert worker_result[mesh]["step"] == STEPS


@pytest.mark.slow
def test_params_and_optimizer_state_are_sharded(worker_result):
  fsdp = worker_result["dp4_fsdp2"]
  # q_proj kernel [embed, q_heads, head_dim]: embed over fsdp, heads over tensor (size 1 here).
  assert fsdp["q_kernel"] == "P('fsdp', 'tensor', None)", fsdp["q_kernel"]
  assert fsdp["q_kernel_shards"] == 2
  tp = worker_result["dp2_fsdp2_tp2"]
  assert tp["q_kernel"] == "P('fsdp', 'tensor', None)", tp["q_kernel"]
  assert tp["q_kernel_shards"] == 4
  assert tp["mu_gate"] == "P('fsdp', 'tensor')", tp["mu_gate"]


if __name__ == "__main__":
  _worker()
