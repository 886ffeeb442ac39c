"""E-step, M-step, densities and model criteria: pure functions on GMMParams.

All functions are ``jit``/``vmap``/``grad``-safe, and jitted themselves, so
that a call outside ``jit`` runs one compiled program instead of dispatching
dozens of operations one by one (about 100x faster on small data). Shapes are
checked when traced; values are not (the estimator checks those before
compiling).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import checks, chunks, compiling, missing, sampling
from gmmjax._src import covariance as cov_ops
from gmmjax._src import matmul as mm
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams, check_covariance_type


def _prepare(params, X, sample_weight=None, observed=None):
  """``checks.prepare``, and the mask of observed entries (checked, with
  the missing entries of ``X`` zeroed) or ``None``."""
  params, X, w = checks.prepare(params, X, sample_weight)
  if observed is None:
    return params, X, w, None
  missing.check_type(params.covariance_type)
  observed = missing.as_observed(observed, X)
  return params, missing.fill(X, observed), w, observed


def _wlp(params, X, observed):
  return stats_lib.weighted_log_prob(params, X, observed=observed)


def e_step(params: GMMParams, X, *, sample_weight=None, temperature=None,
           observed=None):
  """Expectation step: log-responsibilities and mean log-likelihood.

  ``log r_ik = log w_k + log N(x_i | mu_k, Sigma_k) - log p(x_i)``.

  Args:
    params: mixture parameters.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` weights for the mean log-likelihood.
    temperature: optional positive scalar: ``log_resp`` becomes
      ``log_softmax(log(w_k N(x_i|k)) / temperature)`` (annealed/soft EM;
      ``None`` or 1 is plain EM). The log-likelihood is not tempered.
    observed: optional ``(N, D)`` boolean mask, True where an entry was
      observed; the others are missing (their values ignored) and each
      sample is scored by its observed marginal.

  Returns:
    ``(log_resp, mean_log_likelihood)``: ``(N, K)`` and a scalar (the
    weighted mean of ``log p(x_i)``).

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
    ...                    jnp.array([1.0, 1.0]), covariance_type="spherical")
    >>> log_resp, ll = gx.e_step(p, jnp.array([[0.0], [2.0]]))
    >>> jnp.exp(log_resp).sum(axis=1).round(5).tolist()
    [1.0, 1.0]
  """
  # Concrete params are checked here, before the jit hides their values
  # (a factor inconsistent with its covariance: see GMMParams).
  checks.check_factors(params)
  return _e_step(params, X, sample_weight=sample_weight,
                 temperature=temperature, observed=observed)


@compiling.jit_sized(compiling.size_of)
def _e_step(params: GMMParams, X, *, sample_weight=None, temperature=None,
            observed=None):
  """:func:`e_step`, one compiled program."""
  params, X, w, observed = _prepare(params, X, sample_weight, observed)
  wlp = _wlp(params, X, observed)
  log_norm = jax.nn.logsumexp(wlp, axis=1)
  if temperature is None:
    log_resp = wlp - log_norm[:, None]
  else:
    log_resp = jax.nn.log_softmax(wlp / temperature, axis=1)
  return log_resp, _weighted_mean(log_norm, w)


def _weighted_mean(values, w):
  if w is None:
    return jnp.mean(values)
  return jnp.sum(w * values) / jnp.sum(w)


def _m_step_size(X, log_resp, *args, **kwargs):
  del args, kwargs
  return np.shape(X)[-2], np.shape(log_resp)[-1], np.shape(X)[-1]


@compiling.jit_sized(_m_step_size, static_argnames=('covariance_type',))
def m_step(X, log_resp, *, covariance_type: str = "full", reg_covar=1e-6,
           sample_weight=None, observed=None,
           params: GMMParams | None = None) -> GMMParams:
  """Maximisation step: closed-form parameters from responsibilities.

  ``N_k = sum_i w_i r_ik``, ``w_k = N_k / sum_k N_k``,
  ``mu_k = sum_i w_i r_ik x_i / N_k`` and the covariance of the type
  (full: ``sum_i w_i r_ik (x_i - mu_k)(x_i - mu_k)^T / N_k + reg I``; tied:
  the ``N_k``-weighted average of those; diag: their diagonals; spherical:
  the mean of the diagonal), as scikit-learn defines them.

  Args:
    X: ``(N, D)`` samples.
    log_resp: ``(N, K)`` log-responsibilities (from :func:`e_step`).
    covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    reg_covar: non-negative scalar added to the covariance diagonals.
    sample_weight: optional ``(N,)`` non-negative weights; integer weights
      give the same parameters as repeating rows.
    observed: optional ``(N, D)`` boolean mask of observed entries. The
      M-step then uses the conditional expectations of the missing entries
      (and their conditional covariances) under ``params``, the mixture
      whose E-step gave ``log_resp``, which must be given with it.
    params: with ``observed``, the E-step's parameters.

  Returns:
    :class:`GMMParams`.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> X = jnp.array([[0.0], [2.0], [10.0]])
    >>> log_resp = jnp.log(jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    >>> p = gx.m_step(X, log_resp, covariance_type="diag", reg_covar=0.0)
    >>> p.means.ravel().round(5).tolist(), p.covariances.ravel().round(5).tolist()
    ([1.0, 10.0], [1.0, 0.0])
  """
  check_covariance_type(covariance_type)
  X = checks.as_data(X)
  log_resp = jnp.asarray(log_resp, X.dtype)
  if log_resp.ndim != 2 or log_resp.shape[0] != X.shape[0]:
    raise ValueError(f"log_resp should have shape ({X.shape[0]}, "
                     f"n_components), got {log_resp.shape}.")
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  resp = jnp.exp(log_resp)
  if observed is not None:
    return _m_step_observed(X, resp, w, observed, params, covariance_type,
                            reg_covar)
  rw = resp if w is None else resp * w[:, None]
  # Per-component centres (the weighted means): no cancellation in float32.
  shift = jax.lax.stop_gradient(
      mm.matmul(rw.T, X) / (jnp.sum(rw, axis=0)[:, None] + 10 * jnp.finfo(X.dtype).eps))
  stats = stats_lib.stats_from_resp(X, resp, sample_weight=w, shift=shift,
                                    covariance_type=covariance_type)
  return stats_lib.params_from_stats(stats, shift,
                                     covariance_type=covariance_type,
                                     reg_covar=reg_covar)


def _m_step_observed(X, resp, w, observed, params, covariance_type,
                     reg_covar):
  """:func:`m_step` with missing entries (conditional expectations under
  ``params``)."""
  if params is None:
    raise ValueError(
        "m_step with observed= needs params=, the mixture whose E-step gave "
        "log_resp: the missing entries' conditional expectations depend on "
        "it.")
  if params.covariance_type != covariance_type:
    raise ValueError(f"params.covariance_type is {params.covariance_type!r} "
                     f"but covariance_type={covariance_type!r}.")
  params, X, w, observed = _prepare(params, X, w, observed)
  rw = resp if w is None else resp * w[:, None]
  shift = stats_lib.component_shift(params)

  m = X.shape[1]  # a traced mask: every row may miss up to D entries

  def piece(x, o, r):
    _, terms = missing.observed_terms(params, x, o, m)
    return missing.moments(params, r, x, o, terms, shift)

  n = X.shape[0]
  sx, sxx = chunks.sum_chunks(
      piece, n, missing.piece_size(params, n, X.dtype), X, observed, rw)
  stats = stats_lib.SuffStats(
      count=jnp.asarray(n, X.dtype) if w is None else jnp.sum(w),
      nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
      log_likelihood=jnp.zeros((), X.dtype))
  return stats_lib.params_from_stats(stats, shift,
                                     covariance_type=covariance_type,
                                     reg_covar=reg_covar)


@compiling.jit_sized(compiling.size_of)
def Q(params: GMMParams, X, log_resp, *, sample_weight=None):
  """EM auxiliary function: expected complete-data log-likelihood per sample.

  ``Q = sum_i w_i sum_k r_ik [log w_k + log N(x_i | mu_k, Sigma_k)] / sum_i w_i``

  with the responsibilities ``r = exp(log_resp)`` taken as given (pass
  ``jax.lax.stop_gradient`` of :func:`e_step`'s output to hold them fixed).
  The M-step maximises it over ``params``; at the responsibilities of
  ``params`` its gradient equals that of :func:`log_likelihood` (Fisher's
  identity), and ``Q + H(r)`` with ``H`` the entropy of the responsibilities
  equals the log-likelihood. Differentiable in ``params``, ``X``,
  ``log_resp`` and ``sample_weight``.

  Args:
    params: mixture parameters.
    X: ``(N, D)`` samples.
    log_resp: ``(N, K)`` log-responsibilities.
    sample_weight: optional ``(N,)`` non-negative weights.

  Returns:
    A scalar.

  Example:
    >>> import jax, jax.numpy as jnp, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (50, 2))
    >>> p = gx.init_params(jax.random.key(1), X, 2, covariance_type="diag")
    >>> log_resp, ll = gx.e_step(p, X)
    >>> entropy = -jnp.sum(jnp.exp(log_resp) * log_resp) / 50
    >>> bool(jnp.allclose(gx.Q(p, X, log_resp) + entropy, ll, rtol=1e-5))
    True
  """
  params, X, w = checks.prepare(params, X, sample_weight)
  log_resp = jnp.asarray(log_resp, X.dtype)
  if log_resp.shape != (X.shape[0], params.n_components):
    raise ValueError(f"log_resp should have shape ({X.shape[0]}, "
                     f"{params.n_components}), got {log_resp.shape}.")
  wlp = stats_lib.weighted_log_prob(params, X)
  # exp(log_resp) * wlp with r = 0 and wlp = -inf is 0 (an empty cell).
  per_sample = jnp.sum(jnp.where(log_resp > -jnp.inf,
                                 jnp.exp(log_resp) * wlp, 0.0), axis=1)
  return _weighted_mean(per_sample, w)


@compiling.jit_sized(compiling.size_of)
def log_prob(params: GMMParams, X, *, observed=None):
  """Per-sample log density ``log p(x_i)``, shape ``(N,)``.

  With ``observed`` (an ``(N, D)`` boolean mask), the density of each
  sample's observed coordinates, the mixture's marginal over them.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([1.0]), jnp.array([[0.0]]),
    ...                    jnp.array([1.0]), covariance_type="spherical")
    >>> round(float(gx.log_prob(p, jnp.array([[0.0]]))[0]), 6)
    -0.918939
  """
  params, X, _, observed = _prepare(params, X, None, observed)
  return jax.nn.logsumexp(_wlp(params, X, observed), axis=1)


@compiling.jit_sized(compiling.size_of)
def log_likelihood(params: GMMParams, X, *, sample_weight=None,
                   observed=None):
  """Mean (weighted) per-sample log-likelihood, a scalar (of the observed
  entries, with an ``observed`` mask)."""
  params, X, w, observed = _prepare(params, X, sample_weight, observed)
  logp = jax.nn.logsumexp(_wlp(params, X, observed), axis=1)
  return _weighted_mean(logp, w)


@compiling.jit_sized(compiling.size_of)
def predict_proba(params: GMMParams, X, *, observed=None):
  """Responsibilities ``p(k | x_i)``, shape ``(N, K)``; rows sum to 1
  (given the observed entries, with an ``observed`` mask)."""
  return jnp.exp(e_step(params, X, observed=observed)[0])


@compiling.jit_sized(compiling.size_of)
def predict(params: GMMParams, X, *, observed=None):
  """Most probable component of each sample, shape ``(N,)`` (int32)."""
  params, X, _, observed = _prepare(params, X, None, observed)
  wlp = _wlp(params, X, observed)
  return jnp.argmax(wlp, axis=1).astype(jnp.int32)


def sample(key, params: GMMParams, n_samples: int):
  """Draws ``n_samples`` points from the mixture.

  Args:
    key: a ``jax.random.key`` or legacy ``PRNGKey``.
    params: mixture parameters.
    n_samples: static number of samples.

  Returns:
    ``(X, labels)``: ``(n_samples, D)`` samples and ``(n_samples,)`` int32
    component labels.

  Example:
    >>> import jax, jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.3, 0.7]), jnp.zeros((2, 2)),
    ...                    jnp.ones((2, 2)), covariance_type="diag")
    >>> X, y = gx.sample(jax.random.key(0), p, 5)
    >>> X.shape, y.shape
    ((5, 2), (5,))
  """
  checks.check_static(n_samples, "n_samples", "the samples, (n_samples, "
                      "n_features)")
  return _sample(key, params, n_samples)


def _sample_size(key, params, n_samples):
  del key
  return n_samples, params.means.shape[-2], params.means.shape[-1]


@compiling.jit_sized(_sample_size, static_argnames=("n_samples",))
def _sample(key, params: GMMParams, n_samples: int):
  """:func:`sample`, one compiled program per ``n_samples``."""
  key_labels, key_noise = jax.random.split(key)
  dtype = params.means.dtype
  labels = jax.random.categorical(key_labels, jnp.log(params.weights),
                                  shape=(n_samples,)).astype(jnp.int32)
  noise = sampling.sample_noise(key_noise, params.precisions_cholesky,
                                params.covariances, labels,
                                params.covariance_type, params.n_features,
                                dtype)
  return params.means[labels] + noise, labels


@functools.partial(jax.jit, static_argnames=("what", "slots"))
def evaluate_observed(params: GMMParams, X, observed, *, what: str,
                      slots: int | None):
  """``log_prob``, ``predict`` or ``predict_proba`` (``what``) with
  missing entries, the missing blocks in ``slots`` slots (static; the
  estimator passes ``missing.max_missing`` of its concrete mask)."""
  params, X, _, observed = _prepare(params, X, None, observed)
  wlp = stats_lib.weighted_log_prob(params, X, observed=observed, slots=slots)
  log_norm = jax.nn.logsumexp(wlp, axis=1)
  if what == "log_prob":
    return log_norm
  if what == "predict":
    return jnp.argmax(wlp, axis=1).astype(jnp.int32)
  return jnp.exp(wlp - log_norm[:, None])


def n_parameters(params: GMMParams) -> int:
  """Number of free parameters of the mixture (for BIC/AIC)."""
  return cov_ops.count_parameters(params.covariance_type, params.n_components,
                              params.n_features, params.rank)


def _total_log_likelihood(params, X, sample_weight, observed):
  params, X, w, observed = _prepare(params, X, sample_weight, observed)
  logp = jax.nn.logsumexp(_wlp(params, X, observed), axis=1)
  if w is None:
    return jnp.sum(logp), jnp.asarray(X.shape[0], X.dtype)
  return jnp.sum(w * logp), jnp.sum(w)


@compiling.jit_sized(compiling.size_of)
def bic(params: GMMParams, X, *, sample_weight=None, observed=None):
  """Bayesian information criterion ``-2 log L + p log n`` (lower is better).

  With ``sample_weight``, ``log L`` is the weighted sum and ``n`` the sum of
  the weights (integer weights equal repeated rows). With ``observed``,
  ``log L`` is the observed-data log-likelihood.
  """
  total, n = _total_log_likelihood(params, X, sample_weight, observed)
  return -2.0 * total + n_parameters(params) * jnp.log(n)


@compiling.jit_sized(compiling.size_of)
def aic(params: GMMParams, X, *, sample_weight=None, observed=None):
  """Akaike information criterion ``-2 log L + 2 p`` (lower is better;
  ``log L`` of the observed entries with ``observed``)."""
  total, _ = _total_log_likelihood(params, X, sample_weight, observed)
  return -2.0 * total + 2.0 * n_parameters(params)
