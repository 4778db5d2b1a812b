"""Checkpoints by Hugging Face repo id: a random Qwen3 laid out in a hub cache directory, loaded
offline (HF_HUB_OFFLINE=1) by load_checkpoint, model.checkpoint and the bank CLI's --model."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from msa_jax.checkpoint import hub
from tests.hf_oracle import random_hf_model
from tests.paths import REPO

REPO_ID = "tiny-org/qwen3-random"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _save_model(directory):
  """A random 2-layer Qwen3 with a 256-word word-level tokenizer, saved as a HF directory."""
  model = random_hf_model("qwen3", hidden=32, heads=4, kv_heads=2, head_dim=8, layers=2,
                          tied=False, vocab=256, seed=3)
  model.save_pretrained(directory)
  vocab = {f"w{i}": i for i in range(256)}
  tok = HFTokenizer(models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "w1", "pad_token": "w2", "add_bos_token": False}))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
  """(cache dir in the hub's layout holding REPO_ID at REVISION, the same files as a plain
  directory)."""
  root = tmp_path_factory.mktemp("hub")
  plain = root / "plain"
  _save_model(plain)
  repo = root / "cache" / f"models--{REPO_ID.replace('/', '--')}"
  shutil.copytree(plain, repo / "snapshots" / REVISION)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(REVISION)
  return root / "cache", plain


def test_is_repo_id(tmp_path, monkeypatch):
  assert hub.is_repo_id("Qwen/Qwen3-0.6B") and hub.is_repo_id("a-b/c_d.e")
  for spec in ("smollm2", "/ckpt/Qwen3", "a/b/c", "./x", "dir/model.gguf", "org/"):
    assert not hub.is_repo_id(spec), spec
  (tmp_path / "org" / "name").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert not hub.is_repo_id("org/name")  # an existing local folder wins


_OFFLINE = """
import sys
import numpy as np
from msa_jax.checkpoint import checkpoint_path, load_checkpoint
from msa_jax.loading import pretrained
repo_id, plain = sys.argv[1], sys.argv[2]
cfg, params, tok = load_checkpoint(repo_id)
want_cfg, want, want_tok = load_checkpoint(plain)
assert cfg == want_cfg, (cfg, want_cfg)
flat = lambda t, p="": ({k: v for n, s in t.items() for k, v in flat(s, p + n + "/").items()}
                        if isinstance(t, dict) else {p: t})
a, b = flat(params), flat(want)
assert sorted(a) == sorted(b) and len(a) > 10
for k in a:
  np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
assert tok.encode("w5 w9 w200") == want_tok.encode("w5 w9 w200") == [5, 9, 200]
assert pretrained.checkpoint_config(repo_id, num_layers=1).num_layers == 1
print("loaded", len(a), "tensors from", checkpoint_path(repo_id))
for bad in ("tiny-org/absent", "Qwen/Qwen3-0.6B"):
  try:
    load_checkpoint(bad)
  except FileNotFoundError as e:
    print("error:", e)
"""


def test_repo_id_loads_offline_from_the_cache(hub_cache):
  cache, plain = hub_cache
  env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(cache),
         "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _OFFLINE, REPO_ID, str(plain)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().split("\n")
  assert lines[0].endswith(f"snapshots/{REVISION}"), lines
  errors = lines[1:]
  assert len(errors) == 2, out.stdout
  for repo_id, line in zip(("tiny-org/absent", "Qwen/Qwen3-0.6B"), errors):
    assert line == (f"error: checkpoint={repo_id!r} is not in the Hugging Face cache ({cache}) "
                    "and could not be downloaded (offline (HF_HUB_OFFLINE=1)); download it with "
                    f"`hf download {repo_id}` (older huggingface_hub: `huggingface-cli download "
                    f"{repo_id}`), or pass a local directory")


@pytest.mark.slow
def test_bank_cli_model_by_repo_id(hub_cache, tmp_path):
  cache, _ = hub_cache
  corpus = tmp_path / "docs.jsonl"
  corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"w{10 + i} w{20 + i} w30"}) + "\n"
                            for i in range(3)))
  env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(cache),
         "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "msa_jax.bank", "--config=configs/bank.py:encode",
             f"--config.corpus={corpus}", f"--config.bank={tmp_path / 'bank'}",
             f"--config.model={REPO_ID}", "--config.msa.top_k=1", "--config.msa.chunk_size=2",
             "--config.max_doc_tokens=4", "--config.doc_template={text}"]
  out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
  assert manifest["metadata"]["model"]["repo"] == REPO_ID
  asked = subprocess.run(  # rebuilds the model from the repo id the bank records
      [sys.executable, "-m", "msa_jax.bank", "--config=configs/bank.py:ask",
       f"--config.bank={tmp_path / 'bank'}", "--question=w11 w21",
       "--config.max_new_tokens=2", "--config.json=True"],
      env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert asked.returncode == 0, asked.stderr[-3000:]
  assert json.loads(asked.stdout.strip().split("\n")[-1])
  command = [c.replace(REPO_ID, "tiny-org/absent") for c in command]
  missing = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                           cwd=REPO)
  assert missing.returncode == 2  # a user error: one line, status 2
  assert missing.stderr.strip().split("\n")[-1].startswith(
      "error: --config.model='tiny-org/absent' is not in the Hugging Face cache")
