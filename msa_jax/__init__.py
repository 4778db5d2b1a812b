"""msa_jax: Memory Sparse Attention (MSA) in JAX/Flax.

Subpackages:
  model       backbone layers (RMSNorm, RoPE, GQA attention, SwiGLU), model presets
  checkpoint  HF safetensors (Qwen3/Llama) and GGUF import/export
  inference   autoregressive generation with a KV cache
  data        tokenizers
"""

__version__ = "0.1.0"
