"""NIAH at growing memory sizes through the inference engine (`python -m msa_jax.niah`).

  # a model trained on the synthetic task (configs/demo.py)
  python -m msa_jax.niah --config=configs/niah.py --workdir=/tmp/niah \
      --config.checkpoint_workdir=/tmp/msa_demo --config.bm25=true
  # a random model: the machinery only (recall at chance)
  python -m msa_jax.niah --config=configs/niah.py --workdir=/tmp/niah_random \
      --config.random_model=tiny --config.variants=single --config.num_scales=2

See `msa_jax.evaluation.niah_eval` for the tasks and the metrics.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/niah.py; it has none")
  c = ml_collections.ConfigDict()
  # The model, exactly one of: a `python -m msa_jax.train` workdir trained on the synthetic task
  # (its latest checkpoint, or `step`), or a randomly initialised model of a preset ("tiny").
  c.checkpoint_workdir = ""
  c.step = ml_collections.FieldReference(None, field_type=int)
  c.random_model = ""
  c.model_seed = 0  # parameter seed of random_model
  c.variants = "single,multikey,multivalue"  # comma-separated names of niah.PRESETS
  c.base_tokens = 512  # the smallest memory size, in tokens
  c.num_scales = 3  # memory sizes base_tokens * factor ** i, i < num_scales
  c.factor = 10
  c.samples = 2  # haystacks per variant and size
  c.doc_tokens = 64  # memory document length, identifier prefix included
  c.top_k = ml_collections.FieldReference(None, field_type=int)  # None: the model's
  c.seed = 0  # task seed
  c.bm25 = False  # also report BM25's recall at the same top-k
  c.keep_banks = False  # keep the memory banks in <workdir>/banks
  return c
