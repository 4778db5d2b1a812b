"""Fused routing scores for Memory Sparse Attention: kernel, reference, block sizes."""

from pallas_kernels.routing_scores.kernel import routing_chunk_scores, routing_doc_scores
from pallas_kernels.routing_scores.reference import (CHUNK_REDUCES, HEAD_REDUCES, QUERY_REDUCES,
                                                     RoutingBlockSizes, chunks_to_docs,
                                                     routing_chunk_scores_reference,
                                                     routing_doc_scores_reference)

__all__ = [
    "CHUNK_REDUCES", "HEAD_REDUCES", "QUERY_REDUCES", "RoutingBlockSizes", "chunks_to_docs",
    "routing_chunk_scores", "routing_chunk_scores_reference", "routing_doc_scores",
    "routing_doc_scores_reference",
]
