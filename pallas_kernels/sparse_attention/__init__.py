"""Top-k block-sparse attention for Memory Sparse Attention.

`kernel.py` the Pallas kernel, its block sizes and its custom VJP; `inputs.py` the checks and
defaults the kernel and the reference share; `reference.py` the dense jnp form (the tests'
oracle and the kernel's backward); `metadata.py` per-sample memory -> bank tables.
"""

from pallas_kernels.sparse_attention.kernel import SparseAttentionBlockSizes, sparse_attention
from pallas_kernels.sparse_attention.metadata import per_sample_memory_to_bank
from pallas_kernels.sparse_attention.reference import sparse_attention_reference

__all__ = [
    "SparseAttentionBlockSizes", "per_sample_memory_to_bank", "sparse_attention",
    "sparse_attention_reference",
]
