"""Host memory: glibc's malloc told to keep large freed buffers for reuse (every command).

XLA:CPU allocates a program's large buffers on each call (a generate call's stacked layer
weights: 425 MB for SmolLM2-135M) from its worker threads' malloc arenas, where glibc maps
every buffer of more than 32 MiB afresh and unmaps it when freed, so each call faults in and
zeroes those pages again (stacking 30 layers' 106 MB MLP weights: 56 ms; 10 ms with the
pages reused). `reuse_host_memory(shared_arena=True)` gives all threads the main arena,
serves buffers up to 1 GiB from it and never trims it: freed buffers are reused, and the
process keeps its high-water mark of memory instead of returning it to the OS. Measured on the AMD host of
2026-12-05 (same script, alternating processes): SmolLM2 generation, 8 prompts, prefill + one
decode step 0.47-0.50 -> 0.26-0.28 s.

It only acts before JAX starts its CPU client (threads that already have an arena keep it),
so the commands call it first in `main` (`command.start_command()`). glibc only (elsewhere a
no-op); the environment variable `MSA_JAX_REUSE_HOST_MEMORY=0` turns it off.

The one shared arena is what keeps XLA's large buffers (its worker threads allocate them; a
thread's own arena maps anything over 64 MiB afresh however the thresholds are set): a
jitted program with a 128 MiB output and a 128 MiB temporary, 10 calls, 0 minor page faults
and 11.8 ms per call with it against ~33,000 faults and 34-36 ms without it (2-core AMD EPYC
Zen 2, 2026-12-06). It also slows workloads of many small steps on both threads (the two
threads then allocate from one arena): same host and day, separate processes, the same
results: greedy SmolLM2 generation of 64 tokens at batch 8 4.80-5.23 s with it against
3.97-4.14 s without (5 processes each; prefill and the first token 0.30 against 0.34 s),
`memory.routing.route` 0.57-0.58 against 0.51-0.52 ms at 1M tokens for one question and
48-51 against 40-41 ms at 10M tokens for eight (3 each); how much depends on what the
process ran before (the benchmark suite's generation stage, after loading SmolLM2 and HF's
model: batch 8 4.05, 4.16 against 3.89, 3.93 s), while the demo's training ran at
35.5-42.3k tokens/s with it against 33.3-35.7k without (4 runs each, 110 s each) and stage-1
encoding did not move. So `shared_arena` is a choice per command: training keeps it
(`start_command(shared_arena=True)` in `msa_jax.train`), the inference, evaluation and
benchmark commands, whose steady state is decode steps and routing, set only the thresholds
(`start_command()`).
"""

from __future__ import annotations

import ctypes
import os

ENV = "MSA_JAX_REUSE_HOST_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_THRESHOLDS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1))
_SHARED_ARENA = ((_M_ARENA_MAX, 1),)


def reuse_host_memory(*, shared_arena: bool) -> bool:
  """Sets glibc's malloc to reuse large freed buffers (see the module docstring).

  Args:
    shared_arena: every thread allocates from the main arena (`M_ARENA_MAX=1`), so that the
      worker threads' large buffers are reused too; False sets only the thresholds (the
      main thread's buffers up to 1 GiB reused, each thread keeping its own arena). No
      default: the choice is the caller's (`start_command` defaults to False, training
      passes True).

  Returns:
    True when every setting was applied; False when turned off by `MSA_JAX_REUSE_HOST_MEMORY`
    (0, off, false, no) or when the C library is not glibc.
  """
  if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  settings = (_SHARED_ARENA if shared_arena else ()) + _THRESHOLDS
  return all(mallopt(param, value) == 1 for param, value in settings)
