"""Online (stepwise) EM: a running average of sufficient statistics.

Cappé & Moulines (2009), "On-line expectation-maximization algorithm for
latent data models", JRSS B 71(3): after the E-step statistics ``s_bar`` of
a new batch under the current parameters (per-sample averages),

    s_{t+1} = (1 - gamma_t) s_t + gamma_t s_bar(batch_t; theta_t),
    theta_{t+1} = M-step(s_{t+1}),   gamma_t = (t + 2) ** -alpha,

with ``alpha`` in ``(0.5, 1]`` (the Robbins-Monro conditions; smaller
``alpha`` forgets faster, ``alpha = 1`` weighs every batch equally, as
incremental EM would). The state has a fixed size, whatever the length of
the stream.

The statistics are kept around one shift for the whole stream (the weighted
mean of the first batch), so averages of different batches add exactly and
float32 keeps its digits on data far from the origin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import bayes_params as bp
from gmmjax._src import checks, missing
from gmmjax._src import init as init_lib
from gmmjax._src import matmul as mm
from gmmjax._src import stats as stats_lib
from gmmjax._src.engine import tree_where
from gmmjax._src.params import GMMParams, all_finite
from gmmjax._src.stats import SuffStats


class OnlineState(NamedTuple):
  """State of stepwise EM: parameters and averaged statistics.

  Every leaf has a fixed shape: memory does not grow with the stream.
  """

  params: GMMParams  # current parameters, M-step of `stats` (a
  # BayesParams posterior in online_bayes_init/online_bayes_update)
  stats: SuffStats  # running average of per-sample statistics (count ~ 1)
  shift: jax.Array  # shape=(D,), centre of the second moments
  step: jax.Array  # shape=(), int32, updates done after the initial batch
  n_seen: jax.Array  # shape=(), total sample weight seen
  log_likelihood: jax.Array  # shape=(), mean log-likelihood of the last
  # batch under the parameters before its update (a progress signal)
  failed: jax.Array  # shape=(), bool, the last update went non-finite and
  # was skipped
  jitter: jax.Array = 0.0  # shape=(), the largest diagonal jitter an
  # M-step of this stream added to a full/tied covariance to factorise it
  # (0: none), as :class:`gmmjax.FitResult`'s


def _check_alpha(alpha):
  if isinstance(alpha, (int, float)) and not 0.5 < alpha <= 1.0:
    raise ValueError(f"alpha should be in (0.5, 1], got {alpha!r}: the step "
                     "sizes (t + 2) ** -alpha must sum to infinity with "
                     "finite sum of squares.")


def _batch_stats(model, X, w, shift, observed=None):
  """Per-sample averages of the batch's E-step statistics under ``model``
  (a variational posterior's: those of its variational mixture)."""
  mix = model if isinstance(model, GMMParams) else bp.variational_mixture(
      model)
  s = stats_lib.e_step_stats(mix, X, sample_weight=w, shift=shift,
                             observed=observed)
  return jax.tree.map(lambda a: a / s.count, s), s.count


def _m_step(model, stats, shift, reg_covar, bayes):
  """The model of averaged statistics, and its jitter: EM's M-step, or with
  ``bayes = (prior, n_samples)`` the variational M-step of ``n_samples``
  samples with these average statistics (stochastic variational inference:
  its natural parameters are linear in the statistics)."""
  if bayes is None:
    return stats_lib.params_and_jitter_from_stats(
        stats, shift, model.covariance_type, reg_covar)
  prior, n_samples = bayes
  return bp.posterior_and_jitter_from_stats(
      jax.tree.map(lambda a: a * n_samples, stats), shift, prior,
      covariance_type=model.covariance_type,
      prior_type=model.weight_concentration_prior_type, reg_covar=reg_covar)


@jax.jit
def _online_init(X, params, w, reg_covar, bayes=None, observed=None):
  ww = jnp.ones(X.shape[0], X.dtype) if w is None else w
  centre = X if observed is None else missing.fill_means(X, observed, w)
  shift = lax.stop_gradient(mm.matmul(ww, centre) / jnp.sum(ww))
  stats, count = _batch_stats(params, X, w, shift, observed)
  new, jitter = _m_step(params, stats, shift, reg_covar, bayes)
  ok = all_finite(new)
  return OnlineState(
      params=tree_where(ok, new, params),
      stats=stats, shift=shift, step=jnp.zeros((), jnp.int32), n_seen=count,
      log_likelihood=stats.log_likelihood, failed=~ok,
      jitter=jnp.where(ok, jitter, 0.0).astype(X.dtype))


def online_init(X, params: GMMParams, *, sample_weight=None,
                reg_covar=1e-6, observed=None) -> OnlineState:
  """Starts stepwise EM on the first batch.

  The shift is the batch's (weighted) mean; the first statistics are the
  batch's E-step statistics under ``params`` and the state's parameters their
  M-step (one EM iteration on the batch).

  Args:
    X: ``(n, D)`` first batch.
    params: initial :class:`GMMParams`, typically ``gx.init_params(key, X,
      K)`` on the same batch, or a previous batch fit.
    sample_weight: optional ``(n,)`` weights.
    reg_covar: regulariser added to covariance diagonals.
    observed: optional ``(n, D)`` boolean mask of observed entries
      (missing values, as in :func:`gmmjax.fit`).

  Returns:
    An :class:`OnlineState` with ``step == 0``.

  Raises:
    ValueError: a concrete batch (its observed entries) or
      ``sample_weight`` holding NaN or infinity, or concrete ``params``
      whose factors do not match their covariances. (A later batch with
      them is skipped by :func:`online_update`, ``failed`` set.)

  Example:
    >>> import jax, gmmjax as gx
    >>> X0 = jax.random.normal(jax.random.key(0), (500, 2))
    >>> state = gx.online_init(X0, gx.init_params(jax.random.key(1), X0, 2))
    >>> X1 = jax.random.normal(jax.random.key(2), (500, 2))
    >>> state = gx.online_update(X1, state, alpha=0.7)
    >>> int(state.step), state.params.means.shape
    (1, (2, 2))
  """
  if observed is None:
    checks.check_finite(X)  # NumPy data: on the host, before the transfer
  checks.check_finite(sample_weight, "sample_weight")
  params, X, w = checks.prepare(params, X, sample_weight)
  X, w, observed = _observed(params, X, w, observed)
  if observed is not None:
    checks.check_finite(X)  # the observed entries (the others are zeroed)
  return _online_init(X, params, w, jnp.asarray(reg_covar, X.dtype),
                      observed=observed)


def _observed(params, X, w, observed):
  """``(X, w, observed)``: the mask checked, the missing entries zeroed and
  the rows sorted by their number of missing entries (the batch's
  statistics are sums over its rows)."""
  if observed is None:
    return X, w, None
  missing.check_type(params.covariance_type)
  observed = missing.as_observed(observed, X)
  return missing.sorted_rows(missing.fill(X, observed), w, observed,
                             params.n_components)


@jax.jit
def _online_update(state: OnlineState, X, w, alpha, reg_covar, bayes=None,
                   observed=None):
  params = state.params
  batch, count = _batch_stats(params, X, w, state.shift, observed)
  gamma = (state.step + 2).astype(X.dtype) ** -alpha
  stats = jax.tree.map(lambda s, b: (1 - gamma) * s + gamma * b,
                       state.stats, batch)
  new, jitter = _m_step(params, stats, state.shift, reg_covar, bayes)
  ok = all_finite(new) & jnp.isfinite(batch.log_likelihood)
  return OnlineState(
      params=tree_where(ok, new, params),
      stats=tree_where(ok, stats, state.stats),
      shift=state.shift, step=state.step + ok.astype(jnp.int32),
      n_seen=state.n_seen + jnp.where(ok, count, 0),
      log_likelihood=batch.log_likelihood, failed=~ok,
      jitter=jnp.where(ok, jnp.maximum(state.jitter, jitter), state.jitter))


def online_update(X, state: OnlineState, *, sample_weight=None, alpha=0.6,
                  reg_covar=1e-6, observed=None) -> OnlineState:
  """One stepwise-EM update with a new batch.

  ``s <- (1 - gamma) s + gamma s_bar(X; theta)``, ``theta <- M(s)`` with
  ``gamma = (step + 2) ** -alpha``. A batch whose update would give
  non-finite parameters is skipped (``failed`` set, ``step`` unchanged).
  Compiles once per batch shape; ``alpha`` and ``reg_covar`` are traced.

  Data first, as in every function that fits (``fit(X, params)``,
  ``online_init(X, params)``).

  Args:
    X: ``(n, D)`` batch.
    state: from :func:`online_init` or a previous update.
    sample_weight: optional ``(n,)`` weights.
    alpha: step-size exponent in ``(0.5, 1]``.
    reg_covar: regulariser added to covariance diagonals.
    observed: optional ``(n, D)`` boolean mask of observed entries.

  Returns:
    The new :class:`OnlineState`.
  """
  if isinstance(X, OnlineState) or not isinstance(state, OnlineState):
    raise TypeError("online_update takes the batch first, then the state: "
                    "online_update(X, state, ...).")
  _check_alpha(alpha)
  params, X, w = checks.prepare(state.params, X, sample_weight)
  state = state._replace(params=params)
  X, w, observed = _observed(params, X, w, observed)
  return _online_update(state, X, w, jnp.asarray(alpha, X.dtype),
                        jnp.asarray(reg_covar, X.dtype), observed=observed)


def fit_online(key, batches: Iterable, *, params: GMMParams | None = None,
               n_components: int | None = None,
               covariance_type: str = "full", method: str = "k-means++",
               alpha=0.6, reg_covar=1e-6,
               callback: Callable[[OnlineState], None] | None = None
               ) -> OnlineState:
  """Stepwise EM over a stream of batches, each seen once.

  The first batch initialises: ``params`` if given, else
  ``gx.init_params(key, first_batch, n_components, ...)``, then
  :func:`online_init`; every later batch is one :func:`online_update`. A
  batch is an ``(n, D)`` array or a pair ``(X, sample_weight)``. Batches of
  one size compile once (a shorter last batch compiles once more).
  A first batch holding NaN or infinity is refused (``ValueError``); a
  later one is skipped (``failed`` set), as :func:`online_update` does.

  Args:
    key: PRNG key for :func:`gmmjax.init_params` on the first batch, or
      ``None`` when ``params`` are given.
    batches: an iterable (a generator is fine) of batches.
    params: initial parameters; or give ``key`` and ``n_components``.
    n_components: number of components for that initialisation.
    covariance_type, method: as in :func:`gmmjax.init_params`.
    alpha: step-size exponent in ``(0.5, 1]``.
    reg_covar: regulariser added to covariance diagonals.
    callback: optional ``callback(state)`` after every batch (progress).

  Returns:
    The final :class:`OnlineState`; ``state.params`` is the model.

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> rng = np.random.default_rng(0)
    >>> stream = (rng.normal(size=(1000, 2)) for _ in range(5))
    >>> state = gx.fit_online(jax.random.key(0), stream, n_components=2,
    ...                       covariance_type="diag")
    >>> int(state.step), float(state.n_seen)
    (4, 5000.0)
  """
  _check_alpha(alpha)
  if (params is None) == (key is None or n_components is None):
    raise ValueError("fit_online needs either `params`, or `key` and "
                     "`n_components` to initialise on the first batch.")
  state = None
  for item in batches:
    X, w = item if isinstance(item, tuple) else (item, None)
    if state is None:
      if params is None:
        Xj = checks.as_data(X)
        params = init_lib.init_params(
            key, Xj, n_components, covariance_type=covariance_type,
            method=method, reg_covar=reg_covar, sample_weight=w)
      state = online_init(X, params, sample_weight=w, reg_covar=reg_covar)
    else:
      state = online_update(X, state, sample_weight=w, alpha=alpha,
                            reg_covar=reg_covar)
    if callback is not None:
      callback(state)
  if state is None:
    raise ValueError("fit_online got an empty stream.")
  return state
