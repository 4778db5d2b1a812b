"""`python -m msa_jax.scale` at a tiny size: a smoke-trained demo checkpoint, streamed banks,
the combined NIAH haystack, the table/JSON/plot, reuse of finished banks, resumption after
kill -9 (same bank bytes as an uninterrupted run), and refusals before any model is loaded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from configs import demo
from configs import scale as scale_config
from msa_jax import scale
from msa_jax.data import synthetic
from msa_jax.memory import encode as encode_lib
from msa_jax.memory.bank import STAGED_MANIFEST, MemoryBank
from msa_jax.loading import restore
from msa_jax.train.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """configs/demo.py:smoke trained (6 steps): a real workdir of `msa_jax.train`."""
  workdir = tmp_path_factory.mktemp("demo")
  c = demo.get_config("smoke")
  c.evals.extrapolation.multipliers = (1,)
  train_and_evaluate(c, workdir)
  return workdir


def _config(checkpoint, workdir, **overrides):
  c = scale_config.get_config("smoke")
  c.checkpoint_workdir, c.workdir = str(checkpoint), str(workdir)
  c.update(overrides)
  return c


def _bank_content(path: Path) -> tuple:
  bank = MemoryBank.open(path, verify=True)
  arrays = tuple(np.ascontiguousarray(a).tobytes() for layer in bank.layer_ids
                 for a in bank.layer_arrays(layer))
  return bank.doc_ids, bank.lengths.tolist(), arrays


@pytest.mark.slow
def test_scale_run_end_to_end(checkpoint, tmp_path, capsys):
  config = _config(checkpoint, tmp_path / "out")
  rows = scale.run(config)
  out = capsys.readouterr()
  sizes = [(s // 64) * 64 for s in config.sizes]
  assert [(r["memory_tokens"], r["task"]) for r in rows] == [
      (s, t) for s in sizes for t in scale.TASKS]
  for r in rows:
    assert r["num_docs"] == r["memory_tokens"] // 64 and r["encode_tokens_per_s"] > 0
    assert 0 <= r["recall@1"] <= 1 and 0 <= r["recall@k"] <= 1 and 0 <= r["accuracy"] <= 1
  files = json.loads((tmp_path / "out" / scale.RESULTS_FILE).read_text())
  assert files["rows"] == json.loads(json.dumps(rows))
  assert (tmp_path / "out" / scale.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
  assert "recall@4" in out.out and "% of this machine's" in out.out
  # The demo bank holds the memory's documents, encoded as the engine encodes them.
  trained = restore.load_trained(checkpoint)
  data = trained.config.data
  memory = scale.demo_memory(trained.tokenizer, data, sizes[-1] // 64, config.questions)
  path = tmp_path / "out" / "banks" / f"demo-{sizes[-1]}"
  bank = MemoryBank.open(path)
  assert bank.doc_ids == [f"{i:07d}" for i in range(memory.num_docs)]
  assert bank.dtype == ml_dtypes.bfloat16
  demo_row = [r for r in rows if r["task"] == "demo"][-1]
  assert demo_row["bank_bytes"] == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  tokens = memory.block(0, memory.num_docs)
  first = data.num_docs + data.eval_docs
  held_out = synthetic.document_range(trained.tokenizer, scale.corpus_spec(data), first,
                                      first + memory.num_docs)
  np.testing.assert_array_equal(tokens, held_out.doc_tokens)
  _, _, want = encode_lib.encode_documents(trained.model_config, trained.msa, trained.params,
                                           list(tokens), max_tokens=64, progress=None)
  for layer in bank.layer_ids:
    for name, array in zip(("keys", "k", "v"), bank.layer_arrays(layer)):
      np.testing.assert_allclose(np.asarray(array, np.float32), want[layer][name],
                                 rtol=1e-2, atol=1e-2)
  # A second run reuses every bank and reports the same rows (but the route timings).
  again = scale.run(config)
  assert "complete bank reused" in capsys.readouterr().err
  strip = lambda rs: [{k: v for k, v in r.items() if k != "route_ms_per_question"} for r in rs]
  assert strip(again) == strip(rows)
  # Other NIAH variants make another haystack: the bank says so and is encoded anew.
  config.tasks = ("single",)
  scale.run(config)
  err = capsys.readouterr().err
  assert ("holds another memory (memory.variants: bank has ['single', 'multikey', "
          "'multivalue', ") in err, err
  assert "expected ['single']); encoding anew" in err, err


def test_combined_niah_haystack_holds_every_needle():
  tok = synthetic.SyntheticTokenizer(64, 128, 32)
  task, labels = scale.combined_niah(tok, num_docs=200, doc_tokens=64, id_digits=7,
                                     needle_span=6, key_length=3,
                                     variants=list(scale.NIAH_TASKS), repeats=3, seed=5)
  assert len(task.needles) == 3 * (1 + 4 + 4 + 4)
  assert len({n.doc for n in task.needles}) == len(task.needles)  # one needle per document
  assert labels == ["single"] * 3 + ["multikey"] * 3 + ["multivalue"] * 3 + ["multiquery"] * 6
  rows = task.document_tokens(0, 200)
  for q in task.questions:
    key = tok.encode(q.key)
    assert len(key) == 3
    for needle, (doc,) in zip(q.needles, q.needle_docs):
      n = task.needles[needle]
      assert n.doc == doc and n.key == q.key
      written = rows[doc, n.offset:n.offset + 5].tolist()
      assert written == [tok.fact_id] + key + tok.encode(n.value)
      # The identifier a correct answer names is the one written in the document.
      ident = tok.identifier_ids(int(task.identifiers([doc])[0]), 7)
      assert rows[doc, 1:10].tolist() == ident
  filler_only = [d for d in range(200) if d not in {n.doc for n in task.needles}]
  assert not np.isin(rows[filler_only], [tok.fact_id]).any()


def _scale_subprocess(args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, "-m", "msa_jax.scale",
                           "--config=configs/scale.py:smoke", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_scale_encoding_resumes_after_kill(checkpoint, tmp_path):
  flags = [f"--config.checkpoint_workdir={checkpoint}", "--config.sizes=(65536,)",
           "--config.tasks=('demo',)", "--config.questions=4", "--config.commit_every=16"]
  bank = tmp_path / "killed" / "banks" / "demo-65536"
  proc = _scale_subprocess([*flags, f"--config.workdir={tmp_path / 'killed'}"])
  deadline = time.monotonic() + 300
  try:
    while True:
      try:
        if json.loads((bank / STAGED_MANIFEST).read_bytes())["num_docs"] >= 32:
          break
      except (FileNotFoundError, ValueError):
        pass
      assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
      assert time.monotonic() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  staged = MemoryBank.open(bank, staged=True)
  assert 32 <= staged.num_docs < 1024
  config = lambda name: _config(checkpoint, tmp_path / name, sizes=(65536,), tasks=("demo",),
                                questions=4, commit_every=16)
  resumed = scale.run(config("killed"))
  uninterrupted = scale.run(config("whole"))
  assert _bank_content(bank) == _bank_content(tmp_path / "whole" / "banks" / "demo-65536")
  assert resumed[0]["recall@1"] == uninterrupted[0]["recall@1"]
  assert not (bank / STAGED_MANIFEST).exists()


def test_refusals_before_any_model(tmp_path):
  workdir = tmp_path / "ckpt"
  workdir.mkdir()
  c = demo.get_config("smoke")
  (workdir / "config.json").write_text(c.to_json())
  ok = _config(workdir, tmp_path / "out")
  assert scale.check_config(ok).data.id_digits == c.data.id_digits  # the checkpoint's task
  bad = [(dict(checkpoint_workdir=str(tmp_path / "none")), "config.json not found"),
         (dict(sizes=(10,)), "10 tokens make 0 documents"),
         (dict(sizes=(10 ** 12,)), "do not fit the checkpoint's task"),
         (dict(tasks=("demo", "haystack")), "known tasks are"),
         (dict(route_k=0), "--config.route_k=0 must be an int >= 1"),
         (dict(bank_dtype="float16"), "expected float32 or bfloat16"),
         (dict(commit_seconds=0.0), "must be > 0")]
  for overrides, match in bad:
    with pytest.raises(scale.ScaleError, match=match):
      scale.check_config(_config(workdir, tmp_path / "out", **overrides))
  (tmp_path / "file").write_text("x")
  with pytest.raises(scale.ScaleError, match="exists and is not a directory"):
    scale.check_config(_config(workdir, tmp_path / "file"))
  # Through the command: one line, exit status 2.
  proc = _scale_subprocess([f"--config.checkpoint_workdir={workdir}",
                            f"--config.workdir={tmp_path / 'out'}", "--config.route_k=0"])
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and err.strip().splitlines() == [
      "error: --config.route_k=0 must be an int >= 1"]
