"""The scale run: a trained synthetic-task model against memories of up to 100M tokens.

  python -m msa_jax.train --config=configs/demo.py:scale --workdir=/tmp/msa_demo_scale
  python -m msa_jax.scale --config=configs/scale.py \
      --config.checkpoint_workdir=/tmp/msa_demo_scale --config.workdir=/tmp/msa_scale

`checkpoint_workdir` is a `python -m msa_jax.train --config=configs/demo.py[:variant]` workdir
whose task's identifiers and keys cover the largest memory: `:scale`'s 7 digits and 128 ** 3
keys hold the 1.6M documents of 100M tokens (the default demo's 5 digits and 192 ** 2 keys stop
at 36,864 documents, ~2.1M memory tokens after the training ones; a larger size is refused
before any model is loaded). Banks go to `<workdir>/banks` (bfloat16; a 100M-token bank of the
demo model is about 2.4 GB per memory); rerunning the command continues an encoding killed
midway and reuses finished banks. Variants: `:smoke` (two tiny sizes, for tests), `:10m` (up
to 10M tokens).

Measured on the shared 2-core CPU (WORKSPACE.md, "Scale runs"). The current
`configs/demo.py:scale` checkpoint (S2, step 7,000), 100M tokens, demo task, 64 questions, 52 min
8 s at load 2-10: bank 4.84 GB, encode 32.9K tokens/s, routing 228 ms per question, recall@1
0.906, recall@16 1.000, answer 0.812 (its 1M-token table: 1.000 / 0.844). `:10m` on S2 (4 min
25 s, idle machine, 2026-12-03): demo recall@1 1.000 at 100K / 1M / 10M, answer 0.891 / 0.812 /
0.875; encode 48-97K tokens/s, routing 23 ms per question at 10M; NIAH recall@1 1.000 at every
size, answers 0.75-1.00 (8-16 questions each). NIAH at 100M on S2 (all five tasks, the demo
bank reused, 20 min 46 s, idle, 2026-12-03): one 4.84 GB haystack bank, encode 92K tokens/s,
routing 239 ms per question, recall@1 1.000 for every variant, answers single / multi-key /
multi-value / multi-query 0.875 / 1.000 / 1.000 / 0.750.
The previous `configs/demo.py:scale` (S1)
checkpoint (step 5,000; its keys and identifiers hold the 1.6M documents of 100M tokens), load
14-17: 1M and 10M tokens in 11 min 16 s; encode 34-37K tokens/s, bank 244 MB at 10M, routing
9.4 ms per question at 10M; demo recall@1 1.000 / 0.906 and answer 0.516 / 0.516 at 1M / 10M
(NIAH recall@1 1.0, answers 0.44-1.0 on 8-16 questions).
100M tokens (demo, 32 questions): 41 min 34 s at load 7-17, encode 40.7K tokens/s, bank
2.44 GB, routing 54 ms per question, recall@1 0.312, recall@16 1.000, answer 0.250.
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
