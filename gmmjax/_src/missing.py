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

Full and tied: no grouping by missingness pattern. Everything comes from
the complete-data products on zero-filled data and the missing block of
each component's precision, factorised per sample in ``m`` slots (the most
entries a row misses): ``missing_slots.py``. Diag and spherical need no
factorisation: coordinates are independent given the component.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import chunks, missing_slots
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


def max_missing(observed) -> int | None:
  """Slots per row for a concrete mask: the most entries a row misses,
  rounded up to a power of two (at most ``D``); ``None`` for a traced one
  (then every row gets ``D`` slots)."""
  if observed is None or isinstance(observed, jax.core.Tracer):
    return None
  observed = np.asarray(observed)
  d = observed.shape[1]
  most = int((~observed).sum(axis=1).max()) if observed.size else 0
  return min(d, 1 << max(most - 1, 0).bit_length())


def completed(params: GMMParams, xb, ob, slots: int | None = None):
  """Observed log densities and completed samples of one chunk.

  Returns ``(log_gauss, xhat, cond)``: ``log N(x_O | mu_kO, Sigma_kOO)``
  ``(n, K)``, the completed samples ``(n, K, D)`` and the conditional
  covariance term in the type's own form (full/tied: the inverses of the
  missing blocks of the precisions and the slots they sit in
  (``missing_slots.matrix_terms``, ``slots`` at least the most entries a
  row misses, ``None`` for ``D``); diag/spherical the ``(n, D)`` missing
  indicators, by which the variances are multiplied in :func:`moments`).
  """
  check_type(params.covariance_type)
  xb = fill(xb, ob)
  if cov_lib.get(params.covariance_type).is_matrix:
    m = xb.shape[1] if slots is None else max(int(slots), 1)
    return missing_slots.matrix_terms(params, xb, ob, m)
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
  if ct.is_matrix:
    sxx = sxx + missing_slots.scatter_conditional(
        rw, cond, xhat.shape[-1], ctype == "tied")
  elif ctype == "diag":
    sxx = sxx + mm.matmul(rw.T, cond) * params.covariances
  else:
    sxx = sxx + mm.matmul(rw.T, jnp.sum(cond, axis=1)) * params.covariances
  return sx, sxx


def weighted_log_prob(params: GMMParams, xb, ob, slots: int | None = None):
  """``log w_k + log N(x_O | k)`` of one chunk, ``(n, K)``."""
  return (completed(params, xb, ob, slots)[0]
          + jnp.log(params.weights)[None, :])


def sub_chunk(params: GMMParams, n: int, dtype,
              options: chunks.ChunkOptions | None = None,
              slots: int | None = None) -> int:
  """Rows per piece of the masked forms, whose widest intermediates are
  ``(n, K, D)`` and the ``(n, K, m, m)`` missing blocks (full/tied)."""
  k, d = params.means.shape
  m = d if slots is None else slots
  width = 3 * k * d + (k * m * m if cov_lib.get(
      params.covariance_type).is_matrix else 0)
  return chunks.fallback_chunk(n, 1, width, dtype, options)


def map_observed(fn, params: GMMParams, X, observed,
                 options: chunks.ChunkOptions | None = None,
                 slots: int | None = None):
  """``fn(xb, ob)`` over row pieces of bounded memory, concatenated."""
  n = X.shape[0]
  return chunks.map_chunks(
      fn, n, sub_chunk(params, n, X.dtype, options, slots), X, observed)
