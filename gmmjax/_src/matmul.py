"""Matrix products at float32's own precision on every backend.

JAX lets accelerators compute float32 products from rounded inputs unless
told otherwise: TensorFloat-32 (a 10-bit mantissa) on recent NVIDIA GPUs, a
bfloat16 pass (8 bits) on TPU. gmmjax's fast forms (whitened distances,
expanded quadratic forms, the moment GEMMs) and the guards that decide when
to recompute them exactly assume float32's 24 bits; with TF32 inputs a
distance would lose about 13 more bits than the guard allows for, silently.
So every product here asks for ``Precision.HIGHEST`` (true float32; no
effect on CPU or in float64), unless the user chose a precision with
``jax.default_matmul_precision`` (context manager or config), which is then
respected as an opt-in to faster, less exact products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def precision():
  """``HIGHEST``, or ``None`` (JAX's rule) if the user set a default."""
  if jax.config.jax_default_matmul_precision is None:
    return lax.Precision.HIGHEST
  return None


def matmul(a, b):
  """``a @ b`` at :func:`precision`."""
  return jnp.matmul(a, b, precision=precision())


def einsum(subscripts: str, *operands):
  """``jnp.einsum`` at :func:`precision`."""
  return jnp.einsum(subscripts, *operands, precision=precision())
