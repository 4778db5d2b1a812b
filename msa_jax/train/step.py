"""The train state and the jitted train / eval steps of the MSA model.

The step is a pure function (state, batch) -> (state, metrics). The loss is recombined from
`compute_losses`' parts with the step's weights,
  total = lm_w(step) * L_LM + aux_w(step) * L_aux + answer_weight * L_answer,
so the two-phase schedule (`optimizer.make_loss_weights`) changes weights without retracing.
Compute runs in the model's `dtype` (e.g. bfloat16) while parameters and the optimiser state
stay in its `param_dtype` (float32). On a mesh, the model's logical activation constraints
resolve through `rules`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from msa_jax.model.batch import MSABatch
from msa_jax.model.config import ModelConfig, MSALoss
from msa_jax.model.msa import compute_losses
from msa_jax.model.transformer import abstract_params
from msa_jax.runtime import sharding as sharding_lib

LossWeightsFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates.

  Attributes:
    step: int32 scalar, micro-batches (calls of the train step) done so far.
    params: the model parameters (unboxed arrays).
    opt_state: the optimiser state.
  """

  step: jax.Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> TrainState:
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def init_fn(model: nn.Module, optimizer: optax.GradientTransformation):
  def init(rng):
    params = nn.unbox(model.init(rng, *model.example_inputs())["params"])
    return TrainState.create(params, optimizer)
  return init


def _abstract_state(model: nn.Module, optimizer: optax.GradientTransformation) -> TrainState:
  """`init_fn(model, optimizer)`'s shapes, from `abstract_params` (the model's init is not
  traced again: only the optimiser's init, on shapes)."""
  return jax.eval_shape(lambda params: TrainState.create(params, optimizer),
                        nn.unbox(abstract_params(model)))


def state_shardings(model: nn.Module, optimizer: optax.GradientTransformation, mesh,
                    rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> TrainState:
  """NamedShardings of the TrainState, from the parameters' logical axes (no allocation)."""
  params = sharding_lib.logical_to_shardings(abstract_params(model), mesh, rules)
  abstract = _abstract_state(model, optimizer)
  replicated = sharding_lib.NamedSharding(mesh, sharding_lib.P())
  return TrainState(step=replicated, params=params,
                    opt_state=sharding_lib.match_param_shardings(abstract.opt_state, params, mesh))


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
                     mesh=None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
                     ) -> tuple[TrainState, TrainState | None]:
  """A fresh TrainState and its shardings (None without a mesh).

  With a mesh the state is initialised abstractly, then built straight into its shardings by
  `jax.jit(init, out_shardings=...)`.
  """
  init = init_fn(model, optimizer)
  if mesh is None:
    return jax.jit(init)(rng), None
  shardings = state_shardings(model, optimizer, mesh, rules)
  with _contexts(mesh, rules):
    return sharding_lib.sharded_init(init, rng, shardings), shardings


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                         shardings: TrainState | None = None) -> TrainState:
  """The TrainState's shapes and dtypes (in `shardings`, when given), allocating nothing: the
  target to restore a checkpoint into."""
  abstract = _abstract_state(model, optimizer)
  if shardings is None:
    return abstract
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def train_state_from_params(params, optimizer: optax.GradientTransformation,
                            shardings: TrainState | None = None) -> TrainState:
  """A fresh TrainState (step 0, a new optimiser state) around given parameters, e.g. a
  pretrained backbone's (`pretrained.load_params`); built into `shardings` when given."""
  create = functools.partial(TrainState.create, optimizer=optimizer)
  return jax.jit(create, out_shardings=shardings)(params)


def _contexts(mesh, rules):
  stack = contextlib.ExitStack()
  if mesh is not None:
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def _constant_weights(loss: MSALoss) -> LossWeightsFn:
  def weights(step):
    del step
    return jnp.float32(loss.lm_weight), jnp.float32(loss.aux_weight)
  return weights


