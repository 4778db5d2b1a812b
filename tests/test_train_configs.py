"""configs/beir.py and configs/nq320k.py: pretrained SmolLM2 + fresh routers, end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import beir, nq320k
from msa_jax.train.data import make_data
from msa_jax.train.loop import train_and_evaluate
from msa_jax.train.metrics import read_metrics
from tests.paths import REPO


@pytest.mark.parametrize("module", [beir, nq320k])
def test_configs_parse(module):
  for arg in (None, "smoke"):
    c = module.get_config(arg)
    assert c.model.checkpoint == "smollm2" and c.data.kind == module.__name__.split(".")[-1]
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    module.get_config("nope")


def test_nq320k_without_data_fails_at_once(tmp_path):
  c = nq320k.get_config()
  c.data.path = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"(?s)NQ320k data folder .*missing does not "
                     r"exist.*--config.data.path"):
    make_data(c)


def _run(config, workdir):
  config.data.data_dir = str(workdir.parent / "tfds")  # not the user's cache
  out = train_and_evaluate(config, workdir)
  saved = json.loads((workdir / "final_metrics.json").read_text())
  assert saved == pytest.approx(out)
  for key in ("loss", "lm_loss", "aux_loss", "eval_loss", "eval_lm_loss", "eval_aux_loss"):
    assert np.isfinite(saved[key]), key
  return saved


@pytest.mark.slow
def test_nq320k_smoke_on_the_fixture(tmp_path):
  _run(nq320k.get_config("smoke"), tmp_path / "run")
  assert (tmp_path / "tfds" / "msa_nq320k").is_dir()  # read through its tfds builder


def _finished_checkpoints(directory) -> list[int]:
  """Steps of the complete checkpoints (orbax renames a finished save to its step number)."""
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []


@pytest.mark.slow
def test_beir_smoke_sigkill_and_resume_through_tfds_and_grain(tmp_path, beir_smoke_run):
  """`python -m msa_jax.train` (NFCorpus through its tfds builder and grain, `--config.*`
  overrides) killed by SIGKILL after its first checkpoint: the same command again ignores and
  deletes a half-written save, resumes from grain's saved position, logs each step once and
  reproduces the uninterrupted run (the session's `beir_smoke_run`, the same config with its
  own tfds folder and checkpoint steps)."""
  overrides = {"train.checkpoint_every": 1, "data.data_dir": str(tmp_path / "tfds")}
  command = [sys.executable, "-m", "msa_jax.train",
             f"--config={REPO / 'configs' / 'beir.py'}:smoke", f"--workdir={tmp_path / 'run'}",
             ] + [f"--config.{k}={v}" for k, v in overrides.items()]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
  checkpoints = tmp_path / "run" / "checkpoints"
  with (tmp_path / "killed.log").open("w") as log:
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:  # SIGKILL as soon as the first checkpoint is complete
      deadline = time.monotonic() + 600
      while not _finished_checkpoints(checkpoints) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.02)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
  start = _finished_checkpoints(checkpoints)[-1]
  assert start < 3 and (tmp_path / "tfds" / "msa_beir").is_dir()
  data_state = json.loads((checkpoints / str(start) / "data" / "metadata").read_text())
  assert data_state == {"next_index": start}  # grain's iterator state
  # A save killed half-way (the kill may also have hit one): ignored, then deleted.
  partial = checkpoints / f"{start + 1}.orbax-checkpoint-tmp-1763712000000000"
  (partial / "state").mkdir(parents=True, exist_ok=True)
  (partial / "state" / "_METADATA").write_text("{trunc")
  rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resumed from step {start} in" in rerun.stdout, rerun.stdout[-3000:]
  assert f"[train] step {start + 1} | " in rerun.stdout and "aux_loss" in rerun.stdout
  assert f"[train] step {start} | " not in rerun.stdout
  assert _finished_checkpoints(checkpoints)[-1] == 3
  assert not any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())

  straight_dir, straight = beir_smoke_run
  resumed = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
  for key in ("loss", "lm_loss", "aux_loss", "eval_loss", "eval_lm_loss", "eval_aux_loss"):
    assert np.isfinite(straight[key]), key
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, err_msg=key)
  reference = {r["step"]: r["loss"] for r in read_metrics(straight_dir, "train")}
  logged = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run", "train")}
  assert sorted(logged) == sorted(reference) == [1, 2, 3]
  # metrics.jsonl: one row per (split, step); rows logged after the checkpoint and before the
  # kill were dropped on resume and logged again.
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
          .splitlines()]
  assert [(r["split"], r["step"]) for r in rows] == [("train", 1), ("train", 2),
                                                      ("train", 3), ("eval", 3)]
  for step, loss in logged.items():
    np.testing.assert_allclose(loss, reference[step], rtol=1e-5, err_msg=f"step {step}")
