"""Multi-process start-up: `jax.distributed.initialize` from standard environment variables.

* `JAX_COORDINATOR_ADDRESS` (host:port), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (as set by
  `launch/local.sh`, or by hand): initialise with exactly those.
* Under SLURM or Open MPI with more than one task (`SLURM_NTASKS`, `OMPI_COMM_WORLD_SIZE`):
  JAX's own cluster detection reads the scheduler's variables.
* Otherwise (one process): nothing happens.

On CPU, cross-process collectives use gloo.
"""

from __future__ import annotations

import os

import jax
from absl import logging

_initialized = False


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize() -> bool:
  """Initialises multi-process JAX if the environment asks for it; returns whether it did."""
  global _initialized
  if _initialized:
    return True
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  num = _int_env("JAX_NUM_PROCESSES")
  pid = _int_env("JAX_PROCESS_ID")
  cluster = max(_int_env("SLURM_NTASKS") or 1, _int_env("OMPI_COMM_WORLD_SIZE") or 1)
  if address is None and cluster <= 1:
    return False
  if address is not None and (num is None or pid is None):
    raise ValueError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                     f"must be too (got {num!r}, {pid!r})")
  if address is not None and not 0 <= pid < num:
    raise ValueError(f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num})")
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address is not None:
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  else:
    jax.distributed.initialize()  # SLURM / Open MPI auto-detection
  _initialized = True
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
