"""Hugging Face Qwen3 / Llama checkpoints <-> our parameter tree.

A checkpoint directory holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. Import checks every tensor name and shape against the config
*before* reading any data, and fails with one message listing what is missing, unexpected or
misshapen; export writes the same layout back (bit-exact round trip for any dtype).

HF linear weights are [out, in]; our kernels are [in..., out...] (see `model/layers.Einsum`),
so conversion is `w.T.reshape(kernel_shape)` and back `kernel.reshape(in, out).T`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from msa_jax.model.config import ModelConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
# Non-parameter buffers some older checkpoints carry; skipped on import.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.")
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
           "float64": np.float64}


class CheckpointError(ValueError):
  """A checkpoint does not match the model it is loaded into."""


class ParamSpec(NamedTuple):
  """Where one HF tensor lives in our tree, and the kernel layout it maps to."""

  hf_name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]  # our shape
  num_in: int | None  # leading input axes of a kernel; None: copied as is; 0: a flat vector

  @property
  def hf_shape(self) -> tuple[int, ...]:
    if self.num_in is None:
      return self.shape
    if self.num_in == 0:
      return (math.prod(self.shape),)
    return (math.prod(self.shape[self.num_in:]), math.prod(self.shape[:self.num_in]))


def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
  """Every parameter of `Transformer(cfg)` with its HF name, in HF's order."""
  e, f, v = cfg.embed_dim, cfg.mlp_dim, cfg.vocab_size
  h, j, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  specs = [ParamSpec("model.embed_tokens.weight", ("embed", "embedding"), (v, e), None)]
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}.", (f"layers_{i}",)
    specs += [
        ParamSpec(hf + "input_layernorm.weight", ours + ("attn_norm", "scale"), (e,), None),
        ParamSpec(hf + "self_attn.q_proj.weight", ours + ("attn", "q_proj", "kernel"),
                  (e, h, d), 1),
        ParamSpec(hf + "self_attn.k_proj.weight", ours + ("attn", "k_proj", "kernel"),
                  (e, j, d), 1),
        ParamSpec(hf + "self_attn.v_proj.weight", ours + ("attn", "v_proj", "kernel"),
                  (e, j, d), 1),
        ParamSpec(hf + "self_attn.o_proj.weight", ours + ("attn", "o_proj", "kernel"),
                  (h, d, e), 2),
    ]
    if cfg.qk_norm:
      specs += [
          ParamSpec(hf + "self_attn.q_norm.weight", ours + ("attn", "q_norm", "scale"), (d,),
                    None),
          ParamSpec(hf + "self_attn.k_norm.weight", ours + ("attn", "k_norm", "scale"), (d,),
                    None),
      ]
    specs += [
        ParamSpec(hf + "post_attention_layernorm.weight", ours + ("mlp_norm", "scale"), (e,),
                  None),
        ParamSpec(hf + "mlp.gate_proj.weight", ours + ("mlp", "gate_proj", "kernel"), (e, f), 1),
        ParamSpec(hf + "mlp.up_proj.weight", ours + ("mlp", "up_proj", "kernel"), (e, f), 1),
        ParamSpec(hf + "mlp.down_proj.weight", ours + ("mlp", "down_proj", "kernel"), (f, e), 1),
    ]
  specs.append(ParamSpec("model.norm.weight", ("final_norm", "scale"), (e,), None))
  if not cfg.tie_embeddings:
    specs.append(ParamSpec("lm_head.weight", ("lm_head", "kernel"), (e, v), 1))
  return specs


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
  """ModelConfig from a HF `config.json` dict (Qwen3 or Llama; transformers 4.x or 5.x)."""
  model_type = hf.get("model_type")
  if model_type not in ("qwen3", "llama"):
    raise CheckpointError(f"model_type {model_type!r} is not supported; expected 'qwen3' or "
                          "'llama'")
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  for rope_type in (rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
    if rope_type not in (None, "default"):
      raise CheckpointError(f"RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise CheckpointError(f"{flag}=True is not supported (Qwen3/Llama have no biases)")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
  try:
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        mlp_dim=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position=hf.get("max_position_embeddings", 32_768),
    )
  except KeyError as e:
    raise CheckpointError(f"config.json lacks required field {e.args[0]!r}") from None


def config_to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
  """A HF `config.json` dict for `cfg` (Qwen3ForCausalLM with q/k norm, else Llama)."""
  qwen = cfg.qk_norm
  return {
      "architectures": ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"],
      "model_type": "qwen3" if qwen else "llama",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position,
      "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_scaling": None,
      "attention_bias": False,
      "mlp_bias": False,
      "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": dtype,
  }


# ------------------------------------------------------------------ tensor conversion


def _cast(x: np.ndarray, dtype) -> np.ndarray:
  return x if dtype is None or x.dtype == np.dtype(dtype) else x.astype(dtype)


def check_names_and_shapes(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]],
                           source: str = "checkpoint",
                           specs: list[ParamSpec] | None = None,
                           ignore: Collection[str] = ()) -> None:
  """Raises CheckpointError listing every missing, unexpected and misshapen tensor.

  `specs` defaults to the backbone's `param_specs(cfg)`; names in `ignore` may be present.
  """
  specs = {s.hf_name: s for s in (param_specs(cfg) if specs is None else specs)}
  present = {n for n in shapes if not n.endswith(_IGNORED_SUFFIXES) and n not in ignore}
  missing = sorted(set(specs) - present)
  unexpected = sorted(present - set(specs))
  if cfg.tie_embeddings and "lm_head.weight" in unexpected:
    unexpected.remove("lm_head.weight")  # allowed if equal to the embedding (checked on load)
  misshapen = [f"{n}: {tuple(shapes[n])} in the {source}, expected {specs[n].hf_shape}"
               for n in sorted(present & set(specs)) if tuple(shapes[n]) != specs[n].hf_shape]
  if missing or unexpected or misshapen:
    lines = [f"{source} does not match the model config {cfg}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", misshapen)):
      if items:
        shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
        lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    raise CheckpointError("\n".join(lines))


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, dtype=None,
                 source: str = "checkpoint", specs: list[ParamSpec] | None = None,
                 ignore: Collection[str] = ()) -> dict:
  """HF tensors (name -> array) to our nested parameter dict of numpy arrays.

  Args:
    tensors: a mapping from HF names to arrays; only `__getitem__`, `keys()` and the arrays'
      `.shape` are used before validation succeeds, so a lazy mapping reads nothing on failure.
    cfg: the model the tensors must fit exactly.
    dtype: cast every parameter to this dtype; None keeps each tensor's own dtype.
    source: how to name the tensors' origin in error messages.
    specs: the tensors to read (default: the backbone's `param_specs(cfg)`).
    ignore: names that may be present and are skipped (e.g. non-parameter buffers).
  """
  specs = param_specs(cfg) if specs is None else specs
  shapes = (tensors.shapes if isinstance(tensors, SafetensorsDir) else
            {n: tuple(np.shape(x)) for n, x in tensors.items()})
  check_names_and_shapes(cfg, shapes, source, specs, ignore)
  params: dict = {}
  for spec in specs:
    w = np.asarray(tensors[spec.hf_name])
    # The embedding comes first, so a stray untied head fails before anything else is read.
    if (spec.hf_name == "model.embed_tokens.weight" and cfg.tie_embeddings
        and "lm_head.weight" in shapes
        and not np.array_equal(np.asarray(tensors["lm_head.weight"]), w)):
      raise CheckpointError(f"{source}: tie_word_embeddings=True but lm_head.weight differs "
                            "from model.embed_tokens.weight")
    x = w if spec.num_in is None else w.T.reshape(spec.shape)
    node = params
    for key in spec.path[:-1]:
      node = node.setdefault(key, {})
    node[spec.path[-1]] = _cast(np.ascontiguousarray(x), dtype)
  return params


