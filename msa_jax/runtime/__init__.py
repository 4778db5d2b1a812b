"""Process runtime shared by every layer: JAX's persistent compilation cache (`cache`), device
meshes and logical-axis shardings (`sharding`), multi-process initialisation (`distributed`)."""

from msa_jax.runtime.cache import (CACHE_ENV, FLAG_HELP, OFF, cache_dir, compilation_cache_off,
                                   default_cache_dir, enable_compilation_cache)

__all__ = ["CACHE_ENV", "FLAG_HELP", "OFF", "cache_dir", "compilation_cache_off",
           "default_cache_dir", "enable_compilation_cache"]
