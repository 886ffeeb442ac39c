"""Missing values: the E-step over each sample's observed coordinates.

A boolean mask ``observed`` ``(N, D)`` (True where an entry was observed)
marks the missing entries of ``X``; their values are ignored (NaN is fine).
Under component ``k`` the observed coordinates ``O`` of a sample have the
marginal ``N(x_O | mu_kO, Sigma_kOO)``, and given them the missing ones ``M``
are Gaussian with

    mean  mu_kM + Sigma_kMO Sigma_kOO^-1 (x_O - mu_kO)
    cov   Sigma_kMM - Sigma_kMO Sigma_kOO^-1 Sigma_kOM.

EM for data missing at random (Ghahramani & Jordan, 1994) takes the
responsibilities from the observed marginals, and the sufficient statistics
of the *completed* samples ``xhat_ik`` (observed entries, conditional means
of the missing ones) plus, in the second moments, the conditional
covariances ``C_ik``. :func:`completed` computes those per sample and
component; :func:`moments` reduces them to the spine's ``(sx, sxx)``, so
every path that sums statistics (chunks, shards, processes, online
averages, vmapped restarts, implicit derivatives) works unchanged.

Full and tied: no grouping by missingness pattern. Each sample's observed
block is factorised in place as ``Sigma~ = Sigma`` on observed rows and
columns and the identity elsewhere: ``Sigma~`` is block diagonal (observed
block, identity), so its Cholesky factor gives ``log det Sigma_OO`` and the
observed Mahalanobis distance exactly, and one more triangular solve the
conditional mean and covariance. That is one ``D x D`` factorisation per
sample and component (per sample for tied, whose conditional covariances do
not depend on the component): ``O(D^3)`` work against the ``O(D^2)`` of
complete data. Diag and spherical need none: coordinates are independent
given the component.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from gmmjax._src import chunks
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams

SUPPORTED = ("full", "tied", "diag", "spherical")


def check_type(covariance_type: str) -> None:
  if covariance_type not in SUPPORTED:
    raise ValueError(
        f"Missing values are not supported for covariance_type="
        f"{covariance_type!r}; use one of {list(SUPPORTED)}.")


def as_observed(observed, X):
  """``observed`` as an ``(N, D)`` bool array, or a ``ValueError``."""
  if observed is None:
    return None
  observed = jnp.asarray(observed)
  if observed.shape != X.shape:
    raise ValueError(f"observed should be a boolean mask of X's shape "
                     f"{X.shape}, got shape {observed.shape}.")
  if observed.dtype != bool:
    raise ValueError(f"observed should be a boolean mask (True where an "
                     f"entry was observed), got dtype {observed.dtype}.")
  return observed


def fill(X, observed, value=0.0):
  """``X`` with its missing entries set to ``value`` (no NaN left over)."""
  return jnp.where(observed, X, jnp.asarray(value, X.dtype))


def fill_means(X, observed, sample_weight=None):
  """``X`` with each missing entry set to its feature's (weighted) observed
  mean: what initialisations (k-means, k-means++) run on."""
  w = (jnp.ones(X.shape[0], X.dtype) if sample_weight is None
       else sample_weight)
  ow = observed * w[:, None]
  means = (jnp.sum(jnp.where(observed, X, 0.0) * w[:, None], axis=0)
           / jnp.maximum(jnp.sum(ow, axis=0), jnp.finfo(X.dtype).tiny))
  return jnp.where(observed, X, means[None, :])


def _matrix_terms(params: GMMParams, xb, ob):
  """Full/tied: ``(log N(x_O|k) (n, K), xhat (n, K, D), C (n, Kc, D, D))``.

  ``Kc`` is ``K`` (full) or 1 (tied, one conditional covariance per sample).
  """
  tied = params.covariance_type == "tied"
  cov = params.covariances[None] if tied else params.covariances  # (Kc,D,D)
  d = xb.shape[-1]
  eye = jnp.eye(d, dtype=xb.dtype)
  pair = ob[:, None, :, None] & ob[:, None, None, :]  # (n, 1, D, D)
  chol = jnp.linalg.cholesky(jnp.where(pair, cov[None], eye))  # (n,Kc,D,D)
  z = jnp.where(ob[:, None, :], xb[:, None, :] - params.means[None], 0.0)
  # Right-hand sides (n, Kc, D, R): one column per sample (full), or the K
  # components' columns against one factor per sample (tied).
  rhs = jnp.swapaxes(z, 1, 2)[:, None] if tied else z[..., None]
  y = lax.linalg.triangular_solve(chol, rhs, left_side=True, lower=True)
  alpha = lax.linalg.triangular_solve(chol, y, left_side=True, lower=True,
                                      transpose_a=True)  # Sigma~^-1 z
  if tied:
    y, alpha = jnp.swapaxes(y[:, 0], 1, 2), jnp.swapaxes(alpha[:, 0], 1, 2)
    fill_in = mm.matmul(alpha, params.covariances)
  else:
    y, alpha = y[..., 0], alpha[..., 0]
    fill_in = mm.einsum("kde,nke->nkd", params.covariances, alpha)
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)),
                          axis=-1)  # log det Sigma_OO, (n, Kc)
  n_obs = jnp.sum(ob, axis=1).astype(xb.dtype)[:, None]
  log_gauss = -0.5 * (n_obs * math.log(2 * math.pi) + log_det
                      + jnp.sum(y * y, axis=-1))
  xhat = jnp.where(ob[:, None, :], xb[:, None, :],
                   params.means[None] + fill_in)
  # Conditional covariance of the missing block: Sigma - B^T B with
  # B = L~^-1 Sigma_O. (the observed rows of Sigma), on missing pairs only.
  b = lax.linalg.triangular_solve(
      chol, jnp.where(ob[:, None, :, None], cov[None], 0.0), left_side=True,
      lower=True)
  cond = cov[None] - mm.einsum("nkda,nkdb->nkab", b, b)
  miss = ~ob
  cond = jnp.where(miss[:, None, :, None] & miss[:, None, None, :], cond, 0.0)
  return log_gauss, xhat, cond


def _scale_terms(params: GMMParams, xb, ob):
  """Diag/spherical: ``(log N(x_O|k), xhat, missing indicators (n, D))``."""
  pc = params.precisions_cholesky
  if params.covariance_type == "spherical":
    pc = jnp.broadcast_to(pc[:, None], params.means.shape)
  z = jnp.where(ob[:, None, :], xb[:, None, :] - params.means[None], 0.0)
  y = z * pc[None]
  of = ob.astype(xb.dtype)
  log_det = mm.matmul(of, jnp.log(pc).T)  # log det of the observed precision
  n_obs = jnp.sum(of, axis=1)[:, None]
  log_gauss = (-0.5 * (n_obs * math.log(2 * math.pi)
                       + jnp.sum(y * y, axis=-1)) + log_det)
  xhat = jnp.where(ob[:, None, :], xb[:, None, :], params.means[None])
  return log_gauss, xhat, 1.0 - of


def completed(params: GMMParams, xb, ob):
  """Observed log densities and completed samples of one chunk.

  Returns ``(log_gauss, xhat, cond)``: ``log N(x_O | mu_kO, Sigma_kOO)``
  ``(n, K)``, the completed samples ``(n, K, D)`` and the conditional
  covariance term in the type's own form (full ``(n, K, D, D)``, tied
  ``(n, 1, D, D)``, diag/spherical the ``(n, D)`` missing indicators, by
  which the variances are multiplied in :func:`moments`).
  """
  check_type(params.covariance_type)
  xb = fill(xb, ob)
  if cov_lib.get(params.covariance_type).is_matrix:
    return _matrix_terms(params, xb, ob)
  return _scale_terms(params, xb, ob)


def moments(params: GMMParams, rw, xhat, cond, shift):
  """``(sx, sxx)`` of completed samples around ``shift`` (``(D,)`` or
  ``(K, D)``), conditional covariances included."""
  ctype = params.covariance_type
  ct = cov_lib.get(ctype)
  z = xhat - shift  # (n, K, D)
  rz = rw[:, :, None] * z
  sx = jnp.sum(rz, axis=0)
  sxx = ct.component_sxx(rz, z, 0)
  if ctype == "full":
    sxx = sxx + mm.einsum("nk,nkde->kde", rw, cond)
  elif ctype == "tied":
    sxx = sxx + mm.einsum("n,nde->de", jnp.sum(rw, axis=1), cond[:, 0])
  elif ctype == "diag":
    sxx = sxx + mm.matmul(rw.T, cond) * params.covariances
  else:
    sxx = sxx + mm.matmul(rw.T, jnp.sum(cond, axis=1)) * params.covariances
  return sx, sxx


def weighted_log_prob(params: GMMParams, xb, ob):
  """``log w_k + log N(x_O | k)`` of one chunk, ``(n, K)``."""
  return completed(params, xb, ob)[0] + jnp.log(params.weights)[None, :]


def sub_chunk(params: GMMParams, n: int, dtype,
              options: chunks.ChunkOptions | None = None) -> int:
  """Rows per piece of the masked forms, whose widest intermediate is
  ``(n, K, D, D)`` (full), ``(n, D, D)`` (tied) or ``(n, K, D)``."""
  k, d = params.means.shape
  width = {"full": k * d * d, "tied": max(d * d, k * d)}.get(
      params.covariance_type, k * d)
  return chunks.fallback_chunk(n, 1, width, dtype, options)


def map_observed(fn, params: GMMParams, X, observed,
                 options: chunks.ChunkOptions | None = None):
  """``fn(xb, ob)`` over row pieces of bounded memory, concatenated."""
  n = X.shape[0]
  return chunks.map_chunks(fn, n, sub_chunk(params, n, X.dtype, options),
                           X, observed)
