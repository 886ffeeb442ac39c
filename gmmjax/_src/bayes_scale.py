"""Variational fits at scale: the chunked host loop (``scale_chunked.py``)
and the sharded compiled loop (``scale.py``) with
:class:`~gmmjax._src.variational.VariationalStep` as their step, and the
stepwise updates of ``scale_online.py`` with the variational M-step
(stochastic variational inference)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import bayes_params as bp
from gmmjax._src import checks, engine, scale, scale_chunked, scale_online
from gmmjax._src import variational as vb
from gmmjax._src.bayes_fit import _as_posterior, _as_prior
from gmmjax._src.results import FitResult, error_if_bad


def fit_bayes_chunked(data, posterior: bp.BayesParams, prior: bp.BayesPrior,
                      *, sample_weight=None, chunk_size: int | None = None,
                      max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                      prev_lower_bound=-jnp.inf,
                      callback: Callable | None = None,
                      reduce: Callable | None = None, prefetch: int = 2,
                      device=None, throw: bool = False) -> FitResult:
  """:func:`gmmjax.fit_bayes` over data streamed in chunks.

  The same variational iteration, its E-step statistics summed one chunk
  at a time (and over processes with ``reduce=gx.process_sum``) exactly as
  :func:`gmmjax.fit_chunked` sums EM's: the loop runs on the host, one pass
  over the data per iteration.

  Args:
    data: a 2-D array, a re-iterable of chunks or a function returning an
      iterator of chunks (:func:`gmmjax.chunk_source`).
    posterior: the initial :class:`BayesParams`.
    prior: a :class:`BayesPrior`.
    sample_weight, chunk_size, reduce, prefetch, device: as in
      :func:`gmmjax.fit_chunked`.
    max_iter, tol, reg_covar, prev_lower_bound, callback, throw: as in
      :func:`gmmjax.fit_bayes`.

  Returns:
    A :class:`FitResult` as :func:`gmmjax.fit_bayes` returns.

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> prior = gx.make_bayes_prior(X, 3, covariance_type="diag")
    >>> resp = jax.nn.softmax(jax.random.normal(jax.random.key(1), (200, 3)))
    >>> p0 = gx.posterior_from_resp(X, resp, prior, covariance_type="diag")
    >>> a = gx.fit_bayes_chunked(np.asarray(X), p0, prior, chunk_size=64)
    >>> b = gx.fit_bayes(X, p0, prior)
    >>> int(a.n_iter) == int(b.n_iter), bool(
    ...     abs(a.lower_bound - b.lower_bound) < 1e-4 * abs(b.lower_bound))
    (True, True)
  """
  scale_chunked._refuse_tracers(data, posterior, sample_weight, tol, reg_covar,
                        prev_lower_bound)
  max_iter = engine.check_max_iter(max_iter)
  if not isinstance(posterior, bp.BayesParams):
    raise TypeError(f"posterior should be a BayesParams, got "
                    f"{type(posterior)}.")
  _, stats_pass, dtype = scale_chunked.chunked_stats_pass(
      data, bp.variational_mixture(posterior), sample_weight=sample_weight,
      chunk_size=chunk_size, reduce=reduce, prefetch=prefetch,
      device=device)
  device = device or jax.local_devices()[0]
  post = jax.device_put(
      jax.tree.map(lambda a: jnp.asarray(a, dtype), posterior), device)
  problem = engine.Problem(None, None, jnp.asarray(tol, dtype),
                           jnp.asarray(reg_covar, dtype),
                           jax.device_put(_as_prior(prior, dtype), device))
  result = engine.host_fit(post, problem, stats_pass,
                           prev_ll=jnp.asarray(prev_lower_bound, dtype),
                           max_iter=max_iter, callback=callback,
                           step=vb.VariationalStep())
  if throw:
    return error_if_bad(result, "gmmjax.fit_bayes_chunked", degenerate=False)
  return result


def fit_bayes_sharded(X, posterior: bp.BayesParams, prior: bp.BayesPrior, *,
                      sample_weight=None, mesh=None, axis_name=None,
                      max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                      prev_lower_bound=-np.inf, throw: bool = False
                      ) -> FitResult:
  """:func:`gmmjax.fit_bayes` on samples sharded over devices.

  The loop of :func:`gmmjax.fit_sharded` with the variational step: each
  device computes the E-step statistics of its rows under the variational
  mixture, one ``lax.psum`` per iteration adds them, and every device makes
  the same variational M-step, so the posterior stays replicated. With
  several processes, pass the global arrays of :func:`gmmjax.global_data`.
  The result equals :func:`gmmjax.fit_bayes` on one device up to summation
  order.

  Args:
    X: ``(N, D)`` samples (see :func:`gmmjax.fit_sharded` for placement and
      padding).
    posterior: the initial :class:`BayesParams`, optionally with a leading
      restart axis (vmapped inside every device's program).
    prior: a :class:`BayesPrior`.
    sample_weight, mesh, axis_name: as in :func:`gmmjax.fit_sharded`.
    max_iter, tol, reg_covar, prev_lower_bound, throw: as in
      :func:`gmmjax.fit_bayes`.

  Returns:
    A :class:`FitResult` (posterior in ``params``, lower bound in
    ``log_likelihood``), replicated on the mesh.

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> prior = gx.make_bayes_prior(X, 3, covariance_type="diag")
    >>> labels = jax.random.randint(jax.random.key(1), (200,), 0, 3)
    >>> p0 = gx.posterior_from_resp(X, jax.nn.one_hot(labels, 3), prior,
    ...                             covariance_type="diag")
    >>> a = gx.fit_bayes_sharded(X, p0, prior)
    >>> b = gx.fit_bayes(X, p0, prior)
    >>> int(a.n_iter) == int(b.n_iter), bool(
    ...     abs(a.lower_bound - b.lower_bound) < 1e-4 * abs(b.lower_bound))
    (True, True)
  """
  max_iter = engine.check_max_iter(max_iter)
  if not isinstance(posterior, bp.BayesParams):
    raise TypeError(f"posterior should be a BayesParams, got "
                    f"{type(posterior)}.")
  batched = posterior.means.ndim == 3
  ref = jax.tree.map(lambda a: a[0], posterior) if batched else posterior
  mesh, axes, X, w, dtype = scale.sharded_operands(
      X, lambda x: _as_posterior(ref, x), sample_weight, mesh, axis_name)
  post = jax.tree.map(lambda a: jnp.asarray(a, dtype), posterior)
  prior = _as_prior(prior, dtype)
  scalars = [np.asarray(v, dtype) for v in (tol, reg_covar, prev_lower_bound)]
  if jax.process_count() > 1:  # host values are taken as replicated
    post, prior = jax.tree.map(np.asarray, (post, prior))
  fn = scale._sharded_fit_fn(mesh, axes, max_iter, w is not None, batched,
                             vb.VariationalStep)
  result = fn(X, w, post, *scalars, prior)
  if throw:
    return error_if_bad(result, "gmmjax.fit_bayes_sharded", degenerate=False)
  return result


def _online_operands(X, posterior, prior, sample_weight, n_samples,
                     reg_covar):
  X = checks.as_data(X)
  post = _as_posterior(posterior, X)
  if not (isinstance(n_samples, (int, float, np.integer, np.floating))
          and n_samples > 0):
    raise ValueError(f"n_samples should be the positive (weighted) size of "
                     f"the whole data set, got {n_samples!r}.")
  bayes = (_as_prior(prior, X.dtype), jnp.asarray(n_samples, X.dtype))
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  return X, post, w, bayes, jnp.asarray(reg_covar, X.dtype)


def online_bayes_init(X, posterior: bp.BayesParams, prior: bp.BayesPrior, *,
                      n_samples, sample_weight=None,
                      reg_covar=1e-6) -> scale_online.OnlineState:
  """Starts stochastic variational inference on the first batch.

  :func:`gmmjax.online_init` with the variational M-step: the state keeps
  per-sample averages of the E-step statistics (under the posterior's
  variational mixture), and its posterior is the variational M-step of
  ``n_samples`` samples with those averages (Hoffman et al., 2013: the
  posterior's natural parameters are linear in the statistics, so
  averaging statistics is the natural-gradient step).

  Args:
    X: ``(n, D)`` first batch.
    posterior: initial :class:`BayesParams` (e.g.
      :func:`gmmjax.posterior_from_resp` on the batch).
    prior: a :class:`BayesPrior`.
    n_samples: the (weighted) size of the whole stream, which the prior is
      weighed against.
    sample_weight: optional ``(n,)`` weights.
    reg_covar: regulariser added to covariance diagonals.

  Returns:
    An :class:`OnlineState` whose ``params`` is the posterior and whose
    ``log_likelihood`` is the batch's mean log-normaliser under the
    variational mixture (a progress signal, not the lower bound).

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> rng = np.random.default_rng(0)
    >>> X0 = rng.normal(size=(500, 2))
    >>> prior = gx.make_bayes_prior(X0, 3, covariance_type="diag")
    >>> resp = rng.dirichlet(np.ones(3), size=500)
    >>> p0 = gx.posterior_from_resp(X0, resp, prior, covariance_type="diag")
    >>> state = gx.online_bayes_init(X0, p0, prior, n_samples=5000)
    >>> state = gx.online_bayes_update(rng.normal(size=(500, 2)), state,
    ...                                prior, n_samples=5000)
    >>> int(state.step), state.params.means.shape
    (1, (3, 2))
  """
  X, post, w, bayes, reg = _online_operands(X, posterior, prior,
                                            sample_weight, n_samples,
                                            reg_covar)
  return scale_online._online_init(X, post, w, reg, bayes)


def online_bayes_update(X, state: scale_online.OnlineState,
                        prior: bp.BayesPrior, *, n_samples,
                        sample_weight=None, alpha=0.6,
                        reg_covar=1e-6) -> scale_online.OnlineState:
  """One step of stochastic variational inference with a new batch.

  :func:`gmmjax.online_update` with the variational M-step (see
  :func:`online_bayes_init`): ``s <- (1 - gamma) s + gamma s_bar(X)``, the
  posterior the variational M-step of ``n_samples`` samples of average
  statistics ``s``, ``gamma = (step + 2) ** -alpha``. A batch whose update
  would give a non-finite posterior is skipped (``failed`` set).

  Args:
    X: ``(n, D)`` batch.
    state: from :func:`online_bayes_init` or a previous update.
    prior, n_samples, sample_weight, reg_covar: as in
      :func:`online_bayes_init`.
    alpha: step-size exponent in ``(0.5, 1]``.

  Returns:
    The new :class:`OnlineState`.
  """
  if not (isinstance(state, scale_online.OnlineState)
          and isinstance(state.params, bp.BayesParams)):
    raise TypeError("online_bayes_update takes the batch first, then the "
                    "state of online_bayes_init: online_bayes_update(X, "
                    "state, prior, n_samples=...).")
  scale_online._check_alpha(alpha)
  X, post, w, bayes, reg = _online_operands(X, state.params, prior,
                                            sample_weight, n_samples,
                                            reg_covar)
  return scale_online._online_update(state._replace(params=post), X, w,
                                     jnp.asarray(alpha, X.dtype), reg, bayes)
