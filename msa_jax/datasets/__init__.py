"""tensorflow-datasets builders for the data msa_jax trains and evaluates on, read back through
`tfds.data_source` (ArrayRecord files) and grain, without TensorFlow.

  msa_beir       any BEIR-format folder (one config per folder): corpus, queries, judgements
  msa_nq320k     NQ320k from the NCI files or a prepared tfds natural_questions: corpus,
                 queries, train, dev
  msa_synthetic  the synthetic memory task's documents and questions (one config per
                 generator arguments)
  msa_niah       a needle-in-a-haystack task's memory documents, needles and questions

`load_retrieval(kind, path, splits, data_dir)` and `synthetic.load_corpus(arguments, data_dir)`
build a dataset into the data dir on first use (`core.prepare`) and reuse it afterwards; the
prepared folders can be inspected or shared (`tfds.data_source("msa_beir/<config>",
data_dir=...)`). The data flow of training is in `msa_jax.train.data`.
"""

from msa_jax.datasets import core, niah, retrieval, synthetic
from msa_jax.datasets.core import default_data_dir, prepare
from msa_jax.datasets.retrieval import (MsaBeir, MsaNq320k, beir_builder, load_retrieval,
                                        nq320k_builder)
from msa_jax.datasets.niah import MsaNiah
from msa_jax.datasets.synthetic import MsaSynthetic

__all__ = ["MsaBeir", "MsaNiah", "MsaNq320k", "MsaSynthetic", "beir_builder", "core",
           "default_data_dir", "load_retrieval", "niah", "nq320k_builder", "prepare", "retrieval",
           "synthetic"]
