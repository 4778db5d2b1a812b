"""Backbone hyperparameters and the one table of model presets."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Qwen3/Llama-style decoder.

  Attributes:
    vocab_size: number of token embeddings (V).
    embed_dim: residual stream width (E); HF `hidden_size`.
    mlp_dim: SwiGLU hidden width (F); HF `intermediate_size`.
    num_layers: number of decoder blocks; HF `num_hidden_layers`.
    num_heads: query heads (H).
    num_kv_heads: key/value heads (J); H must be a multiple of J (GQA).
    head_dim: per-head width (D). Not necessarily embed_dim // num_heads (Qwen3 uses 128).
    rope_theta: RoPE base.
    norm_eps: RMSNorm epsilon, shared by every norm in the model.
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3: True, Llama: False).
    tie_embeddings: the LM head reuses the token embedding matrix.
    max_position: longest position the model was trained for (informational; RoPE has no limit).
  """

  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  qk_norm: bool = True
  tie_embeddings: bool = True
  max_position: int = 32_768

  def __post_init__(self):
    for name in ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotate-half RoPE")
    if not self.rope_theta > 0:
      raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)


# Real dimensions of the published checkpoints (their HF config.json), plus `tiny` for tests.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512, embed_dim=64, mlp_dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, rope_theta=10_000.0, norm_eps=1e-6, qk_norm=True, tie_embeddings=False,
        max_position=2048),
    "smollm2_135m": ModelConfig(
        vocab_size=49_152, embed_dim=576, mlp_dim=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rope_theta=100_000.0, norm_eps=1e-5, qk_norm=False,
        tie_embeddings=True, max_position=8192),
    "qwen3_0_6b": ModelConfig(
        vocab_size=151_936, embed_dim=1024, mlp_dim=3072, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
    "qwen3_1_7b": ModelConfig(
        vocab_size=151_936, embed_dim=2048, mlp_dim=6144, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
    "qwen3_4b": ModelConfig(
        vocab_size=151_936, embed_dim=2560, mlp_dim=9728, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
        tie_embeddings=True, max_position=40_960),
}


def get_preset(name: str) -> ModelConfig:
  """Returns the preset called `name`; the error lists the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None
