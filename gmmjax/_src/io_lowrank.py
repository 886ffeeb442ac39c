"""Model-file checks of ``covariance_type="lowrank"`` arrays (``io.py``).

The file holds the packed leaves of ``GMMParams``: covariances ``[W | psi]``
``(K, D, q + 1)`` and the Woodbury factors ``(K, D + 2q, q + 1)``
(``cov_lowrank.py``); no dense ``precisions`` (the estimator computes them
on access).
"""

from __future__ import annotations

import numpy as np


def shapes(arrays, k: int, d: int) -> dict:
  """Expected shapes, the rank read from the covariances (``None`` where
  they cannot be low-rank covariances)."""
  cov = arrays.get("covariances")
  q = None if getattr(cov, "ndim", 0) != 3 else cov.shape[-1] - 1
  if q is None or not 1 <= q < d:
    return None
  return {"covariances": (k, d, q + 1),
          "precisions_cholesky": (k, d + 2 * q, q + 1)}


def check(cov, pc) -> str | None:
  """Why ``(cov, pc)`` are not consistent low-rank arrays, or ``None``."""
  eps = float(np.finfo(cov.dtype).eps)
  cov = cov.astype(np.float64)
  pc = pc.astype(np.float64)
  q = cov.shape[-1] - 1
  d = cov.shape[-2]
  W, psi = cov[..., :q], cov[..., q]
  Q, s, R, L = pc[..., :d, :q], pc[..., :d, q], pc[..., d:d + q, :q], \
      pc[..., d + q:, :q]
  if np.any(psi <= 0):
    return "its lowrank noise is not all positive."
  if np.any(np.abs(s * s * psi - 1.0) > 1e3 * eps):
    return "its lowrank factors do not match its noise."
  eye = np.eye(q)
  tol = 1e4 * eps
  if np.any(np.abs(np.swapaxes(Q, -1, -2) @ Q - eye) > tol):
    return "its lowrank factors are not orthonormal."
  scale = 1.0 + np.max(np.abs(W * s[..., None]))
  if np.any(np.abs(Q @ R - W * s[..., None]) > tol * scale):
    return "its lowrank factors do not match its loadings."
  T = L  # the inverse Cholesky factor of I + R R^T
  diag = np.diagonal(T, axis1=-2, axis2=-1)
  if np.any(np.triu(T, 1) != 0) or np.any(diag <= 0):
    return "its lowrank factors are not lower triangular and positive."
  gram = eye + R @ np.swapaxes(R, -1, -2)
  if np.any(np.abs(T @ gram @ np.swapaxes(T, -1, -2) - eye)
            > tol * np.max(np.abs(gram))):
    return "its lowrank factors are not consistent."
  return None
