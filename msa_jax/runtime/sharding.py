"""Meshes, logical-axis rules and sharded initialisation and batches.

Parameters and key activations carry logical axis names (`embed`, `vocab`, `q_heads`,
`kv_heads`, `head_dim`, `mlp`, `norm`; `batch`, `length`, `docs`); `rules` map them to mesh
axes (`data`, `fsdp`, `tensor`). Rules are tried in order and a mesh axis is used at most once
per array, so `batch -> (data, fsdp)` listed before `embed -> fsdp` leaves activations' embed
dimension replicated while parameters' embed dimension is sharded over `fsdp`.

The state is initialised abstractly (`jax.eval_shape`), its shardings derived from the
logical names, and then built by `jax.jit(init, out_shardings=...)`, so no device ever holds
the full unsharded state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
    ("docs", None),
)


def make_mesh(mesh_shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all of `jax.devices()`) with the given axis sizes.

  Args:
    mesh_shape: axis name -> size, in mesh order, e.g. {"data": -1, "fsdp": 1, "tensor": 1};
      at most one size may be -1 (takes the devices left over). Default: all devices on `data`.
    devices: the devices to lay out.

  Returns:
    A `jax.sharding.Mesh` with `Auto` axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict({"data": -1} if mesh_shape is None else mesh_shape)
  fills = [k for k, v in shape.items() if v == -1]
  bad = {k: v for k, v in shape.items() if not isinstance(v, int) or (v < 1 and v != -1)}
  if bad or len(fills) > 1:
    raise ValueError(f"mesh_shape={shape}: sizes must be positive ints with at most one -1")
  known = math.prod(v for v in shape.values() if v != -1)
  if fills:
    if len(devices) % known:
      raise ValueError(f"mesh_shape={shape}: {len(devices)} devices are not divisible by "
                       f"the fixed axes' product {known}")
    shape[fills[0]] = len(devices) // known
  if math.prod(shape.values()) != len(devices):
    raise ValueError(f"mesh_shape={shape} needs {math.prod(shape.values())} devices, "
                     f"have {len(devices)}")
  grid = np.asarray(devices, dtype=object).reshape(tuple(shape.values()))
  return Mesh(grid, tuple(shape), axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def _mesh_axes(value) -> str | tuple[str, ...] | None:
  if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
    return None
  if isinstance(value, str):
    return value
  value = tuple(value)
  return value[0] if len(value) == 1 else value


def make_rules(overrides: Mapping[str, Any] | Sequence[Sequence[Any]] | None = None,
               base: Rules = DEFAULT_RULES) -> Rules:
  """`base` rules with some logical names remapped (e.g. from a config).

  Args:
    overrides: {logical name: mesh axis | tuple of mesh axes | None} or (name, axes) pairs.
      A name already in `base` keeps its position (rule priority); new names come last.
    base: the rules to start from.

  Returns:
    A tuple of (logical name, mesh axes) pairs for `nn.logical_axis_rules`.
  """
  items = overrides.items() if isinstance(overrides, Mapping) else (overrides or ())
  changes = {}
  for item in items:
    name, axes = item
    changes[str(name)] = _mesh_axes(axes)
  rules = [(name, changes.pop(name, axes)) for name, axes in base]
  return tuple(rules + list(changes.items()))


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension (that dimension is replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def logical_to_shardings(abstract_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedShardings for a tree of `nn.Partitioned` boxes (e.g. `abstract_params(model)`).

  Unboxed leaves are replicated; a mesh axis that does not divide its dimension is dropped
  (that dimension replicated). The result has the structure of the unboxed tree.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = nn.unbox(abstract_tree)
  return jax.tree.map(lambda s, x: NamedSharding(mesh, _fit(s.spec, tuple(x.shape), mesh)),
                      shardings, shapes)


def match_param_shardings(tree, params_shardings, mesh: Mesh):
  """Shardings for a tree that embeds copies of the params (e.g. an optax state).

  Every subtree with the params' structure gets `params_shardings`; other leaves (counters,
  scalars) are replicated.
  """
  treedef = jax.tree.structure(params_shardings)
  replicated = NamedSharding(mesh, P())

  def is_params(x):
    return jax.tree.structure(x) == treedef

  return jax.tree.map(lambda x: params_shardings if is_params(x) else replicated, tree,
                      is_leaf=is_params)


def sharded_init(init_fn: Callable[[jax.Array], Any], rng: jax.Array, shardings) -> Any:
  """`init_fn(rng)` computed directly into `shardings` (nothing built unsharded)."""
  return jax.jit(init_fn, out_shardings=shardings)(rng)


def batch_sharding(mesh: Mesh, ndim: int, batch_axes: Sequence[str] = BATCH_AXES
                   ) -> NamedSharding:
  """Leading axis over the mesh's `batch_axes` (those it has), the rest replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  lead = axes[0] if len(axes) == 1 else (axes or None)
  return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES):
  """Global arrays from this process's slice of a batch pytree (e.g. an `MSABatch`).

  Each process passes its own rows (the global batch is their concatenation in process order);
  on one process that is the whole batch. The leading axis is split over `batch_axes`, so the
  global batch size must be divisible by their product. None leaves stay None.
  """
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim, batch_axes)
    size = math.prod(mesh.shape[a] for a in batch_axes if a in mesh.shape)
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % size:
      raise ValueError(f"global batch size {global_rows} is not divisible by the batch mesh "
                       f"axes {tuple(batch_axes)} of total size {size}")
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)
