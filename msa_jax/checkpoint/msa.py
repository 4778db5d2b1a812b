"""Official MSA checkpoints (EverMind-AI/MSA `MSAForCausalLM`) <-> our MSA parameters.

An official checkpoint is a Qwen3 checkpoint with `model_type: "msa"`, an `msa_config` dict in
`config.json`, and extra tensors:
  * `model.layers.{i}.self_attn.router_{q,k}_proj.0.weight` in router layers (decoupled mode);
  * `temperature`, the frozen InfoNCE temperature (checked against the config, not a parameter);
  * `b`, the learned bias of the BCE aux loss (our `aux_bias`).
Everything else goes through the backbone importer (`checkpoint/hf.py`) unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msa_jax.checkpoint import hf
from msa_jax.checkpoint.hf import CheckpointError, ParamSpec
from msa_jax.model.config import ModelConfig, MSAArch, MSAConfig, MSALoss

_AUX_NAMES = {"INFONCE": "infonce", "INFONCE_FOCAL": "infonce_focal",
              "INFONCE_DECOUPLE": "infonce_decouple",
              "INFONCE_DECOUPLE_FOCAL": "infonce_decouple_focal", "BCE": "bce"}


def msa_config_from_official(hf_config: Mapping[str, Any]) -> tuple[ModelConfig, MSAConfig]:
  """(backbone config, MSA config) from an official `config.json` dict.

  The official loss-weight key is spelled `lmloss_weigth`. `aux_loss: false` maps to
  aux_weight 0 (routing still runs; nothing trains the router). `recloss_weight` must be 0:
  the reconstruction loss's labels come from a data collator that was not published.
  """
  if hf_config.get("model_type") not in ("msa", "qwen3"):
    raise CheckpointError(f"model_type {hf_config.get('model_type')!r} is not an MSA "
                          "checkpoint (expected 'msa')")
  m = hf_config.get("msa_config")
  if not isinstance(m, Mapping):
    raise CheckpointError("config.json has no msa_config dict")
  cfg = hf.config_from_hf({**hf_config, "model_type": "qwen3"})
  try:
    layers = m["router_layer_idx"]
    router_layers = ("all" if layers == "all" else
                     tuple(int(i) for i in str(layers).split(",") if i.strip()))
    method = m.get("aux_loss_method", "INFONCE")
    if method not in _AUX_NAMES:
      raise CheckpointError(f"aux_loss_method {method!r} is not one of {sorted(_AUX_NAMES)}")
    if m.get("recloss_weight", 0.0):
      raise CheckpointError(f"recloss_weight={m['recloss_weight']} is not supported (the "
                            "reconstruction labels' format was not published)")
    if m.get("decouple_pooling_mode") is not None:
      raise CheckpointError(f"decouple_pooling_mode={m['decouple_pooling_mode']!r} is not "
                            "supported (only null, as in the released configs)")
    aux_loss = _AUX_NAMES[method]
    arch = MSAArch(
        router_layers=router_layers,
        top_k=int(m["top_k_docs"]),
        chunk_size=int(m["pooling_kernel_size"]),
        decouple_router=bool(m.get("decouple_router", True)),
        router_bias=bool(m.get("router_bias", False)),  # our extension (configs/router_adapt)
        head_reduce=m.get("head_reduce_method", "mean"),
        query_reduce=m.get("query_reduce_method", "max"),
        chunk_reduce=m.get("chunk_reduce_method", "max"),
        # Officially the routing math follows the loss: cosine for the InfoNCE family.
        cosine_routing=aux_loss.startswith("infonce"),
    )
    loss = MSALoss(
        aux_loss=aux_loss,
        aux_layers="upper_half",
        temperature=float(m.get("infonce_loss_temp", 0.05)),
        lm_weight=float(m.get("lmloss_weigth", 1.0)),
        aux_weight=float(m.get("auxloss_weight", 0.1)) if m.get("aux_loss", True) else 0.0,
        answer_weight=float(m.get("ansloss_weight", 0.0)),
    )
    msa = MSAConfig(arch=arch, loss=loss)
    arch.router_layer_ids(cfg.num_layers)  # validates the indices against the model
  except KeyError as e:
    raise CheckpointError(f"msa_config lacks required field {e.args[0]!r}") from None
  except ValueError as e:
    raise CheckpointError(f"msa_config is invalid: {e}") from None
  return cfg, msa


def param_specs(cfg: ModelConfig, msa: MSAConfig) -> list[ParamSpec]:
  """Every parameter of `MSATransformer(cfg, msa)` with its official name."""
  specs = hf.param_specs(cfg)
  e, h, j, d = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  if msa.arch.decouple_router:
    for i in msa.arch.router_layer_ids(cfg.num_layers):
      pre, ours = f"model.layers.{i}.self_attn.", (f"layers_{i}", "attn")
      specs += [
          ParamSpec(pre + "router_q_proj.0.weight", ours + ("router_q_proj", "kernel"),
                    (e, h, d), 1),
          ParamSpec(pre + "router_k_proj.0.weight", ours + ("router_k_proj", "kernel"),
                    (e, j, d), 1),
      ]
      if msa.arch.router_bias:  # an extension of ours, stored flat as a torch Linear's bias
        specs += [
            ParamSpec(pre + "router_q_proj.0.bias", ours + ("router_q_proj", "bias"), (h, d), 0),
            ParamSpec(pre + "router_k_proj.0.bias", ours + ("router_k_proj", "bias"), (j, d), 0),
        ]
  if msa.loss.aux_loss == "bce":
    specs.append(ParamSpec("b", ("aux_bias",), (), None))
  return specs


def official_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, msa: MSAConfig,
                       dtype=None, source: str = "official MSA checkpoint") -> dict:
  """Official state-dict tensors -> our MSA parameter tree (strict names and shapes).

  A `temperature` tensor, if present, must equal `msa.loss.temperature`: it is a frozen constant,
  and a mismatch means the config and the weights disagree.
  """
  if "temperature" in tensors:
    value = float(np.asarray(tensors["temperature"]))
    if not np.isclose(value, msa.loss.temperature, rtol=1e-6):
      raise CheckpointError(f"{source}: temperature tensor {value:.6g} differs from the config's "
                            f"infonce_loss_temp {msa.loss.temperature}")
  return hf.hf_to_params(tensors, cfg, dtype, source, specs=param_specs(cfg, msa),
                         ignore=("temperature",))


def params_to_official(params: Mapping, cfg: ModelConfig, msa: MSAConfig,
                       dtype=None) -> dict[str, np.ndarray]:
  """Our MSA parameters -> official tensor names (plus the constant `temperature`)."""
  out = hf.params_to_hf(params, cfg, dtype, specs=param_specs(cfg, msa))
  if msa.arch.cosine_routing:
    out["temperature"] = np.asarray(msa.loss.temperature, np.float32)
  return out


def load_official_checkpoint(path: str | os.PathLike,
                             dtype=None) -> tuple[ModelConfig, MSAConfig, dict]:
  """(config, MSA config, params) from an official MSA checkpoint directory."""
  path = Path(path)
  config_file = path / hf.CONFIG_FILE
  if not config_file.exists():
    raise FileNotFoundError(f"no {hf.CONFIG_FILE} in {path}")
  cfg, msa = msa_config_from_official(json.loads(config_file.read_text()))
  params = official_to_params(hf.SafetensorsDir(path), cfg, msa, dtype, source=str(path))
  return cfg, msa, params
