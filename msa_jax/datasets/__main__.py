"""Prepare (build) the tfds datasets a training config reads, and show what is in them.

  python -m msa_jax.datasets --config=configs/beir.py [--data_dir=DIR]
  python -m msa_jax.datasets --config=configs/beir.py --config.data.path=/data/beir/scifact
  python -m msa_jax.datasets --config=configs/nq320k.py --config.data.path=/data/NQ_dataset
  python -m msa_jax.datasets --config=configs/demo.py       # the synthetic task's two corpora

Builds what `python -m msa_jax.train` with the same config would read (nothing when it is
already prepared) into `--data_dir` (default: the config's `data.data_dir`, else
$MSA_JAX_TFDS_DIR or $XDG_CACHE_HOME/msa_jax/tfds, ~/.cache/msa_jax/tfds
without XDG_CACHE_HOME), then prints, per dataset, the name to open it with
(`tfds.data_source(NAME, data_dir=DIR)`), its splits with their sizes and the first record of
each split. A bad config value ends with one `error: ...` line and status 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from msa_jax import validation
from msa_jax.datasets import core, retrieval, synthetic

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, validation.config_help("The training config whose datasets to prepare",
                                           "configs/beir.py", "configs/nq320k.py",
                                           "configs/demo.py"), lock_config=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to prepare (default: data.data_dir, "
                                "else $MSA_JAX_TFDS_DIR or $XDG_CACHE_HOME/msa_jax/tfds, "
                                "~/.cache/msa_jax/tfds without XDG_CACHE_HOME).")


def builders(config, data_dir: str | None) -> list[Any]:
  """The tfds builders of the datasets `config` trains and evaluates on."""
  d = config.data
  data_dir = data_dir or d.get("data_dir") or None
  if d.kind in retrieval.BUILDERS:
    return [retrieval.BUILDERS[d.kind](d.path, data_dir)]
  if d.kind == "synthetic":
    return [synthetic.builder(args, data_dir) for args in synthetic.corpora(d).values()]
  raise ValueError(f"data.kind={d.kind!r} has no tfds builder; known: "
                   f"{sorted([*retrieval.BUILDERS, 'synthetic'])}")


def _plain(value: Any) -> Any:
  """A record's value as plain Python (str for bytes, int for numpy scalars, lists)."""
  if isinstance(value, bytes):
    return core.text(value)
  if hasattr(value, "tolist"):
    return value.tolist()
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def _short(value: Any, width: int = 70) -> str:
  text = repr(_plain(value))
  return text if len(text) <= width else text[:width - 3] + "..."


def describe(builder) -> str:
  """The dataset's name, location, splits (sizes) and first record of each split."""
  sources = core.prepare(builder)
  name = f"{builder.name}/{builder.builder_config.name}"
  where = f"tfds.data_source({name!r}, data_dir={str(builder.data_dir_root)!r})"
  lines = [f"{name}  (version {builder.version}; {where})",
           f"  source: {builder.builder_config.source}"]
  for split, source in sources.items():
    first = source[0] if len(source) else {}
    fields = ", ".join(f"{k}={_short(v)}" for k, v in first.items())
    lines.append(f"  {split}: {len(source):,} records; first: {fields}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise validation.UserError("--config is required (e.g. --config=configs/beir.py)")
  for builder in builders(_CONFIG.value, _DATA_DIR.value):
    print(describe(builder), flush=True)


if __name__ == "__main__":
  validation.run_app(main)
