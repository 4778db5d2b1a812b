"""Randomly initialised model parameters for tests, made op by op.

`msa_jax.model.init_params` compiles a model's whole init program: 2.7-3.9 s at the tests'
compile flags for a 4-6 layer test model, most of it the random initialisers, once per distinct
model. Run eagerly, `model.init` dispatches each operation on its own, compiled once per shape
and op for the worker's life, so a model whose sizes the worker has seen initialises in ~0.3 s
(2026-12-06, one core). The values are `init_params`'s, bitwise but for the embedding's normal
draws (1 ulp: compiled whole, XLA fuses their sampling differently).
"""

import flax.linen as nn
import jax


def eager_init(model: nn.Module, rng: jax.Array):
  """`init_params(model, rng)` computed eagerly (plain arrays, logical-axis boxes removed)."""
  return nn.unbox(model.init(rng, *model.example_inputs())["params"])
