"""tfds builders (msa_jax.datasets): BEIR, NQ320k, the synthetic task and NIAH prepared into
ArrayRecord files, read back through tfds.data_source and grain, without TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import beir, demo
from msa_jax import datasets
from msa_jax.data import retrieval
from msa_jax.datasets import core
from msa_jax.train.data import make_data
from tests.paths import REPO, SHARED

NFCORPUS = SHARED / "data" / "beir" / "nfcorpus"
NQ_FIXTURE = REPO / "tests" / "data" / "nq320k"


def _small_beir(root):
  (root / "qrels").mkdir(parents=True)
  docs = [{"_id": "d1", "title": "A", "text": "alpha"}, {"_id": "d0", "text": "beta"},
          {"_id": "x9", "title": "C", "text": "gamma"}]
  (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (root / "queries.jsonl").write_text('{"_id": "q1", "text": "which?"}\n'
                                      '{"_id": "q2", "text": "what?"}\n'
                                      '{"_id": "q3", "text": "unjudged"}\n')
  (root / "qrels" / "test.tsv").write_text(
      "query-id\tcorpus-id\tscore\nq2\tx9\t2\nq1\td0\t1\nq2\td1\t0\n")
  (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td1\t1\n")
  return root


def test_beir_builder_splits_features_and_reuse(tmp_path):
  root = _small_beir(tmp_path / "my data")
  builder = datasets.beir_builder(root, tmp_path / "tfds")
  assert builder.builder_config.name.startswith("my_data-") and builder.version == "1.0.0"
  sources = core.prepare(builder)
  assert sorted(sources) == ["corpus", "queries", "test", "train"]
  info = builder.info
  assert "BEIR-format" in info.description and info.metadata["source"] == str(root.resolve())
  assert set(info.features) == {"id", "title", "text", "doc_ids", "scores"}
  corpus = sources["corpus"]
  assert [core.text(corpus[m]["id"]) for m in range(3)] == ["d1", "d0", "x9"]  # file order
  assert core.text(corpus[1]["title"]) == "" and core.text(corpus[2]["text"]) == "gamma"
  assert len(sources["queries"]) == 3
  q2 = sources["test"][1]
  assert core.text(q2["id"]) == "q2" and core.text(q2["text"]) == "what?"
  assert [core.text(d) for d in q2["doc_ids"]] == ["x9", "d1"] and list(q2["scores"]) == [2, 0]
  # The prepared dataset is what tfds.data_source finds by name (to inspect or share it).
  by_name = tfds.data_source(f"msa_beir/{builder.builder_config.name}",
                             data_dir=str(tmp_path / "tfds"))
  assert core.text(by_name["corpus"][2]["id"]) == "x9"
  # Read back as RetrievalData: what load_beir gives, texts read on demand.
  data = datasets.load_retrieval("beir", root, ["test"], tmp_path / "tfds")
  want = retrieval.load_beir(root, ["test"])
  assert data.doc_ids == want.doc_ids and data.qrels == want.qrels
  assert list(data.titles) == list(want.titles) and data.texts[-1] == "gamma"
  assert data.queries == {"q1": "which?", "q2": "what?"}
  assert isinstance(data.texts, core.Column)
  # Reused, not rebuilt; a changed source file is another config (never a stale copy).
  info_file = Path(builder.data_path) / "dataset_info.json"
  before = info_file.stat().st_mtime_ns
  datasets.load_retrieval("beir", root, ["train"], tmp_path / "tfds")
  assert info_file.stat().st_mtime_ns == before
  (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "changed"}\n'
                                     '{"_id": "d0", "text": "b"}\n{"_id": "x9", "text": "c"}\n')
  changed = datasets.load_retrieval("beir", root, ["train"], tmp_path / "tfds")
  assert changed.texts[0] == "changed" and changed.name != data.name
  with pytest.raises(ValueError, match=r"no split 'dev'; known: \['test', 'train'\]"):
    datasets.load_retrieval("beir", root, ["dev"], tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="does not exist: expected a BEIR dataset folder"):
    datasets.beir_builder(tmp_path / "nope", tmp_path / "tfds")


def test_nfcorpus_through_the_builder(tmp_path):
  data = datasets.load_retrieval("beir", NFCORPUS, ["train", "test"], tmp_path)
  want = retrieval.load_beir(NFCORPUS, ["train", "test"])
  assert data.num_docs == 3633 and data.doc_ids == want.doc_ids and data.qrels == want.qrels
  for m in (0, 1234, 3632):
    assert (data.titles[m], data.texts[m]) == (want.titles[m], want.texts[m])
  assert retrieval.split_counts(data) == {"train": (2590, 110575), "test": (323, 12334)}


def test_nq320k_fixture_through_the_builder(tmp_path):
  data = datasets.load_retrieval("nq320k", NQ_FIXTURE, ["train", "dev"], tmp_path)
  want = retrieval.load_nq320k(NQ_FIXTURE)
  assert data.doc_ids == want.doc_ids and data.qrels == want.qrels
  assert list(data.titles) == list(want.titles) and list(data.texts) == list(want.texts)
  assert data.queries["9001"] == "who wrote romeo and juliet"
  builder = datasets.nq320k_builder(NQ_FIXTURE, tmp_path)
  assert "NQ320k" in builder.info.description and builder.info.splits["train"].num_examples == 12
  with pytest.raises(FileNotFoundError, match=r"(?s)NQ320k data folder .* does not exist.*NCI"):
    datasets.nq320k_builder(tmp_path / "missing", tmp_path)


def _demo_arguments(**changes):
  d = demo.get_config("smoke").data
  args = dict(num_filler_words=d.num_filler_words, num_key_words=d.num_key_words,
              num_value_words=d.num_value_words, num_docs=d.num_docs, doc_length=d.doc_length,
              facts_per_doc=d.facts_per_doc, key_length=d.key_length, id_digits=d.id_digits,
              fact_span=d.get("fact_span"), seed=d.seed)
  return dict(args, **changes)


def test_synthetic_builder_materialises_the_generated_corpus(tmp_path):
  args = _demo_arguments(facts_per_doc=2, fact_span=None, first_doc=5)
  corpus = datasets.synthetic.load_corpus(args, tmp_path)
  want = datasets.synthetic.generate(args)
  for field in ("doc_tokens", "identifiers", "keys", "values", "key_doc", "key_offset",
                "doc_index"):
    np.testing.assert_array_equal(getattr(corpus, field), getattr(want, field), err_msg=field)
  assert corpus.id_digits == want.id_digits and corpus.seed == want.seed
  builder = datasets.synthetic.builder(args, tmp_path)
  sources = tfds.data_source(f"msa_synthetic/{builder.builder_config.name}",
                             data_dir=str(tmp_path))
  doc = sources["documents"][1]
  assert core.text(doc["identifier"]) == f"{want.identifiers[1]:0{want.id_digits}d}"
  assert core.text(doc["text"]) == want.tokenizer.decode(want.doc_tokens[1].tolist())
  assert int(doc["doc"]) == 6  # its index in the seed's document sequence
  question = sources["questions"][3]
  assert int(question["doc"]) == 1 and core.text(question["text"]).startswith("<query> k")
  assert builder.info.metadata["arguments"] == args
  other = datasets.synthetic.builder(_demo_arguments(seed=1), tmp_path)
  assert other.builder_config.name != builder.builder_config.name


def test_synthetic_run_reads_the_builder(tmp_path):
  config = demo.get_config("smoke")
  _, generated, generated_eval = make_data(config)
  config.data.source, config.data.data_dir = "tfds", str(tmp_path)
  _, read_back, read_eval = make_data(config)
  assert (tmp_path / "msa_synthetic").is_dir()
  for _ in range(3):
    a, b = next(generated), next(read_back)
    for field in ("doc_tokens", "tokens", "labels", "route_labels"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  np.testing.assert_array_equal(generated_eval[0].doc_tokens, read_eval[0].doc_tokens)
  config.data.source = "nope"
  with pytest.raises(ValueError, match=r"data.source='nope' is not supported"):
    make_data(config)


@pytest.mark.slow
def test_beir_config_reads_through_tfds_and_grain(tmp_path):
  config = beir.get_config("smoke")
  config.data.data_dir = str(tmp_path)
  _, iterator, evals = make_data(config)
  assert type(iterator).__name__ == "GrainIterator" and len(evals) == 1
  first = [next(iterator) for _ in range(3)]
  assert iterator.get_state() == {"next_index": 3}
  config.data.loader = "python"
  _, python, _ = make_data(config)
  for want in first:
    got = next(python)
    np.testing.assert_array_equal(got.doc_tokens, want.doc_tokens)
    np.testing.assert_array_equal(got.labels, want.labels)
  iterator.set_state({"next_index": 2})  # grain's state: back to batch 2
  np.testing.assert_array_equal(next(iterator).tokens, first[2].tokens)


_NO_TENSORFLOW = """
import importlib.util, sys
from pathlib import Path
from msa_jax import datasets
from msa_jax.datasets import core
tmp = Path(sys.argv[1])
data = datasets.load_retrieval("nq320k", sys.argv[2], ["train", "dev"], tmp)
assert data.texts[3] and len(data.qrels["dev"]) == 4
args = dict(num_filler_words=8, num_key_words=8, num_value_words=4, num_docs=4, doc_length=16,
            id_digits=2, seed=0)
