"""Reductions and batch predicates shaped for XLA's CPU code and ``vmap``.

Sums and log-sum-exps over short axes written as slice additions, and
:func:`any_in_batch`, which keeps a ``lax.cond`` a real branch under
``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_batching.custom_vmap
def any_in_batch(pred):
  """``pred`` itself; under ``vmap``, ``any(pred)`` over the batch, unbatched.

  Keeps a ``lax.cond`` on it a real branch under ``vmap`` (e.g. over
  restarts): if any member needs the exact form, all take it (it is exact
  for all), instead of every member computing both branches.
  """
  return pred


@any_in_batch.def_vmap
def _any_in_batch_rule(axis_size, in_batched, pred):
  del axis_size
  return (jnp.any(pred) if in_batched[0] else pred), False


@jax.custom_batching.custom_vmap
def max_in_batch(value):
  """``value`` itself; under ``vmap``, its maximum over the batch,
  unbatched: a ``lax.switch`` on it stays one branch for every member
  (the largest kernel any member needs, valid for all of them)."""
  return value


@max_in_batch.def_vmap
def _max_in_batch_rule(axis_size, in_batched, value):
  del axis_size
  return (jnp.max(value) if in_batched[0] else value), False


# Order up to which tiny-D kernels unroll their products over D instead of
# calling XLA's dot (which runs K, or vmapped batch x K, D x D products one
# by one).
UNROLLED_MAX_ORDER = 4

# Reductions over an axis of at most this length are written as a sum of
# slices: XLA's CPU reduce over a tiny trailing axis (D = 2, K = 2) runs
# about 10x slower than the same elementwise adds, which matters when many
# small problems are vmapped.
SMALL_AXIS = 8


def sum_small(x, axis: int = -1):
  """``jnp.sum(x, axis)``, unrolled over slices when the axis is short."""
  if x.shape[axis] > SMALL_AXIS:
    return jnp.sum(x, axis=axis)
  parts = jnp.moveaxis(x, axis, 0)
  total = parts[0]
  for part in parts[1:]:
    total = total + part
  return total


def logsumexp_small(x, axis: int = -1):
  """``jax.nn.logsumexp(x, axis)``, unrolled when the axis is short."""
  if x.shape[axis] > SMALL_AXIS:
    return jax.nn.logsumexp(x, axis=axis)
  parts = jnp.moveaxis(x, axis, 0)
  top = parts[0]
  for part in parts[1:]:
    top = jnp.maximum(top, part)
  top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  return top + jnp.log(sum_small(jnp.exp(parts - top), axis=0))

