"""tfds builders of the retrieval datasets: any BEIR-format folder (`msa_beir`) and NQ320k
(`msa_nq320k`) from the NCI files or from a prepared tfds `natural_questions`, and
`load_retrieval`, which training reads them through.

Both builders have one config per source folder, named after the folder and a fingerprint of
its files (e.g. `msa_beir/nfcorpus-1a2b3c4d`), and the same splits and features:

  corpus            one record per document, in corpus order: id, title, text
  queries           one record per question: id, text (title "")
  <judgement split> one record per judged question (BEIR's qrels/<split>.tsv; NQ320k's train
                    and dev): id, text, and its judged documents `doc_ids` with their
                    relevance grades `scores`

Ids are the dataset's own (BEIR `_id`, NCI docid / query id), so records are stable across
rebuilds; the corpus order (document m is the m-th record) is the one of the source files. The
parsing is `msa_jax.data.retrieval`'s `load_beir` / `load_nq320k`, and `load_natural_questions`
here for a tfds `natural_questions` prepared as ArrayRecord (read with `tfds.data_source`, no
TensorFlow).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from msa_jax.data import retrieval
from msa_jax.datasets import core

CORPUS, QUERIES = "corpus", "queries"
_FEATURES_DOC = """Features (every split): `id` (document or question id), `title` (document
title, "" for questions), `text` (document text or question), `doc_ids` / `scores` (the judged
documents of a question and their grades; empty in `corpus` and `queries`)."""


class _RetrievalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the retrieval builders: features, and examples from a `RetrievalData`."""

  BUILDER_CONFIG_CLASS = core.SourceConfig
  DESCRIPTION = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DESCRIPTION}\n\n{_FEATURES_DOC}",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "title": tfds.features.Text(),
            "text": tfds.features.Text(),
            "doc_ids": tfds.features.Sequence(tfds.features.Text()),
            "scores": tfds.features.Sequence(np.int32),
        }),
        disable_shuffling=True,  # record m of `corpus` is document m (its identifier `[m]`)
        metadata=tfds.core.MetadataDict(source=self.builder_config.source),
    )

  def _load(self) -> retrieval.RetrievalData:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # the data is local
    data = self._load()
    splits = {CORPUS: self._documents(data), QUERIES: self._queries(data)}
    for split in data.qrels:
      if split in splits:
        raise ValueError(f"{data.name}: a judgement split may not be named {split!r}")
      splits[split] = self._judgements(data, split)
    return splits

  def _generate_examples(self):  # the three generators below stand for it
    raise NotImplementedError

  @staticmethod
  def _documents(data: retrieval.RetrievalData):
    for m, (d, title, body) in enumerate(zip(data.doc_ids, data.titles, data.texts)):
      yield m, {"id": d, "title": title, "text": body, "doc_ids": [], "scores": []}

  @staticmethod
  def _queries(data: retrieval.RetrievalData):
    for i, (qid, question) in enumerate(data.queries.items()):
      yield i, {"id": qid, "title": "", "text": question, "doc_ids": [], "scores": []}

  @staticmethod
  def _judgements(data: retrieval.RetrievalData, split: str):
    for i, qid in enumerate(sorted(data.qrels[split])):
      judged = data.qrels[split][qid]
      yield i, {"id": qid, "title": "", "text": data.queries[qid], "doc_ids": list(judged),
                "scores": [int(g) for g in judged.values()]}


class MsaBeir(_RetrievalBuilder):
  """A BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) as a tfds dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Corpus, queries and graded judgements of a BEIR-format folder."}
  DESCRIPTION = ("A BEIR-format retrieval dataset (Thakur et al., 2021): the folder's corpus, "
                 "queries and every qrels/<split>.tsv, for MSA's generative retrieval.")

  def _load(self) -> retrieval.RetrievalData:
    return retrieval.load_beir(self.builder_config.source)


class MsaNq320k(_RetrievalBuilder):
  """NQ320k as a tfds dataset (splits train and dev), from the files the NCI preprocessing
  writes or from a prepared tfds `natural_questions` (see `nq320k_builder`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "NQ320k from the NCI files: 109,739 Wikipedia pages, train and "
                            "dev questions each judged relevant to the page answering it."}
  DESCRIPTION = ("NQ320k (Natural Questions over Wikipedia pages, as preprocessed by NCI, Wang "
                 "et al., 2022): pages as documents, each question judged relevant (grade 1) "
                 "to its page; from the NCI files or a prepared tfds natural_questions.")

  def _load(self) -> retrieval.RetrievalData:
    source = self.builder_config.source
    if natural_questions_dir(source) is not None:
      return load_natural_questions(source)
    return retrieval.load_nq320k(source)


