"""Tasks in a registry (`msa_jax.tasks`) and the evaluations a training config declares
(`config.evals`, `msa_jax.evaluation.evaluators`)."""

from pathlib import Path

import numpy as np
import pytest

from configs import beir, demo
from msa_jax import tasks
from msa_jax.data.synthetic import SyntheticTokenizer
from msa_jax.evaluation import evaluators, niah_eval
from msa_jax.evaluation import run as evaluate_run
from msa_jax.loading import restore
from msa_jax.tasks import base
from msa_jax.train import data as data_lib

TASK_MODULES = sorted(p.stem for p in (Path(tasks.__file__).parent).glob("*.py")
                      if p.stem not in ("__init__", "base", "retrieval"))


def test_every_task_module_is_registered_under_its_name():
  assert TASK_MODULES == ["beir", "niah", "nq320k", "synthetic"]
  assert sorted(tasks.TASKS) == TASK_MODULES
  for name, task in tasks.TASKS.items():
    assert isinstance(task, base.Task) and task.name == name and tasks.get(name) is task
  with pytest.raises(ValueError, match=r"data.kind='beri' is not a task; known: \['beir', "):
    tasks.get("beri")


def test_evaluators_select_the_tasks():
  assert tasks.with_evaluator("retrieval") == ("beir", "nq320k")
  assert evaluate_run.RETRIEVAL_KINDS == ("beir", "nq320k")
  assert niah_eval.NIAH_TASKS == ("synthetic", "niah")
  assert tasks.get("beir").eval_split == "test" and tasks.get("nq320k").eval_split == "dev"


def test_synthetic_task_tokenizer_template_and_data():
  config = demo.get_config("smoke")
  task = tasks.get("synthetic")
  tok = task.tokenizer(config)
  d = config.data
  reference = SyntheticTokenizer(d.num_filler_words, d.num_key_words, d.num_value_words)
  assert tok.vocab_size == reference.vocab_size
  assert tok.encode("<query> k5 k12") == reference.encode("<query> k5 k12")
  assert restore.make_tokenizer(config).vocab_size == reference.vocab_size
  assert task.template(d).to_dict() == {"head": "", "question_prefix": "<query> ",
                                        "answer_marker": "<answer>"}
  # The training data is the task's: the same batches through make_data and the task.
  _, iterator, eval_batches = data_lib.make_data(config)
  _, again, eval_again = task.data(config)
  np.testing.assert_array_equal(next(iterator).tokens, next(again).tokens)
  assert len(eval_batches) == config.train.eval_batches
  for a, b in zip(eval_batches, eval_again):
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_retrieval_task_template_and_tokenizer_need():
  config = beir.get_config("smoke")
  task = tasks.get("beir")
  assert task.template(config.data) == tasks.Template("", "Question: ", "\nDocument:")
  config.model.checkpoint = ""
  with pytest.raises(ValueError, match="data.kind='beir' needs the tokenizer of a pretrained"):
    task.tokenizer(config)
  with pytest.raises(ValueError, match="data.kind='beir' needs the tokenizer of a pretrained"):
    data_lib.make_data(config)


def test_niah_is_an_evaluation_task():
  config = demo.get_config("smoke")
  config.data.kind = "niah"
  assert tasks.get("niah").tokenizer(config).vocab_size == tasks.get("synthetic").tokenizer(
      config).vocab_size
  with pytest.raises(ValueError, match="is an evaluation task"):
    data_lib.make_data(config)


def test_evals_are_checked_against_the_task():
  config = demo.get_config("smoke")
  evaluators.check_evals(config)
  config.evals.extrapolation.questions = 0
  with pytest.raises(ValueError, match=r"evals.extrapolation.questions=0 must be a number >= 1"):
    evaluators.check_evals(config)
  config = demo.get_config("smoke")
  config.evals.extrapolation.multipliers = (1, 0)
  with pytest.raises(ValueError, match=r"evals.extrapolation.multipliers\[\]=0"):
    evaluators.check_evals(config)
  config = demo.get_config("smoke")
  config.evals.extrapolatoin = dict(config.evals.extrapolation)
  with pytest.raises(ValueError, match="evals.extrapolatoin: no such evaluator after training "
                                       r"\(did you mean 'extrapolation'\?\)"):
    evaluators.check_evals(config)
  config = beir.get_config("smoke")
  config.evals = dict(extrapolation=dict(multipliers=(1,), questions=1))
  with pytest.raises(ValueError, match="evals.extrapolation does not apply to "
                                       "data.kind='beir'"):
    evaluators.check_evals(config)
  assert evaluators.run_evals(beir.get_config("smoke"), None, None, None, None, None) == {}


def test_retrieval_tasks_check_their_files_before_reading(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"BEIR dataset folder {tmp_path / 'nope'} does "
                                              "not exist"):
    tasks.get("beir").check_files(str(tmp_path / "nope"), ["test"])
  with pytest.raises(FileNotFoundError, match="BEIR dataset folder"):
    evaluate_run.load_data("beir", str(tmp_path / "nope"), ["test"])
  tasks.get("nq320k").check_files(str(tmp_path / "nope"), ["dev"])  # read by its builder
