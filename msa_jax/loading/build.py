"""Build the MSA model a training config describes (no parameters: see restore.py and
pretrained.py for where they come from)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.loading import pretrained
from msa_jax.model import MSAConfig, MSATransformer, get_preset


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int):
  """(model config, MSA config, MSATransformer) of a training config (the backbone config from
  `model.checkpoint` when set, else the preset with `model.overrides`)."""
  checkpoint = cfg.model.get("checkpoint")
  if checkpoint:  # the backbone's config comes from the checkpoint (see pretrained.py)
    model_cfg = pretrained.checkpoint_config(checkpoint, cfg.model.get("num_layers"))
  else:
    model_cfg = get_preset(cfg.model.preset).replace(
        vocab_size=vocab_size, **cfg.model.get("overrides", {}).to_dict())
  msa = MSAConfig(**cfg.msa.to_dict())
  dtype = dtype_from_name(cfg.dtype)
  return model_cfg, msa, MSATransformer(model_cfg, msa, dtype=dtype, param_dtype=jnp.float32)
