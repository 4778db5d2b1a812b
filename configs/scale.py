"""The scale run: a trained synthetic-task model against memories of up to 100M tokens.

  python -m msa_jax.scale --config=configs/scale.py \
      --config.checkpoint_workdir=/tmp/msa_demo --config.workdir=/tmp/msa_scale

`checkpoint_workdir` is a `python -m msa_jax.train --config=configs/demo.py` workdir (its task's
identifiers and keys must cover the largest memory: configs/demo.py's 7 digits and 128 ** 3 keys
hold the 1.6M documents of 100M tokens). Banks go to `<workdir>/banks` (bfloat16; a 100M-token
bank of the demo model is about 2.6 GB per memory); rerunning the command continues an encoding
killed midway and reuses finished banks. Variants: `:smoke` (two tiny sizes, for tests),
`:10m` (up to 10M tokens).

Measured on the shared 2-core CPU (WORKSPACE.md, "Scale runs"): 100M tokens (demo memory only)
encoded in 27 min at 60.8K tokens/s after a kill -9 and rerun, bank 2.44 GB, routing 1.19 s
per question; 10M: 244 MB, 361 ms per question. Accuracy needs a well-trained checkpoint: a
4-digit demo checkpoint (step 2000) gives demo accuracy 0.41 / 0.36 and NIAH 0.69-1.0 at
100K / 300K tokens; the 7-digit checkpoints available so far write no identifiers.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint_workdir = ""  # required: a trained synthetic-task workdir
  c.step = ml_collections.FieldReference(None, field_type=int)  # None: its latest checkpoint
  c.workdir = ""  # required: results and banks
  c.sizes = (100_000, 1_000_000, 10_000_000, 100_000_000)  # memory tokens
  c.tasks = ("demo", "single", "multikey", "multivalue", "multiquery")
  c.questions = 64  # demo-task questions per size
  c.niah_repeats = 8  # needle groups of each NIAH variant in a size's haystack
  c.seed = 0  # the NIAH haystacks' seed
  c.route_k = 16  # recall@k (the paper routes 16 documents); answers use the trained top_k
  c.dtype = "float32"  # compute dtype
  c.bank_dtype = "bfloat16"
  c.encode_batch = 256  # documents per encoder forward
  c.question_batch = 16
  c.commit_every = 65536  # documents per bank commit ...
  c.commit_seconds = 30.0  # ... or seconds, whichever comes first
  if arg == "smoke":
    c.sizes = (2_048, 8_192)
    c.questions, c.niah_repeats, c.route_k = 8, 1, 4
    c.encode_batch, c.question_batch, c.commit_every = 16, 8, 32
  elif arg == "10m":
    c.sizes = (100_000, 1_000_000, 10_000_000)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/scale.py; known: 'smoke', '10m'")
  return c
