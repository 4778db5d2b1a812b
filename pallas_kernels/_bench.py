"""Micro-benchmark helpers shared by the kernels' `benchmark` modules (absl apps reading
configs/kernel_benchmarks.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
from absl import flags

from msa_jax import validation

CONFIG = "configs/kernel_benchmarks.py"

# Assumed peaks (dense, per GPU), from the vendor data sheets: (HBM bytes/s, bf16 FLOP/s).
# H100 SXM: 3.35 TB/s, 989 TFLOP/s; H100 PCIe: 2.0 TB/s, 756 TFLOP/s; H200: 4.8 TB/s, 989.
PEAKS = {
    "H200": (4.8e12, 989e12),
    "H100 PCIE": (2.0e12, 756e12),
    "H100": (3.35e12, 989e12),
}


def device_peaks(device: jax.Device | None = None) -> tuple[str, float | None, float | None]:
  """(device kind, peak HBM bytes/s, peak bf16 FLOP/s); the peaks are None when unknown."""
  device = jax.devices()[0] if device is None else device
  kind = device.device_kind
  upper = kind.upper()
  for key, (bw, flops) in PEAKS.items():
    if key in upper:
      return kind, bw, flops
  return kind, None, None


def median_time(fn: Callable, *args, warmup: int = 2, iters: int = 10) -> float:
  """Median wall time in seconds of `fn(*args)` (jit it first), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def fraction(value: float, peak: float | None) -> str:
  return "n/a" if peak is None else f"{100 * value / peak:.1f}%"


def kernel_args(config: ml_collections.ConfigDict, name: str, *, positive: Sequence[str],
                choices: Mapping[str, Sequence[str]]) -> ml_collections.ConfigDict:
  """The shared fields of a kernel-benchmark config and section `name`'s, as one flat,
  writable ConfigDict (what a benchmark reads), after checking them.

  Raises:
    UserError: a field of `positive` < 1, iters < 1 or warmup < 0, a value not in its
      `choices` (each named as its --config flag).
  """
  shared = {k: v for k, v in config.items() if not isinstance(v, ml_collections.ConfigDict)}
  args = ml_collections.ConfigDict({**shared, **config[name].to_dict()})
  validation.check_at_least("--config.iters", args.iters, 1)
  validation.check_at_least("--config.warmup", args.warmup, 0)
  for field in positive:
    validation.check_at_least(f"--config.{name}.{field}", args[field], 1)
  for field, allowed in choices.items():
    validation.check_choice(f"--config.{name}.{field}", args[field], allowed)
  if args.heads % args.kv_heads:
    raise validation.UserError(f"--config.{name}.heads={args.heads} must be a multiple of "
                               f"--config.{name}.kv_heads={args.kv_heads}")
  return args


def run_app(run: Callable[[ml_collections.ConfigDict], object]) -> None:
  """Starts a kernel benchmark as an absl app: `--config` (defined by the benchmark's
  `__main__` block, so that --help lists it and importing the module defines no flag) is
  required; `run(config)` does the work."""

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise validation.UserError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.config is None:
      raise validation.UserError(f"--config is required (e.g. --config={CONFIG})")
    run(flags.FLAGS.config)

  validation.run_app(main)
