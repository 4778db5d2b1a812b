"""Retrieval evaluation of a trained MSA checkpoint against BM25, with memory-size scaling.

  python -m msa_jax.evaluate --config=configs/evaluate.py --workdir=/tmp/msa_beir_eval \
      --config.checkpoint_workdir=/tmp/msa_beir

`checkpoint_workdir` is a workdir of `python -m msa_jax.train --config=configs/beir.py` (or
configs/nq320k.py); the dataset defaults to the training run's (`data.kind`, `data.path`) and
its eval split. Another BEIR folder: `--config.data.kind=beir --config.data.path=/path/to/scifact
--config.data.splits=test`. Results: `<workdir>/results.json`, a table on stdout,
`<workdir>/scaling_<split>.png`; the encoded memory stays in `<workdir>/bank` and is reused
while the model and documents are unchanged. Variant `:smoke` evaluates a handful of queries on
a capped corpus (for tests). Run from the repository root.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint_workdir = ""  # required: the training workdir (config.json + checkpoints/)
  c.checkpoint_step = ml_collections.FieldReference(None, field_type=int)  # None: the latest
  # Dataset: "" / empty list = the training config's kind, path and eval split.
  c.data = ml_collections.ConfigDict(dict(kind="", path="", splits=[""]))
  c.max_queries = 0  # per split, a seeded sample of the queries (0: all)
  # Memory: the corpus, or (corpus_cap > 0) the evaluated queries' relevant documents plus a
  # seeded sample of the others, corpus_cap documents in all.
  c.corpus_cap = 0
  c.seed = 0
  c.bank_path = ""  # "": <workdir>/bank, re-encoded when stale; a path: used as is or refused
  c.bank_dtype = "float32"
  c.encode_batch_size = 16
  c.query_batch_size = 16
  c.top_n = 100  # ranking depth of the router and BM25 rankings
  c.generative = "auto"  # "auto" (when the training LM target is `[m]`), "yes", "no"
  c.bm25_stemmer = "english"  # Snowball (PyStemmer), as the published BEIR BM25; "" for none
  c.scaling = ml_collections.ConfigDict(dict(
      enabled=True,
      base_docs=100,  # 1x = the relevant documents + base_docs sampled distractors
      factor=10,  # sizes 1x, 10x, 100x, ... up to the memory (max_docs: a lower cap, 0: none)
      max_docs=0,
      plot_metrics=["ndcg@10", "recall@100", "hit@1"]))
  if arg == "smoke":
    c.max_queries = 4
    c.corpus_cap = 40
    c.query_batch_size = 4
    c.scaling.base_docs = 4
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/evaluate.py; known: 'smoke'")
  return c
