"""Backbone model.

Einsum letters, used the same way across the repo:
  B batch, T tokens (queries), S key/cache slots, E embed, F MLP hidden, V vocab,
  H query heads, J kv heads, R query heads per kv head (H = J*R), D head dim.
MSA: N memory documents, G document tokens, C chunks per document, K selected documents,
  P chunk (pooling) size.

The MSA model (`msa.MSATransformer`) takes an `MSABatch` (batch.py) and returns `MSAOutput`;
`msa.compute_losses` gives the weighted training loss. Routing math is in routing.py, losses in
losses.py.
"""

from msa_jax.model.attention import KVCache, dot_product_attention, init_cache
from msa_jax.model.batch import IGNORE, BatchError, MSABatch, check_batch
from msa_jax.model.config import (PRESETS, ModelConfig, MSAArch, MSAConfig, MSALoss,
                                  MSARuntime, get_preset)
from msa_jax.model.msa import MSAOutput, MSATransformer, Route, compute_losses
from msa_jax.model.transformer import (Transformer, abstract_params, count_params, init_params,
                                       param_logical_axes)

__all__ = [
    "BatchError", "IGNORE", "KVCache", "MSAArch", "MSABatch", "MSAConfig", "MSALoss",
    "MSAOutput", "MSARuntime", "MSATransformer", "ModelConfig", "PRESETS", "Route",
    "Transformer", "abstract_params", "check_batch", "compute_losses", "count_params",
    "dot_product_attention", "get_preset", "init_cache", "init_params", "param_logical_axes",
]
