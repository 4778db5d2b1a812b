"""Multi-process start-up: launch/local.sh + distributed.initialize, 2 CPU processes, each
loading half of every global batch. Training on 2 processes (against the same run on one):
tests/test_train_loop.py::test_two_processes_train_like_one, beside the one-process run it
compares to."""

import os
import subprocess
import sys

import jax
import pytest

from configs import demo
from msa_jax.train import data as data_lib
from msa_jax.runtime import distributed
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
