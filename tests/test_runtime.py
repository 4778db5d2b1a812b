"""The persistent compilation cache: on by default, overridable, off with a switch, and hit by a
second run of the same program; malloc keeping freed host buffers for reuse (each case runs in
a fresh subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msa_jax import runtime, validation

# Enables the cache as an entry point does (argument "--...": parsed as absl flags, as the absl
# commands do; else passed as the setting), compiles one program and prints what happened.
_PROGRAM = """
import json, sys
from absl import flags
import jax, jax.numpy as jnp
from jax import monitoring
from msa_jax import runtime, validation
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
args = sys.argv[1:]
if args and args[0].startswith("--"):
  flags.FLAGS(["prog", *args])
  args = []
path = runtime.enable_compilation_cache(*args)
jax.jit(lambda x: jnp.sin(x) @ x.T + 1)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps(dict(path=None if path is None else str(path),
                      hits=events.count("/jax/compilation_cache/cache_hits"),
                      misses=events.count("/jax/compilation_cache/cache_misses"))))
"""


def _run(tmp_path: Path, *args: str, env: dict | None = None) -> dict:
  full_env = {k: v for k, v in os.environ.items() if k != runtime.CACHE_ENV}
  full_env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(Path.cwd()),
                  JAX_PLATFORMS="cpu", **(env or {}))
  out = subprocess.run([sys.executable, "-c", _PROGRAM, *args], env=full_env, check=True,
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
  return json.loads(out.stdout.strip().splitlines()[-1])


def _files(path: Path) -> list[Path]:
  return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_default_cache_is_used_and_hit_by_a_second_run(tmp_path):
  default = tmp_path / "xdg" / "msa_jax" / "jax"
  first = _run(tmp_path)
  assert first["path"] == str(default)
  assert first["hits"] == 0 and first["misses"] >= 1
  assert _files(default)
  second = _run(tmp_path)
  assert second["hits"] >= 1 and second["misses"] == 0


def test_environment_variable_overrides_the_default(tmp_path):
  env_dir = tmp_path / "from_env"
  out = _run(tmp_path, env={runtime.CACHE_ENV: str(env_dir)})
  assert out["path"] == str(env_dir) and _files(env_dir)
  assert not _files(tmp_path / "xdg")


@pytest.mark.parametrize("how", ["absl flag", "argument"])
def test_flag_overrides_the_environment_variable(tmp_path, how):
  env_dir, flag_dir = tmp_path / "from_env", tmp_path / "from_flag"
  arg = f"--compilation_cache={flag_dir}" if how == "absl flag" else str(flag_dir)
  out = _run(tmp_path, arg, env={runtime.CACHE_ENV: str(env_dir)})
  assert out["path"] == str(flag_dir) and _files(flag_dir)
  assert not _files(env_dir) and not _files(tmp_path / "xdg")


@pytest.mark.parametrize("args,env", [(("off",), {}), ((), {runtime.CACHE_ENV: "OFF"}),
                                      (("--compilation_cache=off",), {runtime.CACHE_ENV: "x"})])
def test_off_switch(tmp_path, args, env):
  assert _run(tmp_path, *args, env=env) == dict(path=None, hits=0, misses=0)
  assert not _files(tmp_path)


def test_unwritable_directory_is_a_user_error(tmp_path):
  (tmp_path / "afile").write_text("x")
  bad = tmp_path / "afile" / "cache"
  message = f"compilation cache directory '{bad}' cannot be created: Not a directory"
  with pytest.raises(validation.UserError, match=message):
    runtime.enable_compilation_cache(str(bad))
  # A command reports it in one line, exit status 2, before any work.
  repo = Path(__file__).parents[1]
  out = subprocess.run(
      [sys.executable, "-m", "msa_jax.train", f"--config={repo / 'configs' / 'demo.py'}:smoke",
       f"--workdir={tmp_path / 'run'}", f"--compilation_cache={bad}"],
      capture_output=True, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
  assert out.returncode == 2 and out.stderr.splitlines()[-1] == f"error: {message}", out.stderr
  assert not (tmp_path / "run").exists()


# Compiles with the cache on, inside `compilation_cache_off()`, then after it; prints the
# number of cache entries after each.
_OFF_BLOCK = """
import json, sys
import jax, jax.numpy as jnp
from msa_jax import runtime
path = runtime.enable_compilation_cache(sys.argv[1])
entries = lambda: len([p for p in path.iterdir() if p.name.endswith("-cache")])
jax.jit(jnp.sin)(jnp.ones(3)).block_until_ready()
counts = [entries()]
with runtime.compilation_cache_off():
  jax.jit(jnp.cos)(jnp.ones(3)).block_until_ready()
  counts.append(entries())
jax.jit(jnp.tan)(jnp.ones(3)).block_until_ready()
counts.append(entries())
print(json.dumps(counts))
"""


def test_cache_off_block_compiles_for_real_then_caches_again(tmp_path):
  """A process that has already used the cache: the block neither writes (nor reads) it, and
  the cache works again after the block."""
  env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _OFF_BLOCK, str(tmp_path / "cache")], env=env,
                       check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1])
  first, inside, after = json.loads(out.stdout.strip().splitlines()[-1])
  assert first >= 1 and inside == first and after == first + 1


_LOGGING_APP = """
from absl import logging
from msa_jax import validation
validation.run_app(lambda argv: logging.info("info-line") or logging.warning("warning-line"))
"""


@pytest.mark.parametrize("args, info_shown", [([], False), (["--verbosity=0"], True)])
def test_commands_hide_info_logs_unless_verbosity_is_given(args, info_shown):
  result = subprocess.run([sys.executable, "-c", _LOGGING_APP, *args], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parents[1])
  assert result.returncode == 0, result.stderr
  assert "warning-line" in result.stderr
  assert ("info-line" in result.stderr) == info_shown, result.stderr


# Allocates, touches and frees a 128 MiB buffer in the main thread or in another thread;
# prints whether the settings applied and how much of it the process still holds after the
# free (kept for reuse, or returned to the OS).
_REUSE = """
import json, sys, threading
import numpy as np
from msa_jax import runtime
applied = runtime.reuse_host_memory(shared_arena=sys.argv[1] == "shared")
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * 4096
def alloc():
  a = np.empty(32 << 20, np.float32)
  a.fill(1.0)
  del a
before = rss()
if sys.argv[2] == "worker":
  t = threading.Thread(target=alloc)
  t.start()
  t.join()
else:
  alloc()
print(json.dumps(dict(applied=applied, kept=rss() - before)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("setting,arena,thread,kept", [
    (None, "shared", "main", True), (None, "shared", "worker", True),
    (None, "own", "main", True), (None, "own", "worker", False),
    ("0", "shared", "main", False), ("off", "shared", "worker", False)])
def test_reuse_host_memory_keeps_freed_buffers(setting, arena, thread, kept):
  """The main thread's large buffers are kept with either arena choice; another thread's only
  with the shared arena (its own arena maps one over 64 MiB afresh); none when turned off."""
  env = {k: v for k, v in os.environ.items() if k != "MSA_JAX_REUSE_HOST_MEMORY"}
  if setting is not None:
    env["MSA_JAX_REUSE_HOST_MEMORY"] = setting
  out = json.loads(subprocess.run([sys.executable, "-c", _REUSE, arena, thread], env=env,
                                  check=True, capture_output=True, text=True).stdout)
  assert out["applied"] is (setting is None)
  assert (out["kept"] > 100 << 20) if kept else (out["kept"] < 16 << 20), out