def params_to_hf(params: Mapping, cfg: ModelConfig, dtype=None,
                 specs: list[ParamSpec] | None = None) -> dict[str, np.ndarray]:
  """Our parameter tree to HF tensors (name -> numpy array, HF layout)."""
  out = {}
  for spec in (param_specs(cfg) if specs is None else specs):
    node = params
    try:
      for key in spec.path:
        node = node[key]
    except (KeyError, TypeError):
      raise CheckpointError(f"params lack {'/'.join(spec.path)} (for {spec.hf_name})") from None
    x = np.asarray(jax.device_get(node))
    if x.shape != spec.shape:
      raise CheckpointError(f"params {'/'.join(spec.path)} has shape {x.shape}, "
                            f"expected {spec.shape}")
    w = x if spec.num_in is None else x.reshape(spec.hf_shape[::-1]).T
    out[spec.hf_name] = _cast(np.ascontiguousarray(w), dtype)
  return out


# ------------------------------------------------------------------------ file I/O


class SafetensorsDir(Mapping):
  """Lazy, read-only name -> numpy array view of a single-file or sharded safetensors dir."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    index = self.path / SAFETENSORS_INDEX
    single = self.path / SAFETENSORS_FILE
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      listed = {name: self.path / f for name, f in weight_map.items()}
      absent = sorted({str(f) for f in listed.values() if not f.exists()})
      if absent:
        raise FileNotFoundError(f"{index} names shard files that do not exist: {absent}")
      files = sorted(set(listed.values()))
    elif single.exists():
      listed, files = None, [single]
    else:
      raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in {self.path}")
    # One pass over the headers: every tensor's shape and the file that holds it.
    self._shapes: dict[str, tuple[int, ...]] = {}
    found_in: dict[str, Path] = {}
    for file in files:
      with safetensors.safe_open(file, framework="numpy") as f:
        for name in f.keys():
          self._shapes[name] = tuple(f.get_slice(name).get_shape())
          found_in[name] = file
    self._file_of = found_in if listed is None else listed
    listed_absent = sorted(set(self._file_of) - set(self._shapes))
    if listed_absent:
      raise FileNotFoundError(f"{self.path}: tensors listed in the index but absent from their "
                              f"shard: {listed_absent[:20]}")

  @property
  def shapes(self) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the file headers only."""
    return dict(self._shapes)

  def __getitem__(self, name: str) -> np.ndarray:
    with safetensors.safe_open(self._file_of[name], framework="numpy") as f:
      return f.get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._file_of)

  def __len__(self) -> int:
    return len(self._file_of)


