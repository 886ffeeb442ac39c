"""Per-covariance-type operations: shapes, Cholesky factors, densities.

Conventions follow scikit-learn's ``GaussianMixture``: ``covariances`` has
shape full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``,
and ``precisions_cholesky`` ``P`` has the same shape with ``P @ P.T`` the
precision (full/tied; ``P`` upper triangular) or ``P**2`` the precision
(diag/spherical). No covariance is ever inverted explicitly: the factor comes
from a Cholesky decomposition and a triangular solve.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def covariance_shape(covariance_type: str, n_components: int,
                     n_features: int) -> tuple[int, ...]:
  """scikit-learn's shape of ``covariances`` for a covariance type."""
  return {
      "full": (n_components, n_features, n_features),
      "tied": (n_features, n_features),
      "diag": (n_components, n_features),
      "spherical": (n_components,),
  }[covariance_type]


def n_parameters(covariance_type: str, n_components: int,
                 n_features: int) -> int:
  """Number of free parameters of a mixture (weights, means, covariances)."""
  k, d = n_components, n_features
  cov = {
      "full": k * d * (d + 1) // 2,
      "tied": d * (d + 1) // 2,
      "diag": k * d,
      "spherical": k,
  }[covariance_type]
  return int(cov + k * d + k - 1)


def _eye_like(a):
  return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _is_matrix(covariance_type: str) -> bool:
  return covariance_type in ("full", "tied")


def precision_cholesky(covariances, covariance_type: str):
  """Precision Cholesky factors from covariances (scikit-learn's convention).

  For full/tied, ``L = cholesky(Sigma)`` and ``P = L^{-T}`` (upper
  triangular), so ``P P^T = Sigma^{-1}``. A covariance that is not positive
  definite gives non-finite entries, which callers detect and report.
  """
  if _is_matrix(covariance_type):
    chol = jnp.linalg.cholesky(covariances)
    inv_chol = lax.linalg.triangular_solve(
        chol, _eye_like(chol), left_side=True, lower=True)
    return jnp.swapaxes(inv_chol, -1, -2)
  return lax.rsqrt(covariances)


def precision_cholesky_from_precisions(precisions, covariance_type: str):
  """Upper factor ``U`` with ``U U^T = precision`` (scikit-learn's convention).

  Uses the exchange-matrix trick: ``J Lambda J = L L^T`` gives ``U = J L J``.
  """
  if _is_matrix(covariance_type):
    flipped = jnp.flip(precisions, axis=(-2, -1))
    chol = jnp.linalg.cholesky(flipped)
    return jnp.flip(chol, axis=(-2, -1))
  return jnp.sqrt(precisions)


def precisions_from_cholesky(prec_chol, covariance_type: str):
  """Precisions (inverse covariances) from their Cholesky factors."""
  if _is_matrix(covariance_type):
    return prec_chol @ jnp.swapaxes(prec_chol, -1, -2)
  return prec_chol * prec_chol


def covariances_from_cholesky(prec_chol, covariance_type: str):
  """Covariances from precision Cholesky factors, by triangular solves."""
  if _is_matrix(covariance_type):
    # prec_chol is upper triangular: Sigma = (P P^T)^-1 = P^-T P^-1.
    inv = lax.linalg.triangular_solve(
        prec_chol, _eye_like(prec_chol), left_side=True, lower=False)
    return jnp.swapaxes(inv, -1, -2) @ inv
  return 1.0 / (prec_chol * prec_chol)


def log_det_cholesky(prec_chol, covariance_type: str, n_features: int):
  """``log det P`` (half the log-determinant of the precision) per component.

  Shape ``(K,)``, or ``()`` for tied.
  """
  if _is_matrix(covariance_type):
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), -1)
  if covariance_type == "diag":
    return jnp.sum(jnp.log(prec_chol), axis=-1)
  return n_features * jnp.log(prec_chol)


