"""Configs parse, and the main job runs end to end from the command line."""

import importlib.util
import os
import subprocess
import sys

import pytest

from msa_jax import generate
from tests.paths import REPO

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def load_config_module(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_names_its_command(path):
  module = load_config_module(path)
  config = module.get_config()
  assert config.to_dict()
  assert f"--config=configs/{path.name}" in module.__doc__


def test_generate_config_variants():
  module = load_config_module(REPO / "configs" / "generate.py")
  assert module.get_config("chat").chat
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    module.get_config("nope")


def test_run_rejects_empty_prompts():
  config = load_config_module(REPO / "configs" / "generate.py").get_config()
  with pytest.raises(ValueError, match="prompts must be non-empty strings"):
    generate.run(config, prompts=[""])


def test_generate_cli_answers_a_factual_prompt(smollm2_gguf):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "msa_jax.generate", "--config=configs/generate.py",
       "--config.sampling.max_new_tokens=6", "--prompt=The capital of France is"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert ">>> The capital of France is\n Paris" in result.stdout
  assert "loaded SmolLM2-135M-Instruct (GGUF)" in result.stdout
