"""Pallas GPU kernels for Memory Sparse Attention, each next to a pure-jnp reference.

* `routing_scores`: stream the bank's pooled routing keys K̄^R once and score every document
  (dots + head reduce + query reduce fused; chunk -> document as a segment op after).
* `sparse_attention`: query tokens attend, with one online softmax, to the pooled K̄/V̄ blocks
  of their top-k documents (gathered by index from the flat bank, no copy) and to their own
  causal kv; decode and prefill shapes, GQA, a custom VJP (XLA backward).

Each package has `kernel.py` (the public wrapper around a `pallas_call`, its block-size
dataclass and its custom VJP, whose backward is the reference's in XLA), `reference.py` (the
same signature in plain jnp, the tests' oracle), the op's shared definitions (routing_scores:
`xla.py`, its checks, reductions and the one-GEMM-per-tile XLA math bank routing runs;
sparse_attention: `inputs.py`, its checks and defaults) and `benchmark.py` (an absl app:
`python -m pallas_kernels.<name>.benchmark --config=configs/kernel_benchmarks.py[:small]`).
The kernels use the Pallas Triton lowering (see the kernel modules' docstrings for why) and
run anywhere with `interpret=True`.

`resolves_to_pallas(kernel_impl, head_dim)` is the one rule that maps the config switch
`kernel_impl` ("auto" | "xla" | "pallas") onto the kernels; the model and bank routing call a
kernel where it says so and run their own XLA math otherwise.
"""

from __future__ import annotations

from pallas_kernels._common import resolves_to_pallas
from pallas_kernels.routing_scores import (RoutingBlockSizes, routing_chunk_scores,
                                           routing_chunk_scores_reference, routing_doc_scores,
                                           routing_doc_scores_reference)
from pallas_kernels.sparse_attention import (SparseAttentionBlockSizes, per_sample_memory_to_bank,
                                             sparse_attention, sparse_attention_reference)

__all__ = [
    "RoutingBlockSizes", "SparseAttentionBlockSizes", "per_sample_memory_to_bank",
    "resolves_to_pallas", "routing_chunk_scores", "routing_chunk_scores_reference",
    "routing_doc_scores", "routing_doc_scores_reference", "sparse_attention",
    "sparse_attention_reference",
]
