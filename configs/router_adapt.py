"""Router adaptation: SmolLM2-135M made into an MSA retriever on a CPU (frozen backbone, cached
states, trained router projections); NFCorpus by default.

  python -m msa_jax.train --config=configs/router_adapt.py --workdir=/tmp/msa_router
  python -m msa_jax.evaluate --config=configs/evaluate.py --workdir=/tmp/msa_router_eval \
      --config.checkpoint_workdir=/tmp/msa_router --config.scaling.enabled=False

The first command caches the frozen backbone's router inputs (documents and training questions,
in ~/.cache/msa_jax/router_states or $XDG_CACHE_HOME/msa_jax/router_states, fingerprinted to
model and data), trains the routers on them and writes an ordinary checkpoint; the second
ranks the test split's questions against the whole corpus through the normal bank -> routing
path, beside BM25 (see `msa_jax.train.router_adapt`). Any BEIR folder:
`--config.data.path=/path/to/scifact`; NQ320k:
`--config.data.kind=nq320k --config.data.path=/path/to/NQ_dataset --config.data.eval_split=dev`;
another backbone: `--config.model.checkpoint=/path/to/Qwen3-0.6B` (then pick its router layers).
Only the training split's questions are read for training (a held-out part validates).
Variant `:smoke`: 3 steps on the NQ320k fixture with SmolLM2's first 4 layers (tests).
Run from the repository root.

Measured (NFCorpus, 2 CPU cores shared with ~10 other jobs, so wall times are pessimistic):
  * States: documents 190.6 MiB + training questions 115.3 MiB (3 layers, float32), computed
    in 1,836 s by the first run; the next run reused them (37 s to load, `states_reused`).
  * This config (1,200 steps): 1,801 s with reused states (backbone load 247 s, BM25 mining
    108 s, training ~1,400 s). Held-out training-split questions (200, all 3,633 documents),
    nDCG@10 of router layers 6 / 9 / 12 / sum: 0.202 / 0.203 / 0.180 / 0.232
    (400 steps, `--config.train.steps=400 --config.optim.total_steps=400`: 0.179 sum).
  * TEST split (323 questions, all 3,633 documents, never trained on), `msa_jax.evaluate`
    through the normal bank -> routing path (bank encoding 739 s):
                      Hit@1  R@10   R@100  MRR@10 nDCG@10
      bm25            0.446  0.147  0.247  0.528  0.322
      router layer 6  0.223  0.083  0.236  0.284  0.176
      router layer 9  0.220  0.072  0.235  0.291  0.172
      router layer 12 0.173  0.079  0.231  0.249  0.149
      router sum      0.248  0.093  0.282  0.313  0.199   (400 steps: 0.177 Hit@1, 0.138)
      generated [m]   0.000 (400-step run: the frozen LM writes dates and URLs, never an id)
    The router sum passes BM25 on Recall@100 and stays behind it at the top of the ranking.
    Layers 9 and 12 read at inference the memory routed by earlier layers, which training
    never saw; their test/held-out ratio (~0.76 at 400 steps) equals layer 6's, so this costs
    nothing visible.
Choices that mattered: centring (`router_bias` + `centre_init`; issue 14's probe saw a cosine
router on SmolLM2's anisotropic states collapse to uniform scores without it), mean over query
tokens (the same probe: with max, function words match every document), BM25 hard negatives
plus in-batch and random negatives, summing the router layers (+0.023 test nDCG@10 over the
best layer) and a longer schedule (400 -> 1,200 steps: +0.06 test nDCG@10; held-out flat
from step 900 on). Untried for lack of time: training upper layers or low-rank adapters (needs
per-token states in the cache), other P / document lengths / temperatures / router layers.
"""

from pathlib import Path

import ml_collections

from configs import common

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO.parent / "shared" / "data" / "beir" / "nfcorpus"
FIXTURE = REPO / "tests" / "data" / "nq320k"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.retrieval_config("beir", str(DEFAULT_PATH), train_split="train", eval_split="test",
                              steps=1200)
  c.mode = "router_adapt"
  c.msa = ml_collections.ConfigDict(dict(
      router_layers=(6, 9, 12), aux_layers="all", top_k=4, chunk_size=16, decouple_router=True,
      router_bias=True, head_reduce="mean", query_reduce="mean", chunk_reduce="max",
      aux_loss="infonce", temperature=0.05, lm_weight=0.0, aux_weight=1.0, kernel_impl="xla"))
  c.data.update(doc_tokens=128, prompt_tokens=64, eval_holdout=200)
  c.adapt = ml_collections.ConfigDict(dict(
      cache_dir="",  # "": $XDG_CACHE_HOME/msa_jax/router_states (default ~/.cache/...)
      encode_batch_size=16,
      centre_init=True,  # biases start at minus the projected mean state (needs router_bias)
      queries_per_step=64,
      hard_negatives=3,  # BM25-mined negatives per question (0: none)
      negatives_depth=100,  # mined from each question's BM25 top-n, judged documents removed
      bm25_stemmer="english",
      random_negatives=128))  # uniform documents shared by the step's questions
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, schedule="cosine", warmup_steps=50, total_steps=1200,
      end_lr_factor=0.05, weight_decay=0.0, grad_clip_norm=1.0))
  c.train.update(log_every=50, eval_every=300, keep_checkpoints=1)
  if arg == "smoke":
    c.data.update(kind="nq320k", path=str(FIXTURE), eval_split="dev", eval_holdout=2,
                  doc_tokens=32, prompt_tokens=40)
    c.model.num_layers = 4
    c.msa.update(router_layers=(2, 3), top_k=2)
    c.adapt.update(queries_per_step=4, hard_negatives=1, negatives_depth=4, random_negatives=2)
    c.optim.update(warmup_steps=1, total_steps=3)
    c.train.update(steps=3, log_every=1, eval_every=3)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/router_adapt.py; known: 'smoke'")
  return c