assert datasets.synthetic.load_corpus(args, tmp).num_docs == 4
import grain
ds = grain.MapDataset.source(core.prepare(datasets.nq320k_builder(sys.argv[2], tmp))["corpus"])
assert core.text(next(iter(ds.to_iter_dataset()))["id"]) == data.doc_ids[0]
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
print(importlib.util.find_spec("tensorflow") is None, loaded, "tensorflow_datasets" in sys.modules)
"""


def test_no_tensorflow_installed_or_imported(tmp_path):
  out = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, str(tmp_path), str(NQ_FIXTURE)],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split("\n")[-2] == "True [] True", out.stdout[-2000:]


def test_default_data_dir(tfds_data_dir, monkeypatch):
  assert core.default_data_dir() == tfds_data_dir  # $MSA_JAX_TFDS_DIR (set by conftest)
  monkeypatch.delenv("MSA_JAX_TFDS_DIR")
  assert core.default_data_dir() == Path.home() / ".cache" / "msa_jax" / "tfds"
  assert core.data_dir_of("") == core.default_data_dir() and core.data_dir_of("/x") == Path("/x")


def test_prepare_command(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  command = [sys.executable, "-m", "msa_jax.datasets",
             f"--config={REPO / 'configs' / 'nq320k.py'}:smoke", f"--data_dir={tmp_path}"]
  out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  name = datasets.nq320k_builder(NQ_FIXTURE, tmp_path).builder_config.name
  assert f"tfds.data_source('msa_nq320k/{name}', data_dir='{tmp_path}')" in out.stdout
  assert "  dev: 4 records; first: doc_ids=['0'], id='9000', scores=[1]" in out.stdout
  bad = subprocess.run(command + [f"--config.data.path={tmp_path / 'nope'}"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr.strip().split("\n")[-1].startswith(
      f"error: NQ320k data folder {tmp_path / 'nope'} does not exist. NQ320k is not shipped")


def test_niah_builder_materialises_the_task(tmp_path):
  args = dict(num_filler_words=64, num_key_words=64, num_value_words=32, spec="multikey",
              memory_tokens=600, doc_tokens=48, seed=3)
  task = datasets.niah.build(args)
  sources = core.prepare(datasets.niah.builder(args, tmp_path))
  docs = [core.text(r["text"]) for r in core.read_all(sources["documents"])]
  assert docs == list(task.documents) and len(docs) > 10
  assert [int(r["num_tokens"]) for r in core.read_all(sources["documents"])] == [
      s.num_tokens for s in task.segments]
  needles = list(core.read_all(sources["needles"]))
  assert len(needles) == len(task.needles) == 4
  for record, needle in zip(needles, task.needles):
    assert core.text(record["key"]) == needle.key and list(record["docs"]) == list(needle.docs)
    assert core.text(record["text"]) == f"<fact> {needle.key} {needle.value}"
    assert float(record["depth"]) == pytest.approx(needle.depth)
  (question,) = task.questions
  record = sources["questions"][0]
  assert core.text(record["text"]) == question.query and core.text(record["key"]) == question.key
  assert [core.text(v) for v in record["values"]] == list(question.values)
  assert list(record["docs"]) == list(question.doc_ids)
  assert list(record["needles"]) == list(question.needles)
  assert datasets.niah.builder(dict(args, seed=4), tmp_path).builder_config.name != (
      datasets.niah.builder(args, tmp_path).builder_config.name)
