"""Tasks by name: what a model is trained and evaluated on (`config.data.kind`).

One module per task, each with a `TASK` (`msa_jax.tasks.base.Task`: tokenizer, training data
source, prompt template, the evaluators that apply): `synthetic` (the synthetic memory task),
`niah` (needle in a haystack, evaluation only), `beir` and `nq320k` (generative retrieval over
real text). Training (`msa_jax.train.data`), loading a trained workdir (`msa_jax.loading`), the
bank command and evaluation dispatch through `get(name)`. Adding a task = one module here
(listed in `TASKS`) + one config file.

Layer: below loading / inference / evaluation / train, above datasets and data.
"""

from msa_jax.tasks import beir, niah, nq320k, synthetic
from msa_jax.tasks.base import Task, Template

TASKS: dict[str, Task] = {t.name: t for t in (synthetic.TASK, niah.TASK, beir.TASK, nq320k.TASK)}


def get(name: str) -> Task:
  """The task called `name` (a config's `data.kind`).

  Raises:
    ValueError: no such task (the message lists the known ones).
  """
  if name not in TASKS:
    raise ValueError(f"data.kind={name!r} is not a task; known: {sorted(TASKS)}")
  return TASKS[name]


def with_evaluator(evaluator: str) -> tuple[str, ...]:
  """The names of the tasks whose models `evaluator` can evaluate."""
  return tuple(name for name, task in TASKS.items() if evaluator in task.evaluators)


__all__ = ["TASKS", "Task", "Template", "get", "with_evaluator"]
