"""Fused routing scores for Memory Sparse Attention.

`xla.py` is the op's home (its checks and reductions, and the one-GEMM-per-tile XLA math that
bank routing and router adaptation use), `kernel.py` the Pallas kernel and its block sizes,
`reference.py` the literal einsum form the tests pin both to.
"""

from pallas_kernels.routing_scores.kernel import (RoutingBlockSizes, routing_chunk_scores,
                                                  routing_doc_scores)
from pallas_kernels.routing_scores.reference import (routing_chunk_scores_reference,
                                                     routing_doc_scores_reference)
from pallas_kernels.routing_scores.xla import (CHUNK_REDUCES, HEAD_REDUCES, QUERY_REDUCES,
                                               chunks_to_docs)

__all__ = [
    "CHUNK_REDUCES", "HEAD_REDUCES", "QUERY_REDUCES", "RoutingBlockSizes", "chunks_to_docs",
    "routing_chunk_scores", "routing_chunk_scores_reference", "routing_doc_scores",
    "routing_doc_scores_reference",
]
