"""What every task provides, and the loader pieces the tasks' training data share.

A task (`Task`) is named by a training config's `data.kind`. It provides

* `tokenizer(config)`: the tokenizer its texts are written with (the synthetic vocabulary, or
  the pretrained checkpoint's for real text);
* `template(data)`: how a question is written for the model (`Template`: head | question
  prefix + question | answer marker), used by training, the bank command and evaluation alike;
* `data(config)`: the training data, `(tokenizer, train iterator, eval batches)` under the
  contract of `msa_jax.train.data`;
* `evaluators`: the names of the evaluators (`msa_jax.evaluation.evaluators`) that can evaluate a
  model trained on it, declared per run in the config's `evals` section.

Adding a task = one module in this package (a `TASK`, listed in `msa_jax.tasks.TASKS`) and one
config file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from msa_jax.data import synthetic

LOADERS = ("python", "grain")
ROPE_MODES = ("document", "global")
# Grain reads with one thread a few batches ahead: batch building overlaps the train step.
_GRAIN_READ_OPTIONS = dict(num_threads=1, prefetch_buffer_size=4)


@dataclasses.dataclass(frozen=True)
class Template:
  """How a question is written for the model: `head` (after <bos>), `question_prefix` +
  question (the routing query), `answer_marker` (after which the model answers)."""

  head: str = ""
  question_prefix: str = "Question: "
  answer_marker: str = "\nAnswer:"

  def to_dict(self) -> dict[str, str]:
    return dataclasses.asdict(self)


class Task:
  """A task by name (`data.kind`); subclasses implement what it provides (module docstring)."""

  name: str = ""
  evaluators: tuple[str, ...] = ()

  def tokenizer(self, config: ml_collections.ConfigDict):
    """The tokenizer of a training config of this task."""
    raise NotImplementedError

  def template(self, data: Mapping[str, Any]) -> Template:
    """The prompt template of a training config's `data` section (a mapping)."""
    raise NotImplementedError

  def data(self, config: ml_collections.ConfigDict):
    """(tokenizer, train iterator, eval batches) of a training config (`msa_jax.train.data`)."""
    raise NotImplementedError


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch of `batch_size` rows (all of them on one process).

  Raises:
    ValueError: `batch_size` is not divisible by `jax.process_count()`.
  """
  return synthetic.process_rows(batch_size, jax.process_index(), jax.process_count())


def local_rows(batch: Any, batch_size: int) -> Any:
  """This process's rows (`process_rows`) of every array of a global batch pytree."""
  rows = process_rows(batch_size)
  return jax.tree.map(lambda x: x[rows], batch)


class GrainIterator:
  """A grain dataset's iterator with the loop's iterator interface (JSON-able state).

  Args:
    dataset: a `grain.MapDataset` (or `IterDataset`) of batches.
    read_options: keyword arguments of `grain.ReadOptions` (threads, prefetch buffer) for a
      `MapDataset`.
  """

  def __init__(self, dataset, read_options: Mapping[str, int] | None = None):
    import grain  # pylint: disable=import-outside-toplevel
    if isinstance(dataset, grain.MapDataset):
      dataset = dataset.to_iter_dataset(grain.ReadOptions(**(read_options or {})))
    self._iterator = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._iterator)

  def get_state(self) -> dict:
    return dict(self._iterator.get_state())

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a `get_state()` result.

    Raises:
      ValueError: `state` is not a grain state like this iterator's (e.g. the checkpoint was
        written with another `data.loader`).
    """
    expected = set(self.get_state())
    if set(state) != expected:
      raise ValueError(f"data state {dict(state)} is not a grain iterator state (keys "
                       f"{sorted(expected)}); was the checkpoint written with another "
                       "data.loader?")
    self._iterator.set_state(dict(state))


def rope_is_global(d: ml_collections.ConfigDict) -> bool:
  """`data.rope`: "document" (MSA: every document at positions 0..G-1) or "global" (the
  ablation: documents and prompt on one running position axis)."""
  rope = d.get("rope", "document")
  if rope not in ROPE_MODES:
    raise ValueError(f"data.rope={rope!r} is not supported; known: {ROPE_MODES}")
  return rope == "global"


def make_iterator(d: ml_collections.ConfigDict, default: str, python, grain_dataset):
  """The train iterator `data.loader` asks for (`default` when unset): `python()` or a
  `GrainIterator` over `grain_dataset()`."""
  loader = d.get("loader", default)
  if loader == "python":
    return python()
  if loader == "grain":
    return GrainIterator(grain_dataset(), _GRAIN_READ_OPTIONS)
  raise ValueError(f"data.loader={loader!r} is not supported; known: {LOADERS}")
