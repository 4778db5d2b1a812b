"""tfds builder of needle-in-a-haystack tasks (`msa_niah`): the memory documents, needles and
questions of a `msa_jax.data.niah.build_niah` call, to inspect or share what an
evaluation asked.

One config per set of arguments (tokenizer sizes, the variant, sizes, seed), named after the
variant, memory size and seed plus a fingerprint (e.g. `msa_niah/multikey_600tok_seed3-1a2b3c4d`).
Splits and features (one feature set for all three):

  documents  record i is memory document i: `text`, `num_tokens`
  needles    record j is needle j (haystack order): `text` (`<fact> key value`), `key`,
             `values` ([value]), `depth`, `docs` (the documents holding it)
  questions  record q is question q: `text` (the query), `key`, `values` (every expected value),
             `needles` (their needle records), `docs` (the documents holding one of them)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from msa_jax.data import niah, synthetic
from msa_jax.datasets import core

DOCUMENTS, NEEDLES, QUESTIONS = "documents", "needles", "questions"
TOKENIZER_ARGS = ("num_filler_words", "num_key_words", "num_value_words")


class MsaNiah(tfds.core.GeneratorBasedBuilder):
  """A NIAH task (haystack split into memory documents, needles, questions) as a tfds dataset.
  The config's `source` holds the `build_niah` arguments (JSON)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents, needles and questions of niah.build_niah."}
  BUILDER_CONFIG_CLASS = core.SourceConfig

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "A RULER-style needle-in-a-haystack task over the synthetic vocabulary "
            "(msa_jax.data.niah): filler sentences with `<fact> key value` needles, "
            "split into memory documents; a question names a key and expects its values. "
            "Features: `text` (document, needle sentence or query), `num_tokens` (of a "
            "document), `key`, `values`, `depth` (of a needle; -1 elsewhere), `docs` (the "
            "documents holding the needle / the question's needles), `needles` (a question's "
            "needle records)."),
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "num_tokens": np.int64,
            "key": tfds.features.Text(),
            "values": tfds.features.Sequence(tfds.features.Text()),
            "depth": np.float32,
            "docs": tfds.features.Sequence(np.int64),
            "needles": tfds.features.Sequence(np.int64),
        }),
        disable_shuffling=True,  # record i is document / needle / question i
        metadata=tfds.core.MetadataDict(arguments=json.loads(self.builder_config.source)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated, nothing to download
    task = build(json.loads(self.builder_config.source))
    return {DOCUMENTS: self._documents(task), NEEDLES: self._needles(task),
            QUESTIONS: self._questions(task)}

  def _generate_examples(self):  # the three generators below stand for it
    raise NotImplementedError

  @staticmethod
  def _empty() -> dict[str, Any]:
    return {"num_tokens": 0, "key": "", "values": [], "depth": -1.0, "docs": [], "needles": []}

  def _documents(self, task):
    for i, seg in enumerate(task.segments):
      yield i, dict(self._empty(), text=seg.text, num_tokens=seg.num_tokens)

  def _needles(self, task):
    for j, needle in enumerate(task.needles):
      yield j, dict(self._empty(), text=task.text[needle.start:needle.end], key=needle.key,
                    values=[needle.value], depth=needle.depth, docs=list(needle.docs))

  def _questions(self, task):
    for q, question in enumerate(task.questions):
      yield q, dict(self._empty(), text=question.query, key=question.key,
                    values=list(question.values), docs=list(question.doc_ids),
                    needles=list(question.needles))


def build(arguments: Mapping[str, Any]):
  """`niah.build_niah` of the arguments (tokenizer sizes, `spec`: a preset name, and its
  keywords)."""
  args = dict(arguments)
  tok = synthetic.SyntheticTokenizer(*(args.pop(k) for k in TOKENIZER_ARGS))
  return niah.build_niah(tok, args.pop("spec"), **args)


def builder(arguments: Mapping[str, Any], data_dir: str | os.PathLike | None = None
            ) -> MsaNiah:
  """The `msa_niah` builder of `build(arguments)`, in `data_dir`.

  Raises:
    ValueError: arguments lacking a tokenizer size, the spec or the sizes.
  """
  missing = [k for k in (*TOKENIZER_ARGS, "spec", "memory_tokens", "doc_tokens")
             if k not in arguments]
  if missing:
    raise ValueError(f"NIAH dataset arguments lack {missing}")
  source = json.dumps(dict(arguments), sort_keys=True)
  stem = (f"{arguments['spec']}_{arguments['memory_tokens']}tok"
          f"_seed{arguments.get('seed', 0)}")
  config = core.SourceConfig(name=core.config_name(stem, core.fingerprint([source])),
                             source=source, description=f"build_niah({source})")
  return MsaNiah(config=config, data_dir=str(core.data_dir_of(data_dir)),
                 file_format=core.FILE_FORMAT)
