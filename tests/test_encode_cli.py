"""`encode` never loses committed data, continues after a kill, and checks before it builds.

The encoder runs as a subprocess that is killed with SIGKILL once its staged bank holds a few
commits; the bank it leaves (the old one, published) and the bank a rerun of the same command
finishes are compared, byte for byte, with banks written by uninterrupted runs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from msa_jax import bank as cli
from msa_jax.memory.bank import MANIFEST, STAGED_MANIFEST, MemoryBank

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model=tiny", "--tokenizer=synthetic", "--seed=3", "--msa.chunk_size=4",
        "--msa.router_layers=all", "--max_doc_tokens=12"]


def _corpus(path: Path, n: int, salt: int = 0) -> Path:
  """n documents in the synthetic vocabulary, distinct texts, deterministic."""
  rng = np.random.default_rng(salt)
  rows = []
  for i in range(n):
    words = [f"w{w}" for w in rng.integers(0, 64, 6)]
    rows.append({"id": f"d{salt}-{i}", "text": f"<fact> k{i % 64} k{(i // 64) % 64} "
                                               + " ".join(words)})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _encode_args(corpus: Path, bank: Path, *extra: str) -> list[str]:
  return ["encode", f"--corpus={corpus}", f"--bank={bank}", *TINY, *extra]


def _run(argv, capsys):
  code = cli.main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _content(path: Path) -> tuple:
  """Everything a bank holds, independent of how it was split into shards."""
  bank = MemoryBank.open(path, verify=True)
  arrays = tuple(np.ascontiguousarray(a).tobytes() for layer in bank.layer_ids
                 for a in bank.layer_arrays(layer))
  return (bank.doc_ids, bank.texts(range(bank.num_docs)), bank.lengths.tolist(),
          bank.fingerprint, arrays)


def _staged_docs(bank: Path) -> int:
  try:
    return json.loads((bank / STAGED_MANIFEST).read_bytes())["num_docs"]
  except (FileNotFoundError, ValueError):
    return 0


def _kill_after_commits(argv: list[str], bank: Path, min_docs: int) -> None:
  """Runs `python -m msa_jax.bank argv` and SIGKILLs it once its staged bank has
  committed `min_docs` documents (fails if it finishes first)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "msa_jax.bank", *argv], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 240
  try:
    while _staged_docs(bank) < min_docs:
      assert proc.poll() is None, f"the encoder ended first: {proc.stderr.read().decode()}"
      assert time.monotonic() < deadline, "the encoder made no commit in time"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("over_old_bank", [False, True], ids=["first", "overwrite"])
def test_killed_encode_keeps_old_bank_and_rerun_continues(tmp_path, capsys, over_old_bank):
  corpus = _corpus(tmp_path / "new.jsonl", 1200, salt=1)
  bank = tmp_path / "bank"
  reference = tmp_path / "reference"  # the same command, never interrupted
  assert cli.main(_encode_args(corpus, reference, "--batch_size=4")) == 0
  old = None
  if over_old_bank:
    old_corpus = _corpus(tmp_path / "old.jsonl", 20, salt=2)
    assert cli.main(_encode_args(old_corpus, bank, "--batch_size=4")) == 0
    old = _content(bank)
  capsys.readouterr()
  argv = _encode_args(corpus, bank, "--batch_size=4", "--commit_every=8",
                      *(["--overwrite"] if over_old_bank else []))
  _kill_after_commits(argv, bank, min_docs=16)
  # Killed: the published bank is the old one, intact; the new one is staged beside it.
  if over_old_bank:
    assert _content(bank) == old
  else:
    assert not (bank / MANIFEST).exists()
  staged = MemoryBank.open(bank, staged=True)
  assert 16 <= staged.num_docs < 1200 and staged.num_docs % 4 == 0
  # The same command continues from the last commit and publishes the complete bank.
  code, _, err = _run(argv, capsys)
  assert code == 0, err
  assert f"continuing the unfinished encoding in {bank}: {staged.num_docs} of 1200" in err
  assert _content(bank) == _content(reference)
  assert not (bank / STAGED_MANIFEST).exists()
  live = {s["name"] for s in json.loads((bank / MANIFEST).read_text())["shards"]}
  assert {p.name for p in bank.glob("shard-*")} == live  # the old bank's shards are gone
  # Run once more: the bank is complete, nothing is encoded (and no model is built).
  code, _, err = _run(argv[:-1] if over_old_bank else argv, capsys)
  assert code == 0 and "nothing to do" in err


