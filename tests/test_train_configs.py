"""configs/beir.py and configs/nq320k.py: pretrained SmolLM2 + fresh routers, end to end."""

import json

import numpy as np
import pytest

from configs import beir, nq320k
from msa_jax.train.data import make_data
from msa_jax.train.loop import train_and_evaluate


@pytest.mark.parametrize("module", [beir, nq320k])
def test_configs_parse(module):
  for arg in (None, "smoke"):
    c = module.get_config(arg)
    assert c.model.checkpoint == "smollm2" and c.data.kind == module.__name__.split(".")[-1]
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    module.get_config("nope")


def test_nq320k_without_data_fails_at_once(tmp_path):
  c = nq320k.get_config()
  c.data.path = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"(?s)NQ320k data folder .*missing does not "
                     r"exist.*--config.data.path"):
    make_data(c)


def _run(config, workdir):
  out = train_and_evaluate(config, workdir)
  saved = json.loads((workdir / "final_metrics.json").read_text())
  assert saved == pytest.approx(out)
  for key in ("loss", "lm_loss", "aux_loss", "eval_loss", "eval_lm_loss", "eval_aux_loss"):
    assert np.isfinite(saved[key]), key
  return saved


@pytest.mark.slow
def test_beir_smoke_on_nfcorpus(tmp_path):
  _run(beir.get_config("smoke"), tmp_path)


@pytest.mark.slow
def test_nq320k_smoke_on_the_fixture(tmp_path):
  _run(nq320k.get_config("smoke"), tmp_path)
