"""Accelerated EM: SQUAREM (Varadhan & Roland, 2008) with a monotone safeguard.

EM is a fixed-point map ``theta -> F(theta)``. Where the data's clusters
overlap it converges linearly with a rate close to 1 and crawls. SQUAREM
extrapolates along the last two EM steps: with ``r = F(theta) - theta`` and
``v = F(F(theta)) - 2 F(theta) + theta``,

    theta' = theta + 2 a r + a^2 v,    a = sqrt(|r|^2 / |v|^2)  (alpha_3),

then applies one more EM step from ``theta'``. The extrapolation lives in
unconstrained coordinates (log-weights, means, the log-diagonal and strict
upper triangle of the precision Cholesky factor), so every ``theta'`` is a
valid mixture. A step is accepted only if the log-likelihood at ``theta'``
is at least that of ``F(theta)``; otherwise the cycle falls back to
``F(F(theta))``, a plain EM iterate. The log-likelihood therefore never
decreases, and the fixed points are those of EM (``r = 0``).

Each ``while_loop`` iteration performs exactly one EM map evaluation (one
E-step and M-step), on the point the cycle's phase selects, so ``n_iter``
counts E-steps, the same cost unit as :func:`gmmjax.fit`, and a vmapped
batch of fits runs one kernel per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import checks, compiling, engine, results
from gmmjax._src import covariance as cov_ops
from gmmjax._src import stats as stats_lib
from gmmjax._src.chunks import ChunkOptions
from gmmjax._src.engine import tree_where
from gmmjax._src.fit import em_step_jitter
from gmmjax._src.params import GMMParams, all_finite

_STEP_GROWTH = 4.0  # SQUAREM's `mstep`: how fast the step bound grows


def _to_free(params: GMMParams):
  """Unconstrained coordinates of a mixture (a pytree of arrays)."""
  pc = params.precisions_cholesky
  if cov_ops.get(params.covariance_type).is_matrix:
    diag = jnp.diagonal(pc, axis1=-2, axis2=-1)
    upper = jnp.triu(pc, k=1)
    chol = (jnp.log(diag), upper)
  else:
    chol = (jnp.log(pc), jnp.zeros((), pc.dtype))
  return (jnp.log(params.weights), params.means, chol)


def _from_free(free, covariance_type: str) -> GMMParams:
  """The mixture of unconstrained coordinates (inverse of ``_to_free``)."""
  log_w, means, (log_diag, upper) = free
  weights = jax.nn.softmax(log_w)
  if cov_ops.get(covariance_type).is_matrix:
    diag = jnp.exp(log_diag)
    pc = jnp.triu(upper, k=1) + diag[..., :, None] * jnp.eye(
        diag.shape[-1], dtype=diag.dtype)
  else:
    pc = jnp.exp(log_diag)
  cov = cov_ops.covariances_from_cholesky(pc, covariance_type)
  return GMMParams(weights, means, cov, pc, covariance_type)


def _dot(a, b):
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a),
                                             jax.tree.leaves(b)))


def squarem_point(theta0: GMMParams, theta1: GMMParams, theta2: GMMParams,
                  step_max):
  """SQUAREM's extrapolated point and its step length ``alpha`` (>= 1).

  ``alpha = 1`` gives back ``theta2``; larger values extrapolate further
  along the EM path. ``alpha`` is clipped to ``[1, step_max]``.
  """
  p0, p1, p2 = (_to_free(t) for t in (theta0, theta1, theta2))
  r = jax.tree.map(jnp.subtract, p1, p0)
  v = jax.tree.map(lambda a, b, c: c - 2.0 * b + a, p0, p1, p2)
  rr, vv = _dot(r, r), _dot(v, v)
  tiny = jnp.finfo(rr.dtype).tiny
  alpha = jnp.sqrt(rr / jnp.maximum(vv, tiny))
  alpha = jnp.clip(jnp.where(jnp.isfinite(alpha), alpha, 1.0), 1.0, step_max)
  point = jax.tree.map(lambda a, b, c: a + 2.0 * alpha * b + alpha**2 * c,
                       p0, r, v)
  return _from_free(point, theta0.covariance_type), alpha


class AccelInfo(NamedTuple):
  """Diagnostics of an accelerated fit."""

  n_accepted: jax.Array  # shape=(), int32, extrapolations kept
  n_rejected: jax.Array  # shape=(), int32, extrapolations that lowered the
  # log-likelihood (or went non-finite) and were replaced by an EM step


class _State(NamedTuple):
  base: GMMParams  # theta0 of the cycle
  mid: GMMParams  # F(theta0) after phase 0, F(F(theta0)) after phase 1
  point: GMMParams  # where the next EM map is evaluated
  phase: jax.Array  # 0: at theta0, 1: at F(theta0), 2: at the extrapolation
  ll1: jax.Array  # log-likelihood of F(theta0)
  step_max: jax.Array
  n_accepted: jax.Array
  n_rejected: jax.Array


class SquaremStep(NamedTuple):
  """One EM map evaluation per step, on the point the cycle's phase selects.

  Phases 0 and 1 are plain EM steps: a failure there is a failure of EM
  itself and stops the fit, as in gmmjax.fit, and only they are tested for
  convergence. Phase 2 evaluates the extrapolated point; a bad value there
  only rejects the extrapolation.
  """
  chunking: ChunkOptions | None = None  # the E-step's chunk budgets
  reduce = None
  evaluates_first = False  # the first step is an iteration already

  def init(self, params: GMMParams, problem: engine.Problem) -> _State:
    dtype = params.means.dtype
    zero = jnp.zeros((), jnp.int32)
    return _State(base=params, mid=params, point=params, phase=zero,
                  ll1=jnp.asarray(-jnp.inf, dtype),
                  step_max=jnp.asarray(1.0, dtype), n_accepted=zero,
                  n_rejected=zero)

  def step(self, c: _State, problem: engine.Problem, started):
    del started
    new, ll, jitter = em_step_jitter(problem.X, c.point,
                                     sample_weight=problem.sample_weight,
                                     reg_covar=problem.reg_covar,
                                     chunking=self.chunking)
    ok = all_finite(new) & jnp.isfinite(ll)
    p0, p1, p2 = c.phase == 0, c.phase == 1, c.phase == 2
    accept = p2 & ok & (ll >= c.ll1)
    reject = p2 & ~accept
    extrap, alpha = squarem_point(c.base, c.mid, new, c.step_max)
    step_max = jnp.where(p1 & (alpha >= c.step_max),
                         c.step_max * _STEP_GROWTH, c.step_max)
    step_max = jnp.where(reject, jnp.maximum(1.0, step_max / _STEP_GROWTH),
                         step_max)
    # Next cycle's theta0: F(theta') if accepted, else F(F(theta0)).
    base = tree_where(accept, new, tree_where(reject, c.mid, c.base))
    state = _State(
        base=base,
        mid=tree_where(~p2 & ok, new, c.mid),
        point=tree_where(p0, new, tree_where(p1, extrap, base)),
        phase=jnp.where(p2, 0, jnp.where(ok, c.phase + 1,
                                         c.phase)).astype(jnp.int32),
        ll1=jnp.where(p1, ll, c.ll1), step_max=step_max,
        n_accepted=c.n_accepted + accept.astype(jnp.int32),
        n_rejected=c.n_rejected + reject.astype(jnp.int32))
    # A rejected extrapolation records the EM iterate that replaces it.
    report = engine.Report(
        counted=ok | p2, objective=jnp.where(reject, c.ll1, ll),
        tested=ok & ~p2, failed=~p2 & ~ok,
        jitter=jnp.where(ok & ~reject, jitter, 0))
    return state, report

  def result(self, c: _State, problem: engine.Problem):
    """The latest iterate and its log-likelihood.

    It is the EM image last computed (phase 0 or 1 done), or the next
    cycle's theta0 (a cycle just completed, or none started); a failure
    keeps the last finite iterate.
    """
    params = tree_where(c.phase == 0, c.base, c.mid)
    final = stats_lib.e_step_stats(params, problem.X,
                                   sample_weight=problem.sample_weight,
                                   chunking=self.chunking)
    return params, final.log_likelihood / final.count

  def n_positive(self, problem: engine.Problem):
    return results.n_positive_samples(problem.X, problem.sample_weight)


def _fit_squarem_impl(X, params, sample_weight, tol, reg_covar,
                      prev_log_likelihood, max_iter, history_len: int,
                      callback: Callable | None,
                      chunking: ChunkOptions | None = None):
  problem = engine.Problem(X, sample_weight, tol, reg_covar)
  step = SquaremStep(chunking)
  result, state = engine.run(step, params, problem,
                             prev_ll=prev_log_likelihood, max_iter=max_iter,
                             history_len=history_len, callback=callback,
                             chunking=chunking)
  return result, AccelInfo(state.n_accepted, state.n_rejected)


_fit_squarem_programs = compiling.jit_by_size(
    _fit_squarem_impl, static_argnames=("history_len", "callback",
                                         "chunking"))


_fit_squarem = compiling.call_for_size(_fit_squarem_programs)


def fit_accelerated(X, params: GMMParams, *, sample_weight=None,
                    max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                    prev_log_likelihood=-jnp.inf,
                    callback: Callable | None = None, throw: bool = False,
                    chunking: ChunkOptions | None = None):
  """Fits a Gaussian mixture by SQUAREM-accelerated EM (one ``while_loop``).

  Same arguments, stopping rule and result as :func:`gmmjax.fit`, with EM's
  map accelerated by SQUAREM's ``alpha_3`` step (see the module docstring).
  The log-likelihood never decreases: an extrapolation that would lower it
  is rejected and replaced by a plain EM step. The fit converges to a fixed
  point of EM, as :func:`gmmjax.fit` does, usually in fewer E-steps where
  clusters overlap.

  Differences in meaning from :func:`gmmjax.fit`: ``n_iter`` counts EM map
  evaluations (E-steps, the unit of cost, bounded by ``max_iter``), and
  ``history[i]`` is the log-likelihood evaluated by E-step ``i + 1``, except
  that a rejected extrapolation's entry repeats the log-likelihood of the
  EM iterate that replaced it; so ``history`` is non-decreasing. The
  convergence rule ``|change| < tol`` is tested on plain EM steps only
  (never across an extrapolation), so ``tol`` means what it means for EM,
  and ``result.params`` is the EM image of the last evaluated point.

  Args:
    X: ``(N, D)`` samples.
    params: initial :class:`GMMParams`.
    sample_weight: optional ``(N,)`` non-negative weights.
    max_iter: maximum number of EM map evaluations (a concrete int).
    tol: convergence threshold on the change of the mean log-likelihood.
    reg_covar: non-negative regulariser added to covariance diagonals.
    prev_log_likelihood: log-likelihood the first change is measured from.
    callback: optional host ``callback(n_iter, log_likelihood, change)``.
    throw: raise an error when the fit fails, does not converge or
      degenerates, as :func:`gmmjax.fit`'s ``throw``.
    chunking: optional :class:`gmmjax.ChunkOptions`, as in
      :func:`gmmjax.fit`.

  Returns:
    A :class:`gmmjax.FitResult` (:func:`fit_accelerated_with_info` adds the
    counts of accepted and rejected extrapolations).

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (300, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> r = gx.fit_accelerated(X, p0, tol=1e-6, max_iter=500)
    >>> bool(r.converged), bool(jax.numpy.all(jax.numpy.diff(
    ...     r.history[:int(r.n_iter)]) >= -1e-6))
    (True, True)
  """
  return fit_accelerated_with_info(
      X, params, sample_weight=sample_weight, max_iter=max_iter, tol=tol,
      reg_covar=reg_covar, prev_log_likelihood=prev_log_likelihood,
      callback=callback, throw=throw, chunking=chunking)[0]


def fit_accelerated_with_info(X, params: GMMParams, *, sample_weight=None,
                              max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                              prev_log_likelihood=-jnp.inf,
                              callback: Callable | None = None,
                              throw: bool = False,
                              chunking: ChunkOptions | None = None):
  """:func:`fit_accelerated`, also returning its :class:`AccelInfo`.

  Same arguments and result; returns ``(FitResult, AccelInfo)``, the
  numbers of accepted and rejected SQUAREM extrapolations.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (300, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> r, info = gx.fit_accelerated_with_info(X, p0, tol=1e-6)
    >>> int(info.n_accepted + info.n_rejected) > 0
    True
  """
  if params.covariance_type == "lowrank":
    raise ValueError("fit_accelerated does not support covariance_type="
                     "'lowrank' (its extrapolation works on triangular "
                     "precision factors); use gx.fit.")
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  params, X, w = checks.prepare(params, X, sample_weight)
  max_iter = engine.check_max_iter(max_iter)
  result, info = _fit_squarem(X, params, w, jnp.asarray(tol, X.dtype),
                              jnp.asarray(reg_covar, X.dtype),
                              jnp.asarray(prev_log_likelihood, X.dtype),
                              np.int32(max_iter),
                              history_len=results.history_length(max_iter),
                              callback=callback, chunking=chunking)
  if throw:
    result = results.error_if_bad(result, "gmmjax.fit_accelerated")
  return result, info
