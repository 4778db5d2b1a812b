"""Random HF transformers models built from a config (no download): the backbone oracle."""

from __future__ import annotations

import numpy as np
import torch
import transformers


def random_hf_model(model_type: str, *, hidden: int, heads: int, kv_heads: int, head_dim: int,
                    layers: int, tied: bool, vocab: int = 256, rope_theta: float = 10_000.0,
                    seed: int = 0, dtype=torch.float32):
  """A randomly initialised Qwen3ForCausalLM / LlamaForCausalLM in eval mode.

  Norm weights are perturbed away from 1 so that a mix-up between norms would show.
  """
  config_cls = {"qwen3": transformers.Qwen3Config, "llama": transformers.LlamaConfig}[model_type]
  config = config_cls(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      head_dim=head_dim, rope_theta=rope_theta, rms_norm_eps=1e-6, tie_word_embeddings=tied,
      max_position_embeddings=4096, initializer_range=0.1, attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  return model.to(dtype).eval()


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(np.asarray(tokens, np.int64)),
                attention_mask=None if attention_mask is None else
                torch.from_numpy(np.asarray(attention_mask, np.int64)))
  return out.logits.float().numpy()
