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
from tensorflow_datasets.core.features import feature as tfds_feature

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


@pytest.fixture(scope="module")
def nfcorpus_tfds(tmp_path_factory):
  """A tfds data dir for NFCorpus, shared by this module's tests: prepared once (by the first
  test that reads it), reused by the next."""
  return tmp_path_factory.mktemp("nfcorpus_tfds")


@pytest.mark.slow
def test_nfcorpus_through_the_builder(nfcorpus_tfds):
  data = datasets.load_retrieval("beir", NFCORPUS, ["train", "test"], nfcorpus_tfds)
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


def _nq_line(example_id, title, question, words):
  """One example of Natural Questions v1.0 (the raw JSON lines tfds' builder parses): a page
  of `words` in an <H1> title and a <P> paragraph."""
  tokens = ["<H1>", *title.split(), "</H1>", "<P>", *words.split(), "</P>"]
  return json.dumps({
      "example_id": example_id, "document_title": title, "document_url": f"https://w/{title}",
      "document_html": " ".join(tokens),
      "document_tokens": [{"token": t, "html_token": t.startswith("<"), "start_byte": 0,
                           "end_byte": 0} for t in tokens],
      "question_text": question, "question_tokens": question.split(),
      "annotations": [{"annotation_id": example_id + 7, "yes_no_answer": "NONE",
                       "long_answer": {"start_token": 3, "end_token": len(tokens),
                                       "start_byte": 0, "end_byte": 0, "candidate_index": 0},
                       "short_answers": [{"start_token": 4, "end_token": 5, "start_byte": 0,
                                          "end_byte": 0}]}],
      "long_answer_candidates": []})


NQ_LINES = {
    "train": [
        _nq_line(101, "Romeo and Juliet", "who wrote romeo and juliet",
                 "Romeo and Juliet is a tragedy by William Shakespeare"),
        _nq_line(102, "Moon", "how far away is the moon", "The Moon orbits the Earth"),
        _nq_line(103, "romeo and Juliet", "when was romeo and juliet written",
                 "a second copy of the page"),
    ],
    "validation": [
        _nq_line(201, "Moon", "what is the moon made of", "another copy"),
        _nq_line(202, "Python (language)", "who created python", "Guido van Rossum made it"),
    ],
}


class _NaturalQuestions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds' own natural_questions (config default: its feature spec and example parser) over
  the raw lines of NQ_LINES, in record order: what a user's prepared copy holds."""

  name = "natural_questions"
  VERSION = tfds.core.Version("0.1.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default")]
  REAL = tfds.builder_cls("natural_questions")

  def _info(self):
    (config,) = [c for c in self.REAL.BUILDER_CONFIGS if c.name == "default"]
    return tfds.core.DatasetInfo(builder=self, features=config.features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(lines) for split, lines in NQ_LINES.items()}

  def _generate_examples(self, lines):
    for line in lines:
      yield self.REAL._parse_example_default(line)  # pylint: disable=protected-access


