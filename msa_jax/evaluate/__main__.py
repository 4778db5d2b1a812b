"""`python -m msa_jax.evaluate --config=configs/evaluate.py --workdir=/tmp/msa_beir_eval
--config.checkpoint_workdir=/tmp/msa_beir`.

Retrieval metrics of a trained checkpoint (router rankings per layer and combined, generative
retrieval, BM25 on the same memory, memory-size scaling); see `msa_jax.evaluation.run`. The
config and the paths are checked before anything is loaded; user errors print one `error: ...`
line and exit with status 2 (`--verbose`: with traceback).
"""

import logging as py_logging
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.evaluation.run import evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, validation.config_help("Evaluation config", "configs/evaluate.py"),
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Results directory (bank, results.json, plots).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise validation.UserError("--config is required (e.g. --config=configs/evaluate.py)")
  validation.check_evaluate_config(_CONFIG.value, _WORKDIR.value)
  runtime.start_command()
  import bm25s  # pylint: disable=import-outside-toplevel,unused-import
  py_logging.getLogger("bm25s").setLevel(py_logging.WARNING)  # bm25s sets DEBUG on import
  evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  validation.run_app(main)
