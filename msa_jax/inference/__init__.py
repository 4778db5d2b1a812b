"""Autoregressive generation with a KV cache."""

from msa_jax.inference.decode import GenerateOutput, generate, generate_text
from msa_jax.inference.sampling import SamplingConfig, sample_logits

__all__ = ["GenerateOutput", "SamplingConfig", "generate", "generate_text", "sample_logits"]
