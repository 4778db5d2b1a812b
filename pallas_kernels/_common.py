"""Helpers shared by the kernels: validation, launch parameters, platform defaults.

Kept tiny on purpose: every kernel package owns its math; this module only holds what would
otherwise be copied between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as pltriton

# A finite "minus infinity" for online softmax state: exp(NEG - NEG) stays finite, so masked
# entries are removed with explicit `where`s rather than by relying on inf arithmetic.
NEG = -1e30


def is_power_of_two(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
  return 1 if n <= 1 else 1 << (n - 1).bit_length()


def check_block(name: str, value: int, minimum: int = 16) -> None:
  """Raises unless `value` is a power of two >= `minimum` (what Triton tiles need).

  Args:
    name: the field name, quoted in the error.
    value: the block size.
    minimum: the smallest allowed value (16: Triton's `dot` needs every side >= 16).
  """
  if not isinstance(value, int) or isinstance(value, bool):
    raise ValueError(f"{name}={value!r} must be an int")
  if value < minimum or not is_power_of_two(value):
    raise ValueError(f"{name}={value} must be a power of two >= {minimum}")


def check_launch(num_warps: int, num_stages: int) -> None:
  """Raises unless the Triton launch parameters are sane (num_warps a power of two <= 32)."""
  if not isinstance(num_warps, int) or not is_power_of_two(num_warps) or num_warps > 32:
    raise ValueError(f"num_warps={num_warps!r} must be a power of two <= 32")
  if not isinstance(num_stages, int) or num_stages < 1:
    raise ValueError(f"num_stages={num_stages!r} must be an int >= 1")


def compiler_params(num_warps: int, num_stages: int) -> pltriton.CompilerParams:
  """Explicit Triton parameters: without them JAX >= 0.10 lowers `pallas_call` to Mosaic GPU."""
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def masked_load(ref, mask: jax.Array, fill=0) -> jax.Array:
  """Loads `ref` (a ref or a `ref.at[...]` view) where `mask`, `fill` elsewhere.

  Lanes off the mask are never read (so a tile may run past the end of the array). The fill
  is applied with a `where` in the loaded dtype rather than through the load's `other`
  operand, whose Python literal would be typed int32/float32 whatever the ref's dtype.
  """
  x = pltriton.load(ref, mask=mask)
  return jnp.where(mask, x, fill)


def dot_precision(dtype) -> lax.Precision:
  """Exact fp32 products for fp32 inputs (no TF32), the native tensor-core path otherwise."""
  if jnp.dtype(dtype) == jnp.float32:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


def has_gpu() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def resolves_to_pallas(kernel_impl: str, head_dim: int) -> bool:
  """Whether a `kernel_impl` setting ("auto" | "xla" | "pallas") runs the Pallas kernels for
  this head dim: "pallas" always; "auto" on a GPU when the kernels take the head dim (a power
  of two >= 16)."""
  takes = is_power_of_two(head_dim) and head_dim >= 16
  return kernel_impl == "pallas" or (kernel_impl == "auto" and jax.default_backend() == "gpu"
                                     and takes)
