"""Training data from the config: `make_data(config) -> (tokenizer, iterator, eval batches)`.

`config.data.kind` picks the source. The iterator yields `MSABatch`es of numpy arrays and has
`get_state()` / `set_state()` (a JSON-able dict stored with every checkpoint).
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from msa_jax.data import synthetic


def _synthetic_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for the synthetic memory task."""
  d = cfg.data
  tok = synthetic.SyntheticTokenizer(d.num_filler_words, d.num_key_words, d.num_value_words)
  corpus_of = functools.partial(
      synthetic.generate_corpus, tok, doc_length=d.doc_length, facts_per_doc=d.facts_per_doc,
      key_length=d.key_length, id_digits=d.id_digits)
  corpus = corpus_of(num_docs=d.num_docs, seed=d.seed)
  spec = synthetic.BatchSpec(
      batch_size=cfg.train.batch_size, docs_per_sample=d.docs_per_sample,
      position_offset=cfg.msa.top_k, include_value=d.include_value, seed=d.seed)
  held_out = corpus_of(num_docs=d.eval_docs, seed=d.seed + 1_000_003)  # other docs and keys
  iterator = synthetic.SyntheticBatchIterator(corpus, spec)
  rng = np.random.default_rng(d.seed + 1)
  b = cfg.train.batch_size
  eval_batches = [synthetic.build_batch(held_out, np.arange(i, i + b), spec, rng)
                  for i in range(0, held_out.num_questions - b + 1, b)][:cfg.train.eval_batches]
  return tok, iterator, eval_batches


_SOURCES = {"synthetic": _synthetic_data}


def make_data(cfg: ml_collections.ConfigDict):
  """(tokenizer, train iterator, eval batches) for `cfg.data.kind`."""
  kind = cfg.data.kind
  if kind not in _SOURCES:
    raise ValueError(f"data.kind={kind!r} is not supported; known: {sorted(_SOURCES)}")
  return _SOURCES[kind](cfg)
