"""What a fit returns and how it reports: :class:`FitResult`, the counts it
carries, progress callbacks, and the error ``throw=True`` raises."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import covariance as cov_ops
from gmmjax._src.params import GMMParams


class FitResult(NamedTuple):
  """What :func:`fit` returns. Under ``vmap`` every field gains a batch axis."""

  params: GMMParams  # exactly `n_iter` EM iterations from the initial params
  log_likelihood: jax.Array  # shape=(), mean log-likelihood of `params`
  # (NaN when not even the initial params could be evaluated)
  n_iter: jax.Array  # shape=(), int32, EM iterations done
  converged: jax.Array  # shape=(), bool, |change| < tol was reached
  history: jax.Array  # shape=(history_length(max_iter),), E-step
  # log-likelihoods, NaN padded past n_iter
  failed: jax.Array  # shape=(), bool, a step went non-finite: the last finite
  # params are returned and `converged` is False
  jitter: jax.Array  # shape=(), the largest diagonal jitter the M-step had
  # to add to a full/tied covariance to factorise it (0: none), in the
  # units of the covariances; nonzero means the fit was degraded
  n_degenerate: jax.Array  # shape=(), int32, components of the returned
  # params that are empty (weight * n_samples < 1) or collapsed (the
  # covariance's trace is at most 2 * n_features * reg_covar)

  @property
  def degraded(self):
    """True when the fit needed a jitter or has degenerate components."""
    return (self.jitter > 0) | (self.n_degenerate > 0)

  @property
  def lower_bound(self):
    """scikit-learn's ``lower_bound_``: ``history[n_iter - 1]``."""
    return lower_bound(self.history, self.n_iter)


def lower_bound(history, n_iter, xp=jnp):
  """``history[n_iter - 1]`` (``-inf`` before any iteration), batched.

  ``xp`` is ``jax.numpy`` or ``numpy`` (host results, nothing to compile).
  """
  if history.shape[-1] == 0:  # max_iter=0 of a loop with an exact history
    return xp.full(xp.shape(n_iter), -xp.inf, history.dtype)
  idx = xp.maximum(n_iter - 1, 0)
  value = xp.take_along_axis(history, xp.expand_dims(idx, -1),
                             axis=-1)[..., 0]
  return xp.where(n_iter > 0, value, -xp.inf)


def history_length(max_iter: int) -> int:
  """Entries of ``FitResult.history`` for ``max_iter``: a power of two >= 128.

  ``max_iter`` itself is a traced value of the compiled loop, so every
  ``max_iter`` of one bucket runs the same program; only the history's
  length is static. Every ``max_iter`` up to 128 (scikit-learn's default
  100, and the ``max_iter=1`` of warm-start loops) shares one bucket: a
  history of 128 floats costs nothing, a program of its own a compile.
  ``max_iter=0`` still gets a (NaN) history.
  """
  return max(128, 1 << (int(max_iter) - 1).bit_length())


def count_degenerate(params: GMMParams, n_samples, *, reg_covar,
                     mask=None) -> jax.Array:
  """Number of empty or collapsed components of ``params`` (int32 scalar).

  A component is empty when ``weights_k * n_samples < 1`` (less than one
  sample's worth of responsibility) and collapsed when, in some direction,
  its variance is at most ``2 * reg_covar`` (the regulariser is at least
  what the data contribute there: a component on one point, on exactly
  repeated rows, or on fewer distinct points than dimensions). For tied
  covariances, a collapsed shared covariance counts every component.
  With ``mask`` (component slots, :func:`stats.mask_components`), only the
  active slots count.
  """
  dtype = params.means.dtype
  cov = lax.stop_gradient(params.covariances)
  threshold = 2 * jnp.asarray(reg_covar, dtype)
  collapsed = cov_ops.get(params.covariance_type).collapsed(cov, threshold)
  collapsed = jnp.broadcast_to(collapsed, params.means.shape[:-1])
  weights = params.weights if mask is None else params._slot_weights(mask)
  empty = weights * jnp.asarray(n_samples, dtype) < 1
  bad = empty | collapsed
  if mask is not None:
    bad = bad & mask
  return jnp.sum(bad).astype(jnp.int32)


