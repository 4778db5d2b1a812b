"""Real-text retrieval data: BEIR (NFCorpus) and NQ320k loading, batches, iterator state."""

import json

import numpy as np
import pytest

from msa_jax.checkpoint import smollm2_path
from msa_jax.data import retrieval
from msa_jax.checkpoint.tokenizer import Tokenizer
from msa_jax.model import check_batch
from tests.paths import REPO, SHARED

NFCORPUS = SHARED / "data" / "beir" / "nfcorpus"
NQ_FIXTURE = REPO / "tests" / "data" / "nq320k"
SPEC = retrieval.RetrievalSpec(batch_size=4, docs_per_sample=6, doc_tokens=48, prompt_tokens=48,
                               max_positives=2, seed=3)


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.from_gguf(smollm2_path())


@pytest.fixture(scope="module")
def nfcorpus():
  return retrieval.load_beir(NFCORPUS)


def test_nfcorpus_counts(nfcorpus):
  assert nfcorpus.num_docs == 3633 and len(nfcorpus.queries) == 3237
  assert retrieval.split_counts(nfcorpus) == {
      "train": (2590, 110575), "dev": (324, 11385), "test": (323, 12334)}
  assert nfcorpus.doc_ids[0] == "MED-10" and nfcorpus.titles[0].startswith("Statin Use")
  assert nfcorpus.corpus["MED-10"]["text"] == nfcorpus.texts[0]
  only = retrieval.load_beir(NFCORPUS, ["test"])
  assert list(only.qrels) == ["test"]


