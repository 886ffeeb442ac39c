"""`fit`: EM from initial parameters (the driver of engine.py), differentiable."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import checks, compiling, engine, missing
from gmmjax._src import implicit as implicit_lib
from gmmjax._src import priors as priors_lib
from gmmjax._src import stats as stats_lib
from gmmjax._src.chunks import ChunkOptions
from gmmjax._src.engine import check_max_iter
from gmmjax._src.params import GMMParams
from gmmjax._src.results import (  # noqa: F401 - the estimator reads
  FitResult,  # count_degenerate and lower_bound from here
  count_degenerate,
  error_if_bad,
  history_length,
  lower_bound,
)

DIFFERENTIATION_MODES = ("implicit", "unrolled", "none")


def em_step(X, params: GMMParams, *, sample_weight=None, reg_covar=1e-6,
            prior=None, observed=None):
  """One EM iteration (E then M) through the sufficient statistics.

  Data first, as in :func:`fit` (``em_step(X, params)``).

  Args:
    X: ``(N, D)`` samples.
    params: current parameters.
    sample_weight: optional ``(N,)`` non-negative weights.
    reg_covar: non-negative regulariser added to covariance diagonals.
    prior: optional :class:`ConjugatePrior`: MAP-EM (the M-step is the
      posterior mode, :func:`map_params_from_stats`).
    observed: optional ``(N, D)`` boolean mask of observed entries (missing
      values, see :func:`fit`).

  Returns:
    ``(new_params, objective)``: the objective is that of the input
    ``params`` (computed by the E-step): the mean log-likelihood, plus
    ``log_prior(params) / sum(sample_weight)`` with a prior.
  """
  # Concrete params are checked before the jit hides their values (factors
  # inconsistent with their covariances: see GMMParams).
  checks.check_factors(params)
  return _em_step(X, params, sample_weight=sample_weight,
                  reg_covar=reg_covar, prior=prior, observed=observed)


def _em_step_size(X, params, *args, **kwargs):
  return compiling.size_of(params, X)


@compiling.jit_sized(_em_step_size)
def _em_step(X, params: GMMParams, *, sample_weight=None, reg_covar=1e-6,
             prior=None, observed=None):
  """:func:`em_step`, one compiled program."""
  if observed is not None:
    observed = missing.as_observed(observed, X)
    X = missing.fill(X, observed)
  new, objective, _ = em_step_jitter(X, params, sample_weight=sample_weight,
                                     reg_covar=reg_covar, prior=prior,
                                     observed=observed)
  return new, objective


def em_step_jitter(X, params: GMMParams, *, sample_weight=None,
                   reg_covar=1e-6, prior=None, observed=None, slots=None,
                   chunking=None):
  """:func:`em_step`, plus the largest Cholesky jitter the M-step added."""
  new, stats, jitter = _em_step_and_stats(
      X, params, sample_weight=sample_weight, reg_covar=reg_covar,
      prior=prior, observed=observed, slots=slots, chunking=chunking)
  return new, engine.objective(params, stats, prior), jitter


def _em_step_and_stats(X, params: GMMParams, *, sample_weight, reg_covar,
                       prior, observed, slots, chunking):
  """One EM step: ``(new params, E-step statistics of params, jitter)``."""
  shift = stats_lib.component_shift(params)
  stats = stats_lib.e_step_stats(params, X, sample_weight=sample_weight,
                                 shift=shift, observed=observed, slots=slots,
                                 chunking=chunking)
  new, jitter = engine.m_step_from_stats(params, stats, reg_covar, prior)
  return new, stats, jitter


def _fit_impl(X, params, sample_weight, tol, reg_covar, prev_log_likelihood,
              prior, max_iter, history_len: int, callback: Callable | None,
              unrolled_steps: int | None = None, mask=None, observed=None,
              slots: int | None = None, structure=None,
              chunking: ChunkOptions | None = None, init_stats=None):
  problem = engine.Problem(X, sample_weight, tol, reg_covar, prior, mask,
                           observed, structure)
  state = None
  if init_stats is not None:
    state = engine.EMState(params, init_stats,
                           jnp.zeros((), params.means.dtype))
  step = engine.EMStep(slots=slots, chunking=chunking,
                       steps_first=init_stats is not None)
  result, _ = engine.run(step, params, problem, prev_ll=prev_log_likelihood,
                         max_iter=max_iter, history_len=history_len,
                         callback=callback, unrolled_steps=unrolled_steps,
                         chunking=chunking, state=state)
  return result


_fit_programs = compiling.jit_by_size(
    _fit_impl, static_argnames=("history_len", "callback", "unrolled_steps",
                                "slots", "chunking"))


def _fit_program(X, params):
  """The compiled EM loop for these shapes (:func:`compiling.pick`)."""
  return compiling.pick_for(_fit_programs, X, params)


_fit = compiling.call_for_size(_fit_programs)


class _EMFixedPoint(NamedTuple):
  """EM at its fixed point: ``implicit.fit_at_fixed_point``'s rule for
  :func:`fit` (args ``(X, params, sample_weight, tol, reg_covar, prev,
  prior, max_iter, observed)``)."""
  history_len: int
  callback: Callable | None
  slots: int | None = None
  chunking: ChunkOptions | None = None
  empty_ok = False  # an empty or collapsed component is degenerate

  def run(self, X, params, w, tol, reg_covar, prev, prior, max_iter,
          observed):
    return _fit(X, params, w, tol, reg_covar, prev, prior, max_iter,
                history_len=self.history_len, callback=self.callback,
                observed=observed, slots=self.slots, chunking=self.chunking)

  def theta(self, params):
    return implicit_lib.theta_from_params(params)

  def params(self, theta, fixed):
    # The fixed point's precision factors are reused (with the
    # factorisation's derivative), not recomputed from covariances that
    # may carry a jitter (implicit_lib.params_from_theta).
    return implicit_lib.params_from_theta(theta, fixed.covariance_type,
                                          fixed.precisions_cholesky)

  def step(self, theta, inputs, fixed, args):
    x, w, reg, pri = inputs
    params = self.params(theta, fixed)
    new, stats, _ = _em_step_and_stats(
        x, params, sample_weight=w, reg_covar=reg, prior=pri,
        observed=args[-1], slots=self.slots, chunking=self.chunking)
    # Returned: the mean log-likelihood, no prior term (EMStep.result);
    # recorded in the history: with it.
    return (implicit_lib.theta_from_params(new),
            (engine.objective(params, stats), engine.objective(params, stats,
                                                                pri)))


def fit(X, params: GMMParams, *, sample_weight=None, max_iter: int = 100,
        tol=1e-3, reg_covar=1e-6, prev_log_likelihood=-jnp.inf,
        callback: Callable | None = None, prior=None,
        differentiation: str = "implicit",
        solver: implicit_lib.ImplicitSolver | None = None,
        throw: bool = False, nan_gradients: bool = False,
        observed=None, chunking: ChunkOptions | None = None) -> FitResult:
  """Fits a Gaussian mixture by EM from initial parameters.

  The whole loop is one compiled ``lax.while_loop``: iterate E-step and
  M-step until the mean per-sample log-likelihood changes by less than
  ``tol`` between iterations (scikit-learn's rule) or ``max_iter`` is reached.
  It compiles once per shape, dtype, covariance type and ``max_iter``; ``tol``
  and ``reg_covar`` are traced, so changing them does not recompile. It works
  under ``jax.jit`` and ``jax.vmap`` (over a batch of initial params or of
  problems): each member's result equals its separate fit, and on CPU a
  large batch iterates only the members still running, in blocks, so that
  finished members cost nothing.

  Numerical trouble is reported on the result, never returned as NaN:

  - a full/tied covariance that is not positive definite up to rounding
    (float32 moments of collinear features or repeated rows) gets the
    smallest diagonal jitter that lets it be factorised; ``jitter`` is the
    largest one added during the fit (0 when none was needed);
  - ``n_degenerate`` counts the returned components that are empty or
    collapsed (:func:`count_degenerate`); they are kept, with a floored
    weight and a covariance of ``reg_covar`` (docs/robustness.md);
    ``degraded`` is true when either happened;
  - if an iteration still produces non-finite parameters (e.g. a component
    on one point with ``reg_covar=0``), the loop stops, the last finite
    parameters are returned and ``failed`` is set.

  Differentiation (``differentiation``; the fitted values are the same in
  every mode, only the derivatives differ):

  - ``"implicit"`` (default): ``jax.grad``/``jax.vjp``/``jax.jvp`` with
    respect to ``X``, ``sample_weight``, ``reg_covar`` and ``prior`` by
    implicit differentiation at the EM fixed point (a matrix-free Krylov
    solve, see :func:`fixed_point_jvp`); no unrolling, memory independent of
    the number of iterations. Derivatives with respect to the initial
    ``params`` are zero by construction (the fixed point does not depend on
    them). Exact only at a converged fit: use a small ``tol``.
  - ``"unrolled"``: the same iterations as a ``lax.scan`` of ``max_iter``
    steps (steps after the stop are masked), differentiated step by step:
    gradients flow to the initial params too (EM as a fixed-step layer; with
    ``tol=0`` exactly ``max_iter`` steps). Memory grows with ``max_iter``.
  - ``"none"``: all inputs are gradient-stopped; derivatives are zero.

  Args:
    X: ``(N, D)`` samples. Float64 input is computed in float64 when JAX's
      x64 mode is on; results follow the input's dtype.
    params: initial :class:`GMMParams` (from :func:`init_params`,
      :func:`make_params` or a previous fit).
    sample_weight: optional ``(N,)`` non-negative weights (zero-weight rows
      change neither the fit nor its gradients: pad to a fixed shape).
    max_iter: maximum number of EM iterations: a concrete int, but a
      traced value in the compiled loop (``max_iter`` values up to 128, and
      above that those of one power of two, share a program; ``history``
      has :func:`history_length` entries), except under
      ``differentiation="unrolled"``, whose scan has ``max_iter`` steps
      (one program per value). Under a user's ``jit``, mark it static.
    tol: convergence threshold on the change of the mean log-likelihood.
    reg_covar: non-negative regulariser added to covariance diagonals.
    prev_log_likelihood: the log-likelihood the first change is measured
      from (``-inf``; a warm start passes the previous fit's lower bound).
    callback: optional host function ``callback(n_iter, log_likelihood,
      change)`` called after every iteration (progress reports); ``None``
      compiles no callback at all.
    prior: optional :class:`ConjugatePrior` for MAP-EM. The M-step is then
      the posterior mode and ``history`` (and the stopping rule) hold the
      MAP objective ``mean log-likelihood + log_prior / sum(weights)``;
      ``log_likelihood`` stays the plain mean log-likelihood.
    differentiation: ``"implicit"``, ``"unrolled"`` or ``"none"`` (static).
    solver: :class:`ImplicitSolver` settings for the implicit mode.
    throw: raise an error when the fit fails, does not converge or has
      degenerate components (``n_degenerate > 0``), instead of reporting it
      on the result: a :class:`FitError` (a ``RuntimeError``) when called
      outside ``jit``; inside ``jit``, ``vmap`` or ``grad`` a host callback
      raises it when the program runs (a ``JaxRuntimeError`` carrying its
      message).
    nan_gradients: with implicit differentiation, make the derivatives
      (``jax.grad``, ``jax.jvp``) NaN when the fit failed, did not
      converge or has degenerate components, where the fixed-point
      derivative does not hold (by default they are returned and the
      result's ``failed``, ``converged`` and ``n_degenerate`` say so).
    observed: optional ``(N, D)`` boolean mask, True where an entry of
      ``X`` was observed. The other entries are missing at random (their
      values are ignored, NaN included): EM then maximises the observed-data
      likelihood, each sample's E-step using its observed marginal and the
      M-step the conditional expectations of its missing entries (and their
      conditional covariances). Every path works with it (vmap, jit,
      implicit and unrolled derivatives w.r.t. the observed entries). A
      concrete mask of all True is dropped: the fit is then exactly the one
      without a mask.
    chunking: optional :class:`ChunkOptions` (static): the E-step's chunk
      budgets and, under ``vmap``, the blocks the batch runs in; ``None``
      for the measured defaults. It changes time and memory only.

  Returns:
    A :class:`FitResult`.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> result = gx.fit(X, p0, tol=1e-4)
    >>> bool(result.converged), result.history.shape
    (True, (128,))
    >>> loss = lambda X: gx.fit(X, p0, tol=1e-6).log_likelihood
    >>> jax.jit(jax.grad(loss))(X).shape  # one program, not one per op
    (200, 2)
  """
  X, observed = checked_observed(X, observed)
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  params, X, w = checks.prepare(params, X, sample_weight)
  if observed is not None:
    missing.check_type(params.covariance_type)
    observed = missing.as_observed(observed, X)
    X, w, observed = missing.sorted_rows(X, w, observed,
                                         params.n_components)
  max_iter = check_max_iter(max_iter)
  if differentiation not in DIFFERENTIATION_MODES:
    raise ValueError(f"differentiation should be one of "
                     f"{list(DIFFERENTIATION_MODES)}, got {differentiation!r}.")
  if prior is not None:
    prior = priors_lib.as_prior(prior, X.dtype, params.n_components,
                                params.n_features)
  result = fit_checked(X, params, w, tol, reg_covar, prev_log_likelihood,
                       prior, np.int32(max_iter), history_length(max_iter),
                       callback=callback, differentiation=differentiation,
                       solver=solver, unrolled_steps=max_iter + 1,
                       nan_gradients=nan_gradients, observed=observed,
                       slots=missing.max_missing(observed), chunking=chunking)
  return error_if_bad(result, "gmmjax.fit") if throw else result


def checked_observed(X, observed):
  """``(X, observed)`` with the missing entries of ``X`` zeroed; a mask
  known to be all True becomes ``None`` (the complete-data program)."""
  if observed is None:
    return X, None
  if not isinstance(observed, jax.core.Tracer):
    host = np.asarray(observed)
    if host.dtype == bool and host.all():
      return X, None
  X = checks.as_data(X)
  observed = missing.as_observed(observed, X)
  return missing.fill(X, observed), observed


def fit_checked(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
                max_iter, history_len: int, *, callback=None,
                differentiation="implicit", solver=None,
                unrolled_steps: int | None = None, mask=None,
                nan_gradients: bool = False, observed=None,
                slots: int | None = None, structure=None,
                chunking: ChunkOptions | None = None,
                init_stats=None) -> FitResult:
  """:func:`fit` on checked arguments; ``max_iter`` may be traced here
  (``history_len`` static), e.g. inside a vmapped restart program.

  ``init_stats``: an initialisation's statistics (:func:`init.init_stats`),
  whose M-step, the loop's first, makes the initial params (``params``
  then only carry their means, the statistics' shift); not differentiated.

  ``mask``: optional ``(K,)`` bools, the active component slots of
  ``params`` (the others have weight 0 and stay so). Not differentiated.
  ``observed``: optional ``(N, D)`` bools, the observed entries of ``X``
  (whose missing entries are already zeroed); ``slots`` (static) at least
  the most entries a row misses (``missing.max_missing``; ``None``: ``D``).
  ``structure`` (with ``mask``): a traced ``type_switch.CODES`` value, full
  ``params`` fitted as that covariance type (``engine.Problem``).
  ``chunking``: see :func:`fit`.
  """
  tol = jnp.asarray(tol, X.dtype)
  reg_covar = jnp.asarray(reg_covar, X.dtype)
  if init_stats is not None and prior is not None:
    raise ValueError("init_stats: an initialisation's M-step is the plain "
                     "one, not a prior's.")
  if mask is not None or init_stats is not None:
    return _fit(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
                max_iter, history_len=history_len, callback=callback,
                mask=mask, observed=observed, slots=slots,
                structure=structure, chunking=chunking,
                init_stats=init_stats)
  if structure is not None:
    raise ValueError("structure goes with component slots (mask).")
  # An eager call (no tracer: nothing differentiates it) skips the
  # custom_jvp wrapper, which traces on every call (~2 ms per fit).
  if differentiation == "implicit" and any(
      isinstance(leaf, jax.core.Tracer)
      for leaf in jax.tree.leaves((X, params, w, tol, reg_covar, prior,
                                   prev_log_likelihood))):
    return implicit_lib.fit_at_fixed_point(
        _EMFixedPoint(history_len, callback, slots, chunking),
        implicit_lib.ImplicitSolver() if solver is None else solver,
        bool(nan_gradients), X, params, w, tol, reg_covar,
        jnp.asarray(prev_log_likelihood, X.dtype), prior, max_iter, observed)
  if differentiation == "none":
    X, params, w, tol, reg_covar, prior = lax.stop_gradient(
        (X, params, w, tol, reg_covar, prior))
  return _fit(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
              max_iter, history_len=history_len, callback=callback,
              unrolled_steps=(unrolled_steps if differentiation == "unrolled"
                              else None), observed=observed, slots=slots,
              chunking=chunking)
