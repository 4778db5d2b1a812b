"""Tokenizers (a fast byte-level BPE tokenizer built from GGUF metadata or an HF directory, and a
word-level one for the synthetic task) and the synthetic memory task's data pipeline."""

from msa_jax.data.synthetic import (
    BatchSpec,
    EvalBatch,
    SyntheticBatchIterator,
    SyntheticBatchSource,
    SyntheticCorpus,
    SyntheticTokenizer,
    build_batch,
    chunked_memory_batches,
    corpus_memory,
    generate_corpus,
    grain_dataset,
    whole_memory_batch,
)
from msa_jax.checkpoint.gguf_file import read_gguf_metadata
from msa_jax.checkpoint.tokenizer import Tokenizer

__all__ = [
    "BatchSpec",
    "EvalBatch",
    "SyntheticBatchIterator",
    "SyntheticBatchSource",
    "SyntheticCorpus",
    "SyntheticTokenizer",
    "Tokenizer",
    "build_batch",
    "chunked_memory_batches",
    "corpus_memory",
    "generate_corpus",
    "grain_dataset",
    "read_gguf_metadata",
    "whole_memory_batch",
]
