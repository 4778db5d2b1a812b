"""`python -m msa_jax.train` end to end on the demo's smoke variant: metrics, checkpoints,
a rerun that resumes and reproduces the uninterrupted run, optimiser phases that route other
top_k, and 2 processes (launch/local.sh) that train like one. The command line killed by SIGKILL
and rerun: test_train_configs.py.

The uninterrupted run (`smoke_run`: `demo.py:smoke,top4`, every step logged) is trained once
per module: the resume, phase and 2-process tests compare against it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from msa_jax.model.config import MSAConfig
from msa_jax.train.loop import train_and_evaluate
from msa_jax.train.metrics import read_metrics
from tests.paths import REPO

VARIANT = "smoke,top4"  # 7 steps: 3 warm-up (LM weight 0), 2 routing 1 document, 2 routing 4


def smoke_config():
  config = demo.get_config(VARIANT)
  config.train.log_every = 1
  return config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(workdir, final metrics) of one uninterrupted `smoke_config()` run, in-process."""
  workdir = tmp_path_factory.mktemp("smoke") / "straight"
  return workdir, train_and_evaluate(smoke_config(), workdir)


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, smoke_run, capsys):
  """Stopped after step 3 (its checkpoint), then the same config again: the rerun resumes
  through grain (same batches: its iterator state is in the checkpoint) and logs the
  uninterrupted run's losses; a third run of the finished workdir trains nothing. The command
  line's SIGKILL and rerun: tests/test_train_configs.py (configs/beir.py:smoke)."""
  config = smoke_config()
  straight_dir, straight = smoke_run
  stopped = smoke_config()
  stopped.train.steps = 3
  stopped.data.loader = config.data.loader = "grain"
  train_and_evaluate(stopped, tmp_path / "resumed")
  data_state = json.loads((tmp_path / "resumed" / "checkpoints" / "3" / "data" / "metadata")
                          .read_text())
  assert data_state == {"next_index": 3}
  capsys.readouterr()
  resumed = train_and_evaluate(config, tmp_path / "resumed")
  out = capsys.readouterr().out
  assert "resumed from step 3 in" in out and "[train] step 4 | " in out
  assert "Train short, infer long (document RoPE" in out  # the evaluators' table
  a = {r["step"]: r["loss"] for r in read_metrics(straight_dir, "train")}
  b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed", "train")}
  assert sorted(a) == sorted(b) == list(range(1, 8))
  for step in range(1, 8):  # the phases routing 1, then 4 documents come after the restart
    np.testing.assert_allclose(b[step], a[step], rtol=1e-5, err_msg=f"step {step}")
  for key in ("loss", "lm_loss", "aux_loss", "eval_loss", "eval_lm_loss", "eval_aux_loss"):
    assert np.isfinite(straight[key]), key
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, err_msg=key)
  # Rerunning a finished run trains nothing and gives the same final metrics.
  assert train_and_evaluate(config, tmp_path / "resumed") == resumed
  assert "[train] compiling the train step" not in capsys.readouterr().out
  # The smoke config's train-short/infer-long table (memories of 1x and 2x the training one).
  table = json.loads((straight_dir / "extrapolation.json").read_text())
  assert [r["multiplier"] for r in table["rows"]] == [1, 2] and table["rope"] == "document"
  assert all(0 <= r["recall_at_1"] <= r["recall_at_5"] <= 1 for r in table["rows"])
  # Every answer has one kind, the right ones are the exact ones, and the examples are wrong.
  for r in table["rows"]:
    assert sum(r["answer_kinds"].values()) == r["questions"]
    assert r["answer_kinds"]["right"] == round(r["answer_accuracy"] * r["questions"])
    assert len(r["wrong_examples"]) == min(8, r["questions"] - r["answer_kinds"]["right"])
    assert all(e["expected"] != e["generated"] for e in r["wrong_examples"])
  saved = json.loads((straight_dir / "config.json").read_text())
  assert saved["train"]["steps"] == 7
  assert (straight_dir / "checkpoints" / "7").is_dir()


