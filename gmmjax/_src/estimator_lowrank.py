"""The estimator's fitted state for ``covariance_type="lowrank"``.

The fitted leaves are kept as ``loadings_`` ``(K, D, q)`` and ``noise_``
``(K, D)`` (plus the packed Woodbury factors, privately); scikit-learn's
``covariances_``, ``precisions_`` and ``precisions_cholesky_`` are the
dense ``(K, D, D)`` matrices, computed in NumPy on each access (the fit
never forms them).
"""

from __future__ import annotations

import numpy as np

from gmmjax._src import cov_lowrank
from gmmjax._src.params import GMMParams

DENSE = ("covariances_", "precisions_", "precisions_cholesky_")


def set_fitted(est, params: GMMParams) -> None:
  """Stores low-rank params on ``est`` (and drops other types' leaves)."""
  for name in DENSE:
    est.__dict__.pop(name, None)
  est.loadings_ = np.asarray(cov_lowrank.loadings(params.covariances))
  est.noise_ = np.asarray(cov_lowrank.noise(params.covariances))
  est._lowrank_factors = np.asarray(params.precisions_cholesky)


def clear(est) -> None:
  """Drops the low-rank state (a fit of another type follows)."""
  for name in ("loadings_", "noise_", "_lowrank_factors"):
    est.__dict__.pop(name, None)


def leaves(est):
  """``(covariances, precisions_cholesky)`` packed, as ``GMMParams`` holds."""
  return (np.concatenate([est.loadings_, est.noise_[..., None]], -1),
          est._lowrank_factors)


def dense(est, name: str):
  """The dense ``name`` (one of :data:`DENSE`) of a fitted low-rank model."""
  W, psi = est.loadings_, est.noise_
  cov = W @ np.swapaxes(W, -1, -2) + psi[..., :, None] * np.eye(psi.shape[-1])
  if name == "covariances_":
    return cov
  chol = np.linalg.cholesky(cov)
  eye = np.broadcast_to(np.eye(cov.shape[-1]), cov.shape)
  inv_chol = np.linalg.solve(chol, eye)  # triangular L^-1, (K, D, D)
  if name == "precisions_":
    return np.swapaxes(inv_chol, -1, -2) @ inv_chol
  # scikit-learn's factor: upper P = L^-T with P P^T = Sigma^-1.
  return np.swapaxes(inv_chol, -1, -2)
