"""NIAH through the inference engine on a tiny random model: layout, scoring, outputs, CLI."""

import json

import numpy as np
import pytest

from msa_jax.data import synthetic
from msa_jax.data import niah
from msa_jax.evaluation import niah_eval
from tests import forked_commands

TOK = synthetic.SyntheticTokenizer(num_filler_words=32, num_key_words=16, num_value_words=8)
SETTINGS = niah_eval.NiahEvalSettings(base_tokens=96, num_scales=2, factor=4, samples_per_size=1,
                                      doc_tokens=32, encode_batch=8)


@pytest.fixture(scope="module")
def model():
  return niah_eval.random_model("tiny", seed=0, top_k=2, chunk_size=8, tokenizer=TOK,
                                embed_dim=32, mlp_dim=64, head_dim=8, num_layers=2)


def test_documents_and_prompts_follow_the_training_layout(model):
  task = niah.build_niah(TOK, "single", memory_tokens=200, doc_tokens=32 - 7, seed=1)
  ids = niah_eval.document_identifiers(len(task.segments), 4, task.seed)
  assert len(set(ids.tolist())) == len(ids) and ids.max() < 10 ** 4
  docs = niah_eval.memory_documents(task, TOK, ids, 4)
  for doc, text, identifier in zip(docs, task.documents, ids):
    assert len(doc) <= 32
    assert TOK.decode(doc[:7]) == "<doc> [ " + " ".join(str(identifier).zfill(4)) + " ]"
    assert TOK.decode(doc[7:]) == " ".join(text.split())
  prompts = niah_eval.question_prompts(task, model)
  q = task.questions[0]
  assert TOK.decode(np.asarray(prompts.tokens)[0]) == f"<bos> {q.query} <answer>"
  assert np.asarray(prompts.query_mask)[0].tolist() == [False, True, True, True, False]
  # The synthetic training batches' positions: the head, then a gap of the trained top_k.
  assert np.asarray(prompts.positions)[0].tolist() == [0, 3, 4, 5, 6]
  assert int(np.asarray(prompts.memory_index)[0]) == 1


def test_parse_answer():
  words = "[ 0 4 2 7 ] v3 v5 <eos>".split()
  assert niah_eval.parse_answer(words, 4) == (427, ["v3", "v5", "<eos>"])
  assert niah_eval.parse_answer("[ 0 4 ] v3".split(), 4) == (None, ["v3"])
  assert niah_eval.parse_answer("v1 <eos>".split(), 4) == (None, ["v1", "<eos>"])
  assert niah.answer_scores(niah_eval.parse_answer(words, 4)[1], ["v5", "v3"])[
      "exact_match"] == 1.0


def test_identifiers_are_limited():
  with pytest.raises(ValueError, match="id_digits=1"):
    niah_eval.document_identifiers(11, 1, 0)


@pytest.mark.slow
def test_evaluate_niah_is_deterministic_and_scored(model, tmp_path):
  results = niah_eval.evaluate_niah(model, SETTINGS, progress=None)
  again = niah_eval.evaluate_niah(model, SETTINGS, bank_dir=tmp_path, progress=None)
  strip = lambda r: [{k: v for k, v in t.items() if k != "seconds"} for t in r["tasks"]]
  assert strip(results) == strip(again)
  rows = results["rows"]
  assert [(r["variant"], r["memory_tokens"]) for r in rows] == [
      (v, s) for v in niah_eval.DEFAULT_VARIANTS for s in (96, 384)]
  router = results["model"]["router_layers"]
  assert router == [1]
  for task in results["tasks"]:
    for q in task["questions"]:
      # Routed documents are bank indices, top_k of them, best first.
      assert len(q["routed"]["1"]) == min(2, task["num_docs"])
      assert q["routed_scores"]["1"] == sorted(q["routed_scores"]["1"], reverse=True)
      if task["variant"] != "multivalue":  # one needle, one question
        assert task["metrics"]["recall_L1"] == float(q["needle_docs"][0] in q["routed"]["1"])
        assert task["metrics"]["id_accuracy"] == float(
            q["identifier"] == q["needle_identifiers"][0])
    for name in ("recall_L1", "recall_any", "id_accuracy", "exact_match", "value_recall"):
      assert 0.0 <= task["metrics"][name] <= 1.0
  # With every document routed (top_k >= documents), routing recall is 1.
  wide = niah_eval.evaluate_niah(model, niah_eval.NiahEvalSettings(
      variants=("multivalue",), base_tokens=96, num_scales=1, doc_tokens=32, top_k=64),
      progress=None)
  assert wide["rows"][0]["recall_any"] == 1.0


@pytest.mark.slow
def test_write_results(model, tmp_path):
  results = niah_eval.evaluate_niah(model, niah_eval.NiahEvalSettings(
      variants=("single",), base_tokens=96, num_scales=2, factor=4, doc_tokens=32, bm25=True),
      progress=None)
  assert all(r["bm25_recall"] == 1.0 for r in results["rows"])  # the key words are unique
  paths = niah_eval.write_results(results, tmp_path)
  assert json.loads(paths["json"].read_text())["rows"] == results["rows"]
  table = paths["table"].read_text()
  assert "recall_L1" in table and "bm25_recall" in table and "384" in table
  assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_random_model(tmp_path):
  # Both commands forked from one interpreter (tests/forked_commands.py): one start-up.
  cmd = ["msa_jax.niah", "--config=configs/niah.py", f"--workdir={tmp_path}",
         "--config.random_model=tiny", "--config.variants=single", "--config.base_tokens=128",
         "--config.num_scales=2", "--config.samples=1"]
  (code, stdout, stderr), bad = forked_commands.run_commands([cmd, cmd[:3]])
  assert code == 0, stderr[-3000:]
  assert "recall_any" in stdout
  assert {p.name for p in tmp_path.iterdir()} >= {niah_eval.RESULTS_FILE, niah_eval.TABLE_FILE,
                                                   niah_eval.PLOT_FILE}
  assert bad[0] != 0 and "exactly one of" in bad[2]


def test_chance_recall():
  q = niah.NiahQuestion(query="<query> k1", key="k1", values=("v1", "v2"), needles=(0, 1),
                        needle_docs=((3,), (5, 6)))
  # Needle 0: 1 - C(9,2)/C(10,2) = 0.2; needle 1 (two docs): 1 - C(8,2)/C(10,2) = 17/45.
  assert niah_eval.chance_recall(q, 10, 2) == pytest.approx((0.2 + 17 / 45) / 2)
  assert niah_eval.chance_recall(q, 3, 8) == 1.0
