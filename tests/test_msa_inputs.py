"""Bad inputs get clear errors: batches, the official-layout converter, MSA checkpoints."""

import json

import numpy as np
import pytest
import safetensors.numpy

from msa_jax.checkpoint import CheckpointError
from msa_jax.checkpoint import msa as msa_ckpt
from msa_jax.data.official import from_official
from msa_jax.model.batch import IGNORE, BatchError, MSABatch, check_batch
from tests.paths import SHARED

GOLDEN = SHARED / "data" / "golden" / "official-msa"
VOCAB = 50


def good_batch(**changes):
  b, n, g, t = 2, 3, 5, 4
  fields = dict(
      doc_tokens=np.ones((b, n, g), np.int32), doc_lengths=np.array([[5, 2, 0], [3, 3, 3]]),
      tokens=np.ones((b, t), np.int32), token_mask=np.ones((b, t), bool),
      positions=np.tile(np.arange(t), (b, 1)), query_mask=np.array([[1, 1, 0, 0]] * b, bool),
      memory_index=np.zeros(b, np.int32), labels=np.full((b, t), IGNORE),
      route_labels=np.array([[1, 0, 0], [0, 0, 1]]))
  fields.update(changes)
  return MSABatch(**fields)


def test_a_good_batch_passes():
  check_batch(good_batch(), vocab_size=VOCAB, need_route_labels=True)


@pytest.mark.parametrize("changes, message", [
    (dict(doc_tokens=np.ones((2, 0, 5), np.int32), doc_lengths=np.zeros((2, 0), np.int32),
          route_labels=np.zeros((2, 0))), r"no documents: doc_tokens has shape \(2, 0, 5\)"),
    (dict(doc_lengths=np.array([[5, 2, 0], [0, 0, 0]])), "sample 1 has no documents"),
    (dict(doc_lengths=np.array([[5, 0, 2], [3, 3, 3]])),
     r"sample 0: empty document slot before a used one in doc_lengths \[5, 0, 2\]"),
    (dict(doc_lengths=np.array([[5, 6, 0], [3, 3, 3]])),
     r"sample 0: doc_lengths \[5, 6, 0\] outside \[0, G=5\]"),
    (dict(tokens=np.ones((2, 0), np.int32), token_mask=np.ones((2, 0), bool),
          positions=np.ones((2, 0)), query_mask=np.ones((2, 0), bool),
          labels=np.ones((2, 0))), "no prompt tokens"),
    (dict(query_mask=np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)),
     "sample 1 has no routing-query tokens"),
    (dict(token_mask=np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool)),
     r"sample 0: token_mask \[1, 1, 0, 1\] is not right padding"),
    (dict(query_mask=np.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool),
          token_mask=np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)),
     "sample 0 has no routing-query tokens"),
    (dict(memory_index=np.array([0, 5])), r"memory_index \[0, 5\] outside \[0, T=4\]"),
    (dict(tokens=np.array([[1, 2, 3, VOCAB]] * 2)),
     r"tokens\[0, 3\] = 50 is not a token id in \[0, 50\)"),
    (dict(labels=np.array([[IGNORE, -1, 3, 4]] * 2)),
     r"labels\[0, 1\] = -1 is neither -100 nor a token id"),
    (dict(route_labels=np.array([[0, 0, 1], [0, 0, 1]])),
     r"sample 0: route_labels \[0, 0\] have no positive among its documents"),
    (dict(route_labels=np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 1.0]])),
     r"route_labels has a non-finite value nan at \(0, 1\)"),
    (dict(route_labels=np.array([[2, 0, 0], [0, 0, 1]])), "must be 0 or 1"),
    (dict(route_labels=None), "route_labels are required by the routing"),
    (dict(positions=np.zeros((2, 3), np.int32)),
     r"positions must have shape \(2, 4\), got \(2, 3\)"),
    (dict(positions=np.zeros((2, 4), np.float32)), "positions must be integers"),
])
def test_bad_batches_are_refused(changes, message):
  with pytest.raises(BatchError, match=message):
    check_batch(good_batch(**changes), vocab_size=VOCAB, need_route_labels=True)


def test_documents_beyond_the_padded_size_in_the_flat_layout():
  """Official flat rows converted into a too-small layout fail before anything is built."""
  ids = np.array([[5, 6, 7, 8, 9, 1, 2]])
  doc_ids = np.array([[1, 1, 1, 2, 2, 0, 0]])
  args = (ids, np.ones_like(ids), doc_ids, np.zeros_like(ids))
  batch, index = from_official(*args)
  assert batch.doc_lengths.tolist() == [[3, 2]] and batch.memory_index.tolist() == [0]
  assert index.doc_ids.tolist() == [[1, 2]]
  with pytest.raises(BatchError, match="doc_len=2 or prompt_len=2 is too small"):
    from_official(*args, doc_len=2)


