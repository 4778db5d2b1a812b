"""The benchmark suite (`python -m msa_jax.benchmarks`) and the GPU check's CPU smoke run.

Timings are never asserted: these tests check that every stage and part runs end to end, that
the rows carry what the table is computed from, and that the numpy baseline really runs
without the host's OpenBLAS overrides.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.paths import REPO as REPO_ROOT


def _env():
  return dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def test_blas_worker_drops_the_host_overrides_and_times_the_loaded_gemm(tmp_path, monkeypatch):
  from msa_jax.benchmarks.blas import HOST_OVERRIDES, Worker
  monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
  np.save(tmp_path / "a.npy", np.ones((4, 3), np.float32))
  np.save(tmp_path / "b.npy", np.ones((5, 3), np.float32))
  with Worker() as blas:
    info = blas.call("info")
    assert info["overrides"] == {k: None for k in HOST_OVERRIDES}
    assert blas.call("load", a=str(tmp_path / "a.npy"), b=str(tmp_path / "b.npy"))["shape"] == [
        4, 3, 5]
    assert blas.call("time")["s"] > 0
    assert blas.call("peak", n=64, iters=2)["gflops"] > 0
    with pytest.raises(RuntimeError, match="unknown op 'nope'"):
      blas.call("nope")


def test_derive_ratio_gflops_and_peak_share():
  from msa_jax.benchmarks.__main__ import derive
  row = dict(stage="s", case="c", ours_s=0.5, baseline="b", baseline_s=2.0, flops=1e11)
  out = derive(row, peak_gflops=400.0)
  assert out["ratio"] == pytest.approx(0.25) and out["gflops"] == pytest.approx(200.0)
  assert out["pct_peak"] == pytest.approx(50.0)
  none = derive(dict(row, flops=None, baseline_s=None), peak_gflops=400.0)
  assert none["ratio"] is None and none["gflops"] is None and none["pct_peak"] is None


def test_routing_one_core_env_and_table():
  from msa_jax.benchmarks import routing
  env = routing.one_core_env({"XLA_FLAGS": "--xla_foo=1", "PATH": "/bin"})
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_cpu_multi_thread_eigen=false"
  assert env["OPENBLAS_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
  rows = [dict(case="1M tokens B=1", ours_s=0.002, baseline="XLA GEMM", baseline_s=0.001)]
  assert routing.format_rows(rows, "CPU s").splitlines()[-1] == (
      "| 1M tokens B=1 | 0.002 | XLA GEMM | 0.001 | 2.00 |")


def test_quick_routing_stage_rows_and_table():
  from msa_jax.benchmarks import routing
  from msa_jax.benchmarks.__main__ import run_suite
  out = io.StringIO()
  doc = run_suite(["routing"], quick=True, out=out)
  rows = doc["rows"]
  assert [r["case"] for r in rows] == ["0.065536M tokens B=1"] * 2 + ["0.065536M tokens B=8"] * 2
  chunks = 65_536 // routing.P
  for r, b, base in zip(rows, (1, 1, 8, 8), ("numpy sgemm (", "XLA GEMM") * 2):
    assert r["stage"] == "routing" and r["baseline"].startswith(base)
    assert r["ours_s"] > 0 and r["baseline_s"] > 0
    assert r["flops"] == 2.0 * b * routing.T * routing.J * routing.D * chunks
    assert r["ratio"] == pytest.approx(r["ours_s"] / r["baseline_s"])
  assert doc["peak_gflops"] > 0
  text = out.getvalue()
  assert "sgemm peak" in text and "| ratio |" in text and "0.065536M tokens B=8" in text
  json.dumps(doc)  # the --json document is plain JSON


def test_bad_stage_is_a_one_line_error():
  proc = subprocess.run([sys.executable, "-m", "msa_jax.benchmarks",
                         "--config=configs/benchmarks.py", "--config.stages=routing,nope"],
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr == ("error: --config.stages=routing,nope: unknown stage 'nope'; expected "
                         "some of routing,encoding,generation,compile\n")


@pytest.mark.slow
def test_quick_encoding_stage_against_hf():
  pytest.importorskip("transformers")
  from msa_jax.benchmarks import encoding
  rows = encoding.run(quick=True)
  if not rows:
    pytest.skip("SmolLM2 checkpoint not installed")
  (row,) = rows
  assert row["stage"] == "encoding" and row["ours_s"] > 0 and row["baseline_s"] > 0
  assert row["flops"] > 0 and "2 layers, 16 docs x 128 tokens" in row["case"]


def test_gpu_check_rejects_an_unknown_part(tmp_path):
  proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--parts=engine,gpu",
                         f"--out={tmp_path}"], cwd=REPO_ROOT, env=_env(), capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 2
  assert "error: --parts=engine,gpu: unknown part 'gpu'" in proc.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_quick_compile_stage_and_both_loads_agree(monkeypatch):
  """The compile stage's rows; and its baseline (initialise everything, overwrite the
  backbone) and our load (initialise the routers only) give the same parameters: the two
  loads the stage itself times are recorded (the real `load_smollm2`, called through) and
  compared, rather than loaded and compiled a second time."""
  import flax.traverse_util
  from msa_jax.benchmarks import compile as compile_stage
  from msa_jax.checkpoint import smollm2_path
  loads = {}
  real_load = compile_stage.load_smollm2

  def recorded_load(num_layers, full_init):
    loads[full_init] = out = real_load(num_layers, full_init)
    return out

  monkeypatch.setattr(compile_stage, "load_smollm2", recorded_load)
  rows = compile_stage.run(quick=True)
  assert [r["case"] for r in rows[:2]] == ["tiny (2 layers) train step: lower",
                                           "tiny (2 layers) train step: compile"]
  assert all(r["stage"] == "compile" and r["ours_s"] > 0 for r in rows)
  try:
    smollm2_path()
  except FileNotFoundError:
    pytest.skip("SmolLM2 checkpoint not installed")
  assert [r["case"] for r in rows[2:]] == ["smollm2-msa load", "smollm2-msa first question"]
  assert sorted(loads) == [False, True] and loads[False][0].num_layers == 2
  ours = flax.traverse_util.flatten_dict(loads[False][2])
  former = flax.traverse_util.flatten_dict(loads[True][2])
  assert sorted(ours) == sorted(former)
  for path, value in former.items():
    np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value), err_msg=str(path))


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_part(tmp_path):
  """The whole GPU check at tiny sizes on the CPU, through the shell entry point."""
  proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu_smoke", f"--out={tmp_path}"],
                        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, check=False)
  doc = json.loads((tmp_path / "gpu_check.json").read_text())
  assert proc.returncode == 0, (proc.stdout[-2000:], (tmp_path / "gpu_check.log").read_text()[
      -4000:])
  assert doc["ok"] and doc["cpu_smoke"] and doc["device"]["backend"] == "cpu"
  parts = doc["parts"]
  assert list(parts) == ["routing_kernel", "sparse_attention", "bank_routing", "train_step",
                         "engine", "kernel_tests"]
  assert all(p["status"] == "ok" for p in parts.values())
  assert "collected" in parts["kernel_tests"]["result"]["summary"]
  assert parts["routing_kernel"]["result"]["rows"][0]["gbps"] > 0
  assert {r["mode"] for r in parts["sparse_attention"]["result"]["rows"]} == {"decode", "prefill"}
  assert [r["tokens"] for r in parts["bank_routing"]["result"]["rows"]] == [2048, 8192]
  train = parts["train_step"]["result"]
  assert train["tokens_per_s"] > 0 and np.isfinite(train["loss"])
  engine = parts["engine"]["result"]
  assert engine["bank_chunks"] == 1024 and engine["prefill_tokens_per_s"] > 0
  log = (tmp_path / "gpu_check.log").read_text()
  assert "===== engine" in log
  # The long parts log their stages as they go (a part that runs out of time shows where).
  assert "[train_step]" in log and "first step" in log and "[engine]" in log
