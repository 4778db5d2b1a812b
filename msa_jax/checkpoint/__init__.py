"""Checkpoint import/export: HF safetensors (Qwen3, Llama)."""

from msa_jax.checkpoint.hf import (CheckpointError, config_from_hf, config_to_hf, hf_to_params,
                                   load_hf_checkpoint, params_to_hf, save_hf_checkpoint)

__all__ = [
    "CheckpointError", "config_from_hf", "config_to_hf", "hf_to_params", "load_hf_checkpoint",
    "params_to_hf", "save_hf_checkpoint",
]
