"""The interface every covariance type implements (see ``covariance.py``).

Arrays follow scikit-learn's shapes (``covariance.py``'s docstring). Names:
``pc`` precision Cholesky factors, ``xc``/``mc`` samples ``(n, D)`` and means
``(K, D)`` translated by one common centre, ``rw`` responsibilities times
sample weights ``(n, K)``, ``nk`` component masses ``(K,)``.
"""

from __future__ import annotations


class CovarianceType:
  """One covariance structure: every operation whose maths depends on it.

  Instances are stateless, so one per type serves everywhere (the table
  ``covariance.TYPES``). ``is_matrix`` says whether covariances and factors
  are ``(..., D, D)`` matrices (full, tied) or per-feature scales;
  ``shared`` whether one covariance serves every component (tied: no
  component axis).
  """

  name: str = ""
  is_matrix: bool = False
  shared: bool = False
  # Whether the E-step's statistics need the current factors (low-rank:
  # the posterior factor scores), not only responsibilities and data.
  moments_need_factors: bool = False

  def __repr__(self) -> str:
    return f"CovarianceType({self.name!r})"

  # Shapes and counts.
  def shape(self, k: int, d: int) -> tuple[int, ...]:
    """scikit-learn's shape of ``covariances``."""
    raise NotImplementedError

  def n_parameters(self, k: int, d: int) -> int:
    """Free parameters of the covariances alone."""
    raise NotImplementedError

  def chunk_width(self, k: int, d: int, dtype) -> tuple[int, bool]:
    """``(values per sample of the widest chunk intermediate, whitened)``;
    ``whitened`` chunks get ``ChunkOptions.whitened_factor`` times the CPU
    budget (see ``chunks.py``)."""
    return max(3 * k, 2 * d + 1), False

  # Dense matrices and feature subsets.
  def dense(self, a, k: int, d: int):
    """Host (NumPy): a covariance, precision or factor in this type's shape
    as ``(K, D, D)`` matrices (low rank: covariances only, ``W W^T +
    diag(psi)``)."""
    raise NotImplementedError

  def from_dense(self, a):
    """Host (NumPy): :meth:`dense`'s inverse (a leading batch axis
    allowed), this type's entries of matrices that have its structure."""
    raise NotImplementedError

  def dense_stack(self, cov, d: int):
    """Traced: covariances as dense matrices with a component axis, ``(K,
    D, D)``, or ``(1, D, D)`` for a shared one."""
    raise NotImplementedError

  def marginal(self, cov, features):
    """Covariances of the marginal over ``features`` (a NumPy index
    array), in this type's shape."""
    raise NotImplementedError

  def collapsed(self, cov, threshold):
    """Whether each component's smallest variance (over all directions)
    is at most ``threshold``: ``(K,)`` bools, ``()`` for a shared one."""
    raise NotImplementedError

  def unit_slot(self, d: int):
    """Host (NumPy): one extra component slot's covariance (and precision,
    and factor), the unit; ``None`` for a shared one, which gets no slot
    (``padding.py``)."""
    raise NotImplementedError

  # Model files (``model_file.py``): NumPy checks of stored arrays.
  def stored_shapes(self, arrays, k: int, d: int) -> dict:
    """The shapes ``covariances`` and ``precisions_cholesky`` must have in
    a model file of ``k`` components and ``d`` features; a ``ValueError``
    saying why when ``arrays`` cannot be this type's."""
    shape = self.shape(k, d)
    return {"covariances": shape, "precisions_cholesky": shape}

  def check_stored(self, cov, pc) -> str | None:
    """Why stored ``(covariances, precisions_cholesky)`` (NumPy, of the
    right shapes) are not this type's valid arrays, or ``None``."""
    raise NotImplementedError

  # Factors (see ``cholesky.py`` for the matrix ones).
  def precision_cholesky(self, cov):
    raise NotImplementedError

  def precision_cholesky_jittered(self, cov):
    """``(cov, pc, jitter)``: see ``covariance.precision_cholesky_jittered``."""
    raise NotImplementedError

  def precision_cholesky_given(self, cov, pc):
    raise NotImplementedError

  def precision_cholesky_from_precisions(self, prec):
    raise NotImplementedError

  def precisions_from_cholesky(self, pc):
    raise NotImplementedError

  def covariances_from_cholesky(self, pc):
    raise NotImplementedError

  def log_det(self, pc, d: int):
    """``log det P`` per component ``(K,)`` (``()`` for tied)."""
    raise NotImplementedError

  def to_unconstrained(self, cov, pc):
    """Free coordinates of the covariances (``unconstrained.py``)."""
    raise NotImplementedError

  def from_unconstrained(self, scale):
    """``(covariances, precisions_cholesky)`` from free coordinates."""
    raise NotImplementedError

  # Distances (``kernels.py`` adds chunking and the rounding guards).
  def centred_mahalanobis(self, xc, mc, pc):
    """Squared distances ``(n, K)`` by GEMMs (the fast forms)."""
    raise NotImplementedError

  def direct_mahalanobis(self, diff, pc):
    """Squared distances ``(n, K)`` from differences ``x - mu_k`` ``(n, K,
    D)``: exact whatever the offsets."""
    raise NotImplementedError

  def component_factor(self, pc, k):
    """The factor of component ``k`` (traced), with a leading axis of 1."""
    raise NotImplementedError

  def fast_form_error(self, xc, mc, pc, maha):
    """Rounding-error estimate ``(n, K)`` of :meth:`centred_mahalanobis`."""
    raise NotImplementedError

  def fast_form_bound(self, xc, mc, pc):
    """Upper bound ``(K,)`` of ``error / max(maha, 1)`` over the chunk."""
    raise NotImplementedError

  # Moments and the M-step (``moments.py`` adds the guards).
  def estimate(self, nk, diff, sxx, reg_covar):
    """Covariances from shifted statistics.

    Args:
      nk: ``(K,)`` floored component masses.
      diff: ``(K, D)`` new means minus the shift ``c``.
      sxx: shifted second moments: full ``(K, D, D)`` ``sum_i r_ik (x_i - c)
        (x_i - c)^T``; tied ``(D, D)`` the same summed over components; diag
        ``(K, D)`` the diagonal; spherical ``(K,)`` the trace.
      reg_covar: non-negative regulariser added to the diagonal.
    """
    raise NotImplementedError

  def m_step(self, nk, sx, sxx, reg_covar):
    """``(diff, covariances)``: the new means minus the shift, and the
    covariances, from floored masses ``nk`` and shifted sums ``sx``,
    ``sxx``."""
    diff = sx / nk[:, None]
    return diff, self.estimate(nk, diff, sxx, reg_covar)

  def placeholder_sxx(self, cov, k: int, d: int):
    """``sxx`` whose M-step (with ``N_k = 1``, ``s_x = 0``) gives ``cov``
    back, up to ``reg_covar`` (``engine.placeholder_stats``)."""
    raise NotImplementedError

  def noise_width(self, d: int, cov) -> int:
    """Standard normals per sample that :meth:`sample_noise` reads."""
    return d

  def centred_moments(self, xc, rw):
    """``(sx, sxx)`` around one centre by GEMMs (the fast form)."""
    raise NotImplementedError

  def second_moments(self, xc, rw):
    """``sxx`` around one centre (``xc`` already shifted)."""
    raise NotImplementedError

  def component_sxx(self, rz, z, sample_axis: int):
    """``sxx`` from differences ``z`` and weighted ones ``rz``, laid out
    ``(K, n, D)`` (``sample_axis=1``) or ``(n, K, D)`` (``0``)."""
    raise NotImplementedError

  def move_moments(self, sx_c, sxx_c, nk, m, cov):
    """``sxx`` moved from the centre to the shifts ``c + m`` (``m`` ``(K,
    D)``) and the scales its rounding is judged by: ``(sxx, scale, result,
    expected)`` (see ``moments.guarded_moments``)."""
    raise NotImplementedError

  # Priors (``priors.py``).
  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    """The MAP covariances (before the jitter), see ``priors.py``."""
    raise NotImplementedError

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    """The Normal-inverse-Wishart terms of ``priors.log_prior``."""
    raise NotImplementedError

  # Variational Bayes (``bayes_params.py``).
  def wishart_posterior(self, nk, sk, dev, shrink, psi, dof0, mask=None):
    """``(dof, cov)``: the posterior Wishart's degrees of freedom and its
    scale as a covariance, ``W^-1 / dof`` (scikit-learn's
    ``_estimate_wishart_*``). ``sk`` the M-step's covariances (``reg_covar``
    included), ``dev`` ``xbar_k - m0``, ``shrink`` ``N_k beta0 / beta_k``,
    ``psi`` the covariance prior in this type's shape; ``mask`` the active
    component slots (a shared scale averages over them; per-component
    scales need no mask)."""
    raise NotImplementedError

  def from_full(self, cov):
    """A ``(D, D)`` covariance in this type's (one-component) shape."""
    raise NotImplementedError

  # Whole parameters.
  def mask_inactive(self, cov, pc, mask):
    """``(cov, pc)`` with the unit covariance in slots where ``mask`` is
    False (``stats.mask_components``)."""
    raise NotImplementedError

  def sample_noise(self, z, pc, cov, labels):
    """Standard normal draws ``z`` ``(n, D)`` scaled by each sample's
    component covariance."""
    raise NotImplementedError
