"""Gradient-based fitting of a mixture with any optax optimizer.

The negative mean log-likelihood (plus an optional user penalty) is
minimised over the unconstrained coordinates of
:func:`to_unconstrained` inside one compiled ``lax.while_loop``;
the fit is ``jit``- and ``vmap``-safe (restarts in one program). It stops
when the loss changes by less than ``tol`` between steps, or at
``max_iter``.

EM is usually the better optimiser for the plain likelihood (monotone, no
step size); gradients earn their keep for objectives EM cannot maximise in
closed form: a penalty on the parameters, a likelihood inside a larger
model, or a few steps after EM has found a good basin
(:func:`em_then_gradient`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import checks, compiling
from gmmjax._src import fit as fit_lib
from gmmjax._src import stats as stats_lib
from gmmjax._src.engine import check_max_iter, tree_where
from gmmjax._src.params import GMMParams, all_finite
from gmmjax._src.results import error_if_bad
from gmmjax._src.unconstrained import (
    UnconstrainedParams,
    from_unconstrained,
    to_unconstrained,
)

# optax loads on first use (0.1 s of `import gmmjax`, which most programs
# never need): the functions below import it.
if TYPE_CHECKING:
  import optax


class GradFitResult(NamedTuple):
  """What :func:`fit_gradient` returns (a batch axis under ``vmap``)."""

  params: GMMParams  # the final parameters
  log_likelihood: jax.Array  # shape=(), mean log-likelihood of `params`
  loss: jax.Array  # shape=(), objective (NLL + penalty) of `params`
  n_iter: jax.Array  # shape=(), int32, optimizer steps done
  converged: jax.Array  # shape=(), bool, |loss change| < tol was reached
  history: jax.Array  # shape=(max_iter,), loss before each step, NaN padded
  failed: jax.Array  # shape=(), bool, a step went non-finite (last finite
  # params are returned)


def negative_log_likelihood(u: UnconstrainedParams, X, *, sample_weight=None,
                            penalty: Callable | None = None):
  """Mean negative log-likelihood of ``X`` at free coordinates ``u``.

  Args:
    u: :class:`UnconstrainedParams`.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` non-negative weights.
    penalty: optional ``penalty(params: GMMParams) -> scalar`` added to it.

  Returns:
    A scalar: the mean of ``-log p(x)`` over the samples (weighted), plus
    the penalty.

  Example:
    >>> import jax, jax.numpy as jnp, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (100, 2))
    >>> p = gx.init_params(jax.random.key(1), X, 2, covariance_type="full")
    >>> nll = gx.negative_log_likelihood(gx.to_unconstrained(p), X)
    >>> bool(jnp.allclose(nll, -gx.log_likelihood(p, X)))
    True
  """
  params = from_unconstrained(u)
  logp = jax.nn.logsumexp(stats_lib.weighted_log_prob(params, X), axis=1)
  if sample_weight is None:
    loss = -jnp.mean(logp)
  else:
    loss = -jnp.sum(sample_weight * logp) / jnp.sum(sample_weight)
  if penalty is not None:
    loss = loss + penalty(params)
  return loss


class _Carry(NamedTuple):
  u: UnconstrainedParams
  opt_state: optax.OptState
  loss: jax.Array
  n_iter: jax.Array
  history: jax.Array
  converged: jax.Array
  failed: jax.Array


def _has_stored_value(state) -> bool:
  import optax  # noqa: PLC0415 (see the imports)
  # L-BFGS and other line-search methods keep the value and gradient at the
  # new iterate in their state; reusing them saves one evaluation a step.
  try:
    return (optax.tree.get(state, "value") is not None
            and optax.tree.get(state, "grad") is not None)
  except (KeyError, ValueError):
    return False


def _fit_gradient_impl(X, params, sample_weight, tol, optimizer, max_iter,
                       penalty):
  import optax  # noqa: PLC0415 (see the imports)
  opt = optax.with_extra_args_support(optimizer)
  u0 = to_unconstrained(params)
  loss_fn = functools.partial(negative_log_likelihood, X=X,
                              sample_weight=sample_weight, penalty=penalty)
  state0 = opt.init(u0)
  if _has_stored_value(state0):
    value_and_grad = optax.value_and_grad_from_state(loss_fn)
  else:
    plain = jax.value_and_grad(loss_fn)
    value_and_grad = lambda u, state: plain(u)
  dtype = X.dtype

  def cond(c: _Carry):
    return (c.n_iter < max_iter) & ~c.converged & ~c.failed

  def body(c: _Carry):
    value, grad = value_and_grad(c.u, state=c.opt_state)
    updates, state = opt.update(grad, c.opt_state, c.u, value=value,
                                grad=grad, value_fn=loss_fn)
    u = optax.apply_updates(c.u, updates)
    new_loss = loss_fn(u)
    ok = (jnp.isfinite(new_loss) & jnp.isfinite(value)
          & all_finite(u))
    return _Carry(
        u=tree_where(ok, u, c.u), opt_state=tree_where(ok, state, c.opt_state),
        loss=jnp.where(ok, new_loss, c.loss).astype(dtype),
        n_iter=c.n_iter + ok.astype(jnp.int32),
        history=jnp.where(ok, c.history.at[c.n_iter].set(value), c.history),
        converged=ok & (jnp.abs(new_loss - c.loss) < tol),
        failed=~ok)

  init = _Carry(u=u0, opt_state=state0, loss=loss_fn(u0).astype(dtype),
                n_iter=jnp.zeros((), jnp.int32),
                history=jnp.full((max_iter,), jnp.nan, dtype),
                converged=jnp.zeros((), bool), failed=jnp.zeros((), bool))
  out = lax.while_loop(cond, body, init)
  params = from_unconstrained(out.u)
  nll = negative_log_likelihood(out.u, X, sample_weight=sample_weight)
  return GradFitResult(params=params, log_likelihood=-nll, loss=out.loss,
                       n_iter=out.n_iter, converged=out.converged,
                       history=out.history, failed=out.failed)


_fit_gradient_programs = compiling.jit_by_size(
    _fit_gradient_impl, static_argnames=("optimizer", "max_iter", "penalty"))


# Small problems' programs compile about twice as fast (compiling.pick).
_fit_gradient = compiling.call_for_size(_fit_gradient_programs)


def fit_gradient(X, params: GMMParams,
                 optimizer: optax.GradientTransformation | None = None, *,
                 sample_weight=None, max_iter: int = 500, tol=1e-7,
                 penalty: Callable | None = None,
                 throw: bool = False) -> GradFitResult:
  """Fits a mixture by gradient descent on the negative log-likelihood.

  Minimises ``-mean_i log p(x_i) + penalty(params)`` over the unconstrained
  coordinates (:func:`to_unconstrained`) with an optax optimizer, in one
  compiled loop that stops when the loss changes by less than ``tol`` or
  after ``max_iter`` steps. Line-search optimizers (``optax.lbfgs()``) get
  the ``value``, ``grad`` and ``value_fn`` they need. Works under ``jit``
  and ``vmap`` (over a batch of initial params).

  Args:
    X: ``(N, D)`` samples.
    params: initial :class:`GMMParams` (from :func:`gmmjax.init_params` or
      a previous EM fit).
    optimizer: an optax optimizer (static; default ``optax.lbfgs()``). Reuse
      one object across calls: a new object recompiles.
    sample_weight: optional ``(N,)`` non-negative weights.
    max_iter: maximum number of optimizer steps (static).
    tol: stop when ``|loss change| < tol``.
    penalty: optional static ``penalty(params) -> scalar`` added to the loss
      (e.g. a prior, a sparsity or separation term).
    throw: raise a :class:`FitError` when the fit failed or did not
      converge, as :func:`gmmjax.fit`'s ``throw``.

  Returns:
    A :class:`GradFitResult`.

  Raises:
    ValueError: concrete ``X`` or ``sample_weight`` holding NaN or
      infinity, or concrete ``params`` whose factors do not match their
      covariances (:meth:`GMMParams.recompute_factors`).

  Example:
    >>> import jax, optax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> res = gx.fit_gradient(X, p0, optax.lbfgs(), max_iter=100)
    >>> bool(res.log_likelihood >= gx.log_likelihood(p0, X))
    True
  """
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  result = _fit_gradient_checked(X, params, optimizer, sample_weight,
                                 max_iter, tol, penalty)
  if throw:
    return error_if_bad(result, "gmmjax.fit_gradient", degenerate=False)
  return result


def _fit_gradient_checked(X, params, optimizer, sample_weight, max_iter, tol,
                          penalty) -> GradFitResult:
  """:func:`fit_gradient` on data already checked for NaN and infinity."""
  params, X, w = checks.prepare(params, X, sample_weight)
  max_iter = check_max_iter(max_iter)
  if optimizer is None:
    optimizer = _default_optimizer()
  return _fit_gradient(X, params, w, jnp.asarray(tol, X.dtype),
                       optimizer=optimizer, max_iter=max_iter,
                       penalty=penalty)


@functools.cache
def _default_optimizer():
  import optax  # noqa: PLC0415 (see the imports)
  return optax.lbfgs()


def em_then_gradient(X, params: GMMParams,
                     optimizer: optax.GradientTransformation | None = None, *,
                     sample_weight=None, em_max_iter: int = 100, em_tol=1e-3,
                     reg_covar=1e-6, max_iter: int = 500, tol=1e-7,
                     penalty: Callable | None = None
                     ) -> tuple[fit_lib.FitResult, GradFitResult]:
  """Hybrid fit: EM to a good basin, then gradient steps on an objective.

  EM (:func:`gmmjax.fit`) climbs fast and safely to the neighbourhood of a
  likelihood maximum; :func:`fit_gradient` then minimises
  ``NLL + penalty`` from there, an objective EM cannot handle in closed form.

  Returns:
    ``(em_result, gradient_result)``.

  Example:
    >>> import jax, optax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="full")
    >>> em, gd = gx.em_then_gradient(X, p0, optax.adam(1e-2), max_iter=20)
    >>> int(gd.n_iter) <= 20
    True
  """
  # fit refuses NaN and infinity in concrete data: checked once.
  em = fit_lib.fit(X, params, sample_weight=sample_weight,
                   max_iter=em_max_iter, tol=em_tol, reg_covar=reg_covar)
  gd = _fit_gradient_checked(X, em.params, optimizer, sample_weight, max_iter,
                             tol, penalty)
  return em, gd
