"""Needle in a haystack (`python -m msa_jax.niah`, configs/niah.py): an evaluation-only task.

RULER-style haystacks (`msa_jax.data.niah`) written in the synthetic task's vocabulary and
prompt layout, so they evaluate a model trained on the synthetic task (its training config
gives the vocabulary); there is no NIAH training data. Evaluator: "niah"
(`msa_jax.evaluation.niah_eval`).
"""

from msa_jax.tasks import base
from msa_jax.tasks import synthetic


class NiahTask(base.Task):
  """NIAH over a synthetic-task model."""

  name = "niah"
  evaluators = ("niah",)

  def tokenizer(self, config):
    return synthetic.tokenizer_of(config.data)

  def template(self, data) -> base.Template:
    return synthetic.TEMPLATE

  def data(self, config):
    raise ValueError("data.kind='niah' is an evaluation task (python -m msa_jax.niah); train "
                     "on data.kind='synthetic' and evaluate that model on NIAH")


TASK = NiahTask()
