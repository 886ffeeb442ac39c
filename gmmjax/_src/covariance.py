"""Covariance types: one object per type, looked up from its name.

Conventions follow scikit-learn's ``GaussianMixture``: ``covariances`` has
shape full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``,
and ``precisions_cholesky`` ``P`` has the same shape with ``P @ P.T`` the
precision (full/tied; ``P`` upper triangular) or ``P**2`` the precision
(diag/spherical). No covariance is ever inverted explicitly: the factor comes
from a Cholesky decomposition and a triangular solve.

Every operation whose maths depends on the type is a method of a
:class:`CovarianceType`; the rest of the package looks the object up in
:data:`TYPES` from ``GMMParams.covariance_type`` (a static string) and never
branches on the name. A new type is one subclass and one entry in the table.
The functions below taking a ``covariance_type`` string are the lookups
callers use most.
"""

from __future__ import annotations

from gmmjax._src.cov_diagonal import Diag, Spherical
from gmmjax._src.cov_lowrank import LowRank
from gmmjax._src.cov_matrix import Full, Tied
from gmmjax._src.cov_type import CovarianceType

TYPES: dict[str, CovarianceType] = {
    "full": Full(), "tied": Tied(), "diag": Diag(), "spherical": Spherical(),
    "lowrank": LowRank()}

# scikit-learn's four types (the public ``gmmjax.COVARIANCE_TYPES``, whose
# covariances have scikit-learn's shapes); every name of ``TYPES``, the
# low-rank one included, is accepted wherever a type is.
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
ALL_TYPES = tuple(TYPES)


def get(covariance_type: str | CovarianceType) -> CovarianceType:
  """The :class:`CovarianceType` named ``covariance_type`` (or given)."""
  if isinstance(covariance_type, CovarianceType):
    return covariance_type
  try:
    return TYPES[covariance_type]
  except (KeyError, TypeError):
    raise ValueError(f"Invalid value for 'covariance_type': "
                     f"{covariance_type!r}; 'covariance_type' should be in "
                     f"{list(TYPES)}.") from None


def covariance_shape(covariance_type: str, n_components: int,
                     n_features: int, rank: int | None = None
                     ) -> tuple[int, ...]:
  """scikit-learn's shape of ``covariances`` for a covariance type
  (``"lowrank"``: ``(K, D, rank + 1)``, loadings and noise packed)."""
  ct = get(covariance_type)
  if rank is None:
    return ct.shape(n_components, n_features)
  return ct.shape(n_components, n_features, rank)


def count_parameters(covariance_type: str, n_components: int,
                 n_features: int, rank: int | None = None) -> int:
  """Number of free parameters of a mixture (weights, means, covariances).

  ``"lowrank"`` counts ``K (D q - q (q - 1) / 2 + D)`` covariance parameters
  (the loadings up to a rotation, and the noise).
  """
  k, d = n_components, n_features
  ct = get(covariance_type)
  cov = (ct.n_parameters(k, d) if rank is None
         else ct.n_parameters(k, d, rank))
  return int(cov + k * d + k - 1)


def precision_cholesky(covariances, covariance_type: str):
  """Precision Cholesky factors from covariances (scikit-learn's convention).

  For full/tied, ``L = cholesky(Sigma)`` and ``P = L^{-T}`` (upper
  triangular), so ``P P^T = Sigma^{-1}``. A covariance that is not positive
  definite gives non-finite entries, which callers detect and report.
  """
  return get(covariance_type).precision_cholesky(covariances)


def precision_cholesky_jittered(covariances, covariance_type: str):
  """:func:`precision_cholesky` with a reported jitter fallback.

  Full/tied covariances whose factorisation fails get the smallest diagonal
  jitter of :func:`gmmjax.cholesky_jitter` added; diag/spherical ones are
  used as they are.

  Returns:
    ``(covariances, precisions_cholesky, jitter)``: the covariances actually
    factorised (jitter included) and the largest jitter added (a scalar).
  """
  return get(covariance_type).precision_cholesky_jittered(covariances)


def precision_cholesky_given(covariances, precisions_cholesky,
                             covariance_type: str):
  """``precisions_cholesky`` as a differentiable function of ``covariances``.

  The primal is the given factor (consistent with ``covariances``, e.g. a
  fit's result, whose covariances may carry the M-step's jitter); the
  derivative is that of :func:`precision_cholesky`. Diag and spherical
  factors are recomputed (``1 / sqrt``, no factorisation to fail).
  """
  return get(covariance_type).precision_cholesky_given(covariances,
                                                       precisions_cholesky)


def precision_cholesky_from_precisions(precisions, covariance_type: str):
  """Upper factor ``U`` with ``U U^T = precision`` (scikit-learn's convention)."""
  return get(covariance_type).precision_cholesky_from_precisions(precisions)


def precisions_from_cholesky(prec_chol, covariance_type: str):
  """Precisions (inverse covariances) from their Cholesky factors."""
  return get(covariance_type).precisions_from_cholesky(prec_chol)


def covariances_from_cholesky(prec_chol, covariance_type: str):
  """Covariances from precision Cholesky factors, by triangular solves."""
  return get(covariance_type).covariances_from_cholesky(prec_chol)


def log_det_cholesky(prec_chol, covariance_type: str, n_features: int):
  """``log det P`` (half the log-determinant of the precision) per component.

  Shape ``(K,)``, or ``()`` for tied.
  """
  return get(covariance_type).log_det(prec_chol, n_features)


def estimate_covariances(nk, diff, sxx, covariance_type: str, reg_covar):
  """Covariances from shifted sufficient statistics (the M-step's core).

  See :meth:`CovarianceType.estimate`.
  """
  return get(covariance_type).estimate(nk, diff, sxx, reg_covar)
