"""Top-k block-sparse attention for Memory Sparse Attention: kernel, reference, metadata."""

from pallas_kernels.sparse_attention.kernel import sparse_attention
from pallas_kernels.sparse_attention.metadata import per_sample_memory_to_bank
from pallas_kernels.sparse_attention.reference import (SparseAttentionBlockSizes,
                                                       sparse_attention_reference)

__all__ = [
    "SparseAttentionBlockSizes", "per_sample_memory_to_bank", "sparse_attention",
    "sparse_attention_reference",
]
