"""tfds builder of the synthetic memory task (`msa_synthetic`): the exact documents and questions
of a `msa_jax.data.synthetic.generate_corpus` call, to inspect or share what a run trained on.

One config per set of generator arguments (tokenizer sizes included), named after the corpus
size and seed plus a fingerprint of the arguments (e.g. `msa_synthetic/docs8_seed0-1a2b3c4d`).
Splits:

  documents  record m is document m of the corpus: its tokens, identifier, text and index in
             the seed's document sequence (`first_doc + m`)
  questions  record q is question q (one per fact): the key's tokens, the value's tokens, the
             record of the document holding the fact and the fact's position in it, the text

`load_corpus` reads a prepared dataset back into the `SyntheticCorpus` the generator returns
(training with `data.source = "tfds"` does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from msa_jax.data import synthetic
from msa_jax.datasets import core

DOCUMENTS, QUESTIONS = "documents", "questions"
TOKENIZER_ARGS = ("num_filler_words", "num_key_words", "num_value_words")


class MsaSynthetic(tfds.core.GeneratorBasedBuilder):
  """The synthetic memory task's corpus (documents with hidden key -> value facts, one question
  per fact) as a tfds dataset. The config's `source` holds the generator arguments (JSON)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents and questions of synthetic.generate_corpus."}
  BUILDER_CONFIG_CLASS = core.SourceConfig

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "MSA's synthetic memory task (msa_jax.data.synthetic): documents `<doc> [ id ] "
            "filler <fact> key value filler` (`<doc> filler <fact> key value [ id ] filler` "
            "with id_after_fact); a question names a key, its answer is the "
            "identifier of the document holding it. Features: `tokens` (document tokens, or "
            "the question's key), `values` (the question's value; empty for documents), "
            "`doc` (a document's index in the seed's document sequence; a question's document "
            "record), `offset` (the "
            "fact's `<fact>` position in that document; -1 for documents), `identifier` "
            "(digits; \"\" for questions), `text` (the tokens as words)."),
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Sequence(np.int32),
            "values": tfds.features.Sequence(np.int32),
            "doc": np.int64,
            "offset": np.int32,
            "identifier": tfds.features.Text(),
            "text": tfds.features.Text(),
        }),
        disable_shuffling=True,  # record i is document / question i
        metadata=tfds.core.MetadataDict(arguments=json.loads(self.builder_config.source)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated, nothing to download
    corpus = generate(json.loads(self.builder_config.source))
    return {DOCUMENTS: self._documents(corpus), QUESTIONS: self._questions(corpus)}

  def _generate_examples(self):  # the two generators below stand for it
    raise NotImplementedError

  @staticmethod
  def _documents(corpus: synthetic.SyntheticCorpus):
    tok = corpus.tokenizer
    index = np.arange(corpus.num_docs) if corpus.doc_index is None else corpus.doc_index
    for m, row in enumerate(corpus.doc_tokens):
      yield m, {"tokens": row, "values": np.zeros((0,), np.int32), "doc": int(index[m]),
                "offset": -1,
                "identifier": f"{int(corpus.identifiers[m]):0{corpus.id_digits}d}",
                "text": tok.decode(row.tolist())}

  @staticmethod
  def _questions(corpus: synthetic.SyntheticCorpus):
    tok = corpus.tokenizer
    for q in range(corpus.num_questions):
      yield q, {"tokens": corpus.keys[q], "values": corpus.values[q],
                "doc": int(corpus.key_doc[q]), "offset": int(corpus.key_offset[q]),
                "identifier": "", "text": tok.decode(corpus.question_ids(q))}


def generate(arguments: Mapping[str, Any]) -> synthetic.SyntheticCorpus:
  """`synthetic.generate_corpus` of the arguments (tokenizer sizes + generator keywords)."""
  args = dict(arguments)
  tok = synthetic.SyntheticTokenizer(*(args.pop(k) for k in TOKENIZER_ARGS))
  return synthetic.generate_corpus(tok, **args)


def builder(arguments: Mapping[str, Any], data_dir: str | os.PathLike | None = None
            ) -> MsaSynthetic:
  """The `msa_synthetic` builder of `generate(arguments)`, in `data_dir`.

  Raises:
    ValueError: arguments lacking a tokenizer size.
  """
  missing = [k for k in TOKENIZER_ARGS if k not in arguments]
  if missing:
    raise ValueError(f"synthetic dataset arguments lack {missing}")
  source = json.dumps(dict(arguments), sort_keys=True)
  first = arguments.get("first_doc", 0)
  stem = (f"docs{arguments.get('num_docs')}" + (f"_from{first}" if first else "")
          + f"_seed{arguments.get('seed', 0)}")
  config = core.SourceConfig(name=core.config_name(stem, core.fingerprint([source])),
                             source=source, description=f"generate_corpus({source})")
  return MsaSynthetic(config=config, data_dir=str(core.data_dir_of(data_dir)),
                      file_format=core.FILE_FORMAT)


def load_corpus(arguments: Mapping[str, Any], data_dir: str | os.PathLike | None = None
                ) -> synthetic.SyntheticCorpus:
  """The corpus of `arguments`, prepared into `data_dir` on first use and read back through
  `tfds.data_source` (equal, array for array, to `generate(arguments)`)."""
  sources = core.prepare(builder(arguments, data_dir))
  args = dict(arguments)
  tok = synthetic.SyntheticTokenizer(*(args[k] for k in TOKENIZER_ARGS))
  docs = list(core.read_all(sources[DOCUMENTS]))
  questions = list(core.read_all(sources[QUESTIONS]))
  return synthetic.SyntheticCorpus(
      tokenizer=tok,
      doc_tokens=np.stack([np.asarray(d["tokens"], np.int32) for d in docs]),
      identifiers=np.array([int(core.text(d["identifier"])) for d in docs], np.int64),
      id_digits=len(core.text(docs[0]["identifier"])),
      keys=np.stack([np.asarray(q["tokens"], np.int32) for q in questions]),
      values=np.stack([np.asarray(q["values"], np.int32) for q in questions]),
      key_doc=np.array([q["doc"] for q in questions], np.int32),
      key_offset=np.array([q["offset"] for q in questions], np.int32),
      seed=int(args.get("seed", 0)), doc_index=np.array([d["doc"] for d in docs], np.int64))


def corpora(d: Any) -> dict[str, dict[str, Any]]:
  """For a `data` config section, the generator arguments (`generate`) of the synthetic task's
  training corpus ("train": documents [0, num_docs)) and held-out evaluation corpus ("eval":
  the documents after the training ones, with other keys and identifiers, never seen)."""
  common = dict(num_filler_words=d.num_filler_words, num_key_words=d.num_key_words,
                num_value_words=d.num_value_words, doc_length=d.doc_length,
                facts_per_doc=d.facts_per_doc, key_length=d.key_length,
                id_digits=d.id_digits, fact_span=d.get("fact_span"))
  if d.get("positional_keys", False):  # only when set: other configs keep their fingerprints
    common["positional_keys"] = True
  if d.get("id_after_fact", False):  # likewise
    common["id_after_fact"] = True
  return {"train": dict(common, num_docs=d.num_docs, seed=d.seed),
          "eval": dict(common, num_docs=d.eval_docs, seed=d.seed, first_doc=d.num_docs)}
