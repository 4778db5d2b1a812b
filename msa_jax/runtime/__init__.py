"""Process runtime shared by every layer: JAX's persistent compilation cache (`cache`), malloc
set to reuse large host buffers (`host_memory`), both set up by every command's `main` with
`start_command` (`command`), device meshes and logical-axis shardings (`sharding`),
multi-process initialisation (`distributed`)."""

from msa_jax.runtime.cache import (CACHE_ENV, FLAG_HELP, OFF, cache_dir, compilation_cache_off,
                                   default_cache_dir, enable_compilation_cache)
from msa_jax.runtime.command import start_command
from msa_jax.runtime.host_memory import reuse_host_memory

__all__ = ["CACHE_ENV", "FLAG_HELP", "OFF", "cache_dir", "compilation_cache_off",
           "default_cache_dir", "enable_compilation_cache", "reuse_host_memory", "start_command"]
