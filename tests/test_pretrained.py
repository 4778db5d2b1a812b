"""A pretrained backbone under fresh routers: msa_jax.loading.pretrained."""

import functools

import flax.traverse_util
import jax
import numpy as np
import pytest

from msa_jax import checkpoint
from msa_jax.checkpoint import hf
from msa_jax.model import MSAConfig, MSATransformer, abstract_params, get_preset
from msa_jax.train import optimizer as optim_lib
from msa_jax.loading import pretrained
from msa_jax.runtime import sharding as sharding_lib
from msa_jax.train import step as step_lib

CFG = get_preset("tiny").replace(num_layers=4)
MSA = MSAConfig(top_k=2, chunk_size=8, aux_loss="bce")  # bce: aux_bias must stay fresh too


@functools.lru_cache(maxsize=None)
def _state(seed):
  """A fresh train state (cached: do not donate it)."""
  model = MSATransformer(CFG, MSA)
  tx = optim_lib.make_optimizer({})
  return step_lib.init_train_state(model, tx, jax.random.key(seed),
                                   sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1)))[0]


def _flat(params):
  return flax.traverse_util.flatten_dict(jax.device_get(params))


def _mesh():
  return sharding_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))


@pytest.mark.slow
def test_backbone_from_checkpoint_routers_fresh(tmp_path):
  donor = _state(1).params  # the "pretrained" model: another init
  hf.save_hf_checkpoint(tmp_path / "ckpt", CFG, donor)
  fresh = _state(0)
  assert pretrained.checkpoint_config(tmp_path / "ckpt") == CFG
  model = MSATransformer(CFG, MSA)
  shardings = step_lib.state_shardings(model, optim_lib.make_optimizer({}), _mesh()).params
  _, backbone = pretrained.load_backbone(tmp_path / "ckpt")
  loaded = pretrained.load_params(model, jax.random.key(0), backbone, shardings)
  got, want, init = _flat(loaded), _flat(donor), _flat(fresh.params)
  assert set(got) == set(init)
  routers = [p for p in got if pretrained.is_fresh(p)]
  assert len(routers) == 2 * 2 + 1  # router q/k of layers 2, 3, and aux_bias
  for path in got:
    ref = init[path] if pretrained.is_fresh(path) else want[path]
    np.testing.assert_array_equal(got[path], ref, err_msg="/".join(path))
  flat_loaded = flax.traverse_util.flatten_dict(loaded)
  for path, leaf in flax.traverse_util.flatten_dict(fresh.params).items():
    assert flat_loaded[path].sharding == leaf.sharding, path
    assert flat_loaded[path].dtype == leaf.dtype, path


@pytest.mark.slow
@pytest.mark.parametrize("msa", [
    MSAConfig(top_k=2, chunk_size=8, aux_loss="bce", router_bias=True, remat=True),
    MSAConfig(top_k=2, chunk_size=8, router_layers=(0, 3)),
])
def test_init_missing_equals_init(msa, monkeypatch):
  """Only the absent parameters are initialised, to the values `model.init` gives them; for a
  backbone checkpoint (only MSA's additions absent) without running the forward."""
  model = MSATransformer(CFG, msa)
  full = _flat(model.init(jax.random.key(3), *model.example_inputs())["params"])
  full = {p: np.asarray(flax.linen.unbox(v)) for p, v in full.items()}
  abstract_params(model)  # traced here, so that the forward's inputs are asked for below only
  for backbone, keep in ((True, lambda p: not pretrained.is_fresh(p)),
                         (False, lambda p: p[0] != "layers_1")):  # here a whole layer absent
    provided = flax.traverse_util.unflatten_dict(
        {p: v + 1.0 for p, v in full.items() if keep(p)})
    with monkeypatch.context() as patch:
      if backbone:
        patch.setattr(MSATransformer, "example_inputs",
                      lambda self: pytest.fail("the forward ran for a backbone checkpoint"))
      got = pretrained.init_missing(model, jax.random.key(3), provided)
    assert sorted(got) == sorted(p for p in full if not keep(p))
    for path, value in got.items():
      np.testing.assert_array_equal(value, full[path], err_msg="/".join(path))


@pytest.mark.slow
def test_first_layers_only(tmp_path, monkeypatch):
  """The first layers' tensors, as the full load gives them; the other layers are never read."""
  hf.save_hf_checkpoint(tmp_path / "ckpt", CFG, _state(1).params)
  _, full = pretrained.load_backbone(tmp_path / "ckpt")
  read = []
  getitem = hf.SafetensorsDir.__getitem__
  def recorded(self, name):
    read.append(name)
    return getitem(self, name)
  monkeypatch.setattr(hf.SafetensorsDir, "__getitem__", recorded)
  cfg, params = pretrained.load_backbone(tmp_path / "ckpt", num_layers=2)
  assert cfg == CFG.replace(num_layers=2) and sorted(k for k in params if k.startswith("layers_")) == [
      "layers_0", "layers_1"]
  assert read and not [n for n in read if n.startswith(("model.layers.2.", "model.layers.3."))]
  want = {p: v for p, v in _flat(full).items() if p[0] not in ("layers_2", "layers_3")}
  got = _flat(params)
  assert set(got) == set(want)
  for path, value in got.items():
    np.testing.assert_array_equal(value, want[path], err_msg="/".join(path))
  with pytest.raises(ValueError, match=r"model.num_layers=5 must be in \[1, 4\]"):
    pretrained.checkpoint_config(tmp_path / "ckpt", num_layers=5)


@pytest.mark.slow
def test_mismatch_is_reported():
  params = _state(0).params
  model = MSATransformer(CFG, MSA)
  backbone = flax.traverse_util.unflatten_dict({
      p: v for p, v in _flat(params).items() if not pretrained.is_fresh(p) and p[0] != "final_norm"})
  backbone["layers_0"] = dict(backbone["layers_0"], extra={"kernel": np.zeros(3)})
  with pytest.raises(hf.CheckpointError, match=r"missing \['final_norm/scale'\].*unexpected "
                     r"\['layers_0/extra/kernel'\]"):
    pretrained.load_params(model, jax.random.key(0), backbone)
  bad = flax.traverse_util.unflatten_dict({
      p: v for p, v in _flat(params).items() if not pretrained.is_fresh(p)})
  bad["final_norm"] = {"scale": np.zeros(7)}
  with pytest.raises(hf.CheckpointError, match=r"final_norm/scale: model \(64,\) vs checkpoint "
                     r"\(7,\)"):
    pretrained.load_params(model, jax.random.key(0), bad)


def test_missing_checkpoint_names_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match="model.checkpoint="):
    checkpoint.checkpoint_path(tmp_path / "nope.gguf")


@pytest.mark.slow
def test_smollm2_gguf_config_and_tokenizer():
  cfg = pretrained.checkpoint_config("smollm2")
  # GGUF stores norm_eps as float32.
  assert cfg == get_preset("smollm2_135m").replace(norm_eps=cfg.norm_eps)
  assert cfg.norm_eps == pytest.approx(1e-5)
  assert checkpoint.checkpoint_tokenizer("smollm2").vocab_size == cfg.vocab_size
