"""Tokenizers: a fast byte-level BPE tokenizer built from GGUF metadata or an HF directory."""

from msa_jax.data.tokenizer import Tokenizer, read_gguf_metadata

__all__ = ["Tokenizer", "read_gguf_metadata"]
