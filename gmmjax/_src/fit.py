"""The EM loop: one compiled ``lax.while_loop`` from initial parameters."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import batching, checks, compiling
from gmmjax._src import implicit as implicit_lib
from gmmjax._src import priors as priors_lib
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams, all_finite

DIFFERENTIATION_MODES = ("implicit", "unrolled", "none")


class FitResult(NamedTuple):
  """What :func:`fit` returns. Under ``vmap`` every field gains a batch axis."""

  params: GMMParams  # exactly `n_iter` EM iterations from the initial params
  log_likelihood: jax.Array  # shape=(), mean log-likelihood of `params`
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
  """Entries of ``FitResult.history`` for ``max_iter``: a power of two >= 8.

  ``max_iter`` itself is a traced value of the compiled loop, so every
  ``max_iter`` of one bucket (e.g. 65..128) runs the same program; only the
  history's length is static. ``max_iter=0`` still gets a (NaN) history.
  """
  return max(8, 1 << (int(max_iter) - 1).bit_length())


class _Carry(NamedTuple):
  params: GMMParams  # the current iterate
  stats: stats_lib.SuffStats  # its E-step statistics
  objective: jax.Array  # its mean log-likelihood (plus log prior / count)
  prev_ll: jax.Array
  n_iter: jax.Array
  history: jax.Array
  converged: jax.Array
  failed: jax.Array
  jitter: jax.Array
  started: jax.Array  # False only before the initial params are evaluated
  max_iter: jax.Array  # int32, read by the stopping rule (cond may not
  # close over traced values: batching.while_loop)


def count_degenerate(params: GMMParams, n_samples, reg_covar,
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
  ctype = params.covariance_type
  if ctype in ("full", "tied"):
    smallest = jnp.min(jnp.linalg.eigvalsh(cov), axis=-1)
  elif ctype == "diag":
    smallest = jnp.min(cov, axis=-1)
  else:
    smallest = cov
  smallest = jnp.broadcast_to(smallest, params.weights.shape)
  collapsed = smallest <= 2 * jnp.asarray(reg_covar, dtype)
  empty = params.weights * jnp.asarray(n_samples, dtype) < 1
  bad = empty | collapsed
  if mask is not None:
    bad = bad & mask
  return jnp.sum(bad).astype(jnp.int32)


def n_positive_samples(X, sample_weight):
  """Rows with a positive weight (all rows without weights)."""
  if sample_weight is None:
    return X.shape[0]
  return jnp.sum(sample_weight > 0)


@jax.jit
def em_step(params: GMMParams, X, sample_weight=None, reg_covar=1e-6,
            prior=None):
  """One EM iteration (E then M) through the sufficient statistics.

  Args:
    params: current parameters.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` non-negative weights.
    reg_covar: non-negative regulariser added to covariance diagonals.
    prior: optional :class:`ConjugatePrior`: MAP-EM (the M-step is the
      posterior mode, :func:`map_params_from_stats`).

  Returns:
    ``(new_params, objective)``: the objective is that of the input
    ``params`` (computed by the E-step): the mean log-likelihood, plus
    ``log_prior(params) / sum(sample_weight)`` with a prior.
  """
  new, objective, _ = em_step_jitter(params, X, sample_weight, reg_covar,
                                     prior)
  return new, objective


def em_step_jitter(params: GMMParams, X, sample_weight=None, reg_covar=1e-6,
                   prior=None):
  """:func:`em_step`, plus the largest Cholesky jitter the M-step added."""
  stats, objective = evaluate(params, X, sample_weight, prior)
  new, jitter = m_step_from_stats(params, stats, reg_covar, prior)
  return new, objective, jitter


def evaluate(params: GMMParams, X, sample_weight=None, prior=None):
  """E-step statistics of ``params`` (around its means) and its objective.

  The objective is the mean log-likelihood, plus ``log_prior(params) /
  sum(sample_weight)`` with a prior.
  """
  shift = stats_lib.component_shift(params)
  stats = stats_lib.e_step_stats(params, X, sample_weight, shift)
  if prior is None:
    return stats, stats.log_likelihood / stats.count
  objective = stats.log_likelihood + priors_lib.log_prior(params, prior)
  return stats, objective / stats.count


def m_step_from_stats(params: GMMParams, stats, reg_covar, prior=None):
  """The M-step from :func:`evaluate`'s statistics of ``params``; + jitter."""
  shift = stats_lib.component_shift(params)
  if prior is None:
    return stats_lib.params_and_jitter_from_stats(
        stats, shift, params.covariance_type, reg_covar)
  return priors_lib.map_params_and_jitter_from_stats(
      stats, shift, params.covariance_type, reg_covar, prior)


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


def _fit_impl(X, params, sample_weight, tol, reg_covar, prev_log_likelihood,
              prior, max_iter, history_len: int, callback: Callable | None,
              unrolled_steps: int | None = None, mask=None):
  dtype = X.dtype

  def where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)

  def cond(c: _Carry):
    return ~c.started | ((c.n_iter < c.max_iter) & ~c.converged & ~c.failed)

  # Each pass is M-step then E-step: the E-step that gives iteration i's
  # log-likelihood also gives the statistics of iteration i + 1's M-step,
  # and after the loop the returned params' log-likelihood is already known.
  # The first pass skips the M-step (its result is discarded) and only
  # evaluates the initial params: one E-step in the compiled program.
  def body(c: _Carry, ops, active=None):
    X, sample_weight, tol, reg_covar, prior, mask = ops
    stepped, jitter = m_step_from_stats(c.params, c.stats, reg_covar, prior)
    if mask is not None:  # component slots beyond k stay empty
      stepped = stats_lib.mask_components(stepped, c.stats.nk, mask)
    new = where(c.started, stepped, c.params)
    stats, objective = evaluate(new, X, sample_weight, prior)
    ok = all_finite(new) & jnp.isfinite(objective)
    # Iteration n_iter + 1 as scikit-learn counts it: its log-likelihood is
    # the current params' (before the M-step), its result the new params.
    change = c.objective - c.prev_ll
    step = c.started & ok
    if callback is not None:
      # The body may also run for members that have stopped (vmapped, or a
      # block's filler; the results are discarded): only running ones report.
      shown = step & (cond(c) if active is None else active)
      progress_callback(callback, c.n_iter + 1, c.objective, change,
                        active=shown)
    return _Carry(
        params=where(ok, new, c.params),
        stats=where(ok, stats, c.stats),
        objective=jnp.where(ok, objective, c.objective),
        prev_ll=jnp.where(step, c.objective, c.prev_ll),
        n_iter=c.n_iter + step.astype(jnp.int32),
        history=jnp.where(step, c.history.at[c.n_iter].set(c.objective),
                          c.history),
        converged=step & (jnp.abs(change) < tol),
        failed=~ok,
        jitter=jnp.where(step, jnp.maximum(c.jitter, jitter), c.jitter),
        started=jnp.ones((), bool), max_iter=c.max_iter)

  zeros = jnp.zeros((), dtype)
  init = _Carry(
      params=params,
      stats=_placeholder_stats(params),
      objective=zeros,
      prev_ll=jnp.asarray(prev_log_likelihood, dtype),
      n_iter=jnp.zeros((), jnp.int32),
      history=jnp.full((history_len,), jnp.nan, dtype),
      converged=jnp.zeros((), bool),
      failed=jnp.zeros((), bool),
      jitter=zeros,
      started=jnp.zeros((), bool),
      max_iter=jnp.minimum(jnp.asarray(max_iter, jnp.int32), history_len))
  ops = (X, sample_weight, tol, reg_covar, prior, mask)
  if unrolled_steps is not None:
    # Same iterations as the while_loop, as a fixed-length scan that reverse
    # mode can differentiate: steps after the stop are masked out. Its
    # length (max_iter + 1) is static: memory grows with it.
    def scan_step(c, _):
      active = cond(c)
      new = body(c, ops, active)
      return where(active, new, c), None
    out, _ = lax.scan(scan_step, init, None, length=unrolled_steps)
  else:
    # Vmapped (many problems or restarts at once), members that have
    # stopped skip the remaining iterations (batching.while_loop).
    k, d = params.means.shape
    out = batching.while_loop(
        cond, body, init, ops,
        member_bytes=X.shape[0] * k * d * dtype.itemsize)
  final_ll = out.stats.log_likelihood / out.stats.count
  failed = out.failed | ~jnp.isfinite(final_ll)
  return FitResult(params=out.params, log_likelihood=final_ll,
                   n_iter=out.n_iter, converged=out.converged & ~failed,
                   history=out.history, failed=failed, jitter=out.jitter,
                   n_degenerate=count_degenerate(
                       out.params, n_positive_samples(X, sample_weight),
                       reg_covar, mask))


_fit_programs = compiling.jit_by_size(
    _fit_impl, static_argnames=("history_len", "callback", "unrolled_steps"))


def _fit_program(X, params):
  """The compiled EM loop for these shapes (:func:`compiling.pick`)."""
  k, d = params.means.shape[-2:]
  return compiling.pick(_fit_programs, X.shape[-2], k, d)


def _fit(X, params, *args, **kwargs):
  return _fit_program(X, params)(X, params, *args, **kwargs)


def _placeholder_stats(params: GMMParams) -> stats_lib.SuffStats:
  """Statistics whose M-step gives ``params`` back (up to ``reg_covar``).

  The first pass's discarded M-step reads them: finite and positive definite
  whatever ``reg_covar`` is, so even its masked-out derivatives are finite.
  """
  k, d = params.means.shape
  dtype = params.means.dtype
  cov = lax.stop_gradient(params.covariances)
  scale = {"full": 1.0, "tied": k, "diag": 1.0, "spherical": d}
  return stats_lib.SuffStats(
      count=jnp.asarray(k, dtype), nk=jnp.ones((k,), dtype),
      sx=jnp.zeros((k, d), dtype), sxx=cov * scale[params.covariance_type],
      log_likelihood=jnp.zeros((), dtype))


class _Static(NamedTuple):
  history_len: int
  callback: Callable | None
  solver: implicit_lib.ImplicitSolver


def _mean_log_likelihood(params: GMMParams, X, sample_weight):
  logp = jax.nn.logsumexp(stats_lib.weighted_log_prob(params, X), axis=1)
  if sample_weight is None:
    return jnp.mean(logp)
  return jnp.sum(sample_weight * logp) / jnp.sum(sample_weight)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fit_implicit(static: _Static, X, params, sample_weight, tol, reg_covar,
                  prev_log_likelihood, prior, max_iter):
  return _fit(X, params, sample_weight, tol, reg_covar, prev_log_likelihood,
              prior, max_iter, history_len=static.history_len,
              callback=static.callback)


@_fit_implicit.defjvp
def _fit_implicit_jvp(static: _Static, primals, tangents):
  X, params, sample_weight, tol, reg_covar, prev_ll, prior, _ = primals
  dX, _, dw, _, dreg, _, dprior, _ = tangents
  out = _fit_implicit(static, *primals)
  ctype = params.covariance_type
  inputs = (X, sample_weight, reg_covar, prior)
  d_inputs = (dX, dw, dreg, dprior)

  # Both the linearisation of the EM map and the outputs' tangents are taken
  # at the fixed point, whose precision factors the fit already has: they
  # are reused (with the factorisation's derivative), not recomputed from
  # covariances that may carry a jitter (implicit_lib.params_from_theta).
  prec_chol = out.params.precisions_cholesky

  def step(theta, inp):
    x, w, reg, pri = inp
    new, _ = em_step(implicit_lib.params_from_theta(theta, ctype, prec_chol),
                     x, w, reg, pri)
    return implicit_lib.theta_from_params(new)

  theta = implicit_lib.theta_from_params(out.params)
  # The initial params, tol and prev_log_likelihood do not move the fixed
  # point: their tangents are dropped, so gradients w.r.t. them are zero.
  d_theta = implicit_lib.fixed_point_jvp(step, theta, inputs, d_inputs,
                                         solver=static.solver)

  def outputs(th, inp):
    x, w, _, _ = inp
    p = implicit_lib.params_from_theta(th, ctype, prec_chol)
    return p, _mean_log_likelihood(p, x, w)

  _, (d_params, d_ll) = jax.jvp(outputs, (theta, inputs), (d_theta, d_inputs))
  d_out = FitResult(
      params=d_params,
      log_likelihood=d_ll.astype(out.log_likelihood.dtype),
      n_iter=_float0_zeros(out.n_iter),
      converged=_float0_zeros(out.converged),
      history=jnp.zeros_like(out.history),
      failed=_float0_zeros(out.failed),
      jitter=jnp.zeros_like(out.jitter),
      n_degenerate=_float0_zeros(out.n_degenerate))
  return out, d_out


def _float0_zeros(x):
  return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def fit(X, params: GMMParams, *, sample_weight=None, max_iter: int = 100,
        tol=1e-3, reg_covar=1e-6, prev_log_likelihood=-jnp.inf,
        callback: Callable | None = None, prior=None,
        differentiation: str = "implicit",
        solver: implicit_lib.ImplicitSolver | None = None) -> FitResult:
  """Fits a Gaussian mixture by EM from initial parameters.

  The whole loop is one compiled ``lax.while_loop``: iterate E-step and
  M-step until the mean per-sample log-likelihood changes by less than
  ``tol`` between iterations (scikit-learn's rule) or ``max_iter`` is reached.
  It compiles once per shape, dtype, covariance type and ``max_iter``; ``tol``
  and ``reg_covar`` are traced, so changing them does not recompile. It works
  under ``jax.jit`` and ``jax.vmap`` (over a batch of initial params or of
  problems): each member's result equals its separate fit, and on CPU a
  large batch iterates only the members still running, in blocks, so that
  finished members cost nothing (:mod:`gmmjax._src.batching`).

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
      traced value in the compiled loop (``max_iter`` values of one power
      of two share a program; ``history`` has :func:`history_length`
      entries). Under a user's ``jit``, mark it static.
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
    >>> jax.grad(loss)(X).shape
    (200, 2)
  """
  params, X, w = checks.prepare(params, X, sample_weight)
  max_iter = check_max_iter(max_iter)
  if differentiation not in DIFFERENTIATION_MODES:
    raise ValueError(f"differentiation should be one of "
                     f"{list(DIFFERENTIATION_MODES)}, got {differentiation!r}.")
  if prior is not None:
    prior = priors_lib.as_prior(prior, X.dtype, params.n_components,
                                params.n_features)
  return fit_checked(X, params, w, tol, reg_covar, prev_log_likelihood,
                     prior, np.int32(max_iter), history_length(max_iter),
                     callback=callback, differentiation=differentiation,
                     solver=solver,
                     unrolled_steps=max_iter + 1)


def fit_checked(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
                max_iter, history_len: int, *, callback=None,
                differentiation="implicit", solver=None,
                unrolled_steps: int | None = None, mask=None) -> FitResult:
  """:func:`fit` on checked arguments; ``max_iter`` may be traced here
  (``history_len`` static), e.g. inside a vmapped restart program.

  ``mask``: optional ``(K,)`` bools, the active component slots of
  ``params`` (the others have weight 0 and stay so). Not differentiated.
  """
  tol = jnp.asarray(tol, X.dtype)
  reg_covar = jnp.asarray(reg_covar, X.dtype)
  if mask is not None:
    return _fit(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
                max_iter, history_len=history_len, callback=callback,
                mask=mask)
  # An eager call (no tracer: nothing differentiates it) skips the
  # custom_jvp wrapper, which traces on every call (~2 ms per fit).
  if differentiation == "implicit" and any(
      isinstance(leaf, jax.core.Tracer)
      for leaf in jax.tree.leaves((X, params, w, tol, reg_covar, prior,
                                   prev_log_likelihood))):
    static = _Static(history_len, callback,
                     implicit_lib.ImplicitSolver() if solver is None
                     else solver)
    return _fit_implicit(static, X, params, w, tol, reg_covar,
                         jnp.asarray(prev_log_likelihood, X.dtype), prior,
                         max_iter)
  if differentiation == "none":
    X, params, w, tol, reg_covar, prior = lax.stop_gradient(
        (X, params, w, tol, reg_covar, prior))
  return _fit(X, params, w, tol, reg_covar, prev_log_likelihood, prior,
              max_iter, history_len=history_len, callback=callback,
              unrolled_steps=(unrolled_steps if differentiation == "unrolled"
                              else None))


def check_max_iter(max_iter) -> int:
  """``max_iter`` as a non-negative Python int, or a ``ValueError``."""
  if isinstance(max_iter, jax.core.Tracer):
    raise ValueError(
        "max_iter is traced: it sets the length of the fit's history, so it "
        "must be a concrete int. Mark it static (jax.jit(..., "
        "static_argnames='max_iter')) or close over it.")
  if (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
      or max_iter < 0):
    raise ValueError(f"max_iter should be a non-negative int, got {max_iter!r}.")
  return int(max_iter)
