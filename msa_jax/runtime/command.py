"""What every command's `main` runs first (`start_command`), in the order it needs."""

from __future__ import annotations

from msa_jax.runtime.cache import enable_compilation_cache
from msa_jax.runtime.host_memory import reuse_host_memory


def start_command(shared_arena: bool = False) -> None:
  """glibc's malloc set to reuse large host buffers (`reuse_host_memory(shared_arena)`: before
  JAX starts its CPU client, so first; one arena for all threads only where asked, by
  training: the inference, evaluation and benchmark commands, whose steady state is decode
  steps and routing, keep an arena per thread, see `host_memory`), then JAX's persistent
  compilation cache (`enable_compilation_cache`: the `--compilation_cache` flag or its
  environment variable)."""
  reuse_host_memory(shared_arena=shared_arena)
  enable_compilation_cache()