def mahalanobis(X, means, prec_chol, covariance_type: str):
  """Squared Mahalanobis distances ``(N, K)`` of samples to every component.

  Data and means are first translated by the (gradient-stopped) average of
  the means. The distances are invariant to that translation, and it keeps
  float32 from losing digits on data far from the origin.
  """
  shift = lax.stop_gradient(jnp.mean(means, axis=0))
  xc = X - shift
  mc = means - shift
  if covariance_type == "full":
    # One GEMM (N, D) @ (D, K*D): y_k = x P_k - mu_k P_k.
    k, d, _ = prec_chol.shape
    p_flat = jnp.transpose(prec_chol, (1, 0, 2)).reshape(d, k * d)
    y = (xc @ p_flat).reshape(-1, k, d)
    y = y - jnp.einsum("kd,kde->ke", mc, prec_chol)[None]
    return jnp.sum(y * y, axis=-1)
  if covariance_type == "tied":
    y = xc @ prec_chol
    m = mc @ prec_chol
    diff = y[:, None, :] - m[None, :, :]
    return jnp.sum(diff * diff, axis=-1)
  if covariance_type == "diag":
    prec = prec_chol * prec_chol
    out = ((xc * xc) @ prec.T - 2.0 * (xc @ (mc * prec).T)
           + jnp.sum(mc * mc * prec, axis=1)[None, :])
    return jnp.maximum(out, 0.0)
  # spherical
  prec = prec_chol * prec_chol
  out = (jnp.sum(xc * xc, axis=1)[:, None] - 2.0 * (xc @ mc.T)
         + jnp.sum(mc * mc, axis=1)[None, :]) * prec[None, :]
  return jnp.maximum(out, 0.0)


def log_gaussian_prob(X, means, prec_chol, covariance_type: str):
  """``log N(x_i | mu_k, Sigma_k)`` for every sample and component, ``(N, K)``."""
  n_features = means.shape[-1]
  maha = mahalanobis(X, means, prec_chol, covariance_type)
  log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
  return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det


def estimate_covariances(nk, diff, sxx, covariance_type: str, reg_covar):
  """Covariances from shifted sufficient statistics (the M-step's core).

  Args:
    nk: ``(K,)`` floored component masses.
    diff: ``(K, D)`` new means minus the shift ``c``.
    sxx: shifted second moments: full ``(K, D, D)`` ``sum_i r_ik (x_i - c)
      (x_i - c)^T``; tied ``(D, D)`` the same summed over components; diag
      ``(K, D)`` the diagonal; spherical ``(K,)`` the trace.
    covariance_type: the type.
    reg_covar: non-negative regulariser added to the diagonal.

  Returns:
    Covariances in scikit-learn's shape.
  """
  dtype = diff.dtype
  reg = jnp.asarray(reg_covar, dtype)
  if covariance_type == "full":
    cov = sxx / nk[:, None, None] - diff[:, :, None] * diff[:, None, :]
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    return cov + reg * jnp.eye(diff.shape[-1], dtype=dtype)
  if covariance_type == "tied":
    between = jnp.einsum("k,kd,ke->de", nk, diff, diff)
    cov = (sxx - between) / jnp.sum(nk)
    cov = 0.5 * (cov + cov.T)
    return cov + reg * jnp.eye(diff.shape[-1], dtype=dtype)
  if covariance_type == "diag":
    var = sxx / nk[:, None] - diff * diff
    return jnp.maximum(var, 0.0) + reg
  var = (sxx / nk - jnp.sum(diff * diff, axis=1)) / diff.shape[-1]
  return jnp.maximum(var, 0.0) + reg


def second_moments(xc, rw, covariance_type: str):
  """Shifted second-moment statistic for ``estimate_covariances``.

  Args:
    xc: ``(N, D)`` shifted samples ``x_i - c``.
    rw: ``(N, K)`` responsibilities times sample weights.
    covariance_type: the type.
  """
  if covariance_type == "full":
    n, k = rw.shape
    d = xc.shape[-1]
    # (K*D, N) @ (N, D) as one GEMM rather than K small ones.
    weighted = (rw[:, :, None] * xc[:, None, :]).reshape(n, k * d)
    return (weighted.T @ xc).reshape(k, d, d)
  if covariance_type == "tied":
    return (xc * jnp.sum(rw, axis=1)[:, None]).T @ xc
  if covariance_type == "diag":
    return rw.T @ (xc * xc)
  return rw.T @ jnp.sum(xc * xc, axis=1)


def sample_noise(key, prec_chol, covariances, labels, covariance_type: str,
                 n_features: int, dtype):
  """Zero-mean Gaussian draws with each sample's component covariance."""
  z = jax.random.normal(key, (labels.shape[0], n_features), dtype)
  if covariance_type == "full":
    chol = jnp.linalg.cholesky(covariances)
    return jnp.einsum("nde,ne->nd", chol[labels], z)
  if covariance_type == "tied":
    chol = jnp.linalg.cholesky(covariances)
    return z @ chol.T
  if covariance_type == "diag":
    return z * jnp.sqrt(covariances)[labels]
  return z * jnp.sqrt(covariances)[labels][:, None]
