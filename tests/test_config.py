"""Config hygiene (issue 12 item 8): each trap a config used to hide, now explicit or refused.

Model loading (`msa_jax.loading.build`): a preset beside a checkpoint must be its architecture;
overrides and `num_layers` only where they apply; MSA fields checked against the model's layers
before any data or weights load. Routing math (`MSAConfig.cosine_routing`) no longer follows
the training loss once set. `MSAConfig` is split into architecture, loss and runtime parts:
a loss setting reaches neither inference nor a bank.
"""

import jax
import ml_collections
import numpy as np
import pytest

from configs import demo
from configs import generate as generate_config
from msa_jax import bank, generate
from msa_jax.checkpoint import hf
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.loading import build
from msa_jax.model import (MSAArch, MSAConfig, MSALoss, MSARuntime, MSATransformer, get_preset,
                           init_params)
from msa_jax.model.config import FIELD_DEFAULTS
from msa_jax.train import loop
from msa_jax.train import workdir
from msa_jax.validation import UserError
from tests.model_params import eager_init
from tests.test_msa_model import CFG, make_batch

TINY = get_preset("tiny")


def _config(**model):
  c = ml_collections.ConfigDict(dict(dtype="float32", model=dict(model),
                                     msa=dict(top_k=1, chunk_size=4)))
  return c


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A HF checkpoint of the `tiny` preset's architecture (random weights)."""
  path = tmp_path_factory.mktemp("ckpt") / "tiny"
  hf.save_hf_checkpoint(path, TINY, init_params(MSATransformer(TINY), jax.random.key(0)))
  return str(path)


def test_preset_beside_a_checkpoint_must_be_its_architecture(tiny_checkpoint):
  for preset in ("", None, "tiny"):  # empty: the checkpoint's own; "tiny": the same
    assert build.model_config(_config(checkpoint=tiny_checkpoint, preset=preset)) == TINY
  with pytest.raises(UserError, match=r"model.preset='smollm2_135m' is not the architecture of "
                     r"model.checkpoint=.*embed_dim: 576 vs 64.*--config.model.preset=tiny or"):
    build.model_config(_config(checkpoint=tiny_checkpoint, preset="smollm2_135m"))
  with pytest.raises(UserError, match=r"model.overrides=\{'num_heads': 8\} apply to a preset"):
    build.model_config(_config(checkpoint=tiny_checkpoint, overrides=dict(num_heads=8)))
  cut = build.model_config(_config(checkpoint=tiny_checkpoint, preset="tiny", num_layers=1))
  assert cut == TINY.replace(num_layers=1)  # the preset is compared before the cut


def test_preset_fields_are_checked():
  with pytest.raises(UserError, match="model.preset is required without model.checkpoint"):
    build.model_config(_config(preset=""))
  with pytest.raises(UserError, match="unknown model preset 'nope'"):
    build.model_config(_config(preset="nope"))
  with pytest.raises(UserError, match="model.num_layers cuts a checkpoint"):
    build.model_config(_config(preset="tiny", num_layers=1))
  cfg = build.model_config(_config(preset="tiny", overrides=dict(num_layers=3)), vocab_size=40)
  assert (cfg.num_layers, cfg.vocab_size) == (3, 40)


def test_train_refuses_a_bad_model_config_before_loading_data(tmp_path, monkeypatch):
  """Layer choices that do not fit the model, a bad dtype, a missing checkpoint: refused
  before the data (or anything heavy) is touched."""
  monkeypatch.setattr(loop.data_lib, "make_data",
                      lambda config: pytest.fail("data loaded before the config was checked"))
  def msa(**fields):
    def change(config):
      with config.msa.ignore_type():
        config.msa.update(fields)
    return change

  def checkpoint(config):
    config.model = ml_collections.ConfigDict(dict(checkpoint=str(tmp_path / "none.gguf")))

  cases = [
      (msa(router_layers=(5,)), r"msa: MSAConfig.router_layers=\(5,\): indices must"),
      (msa(aux_layers=(0,)), r"msa: MSAConfig.aux_layers \[0\] are not router"),
      (msa(cosine_routing="yes"), "msa: MSAConfig.cosine_routing must be"),
      (msa(cosine_routing=1), "msa: MSAConfig.cosine_routing must be.*got 1$"),
      (lambda config: setattr(config, "dtype", "float8"), "dtype: "),
      (checkpoint, "model.checkpoint=.*does not exist"),
  ]
  for change, message in cases:
    config = demo.get_config("smoke")
    change(config)
    with pytest.raises(UserError, match=message):
      loop.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cosine_routing_is_explicit_routing_math():
  """Unset, cosine routing follows the official rule (InfoNCE family: cosine; BCE: dot
  products). Set, the loss no longer changes how documents are scored at inference."""
  assert MSAConfig(aux_loss="infonce").arch.cosine_routing
  assert not MSAConfig(aux_loss="bce").arch.cosine_routing
  assert MSAConfig(aux_loss="bce", cosine_routing=True).arch.cosine_routing
  assert not MSAConfig(aux_loss="infonce", cosine_routing=False).arch.cosine_routing
  assert bank.msa_fields({"cosine_routing": False}) == {"cosine_routing": False}
  assert bank.msa_fields({"cosine_routing": None}) == {}
  batch = make_batch()
  base = MSAConfig(top_k=2, chunk_size=3)
  params = eager_init(MSATransformer(CFG, base.replace(aux_loss="bce")), jax.random.key(0))

  def scores(msa):
    out = MSATransformer(CFG, msa).apply({"params": params}, batch)
    return {i: np.asarray(r.doc_scores) for i, r in out.routes.items()}

  infonce = scores(base)
  same = scores(base.replace(aux_loss="bce", cosine_routing=True))
  dot = scores(MSAConfig(top_k=2, chunk_size=3, aux_loss="bce"))
  for i in infonce:
    np.testing.assert_array_equal(same[i], infonce[i])
    assert not np.allclose(dot[i], infonce[i])


