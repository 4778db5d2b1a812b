"""Run a test file as a script on 8 fake CPU devices (the pytest process has one device).

A test module defines its multi-device work under `if __name__ == "__main__":`, printing one
JSON line; its module-scoped fixture calls `run_on_fake_devices(__file__)` to get it back.
"""

import json
import os
import subprocess
import sys

from tests.paths import REPO


def run_on_fake_devices(script: str, devices: int = 8, timeout: int = 300) -> dict:
  """Runs `script` with `devices` fake CPU devices; returns the last stdout line as JSON."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")  # keeps conftest's flags
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.abspath(script)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
