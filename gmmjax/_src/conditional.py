"""Marginalising and conditioning a fitted mixture, and imputation.

A Gaussian mixture's marginal over a subset of features is the mixture of
the components' marginals (same weights); its conditional given values of
the other features is again a mixture, with weights
``w_k N(v | mu_kF, Sigma_kFF)`` renormalised and each component's
conditional mean and covariance. :func:`impute` fills missing entries with
their conditional mean under the mixture, :func:`impute_samples` with a
draw from the conditional distribution.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import checks, chunks, missing, missing_slots
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams


def _check_features(features, n_features: int, name: str = "features"):
  """``features`` as a tuple of distinct in-range ints, or a ValueError."""
  try:
    idx = tuple(int(f) for f in np.asarray(features).reshape(-1))
  except (TypeError, ValueError):
    raise ValueError(f"{name} should be a sequence of feature indices, got "
                     f"{features!r}.") from None
  if (not idx or len(set(idx)) != len(idx)
      or any(not 0 <= f < n_features for f in idx)):
    raise ValueError(f"{name} should be distinct feature indices in [0, "
                     f"{n_features}), at least one, got {list(idx)}.")
  return idx


def _with_covariances(params: GMMParams, weights, means, cov) -> GMMParams:
  ct = cov_lib.get(params.covariance_type)
  return GMMParams(weights, means, cov, ct.precision_cholesky(cov),
                   params.covariance_type)


def _block(params: GMMParams, rows, cols):
  """The covariances' ``(rows, cols)`` block, as dense matrices ``(Kc, r, c)``
  (``Kc`` is 1 for tied)."""
  ct = cov_lib.get(params.covariance_type)
  dense = ct.dense_stack(params.covariances, params.n_features)
  return dense[:, np.asarray(rows)][:, :, np.asarray(cols)]


def marginal(params: GMMParams, features) -> GMMParams:
  """The mixture's marginal over ``features`` (same weights and type).

  Args:
    params: a mixture over ``D`` features.
    features: distinct feature indices (concrete), in the order wanted.

  Returns:
    :class:`GMMParams` over ``len(features)`` features.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([1.0]), jnp.array([[0.0, 5.0]]),
    ...                    jnp.array([[[1.0, 0.5], [0.5, 2.0]]]))
    >>> m = gx.marginal(p, [1])
    >>> m.means.tolist(), m.covariances.tolist()
    ([[5.0]], [[[2.0]]])
  """
  idx = _check_features(features, params.n_features)
  missing.check_type(params.covariance_type)
  f = np.asarray(idx)
  cov = cov_lib.get(params.covariance_type).marginal(params.covariances, f)
  return _with_covariances(params, params.weights, params.means[:, f], cov)


def condition(params: GMMParams, features, values) -> GMMParams:
  """The mixture's conditional over the other features given ``x_F = v``.

  Weights ``w_k N(v | mu_kF, Sigma_kFF)`` renormalised, means
  ``mu_kR + Sigma_kRF Sigma_kFF^-1 (v - mu_kF)`` and covariances
  ``Sigma_kRR - Sigma_kRF Sigma_kFF^-1 Sigma_kFR``, ``R`` the remaining
  features in increasing order. Diag and spherical components keep their
  means and variances (coordinates are independent given the component);
  tied ones share one conditional covariance. ``jax.vmap`` over ``values``
  conditions on many points.

  Args:
    params: a mixture over ``D`` features.
    features: the conditioned feature indices (concrete, fewer than ``D``).
    values: ``(len(features),)`` their values.

  Returns:
    :class:`GMMParams` over the ``D - len(features)`` other features.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([1.0]), jnp.array([[0.0, 0.0]]),
    ...                    jnp.array([[[1.0, 0.5], [0.5, 1.0]]]))
    >>> c = gx.condition(p, [0], jnp.array([2.0]))
    >>> c.means.tolist(), c.covariances.tolist()
    ([[1.0]], [[[0.75]]])
  """
  idx = _check_features(features, params.n_features)
  missing.check_type(params.covariance_type)
  if len(idx) >= params.n_features:
    raise ValueError("condition needs at least one feature left over: "
                     f"features has {len(idx)} of {params.n_features}.")
  f = np.asarray(idx)
  rest = np.setdiff1d(np.arange(params.n_features), f)
  dtype = params.means.dtype
  values = jnp.asarray(values, dtype)
  if values.shape != (len(idx),):
    raise ValueError(f"values should have shape ({len(idx)},), got "
                     f"{values.shape}.")
  k = params.n_components
  s_ff = jnp.broadcast_to(_block(params, f, f), (k, len(f), len(f)))
  s_rf = jnp.broadcast_to(_block(params, rest, f), (k, len(rest), len(f)))
  chol = jnp.linalg.cholesky(s_ff)  # (K, F, F)
  diff = (values[None, :] - params.means[:, f])[..., None]  # (K, F, 1)
  y = lax.linalg.triangular_solve(chol, diff, left_side=True, lower=True)
  alpha = lax.linalg.triangular_solve(chol, y, left_side=True, lower=True,
                                      transpose_a=True)  # Sigma_FF^-1 diff
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
  log_w = jnp.log(params.weights) - 0.5 * (
      len(f) * math.log(2 * math.pi) + log_det + jnp.sum(y[..., 0] ** 2, -1))
  weights = jax.nn.softmax(log_w)
  means = params.means[:, rest] + mm.matmul(s_rf, alpha)[..., 0]
  cov = _conditional_covariances(params, rest, chol, s_rf)
  return _with_covariances(params, weights.astype(dtype), means, cov)


def _conditional_covariances(params: GMMParams, rest, chol, s_rf):
  """``Sigma_kRR - Sigma_kRF Sigma_kFF^-1 Sigma_kFR`` in the type's shape,
  from the Cholesky factors ``chol`` of ``Sigma_kFF``; diag and spherical
  components keep their variances (independent coordinates)."""
  ct = cov_lib.get(params.covariance_type)
  if not ct.is_matrix:
    return ct.marginal(params.covariances, rest)
  b = lax.linalg.triangular_solve(chol, jnp.swapaxes(s_rf, -1, -2),
                                  left_side=True, lower=True)
  cov = _block(params, rest, rest) - mm.einsum("kfa,kfb->kab", b, b)
  cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
  return cov[0] if ct.shared else cov


def _observed_of(X, observed):
  """``(X, observed)``: the mask is ``~isnan(X)`` where not given."""
  X = checks.as_data(X)
  observed = (~jnp.isnan(X) if observed is None
              else missing.as_observed(observed, X))
  return missing.fill(X, observed), observed


def _posterior(params: GMMParams, xb, ob, slots=None):
  """Responsibilities given the observed entries, the completed samples
  and the conditional terms (``missing.observed_terms``)."""
  m = xb.shape[1] if slots is None else slots
  log_gauss, terms = missing.observed_terms(params, xb, ob, m)
  resp = jax.nn.softmax(log_gauss + jnp.log(params.weights)[None, :], axis=1)
  return resp, missing.completed(params, xb, ob, terms), terms


def impute(params: GMMParams, X, *, observed=None):
  """``X`` with its missing entries replaced by their conditional means.

  ``E[x_M | x_O] = sum_k p(k | x_O) (mu_kM + Sigma_kMO Sigma_kOO^-1
  (x_O - mu_kO))``, the observed entries unchanged.

  Args:
    params: a fitted mixture.
    X: ``(N, D)`` samples.
    observed: optional ``(N, D)`` boolean mask of observed entries;
      ``None`` treats the NaN entries of ``X`` as missing.

  Returns:
    ``(N, D)`` completed samples.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([1.0]), jnp.array([[0.0, 0.0]]),
    ...                    jnp.array([[[1.0, 0.5], [0.5, 1.0]]]))
    >>> gx.impute(p, jnp.array([[2.0, jnp.nan]])).tolist()
    [[2.0, 1.0]]
  """
  params, _, _ = checks.prepare(params, X)
  X, observed = _observed_of(X, observed)
  return _impute(params, X, observed, slots=missing.max_missing(observed))


@functools.partial(jax.jit, static_argnames=("slots",))
def _impute(params: GMMParams, X, observed, slots):
  def fn(xb, ob):
    resp, xhat, _ = _posterior(params, xb, ob, slots)
    return jnp.where(ob, xb, mm.einsum("nk,nkd->nd", resp, xhat))

  return missing.map_observed(fn, params, X, observed)


def _draw_missing(params: GMMParams, xb, ob, ub, zb, slots=None):
  resp, xhat, cond = _posterior(params, xb, ob, slots)
  labels = jnp.sum(jnp.cumsum(resp, axis=1) < ub[:, None], axis=1)
  labels = jnp.minimum(labels, resp.shape[1] - 1)
  rows = jnp.arange(xb.shape[0])
  mean = xhat[rows, labels]
  if cov_lib.get(params.covariance_type).is_matrix:
    cond = missing_slots.dense_conditional(cond, xb.shape[1])
    c = cond[rows, 0] if cond.shape[1] == 1 else cond[rows, labels]
    # The missing block's factor: identity on the observed rows/columns.
    factor = jnp.linalg.cholesky(c + jnp.eye(xb.shape[1], dtype=xb.dtype)
                                 * ob[:, None, :])
    noise = mm.einsum("nde,ne->nd", factor, zb)
  else:
    var = params.covariances
    var = var[labels] if var.ndim == 2 else var[labels][:, None]
    noise = jnp.sqrt(var) * zb
  return jnp.where(ob, xb, mean + noise)


def impute_samples(key, params: GMMParams, X, *, observed=None):
  """``X`` with its missing entries drawn from their conditional law.

  Each row draws a component from ``p(k | x_O)`` then its missing entries
  from ``N(mu_kM + Sigma_kMO Sigma_kOO^-1 (x_O - mu_kO), Sigma_kMM -
  Sigma_kMO Sigma_kOO^-1 Sigma_kOM)`` (multiple imputation: call it with
  several keys).

  Args:
    key: a ``jax.random.key`` or legacy ``PRNGKey``.
    params: a fitted mixture.
    X: ``(N, D)`` samples.
    observed: optional ``(N, D)`` boolean mask; ``None`` takes NaN as
      missing.

  Returns:
    ``(N, D)`` samples, the observed entries unchanged.

  Example:
    >>> import jax, jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([1.0]), jnp.array([[0.0, 0.0]]),
    ...                    jnp.array([[[1.0, 0.5], [0.5, 1.0]]]))
    >>> X = jnp.array([[2.0, jnp.nan]])
    >>> draw = gx.impute_samples(jax.random.key(0), p, X)
    >>> float(draw[0, 0]), bool(jnp.isfinite(draw[0, 1]))
    (2.0, True)
  """
  params, _, _ = checks.prepare(params, X)
  X, observed = _observed_of(X, observed)
  return _impute_samples(key, params, X, observed,
                         slots=missing.max_missing(observed))


@functools.partial(jax.jit, static_argnames=("slots",))
def _impute_samples(key, params: GMMParams, X, observed, slots):
  key_u, key_z = jax.random.split(key)
  u = jax.random.uniform(key_u, X.shape[:1], X.dtype)
  z = jax.random.normal(key_z, X.shape, X.dtype)
  n = X.shape[0]
  return chunks.map_chunks(
      functools.partial(_draw_missing, params, slots=slots), n,
      missing.piece_size(params, n, X.dtype), X, observed, u, z)
