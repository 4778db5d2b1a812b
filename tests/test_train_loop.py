"""`python -m msa_jax.train` end to end on the demo's smoke variant: metrics, checkpoints,
and a rerun that resumes and reproduces the uninterrupted run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from msa_jax.train.loop import train_and_evaluate
from msa_jax.train.metrics import read_metrics
from tests.paths import REPO


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
  config = demo.get_config("smoke")
  straight = train_and_evaluate(config, tmp_path / "straight")
  # The same run stopped after step 3 (its checkpoint), then the same command again.
  stopped = demo.get_config("smoke")
  stopped.train.steps = 3
  train_and_evaluate(stopped, tmp_path / "resumed")
  resumed = train_and_evaluate(config, tmp_path / "resumed")
  a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight", "train")}
  b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed", "train")}
  assert sorted(a) == [2, 4, 6] and sorted(b) == [2, 3, 4, 6]
  for step in (2, 4, 6):
    np.testing.assert_allclose(b[step], a[step], rtol=1e-5)
  np.testing.assert_allclose(resumed["eval_loss"], straight["eval_loss"], rtol=1e-5)
  assert np.isfinite(straight["loss"]) and straight["loss"] < read_metrics(
      tmp_path / "straight", "train")[0]["loss"]
  saved = json.loads((tmp_path / "straight" / "config.json").read_text())
  assert saved["train"]["steps"] == 6
  assert (tmp_path / "straight" / "checkpoints" / "6").is_dir()


def test_command_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run(
      [sys.executable, "-m", "msa_jax.train", f"--config={REPO / 'configs' / 'demo.py'}:smoke",
       f"--workdir={tmp_path}", "--config.train.steps=2"],
      capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "[train] step 2 | " in out.stdout and "aux_loss" in out.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "msa_jax.train", f"--config={REPO / 'configs' / 'demo.py'}:nope",
       f"--workdir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert bad.returncode != 0 and "unknown variant 'nope'" in bad.stderr
