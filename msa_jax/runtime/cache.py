"""Process setup shared by every command: JAX's persistent compilation cache.

Every entry point calls `enable_compilation_cache()` at its start (through
`command.start_command()`, right after `host_memory.reuse_host_memory`, which must come
before JAX's CPU client starts), so a second run of the same command loads its XLA
executables from disk instead of compiling them again. The cache lives
in `$XDG_CACHE_HOME/msa_jax/jax` (default `~/.cache/msa_jax/jax`); the environment variable
`MSA_JAX_COMPILATION_CACHE` or the flag `--compilation_cache` (absl commands and the bank CLI)
names another directory, and the value `off` disables it. The flag wins over the variable.
`compilation_cache_off()` turns it off for a block (measurements of real compiles).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from absl import flags
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from msa_jax import validation

CACHE_ENV = "MSA_JAX_COMPILATION_CACHE"
OFF = "off"
FLAG_HELP = (f"JAX compilation cache directory, or '{OFF}' (default: ${CACHE_ENV}, else "
             "$XDG_CACHE_HOME/msa_jax/jax or ~/.cache/msa_jax/jax).")

flags.DEFINE_string("compilation_cache", None, FLAG_HELP)


def user_cache_dir(name: str) -> Path:
  """`$XDG_CACHE_HOME/msa_jax/<name>`, or `~/.cache/msa_jax/<name>` without XDG_CACHE_HOME."""
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "msa_jax" / name


def default_cache_dir() -> Path:
  """The compilation cache's default: `user_cache_dir("jax")`."""
  return user_cache_dir("jax")


def _flag_value() -> str | None:
  """The absl `--compilation_cache` value when the command line has been parsed, else None."""
  if not flags.FLAGS.is_parsed():
    return None
  return flags.FLAGS.compilation_cache


def cache_dir(setting: str | None = None) -> Path | None:
  """The cache directory `setting` (a flag value) selects: a path, None for `off`; unset
  (None or "") falls back to $MSA_JAX_COMPILATION_CACHE, then to `default_cache_dir()`."""
  value = setting or os.environ.get(CACHE_ENV) or ""
  if value.strip().lower() == OFF:
    return None
  return Path(value).expanduser() if value else default_cache_dir()


def enable_compilation_cache(setting: str | None = None) -> Path | None:
  """Points JAX's persistent compilation cache at `cache_dir(setting)` (or turns it off).

  Call it before the first compilation. Every executable is persisted, however small or
  quick to compile (JAX's defaults skip those under 1 s, which is most of ours on CPU).

  Args:
    setting: a directory, `off`, or None to use the parsed `--compilation_cache` flag (if
      any), then the environment variable, then the default directory.

  Returns:
    The cache directory, or None when the cache is off.

  Raises:
    validation.UserError: the directory cannot be created (commands report it as one
      `error: ...` line with exit status 2).
  """
  path = cache_dir(setting if setting is not None else _flag_value())
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise validation.UserError(f"compilation cache directory {str(path)!r} cannot be created: "
                               f"{e.strerror}") from None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path


@contextlib.contextmanager
def compilation_cache_off():
  """Within the block, every compile is real: the persistent cache is neither read nor written.

  Setting `jax_enable_compilation_cache` alone is not enough once the process has compiled
  something: JAX decides whether to use the cache once per process, so the block resets that
  decision on entry and on exit (the cache, if it was on, is used again after the block).
  """
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  jax_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    jax_cache.reset_cache()
