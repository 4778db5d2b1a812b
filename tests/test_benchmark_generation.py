"""The generation stage of the benchmark suite: rows well formed, FLOP count consistent with
the parameter count, and the baseline generating the same greedy tokens as ours."""

import numpy as np
import pytest

from msa_jax.benchmarks import generation
from msa_jax.model import Transformer, get_preset

KEYS = {"stage", "case", "ours_s", "baseline", "baseline_s", "flops"}


def test_flops_match_twice_the_matmul_parameters():
  cfg = get_preset("smollm2_135m")
  e, v = cfg.embed_dim, cfg.vocab_size
  layer_params = cfg.num_layers * (
      e * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
      + cfg.num_heads * cfg.head_dim * e + 3 * e * cfg.mlp_dim)
  # One token with a context of one, no LM head: 2 FLOPs per weight plus QK^T and PV.
  attn = cfg.num_layers * 4 * cfg.num_heads * cfg.head_dim
  assert generation.forward_flops(cfg, 1, False) == 2 * layer_params + attn
  assert generation.forward_flops(cfg, 1, True) == 2 * layer_params + attn + 2 * e * v
  # Prompts of 3 and 5 tokens, 4 new tokens: 8 prompt positions (2 with the head) and 2 x 3
  # fed-back tokens (all with the head); attention over <= 8 keys adds < 1 %.
  total = generation.generate_flops(cfg, [3, 5], 4)
  assert total == pytest.approx(14 * 2 * layer_params + 8 * 2 * e * v, rel=0.01)
  assert total > 14 * 2 * layer_params + 8 * 2 * e * v


def test_run_without_transformers_or_checkpoint_is_empty(monkeypatch):
  def missing():
    raise FileNotFoundError("no SmolLM2")
  monkeypatch.setattr(generation, "smollm2_path", missing)
  assert generation.run(quick=True) == []


@pytest.mark.slow
def test_quick_run_rows_and_same_tokens_as_the_baseline(smollm2_gguf, monkeypatch):
  """The rows of a quick run; and every call it timed (ours and HF's, recorded as they ran:
  the real functions, called through; B=8 covers all of BATCH_PROMPTS) generated the same
  greedy tokens on both sides."""
  pytest.importorskip("transformers")
  ours, theirs = [], []

  def recorded(fn, calls):
    def call(*args, **kwargs):
      out = fn(*args, **kwargs)
      calls.append((args, kwargs, out))
      return out
    return call

  monkeypatch.setattr(generation, "generate_text", recorded(generation.generate_text, ours))
  hf_generate = generation._hf_generate  # pylint: disable=protected-access
  monkeypatch.setattr(generation, "_hf_generate", recorded(hf_generate, theirs))
  rows = generation.run(quick=True)
  assert [r["case"] for r in rows] == ["SmolLM2-135M greedy B=8 8 tokens"]
  for row in rows:
    assert set(row) == KEYS and row["stage"] == "generation"
    assert row["ours_s"] > 0 and row["baseline_s"] > 0 and row["flops"] > 1e9
  # Each side ran warm-up + 1 repeat at B=8 (all of BATCH_PROMPTS).
  assert [len(a[3]) for a, _, _ in ours] == [8, 8]
  assert [len(a[2]) for a, _, _ in theirs] == [8, 8]
  assert ours[-1][0][3] == list(generation.BATCH_PROMPTS)
  for (args, _, got), (hf_args, _, hf_out) in zip(ours, theirs):
    model, _, tokenizer, prompts, sampling = args
    assert isinstance(model, Transformer) and prompts == hf_args[2]
    assert sampling.max_new_tokens == 8 and hf_args[3] == 8 and sampling.temperature == 0
    assert got == [tokenizer.decode(row.tolist()) for row in np.asarray(hf_out)]
