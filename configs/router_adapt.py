"""Router adaptation: SmolLM2-135M made into an MSA retriever on a CPU (frozen backbone, cached
states, trained router projections); NFCorpus by default.

  python -m msa_jax.train --config=configs/router_adapt.py --workdir=/tmp/msa_router
  python -m msa_jax.evaluate --config=configs/evaluate.py --workdir=/tmp/msa_router_eval \
      --config.checkpoint_workdir=/tmp/msa_router --config.scaling.enabled=False

The first command caches the frozen backbone's router inputs (documents and training questions,
in ~/.cache/msa_jax/router_states, fingerprinted to model and data), trains the routers on them
and writes an ordinary checkpoint; the second ranks the test split's questions against the
whole corpus through the normal bank -> routing path, beside BM25 (see
`msa_jax.train.router_adapt`). Any BEIR folder: `--config.data.path=/path/to/scifact`; NQ320k:
`--config.data.kind=nq320k --config.data.path=/path/to/NQ_dataset --config.data.eval_split=dev`;
another backbone: `--config.model.checkpoint=/path/to/Qwen3-0.6B` (then pick its router layers).
Only the training split's questions are read for training (a held-out part validates).
Variant `:smoke`: 3 steps on the NQ320k fixture with SmolLM2's first 4 layers (tests).
Run from the repository root.
"""

from pathlib import Path

import ml_collections

from msa_jax.train import config_presets as common

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO.parent / "shared" / "data" / "beir" / "nfcorpus"
FIXTURE = REPO / "tests" / "data" / "nq320k"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.retrieval_config("beir", str(DEFAULT_PATH), train_split="train", eval_split="test",
                              steps=1500)
  c.mode = "router_adapt"
  c.msa = ml_collections.ConfigDict(dict(
      router_layers=(6, 9, 12), aux_layers="all", top_k=4, chunk_size=16, decouple_router=True,
      router_bias=True, head_reduce="mean", query_reduce="mean", chunk_reduce="max",
      aux_loss="infonce", temperature=0.05, lm_weight=0.0, aux_weight=1.0, kernel_impl="xla"))
  c.data.update(doc_tokens=128, prompt_tokens=64, eval_holdout=200)
  c.adapt = ml_collections.ConfigDict(dict(
      cache_dir="",  # "": ~/.cache/msa_jax/router_states
      encode_batch_size=16,
      centre_init=True,  # biases start at minus the projected mean state (needs router_bias)
      queries_per_step=64,
      hard_negatives=3,  # BM25-mined negatives per question (0: none)
      negatives_depth=100,  # mined from each question's BM25 top-n, judged documents removed
      bm25_stemmer="english",
      random_negatives=128))  # uniform documents shared by the step's questions
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, schedule="cosine", warmup_steps=50, total_steps=1500,
      end_lr_factor=0.05, weight_decay=0.0, grad_clip_norm=1.0))
  c.train.update(log_every=50, eval_every=250, keep_checkpoints=1)
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
