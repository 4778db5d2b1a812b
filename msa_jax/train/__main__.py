"""`python -m msa_jax.train --config=configs/demo.py --workdir=/tmp/msa_demo`.

Trains (or resumes, if the workdir has checkpoints) with the given ml_collections config;
any field is overridable (`--config.train.steps=100`). The config is checked before anything is
loaded, and a workdir holding a run of another config is refused (`msa_jax.train.workdir`):
such errors print one `error: ...` line and exit with status 2 (`--verbose`: with traceback).
"""

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, validation.config_help("Training config", "configs/demo.py",
                                           "configs/beir.py", "configs/nq320k.py",
                                           "configs/router_adapt.py"), lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise validation.UserError("--config is required (e.g. --config=configs/demo.py)")
  validation.check_output_dir(_WORKDIR.value)
  runtime.start_command(shared_arena=True)  # training: see runtime.host_memory
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  validation.run_app(main)
