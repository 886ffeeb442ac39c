"""The EM loop: one compiled ``lax.while_loop`` from initial parameters."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import checks
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams


class FitResult(NamedTuple):
  """What :func:`fit` returns. Under ``vmap`` every field gains a batch axis."""

  params: GMMParams  # exactly `n_iter` EM iterations from the initial params
  log_likelihood: jax.Array  # shape=(), mean log-likelihood of `params`
  n_iter: jax.Array  # shape=(), int32, EM iterations done
  converged: jax.Array  # shape=(), bool, |change| < tol was reached
  history: jax.Array  # shape=(max_iter,), E-step log-likelihoods, NaN padded
  failed: jax.Array  # shape=(), bool, a step went non-finite: the last finite
  # params are returned and `converged` is False

  @property
  def lower_bound(self):
    """scikit-learn's ``lower_bound_``: ``history[n_iter - 1]``."""
    idx = jnp.maximum(self.n_iter - 1, 0)
    value = jnp.take_along_axis(self.history, jnp.expand_dims(idx, -1),
                                axis=-1)[..., 0]
    return jnp.where(self.n_iter > 0, value, -jnp.inf)


class _Carry(NamedTuple):
  params: GMMParams
  prev_ll: jax.Array
  n_iter: jax.Array
  history: jax.Array
  converged: jax.Array
  failed: jax.Array


def em_step(params: GMMParams, X, sample_weight=None, reg_covar=1e-6):
  """One EM iteration (E then M) through the sufficient statistics.

  Returns:
    ``(new_params, mean_log_likelihood)``, the log-likelihood being that of
    the input ``params`` (computed by the E-step).
  """
  shift = stats_lib.mixture_mean(params)
  stats = stats_lib.e_step_stats(params, X, sample_weight, shift)
  new = stats_lib.params_from_stats(stats, shift, params.covariance_type,
                                    reg_covar)
  return new, stats.log_likelihood / stats.count


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return functools.reduce(jnp.logical_and,
                          [jnp.all(jnp.isfinite(x)) for x in leaves])


@functools.partial(jax.jit, static_argnames=("max_iter", "callback"))
def _fit(X, params, sample_weight, tol, reg_covar, prev_log_likelihood,
         max_iter: int, callback: Callable | None):
  dtype = X.dtype

  def cond(c: _Carry):
    return (c.n_iter < max_iter) & ~c.converged & ~c.failed

  def body(c: _Carry):
    new, ll = em_step(c.params, X, sample_weight, reg_covar)
    ok = _all_finite(new) & jnp.isfinite(ll)
    change = ll - c.prev_ll
    if callback is not None:
      jax.debug.callback(callback, c.n_iter + 1, ll, change, ordered=False)
    return _Carry(
        params=jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, c.params),
        prev_ll=jnp.where(ok, ll, c.prev_ll),
        n_iter=c.n_iter + ok.astype(jnp.int32),
        history=jnp.where(ok, c.history.at[c.n_iter].set(ll), c.history),
        converged=ok & (jnp.abs(change) < tol),
        failed=~ok)

  init = _Carry(
      params=params,
      prev_ll=jnp.asarray(prev_log_likelihood, dtype),
      n_iter=jnp.zeros((), jnp.int32),
      history=jnp.full((max_iter,), jnp.nan, dtype),
      converged=jnp.zeros((), bool),
      failed=jnp.zeros((), bool))
  out = lax.while_loop(cond, body, init)
  final = stats_lib.e_step_stats(out.params, X, sample_weight)
  final_ll = final.log_likelihood / final.count
  failed = out.failed | ~jnp.isfinite(final_ll)
  return FitResult(params=out.params, log_likelihood=final_ll,
                   n_iter=out.n_iter, converged=out.converged & ~failed,
                   history=out.history, failed=failed)


def fit(X, params: GMMParams, *, sample_weight=None, max_iter: int = 100,
        tol=1e-3, reg_covar=1e-6, prev_log_likelihood=-jnp.inf,
        callback: Callable | None = None) -> FitResult:
  """Fits a Gaussian mixture by EM from initial parameters.

  The whole loop is one compiled ``lax.while_loop``: iterate E-step and
  M-step until the mean per-sample log-likelihood changes by less than
  ``tol`` between iterations (scikit-learn's rule) or ``max_iter`` is reached.
  It compiles once per shape, dtype, covariance type and ``max_iter``; ``tol``
  and ``reg_covar`` are traced, so changing them does not recompile. It works
  under ``jax.jit`` and ``jax.vmap`` (e.g. over a batch of initial params: a
  batched loop runs until its slowest member stops, and each member's result
  equals its separate fit).

  If an iteration produces non-finite parameters (e.g. a covariance that is
  not positive definite with ``reg_covar=0``), the loop stops, the last
  finite parameters are returned and ``failed`` is set.

  Args:
    X: ``(N, D)`` samples. Float64 input is computed in float64 when JAX's
      x64 mode is on; results follow the input's dtype.
    params: initial :class:`GMMParams` (from :func:`init_params`,
      :func:`make_params` or a previous fit).
    sample_weight: optional ``(N,)`` non-negative weights.
    max_iter: maximum number of EM iterations (static).
    tol: convergence threshold on the change of the mean log-likelihood.
    reg_covar: non-negative regulariser added to covariance diagonals.
    prev_log_likelihood: the log-likelihood the first change is measured
      from (``-inf``; a warm start passes the previous fit's lower bound).
    callback: optional host function ``callback(n_iter, log_likelihood,
      change)`` called after every iteration (progress reports); ``None``
      compiles no callback at all.

  Returns:
    A :class:`FitResult`.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> result = gx.fit(X, p0, tol=1e-4)
    >>> bool(result.converged), result.history.shape
    (True, (100,))
  """
  params, X, w = checks.prepare(params, X, sample_weight)
  if not isinstance(max_iter, int) or max_iter < 0:
    raise ValueError(f"max_iter should be a non-negative int, got {max_iter!r}.")
  return _fit(X, params, w, jnp.asarray(tol, X.dtype),
              jnp.asarray(reg_covar, X.dtype),
              prev_log_likelihood, max_iter=max_iter, callback=callback)
