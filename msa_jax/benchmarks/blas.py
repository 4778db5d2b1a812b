"""numpy's sgemm as a benchmark baseline, in a worker process with the host's own BLAS kernel.

Some hosts set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (older OpenBLAS builds crash or compute
wrong results on their CPUs); they make a current numpy pick an older, slower kernel (on this
project's AVX-512 machine: Haswell, about half the speed). A baseline must not be slowed down,
so `Worker` starts `python -m msa_jax.benchmarks.blas` with both variables removed (in that
process alone; the tests and the calling process keep them) and reports the OpenBLAS kernel it
then runs. The worker imports numpy only, and answers one JSON request per line:

  {"op": "load", "a": PATH, "b": PATH}  a [M, K] and b [N, K] from .npy files (mmap'd, then
                                         copied into memory); the problem becomes a @ b.T
  {"op": "time", "repeat": R, "warm_s": W}
                                         a @ b.T and b @ a.T (the same work, the other
                                         orientation), each the median of R (default 1)
                                         back-to-back calls after running it untimed for W
                                         seconds (default 0: once); answers {"s": the faster's
                                         seconds, "cpu": the faster's process CPU seconds}
  {"op": "peak", "n": N, "iters": I}     best GFLOP/s of I N x N x N sgemms
  {"op": "info"}                         {"numpy", "blas", "coretype"}
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HOST_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def openblas_core() -> str:
  """The OpenBLAS kernel ("SkylakeX", "Haswell", ...) this process runs, or "unknown"."""
  with open("/proc/self/maps") as f:
    libs = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
  for lib in sorted(libs):
    handle = ctypes.CDLL(lib)
    for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                 "openblas_get_corename64_", "openblas_get_corename"):
      fn = getattr(handle, name, None)
      if fn is not None:
        fn.restype = ctypes.c_char_p
        return fn().decode()
  return "unknown"


def sgemm_gflops(n: int, iters: int) -> float:
  """Peak GFLOP/s of float32 [n, n] @ [n, n]: the best of `iters` (after one warm-up), since
  on a shared machine a peak is what an undisturbed run reaches."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  a @ b
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times) / 1e9


def _timed(x: np.ndarray, y: np.ndarray, repeat: int, warm_s: float) -> tuple[float, float]:
  """(wall, process CPU) seconds of x @ y.T: medians of `repeat` back-to-back calls after
  running it untimed for `warm_s` seconds (at least once)."""
  end = time.perf_counter() + warm_s
  x @ y.T
  while time.perf_counter() < end:
    x @ y.T
  wall, cpu = [], []
  for _ in range(repeat):
    t0, c0 = time.perf_counter(), time.process_time()
    x @ y.T
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return statistics.median(wall), statistics.median(cpu)


def _serve() -> None:
  a = b = None
  for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "load":
      a = np.array(np.load(req["a"], mmap_mode="r"))
      b = np.array(np.load(req["b"], mmap_mode="r"))
      out = {"shape": [a.shape[0], a.shape[1], b.shape[0]]}
    elif op == "time":
      runs = [_timed(x, y, req.get("repeat", 1), req.get("warm_s", 0.0))
              for x, y in ((a, b), (b, a))]
      out = {"s": min(r[0] for r in runs), "cpu": min(r[1] for r in runs)}
    elif op == "peak":
      out = {"gflops": sgemm_gflops(req["n"], req["iters"])}
    elif op == "info":
      out = {"numpy": np.__version__, "coretype": openblas_core(),
             "overrides": {k: os.environ.get(k) for k in HOST_OVERRIDES}}
    elif op == "quit":
      return
    else:
      out = {"error": f"unknown op {op!r}"}
    print(json.dumps(out), flush=True)


class Worker:
  """A `python -m msa_jax.benchmarks.blas` process without the host's OpenBLAS overrides."""

  def __init__(self):
    env = {k: v for k, v in os.environ.items() if k not in HOST_OVERRIDES}
    self._proc = subprocess.Popen([sys.executable, "-m", "msa_jax.benchmarks.blas"], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def call(self, op: str, **kw) -> dict:
    self._proc.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the BLAS worker exited (status {self._proc.wait()})")
    out = json.loads(line)
    if "error" in out:
      raise RuntimeError(out["error"])
    return out

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
      self._proc.stdin.close()
      self._proc.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


if __name__ == "__main__":
  _serve()