def first_layers(cfg: ModelConfig, num_layers: int | None) -> ModelConfig:
  """`cfg` keeping its first `num_layers` layers (None: all of them)."""
  if num_layers is None:
    return cfg
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not (
      1 <= num_layers <= cfg.num_layers):
    raise ValueError(f"num_layers={num_layers!r} must be in [1, {cfg.num_layers}] (the "
                     "checkpoint's layers)")
  return cfg.replace(num_layers=num_layers)


def layers_beyond(names: Collection[str], kept: ModelConfig, full: ModelConfig) -> list[str]:
  """The HF names of layers `full` has and `kept` drops (read by neither check nor load)."""
  dropped = []
  for name in names:
    m = _LAYER_NAME.match(name)
    if m and kept.num_layers <= int(m.group(1)) < full.num_layers:
      dropped.append(name)
  return dropped


def load_hf_checkpoint(path: str | os.PathLike, dtype=None,
                       num_layers: int | None = None) -> tuple[ModelConfig, dict]:
  """Loads a HF Qwen3/Llama directory: returns (config, params as jax arrays).

  Args:
    path: directory with config.json and model.safetensors (or sharded + index).
    dtype: parameter dtype (e.g. jnp.float32, jnp.bfloat16); None keeps the checkpoint's.
    num_layers: read only the first layers (the returned config has that many); None: all.
  """
  path = Path(path)
  config_path = path / CONFIG_FILE
  if not config_path.exists():
    raise FileNotFoundError(f"no {CONFIG_FILE} in {path}")
  full = config_from_hf(json.loads(config_path.read_text()))
  cfg = first_layers(full, num_layers)
  tensors = SafetensorsDir(path)
  params = hf_to_params(tensors, cfg, dtype, source=f"checkpoint {path}",
                        ignore=layers_beyond(tensors.shapes, cfg, full))
  return cfg, jax.device_put(params)


def save_hf_checkpoint(path: str | os.PathLike, cfg: ModelConfig, params: Mapping, dtype=None,
                       max_shard_bytes: int | None = None) -> list[Path]:
  """Writes `params` as a HF checkpoint directory loadable by transformers.

  The directory is written to a temporary sibling and renamed into place, so a failure never
  leaves a half-written checkpoint; `path` must not exist or be empty.

  Args:
    path: output directory.
    cfg: the model config (written as config.json).
    params: our parameter tree.
    dtype: cast every tensor to this dtype; None keeps each parameter's dtype.
    max_shard_bytes: split into `model-0000i-of-0000n.safetensors` shards of at most this
      many bytes (a tensor larger than that gets a shard of its own) plus an index; None writes
      a single file.

  Returns:
    The files written.
  """
  path = Path(path)
  if path.exists() and any(path.iterdir()):
    raise FileExistsError(f"{path} exists and is not empty")
  tensors = params_to_hf(params, cfg, dtype)
  dtypes = {str(x.dtype) for x in tensors.values()}
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, x in tensors.items():
    if max_shard_bytes is not None and shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes

  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    config = config_to_hf(cfg, dtype=dtypes.pop() if len(dtypes) == 1 else "float32")
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if len(shards) == 1:
      names = [SAFETENSORS_FILE]
    else:
      names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
      index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
               "weight_map": {n: f for f, s in zip(names, shards) for n in s}}
      (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for name, shard in zip(names, shards):
      safetensors.numpy.save_file(shard, tmp / name, metadata={"format": "pt"})
    if path.exists():
      path.rmdir()
    tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return sorted(path.iterdir())


def dtype_from_name(name: str):
  """'float32' | 'bfloat16' | 'float16' | 'float64' -> numpy dtype; errors list the options."""
  try:
    return _DTYPES[name]
  except KeyError:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None
