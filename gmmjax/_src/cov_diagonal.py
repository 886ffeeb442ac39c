"""Diagonal and spherical covariances: per-feature or per-component scales.

Factors are ``1 / sqrt(variance)``; nothing is factorised, so nothing fails
to and no jitter is ever needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import matmul as mm
from gmmjax._src import validation
from gmmjax._src.cov_type import CovarianceType
from gmmjax._src.reductions import sum_small


class ScaleType(CovarianceType):
  """What diag and spherical share: elementwise factors."""

  is_matrix = False

  def precision_cholesky(self, cov):
    return lax.rsqrt(cov)

  def precision_cholesky_jittered(self, cov):
    return cov, self.precision_cholesky(cov), jnp.zeros((), cov.dtype)

  def precision_cholesky_given(self, cov, pc):
    return self.precision_cholesky(cov)

  def precision_cholesky_from_precisions(self, prec):
    return jnp.sqrt(prec)

  def precisions_from_cholesky(self, pc):
    return pc * pc

  def covariances_from_cholesky(self, pc):
    return 1.0 / (pc * pc)

  def to_unconstrained(self, cov, pc):
    return jnp.log(cov)

  def from_unconstrained(self, scale):
    return jnp.exp(scale), jnp.exp(-0.5 * scale)

  def component_factor(self, pc, k):
    return lax.dynamic_slice_in_dim(pc, k, 1)

  def mask_inactive(self, cov, pc, mask):
    active = mask.reshape((-1,) + (1,) * (cov.ndim - 1))
    return jnp.where(active, cov, 1.0), jnp.where(active, pc, 1.0)

  def per_feature(self, a, d: int):
    """A variance or factor ``(K, D)`` per component and feature."""
    raise NotImplementedError

  def sum_features(self, a):
    """Per-feature terms ``(..., D)`` reduced as this type's second
    moments are (diag: kept, spherical: summed)."""
    raise NotImplementedError

  def dense_stack(self, cov, d):
    return jax.vmap(jnp.diag)(self.per_feature(cov, d))

  def check_stored(self, cov, pc):
    return validation.stored_scales_problem(self.name, cov, pc)


class Diag(ScaleType):
  """One variance per component and feature."""

  name = "diag"

  def shape(self, k, d):
    return (k, d)

  def n_parameters(self, k, d):
    return k * d

  def placeholder_sxx(self, cov, k, d):
    return cov * 1.0

  def dense(self, a, k, d):
    a = np.asarray(a)
    return a[..., None] * np.eye(d, dtype=a.dtype)

  def from_dense(self, a):
    return np.diagonal(np.asarray(a), axis1=-2, axis2=-1).copy()

  def per_feature(self, a, d):
    return a

  def unit_slot(self, d):
    return np.ones(d)

  def sum_features(self, a):
    return a

  def marginal(self, cov, features):
    return cov[:, features]

  def collapsed(self, cov, threshold):
    return jnp.min(cov, axis=-1) <= threshold

  def log_det(self, pc, d):
    return jnp.sum(jnp.log(pc), axis=-1)

  def centred_mahalanobis(self, xc, mc, pc):
    prec = pc * pc
    # [x^2, x] @ [prec; -2 mu prec]^T: one GEMM with 2D inner dimension.
    feats = jnp.concatenate([xc * xc, xc], axis=1)
    coef = jnp.concatenate([prec, -2.0 * mc * prec], axis=1)
    out = mm.matmul(feats, coef.T) + jnp.sum(mc * mc * prec, axis=1)[None, :]
    return jnp.maximum(out, 0.0)

  def direct_mahalanobis(self, diff, pc):
    y = diff * pc[None, :, :]
    return sum_small(y * y, axis=-1)

  def fast_form_error(self, xc, mc, pc, maha):
    eps = jnp.finfo(xc.dtype).eps
    prec = pc * pc
    return 4.0 * eps * (mm.matmul(xc * xc, prec.T)
                        + jnp.sum(mc * mc * prec, axis=1)[None, :])

  def fast_form_bound(self, xc, mc, pc):
    eps = jnp.finfo(xc.dtype).eps
    prec = pc * pc
    top = jnp.max(xc * xc, axis=0)  # (D,)
    return 4.0 * eps * (mm.matmul(prec, top) + jnp.sum(mc * mc * prec, 1))

  def estimate(self, nk, diff, sxx, reg_covar):
    var = sxx / nk[:, None] - diff * diff
    return jnp.maximum(var, 0.0) + jnp.asarray(reg_covar, diff.dtype)

  def centred_moments(self, xc, rw):
    d = xc.shape[-1]
    summed = mm.matmul(rw.T, jnp.concatenate([xc, xc * xc], axis=1))
    return summed[:, :d], summed[:, d:]

  def second_moments(self, xc, rw):
    return mm.matmul(rw.T, xc * xc)

  def component_sxx(self, rz, z, sample_axis):
    return jnp.sum(rz * z, axis=sample_axis)

  def move_moments(self, sx_c, sxx_c, nk, m, cov):
    sxx = sxx_c - 2.0 * m * sx_c + nk[:, None] * m * m
    return sxx, sxx_c + nk[:, None] * m * m, sxx, nk[:, None] * cov

  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    scatter = jnp.maximum(sxx - nk[:, None] * xdiff * xdiff, 0.0)
    between = shrink[:, None] * dev * dev
    return ((scatter + between + jnp.diagonal(psi)[None, :])
            / (nk + n0)[:, None] + reg)

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    return jnp.sum(-0.5 * n0 * jnp.log(cov)
                   - 0.5 * (jnp.diagonal(psi)[None, :] + kappa * dev * dev)
                   / cov)

  def wishart_posterior(self, nk, sk, dev, shrink, psi, dof0, mask=None):
    dof = dof0 + nk
    cov = psi[None] + nk[:, None] * sk + shrink[:, None] * dev ** 2
    return dof, cov / dof[:, None]

  def from_full(self, cov):
    return jnp.diagonal(cov)

  def sample_noise(self, z, pc, cov, labels):
    return z * jnp.sqrt(cov)[labels]


class Spherical(ScaleType):
  """One variance per component, the same for every feature."""

  name = "spherical"

  def shape(self, k, d):
    return (k,)

  def n_parameters(self, k, d):
    return k

  def placeholder_sxx(self, cov, k, d):
    return cov * d

  def dense(self, a, k, d):
    a = np.asarray(a)
    return a[..., None, None] * np.eye(d, dtype=a.dtype)

  def from_dense(self, a):
    return np.asarray(a)[..., 0, 0].copy()

  def per_feature(self, a, d):
    return jnp.broadcast_to(a[:, None], (a.shape[0], d))

  def unit_slot(self, d):
    return np.ones(())

  def sum_features(self, a):
    return jnp.sum(a, axis=-1)

  def marginal(self, cov, features):
    return cov

  def collapsed(self, cov, threshold):
    return cov <= threshold

  def log_det(self, pc, d):
    return d * jnp.log(pc)

  def centred_mahalanobis(self, xc, mc, pc):
    out = (jnp.sum(xc * xc, axis=1)[:, None] - 2.0 * mm.matmul(xc, mc.T)
           + jnp.sum(mc * mc, axis=1)[None, :]) * (pc * pc)[None, :]
    return jnp.maximum(out, 0.0)

  def direct_mahalanobis(self, diff, pc):
    y = diff * pc[None, :, None]
    return sum_small(y * y, axis=-1)

  def fast_form_error(self, xc, mc, pc, maha):
    eps = jnp.finfo(xc.dtype).eps
    x2 = jnp.sum(xc * xc, axis=1)[:, None]
    return (4.0 * eps * (x2 + jnp.sum(mc * mc, axis=1)[None, :])
            * (pc * pc)[None, :])

  def fast_form_bound(self, xc, mc, pc):
    eps = jnp.finfo(xc.dtype).eps
    x2 = jnp.max(jnp.sum(xc * xc, axis=1))
    return 4.0 * eps * (x2 + jnp.sum(mc * mc, axis=1)) * (pc * pc)

  def estimate(self, nk, diff, sxx, reg_covar):
    var = (sxx / nk - jnp.sum(diff * diff, axis=1)) / diff.shape[-1]
    return jnp.maximum(var, 0.0) + jnp.asarray(reg_covar, diff.dtype)

  def centred_moments(self, xc, rw):
    d = xc.shape[-1]
    feats = jnp.concatenate([xc, jnp.sum(xc * xc, axis=1, keepdims=True)],
                            axis=1)
    summed = mm.matmul(rw.T, feats)
    return summed[:, :d], summed[:, d]

  def second_moments(self, xc, rw):
    return mm.matmul(rw.T, jnp.sum(xc * xc, axis=1))

  def component_sxx(self, rz, z, sample_axis):
    if sample_axis == 0:
      return sum_small(jnp.sum(rz * z, axis=0))
    return jnp.sum(rz * z, axis=(1, 2))

  def move_moments(self, sx_c, sxx_c, nk, m, cov):
    m2 = jnp.sum(m * m, axis=1)
    sxx = sxx_c - 2.0 * jnp.sum(m * sx_c, axis=1) + nk * m2
    return sxx, sxx_c + nk * m2, sxx, nk * cov * m.shape[-1]

  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    scatter = jnp.maximum(sxx - nk * jnp.sum(xdiff * xdiff, axis=1), 0.0)
    between = shrink * jnp.sum(dev * dev, axis=1)
    d = xdiff.shape[-1]
    return (scatter + between + jnp.trace(psi)) / (d * (nk + n0)) + reg

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    d = dev.shape[-1]
    return jnp.sum(-0.5 * n0 * d * jnp.log(cov)
                   - 0.5 * (jnp.trace(psi) + kappa * jnp.sum(dev * dev, 1))
                   / cov)

  def wishart_posterior(self, nk, sk, dev, shrink, psi, dof0, mask=None):
    dof = dof0 + nk
    cov = psi + nk * sk + shrink * jnp.mean(dev ** 2, axis=-1)
    return dof, cov / dof

  def from_full(self, cov):
    return jnp.mean(jnp.diagonal(cov))

  def sample_noise(self, z, pc, cov, labels):
    return z * jnp.sqrt(cov)[labels][:, None]
