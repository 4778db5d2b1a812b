"""Multi-process start-up and training: launch/local.sh + distributed.initialize, 2 CPU
processes, each loading half of every global batch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo
from msa_jax.train import data as data_lib
from msa_jax.runtime import distributed
from msa_jax.train.loop import train_and_evaluate
from msa_jax.train.metrics import read_metrics
from tests.paths import REPO

SCRIPT = """
import jax, jax.numpy as jnp
from jax.experimental import multihost_utils
from msa_jax.runtime import distributed
assert distributed.initialize()
ids = multihost_utils.process_allgather(jnp.array([jax.process_index()]))
print("PROCESS", jax.process_index(), jax.process_count(), ids.ravel().tolist())
"""


@pytest.mark.multiprocess
def test_two_processes_see_each_other(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_DIR": str(tmp_path)}
  subprocess.run(["bash", str(REPO / "launch" / "local.sh"), "2", sys.executable, "-c", SCRIPT],
                 check=True, env=env, timeout=120)
  for i in range(2):
    log = (tmp_path / f"process_{i}.log").read_text()
    assert f"PROCESS {i} 2 [0, 1]" in log, log


def test_single_process_is_a_no_op(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False


def test_incomplete_environment_is_refused(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID must be too"):
    distributed.initialize()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    distributed.initialize()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_DIR": str(tmp_path / "logs"),
         "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
  run = subprocess.run(
      ["bash", str(REPO / "launch" / "local.sh"), "2", sys.executable, "-m", "msa_jax.train",
       f"--config={REPO / 'configs' / 'demo.py'}:smoke", f"--workdir={tmp_path / 'two'}"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert run.returncode == 0, run.stderr + "".join(log[-3000:] for log in logs)
  assert "[train] step 6 | " in logs[0] and "[train]" not in logs[1]  # process 0 logs
  single = train_and_evaluate(demo.get_config("smoke"), tmp_path / "one")
  two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
  # lm_targets counts the global batch's answer tokens: each process loaded only its half.
  print("two processes vs one, relative differences:",
        {k: abs(two[k] - single[k]) / abs(single[k]) for k in ("loss", "grad_norm", "eval_loss")})
  for key in ("loss", "lm_loss", "aux_loss", "grad_norm", "lm_targets", "recall@5",
              "eval_loss", "eval_lm_loss", "eval_aux_loss", "eval_lm_targets"):
    np.testing.assert_allclose(two[key], single[key], rtol=1e-5, err_msg=key)
  rows = {(r["split"], r["step"]): r for r in read_metrics(tmp_path / "two")}
  reference = read_metrics(tmp_path / "one")
  assert len(rows) == len(reference) == 5  # train 2, 4, 6 and eval 3, 6
  for r in reference:
    for key in ("loss", "lm_loss", "aux_loss"):
      np.testing.assert_allclose(rows[r["split"], r["step"]][key], r[key], rtol=1e-5)
  assert (tmp_path / "two" / "checkpoints" / "6").is_dir()


def test_batch_size_must_divide_over_processes(monkeypatch):
  config = demo.get_config("smoke")
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match="train.batch_size=8: global batch size 8 is not "
                     "divisible by the 3 processes"):
    data_lib.make_data(config)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  _, iterator, eval_batches = data_lib.make_data(config)
  assert next(iterator).tokens.shape[0] == eval_batches[0].tokens.shape[0] == 4
  config.data.loader = "nope"
  with pytest.raises(ValueError, match="data.loader='nope' is not supported"):
    data_lib.make_data(config)