def _prepare_natural_questions(data_dir, monkeypatch):
  """Prepares _NaturalQuestions as ArrayRecord in `data_dir`; returns its version folder."""
  with monkeypatch.context() as m:
    # tfds 4.9.10 writes nested sequences (annotations/short_answers) through TensorInfo.dtype,
    # a TensorFlow dtype; its numpy dtype serialises the same without TensorFlow. Reading
    # (the code under test) is left unpatched.
    m.setattr(tfds_feature.TensorInfo, "dtype", property(lambda self: self.np_dtype))
    _NaturalQuestions(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir / "natural_questions" / "default" / "0.1.0"


def test_nq320k_from_prepared_natural_questions(tmp_path, monkeypatch):
  nq = tmp_path / "nq"
  folder = _prepare_natural_questions(nq, monkeypatch)
  data = datasets.load_retrieval("nq320k", nq, ["train", "dev"], tmp_path / "tfds")
  # Pages deduplicated by lower-cased title, first seen (train before validation) numbered.
  assert data.doc_ids == ("0", "1", "2")
  assert list(data.titles) == ["Romeo and Juliet", "Moon", "Python (language)"]
  assert list(data.texts) == [  # the page's non-HTML tokens, from its first record
      "Romeo and Juliet Romeo and Juliet is a tragedy by William Shakespeare",
      "Moon The Moon orbits the Earth", "Python (language) Guido van Rossum made it"]
  # What the builder was made from: the same, page texts read from natural_questions.
  direct = datasets.retrieval.load_natural_questions(nq)
  assert direct.doc_ids == data.doc_ids and direct.qrels == data.qrels
  assert direct.queries == data.queries and direct.titles == tuple(data.titles)
  for texts in (direct.texts, data.texts):
    assert texts[-2:] == list(data.texts)[1:] and texts[-3] == data.texts[0]
    with pytest.raises(IndexError, match=r"index 3 out of range \(3 items\)"):
      texts[3]  # pylint: disable=pointless-statement
  assert data.qrels == {"train": {"101": {"0": 1}, "102": {"1": 1}, "103": {"0": 1}},
                        "dev": {"201": {"1": 1}, "202": {"2": 1}}}
  assert data.queries["103"] == "when was romeo and juliet written"
  assert data.queries["202"] == "who created python" and len(data.queries) == 5
  builder = datasets.nq320k_builder(nq, tmp_path / "tfds")
  assert builder.builder_config.name.startswith("natural_questions-")
  assert builder.info.metadata["source"] == str(nq.resolve())
  assert builder.info.splits["train"].num_examples == 3
  # A copy only TensorFlow could read is refused with how to convert it.
  tfrecord = tmp_path / "tfrecord"
  copy = tfrecord / "natural_questions" / "default" / "0.1.0"
  copy.mkdir(parents=True)
  info = json.loads((folder / "dataset_info.json").read_text())
  (copy / "dataset_info.json").write_text(json.dumps(dict(info, fileFormat="tfrecord")))
  with pytest.raises(FileNotFoundError, match=r"prepared as tfrecord, which only TensorFlow "
                                              r"reads; .*tfds convert_format --dataset_version"):
    datasets.load_retrieval("nq320k", tfrecord, ["train"], tmp_path / "tfds")
  # Another config only: not NQ320k's; the message says both ways to get it.
  (copy.parents[1] / "longt5" / "0.1.0").mkdir(parents=True)
  (copy.parents[1] / "default").rename(copy.parents[1] / "old")
  with pytest.raises(FileNotFoundError, match=r"(?s)no prepared natural_questions/default in "
                                              r".*configs found: \['longt5', 'old'\].*NCI.*"
                                              r"file_format=array_record"):
    datasets.nq320k_builder(tfrecord, tmp_path / "tfds")


def _demo_arguments(**changes):
  d = demo.get_config("smoke").data
  args = dict(num_filler_words=d.num_filler_words, num_key_words=d.num_key_words,
              num_value_words=d.num_value_words, num_docs=d.num_docs, doc_length=d.doc_length,
              facts_per_doc=d.facts_per_doc, key_length=d.key_length, id_digits=d.id_digits,
              fact_span=d.get("fact_span"), seed=d.seed,
              positional_keys=d.get("positional_keys", False))
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


def test_synthetic_corpora_pass_id_after_fact_on():
  """`data.id_after_fact` reaches the generator (train and eval corpora); off, the arguments
  (and so the prepared datasets' names) are the ones before the option existed."""
  d = demo.get_config("smoke").data
  assert all("id_after_fact" not in a for a in datasets.synthetic.corpora(d).values())
  d.id_after_fact = True
  corpora = datasets.synthetic.corpora(d)
  assert all(a["id_after_fact"] is True for a in corpora.values())
  corpus = datasets.synthetic.generate(corpora["eval"])
  tok = corpus.tokenizer
  for m in range(corpus.num_docs):
    end = corpus.key_offset[m] + 1 + d.key_length + 1  # one fact per document
    assert corpus.doc_tokens[m, end:end + d.id_digits + 2].tolist() == corpus.identifier_ids(m)
    assert (corpus.doc_tokens[m] == tok.id_open_id).sum() == 1


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
def test_beir_config_reads_through_tfds_and_grain(nfcorpus_tfds):
  config = beir.get_config("smoke")
  config.data.data_dir = str(nfcorpus_tfds)
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
nq = datasets.load_retrieval("nq320k", sys.argv[3], ["train", "dev"], tmp)
assert nq.texts[2] == "Python (language) Guido van Rossum made it", list(nq.texts)
args = dict(num_filler_words=8, num_key_words=8, num_value_words=4, num_docs=4, doc_length=16,
            id_digits=2, seed=0)
assert datasets.synthetic.load_corpus(args, tmp).num_docs == 4
import grain
ds = grain.MapDataset.source(core.prepare(datasets.nq320k_builder(sys.argv[2], tmp))["corpus"])
assert core.text(next(iter(ds.to_iter_dataset()))["id"]) == data.doc_ids[0]
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
print(importlib.util.find_spec("tensorflow") is None, loaded, "tensorflow_datasets" in sys.modules)
"""


@pytest.mark.slow
def test_no_tensorflow_installed_or_imported(tmp_path, monkeypatch):
  natural_questions = tmp_path / "natural_questions_data"
  _prepare_natural_questions(natural_questions, monkeypatch)
  out = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, str(tmp_path), str(NQ_FIXTURE),
                        str(natural_questions)],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split("\n")[-2] == "True [] True", out.stdout[-2000:]


_PREPARE_IN_EACH_PROCESS = """
import sys
import jax
from msa_jax import datasets
from msa_jax.datasets import core
from msa_jax.runtime import distributed
assert distributed.initialize()
builder = datasets.nq320k_builder(sys.argv[1], sys.argv[2])
built = []
build = builder.download_and_prepare
builder.download_and_prepare = lambda **kw: built.append(kw) or build(**kw)
sources = core.prepare(builder)
dev = [core.text(r["id"]) for r in core.read_all(sources["dev"])]
print("PROCESS", jax.process_index(), len(built), len(sources["corpus"]), dev)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_prepare_once(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_DIR": str(tmp_path / "logs")}
  subprocess.run(["bash", str(REPO / "launch" / "local.sh"), "2", sys.executable, "-c",
                  _PREPARE_IN_EACH_PROCESS, str(NQ_FIXTURE), str(tmp_path / "tfds")],
                 check=True, env=env, timeout=300, cwd=REPO)
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  dev = sorted(retrieval.load_nq320k(NQ_FIXTURE).qrels["dev"])
  # Process 0 builds; process 1 waits for it at the barrier, then reads the same files.
  for i, log in enumerate(logs):
    assert f"PROCESS {i} {1 - i} 8 {dev}" in log, log[-3000:]


def test_default_data_dir(tfds_data_dir, monkeypatch):
  assert core.default_data_dir() == tfds_data_dir  # $MSA_JAX_TFDS_DIR (set by conftest)
  monkeypatch.delenv("MSA_JAX_TFDS_DIR")
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  assert core.default_data_dir() == Path.home() / ".cache" / "msa_jax" / "tfds"
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert core.default_data_dir() == Path("/xdg/msa_jax/tfds")
  assert core.data_dir_of("") == core.default_data_dir() and core.data_dir_of("/x") == Path("/x")


@pytest.mark.slow
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
