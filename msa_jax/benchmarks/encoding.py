"""Encoding stage of the benchmark suite: stage-1 memory encoding vs HF transformers' forward.

SmolLM2-135M-Instruct (the GGUF of `msa_jax.checkpoint.smollm2_path()`, float32) under fresh
MSA routers (`MSAConfig()`: router layers = the upper half). Ours is
`msa_jax.memory.encode.encode_documents` over M documents of G=128 tokens, 16 per forward:
every layer up to the last router layer, the pooled routing keys and K/V of each router layer,
fetched to the host. The baseline is HF transformers' backbone (`model.model`, no LM head, no
cache) over the same token batches, loaded from the same GGUF file; both run the same layers.
The two are timed in interleaved repeats after a warm-up each (our compile is not timed).
`flops` counts the backbone's matmuls and causal attention over the documents (routing
projections and pooling, under 1 %, are left out): the baseline's work; ours skips the last
layer's attention output and MLP, which no memory needs (~3 % of it).

--quick keeps the first 2 layers (router layer 1) and 16 documents.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import numpy as np

from msa_jax.benchmarks import hf_baseline
from msa_jax.checkpoint import smollm2_path
from msa_jax.memory import encode as encode_lib
from msa_jax.loading.pretrained import load_backbone, load_params
from msa_jax.model import MSAConfig, MSATransformer

G, BATCH = 128, 16
FULL = dict(docs=32, layers=None, iters=3)
QUICK = dict(docs=16, layers=2, iters=2)


def backbone_flops(cfg, num_layers: int, tokens: int) -> float:
  """FLOPs of `tokens` causal tokens through `num_layers` layers (no LM head)."""
  matmuls = 2 * cfg.layer_matmul_weights() * tokens
  attention = 4 * cfg.num_heads * cfg.head_dim * tokens * (tokens + 1) / 2  # over the prefix
  return float(num_layers * (matmuls + attention))


def _hf_backbone(path, num_layers: int):
  model = hf_baseline.causal_lm(path)
  model.model.layers = model.model.layers[:num_layers]
  model.config.num_hidden_layers = num_layers
  return model.model


def run(quick: bool) -> list[dict]:
  """One row: encoding M 128-token documents, ours vs HF. Empty without transformers or
  the SmolLM2 checkpoint."""
  try:
    import torch
    import transformers  # noqa: F401
    path = smollm2_path()
  except (ImportError, FileNotFoundError):
    return []

  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  sizes = QUICK if quick else FULL
  cfg, backbone = load_backbone(path, sizes["layers"])
  msa = MSAConfig()
  layers = max(msa.arch.router_layer_ids(cfg.num_layers)) + 1
  params = load_params(MSATransformer(cfg, msa), jax.random.key(0), backbone)
  hf = _hf_backbone(path, layers)
  rng = np.random.default_rng(0)
  docs = rng.integers(0, cfg.vocab_size, (sizes["docs"], G))

  def ours():
    return encode_lib.encode_documents(cfg, msa, params, [list(d) for d in docs], max_tokens=G,
                                       batch_size=BATCH, progress=None)

  def theirs():
    with torch.no_grad():
      for lo in range(0, len(docs), BATCH):
        hf(input_ids=torch.from_numpy(docs[lo:lo + BATCH]), use_cache=False)

  ours(), theirs()  # compile / warm up
  ours_s, theirs_s = [], []
  for i in range(sizes["iters"]):
    for fn, times in ((ours, ours_s), (theirs, theirs_s)):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    print(f"  encoding repeat {i + 1}/{sizes['iters']}: ours {ours_s[-1]:.2f} s, HF "
          f"{theirs_s[-1]:.2f} s", file=sys.stderr, flush=True)
  return [dict(stage="encoding",
               case=f"SmolLM2-135M {layers} layers, {len(docs)} docs x {G} tokens",
               ours_s=statistics.median(ours_s), baseline="HF transformers forward",
               baseline_s=statistics.median(theirs_s),
               flops=backbone_flops(cfg, layers, G) * len(docs))]