@pytest.fixture(scope="module")
def small_bank(tmp_path_factory):
  root = tmp_path_factory.mktemp("encode")
  corpus = _corpus(root / "docs.jsonl", 10)
  bank = root / "bank"
  assert cli.main(_encode_args(corpus, bank, "--batch_size=2", "--commit_every=4")) == 0
  return root, corpus, bank


def test_small_commits_and_progress(small_bank, capsys):
  root, corpus, bank_dir = small_bank
  bank = MemoryBank.open(bank_dir)
  assert bank.num_docs == 10 and bank.num_shards == 3  # commits of 4, 4 and 2 documents
  other = root / "other"
  code, _, err = _run(_encode_args(corpus, other, "--batch_size=2", "--commit_every=100",
                                   "--commit_seconds=1e-9"), capsys)
  assert code == 0 and MemoryBank.open(other).num_shards == 5  # a commit per batch (time)
  lines = [l for l in err.splitlines() if l.startswith("[encode] ") and "ETA" in l]
  assert lines[0].startswith("[encode] 2/10 documents (20.0%)")  # after the first batch
  assert "committed 2" in lines[0] and "tokens/s" in lines[0]
  assert "[model] initialising a random tiny model" in err
  assert _content(other) == _content(bank_dir)


def _refused_before_build(monkeypatch, capsys, argv, match: str) -> None:
  def no_model(spec):
    raise AssertionError("the model was built")
  monkeypatch.setattr(cli, "build_model", no_model)
  code, out, err = _run(argv, capsys)
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_checks_before_the_model_is_built(small_bank, tmp_path, monkeypatch, capsys):
  _, corpus, bank = small_bank
  before = _content(bank)
  new = tmp_path / "new"
  for flag, value in (("max_doc_tokens", "0"), ("batch_size", "0"), ("commit_every", "0")):
    _refused_before_build(monkeypatch, capsys, _encode_args(corpus, new, f"--{flag}={value}"),
                          f"--{flag}={value} must be >= 1")
  _refused_before_build(monkeypatch, capsys,
                        _encode_args(corpus, new, "--commit_seconds=0"), "must be > 0")
  empty = tmp_path / "empty.jsonl"
  empty.write_text('{"id": "a", "text": "k1"}\n{"id": "b", "text": "  "}\n')
  _refused_before_build(monkeypatch, capsys, _encode_args(empty, new),
                        "document 'b' (number 1) has an empty text")
  latin = tmp_path / "latin.jsonl"
  latin.write_bytes(b'{"id": "a", "text": "k1"}\n{"id": "b", "text": "caf\xe9"}\n')
  _refused_before_build(monkeypatch, capsys, _encode_args(latin, new),
                        f"{latin}:2: not UTF-8 text (byte 0xe9 at column 25)")
  # A bank of another corpus is neither overwritten nor continued without --overwrite.
  other = _corpus(tmp_path / "other.jsonl", 10, salt=5)
  _refused_before_build(monkeypatch, capsys, _encode_args(other, bank),
                        "a memory bank already exists")
  _refused_before_build(monkeypatch, capsys, _encode_args(corpus, bank, "--seed=4"),
                        "model.seed: bank has 3, expected 4")
  a_file = tmp_path / "file"
  a_file.write_text("x")
  _refused_before_build(monkeypatch, capsys, _encode_args(corpus, a_file),
                        "exists and is not a directory")
  assert not new.exists() and _content(bank) == before
  # The same corpus and model: complete, nothing to do, no model built.
  monkeypatch.setattr(cli, "build_model", lambda spec: pytest.fail("the model was built"))
  code, _, err = _run(_encode_args(corpus, bank), capsys)
  assert code == 0 and "nothing to do" in err


def test_unfinished_encoding_of_another_corpus(tmp_path, monkeypatch, capsys):
  corpus = _corpus(tmp_path / "a.jsonl", 6)
  bank = tmp_path / "bank"
  assert cli.main(_encode_args(corpus, bank)) == 0
  capsys.readouterr()
  MemoryBank.open(bank).remove(["d0-5"])  # a stand-in for a second encoding killed midway
  os.replace(bank / MANIFEST, bank / STAGED_MANIFEST)
  other = _corpus(tmp_path / "b.jsonl", 6, salt=7)
  _refused_before_build(monkeypatch, capsys, _encode_args(other, bank),
                        "holds an unfinished encoding of another corpus or model "
                        "(documents.ids_sha256")
  monkeypatch.undo()
  code, _, err = _run(_encode_args(other, bank, "--overwrite"), capsys)
  assert code == 0 and "discarding the unfinished encoding" in err
  assert MemoryBank.open(bank).doc_ids == [f"d7-{i}" for i in range(6)]
