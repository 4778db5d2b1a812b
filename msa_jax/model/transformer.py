"""The decoder-only backbone (Qwen3 / Llama) and helpers to initialise any model."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msa_jax.model import attention
from msa_jax.model import msa
from msa_jax.model.config import ModelConfig, MSAConfig

Dtype = Any
Cache = tuple[attention.KVCache, ...]


# The backbone's layers are MSA layers without a router; their MSA settings are never read.
_NO_MSA = MSAConfig(kernel_impl="xla")


class Transformer(msa.LayerStack):
  """Token ids -> next-token logits.

  Call with either
    * no cache: `tokens` [B, T] are one causal sequence per row (optionally several segments
      and padding via `segment_ids`, 0 = padding); `positions` default to 0..T-1; or
    * a cache (from `init_cache`): the T new tokens are written at slots
      cache_index[b] + 0..T-1 and attend to every earlier slot (prefill and decode alike).

  Returns (logits [B, T, V] in float32 (or wider dtype), updated cache or None).

  Its layers are `MSADecoderLayer`s without a router (the same block as the MSA model's), and
  it has `LayerStack`'s staged methods, which generation (`msa_jax.inference.decode`) runs.
  `scan_layers` scans its layers as one run (see `LayerStack`; same parameters, same math);
  `scan_decode` (None: unrolled on CPU, else as `scan_layers`) the decode steps' layers
  (`LayerStack.decode_step`).
  """

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = True
  scan_decode: bool | None = None

  def setup(self):
    self._build(_NO_MSA, ())

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: Cache | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    cfg = self.config
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    if cache is None:
      mask = attention.causal_mask(t, segment_ids)
    else:
      if len(cache) != cfg.num_layers:
        raise ValueError(f"cache has {len(cache)} layers, model has {cfg.num_layers}")
      if cache_index is None:
        raise ValueError("cache_index is required with a cache")
      if segment_ids is not None:
        raise ValueError("segment_ids are not supported together with a KV cache")
      mask = attention.cache_mask(cache_index, t, cache[0].k.shape[1])

    def step(_, layer, x, layer_cache):
      return layer.backbone(x, positions, mask, layer_cache, cache_index)

    x = nn.with_logical_constraint(self.embed_tokens(tokens), ("batch", "length", "embed"))
    x, new_cache = self._layer_range(0, cfg.num_layers, step, x,
                                     None if cache is None else lambda i: cache[i])
    return self.head(x), (None if cache is None else tuple(new_cache))

  def example_inputs(self) -> tuple[jax.Array]:
    """The smallest inputs `init` accepts (parameters do not depend on their shape)."""
    return (jnp.zeros((1, 1), jnp.int32),)

  def init_cache(self, batch: int, max_len: int, dtype: Dtype | None = None) -> Cache:
    cfg = self.config
    return attention.init_cache(cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim,
                                dtype or self.dtype)


def _init_variables(model: nn.Module, rng: jax.Array):
  return model.init(rng, *model.example_inputs())


def abstract_params(model: nn.Module):
  """Parameter shapes and dtypes (boxed with their logical axes), without allocating any.

  Works for any model with an `example_inputs()` method (Transformer, MSATransformer). The
  model's init is traced once per process and model (modules compare by their fields; ~2 s
  for SmolLM2's 30 layers, which a pretrained training start asked for three times); each
  call returns a tree of its own.
  """
  try:
    tree = _abstract_params(model)
  except TypeError:  # a module with an unhashable field
    tree = _abstract_params.__wrapped__(model)
  return jax.tree.map(lambda x: x, tree)


@functools.lru_cache(maxsize=16)
def _abstract_params(model: nn.Module):
  return jax.eval_shape(functools.partial(_init_variables, model), jax.random.key(0))["params"]


def param_logical_axes(model: nn.Module):
  """A tree of PartitionSpecs of logical axis names, one per parameter."""
  return nn.get_partition_spec(abstract_params(model))


def init_params(model: nn.Module, rng: jax.Array):
  """Randomly initialised parameters (plain arrays, logical-axis boxes removed)."""
  return nn.unbox(jax.jit(functools.partial(_init_variables, model))(rng)["params"])


def count_params(params) -> int:
  """Number of scalars in a parameter tree (concrete or abstract)."""
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))