def _loss(params, model, batch, config, loss, lm_w, aux_w):
  out = model.apply({"params": params}, batch)
  _, metrics = compute_losses(out, batch, config, loss)
  total = (lm_w * metrics["lm_loss"] + aux_w * metrics["aux_loss"]
           + loss.answer_weight * metrics["answer_loss"])
  metrics = dict(metrics, loss=total, lm_weight=lm_w, aux_weight=aux_w)
  return total, metrics


def _wrap(jitted, mesh, rules):
  """Calls `jitted` under the mesh and logical-axis-rule contexts (tracing happens there)."""
  if mesh is None:
    return jitted

  @functools.wraps(jitted)
  def call(*args):
    with _contexts(mesh, rules):
      return jitted(*args)
  call.jitted = jitted
  return call


def make_train_step(model: nn.Module, config: ModelConfig, loss: MSALoss,
                    optimizer: optax.GradientTransformation,
                    loss_weights_fn: LossWeightsFn | None = None, *,
                    lr_schedule: optax.Schedule | None = None, grad_accum_steps: int = 1,
                    mesh=None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
                    shardings: TrainState | None = None, donate: bool = True
                    ) -> Callable[[TrainState, MSABatch], tuple[TrainState, Metrics]]:
  """A jitted `(state, batch) -> (state, metrics)`.

  Args:
    model: the `MSATransformer` (its dtype is the compute dtype).
    config: the backbone config.
    loss: the loss part of the model's MSA config (`MSAConfig.loss`: answer_weight and the
      aux-loss settings apply).
    optimizer: from `optimizer.make_optimizer`.
    loss_weights_fn: optimiser step -> (lm_weight, aux_weight); default: `loss`'s constants.
    lr_schedule: optional, adds the step's learning rate to the metrics.
    grad_accum_steps: micro-batches per optimiser update (as given to the optimiser), so that
      weights and learning rate are looked up at `state.step // grad_accum_steps`.
    mesh, rules: when given, the step runs under this mesh and logical-axis rules.
    shardings: the state's shardings (from `init_train_state`); the batch is sharded over
      (data, fsdp) by `sharding.shard_batch`.
    donate: donate the input state's buffers.

  Returns:
    The step; metrics hold loss, lm_loss, aux_loss, answer_loss, recall@{1,5,10} (with route
    labels), lm_targets, lm_weight, aux_weight, grad_norm and (with lr_schedule) learning_rate.
  """
  weights_fn = loss_weights_fn or _constant_weights(loss)
  if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps={grad_accum_steps!r} must be a positive int")

  def step(state: TrainState, batch: MSABatch):
    opt_step = state.step // grad_accum_steps
    lm_w, aux_w = weights_fn(opt_step)
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, model, batch, config, loss, lm_w, aux_w)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if lr_schedule is not None:
      metrics["learning_rate"] = jnp.asarray(lr_schedule(opt_step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  kwargs = dict(donate_argnums=(0,) if donate else ())
  if shardings is not None:
    kwargs.update(in_shardings=(shardings, None), out_shardings=(shardings, None))
  return _wrap(jax.jit(step, **kwargs), mesh, rules)


def make_eval_step(model: nn.Module, config: ModelConfig, loss: MSALoss,
                   loss_weights_fn: LossWeightsFn | None = None, *, grad_accum_steps: int = 1,
                   mesh=None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES
                   ) -> Callable[[Any, MSABatch, jax.Array], Metrics]:
  """A jitted `(params, batch, step) -> metrics` (the train step's metrics, no update).

  `step` counts micro-batches like `TrainState.step`: the loss weights are those the train
  step uses at that state, looked up at `step // grad_accum_steps`.
  """
  weights_fn = loss_weights_fn or _constant_weights(loss)
  if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps={grad_accum_steps!r} must be a positive int")

  def eval_step(params, batch: MSABatch, step=0):
    lm_w, aux_w = weights_fn(jnp.asarray(step, jnp.int32) // grad_accum_steps)
    _, metrics = _loss(params, model, batch, config, loss, lm_w, aux_w)
    return metrics

  return _wrap(jax.jit(eval_step), mesh, rules)
