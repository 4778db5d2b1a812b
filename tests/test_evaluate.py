"""`python -m msa_jax.evaluate`: a smoke-trained checkpoint evaluated on a small NFCorpus slice.

The checkpoint is configs/beir.py:smoke trained for 3 steps (SmolLM2's first 4 layers); the
slice holds a few test queries with few relevant documents and some distractors, written in
the BEIR layout. Checked: results.json fields, BM25 against `bm25_rankings` on the same memory,
the same numbers on a rerun (which reuses the bank), the command line, and the refusals.
"""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import beir, nq320k
from configs import evaluate as evaluate_config
from msa_jax.data import retrieval
from msa_jax.data import bm25
from msa_jax.evaluation import metrics
from msa_jax.evaluation import run
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.memory.bank import BankError, MemoryBank
from msa_jax.model import MSAConfig, MSATransformer, get_preset, init_params
from msa_jax.loading import restore
from tests.paths import REPO, SHARED

NFCORPUS = SHARED / "data" / "beir" / "nfcorpus"
NUM_QUERIES, NUM_DISTRACTORS = 3, 30


def write_slice(root, *, bad_doc=False, empty=False):
  """A BEIR folder: NUM_QUERIES NFCorpus test queries with <= 2 relevant documents, their
  documents and the first NUM_DISTRACTORS others (corpus order)."""
  data = retrieval.load_beir(NFCORPUS, ["test"])
  test = data.split("test")
  qids = [q for q in sorted(test) if 1 <= sum(g > 0 for g in test[q].values()) <= 2]
  qids = qids[:NUM_QUERIES]
  judged = {d for q in qids for d in test[q]}
  others = [d for d in data.doc_ids if d not in judged][:NUM_DISTRACTORS]
  docs = [d for d in data.doc_ids if d in judged or d in others]
  root.mkdir(parents=True)
  (root / "qrels").mkdir()
  with open(root / "corpus.jsonl", "w") as f:
    for d in docs:
      m = data.doc_index[d]
      f.write(json.dumps({"_id": d, "title": data.titles[m], "text": data.texts[m]}) + "\n")
  with open(root / "queries.jsonl", "w") as f:
    for q in qids:
      f.write(json.dumps({"_id": q, "text": data.queries[q]}) + "\n")
  lines = ["query-id\tcorpus-id\tscore"]
  if not empty:
    lines += [f"{q}\t{d}\t{g}" for q in qids for d, g in sorted(test[q].items())]
  if bad_doc:
    lines.append(f"{qids[0]}\tNO-SUCH-DOC\t1")
  (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture(scope="module")
def checkpoint(beir_smoke_run):
  """configs/beir.py:smoke trained (3 steps): a real workdir of `msa_jax.train`, the
  session's (read only)."""
  return beir_smoke_run[0]


@pytest.fixture(scope="module")
def data_slice(tmp_path_factory):
  return write_slice(tmp_path_factory.mktemp("beir") / "slice")


def eval_config(checkpoint, data_path, **overrides):
  c = evaluate_config.get_config("smoke")
  c.checkpoint_workdir = str(checkpoint)
  c.data.update(kind="beir", path=str(data_path), splits=["test"])
  c.update(max_queries=0, corpus_cap=0)
  c.scaling.update(base_docs=5, factor=3)
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def first_run(checkpoint, data_slice, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("eval")
  return workdir, run.evaluate(eval_config(checkpoint, data_slice), workdir)


def _without_timing(results):
  return {k: v for k, v in results.items() if k != "timing"}


@pytest.mark.slow
def test_results_fields_and_bm25(first_run, data_slice):
  workdir, results = first_run
  assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
  assert results["memory"]["status"] == "encoded"
  assert results["router_layers"] == [2, 3]
  out = results["splits"]["test"]
  data = retrieval.load_beir(data_slice, ["test"])
  assert out["num_queries"] == NUM_QUERIES and out["memory_docs"] == data.num_docs
  names = {"bm25", "msa_router_layer2", "msa_router_layer3", "msa_router_sum",
           "msa_generative"}
  assert set(out["methods"]) == names
  for name in names - {"msa_generative"}:
    assert set(out["methods"][name]) == set(metrics.DEFAULT_METRICS)
    assert all(0 <= v <= 1 for v in out["methods"][name].values())
  assert set(out["methods"]["msa_generative"]) == {"hit@1"}
  g = out["generative"]
  assert g["parsed"] + g["not_in_memory"] + g["unparsable"] == NUM_QUERIES
  # BM25 on the whole memory is bm25_rankings on the corpus.
  want = bm25.bm25_rankings(data.corpus, data.queries, k=100, query_ids=list(data.queries),
                            stemmer="english")  # configs/evaluate.py's default
  assert out["methods"]["bm25"] == pytest.approx(
      metrics.evaluate(want, data.split("test")).mean)
  # Scaling: nested memories from the relevant documents + 5 up to the whole slice.
  s = out["scaling"]
  relevant = sum(1 for q in data.split("test").values() for g in q.values() if g > 0)
  assert s["sizes"][0] == relevant + 5 and s["sizes"][-1] == data.num_docs
  assert s["methods"]["msa_router_sum"][-1] == out["methods"]["msa_router_sum"]
  assert all(v[0] in (0.0, None) for v in s["relative_degradation"]["bm25"].values())
  assert (workdir / "scaling_test.png").stat().st_size > 1000


@pytest.mark.slow
def test_rerun_reuses_the_bank_and_reproduces(first_run, checkpoint, data_slice):
  workdir, results = first_run
  again = run.evaluate(eval_config(checkpoint, data_slice), workdir)
  assert again["memory"]["status"] == "reused"
  results = json.loads(json.dumps(_without_timing(results)))
  again = json.loads(json.dumps(_without_timing(again)))
  results["memory"].pop("status")
  again["memory"].pop("status")
  assert again == results


@pytest.mark.slow
def test_command_line(checkpoint, data_slice, tmp_path):
  cmd = [sys.executable, "-m", "msa_jax.evaluate", "--config=configs/evaluate.py:smoke",
         f"--workdir={tmp_path}", f"--config.checkpoint_workdir={checkpoint}",
         "--config.data.kind=beir", f"--config.data.path={data_slice}",
         "--config.max_queries=2", "--config.corpus_cap=0", "--config.scaling.enabled=False",
         "--config.generative=no"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "msa_router_sum" in out.stdout and "bm25" in out.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["splits"]["test"]["num_queries"] == 2
  assert results["splits"]["test"]["scaling"] is None


@pytest.mark.slow
def test_router_rankings_agree_with_the_engine(first_run, checkpoint, data_slice):
  workdir, _ = first_run
  trained = restore.load_trained(checkpoint)
  data = retrieval.load_beir(data_slice, ["test"])
  task = run.make_task(data, trained.tokenizer, trained.config)
  bank = MemoryBank.open(workdir / "bank")
  model = (trained.model_config, trained.msa, trained.params, bank)
  eng = engine_lib.MSAEngine(*model)
  qids = sorted(data.split("test"))
  rankings, _ = run.run_queries(eng, task, qids, bank.doc_ids, None, top=100, sampling=None,
                                batch_size=4)
  pre = engine_lib.MSAEngine(*model).prefill(run.question_prompts(task, qids))
  for i, mem in pre.memory.items():  # each layer's routed documents head its ranking
    for qid, row in zip(qids, engine_lib.routed_doc_ids(bank, mem)):
      assert rankings[f"msa_router_layer{i}"][qid][:len(row)] == row
  # A restricted memory routes (and ranks) only its members.
  members = np.zeros(bank.num_docs, bool)
  members[::3] = True
  kept = {bank.doc_ids[i] for i in np.flatnonzero(members)}
  pre = eng.prefill(run.question_prompts(task, qids), doc_mask=members)
  for mem in pre.memory.values():
    assert all(set(row) <= kept for row in engine_lib.routed_doc_ids(bank, mem))
  rankings, _ = run.run_queries(eng, task, qids, bank.doc_ids, members, top=100,
                                sampling=None, batch_size=4)
  assert all(len(r) == len(kept) and set(r) == kept for r in rankings["msa_router_sum"].values())


def config_only_workdir(path, module=beir):
  """A training workdir with only config.json: enough for the data checks, which run before
  the model is loaded."""
  path.mkdir()
  (path / "config.json").write_text(module.get_config("smoke").to_json_best_effort())
  return path


def test_unknown_documents_and_empty_splits_are_refused(tmp_path):
  checkpoint = config_only_workdir(tmp_path / "train")
  bad = write_slice(tmp_path / "bad", bad_doc=True)
  with pytest.raises(ValueError, match="'NO-SUCH-DOC' is not in corpus.jsonl"):
    run.evaluate(eval_config(checkpoint, bad), tmp_path / "eval_bad")
  empty = write_slice(tmp_path / "empty", empty=True)
  with pytest.raises(ValueError, match="the split has no judgements"):
    run.evaluate(eval_config(checkpoint, empty), tmp_path / "eval_empty")
  with pytest.raises(FileNotFoundError, match=r"qrels/dev.tsv"):
    run.load_data("beir", str(bad), ["dev"])
  with pytest.raises(ValueError, match="--config.checkpoint_workdir is required"):
    run.evaluate(evaluate_config.get_config(), tmp_path / "eval_none")


def test_data_defaults_to_the_training_run(tmp_path):
  train = restore.load_config(config_only_workdir(tmp_path / "nq", nq320k))
  c = evaluate_config.get_config()
  kind, path, splits = run.resolve_data(c, train)
  assert (kind, splits) == ("nq320k", ["dev"]) and path == train.data.path
  c.data.update(path=str(REPO / "tests" / "data" / "nq320k"), splits=["train", "dev"])
  kind, path, splits = run.resolve_data(c, train)
  data = run.load_data(kind, path, splits)
  assert sorted(data.qrels) == ["dev", "train"]
  with pytest.raises(ValueError, match="no split 'test'"):
    run.load_data(kind, path, ["test"])
  train.data.kind = "synthetic"
  with pytest.raises(ValueError, match="data.kind='synthetic' cannot be evaluated"):
    run.resolve_data(evaluate_config.get_config(), train)


@pytest.mark.slow
def test_bank_from_another_model(checkpoint, data_slice, tmp_path):
  cfg = get_preset("tiny").replace(vocab_size=64, num_layers=2)
  msa = MSAConfig(top_k=2, chunk_size=16)
  other = encode_lib.create_bank(tmp_path / "other", cfg, msa,
                                 init_params(MSATransformer(cfg, msa), jax.random.key(0)))
  c = eval_config(checkpoint, data_slice, bank_path=str(tmp_path / "other"))
  with pytest.raises(BankError, match="another model"):
    run.evaluate(c, tmp_path / "eval")
  # A bank the evaluation owns is re-encoded instead (here: the first documents only).
  trained = restore.load_trained(checkpoint)
  data = retrieval.load_beir(data_slice, ["test"])
  task = run.make_task(data, trained.tokenizer, trained.config)
  ids, tokens = list(data.doc_ids[:3]), [task.doc_token_ids(m) for m in range(3)]
  path = tmp_path / "owned"
  shutil.copytree(other.path, path)
  bank, status = run.prepare_bank(path, True, trained, np.float32, ids, tokens, max_tokens=32)
  assert status == "encoded" and bank.doc_ids == ids
  # A bank cut short (an interrupted encoding) is completed.
  path = tmp_path / "partial"
  meta = {"documents": run.documents_digest(ids, tokens), "num_docs": 3, "doc_tokens": 32}
  partial = encode_lib.create_bank(path, trained.model_config, trained.msa, trained.params,
                                   metadata=meta)
  encode_lib.encode_corpus(partial, trained.model_config, trained.msa, trained.params,
                           ids[:1], tokens[:1], max_tokens=32, progress=None)
  bank, status = run.prepare_bank(path, True, trained, np.float32, ids, tokens, max_tokens=32)
  assert status == "completed" and bank.doc_ids == ids
  with pytest.raises(BankError, match="other documents"):
    run.prepare_bank(path, False, trained, np.float32, ids[::-1], tokens[::-1], max_tokens=32)


def test_pure_helpers():
  assert run.scaling_sizes(12, 500, 10) == [12, 120, 500]
  assert run.scaling_sizes(12, 500, 10, max_docs=100) == [12, 100]
  assert run.scaling_sizes(600, 500, 10) == [500]
  assert run.scaling_sizes(389, 3633, 3) == [389, 1167, 3633]  # not 3501 and then 3633
  with pytest.raises(ValueError, match="factor must be >= 2"):
    run.scaling_sizes(1, 10, 1)
  assert run.parse_identifier("[12]") == 12 and run.parse_identifier(" [7") == 7
  assert run.parse_identifier("12]") is None and run.parse_identifier("[x]") is None
  memory = np.arange(0, 40, 2)
  masks = run.nested_memories(memory, {4, 10}, [5, 12, 20], seed=0)
  assert [int(m.sum()) for m in masks] == [5, 12, 20]
  assert all((a <= b).all() for a, b in zip(masks, masks[1:]))  # nested
  assert all(m[[2, 5]].all() for m in masks)  # the relevant documents are always in
  np.testing.assert_array_equal(run.memory_documents(10, {3}, 0, 0), np.arange(10))
  capped = run.memory_documents(100, {3, 50}, 10, seed=1)
  assert len(capped) == 10 and {3, 50} <= set(capped.tolist())
  np.testing.assert_array_equal(capped, run.memory_documents(100, {3, 50}, 10, seed=1))
  with pytest.raises(ValueError, match="corpus_cap=1 is smaller than the 2 relevant"):
    run.memory_documents(100, {3, 50}, 1, seed=1)
  scores = np.array([[0.5, -np.inf, 0.5, 0.9, -1.0]])
  np.testing.assert_array_equal(run.top_n(scores, 3)[0], [3, 0, 2])
  assert run.relative_degradation([0.5, 0.25]) == [0.0, -0.5]
