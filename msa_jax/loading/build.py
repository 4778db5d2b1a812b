"""Build the MSA model a training config describes (no parameters: see restore.py and
pretrained.py for where they come from), and check its model fields before any heavy work.

The backbone's architecture comes from `model.checkpoint` when set (its metadata; `model.preset`
may be empty, or must name a preset equal to the checkpoint's architecture), else from
`model.preset` with `model.overrides` (its vocabulary from the tokenizer).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections

from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.loading import pretrained
from msa_jax.model import ModelConfig, MSAConfig, MSATransformer, get_preset
from msa_jax.model.config import PRESETS
from msa_jax.validation import UserError

# ModelConfig fields a preset given beside a checkpoint must match (max_position is
# informational; num_layers is compared before `model.num_layers` cuts the checkpoint).
_ARCHITECTURE = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "max_position")


def architecture_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
  """["field: a vs b", ...] for the architecture fields where two configs differ (floats to
  float32 precision: checkpoints store norm_eps as float32)."""
  out = []
  for name in _ARCHITECTURE:
    x, y = getattr(a, name), getattr(b, name)
    same = (math.isclose(x, y, rel_tol=1e-6) if isinstance(x, float) or isinstance(y, float)
            else x == y)
    if not same:
      out.append(f"{name}: {x} vs {y}")
  return out


def check_preset(preset: str, checkpoint: str, checkpoint_cfg: ModelConfig) -> None:
  """Raises UserError unless `preset` (a name, or "" / None) describes the checkpoint.

  Args:
    preset: `model.preset`.
    checkpoint: `model.checkpoint` (for the message).
    checkpoint_cfg: the checkpoint's full config (before `model.num_layers`).
  """
  if not preset:
    return
  diff = architecture_diff(get_preset(preset), checkpoint_cfg)
  if diff:
    same = [n for n, p in PRESETS.items() if not architecture_diff(p, checkpoint_cfg)]
    hint = f"--config.model.preset={same[0]} or " if same else ""
    raise UserError(f"model.preset={preset!r} is not the architecture of model.checkpoint="
                    f"{checkpoint!r} ({'; '.join(diff[:4])}); give {hint}--config.model.preset= "
                    "(the checkpoint's own)")


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
  """The backbone config of a training config, checked (UserError names the bad field).

  Args:
    cfg: the training config (`model`, and `msa` unused here).
    vocab_size: the tokenizer's, for a preset (None: the preset's own, e.g. while validating
      before the tokenizer is read).
  """
  m = cfg.model
  checkpoint = m.get("checkpoint")
  try:
    if checkpoint:  # metadata only, cached: checked first, read again when building
      if m.get("overrides"):
        raise UserError(f"model.overrides={m.overrides.to_dict()} apply to a preset; "
                        f"model.checkpoint={checkpoint!r} fixes the architecture")
      check_preset(m.get("preset"), checkpoint, pretrained.checkpoint_config(checkpoint))
      return pretrained.checkpoint_config(checkpoint, m.get("num_layers"))
    if not m.get("preset"):
      raise UserError("model.preset is required without model.checkpoint")
    if m.get("num_layers") is not None:
      raise UserError("model.num_layers cuts a checkpoint; without model.checkpoint use "
                      "model.overrides.num_layers")
    changes = dict(m.get("overrides", {}).to_dict() if m.get("overrides") else {})
    if vocab_size is not None:
      changes["vocab_size"] = vocab_size
    return get_preset(m.preset).replace(**changes)
  except UserError:
    raise
  except (ValueError, TypeError, FileNotFoundError) as e:  # their messages name the field
    raise UserError(str(e)) from None


def msa_config(cfg: ml_collections.ConfigDict, num_layers: int) -> MSAConfig:
  """The `msa` section (flat fields, `split_msa_fields`) as an MSAConfig whose layer choices
  fit `num_layers` (UserError; an unknown field names the closest known one)."""
  try:
    msa = MSAConfig(**cfg.msa.to_dict())
    msa.aux_layer_ids(num_layers)  # resolves router_layers too
    return msa
  except (ValueError, TypeError) as e:
    raise UserError(f"msa: {e}") from None


def check_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Every model field of a training config, before data, weights or compilation: preset vs
  checkpoint, the checkpoint's existence, the MSA fields and its layers, the dtype."""
  msa_config(cfg, model_config(cfg).num_layers)
  try:
    dtype_from_name(cfg.dtype)
  except ValueError as e:
    raise UserError(f"dtype: {e}") from None


def build_model(cfg: ml_collections.ConfigDict, vocab_size: int):
  """(model config, MSA config, MSATransformer) of a training config: compute in `dtype`,
  parameters in float32, layers scanned unless `model.scan_layers` is False (the same math
  and parameter tree; see `LayerStack`)."""
  model_cfg = model_config(cfg, vocab_size)
  msa = msa_config(cfg, model_cfg.num_layers)
  dtype = dtype_from_name(cfg.dtype)
  scan = cfg.model.get("scan_layers", True)
  if not isinstance(scan, bool):
    raise UserError(f"model.scan_layers must be True or False, got {scan!r}")
  return model_cfg, msa, MSATransformer(model_cfg, msa, dtype=dtype, param_dtype=jnp.float32,
                                        scan_layers=scan)
