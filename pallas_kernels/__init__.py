"""Pallas GPU kernels for Memory Sparse Attention, each next to a pure-jnp reference.

* `routing_scores`: stream the bank's pooled routing keys K̄^R once and score every document
  (dots + head reduce + query reduce fused; chunk -> document as a segment op after).
* `sparse_attention`: query tokens attend, with one online softmax, to the pooled K̄/V̄ blocks
  of their top-k documents (gathered by index from the flat bank, no copy) and to their own
  causal kv; decode and prefill shapes, GQA, a custom VJP (XLA backward).

Each package has `kernel.py` (the public wrapper around a `pallas_call`), `reference.py` (the
same signature in plain jnp; sparse_attention's also holds its block sizes and input checks,
routing_scores keeps its block sizes in `kernel.py` and the op's definitions in `xla.py`), and
`benchmark.py` (`python -m pallas_kernels.<name>.benchmark [--small]`). The kernels use the
Pallas Triton lowering (see the kernel modules' docstrings for why) and run anywhere with
`interpret=True`. `implementation(name, impl)` maps a config switch ("xla" | "pallas") to
the function; `default_impl()` is "pallas" where a GPU is visible, "xla" elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from pallas_kernels._common import IMPLS, check_impl, default_impl, resolves_to_pallas
from pallas_kernels.routing_scores import (RoutingBlockSizes, routing_chunk_scores,
                                           routing_chunk_scores_reference, routing_doc_scores,
                                           routing_doc_scores_reference)
from pallas_kernels.sparse_attention import (SparseAttentionBlockSizes, per_sample_memory_to_bank,
                                             sparse_attention, sparse_attention_reference)

_IMPLEMENTATIONS = {
    "routing_doc_scores": {"xla": routing_doc_scores_reference, "pallas": routing_doc_scores},
    "routing_chunk_scores": {"xla": routing_chunk_scores_reference,
                             "pallas": routing_chunk_scores},
    "sparse_attention": {"xla": sparse_attention_reference, "pallas": sparse_attention},
}


def implementation(name: str, impl: str | None = None) -> Callable:
  """The function behind kernel `name` for `impl` ("xla" | "pallas"; None: `default_impl()`).

  Both have the same signature; pass `interpret=True` to run "pallas" without a GPU.
  """
  if name not in _IMPLEMENTATIONS:
    raise ValueError(f"name={name!r}; expected one of {sorted(_IMPLEMENTATIONS)}")
  return _IMPLEMENTATIONS[name][check_impl(default_impl() if impl is None else impl)]


__all__ = [
    "IMPLS", "RoutingBlockSizes", "SparseAttentionBlockSizes", "default_impl", "implementation",
    "per_sample_memory_to_bank", "resolves_to_pallas", "routing_chunk_scores", "routing_chunk_scores_reference",
    "routing_doc_scores", "routing_doc_scores_reference", "sparse_attention",
    "sparse_attention_reference",
]
