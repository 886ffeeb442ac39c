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

Products of at most :data:`SMALL_PRODUCT` multiply-adds (the tutorial-sized
problems of ``compiling.TINY_MAX_ENTRIES``) are written as a broadcast
product and a sum instead. On CPU, XLA hands a matrix product that is not
fused to a library whose first call in a process generates its kernels
(about 25 ms for float32, on every fresh process's first fit); a product
this small gains nothing from it. The sum is exact float32 (or float64)
arithmetic on every backend (whatever ``jax.default_matmul_precision``
says), in another order than a library's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def precision():
  """``HIGHEST``, or ``None`` (JAX's rule) if the user set a default."""
  if jax.config.jax_default_matmul_precision is None:
    return lax.Precision.HIGHEST
  return None


# The most multiply-adds a product is written as a broadcast sum for.
SMALL_PRODUCT = 1 << 14


def matmul(a, b):
  """``a @ b`` at :func:`precision` (a broadcast sum when small)."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  small = _small_matmul(a, b)
  return (jnp.matmul(a, b, precision=precision()) if small is None
          else small)


def _small_matmul(a, b):
  """``a @ b`` as a broadcast product summed over the contracted axis,
  when it has at most :data:`SMALL_PRODUCT` terms; else None (also for
  what ``jnp.matmul`` would refuse, and for integer or boolean operands,
  whose sums would promote)."""
  if (not a.ndim or not b.ndim
      or not jnp.issubdtype(jnp.result_type(a, b), jnp.inexact)):
    return None
  a2 = a if a.ndim > 1 else a[None, :]
  b2 = b if b.ndim > 1 else b[:, None]
  try:
    batch = jnp.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
  except ValueError:
    return None
  if (a2.shape[-1] != b2.shape[-2] or math.prod(batch)
      * math.prod(a2.shape[-2:]) * b2.shape[-1] > SMALL_PRODUCT):
    return None
  # Equal ranks, without relying on implicit rank promotion.
  a2 = a2.reshape((1,) * (len(batch) + 2 - a2.ndim) + a2.shape)
  b2 = b2.reshape((1,) * (len(batch) + 2 - b2.ndim) + b2.shape)
  out = jnp.sum(a2[..., :, :, None] * b2[..., None, :, :], axis=-2)
  out = out[..., 0, :] if a.ndim == 1 else out
  return out[..., 0] if b.ndim == 1 else out


def einsum(subscripts: str, *operands):
  """``jnp.einsum`` at :func:`precision` (a broadcast sum when small)."""
  operands = [jnp.asarray(x) for x in operands]
  small = _small_einsum(subscripts, operands)
  if small is not None:
    return small
  return jnp.einsum(subscripts, *operands, precision=precision())


def _small_einsum(subscripts: str, operands):
  """``einsum`` as one broadcast product summed over the contracted
  letters, when it has at most :data:`SMALL_PRODUCT` terms; else None
  (also for the forms this does not write: ``...``, implicit outputs,
  a letter repeated within an operand or missing from the inputs, sizes
  that disagree, integer or boolean operands)."""
  if ("..." in subscripts or "->" not in subscripts or not operands
      or not jnp.issubdtype(jnp.result_type(*operands), jnp.inexact)):
    return None
  inputs, output = subscripts.replace(" ", "").split("->")
  inputs = inputs.split(",")
  if (len(inputs) != len(operands) or len(set(output)) != len(output)
      or any(len(set(s)) != len(s) or len(s) != x.ndim
             for s, x in zip(inputs, operands))):
    return None
  sizes = {}
  for s, x in zip(inputs, operands):
    for letter, size in zip(s, x.shape):
      if sizes.get(letter, size) not in (size, 1) and size != 1:
        return None
      sizes[letter] = max(sizes.get(letter, 1), size)
  if (not set(output) <= set(sizes)
      or math.prod(sizes.values()) > SMALL_PRODUCT):
    return None
  letters = output + "".join(sorted(set(sizes) - set(output)))
  product = None
  for s, x in zip(inputs, operands):
    order = sorted(range(len(s)), key=lambda i: letters.index(s[i]))
    x = jnp.transpose(x, order)
    present = [s[i] for i in order]
    x = x.reshape([x.shape[present.index(c)] if c in present else 1
                   for c in letters])
    product = x if product is None else product * x
  summed = tuple(range(len(output), len(letters)))
  return jnp.sum(product, axis=summed) if summed else product
