"""Load what `python -m msa_jax.train` left in a workdir: config, tokenizer and trained params.

  trained = load_trained("/tmp/msa_demo")   # the latest checkpoint
  trained.model.apply({"params": trained.params}, batch)

The workdir's `config.json` rebuilds the model and tokenizer exactly as the training run did;
only the parameters are read from the orbax checkpoint, into their abstract shapes (nothing is
initialised, the optimiser state is not read).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

from msa_jax.checkpoint import orbax as ckpt_lib
from msa_jax.data import synthetic
from msa_jax.loading import pretrained
from msa_jax.loading.build import build_model
from msa_jax.model import ModelConfig, MSAConfig, MSATransformer, abstract_params


@dataclasses.dataclass
class TrainedModel:
  """A trained MSA model: its config, modules, parameters and tokenizer."""

  config: ml_collections.ConfigDict
  model_config: ModelConfig
  msa: MSAConfig
  model: MSATransformer
  params: Any
  tokenizer: Any
  step: int


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The training config saved in `<workdir>/config.json`."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a workdir of "
                            "`python -m msa_jax.train` (or the run has not started)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def make_tokenizer(config: ml_collections.ConfigDict):
  """The tokenizer the training run used (synthetic vocabulary or the checkpoint's)."""
  d = config.data
  if d.kind == "synthetic":
    return synthetic.SyntheticTokenizer(d.num_filler_words, d.num_key_words, d.num_value_words)
  checkpoint = config.model.get("checkpoint")
  if not checkpoint:
    raise ValueError(f"data.kind={d.kind!r} needs model.checkpoint for its tokenizer")
  return pretrained.checkpoint_tokenizer(checkpoint)


def load_trained(workdir: str | os.PathLike, step: int | None = None) -> TrainedModel:
  """The model and parameters of the workdir's checkpoint `step` (default: the latest)."""
  config = load_config(workdir)
  tokenizer = make_tokenizer(config)
  model_cfg, msa, model = build_model(config, tokenizer.vocab_size)
  checkpointer = ckpt_lib.Checkpointer(Path(workdir) / "checkpoints", every=None)
  if checkpointer.latest_step is None:
    raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
  params, step = checkpointer.restore_params(nn.unbox(abstract_params(model)), step)
  checkpointer.close()
  return TrainedModel(config=config, model_config=model_cfg, msa=msa, model=model,
                      params=params, tokenizer=tokenizer, step=step)
