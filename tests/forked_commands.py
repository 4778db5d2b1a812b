"""Several `python -m MODULE ARGS...` commands at the cost of one interpreter start.

One interpreter imports what the commands import (jax, torch, tfds, the training loop, the
evaluation, NIAH and bank code: most of a command's start-up on CPU), then runs each command in
a child forked from it as `python -m` runs it (`runpy`, as __main__, with its own argv, its absl
flags defined fresh in the child), with its stdout and stderr in files and its exit status from
the child's exit. The parent never initialises a JAX backend, so the children start as clean as
a fresh interpreter, less the import time. For commands tests check the start of (bad flags,
refusals before loading, --help) or a short run of.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.paths import REPO

_DRIVER = r"""
import json, os, runpy, sys, traceback
import msa_jax.train.loop, msa_jax.evaluation.run, msa_jax.evaluation.niah_eval
import msa_jax.data.niah, msa_jax.checkpoint, msa_jax.inference, msa_jax.model, msa_jax.memory
statuses = []
for args, out, err in json.loads(sys.argv[1]):
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
      os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
      sys.argv = list(args)
      runpy.run_module(args[0], run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os._exit(code)
  statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(statuses))
"""


def run_commands(commands: list[list[str]], timeout: float = 300,
                 **env: str) -> list[tuple[int, str, str]]:
  """(exit status, stdout, stderr) of each `python -m` command (`[module, *args]`), run in
  order in the repo root with PYTHONPATH starting with the repo and `env` added."""
  full_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                 ""), **env)
  with tempfile.TemporaryDirectory() as tmp:
    cases = [[cmd, f"{tmp}/{i}.out", f"{tmp}/{i}.err"] for i, cmd in enumerate(commands)]
    result = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases)], cwd=REPO,
                            env=full_env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-4000:]
    statuses = json.loads(result.stdout)
    return [(status, Path(out).read_text(), Path(err).read_text())
            for status, (_, out, err) in zip(statuses, cases)]