# --------------------------------------------------------------------------------------------
# NQ320k from tfds' natural_questions
# --------------------------------------------------------------------------------------------

NATURAL_QUESTIONS = "natural_questions"
NATURAL_QUESTIONS_SPLITS = {"train": "train", "dev": "validation"}  # ours -> tfds'


def natural_questions_dir(path: str | os.PathLike) -> Path | None:
  """The version folder (`path/natural_questions/default/<version>`, the newest) of a prepared
  tfds `natural_questions` under the tfds data dir `path`; None when `path` holds none."""
  root = Path(path) / NATURAL_QUESTIONS / "default"
  infos = root.glob(f"*/{tfds.core.constants.DATASET_INFO_FILENAME}") if root.is_dir() else []
  versions = {f.parent.name: f.parent for f in infos if tfds.core.Version.is_valid(f.parent.name)}
  if not versions:
    return None
  return versions[str(max(tfds.core.Version(v) for v in versions))]


def _prepared_natural_questions(path: str | os.PathLike) -> Path:
  """`natural_questions_dir(path)`, checked to be readable without TensorFlow.

  Raises:
    FileNotFoundError: nothing prepared under `path`, or prepared as TFRecord (which only
      TensorFlow reads); the message says how to prepare or convert it.
  """
  folder = natural_questions_dir(path)
  if folder is None:
    other = Path(path) / NATURAL_QUESTIONS
    found = sorted(p.name for p in other.iterdir() if p.is_dir()) if other.is_dir() else []
    raise FileNotFoundError(f"no prepared {NATURAL_QUESTIONS}/default in tfds data dir {path} "
                            f"(configs found: {found or 'none'}).\n{retrieval.NQ320K_HOWTO}")
  info = json.loads((folder / tfds.core.constants.DATASET_INFO_FILENAME).read_text())
  file_format = info.get("fileFormat") or "tfrecord"  # tfds leaves it out for TFRecord
  if file_format != core.FILE_FORMAT:
    raise FileNotFoundError(
        f"{folder} is prepared as {file_format}, which only TensorFlow reads; convert it once "
        f"to ArrayRecord where TensorFlow is installed: `tfds convert_format "
        f"--dataset_version_dir={folder} --out_file_format={core.FILE_FORMAT}` (it writes "
        f"next to the {file_format} files), then point --config.data.path at {path} again.")
  return folder


class _PageTexts(core.OnDemand):
  """The texts of the NQ320k pages, read on demand: page m's is `page_text` of the record
  `where[m]` of natural_questions.

  Args:
    sources: tfds split -> data source.
    where: [M] (tfds split, record index) of each page's first question.
  """

  def __init__(self, sources: Mapping[str, Any], where: Sequence[tuple[str, int]]):
    self.sources = sources
    self.where = where

  def __len__(self) -> int:
    return len(self.where)

  def _read(self, i: int) -> str:
    split, record = self.where[i]
    return page_text(self.sources[split][record]["document"]["tokens"])


def page_text(tokens: Mapping[str, Sequence[Any]]) -> str:
  """A natural_questions page's text: its non-HTML tokens (`document/tokens`), joined by
  spaces."""
  return " ".join(core.text(t) for t, html in zip(tokens["token"], tokens["is_html"])
                  if not html)


def load_natural_questions(path: str | os.PathLike) -> retrieval.RetrievalData:
  """NQ320k from the tfds `natural_questions` (config `default`) prepared as ArrayRecord in the
  tfds data dir `path`, read with `tfds.data_source` (no TensorFlow, no download).

  As NCI builds NQ320k: every question of the train and validation splits (ours: train and
  dev) is judged relevant (grade 1) to its Wikipedia page; pages are deduplicated by title,
  compared in lower case (the first record with a title, train before validation, gives the
  page), numbered in that order (ids "0", "1", ...); a page's text is its non-HTML tokens
  (`page_text`), read on demand. Question ids are NQ's example ids.

  Raises:
    FileNotFoundError: no ArrayRecord `natural_questions` under `path` (see
      `_prepared_natural_questions`).
    ValueError: a split without records.
  """
  folder = _prepared_natural_questions(path)
  name = f"{NATURAL_QUESTIONS}/default:{folder.name}"
  sources = tfds.data_source(name, data_dir=str(path))
  titles: list[str] = []
  where: list[tuple[str, int]] = []
  by_title: dict[str, str] = {}
  queries: dict[str, str] = {}
  qrels: dict[str, dict[str, dict[str, int]]] = {}
  for ours, theirs in NATURAL_QUESTIONS_SPLITS.items():
    source = sources[theirs]
    if not len(source):
      raise ValueError(f"{folder}: split {theirs!r} has no records")
    judged: dict[str, dict[str, int]] = {}
    records = core.read_all(source, chunk=256)
    for i, r in enumerate(tfds.core.utils.tqdm(records, total=len(source), unit=" questions",
                                               desc=f"indexing {name} {theirs}")):
      title = core.text(r["document"]["title"])
      key = title.lower()
      if key not in by_title:
        by_title[key] = str(len(titles))
        titles.append(title)
        where.append((theirs, i))
      qid = core.text(r["id"])
      queries[qid] = core.text(r["question"]["text"])
      judged.setdefault(qid, {})[by_title[key]] = 1
    qrels[ours] = judged
  doc_ids = tuple(str(m) for m in range(len(titles)))
  return retrieval.RetrievalData(doc_ids, tuple(titles), _PageTexts(sources, where), queries,
                                 qrels, name=f"{name} in {path}")


