"""tfds builders of the retrieval datasets: any BEIR-format folder (`msa_beir`) and NQ320k from the
NCI files (`msa_nq320k`), and `load_retrieval`, which training reads them through.

Both builders have one config per source folder, named after the folder and a fingerprint of
its files (e.g. `msa_beir/nfcorpus-1a2b3c4d`), and the same splits and features:

  corpus            one record per document, in corpus order: id, title, text
  queries           one record per question: id, text (title "")
  <judgement split> one record per judged question (BEIR's qrels/<split>.tsv; NQ320k's train
                    and dev): id, text, and its judged documents `doc_ids` with their
                    relevance grades `scores`

Ids are the dataset's own (BEIR `_id`, NCI docid / query id), so records are stable across
rebuilds; the corpus order (document m is the m-th record) is the one of the source files. The
parsing is `msa_jax.data.retrieval`'s `load_beir` / `load_nq320k`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
  """NQ320k as the NCI preprocessing writes it, as a tfds dataset (splits train and dev)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "NQ320k from the NCI files: 109,739 Wikipedia pages, train and "
                            "dev questions each judged relevant to the page answering it."}
  DESCRIPTION = ("NQ320k (Natural Questions over Wikipedia pages, as preprocessed by NCI, Wang "
                 "et al., 2022): pages as documents, each question judged relevant (grade 1) "
                 "to its page.")

  def _load(self) -> retrieval.RetrievalData:
    return retrieval.load_nq320k(self.builder_config.source)


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
  """The `msa_nq320k` builder of the NCI files in `path`, in `data_dir`.

  Raises:
    FileNotFoundError: a missing file; the message says how to obtain NQ320k.
  """
  files = retrieval.nq320k_files(path)
  return MsaNq320k(config=_config(path, files), data_dir=str(core.data_dir_of(data_dir)),
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
