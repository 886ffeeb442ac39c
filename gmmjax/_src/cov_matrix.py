"""Full and tied covariances: ``(D, D)`` matrices and triangular factors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import cholesky as chol_ops
from gmmjax._src import matmul as mm
from gmmjax._src import packing, validation
from gmmjax._src.cov_type import CovarianceType
from gmmjax._src.reductions import UNROLLED_MAX_ORDER, sum_small

# Dtypes for which full covariances use the expanded quadratic form
# ``x'Lx - 2 x'L mu + mu'L mu`` over packed outer products: one GEMM with
# ``D (D // 2 + 2)`` inner dimension that shares its feature matrix with the
# M-step, about half the flops of whitening. Its rounding error is
# ``eps * |L| * |x - c|^2``, which float64's 1e-16 keeps negligible even
# for precisions of 1e6 (reg_covar-sized variances) but float32's 6e-8
# does not: a prototype of this form gave NaN in float32 on 65,536 x 32,
# K=64, so float32 keeps the whitened (linear) differences.
EXPANDED_FULL_DTYPES = ("float64",)


def use_expanded_full(dtype) -> bool:
  return jnp.dtype(dtype).name in EXPANDED_FULL_DTYPES


def whitened_maha(xc, mc, prec_chol):
  """``|y_ik|^2`` of the whitened differences ``y_ik = P_k^T (x_i - mu_k)``.

  Full covariances, ``(n, K)``. One GEMM ``(n, D) @ (D, D*K)`` on centred
  data, then the per-component offsets ``mu_k P_k`` subtracted: the
  differences are formed in the (linear) whitened space, never through an
  expanded quadratic form, so float32 keeps its digits when components are
  narrow and far apart. The GEMM's columns are ordered (feature, component):
  the ``(n, D, K)`` result has K on its minor axis, so the sum over D adds
  contiguous ``(n, K)`` slabs, which measured faster than reducing a minor
  D axis (benchmarks/README.md).
  """
  k, d, _ = prec_chol.shape
  p_flat = jnp.transpose(prec_chol, (1, 2, 0)).reshape(d, d * k)
  offset = mm.einsum("kd,kde->ek", mc, prec_chol)
  y = mm.matmul(xc, p_flat).reshape(xc.shape[0], d, k) - offset[None]
  return jnp.sum(y * y, axis=1)


def expanded_full_maha(feats, mc, prec_chol):
  """Squared Mahalanobis distances ``(n, K)`` from packed features (full).

  ``feats = [x, packed(x x^T)]`` of centred samples; the coefficients are
  ``-2 Lambda_k mu_k`` and the packed precision (off-diagonal terms twice).
  """
  d = mc.shape[-1]
  iu, ju, mult, _ = packing.packed_index(d)
  prec = mm.matmul(prec_chol, jnp.swapaxes(prec_chol, -1, -2))  # no inverse
  lin = -2.0 * mm.einsum("kde,ke->kd", prec, mc)
  quad = prec[:, iu, ju] * jnp.asarray(mult, prec.dtype)
  coef = jnp.concatenate([lin, quad], axis=1)  # (K, n_moment_features)
  const = jnp.sum(mc * mm.einsum("kde,ke->kd", prec, mc), axis=1)
  return jnp.maximum(mm.matmul(feats, coef.T) + const[None, :], 0.0)


def _embed_diagonal(diag, n: int):
  return diag[..., :, None] * jnp.eye(n, dtype=diag.dtype)


def _symmetric(cov):
  return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


class MatrixType(CovarianceType):
  """What full and tied share: Cholesky factors of ``(D, D)`` matrices."""

  is_matrix = True

  def precision_cholesky(self, cov):
    return chol_ops.precision_from_chol(chol_ops.cholesky(cov))

  def precision_cholesky_jittered(self, cov):
    return chol_ops.jittered_factors(cov)

  def precision_cholesky_given(self, cov, pc):
    return chol_ops.precision_cholesky_of(cov, lax.stop_gradient(pc))

  def precision_cholesky_from_precisions(self, prec):
    # The exchange-matrix trick: J Lambda J = L L^T gives U = J L J.
    chol = chol_ops.cholesky(jnp.flip(prec, axis=(-2, -1)))
    return jnp.flip(chol, axis=(-2, -1))

  def precisions_from_cholesky(self, pc):
    return mm.matmul(pc, jnp.swapaxes(pc, -1, -2))

  def covariances_from_cholesky(self, pc):
    factor = chol_ops.covariance_factor(pc)
    return mm.matmul(factor, jnp.swapaxes(factor, -1, -2))

  def log_det(self, pc, d: int):
    return jnp.sum(jnp.log(jnp.diagonal(pc, axis1=-2, axis2=-1)), -1)

  def collapsed(self, cov, threshold):
    # The smallest eigenvalue is at most the threshold exactly when
    # cov - threshold I is not positive definite, which a Cholesky
    # factorisation tells for less than an eigendecomposition (and, for a
    # few features, without LAPACK: cholesky.cholesky).
    shifted = cov - threshold * chol_ops.eye_like(cov)
    return ~chol_ops.cholesky_ok(shifted)

  def check_stored(self, cov, pc):
    return validation.stored_matrices_problem(self.name, cov, pc)

  def to_unconstrained(self, cov, pc):
    # Lower factor with its diagonal's logarithm.
    chol = chol_ops.covariance_cholesky_given(cov, pc)
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    return jnp.tril(chol, -1) + _embed_diagonal(jnp.log(diag), chol.shape[-1])

  def from_unconstrained(self, scale):
    diag = jnp.diagonal(scale, axis1=-2, axis2=-1)
    chol = jnp.tril(scale, -1) + _embed_diagonal(jnp.exp(diag),
                                                 scale.shape[-1])
    cov = mm.matmul(chol, jnp.swapaxes(chol, -1, -2))
    return cov, chol_ops.precision_from_chol(chol)

  def direct_mahalanobis(self, diff, pc):
    d = diff.shape[-1]
    if d > UNROLLED_MAX_ORDER:
      y = self._whiten(diff, pc)
      return sum_small(y * y, axis=-1)
    # Tiny D: y_e = sum_d diff_d P_de unrolled, not K (or, vmapped,
    # batch x K) GEMMs of inner dimension D, which XLA's CPU dot runs one by
    # one.
    out = 0.0
    for e in range(d):
      y = sum_small(diff * pc[..., :, e], axis=-1)
      out = out + y * y
    return out

  def _whiten(self, diff, pc):
    raise NotImplementedError


class Full(MatrixType):
  """One ``(D, D)`` covariance per component."""

  name = "full"

  def shape(self, k, d):
    return (k, d, d)

  def n_parameters(self, k, d):
    return k * d * (d + 1) // 2

  def placeholder_sxx(self, cov, k, d):
    return cov * 1.0

  def dense(self, a, k, d):
    return np.asarray(a)

  def from_dense(self, a):
    return np.asarray(a)

  def dense_stack(self, cov, d):
    return cov

  def unit_slot(self, d):
    return np.eye(d)

  def marginal(self, cov, features):
    return cov[:, features][:, :, features]

  def chunk_width(self, k, d, dtype):
    if use_expanded_full(dtype):
      return max(packing.n_moment_features(d), 3 * k), False
    # The whitened differences (n, K, D).
    return max(k * d, packing.n_moment_features(d), 3 * k), True

  def centred_mahalanobis(self, xc, mc, pc):
    if use_expanded_full(xc.dtype):
      return expanded_full_maha(packing.packed_features(xc), mc, pc)
    return whitened_maha(xc, mc, pc)

  def _whiten(self, diff, pc):
    return mm.einsum("nkd,kde->nke", diff, pc)

  def component_factor(self, pc, k):
    return lax.dynamic_slice_in_dim(pc, k, 1)

  def _error_terms(self, xc, mc, pc):
    pf2 = jnp.sum(pc * pc, axis=(1, 2))  # |P_k|_F^2
    m2 = jnp.sum(mm.einsum("kd,kde->ke", mc, pc) ** 2, axis=1)
    return pf2, m2

  def fast_form_error(self, xc, mc, pc, maha):
    # The expanded form loses eps times its largest term; the whitened
    # difference loses eps times its terms' norms, times 2 |y|.
    eps = jnp.finfo(xc.dtype).eps
    x2 = jnp.sum(xc * xc, axis=1)[:, None]
    pf2, m2 = self._error_terms(xc, mc, pc)
    if use_expanded_full(xc.dtype):
      return 4.0 * eps * (x2 * pf2[None, :] + m2[None, :])
    return 2.0 * eps * jnp.sqrt(maha) * (jnp.sqrt(x2 * pf2[None, :])
                                         + jnp.sqrt(m2)[None, :])

  def fast_form_bound(self, xc, mc, pc):
    eps = jnp.finfo(xc.dtype).eps
    x2 = jnp.max(jnp.sum(xc * xc, axis=1))
    pf2, m2 = self._error_terms(xc, mc, pc)
    if use_expanded_full(xc.dtype):
      return 4.0 * eps * (x2 * pf2 + m2)
    return 2.0 * eps * (jnp.sqrt(x2 * pf2) + jnp.sqrt(m2))

  def estimate(self, nk, diff, sxx, reg_covar):
    cov = sxx / nk[:, None, None] - diff[:, :, None] * diff[:, None, :]
    eye = jnp.eye(diff.shape[-1], dtype=diff.dtype)
    return _symmetric(cov) + jnp.asarray(reg_covar, diff.dtype) * eye

  def centred_moments(self, xc, rw):
    # sx and sxx from one GEMM: rw^T @ [x, packed(x x^T)].
    summed = mm.matmul(rw.T, packing.packed_features(xc))
    return packing.split_packed(summed, xc.shape[-1])

  def second_moments(self, xc, rw):
    # (K, N) @ (N, ~D(D+1)/2): one GEMM over the packed outer products.
    back = packing.packed_index(xc.shape[-1])[3]
    return mm.matmul(rw.T, packing.packed_outer(xc))[:, back]

  def component_sxx(self, rz, z, sample_axis):
    if sample_axis == 0:
      return mm.einsum("nkd,nke->kde", rz, z)
    return mm.einsum("knd,kne->kde", rz, z)

  def move_moments(self, sx_c, sxx_c, nk, m, cov):
    outer = sx_c[:, :, None] * m[:, None, :]
    sxx = (sxx_c - outer - jnp.swapaxes(outer, -1, -2)
           + nk[:, None, None] * m[:, :, None] * m[:, None, :])
    scale = jnp.trace(sxx_c, axis1=1, axis2=2) + nk * jnp.sum(m * m, 1)
    result = jnp.trace(sxx, axis1=1, axis2=2)
    return sxx, scale, result, nk * jnp.trace(cov, axis1=1, axis2=2)

  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    scatter = sxx - nk[:, None, None] * (xdiff[:, :, None] * xdiff[:, None, :])
    between = shrink[:, None, None] * (dev[:, :, None] * dev[:, None, :])
    cov = (scatter + between + psi[None]) / (nk + n0)[:, None, None]
    return _symmetric(cov) + reg * jnp.eye(psi.shape[-1], dtype=psi.dtype)

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    # P P^T = Sigma^-1: log det Sigma = -2 sum log diag P,
    # tr(Psi Sigma^-1) = tr(P^T Psi P), Mahalanobis = |P^T dev|^2.
    log_det = -2.0 * self.log_det(pc, dev.shape[-1])
    tr = mm.einsum("kdi,de,kei->k", pc, psi, pc)
    maha = jnp.sum(mm.einsum("kd,kde->ke", dev, pc) ** 2, axis=-1)
    return jnp.sum(-0.5 * n0 * log_det - 0.5 * tr - 0.5 * kappa * maha)

  def wishart_posterior(self, nk, sk, dev, shrink, psi, dof0, mask=None):
    dof = dof0 + nk
    cov = (psi[None] + nk[:, None, None] * sk
           + shrink[:, None, None] * (dev[:, :, None] * dev[:, None, :]))
    return dof, cov / dof[:, None, None]

  def from_full(self, cov):
    return cov

  def mask_inactive(self, cov, pc, mask):
    eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)[None]
    return (jnp.where(mask[:, None, None], cov, eye),
            jnp.where(mask[:, None, None], pc, eye))

  def sample_noise(self, z, pc, cov, labels):
    chol = chol_ops.covariance_factor(pc)
    return mm.einsum("nde,ne->nd", chol[labels], z)


class Tied(MatrixType):
  """One ``(D, D)`` covariance shared by all components."""

  name = "tied"
  shared = True

  def shape(self, k, d):
    return (d, d)

  def n_parameters(self, k, d):
    return d * (d + 1) // 2

  def placeholder_sxx(self, cov, k, d):
    return cov * k

  def dense(self, a, k, d):
    a = np.asarray(a)
    return np.broadcast_to(a, (k,) + a.shape).copy()

  def from_dense(self, a):  # every component holds the shared one
    return np.asarray(a)[..., 0, :, :]

  def dense_stack(self, cov, d):
    return cov[None]

  def unit_slot(self, d):
    return None

  def marginal(self, cov, features):
    return cov[features][:, features]

  def centred_mahalanobis(self, xc, mc, pc):
    y = mm.matmul(xc, pc)
    m = mm.matmul(mc, pc)
    out = (jnp.sum(y * y, axis=1)[:, None] - 2.0 * mm.matmul(y, m.T)
           + jnp.sum(m * m, axis=1)[None, :])
    return jnp.maximum(out, 0.0)

  def _whiten(self, diff, pc):
    return mm.matmul(diff, pc)

  def component_factor(self, pc, k):
    return pc

  def fast_form_error(self, xc, mc, pc, maha):
    eps = jnp.finfo(xc.dtype).eps
    y = mm.matmul(xc, pc)
    m = mm.matmul(mc, pc)
    return 4.0 * eps * (jnp.sum(y * y, axis=1)[:, None]
                        + jnp.sum(m * m, axis=1)[None, :])

  def fast_form_bound(self, xc, mc, pc):
    # |x P| <= |x| |P|_F.
    eps = jnp.finfo(xc.dtype).eps
    x2 = jnp.max(jnp.sum(xc * xc, axis=1))
    m = mm.matmul(mc, pc)
    return 4.0 * eps * (x2 * jnp.sum(pc * pc) + jnp.sum(m * m, axis=1))

  def estimate(self, nk, diff, sxx, reg_covar):
    between = mm.einsum("k,kd,ke->de", nk, diff, diff)
    cov = (sxx - between) / jnp.sum(nk)
    eye = jnp.eye(diff.shape[-1], dtype=diff.dtype)
    return _symmetric(cov) + jnp.asarray(reg_covar, diff.dtype) * eye

  def centred_moments(self, xc, rw):
    return mm.matmul(rw.T, xc), self.second_moments(xc, rw)

  def second_moments(self, xc, rw):
    return mm.matmul((xc * jnp.sum(rw, axis=1)[:, None]).T, xc)

  def component_sxx(self, rz, z, sample_axis):
    if sample_axis == 0:
      return jnp.sum(mm.einsum("nkd,nke->kde", rz, z), 0)
    # One GEMM: (D, K*n) @ (K*n, D).
    k, n, d = z.shape
    return mm.matmul(rz.reshape(k * n, d).T, z.reshape(k * n, d))

  def move_moments(self, sx_c, sxx_c, nk, m, cov):
    cross = mm.matmul(sx_c.T, m)
    sxx = sxx_c - cross - cross.T + mm.matmul((m * nk[:, None]).T, m)
    scale = jnp.trace(sxx_c)[None] + jnp.sum(nk * jnp.sum(m * m, 1))
    return sxx, scale, jnp.trace(sxx)[None], jnp.sum(nk) * jnp.trace(cov)[None]

  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    scatter = sxx - mm.einsum("k,kd,ke->de", nk, xdiff, xdiff)
    between = mm.einsum("k,kd,ke->de", shrink, dev, dev)
    cov = (scatter + between + psi) / (jnp.sum(nk) + n0)
    return _symmetric(cov) + reg * jnp.eye(psi.shape[-1], dtype=psi.dtype)

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    log_det = -2.0 * self.log_det(pc, dev.shape[-1])
    tr = mm.einsum("di,de,ei->", pc, psi, pc)
    maha = jnp.sum(mm.matmul(dev, pc) ** 2)
    return -0.5 * n0 * log_det - 0.5 * tr - 0.5 * kappa * maha

  def wishart_posterior(self, nk, sk, dev, shrink, psi, dof0, mask=None):
    k = nk.shape[0]
    if mask is not None:  # the active slots' average
      nk, shrink = jnp.where(mask, nk, 0.0), jnp.where(mask, shrink, 0.0)
      k = jnp.sum(mask).astype(nk.dtype)
    mean_nk = jnp.sum(nk) / k
    dof = dof0 + mean_nk
    cov = (psi + sk * mean_nk
           + mm.einsum("k,kd,ke->de", shrink, dev, dev) / k)
    return dof, cov / dof

  def from_full(self, cov):
    return cov

  def mask_inactive(self, cov, pc, mask):
    # One shared covariance; inactive slots add exactly 0 to it.
    return cov, pc

  def sample_noise(self, z, pc, cov, labels):
    return mm.matmul(z, chol_ops.covariance_factor(pc).T)
