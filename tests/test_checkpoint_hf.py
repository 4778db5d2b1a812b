"""HF safetensors import/export: sharded and single files, any dtype, exact round trip, errors."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from msa_jax.checkpoint import hf
from msa_jax.model import Transformer, get_preset, init_params
from tests import hf_oracle


@pytest.fixture(scope="module")
def qwen3_bf16_dirs(tmp_path_factory):
  """One random Qwen3 saved by transformers in bf16, as a single file and as 4+ shards."""
  model = hf_oracle.random_hf_model("qwen3", hidden=64, heads=4, kv_heads=2, head_dim=16,
                                    layers=2, tied=False, dtype=torch.bfloat16)
  single, sharded = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sharded")
  model.save_pretrained(single)
  model.save_pretrained(sharded, max_shard_size="40KB")
  return model, single, sharded


def test_sharded_checkpoint_is_really_sharded(qwen3_bf16_dirs):
  _, _, sharded = qwen3_bf16_dirs
  index = json.loads((sharded / hf.SAFETENSORS_INDEX).read_text())
  assert len(set(index["weight_map"].values())) >= 4


def test_single_and_sharded_load_identically_in_checkpoint_dtype(qwen3_bf16_dirs):
  _, single, sharded = qwen3_bf16_dirs
  cfg_a, a = hf.load_hf_checkpoint(single)
  cfg_b, b = hf.load_hf_checkpoint(sharded)
  assert cfg_a == cfg_b
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert all(x.dtype == jnp.bfloat16 for x in leaves_a)
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


@pytest.mark.parametrize("max_shard_bytes", [None, 30_000])
def test_export_round_trip_is_bit_exact(qwen3_bf16_dirs, tmp_path, max_shard_bytes):
  _, single, _ = qwen3_bf16_dirs
  cfg, params = hf.load_hf_checkpoint(single)
  out = tmp_path / "export"
  hf.save_hf_checkpoint(out, cfg, params, max_shard_bytes=max_shard_bytes)
  original, exported = hf.SafetensorsDir(single), hf.SafetensorsDir(out)
  assert set(original) == set(exported)
  for name in original:
    a, b = original[name], exported[name]
    assert a.dtype == b.dtype == ml_dtypes.bfloat16, name
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), name
  assert (out / hf.SAFETENSORS_INDEX).exists() == (max_shard_bytes is not None)
  assert hf.config_from_hf(json.loads((out / "config.json").read_text())) == cfg


def test_transformers_loads_our_export(tmp_path):
  """Export of our own randomly initialised params, read back by transformers: same logits."""
  cfg = get_preset("tiny")
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(3))
  hf.save_hf_checkpoint(tmp_path / "ours", cfg, params, max_shard_bytes=50_000)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "ours", attn_implementation="eager").float().eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
  got, _ = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32))
  np.testing.assert_allclose(np.asarray(got), hf_oracle.hf_logits(theirs, tokens), atol=1e-5)


def test_dtype_cast_on_load(qwen3_bf16_dirs):
  _, single, _ = qwen3_bf16_dirs
  _, params = hf.load_hf_checkpoint(single, dtype=jnp.float32)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def _tensors(cfg):
  return hf.params_to_hf(init_params(Transformer(cfg), jax.random.key(0)), cfg)


def test_missing_unexpected_and_misshapen_tensors_are_all_listed():
  cfg = get_preset("tiny")
  tensors = _tensors(cfg)
  del tensors["model.layers.1.self_attn.k_norm.weight"]
  tensors["model.layers.7.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
  tensors["model.norm.weight"] = np.zeros((65,), np.float32)
  with pytest.raises(hf.CheckpointError) as e:
    hf.hf_to_params(tensors, cfg)
  msg = str(e.value)
  assert "missing (1): model.layers.1.self_attn.k_norm.weight" in msg
  assert "unexpected (1): model.layers.7.mlp.up_proj.weight" in msg
  assert "model.norm.weight: (65,) in the checkpoint, expected (64,)" in msg


def test_llama_weights_do_not_load_into_a_qwen3_config():
  llama = get_preset("tiny").replace(qk_norm=False)
  with pytest.raises(hf.CheckpointError, match=r"missing \(4\).*q_norm"):
    hf.hf_to_params(_tensors(llama), get_preset("tiny"))


def test_tied_lm_head_must_equal_embedding():
  cfg = get_preset("tiny").replace(tie_embeddings=True)
  tensors = _tensors(cfg)
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
  hf.hf_to_params(tensors, cfg)  # identical copy: accepted
  tensors["lm_head.weight"][0, 0] += 1
  with pytest.raises(hf.CheckpointError, match="lm_head.weight differs"):
    hf.hf_to_params(tensors, cfg)


@pytest.mark.parametrize("change, match", [
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_unsupported_configs_are_refused(change, match):
  config = hf.config_to_hf(get_preset("tiny"))
  config.update(change)
  with pytest.raises(hf.CheckpointError, match=match):
    hf.config_from_hf(config)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(hf.config_to_hf(get_preset("tiny"))))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf_checkpoint(tmp_path)


def test_failed_export_leaves_nothing_behind(tmp_path):
  cfg = get_preset("tiny")
  with pytest.raises(hf.CheckpointError, match="params lack"):
    hf.save_hf_checkpoint(tmp_path / "out", cfg, {"embed": {}})
  assert list(tmp_path.iterdir()) == []
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("keep me")
  with pytest.raises(FileExistsError):
    hf.save_hf_checkpoint(tmp_path / "full", cfg, {})
