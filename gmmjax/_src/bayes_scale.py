"""Variational fits of data no program holds at once: the chunked path of
``scale.py`` with :class:`~gmmjax._src.variational.VariationalStep`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gmmjax._src import bayes_params as bp
from gmmjax._src import engine, scale_chunked
from gmmjax._src import variational as vb
from gmmjax._src.bayes_fit import _as_prior
from gmmjax._src.results import FitResult


def fit_bayes_chunked(data, posterior: bp.BayesParams, prior: bp.BayesPrior,
                      *, sample_weight=None, chunk_size: int | None = None,
                      max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                      prev_lower_bound=-jnp.inf,
                      callback: Callable | None = None,
                      reduce: Callable | None = None, prefetch: int = 2,
                      device=None) -> FitResult:
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
    max_iter, tol, reg_covar, prev_lower_bound, callback: as in
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
  return engine.host_fit(post, problem, stats_pass,
                         prev_ll=jnp.asarray(prev_lower_bound, dtype),
                         max_iter=max_iter, callback=callback,
                         step=vb.VariationalStep())
