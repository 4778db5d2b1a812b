"""Model presets: real published dimensions, checked against HF models built on the meta device."""

import jax
import pytest
import torch
import transformers

from msa_jax.checkpoint import hf
from msa_jax.model import (PRESETS, Transformer, abstract_params, count_params,
                           get_preset, param_logical_axes)

# Sizes on the model cards (tied embeddings counted once).
MODEL_CARD_SIZE = {"qwen3_0_6b": 0.6e9, "qwen3_1_7b": 1.7e9, "qwen3_4b": 4.0e9,
                   "smollm2_135m": 135e6}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_hf_architecture(name):
  """Every parameter's shape equals the HF model's for the same config (no allocation)."""
  cfg = get_preset(name)
  abstract = abstract_params(Transformer(cfg))
  hf_config = transformers.AutoConfig.for_model(**hf.config_to_hf(cfg))
  with torch.device("meta"):
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
  hf_shapes = {n: tuple(p.shape) for n, p in hf_model.state_dict().items()}
  if cfg.tie_embeddings:
    hf_shapes.pop("lm_head.weight")
  specs = hf.param_specs(cfg)
  assert {s.hf_name: s.hf_shape for s in specs} == hf_shapes
  flat = {tuple(k.key for k in path): x.shape
          for path, x in jax.tree_util.tree_leaves_with_path(jax.tree.map(
              lambda b: b.value, abstract, is_leaf=lambda b: hasattr(b, "value")))}
  assert flat == {s.path: s.shape for s in specs}
  assert count_params(abstract) == sum(p.numel() for p in hf_model.parameters())
  if name in MODEL_CARD_SIZE:
    assert count_params(abstract) == pytest.approx(MODEL_CARD_SIZE[name], rel=0.02)


def test_qwen3_4b_builds_abstractly_with_logical_axes():
  model = Transformer(get_preset("qwen3_4b"))
  axes = param_logical_axes(model)
  assert tuple(axes["layers_35"]["attn"]["q_proj"]["kernel"]) == ("embed", "q_heads", "head_dim")
  assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(jax.tree.map(lambda b: b.value, abstract_params(model),
                                                   is_leaf=lambda b: hasattr(b, "value"))))


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ValueError, match="qwen3_4b"):
    get_preset("qwen3_5b")


@pytest.mark.parametrize("change, match", [
    (dict(num_heads=6, num_kv_heads=4), "multiple of num_kv_heads"),
    (dict(head_dim=15), "even"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(rope_theta=0.0), "rope_theta"),
])
def test_invalid_config_is_refused(change, match):
  with pytest.raises(ValueError, match=match):
    get_preset("tiny").replace(**change)
