"""Generation stage of the benchmark suite: ours vs HF transformers' `generate` on CPU.

SmolLM2-135M-Instruct (the GGUF of `msa_jax.checkpoint.smollm2_path()`), float32, greedy, a
fixed number of new tokens (no stop token, so both sides emit exactly as many), prompts of
different real lengths. HF loads the same file with its own GGUF loader (as tests/test_gguf.py
does) and runs `generate` with left padding; ours runs `generate_text`. The two are timed in
interleaved repeats in the same process after one warm-up each (our compile is not timed);
rows carry the medians.

`flops` counts the useful work of one whole generate call: every real prompt token through
the layers (attention over its causal prefix), the LM head at the last prompt token only, and
every decoded token through the layers and the LM head (attention over its context).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import numpy as np

from msa_jax.benchmarks import hf_baseline
from msa_jax.checkpoint import load_gguf, smollm2_path
from msa_jax.inference import SamplingConfig, generate_text
from msa_jax.model import Transformer
from msa_jax.model.config import ModelConfig

BATCH_PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The three primary colors are",
    "In the beginning of the twentieth century, the largest city in the world by population was",
    "A haiku about autumn leaves:",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight "
    "to synthesize foods from carbon dioxide and water. In simple terms, it means that",
    "def fibonacci(n):",
    "The most important rule of writing clear documentation is",
)


def forward_flops(cfg: ModelConfig, context: int, lm_head: bool) -> float:
  """FLOPs of one token through the model, attending to `context` keys (itself included)."""
  per_layer = 2 * cfg.layer_matmul_weights() + 4 * cfg.num_heads * cfg.head_dim * context
  return cfg.num_layers * per_layer + (2 * cfg.embed_dim * cfg.vocab_size if lm_head else 0)


def generate_flops(cfg: ModelConfig, prompt_lengths, new_tokens: int) -> float:
  """Useful FLOPs of greedy generation (see the module docstring)."""
  total = 0.0
  for n in prompt_lengths:
    total += sum(forward_flops(cfg, t + 1, t == n - 1) for t in range(n))
    total += sum(forward_flops(cfg, n + s + 1, True) for s in range(new_tokens - 1))
  return total


def _hf_generate(model, tokenizer, prompts, new_tokens: int) -> np.ndarray:
  """HF greedy generation of exactly `new_tokens` tokens per prompt (left padding)."""
  import torch
  ids = [tokenizer.encode(p) for p in prompts]
  width = max(map(len, ids))
  tokens = np.zeros((len(ids), width), np.int64)
  mask = np.zeros((len(ids), width), np.int64)
  for row, x in enumerate(ids):
    tokens[row, width - len(x):] = x
    mask[row, width - len(x):] = 1
  with torch.no_grad():
    out = model.generate(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
  return out[:, width:].numpy()


def compare(batch: int, new_tokens: int, repeats: int, models=None) -> dict:
  """One row: ours vs HF at `batch` prompts of BATCH_PROMPTS, `new_tokens` greedy tokens,
  medians of `repeats` interleaved timings after one untimed call each. `models` reuses the
  (config, params, tokenizer, HF model) of `load_models()`."""
  cfg, params, tokenizer, hf = models or load_models()
  model = Transformer(cfg)
  sampling = SamplingConfig(max_new_tokens=new_tokens, pad_id=tokenizer.pad_id or 0)
  prompts = [BATCH_PROMPTS[i % len(BATCH_PROMPTS)] for i in range(batch)]

  def ours():
    return generate_text(model, params, tokenizer, prompts, sampling, rng=jax.random.key(0))

  def theirs():
    return _hf_generate(hf, tokenizer, prompts, new_tokens)

  ours(), theirs()  # compile / warm up
  ours_s, theirs_s = [], []
  for _ in range(repeats):
    for fn, times in ((ours, ours_s), (theirs, theirs_s)):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
  print(f"[generation] B={batch}: ours {[round(t, 3) for t in ours_s]} s, "
        f"HF {[round(t, 3) for t in theirs_s]} s", file=sys.stderr, flush=True)
  lengths = [len(tokenizer.encode(p)) for p in prompts]
  return dict(stage="generation", case=f"SmolLM2-135M greedy B={batch} {new_tokens} tokens",
              ours_s=statistics.median(ours_s), baseline="HF transformers generate",
              baseline_s=statistics.median(theirs_s),
              flops=generate_flops(cfg, lengths, new_tokens))


def load_models():
  """(config, params, tokenizer) of our SmolLM2 GGUF load and HF's model of the same file."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  path = smollm2_path()
  return (*load_gguf(path), hf_baseline.causal_lm(path))


def run(quick: bool, models=None) -> list[dict]:
  """Ours vs HF generate at batch 1 and 8 (64 new tokens, 5 repeats; quick: batch 8 only, 8
  tokens, 1 repeat).

  Returns rows {"stage", "case", "ours_s", "baseline", "baseline_s", "flops"}; an empty list
  when transformers or the SmolLM2 checkpoint is missing. `models`: the result of
  `load_models()` when the caller has loaded them already (else they are loaded here).
  """
  if models is None:
    try:
      import transformers  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      smollm2_path()
    except (ImportError, FileNotFoundError):
      return []
    models = load_models()
  new_tokens, repeats, batches = (8, 1, (8,)) if quick else (64, 5, (1, 8))
  return [compare(batch, new_tokens, repeats, models) for batch in batches]