@pytest.mark.slow
def test_command_line_refuses_an_unknown_variant(tmp_path):
  """The command line's training run itself: see test_sigkill_mid_run_then_rerun_... (its
  rerun's output, its `--config.*` overrides)."""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  bad = subprocess.run(
      [sys.executable, "-m", "msa_jax.train", f"--config={REPO / 'configs' / 'demo.py'}:nope",
       f"--workdir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert bad.returncode != 0 and "unknown variant 'nope'" in bad.stderr


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, smoke_run):
  env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_DIR": str(tmp_path / "logs"),
         "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
  run = subprocess.run(
      ["bash", str(REPO / "launch" / "local.sh"), "2", sys.executable, "-m", "msa_jax.train",
       f"--config={REPO / 'configs' / 'demo.py'}:{VARIANT}", "--config.train.log_every=1",
       f"--workdir={tmp_path / 'two'}"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert run.returncode == 0, run.stderr + "".join(log[-3000:] for log in logs)
  assert "[train] step 7 | " in logs[0] and "[train]" not in logs[1]  # process 0 logs
  assert "[extrapolation] skipped: run it on one process" in logs[0]
  one_dir, single = smoke_run
  two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
  # lm_targets counts the global batch's answer tokens: each process loaded only its half.
  print("two processes vs one, relative differences:",
        {k: abs(two[k] - single[k]) / abs(single[k]) for k in ("loss", "grad_norm", "eval_loss")})
  for key in ("loss", "lm_loss", "aux_loss", "grad_norm", "lm_targets", "recall@5",
              "eval_loss", "eval_lm_loss", "eval_aux_loss", "eval_lm_targets"):
    np.testing.assert_allclose(two[key], single[key], rtol=1e-5, err_msg=key)
  rows = {(r["split"], r["step"]): r for r in read_metrics(tmp_path / "two")}
  reference = read_metrics(one_dir)
  assert len(rows) == len(reference) == 10  # train 1-7 and eval 3, 6, 7
  for r in reference:
    for key in ("loss", "lm_loss", "aux_loss"):
      np.testing.assert_allclose(rows[r["split"], r["step"]][key], r[key], rtol=1e-5)
  assert (tmp_path / "two" / "checkpoints" / "7").is_dir()


def test_demo_long_doubles_the_last_phase():
  """demo.py:long: the last optimiser phase (with :top4, the one routing 4 documents) twice as
  long, and train.steps still the phases' sum."""
  for arg, want in (("smoke,top4,long", [(3, None), (2, 1), (4, 4)]),
                    ("smoke,long", [(3, None), (6, None)])):
    c = demo.get_config(arg)
    assert [(p["steps"], p.get("top_k")) for p in c.optim.phases] == want, arg
    assert c.train.steps == sum(p["steps"] for p in c.optim.phases), arg
  full = demo.get_config("top4,long")
  assert [p["steps"] for p in full.optim.phases] == [500, 2320, 3480]
  assert full.train.steps == 6300


def test_demo_ladder_routes_two_before_four():
  """demo.py:ladder (run T8): the phase routing 4 documents first routes 2 for half its steps
  (constant rate, then the phase's cosine); the total is unchanged."""
  c = demo.get_config("top4,ladder")
  assert [(p["steps"], p.get("top_k"), p["schedule"]) for p in c.optim.phases] == [
      (500, None, "constant"), (2320, 1, "constant"), (870, 2, "constant"), (870, 4, "cosine")]
  assert c.train.steps == sum(p["steps"] for p in c.optim.phases) == 4560


def test_demo_answer_queries_adds_the_answer_tokens_routing_loss():
  """demo.py:answer_queries (runs T10-T12): the answer tokens' routing loss at weight 1 inside
  the aux loss, valid with the demo's batch negatives; the phases are :top4's."""
  c = demo.get_config("top4,hardneg,long,answer_queries")
  msa = MSAConfig(**c.msa.to_dict())
  assert msa.loss.answer_query_weight == 1.0 and msa.loss.batch_negatives
  assert msa == MSAConfig(**demo.get_config("top4,hardneg,long").msa.to_dict()).replace(
      answer_query_weight=1.0)
  assert c.optim.phases == demo.get_config("top4,hardneg,long").optim.phases


def test_demo_answer_attention_adds_the_answer_tokens_memory_attention_loss():
  """demo.py:answer_attention (runs T13-T17): the answer tokens' memory attention loss at
  weight 1 inside the aux loss; nothing else changes."""
  base = "top4,hardneg,long,long,answer_queries"
  c = demo.get_config(base + ",answer_attention")
  msa = MSAConfig(**c.msa.to_dict())
  assert msa == MSAConfig(**demo.get_config(base).msa.to_dict()).replace(
      answer_attention_weight=1.0)
  assert c.optim.phases == demo.get_config(base).optim.phases
  assert c.data == demo.get_config(base).data


def test_demo_top4_recipe_is_t21():
  """demo.py:top4_recipe (run T21) is its five variants with the identifier after the fact,
  16,000 training documents and the phase routing 1 document 1.5x as long; nothing else
  changes."""
  c = demo.get_config("top4_recipe")
  parts = demo.get_config("top4,hardneg,long,answer_queries,answer_attention")
  assert c.data.id_after_fact and c.data.num_docs == 16000 and c.msa.top_k == 4
  assert [(p["steps"], p.get("top_k")) for p in c.optim.phases] == [
      (500, None), (3480, 1), (3480, 4)]
  assert c.train.steps == sum(p["steps"] for p in c.optim.phases) == 7460
  parts.data.update(id_after_fact=True, num_docs=16000)
  parts.optim.phases[1]["steps"] = 3480
  parts.train.steps = 7460
  assert c.to_dict() == parts.to_dict()


@pytest.mark.slow
def test_phase_top_k_routes_that_many_documents_in_its_steps(tmp_path, smoke_run):
  """demo.py:top4's curriculum: its LM phase routes 1 document first, then 4. Up to the switch
  the run equals one whose phases all route 1 (same losses; the warm-up's LM loss has weight
  0, so its top_k changes no parameter); after it the LM reads 4 documents (other LM losses).
  Both keep msa.top_k = 4, which also sets the prompt positions (`position_offset`)."""
  phases = demo.get_config(VARIANT).optim.phases
  assert [(p["steps"], p.get("top_k")) for p in phases] == [(3, None), (2, 1), (2, 4)]
  config = smoke_config()
  config.evals = {}
  config.optim.phases = [dict(p, top_k=1) for p in config.optim.phases]
  train_and_evaluate(config, tmp_path / "one")
  curriculum = {r["step"]: r for r in read_metrics(smoke_run[0], "train")}
  one = {r["step"]: r for r in read_metrics(tmp_path / "one", "train")}
  assert sorted(curriculum) == sorted(one) == list(range(1, 8))
  for step in range(1, 6):  # the warm-up (LM weight 0), then the phase routing 1 document
    keys = ("aux_loss", "recall@1") + (("lm_loss",) if step > 3 else ())
    for key in keys:
      np.testing.assert_allclose(curriculum[step][key], one[step][key], rtol=1e-5, err_msg=key)
  for step in (1, 6, 7):  # routing 4 documents: the LM reads other memory
    assert not np.isclose(curriculum[step]["lm_loss"], one[step]["lm_loss"], rtol=1e-4)
