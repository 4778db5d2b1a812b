"""Every notebook in notebooks/ runs top to bottom (its code cells, in a fresh process), with
`MSA_NOTEBOOK_FAST=1`: the smaller settings a notebook documents for a check of its machinery
(the notebooks without such settings run as they are)."""

import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def notebook_source(path) -> str:
  cells = json.loads(path.read_text())["cells"]
  return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, smollm2_gguf, tmp_path):
  # MSA_DEMO_WORKDIR: niah_scaling.ipynb would load a trained demo run left in /tmp/msa_demo.
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             MSA_DEMO_WORKDIR=str(tmp_path / "no_demo_run"), MSA_NOTEBOOK_FAST="1")
  result = subprocess.run([sys.executable, "-c", notebook_source(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
  print(result.stdout)
