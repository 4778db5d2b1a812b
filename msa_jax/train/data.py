"""Training data from the config: `make_data(config) -> (tokenizer, iterator, eval batches)`.

`config.data.kind` names the task (`msa_jax.tasks`); its `data(config)` returns the triple.
Every task's data follows this contract (the loop relies on it, on one process or many):

* B = `config.train.batch_size` is the global batch size. With P processes, each process's
  iterator and eval batches hold only its rows `process_rows(B)` = [p * B / P, (p + 1) * B / P)
  of every global batch (`sharding.shard_batch` assembles the global arrays). The global
  batches must not depend on P: all processes' rows, in process order, are the batch a single
  process would load. B % P != 0 is refused by `make_data` before the source is called.
  (A source that can only build whole batches may build them and keep `local_rows(batch)`.)
* The iterator yields `MSABatch`es of numpy arrays (the local rows) and has `get_state()` /
  `set_state(state)`: a JSON-able dict, saved (from process 0) with every checkpoint and given
  back on resume, after which the iterator yields exactly the batches that followed the save.
  The state must be the same on every process (e.g. a global batch counter).
* Eval batches: a list of `MSABatch`es (local rows, as above), the same on every run.

Data flow. Real-text data (`beir`, `nq320k`) always comes through its tfds builder
(`msa_jax.datasets`): the folder `data.path` is prepared once into ArrayRecord files under
`data.data_dir` (default `~/.cache/msa_jax/tfds`, or `$MSA_JAX_TFDS_DIR`), opened with
`tfds.data_source`, and its batches are a `grain.MapDataset` (element k = global batch k, this
process's rows) read by grain; grain's iterator state is what the checkpoints store. The synthetic
task is generated in memory, or with `data.source = "tfds"` read back from its prepared
`msa_synthetic` dataset (the same corpus, now on disk to inspect or share).

`config.data.loader`: "grain" (the default for beir / nq320k: the `grain.MapDataset` read by
grain with one background thread) or "python" (the default for the synthetic task: an
`IndexedBatchIterator` over the same batch source). Both yield the same batches.
"""

from __future__ import annotations

import ml_collections

from msa_jax import tasks
from msa_jax.tasks.base import process_rows


def make_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for `cfg.data.kind` (see the module docstring).

  Raises:
    ValueError: an unknown or evaluation-only task, or a global batch size not divisible by the
      process count.
  """
  task = tasks.get(cfg.data.kind)
  try:
    process_rows(cfg.train.batch_size)
  except ValueError as e:
    raise ValueError(f"train.batch_size={cfg.train.batch_size}: {e}") from None
  return task.data(cfg)
