"""`python -m msa_jax.niah --config=configs/niah.py --workdir=/tmp/niah
--config.checkpoint_workdir=/tmp/msa_demo`: NIAH at growing memory sizes.

An absl app over `msa_jax.evaluation.niah_eval` (the tasks, the metrics and what is written to
the workdir are described there); configs/niah.py holds the settings (`--help` lists them, each
overridable as `--config.FIELD=VALUE`). The config, the model choice and the workdir are checked
before any model is loaded or initialised; user errors print one `error: ...` line and exit with
status 2 (`--verbose`: with traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.data import niah
from msa_jax.evaluation import niah_eval
from msa_jax.model import PRESETS

def variants(config) -> tuple[str, ...]:
  """The config's comma-separated NIAH variants."""
  return tuple(v.strip() for v in config.variants.split(",") if v.strip())


def check_config(config, workdir) -> None:
  """The config and the workdir (before a model is loaded or initialised).

  Raises:
    UserError: a bad size, an unknown variant or preset, not exactly one model, a checkpoint of
      another task, a bad workdir.
  """
  validation.check_output_dir(workdir)
  if bool(config.checkpoint_workdir) == bool(config.random_model):
    raise validation.UserError("give exactly one of --config.checkpoint_workdir, "
                               "--config.random_model")
  id_digits = 4
  if config.checkpoint_workdir:
    path = validation.check_workdir_of_training(config.checkpoint_workdir,
                                                "--config.checkpoint_workdir")
    train = json.loads((path / "config.json").read_text()).get("data", {})
    if train.get("kind") not in niah_eval.NIAH_TASKS:
      raise validation.UserError(
          f"--config.checkpoint_workdir={config.checkpoint_workdir} trained on data.kind="
          f"{train.get('kind')!r}; NIAH needs a model trained on the synthetic task")
    id_digits = int(train.get("id_digits", id_digits))
  elif config.random_model not in PRESETS:
    raise validation.UserError(f"--config.random_model={config.random_model!r} is not a preset"
                               + validation.did_you_mean(config.random_model, PRESETS))
  if not variants(config):
    raise validation.UserError("--config.variants is empty; give some of "
                               f"{','.join(niah.PRESETS)}")
  for name in variants(config):
    if name not in niah.PRESETS:
      raise validation.UserError(f"--config.variants: {name!r} is not a NIAH variant"
                                 + validation.did_you_mean(name, niah.PRESETS))
  for name, low in (("base_tokens", 1), ("num_scales", 1), ("factor", 2), ("samples", 1),
                    ("doc_tokens", niah_eval.prefix_tokens(id_digits) + 1)):
    validation.check_at_least(f"--config.{name}", config[name], low)
  validation.check_at_least("--config.top_k", config.top_k, 1, optional=True)
  validation.check_at_least("--config.step", config.step, 0, optional=True)


def run(config, workdir) -> dict:
  """Checks, loads the model, evaluates and writes the results into `workdir`."""
  check_config(config, workdir)
  name = config.checkpoint_workdir or f"a random {config.random_model} model"
  print(f"[niah] loading {name}...", file=sys.stderr, flush=True)
  model = (niah_eval.trained_model(config.checkpoint_workdir, config.step)
           if config.checkpoint_workdir
           else niah_eval.random_model(config.random_model, seed=config.model_seed))
  settings = niah_eval.NiahEvalSettings(
      variants=variants(config), base_tokens=config.base_tokens, num_scales=config.num_scales,
      factor=config.factor, samples_per_size=config.samples, doc_tokens=config.doc_tokens,
      top_k=config.top_k, bm25=config.bm25, seed=config.seed)
  return niah_eval.run(workdir, model, settings, keep_banks=config.keep_banks)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None:
    raise validation.UserError("--config is required (e.g. --config=configs/niah.py)")
  runtime.start_command()
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module defines none.
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help("NIAH evaluation", "configs/niah.py"),
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (JSON, table, plot).")
  validation.run_app(main)