def test_dtype_is_the_compute_dtype_in_every_config():
  """`dtype` is the compute dtype everywhere (train configs keep float32 parameters); the
  generate config names the weights' dtype separately, and both are checked up front."""
  config = generate_config.get_config()
  assert (config.dtype, config.param_dtype) == ("float32", "float32")
  generate.check_config(config, ["a prompt"])
  config.param_dtype = "float8"
  with pytest.raises(UserError, match="param_dtype: "):
    generate.check_config(config, ["a prompt"])
  train_config = demo.get_config("smoke")
  train_config.dtype = "bfloat16"
  _, _, model = build.build_model(train_config, vocab_size=64)
  assert (model.dtype, model.param_dtype) == (jax.numpy.bfloat16, jax.numpy.float32)


def test_msa_fields_split_into_architecture_loss_and_runtime():
  """The flat `msa` fields of a config land in their parts; `cosine_routing` is resolved in the
  architecture once; a misspelt field is refused naming the closest one."""
  msa = MSAConfig(top_k=3, chunk_size=8, aux_loss="bce", aux_weight=0.5, remat=True,
                  kernel_impl="xla")
  assert msa.arch == MSAArch(top_k=3, chunk_size=8, cosine_routing=False)
  assert msa.loss == MSALoss(aux_loss="bce", aux_weight=0.5)
  assert msa.runtime == MSARuntime(remat=True, kernel_impl="xla")
  assert MSAConfig(arch=msa.arch, loss=msa.loss, runtime=msa.runtime) == msa
  assert MSAConfig(**{k: v for k, v in FIELD_DEFAULTS.items()}) == MSAConfig()
  # A loss change keeps the routing math (the trap: aux_loss used to switch cosine routing).
  changed = msa.replace(aux_loss="infonce", temperature=0.2, lm_weight=0.0,
                        batch_negatives=True)
  assert changed.arch == msa.arch and changed.runtime == msa.runtime
  assert changed.loss == MSALoss(aux_loss="infonce", temperature=0.2, lm_weight=0.0,
                                 aux_weight=0.5, batch_negatives=True)
  assert msa.replace(aux_loss="infonce", cosine_routing=None).arch.cosine_routing
  assert msa.aux_layer_ids(4) == (2, 3)
  for make in (lambda: MSAConfig(topk=2), lambda: msa.replace(topk=2)):
    with pytest.raises(ValueError, match="MSAConfig has no field 'topk'; did you mean 'top_k'"):
      make()
  with pytest.raises(ValueError, match="either flat fields or parts"):
    MSAConfig(arch=MSAArch(), top_k=2)
  with pytest.raises(UserError, match="msa: MSAConfig has no field 'aux_wieght'; did you mean "
                     "'aux_weight'"):
    build.msa_config(ml_collections.ConfigDict(dict(msa=dict(aux_wieght=0.1))), 4)
  with pytest.raises(bank.CliError, match="--config.msa.chunk_sise: .*did you mean 'chunk_size'"):
    bank.msa_fields({"chunk_sise": 4})


@pytest.mark.slow
def test_loss_settings_reach_neither_the_engine_nor_the_bank(tmp_path):
  """A bank encoded under one loss serves a model config that differs only in its loss part
  (the fingerprint is the architecture's); the engine keeps only architecture and runtime."""
  base = MSAConfig(top_k=2, chunk_size=3)
  params = eager_init(MSATransformer(CFG, base), jax.random.key(0))
  other = base.replace(aux_loss="bce", aux_weight=0.0, lm_weight=2.0, temperature=0.2,
                       batch_negatives=True)
  f32 = jax.numpy.float32
  assert (encode_lib.bank_fingerprint(CFG, other.arch, params, f32)
          == encode_lib.bank_fingerprint(CFG, base.arch, params, f32))
  memory = encode_lib.create_bank(tmp_path / "bank", CFG, base, params)
  engine = engine_lib.MSAEngine(CFG, other, params, memory)  # the fingerprint matches
  assert engine.msa == MSAConfig(arch=base.arch, runtime=base.runtime)
  assert engine.msa.loss == MSALoss()


def test_a_resumed_run_may_change_the_msa_runtime_fields_only():
  """The runtime part (remat, kernel_impl) changes neither parameters nor math: a workdir's
  run may change it on resume; an architecture or loss field is a different run."""
  recorded = {"msa": {"top_k": 2, "remat": False, "kernel_impl": "auto", "aux_weight": 0.1}}
  now = {"msa": {"top_k": 2, "remat": True, "kernel_impl": "xla", "aux_weight": 0.1}}
  assert workdir.config_diff(recorded, now) == (
      {}, {"msa.kernel_impl": ("auto", "xla"), "msa.remat": (False, True)})
  for name, value in (("top_k", 3), ("aux_weight", 0.2)):
    refused, _ = workdir.config_diff(recorded, {"msa": dict(recorded["msa"], **{name: value})})
    assert list(refused) == [f"msa.{name}"]