@pytest.mark.parametrize("doc_ids, labels, message", [
    ([[2, 2, 1, 1, 0, 0]], None, "document id 1 at flat position 2 comes after id 2"),
    ([[1, 1, 2, 1, 0, 0]], None, "document id 1 at flat position 3 comes after id 2"),
    ([[1, 1, -2, 2, 0, 0]], None, "prompt tokens between documents"),
    ([[0, 0, -1, -1, -1, -1]], None, "sample 0 has no document tokens"),
    ([[1, 1, 2, 2, 0, 0]], [[-100, 3, -100, -100, -100, -100]], "labels on document tokens"),
    ([[1, 1, 2, 2, 0, 0]], [[-100, -100, -100, -100, 4, -100]],
     "labels at flat position 4 is not preceded by a prompt token"),
])
def test_unsupported_official_rows_are_refused(doc_ids, labels, message):
  ids = np.arange(1, 7)[None]
  with pytest.raises(BatchError, match=message):
    from_official(ids, np.ones_like(ids), np.array(doc_ids), np.zeros_like(ids),
                  labels=None if labels is None else np.array(labels))


def test_official_attention_mask_must_be_binary():
  ids = np.arange(1, 5)[None]
  with pytest.raises(BatchError, match=r"attention_mask must be 0/1, got values \[0, 2\]"):
    from_official(ids, np.array([[2, 2, 0, 2]]), np.array([[1, 1, 0, 0]]), np.zeros_like(ids))


@pytest.fixture(scope="module")
def official():
  if not GOLDEN.is_dir():
    pytest.skip(f"no goldens at {GOLDEN}")
  config = json.loads((GOLDEN / "config.json").read_text())
  return config, safetensors.numpy.load_file(GOLDEN / "weights.safetensors")


def test_official_checkpoint_round_trip(official, tmp_path):
  config, tensors = official
  cfg, msa = msa_ckpt.msa_config_from_official(config)
  assert msa.arch.router_layer_ids(cfg.num_layers) == (2, 3) and msa.arch.top_k == 2
  assert msa.arch.chunk_size == 4 and msa.loss.aux_weight == 0.1 and msa.loss.temperature == 0.05
  params = msa_ckpt.official_to_params(tensors, cfg, msa)
  back = msa_ckpt.params_to_official(params, cfg, msa)
  assert set(back) == set(tensors)
  for name, value in tensors.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  # From a directory, as a user would load a released checkpoint.
  (tmp_path / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
  cfg2, msa2, params2 = msa_ckpt.load_official_checkpoint(tmp_path)
  assert (cfg2, msa2) == (cfg, msa)
  np.testing.assert_array_equal(params2["layers_3"]["attn"]["router_q_proj"]["kernel"],
                                params["layers_3"]["attn"]["router_q_proj"]["kernel"])


def test_official_checkpoint_errors(official):
  config, tensors = official
  cfg, msa = msa_ckpt.msa_config_from_official(config)
  partial = {k: v for k, v in tensors.items() if "layers.3.self_attn.router_k" not in k}
  with pytest.raises(CheckpointError,
                     match=r"missing \(1\): model.layers.3.self_attn.router_k_proj.0.weight"):
    msa_ckpt.official_to_params(partial, cfg, msa)
  # Weights with router projections but a config that says non-decoupled.
  with pytest.raises(CheckpointError, match=r"unexpected \(4\): .*router_k_proj"):
    msa_ckpt.official_to_params(tensors, cfg, msa.replace(decouple_router=False))
  with pytest.raises(CheckpointError, match="temperature tensor 0.05 differs from the "
                     "config's infonce_loss_temp 0.1"):
    msa_ckpt.official_to_params(tensors, cfg, msa.replace(temperature=0.1))
  bad = {**config, "msa_config": {**config["msa_config"], "router_layer_idx": "2,9"}}
  with pytest.raises(CheckpointError, match=r"router_layers=\(2, 9\)"):
    msa_ckpt.msa_config_from_official(bad)
  bad = {**config, "msa_config": {**config["msa_config"], "aux_loss_method": "MSE"}}
  with pytest.raises(CheckpointError, match="aux_loss_method 'MSE'"):
    msa_ckpt.msa_config_from_official(bad)
  with pytest.raises(CheckpointError, match="no msa_config"):
    msa_ckpt.msa_config_from_official({k: v for k, v in config.items() if k != "msa_config"})