def _beir(tmp_path, corpus=None, queries=None, qrels=None):
  root = tmp_path / "ds"
  (root / "qrels").mkdir(parents=True)
  docs = [{"_id": "d1", "title": "A", "text": "alpha"}, {"_id": "d2", "text": "beta"}]
  (root / "corpus.jsonl").write_text(
      corpus if corpus is not None else "".join(json.dumps(d) + "\n" for d in docs))
  (root / "queries.jsonl").write_text(
      queries if queries is not None else '{"_id": "q1", "text": "which?"}\n')
  (root / "qrels" / "test.tsv").write_text(
      qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td2\t1\n")
  return root


def test_beir_small_and_errors(tmp_path):
  data = retrieval.load_beir(_beir(tmp_path))
  assert data.doc_ids == ("d1", "d2") and data.titles == ("A", "")
  assert data.qrels == {"test": {"q1": {"d2": 1}}}
  with pytest.raises(FileNotFoundError, match="does not exist: expected a BEIR dataset folder"):
    retrieval.load_beir(tmp_path / "nope")
  (tmp_path / "ds" / "queries.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match=r"missing .*queries.jsonl: expected one JSON"):
    retrieval.load_beir(tmp_path / "ds")
  with pytest.raises(FileNotFoundError, match=r"qrels/dev.tsv"):
    retrieval.load_beir(_beir(tmp_path / "a"), ["dev"])


@pytest.mark.parametrize("kind, pattern", [
    ("corpus", r"corpus.jsonl:2: not a JSON object"),
    ("queries", r"queries.jsonl:1: expected a JSON object with fields \['_id', 'text'\]"),
    ("fields", r"test.tsv:2: expected 3 tab-separated fields"),
    ("score", r"test.tsv:2: score 'x' is not an integer"),
    ("doc", r"test.tsv:2: document 'd9' is not in corpus.jsonl"),
    ("query", r"test.tsv:2: query 'q9' is not in queries.jsonl"),
    ("empty", r"test.tsv: the split has no judgements"),
])
def test_beir_malformed(tmp_path, kind, pattern):
  header = "query-id\tcorpus-id\tscore\n"
  args = {
      "corpus": dict(corpus='{"_id": "d1", "text": "a"}\n{"_id": \n'),
      "queries": dict(queries='{"id": "q1", "text": "x"}\n'),
      "fields": dict(qrels=header + "q1\td1\n"),
      "score": dict(qrels=header + "q1\td1\tx\n"),
      "doc": dict(qrels=header + "q1\td9\t1\n"),
      "query": dict(qrels=header + "q9\td1\t1\n"),
      "empty": dict(qrels=header),
  }[kind]
  with pytest.raises(ValueError, match=pattern):
    retrieval.load_beir(_beir(tmp_path, **args))


def test_batches_are_valid(nfcorpus, tok):
  task = retrieval.RetrievalTask(nfcorpus, tok, SPEC)
  samples = task.samples("test")
  batch = task.build_batch("test", [0, 1, 2, 3], (0, 1))
  assert batch.shape == (4, 6, 48, 48)
  check_batch(batch, vocab_size=tok.vocab_size, need_route_labels=True)
  for i in range(4):
    qid, pos, judged = samples[i]
    # The target is the best-graded relevant document; its identifier is what is labelled.
    grades = nfcorpus.qrels["test"][qid]
    assert grades[nfcorpus.doc_ids[pos[0]]] == max(grades.values())
    target = batch.labels[i][batch.labels[i] != -100]
    assert tok.decode(target, skip_special_tokens=False) == f"[{pos[0]}]<|im_end|>"
    # Memory: the positives (route label 1), then negatives that are not judged at all.
    docs = [tok.decode(batch.doc_tokens[i, n, :batch.doc_lengths[i, n]]) for n in range(6)]
    ids = [int(d[1:d.index("]")]) for d in docs]
    assert {m for m, y in zip(ids, batch.route_labels[i]) if y} == set(pos[:2])
    assert not {m for m, y in zip(ids, batch.route_labels[i]) if not y} & judged
    assert docs[0].startswith(f"[{ids[0]}] {nfcorpus.titles[ids[0]]}"[:40])
    question = tok.decode(batch.tokens[i][batch.query_mask[i]])
    assert question == "Question: " + nfcorpus.queries[qid][:len(question) - 10]
  assert (batch.memory_index == 1).all() and (batch.tokens[:, 0] == tok.bos_id).all()


def test_iterator_determinism_and_state(nfcorpus, tok):
  task = retrieval.RetrievalTask(nfcorpus, tok, SPEC)
  source = retrieval.RetrievalBatchSource(task, "dev")
  it = retrieval.RetrievalBatchIterator(source)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  assert json.loads(json.dumps(state)) == {"seed": 3, "epoch": 0, "index": 3}
  after = [next(it) for _ in range(2)]
  again = retrieval.RetrievalBatchIterator(
      retrieval.RetrievalBatchSource(retrieval.RetrievalTask(nfcorpus, tok, SPEC), "dev"))
  np.testing.assert_array_equal(next(again).doc_tokens, first[0].doc_tokens)
  again.set_state(state)
  for want in after:
    got = next(again)
    np.testing.assert_array_equal(got.doc_tokens, want.doc_tokens)
    np.testing.assert_array_equal(got.tokens, want.tokens)
  # A process's rows are the same rows of the global batch.
  half = retrieval.RetrievalBatchSource(task, "dev", rows=slice(2, 4))[1]
  np.testing.assert_array_equal(half.doc_tokens, first[1].doc_tokens[2:4])
  np.testing.assert_array_equal(half.labels, first[1].labels[2:4])
  with pytest.raises(ValueError, match="seed=9 differs"):
    again.set_state({"seed": 9, "epoch": 0, "index": 0})
  # Held-out queries never appear in training batches.
  train_ids, held = retrieval.holdout_split(len(task.samples("dev")), 8, 0)
  assert len(held) == 8 and not set(held) & set(train_ids)
  evals = task.eval_batches("dev", 5, held)
  assert len(evals) == 2 and all(b.shape[0] == 4 for b in evals)


def test_nq320k_fixture(tok):
  data = retrieval.load_nq320k(NQ_FIXTURE)
  assert data.num_docs == 8 and retrieval.split_counts(data) == {
      "train": (12, 12), "dev": (4, 4)}
  assert data.titles[0] == "eiffel tower" and data.texts[0].startswith("The Eiffel Tower")
  assert data.queries["9001"] == "who wrote romeo and juliet"
  assert data.qrels["dev"]["9001"] == {"7": 1}
  task = retrieval.RetrievalTask(data, tok, retrieval.RetrievalSpec(
      batch_size=2, docs_per_sample=4, doc_tokens=32, prompt_tokens=32))
  check_batch(task.build_batch("train", [0, 1], (0,)), vocab_size=tok.vocab_size,
              need_route_labels=True)


def test_nq320k_missing_and_malformed(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*NQ_dataset_Process.*"
                     r"--config.data.path"):
    retrieval.load_nq320k(tmp_path / "nope")
  for name in retrieval.NQ320K_FILES.values():
    (tmp_path / name).write_text((NQ_FIXTURE / name).read_text())
  (tmp_path / "nq_dev_doc_newid.tsv").unlink()
  with pytest.raises(FileNotFoundError, match="lacks nq_dev_doc_newid.tsv"):
    retrieval.load_nq320k(tmp_path)
  (tmp_path / "nq_dev_doc_newid.tsv").write_text("q\t1\t99\n")
  with pytest.raises(ValueError, match=r"nq_dev_doc_newid.tsv:1: document '99' is not in"):
    retrieval.load_nq320k(tmp_path)
  (tmp_path / "nq_dev_doc_newid.tsv").write_text("q\t1\n")
  with pytest.raises(ValueError, match=r"nq_dev_doc_newid.tsv:1: expected at least 3"):
    retrieval.load_nq320k(tmp_path)
