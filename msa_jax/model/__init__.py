"""Backbone model.

Einsum letters, used the same way across the repo:
  B batch, T tokens (queries), S key/cache slots, E embed, F MLP hidden, V vocab,
  H query heads, J kv heads, R query heads per kv head (H = J*R), D head dim.
Reserved for the MSA layers: N memory documents, G document tokens, C chunks,
  K top-k documents, P chunk (pooling) size.
"""

from msa_jax.model.attention import KVCache, dot_product_attention, init_cache
from msa_jax.model.config import PRESETS, ModelConfig, get_preset
from msa_jax.model.transformer import (Transformer, abstract_params, count_params, init_params,
                                       param_logical_axes)

__all__ = [
    "KVCache", "ModelConfig", "PRESETS", "Transformer", "abstract_params", "count_params",
    "dot_product_attention", "get_preset", "init_cache", "init_params", "param_logical_axes",
]