def _config(path: str | os.PathLike, files: Sequence[Path]) -> core.SourceConfig:
  root = Path(path).resolve()
  return core.SourceConfig(name=core.config_name(root.name, core.files_fingerprint(files)),
                           source=str(root), description=f"built from {root}")


def beir_builder(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> MsaBeir:
  """The `msa_beir` builder of the BEIR folder `path`, in `data_dir` (default:
  `core.default_data_dir()`).

  Raises:
    FileNotFoundError: `path` is not a BEIR folder (the message says what is expected).
  """
  corpus, queries, qrels = retrieval.beir_files(path)
  return MsaBeir(config=_config(path, [corpus, queries, *qrels]),
                 data_dir=str(core.data_dir_of(data_dir)), file_format=core.FILE_FORMAT)


def nq320k_builder(path: str | os.PathLike, data_dir: str | os.PathLike | None = None
                   ) -> MsaNq320k:
  """The `msa_nq320k` builder of `path`, in `data_dir`: `path` holds the NCI files (see
  `retrieval.load_nq320k`) or is a tfds data dir with `natural_questions` prepared as
  ArrayRecord (see `load_natural_questions`).

  Raises:
    FileNotFoundError: neither (the message says how to obtain NQ320k), or a
      `natural_questions` TensorFlow would have to read (the message says how to convert it).
  """
  if (Path(path) / NATURAL_QUESTIONS).is_dir():
    folder = _prepared_natural_questions(path)
    files = sorted(f for f in folder.iterdir() if f.is_file())
    config = core.SourceConfig(
        name=core.config_name(NATURAL_QUESTIONS, core.files_fingerprint(files)),
        source=str(Path(path).resolve()), description=f"built from {folder}")
  else:
    config = _config(path, retrieval.nq320k_files(path))
  return MsaNq320k(config=config, data_dir=str(core.data_dir_of(data_dir)),
                   file_format=core.FILE_FORMAT)


BUILDERS = {"beir": beir_builder, "nq320k": nq320k_builder}


def from_sources(sources: Any, splits: Sequence[str], name: str) -> retrieval.RetrievalData:
  """The `RetrievalData` of prepared data sources (`core.prepare`'s split -> source).

  Document ids, questions and judgements of `splits` are read into memory; titles and texts
  stay in the ArrayRecord files and are read when a document is first tokenised.

  Raises:
    ValueError: a split the dataset does not have (the known ones are listed).
  """
  known = sorted(set(sources) - {CORPUS, QUERIES})
  for split in splits:
    if split not in known:
      raise ValueError(f"{name}: no split {split!r}; known: {known}")
  corpus = sources[CORPUS]
  doc_ids = tuple(core.text(r["id"]) for r in core.read_all(corpus))
  queries, qrels = {}, {}
  for split in splits:
    judged = {}
    for r in core.read_all(sources[split]):
      qid = core.text(r["id"])
      queries[qid] = core.text(r["text"])
      judged[qid] = {core.text(d): int(g) for d, g in zip(r["doc_ids"], r["scores"])}
    qrels[split] = judged
  return retrieval.RetrievalData(doc_ids, core.Column(corpus, "title"),
                                 core.Column(corpus, "text"), queries, qrels, name=name)


def load_retrieval(kind: str, path: str | os.PathLike, splits: Sequence[str],
                   data_dir: str | os.PathLike | None = None) -> retrieval.RetrievalData:
  """The dataset `kind` ("beir" or "nq320k") of the folder `path`, prepared into `data_dir` on
  first use and read back through `tfds.data_source` (see `from_sources`).

  Raises:
    ValueError: an unknown kind or split.
    FileNotFoundError: `path` lacks the dataset's files.
  """
  if kind not in BUILDERS:
    raise ValueError(f"data.kind={kind!r} has no tfds builder; known: {sorted(BUILDERS)}")
  builder = BUILDERS[kind](path, data_dir)
  sources = core.prepare(builder)
  return from_sources(sources, splits, f"{builder.info.full_name} ({path})")
