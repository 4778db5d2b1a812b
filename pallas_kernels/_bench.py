"""Micro-benchmark helpers shared by the kernels' `benchmark` modules."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax

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


def add_common_args(p: argparse.ArgumentParser) -> None:
  """The options every kernel benchmark shares (reference, timing, interpret mode)."""
  p.add_argument("--no-reference", action="store_true", help="skip the XLA reference")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--interpret", action="store_true", help="Pallas interpret mode")


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None,
          small: Mapping[str, object]) -> argparse.Namespace:
  """Parses argv; with --small, options left at their defaults take the `small` values and
  the kernel runs in interpret mode (a few seconds on CPU)."""
  args = p.parse_args(argv)
  if args.small:
    for key, value in small.items():
      if p.get_default(key) == getattr(args, key):
        setattr(args, key, value)
    args.interpret = True
  return args
