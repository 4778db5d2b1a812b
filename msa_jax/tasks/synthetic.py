"""The synthetic memory task (`data.kind = "synthetic"`, configs/demo.py).

Documents `<doc> [ 0 4 2 7 ] w3 w17 ... <fact> k5 k12 v9 ... w8` of a synthetic vocabulary,
questions `<query> k5 k12`, answers `<answer> [ 0 4 2 7 ] [v9] <eos>` (`msa_jax.data.synthetic`).
The corpus is generated in memory, or with `data.source = "tfds"` read back from its prepared
`msa_synthetic` dataset (the same corpus, on disk). Evaluators: "extrapolation" (train short,
infer long, after training) and "niah" (`python -m msa_jax.niah`).
"""

from __future__ import annotations

import jax
import numpy as np

from msa_jax.data import synthetic
from msa_jax.datasets import synthetic as datasets_synthetic
from msa_jax.tasks import base

SOURCES = ("generate", "tfds")
TEMPLATE = base.Template(head="", question_prefix="<query> ", answer_marker="<answer>")


def tokenizer_of(d) -> synthetic.SyntheticTokenizer:
  """The synthetic vocabulary of a `data` section."""
  return synthetic.SyntheticTokenizer(d["num_filler_words"], d["num_key_words"],
                                      d["num_value_words"])


class SyntheticTask(base.Task):
  """The synthetic memory task."""

  name = "synthetic"
  evaluators = ("extrapolation", "niah")

  def tokenizer(self, config):
    return tokenizer_of(config.data)

  def template(self, data) -> base.Template:
    return TEMPLATE

  def data(self, config):
    d = config.data
    tok = self.tokenizer(config)
    source = d.get("source", "generate")
    if source not in SOURCES:
      raise ValueError(f"data.source={source!r} is not supported; known: {SOURCES}")
    if source == "tfds":  # materialised by the msa_synthetic builder, read back
      loaded = {k: datasets_synthetic.load_corpus(args, d.get("data_dir"))
                for k, args in datasets_synthetic.corpora(d).items()}
    else:
      loaded = {k: datasets_synthetic.generate(args)
                for k, args in datasets_synthetic.corpora(d).items()}
    corpus, held_out = loaded["train"], loaded["eval"]
    spec = synthetic.BatchSpec(
        batch_size=config.train.batch_size, docs_per_sample=d.docs_per_sample,
        position_offset=config.msa.top_k, include_value=d.include_value,
        include_identifier=d.get("include_identifier", True), seed=d.seed,
        global_positions=base.rope_is_global(d), hard_negatives=d.get("hard_negatives", 0),
        hard_negatives_after=d.get("hard_negatives_after", 0))
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    iterator = base.make_iterator(
        d, "python", lambda: synthetic.SyntheticBatchIterator(corpus, spec, **shard),
        lambda: synthetic.grain_dataset(corpus, spec, **shard))
    rng = np.random.default_rng(d.seed + 1)
    b = config.train.batch_size
    rows = base.process_rows(b)
    eval_batches = [synthetic.build_batch(held_out, np.arange(i, i + b), spec, rng, rows)
                    for i in range(0, held_out.num_questions - b + 1, b)]
    return tok, iterator, eval_batches[:config.train.eval_batches]


TASK = SyntheticTask()