def n_positive_samples(X, sample_weight):
  """Rows with a positive weight (all rows without weights)."""
  if sample_weight is None:
    return X.shape[0]
  return jnp.sum(sample_weight > 0)


class _Bits(NamedTuple):
  """A float64 value in transit to the host as its bits."""
  bits: jax.Array  # (..., 2) uint32


def _unpack(value):
  if isinstance(value, _Bits):
    bits = np.ascontiguousarray(np.asarray(value.bits, np.uint32))
    return bits.view(np.float64).reshape(bits.shape[:-1])
  return np.asarray(value)


def progress_callback(callback, *values, active=None):
  """``jax.debug.callback(callback, *values)`` that keeps float64 intact.

  ``jax.debug.callback`` moves its arguments to the host with
  ``device_put`` in a runtime thread, where the caller's
  ``jax.enable_x64(True)`` context does not hold: float64 values would
  arrive rounded to float32. They travel as their bits instead and reach
  ``callback`` as NumPy scalars. With ``active`` (a traced bool), the
  callback runs only where it is true (masked steps of a scan).
  """
  packed = tuple(_Bits(lax.bitcast_convert_type(v, jnp.uint32))
                 if v.dtype == jnp.float64 else v for v in values)

  def call(active_now, *args):
    if active_now is None or bool(active_now):
      callback(*(_unpack(a) for a in args))
  jax.debug.callback(call, active, *packed, ordered=False)


class FitError(RuntimeError):
  """A fit asked to ``throw`` failed, did not converge or degenerated."""


def _fit_error(name: str, failed, converged, n_degenerate, n_iter):
  """The message for results that ``throw`` refuses (``None``: all good)."""
  failed, converged, n_degenerate, n_iter = (
      np.asarray(v) for v in (failed, converged, n_degenerate, n_iter))
  reasons = []
  if failed.any():
    reasons.append("a step went non-finite (failed=True): check the data "
                   "for NaN or inf, or increase reg_covar")
  elif not converged.all():
    reasons.append(f"it did not converge in {int(n_iter.max())} iterations "
                   f"(converged=False): increase max_iter or tol")
  if (n_degenerate > 0).any():
    reasons.append(f"{int(n_degenerate.max())} component(s) are empty or "
                   f"collapsed (n_degenerate > 0): use fewer components or "
                   f"a larger reg_covar")
  if not reasons:
    return None
  return f"{name}(throw=True): " + "; ".join(reasons) + "."


def _raise_fit_error(name, *values):
  message = _fit_error(name, *values)
  if message is not None:
    raise FitError(message)


def error_if_bad(result, name: str, *, degenerate: bool = True):
  """``result``, or a :class:`FitError` if it failed, did not converge or
  (with ``degenerate``) has degenerate components (``throw=True``).

  ``result`` is a :class:`FitResult` or a result with the same ``failed``,
  ``converged`` and ``n_iter`` (``GradFitResult``, with ``degenerate``
  False). A Bayesian fit passes ``degenerate=False`` too: its prior empties
  the components the data do not need.

  Outside a trace the check is made here; inside one (``jit``, ``vmap``,
  ``grad``) by a host callback of the program, whose error surfaces as a
  ``JaxRuntimeError`` carrying this message when the program runs.
  """
  n_degenerate = (result.n_degenerate if degenerate
                  else np.zeros(np.shape(result.n_iter), np.int32))
  values = (result.failed, result.converged, n_degenerate, result.n_iter)
  if not any(isinstance(v, jax.core.Tracer) for v in values):
    _raise_fit_error(name, *jax.device_get(values))
    return result
  jax.debug.callback(functools.partial(_raise_fit_error, name), *values)
  return result
