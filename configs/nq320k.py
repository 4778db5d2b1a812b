"""NQ320k generative retrieval (the paper's table): Wikipedia pages as memory, NQ questions as
queries, the target is the identifier of the page that answers the question.

  python -m msa_jax.train --config=configs/nq320k.py --workdir=/tmp/msa_nq320k \
      --config.data.path=/path/to/NCI/Data_process/NQ_dataset

`data.path` is the folder with the NCI preprocessing's NQ_doc_content.tsv,
nq_train_doc_newid.tsv and nq_dev_doc_newid.tsv (see `msa_jax.data.retrieval.load_nq320k`), or
a tfds data dir holding `natural_questions` prepared as ArrayRecord (see
`msa_jax.datasets.retrieval.load_natural_questions`); without either the run stops at once with
how to obtain the data. The files are prepared once
into the `msa_nq320k` tfds dataset under `data.data_dir` (default ~/.cache/msa_jax/tfds) and
read through `tfds.data_source` and grain.
Backbone: the SmolLM2-135M GGUF; a Qwen3 HF directory instead with
`--config.model.checkpoint=/path/to/Qwen3-0.6B` (its config.json gives the model, as the
`qwen3_0_6b` preset). Trains on `train`, evaluates on `dev`. Variant `:smoke` runs 3 steps on
the few-KB fixture in tests/data/nq320k (for tests). Run from the repository root.
"""

from pathlib import Path

import ml_collections

from msa_jax.train import config_presets as common

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO.parent / "shared" / "data" / "nq320k"
FIXTURE = REPO / "tests" / "data" / "nq320k"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.retrieval_config("nq320k", str(DEFAULT_PATH), train_split="train",
                              eval_split="dev", steps=10_000)
  c.data.doc_tokens = 512
  if arg == "smoke":
    common.smoke(c)
    c.data.path = str(FIXTURE)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/nq320k.py; known: 'smoke'")
  return c
