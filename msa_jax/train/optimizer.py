"""Optimiser and schedules from a plain config mapping (dict or `ml_collections.ConfigDict`).

AdamW with global-norm clipping, a warm-up followed by a cosine or constant learning rate, and
gradient accumulation through `optax.MultiSteps`. The paper's two-phase training (router
warm-up with 0.1 * L_LM + L_aux at lr 1e-4, then L_LM + 0.1 * L_aux at lr 6e-6) is expressed as
config, a list of `phases`, which sets both the learning rate and the loss weights per step:

  phases = [dict(steps=1000, learning_rate=1e-4, lm_weight=0.1, aux_weight=1.0),
            dict(steps=9000, learning_rate=6e-6, lm_weight=1.0, aux_weight=0.1)]

A phase may also set `top_k`, the documents routed to the LM during its steps (a curriculum:
learn the copy from the one routed document, then from several; `phase_top_k`); without it the
model's `msa.top_k` applies.

Schedule steps count optimiser updates (one per `grad_accum_steps` micro-batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

DEFAULTS: dict[str, Any] = dict(
    learning_rate=1e-4, schedule="constant", warmup_steps=0, total_steps=None,
    end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
    grad_accum_steps=1, phases=None)
PHASE_KEYS = ("steps", "learning_rate", "lm_weight", "aux_weight")
PHASE_OPTIONAL = ("warmup_steps", "schedule", "top_k")
SCHEDULES = ("cosine", "constant")

LossWeightsFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def _as_dict(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
  """Validated optimiser settings: `cfg` over DEFAULTS; unknown keys raise."""
  cfg = {} if cfg is None else dict(cfg.items())
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown optimizer config keys {unknown}; known: {sorted(DEFAULTS)}")
  out = {**DEFAULTS, **cfg}
  if out["schedule"] not in SCHEDULES:
    raise ValueError(f"optimizer schedule={out['schedule']!r}; expected one of {SCHEDULES}")
  for name in ("warmup_steps", "grad_accum_steps"):
    value = out[name]
    if not isinstance(value, int) or value < (1 if name == "grad_accum_steps" else 0):
      raise ValueError(f"optimizer {name}={value!r} must be a "
                       f"{'positive' if name == 'grad_accum_steps' else 'non-negative'} int")
  if not out["learning_rate"] >= 0:
    raise ValueError(f"optimizer learning_rate={out['learning_rate']!r} must be >= 0")
  if not 0 <= out["end_lr_factor"] <= 1:
    raise ValueError(f"optimizer end_lr_factor={out['end_lr_factor']!r} must be in [0, 1]")
  if out["weight_decay"] < 0:
    raise ValueError(f"optimizer weight_decay={out['weight_decay']!r} must be >= 0")
  clip = out["grad_clip_norm"]
  if clip is not None and clip < 0:
    raise ValueError(f"optimizer grad_clip_norm={clip!r} must be >= 0 (0 or None: no clipping)")
  if out["phases"]:
    out["phases"] = _phases(out["phases"])
  elif out["schedule"] == "cosine":
    total = out["total_steps"]
    if not isinstance(total, int) or total <= out["warmup_steps"]:
      raise ValueError(f"cosine schedule needs total_steps > warmup_steps="
                       f"{out['warmup_steps']}, got total_steps={total!r}")
  return out


def _phases(phases) -> list[dict[str, Any]]:
  """Validated phase dicts (each with PHASE_KEYS, optionally PHASE_OPTIONAL)."""
  out = []
  for i, phase in enumerate(phases):
    phase = dict(phase.items())
    missing = [k for k in PHASE_KEYS if k not in phase]
    unknown = sorted(set(phase) - set(PHASE_KEYS) - set(PHASE_OPTIONAL))
    if missing or unknown:
      raise ValueError(f"phases[{i}]={phase!r}: missing keys {missing}, unknown keys {unknown}; "
                       f"expected {PHASE_KEYS} and optionally {PHASE_OPTIONAL}")
    if not isinstance(phase["steps"], int) or phase["steps"] < 1:
      raise ValueError(f"phases[{i}].steps={phase['steps']!r} must be a positive int")
    warmup = phase.get("warmup_steps", 0)
    if not isinstance(warmup, int) or not 0 <= warmup <= phase["steps"]:
      raise ValueError(f"phases[{i}].warmup_steps={warmup!r} must be an int in "
                       f"[0, steps={phase['steps']}]")
    if phase.get("schedule", "constant") not in SCHEDULES:
      raise ValueError(f"phases[{i}].schedule={phase['schedule']!r}; expected one of {SCHEDULES}")
    top_k = phase.get("top_k", 1)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
      raise ValueError(f"phases[{i}].top_k={top_k!r} must be a positive int")
    out.append(phase)
  return out


def _warmup_then(peak: float, warmup: int, steps: int | None, schedule: str,
                 end_factor: float) -> optax.Schedule:
  """Linear warm-up 0 -> peak over `warmup` steps, then constant or cosine to peak*end_factor
  at step `steps` (counted from the start, warm-up included)."""
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, peak * end_factor)
  if warmup == 0:
    return optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                               optax.constant_schedule(peak)], [warmup])


def make_lr_schedule(cfg: Mapping[str, Any] | None) -> optax.Schedule:
  """The learning rate as a function of the optimiser step.

  Without `phases`: linear warm-up over `warmup_steps` to `learning_rate`, then `constant`, or
  `cosine` decay to `learning_rate * end_lr_factor` at `total_steps`. With `phases`: each phase
  holds its own `learning_rate` (constant unless the phase sets `schedule="cosine"`; its own
  optional `warmup_steps`, the first phase defaulting to the top-level `warmup_steps`); the last
  phase's schedule continues past its end.
  """
  cfg = _as_dict(cfg)
  if not cfg["phases"]:
    return _warmup_then(cfg["learning_rate"], cfg["warmup_steps"], cfg["total_steps"],
                        cfg["schedule"], cfg["end_lr_factor"])
  parts, boundaries, start = [], [], 0
  for i, phase in enumerate(cfg["phases"]):
    warmup = phase.get("warmup_steps", cfg["warmup_steps"] if i == 0 else 0)
    parts.append(_warmup_then(phase["learning_rate"], warmup, phase["steps"],
                              phase.get("schedule", "constant"), cfg["end_lr_factor"]))
    start += phase["steps"]
    boundaries.append(start)
  return optax.join_schedules(parts, boundaries[:-1])


def make_loss_weights(cfg: Mapping[str, Any] | None, lm_weight: float = 1.0,
                      aux_weight: float = 0.1) -> LossWeightsFn:
  """`loss_weights(step) -> (lm_weight, aux_weight)` as float32 scalars, usable under jit.

  With `phases`, the weights of the phase holding `step` (the last phase's after the end);
  otherwise the constants given here (e.g. from `MSAConfig`).
  """
  cfg = _as_dict(cfg)
  if not cfg["phases"]:
    def constant(step):
      del step
      return jnp.float32(lm_weight), jnp.float32(aux_weight)
    return constant
  ends = jnp.cumsum(jnp.asarray([p["steps"] for p in cfg["phases"]], jnp.int32))[:-1]
  lm = jnp.asarray([p["lm_weight"] for p in cfg["phases"]], jnp.float32)
  aux = jnp.asarray([p["aux_weight"] for p in cfg["phases"]], jnp.float32)

  def phased(step):
    index = jnp.sum(jnp.asarray(step, jnp.int32) >= ends)
    return lm[index], aux[index]
  return phased


def phase_top_k(cfg: Mapping[str, Any] | None, step: int, default: int) -> int:
  """The `top_k` of the phase holding optimiser step `step` (the last phase's after the end);
  `default` (the model's `msa.top_k`) without phases or when that phase sets none. Host-side:
  a different top_k is a different compiled train step."""
  phases = _as_dict(cfg)["phases"]
  if not phases:
    return default
  start = 0
  for phase in phases:
    start += phase["steps"]
    if step < start:
      break
  return int(phase.get("top_k", default))


def uses_aux_loss(cfg: Mapping[str, Any] | None, aux_weight: float = 0.1) -> bool:
  """Whether some step trains the routing (aux) loss, so batches need route labels: a phase
  with aux_weight > 0 when `phases` are given (they override `aux_weight`), else
  `aux_weight > 0` (the MSA config's constant)."""
  phases = _as_dict(cfg)["phases"]
  if phases:
    return any(float(p["aux_weight"]) > 0 for p in phases)
  return aux_weight > 0


def weight_decay_mask(params) -> Any:
  """True for parameters that get weight decay: kernels and embeddings with ndim >= 2.

  Norm scales, biases and every other 0-D/1-D parameter are skipped, as is anything under a
  path component containing "norm".
  """
  def decay(path, p):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return bool(len(getattr(p, "shape", ())) >= 2 and not any("norm" in n for n in names)
                and (not names or names[-1] != "scale"))
  return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(cfg: Mapping[str, Any] | None) -> optax.GradientTransformation:
  """AdamW with clipping, the configured schedule and accumulation (see the module docstring).

  Args:
    cfg: mapping with any of learning_rate, schedule ("cosine" | "constant"), warmup_steps,
      total_steps, end_lr_factor, weight_decay, b1, b2, eps, grad_clip_norm (0/None: off),
      grad_accum_steps, phases. Missing keys take `DEFAULTS`.

  Returns:
    A gradient transformation; with grad_accum_steps=k > 1 it averages k micro-batch gradients
    and applies one AdamW update every k-th call (zero updates in between).
  """
  c = _as_dict(cfg)
  chain = []
  if c["grad_clip_norm"]:
    chain.append(optax.clip_by_global_norm(c["grad_clip_norm"]))
  chain.append(optax.adamw(make_lr_schedule(c), b1=c["b1"], b2=c["b2"], eps=c["eps"],
                           weight_decay=c["weight_decay"], mask=weight_decay_mask))
  tx = optax.chain(*chain)
  if c["grad_accum_steps"] > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c["grad_accum_steps"]).gradient_transformation()
  return tx
