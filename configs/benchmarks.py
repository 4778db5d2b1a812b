"""The benchmark suite (`python -m msa_jax.benchmarks`): our time against a baseline's per stage.

  python -m msa_jax.benchmarks --config=configs/benchmarks.py        # full sizes (minutes)
  python -m msa_jax.benchmarks --config=configs/benchmarks.py:quick  # tiny sizes, seconds
  # routing alone, pinned to one CPU, single-threaded, CPU seconds (the load hardly moves it)
  python -m msa_jax.benchmarks.routing --config=configs/benchmarks.py:one_core
  python -m msa_jax.benchmarks --config=configs/benchmarks.py --config.stages=routing,generation \
      --config.json=/tmp/bench.json
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = "routing,encoding,generation"  # comma-separated, of msa_jax.benchmarks.STAGES
  c.quick = False  # tiny sizes, seconds (a smoke test)
  c.one_core = False  # benchmarks.routing only: re-run pinned to one CPU, compare CPU seconds
  c.json = ""  # also write the results as JSON here ("-": stdout)
  if arg == "quick":
    c.quick = True
  elif arg == "one_core":
    c.update(stages="routing", one_core=True)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/benchmarks.py; known: "
                     "['quick', 'one_core']")
  return c
