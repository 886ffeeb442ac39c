"""Low-rank-plus-diagonal covariances: mixtures of factor analysers.

Each covariance is ``Sigma_k = W_k W_k^T + diag(psi_k)`` with loadings
``W_k`` ``(D, q)`` and noise ``psi_k`` ``(D,)`` (Ghahramani & Hinton, 1996;
McLachlan & Peel, 2000, ch. 8). The rank ``q`` is static through the shapes
(no separate field), so batches of parameters and ``vmap`` over restarts
work as for the other types. Two packed leaves of ``GMMParams``:

``covariances`` ``(K, D, q + 1)``: ``[W_k | psi_k]`` (loadings in the first
``q`` columns, the noise in the last; :func:`loadings`, :func:`noise`,
:func:`dense_covariances`).

``precisions_cholesky`` ``(K, D + 2q, q + 1)``: the whitening factors, rows
``[Q_k | s_k]``, ``[R_k | 0]``, ``[T_k | 0]`` with ``s_k = psi_k^{-1/2}``,
``Q_k R_k = diag(s_k) W_k`` a thin QR and ``T_k = L_k^{-1}``, ``L_k L_k^T = I
+ R_k R_k^T`` a ``q x q`` Cholesky (``T`` by a triangular solve; ``L``'s
eigenvalues are at least 1, so nothing is ill-conditioned there). With ``y =
diag(s_k)(x - mu_k)`` and ``z = Q_k^T y``, Woodbury gives ``(x - mu)^T
Sigma^-1 (x - mu) = |y - Q z|^2 + |T z|^2`` and the determinant lemma ``log
det Sigma = -2 sum log s - 2 sum log diag T``. Nothing forms a ``D x D``
matrix except the dense accessors. (``T`` rather than ``L``: per-sample
products with a ``q x q`` matrix are batched GEMMs, where XLA's batched
triangular solves over many right-hand sides ran several times slower.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from gmmjax._src import io_lowrank
from gmmjax._src import matmul as mm
from gmmjax._src.cov_diagonal import Diag
from gmmjax._src.cov_type import CovarianceType

NAME = "lowrank"


def rank_of(cov) -> int:
  """The rank ``q`` of packed low-rank covariances ``(..., D, q + 1)``."""
  return cov.shape[-1] - 1


def loadings(cov):
  """Loadings ``W`` ``(..., D, q)`` of packed covariances."""
  return cov[..., :rank_of(cov)]


def noise(cov):
  """Diagonal noise ``psi`` ``(..., D)`` of packed covariances."""
  return cov[..., rank_of(cov)]


def pack(W, psi):
  """Packed covariances ``[W | psi]`` ``(..., D, q + 1)``."""
  return jnp.concatenate([W, psi[..., None]], axis=-1)


def dense_covariances(cov):
  """``W W^T + diag(psi)`` ``(..., D, D)`` (for display and compatibility)."""
  W, psi = loadings(cov), noise(cov)
  return (mm.matmul(W, jnp.swapaxes(W, -1, -2))
          + psi[..., :, None] * jnp.eye(psi.shape[-1], dtype=psi.dtype))


def split_factor(pc):
  """``(Q, s, R, T)`` of packed whitening factors ``(..., D + 2q, q + 1)``."""
  q = pc.shape[-1] - 1
  d = pc.shape[-2] - 2 * q
  return (pc[..., :d, :q], pc[..., :d, q], pc[..., d:d + q, :q],
          pc[..., d + q:, :q])


def factor(cov):
  """Packed whitening factors of packed covariances (see the module)."""
  W, psi = loadings(cov), noise(cov)
  q = W.shape[-1]
  s = lax.rsqrt(psi)
  Q, R = jnp.linalg.qr(W * s[..., :, None])
  eye = jnp.eye(q, dtype=cov.dtype)
  L = jnp.linalg.cholesky(eye + mm.matmul(R, jnp.swapaxes(R, -1, -2)))
  T = solve_triangular(L, jnp.broadcast_to(eye, L.shape), lower=True)
  zero = jnp.zeros(R.shape[:-1] + (1,), cov.dtype)
  return jnp.concatenate([jnp.concatenate([Q, s[..., None]], -1),
                          jnp.concatenate([R, zero], -1),
                          jnp.concatenate([T, zero], -1)], axis=-2)


def _apply(M, z):
  """``M_k z_ik`` for ``M`` ``(K, q, q)`` and ``z`` ``(n, K, q)``."""
  return mm.einsum("kij,nkj->nki", M, z)


def latent_scores(xc, mc, pc):
  """``z_ik = Q_k^T diag(s_k) (x_i - mu_k)`` ``(n, K, q)`` by one GEMM."""
  Q, s, _, _ = split_factor(pc)
  k, d, q = Q.shape
  V = Q * s[:, :, None]
  flat = jnp.transpose(V, (1, 0, 2)).reshape(d, k * q)
  offset = mm.einsum("kd,kdj->kj", mc, V)
  return mm.matmul(xc, flat).reshape(xc.shape[0], k, q) - offset[None]


def posterior_means(z, pc):
  """``E[u | x_ik] = R^T T^T T z`` ``(n, K, q)``, the factor scores
  (``beta (x - mu)`` with ``beta = W^T Sigma^-1``, by push-through)."""
  _, _, R, T = split_factor(pc)
  gain = mm.matmul(jnp.swapaxes(R, -1, -2),
                   mm.matmul(jnp.swapaxes(T, -1, -2), T))
  return _apply(gain, z)


def posterior_covariance(pc):
  """``Cov[u | x] = I - beta W = (I + R^T R)^-1`` ``(K, q, q)``.

  From the Cholesky factor ``M`` of ``I + R^T R``, as ``M^-T M^-1`` (a
  ``q x q`` triangular solve): no ``I - ...`` cancellation when the factors
  are strong.
  """
  _, _, R, _ = split_factor(pc)
  eye = jnp.eye(R.shape[-1], dtype=R.dtype)
  m = jnp.linalg.cholesky(eye + mm.matmul(jnp.swapaxes(R, -1, -2), R))
  a = solve_triangular(m, jnp.broadcast_to(eye, m.shape), lower=True)
  return mm.matmul(jnp.swapaxes(a, -1, -2), a)


def unit_factor(k: int, d: int, q: int, dtype):
  """The factors of ``W = 0, psi = 1`` (the unit covariance)."""
  return factor(jnp.concatenate(
      [jnp.zeros((k, d, q), dtype), jnp.ones((k, d, 1), dtype)], -1))


class LowRank(CovarianceType):
  """``W_k W_k^T + diag(psi_k)`` per component (see the module)."""

  name = NAME
  is_matrix = False
  moments_need_factors = True
  _diag = Diag()

  def shape(self, k, d, rank=None):
    if rank is None:
      raise ValueError("covariance_type='lowrank' needs its rank q: "
                       "covariances have shape (K, D, q + 1).")
    return (k, d, rank + 1)

  def n_parameters(self, k, d, rank=None):
    q = 1 if rank is None else rank
    return k * (d * q - q * (q - 1) // 2 + d)

  def dense(self, a, k, d):
    return np.asarray(dense_covariances(a))

  def collapsed(self, cov, threshold):
    # The smallest eigenvalue of W W^T + diag(psi) is at least min(psi),
    # and with q < D at most max(psi): the noise says whether it collapsed.
    return jnp.min(noise(cov), axis=-1) <= threshold

  def stored_shapes(self, arrays, k, d):
    shapes = io_lowrank.shapes(arrays, k, d)
    if shapes is None:
      raise ValueError(
          f"covariances have shape {arrays['covariances'].shape}; a lowrank "
          f"mixture with {k} components and {d} features needs (K, D, q + "
          "1) with 1 <= q < D.")
    return shapes

  def check_stored(self, cov, pc):
    return io_lowrank.check(cov, pc)

  def chunk_width(self, k, d, dtype):
    # The factor scores (n, K, q) three times over, q unknown here: bounded
    # by min(d, 32).
    return max(3 * k * (min(d, 32) + 1), 2 * d + 1), True

  def precision_cholesky(self, cov):
    return factor(cov)

  def precision_cholesky_jittered(self, cov):
    return cov, factor(cov), jnp.zeros((), cov.dtype)

  def precision_cholesky_given(self, cov, pc):
    return factor(cov)

  def precision_cholesky_from_precisions(self, prec):
    raise ValueError("covariance_type='lowrank' parameters are built from "
                     "loadings and noise ([W | psi] covariances), not from "
                     "precisions.")

  def precisions_from_cholesky(self, pc):
    Q, s, _, T = split_factor(pc)
    d = Q.shape[-2]
    a = mm.matmul(Q, jnp.swapaxes(T, -1, -2))  # Q L^-T
    inner = (jnp.eye(d, dtype=pc.dtype) - mm.matmul(Q, jnp.swapaxes(Q, -1, -2))
             + mm.matmul(a, jnp.swapaxes(a, -1, -2)))
    return s[..., :, None] * inner * s[..., None, :]

  def covariances_from_cholesky(self, pc):
    Q, s, R, _ = split_factor(pc)
    return pack(mm.matmul(Q, R) / s[..., :, None], 1.0 / (s * s))

  def log_det(self, pc, d):
    _, s, _, T = split_factor(pc)
    return (jnp.sum(jnp.log(s), -1)
            + jnp.sum(jnp.log(jnp.diagonal(T, axis1=-2, axis2=-1)), -1))

  def to_unconstrained(self, cov, pc):
    return pack(loadings(cov), jnp.log(noise(cov)))

  def from_unconstrained(self, scale):
    cov = pack(loadings(scale), jnp.exp(noise(scale)))
    return cov, factor(cov)

  def centred_mahalanobis(self, xc, mc, pc):
    _, s, _, T = split_factor(pc)
    z = latent_scores(xc, mc, pc)
    t = _apply(T, z)
    out = (self._diag.centred_mahalanobis(xc, mc, s) - jnp.sum(z * z, -1)
           + jnp.sum(t * t, -1))
    return jnp.maximum(out, 0.0)

  def direct_mahalanobis(self, diff, pc):
    # The residual y - Q z formed as a vector: no |y|^2 - |z|^2 cancellation.
    Q, s, _, T = split_factor(pc)
    y = diff * s[None]
    z = mm.einsum("nkd,kdj->nkj", y, Q)
    r = y - mm.einsum("nkj,kdj->nkd", z, Q)
    t = _apply(T, z)
    return jnp.sum(r * r, -1) + jnp.sum(t * t, -1)

  def component_factor(self, pc, k):
    return lax.dynamic_slice_in_dim(pc, k, 1)

  # |y|^2 - |z|^2 loses at most eps |y|^2, which the diagonal expanded
  # form's own error estimate already bounds.
  def fast_form_error(self, xc, mc, pc, maha):
    return self._diag.fast_form_error(xc, mc, split_factor(pc)[1], maha)

  def fast_form_bound(self, xc, mc, pc):
    return self._diag.fast_form_bound(xc, mc, split_factor(pc)[1])

  def m_step(self, nk, sx, sxx, reg_covar):
    """Ghahramani & Hinton's update of the augmented loadings ``[W, mu]``.

    ``sxx`` ``(K, D + q, q + 1)`` packs, around the shift ``c``:
    ``[sum r (x-c) E[u]^T | sum r (x-c)^2]`` over ``[sum r E[u u^T] | sum r
    E[u]]`` (``moments_lowrank.py``). With ``A = [S_xu, s_x]`` and ``G =
    [[S_uu, s_u], [s_u^T, N_k]]``: ``[W, mu - c] = A G^-1`` and ``psi =
    (s_xx - rowsum([W, mu - c] * A)) / N_k``, floored at 0, plus ``reg_covar``.
    """
    d = sx.shape[-1]
    q = sxx.shape[-1] - 1
    a = jnp.concatenate([sxx[:, :d, :q], sx[:, :, None]], -1)  # (K, D, q+1)
    top = sxx[:, d:, :]  # (K, q, q+1): [S_uu | s_u]
    bottom = jnp.concatenate([sxx[:, d:, q], nk[:, None]], -1)[:, None, :]
    g = jnp.concatenate([top, bottom], axis=1)
    g = 0.5 * (g + jnp.swapaxes(g, -1, -2))
    chol = jnp.linalg.cholesky(g)
    # A G^-1 = (G^-1 A^T)^T through the Cholesky factor.
    tmp = solve_triangular(chol, jnp.swapaxes(a, -1, -2), lower=True)
    aug = jnp.swapaxes(solve_triangular(chol, tmp, lower=True, trans=1),
                       -1, -2)
    psi = (sxx[:, :d, q] - jnp.sum(aug * a, -1)) / nk[:, None]
    psi = jnp.maximum(psi, 0.0) + jnp.asarray(reg_covar, sx.dtype)
    return aug[..., q], pack(aug[..., :q], psi)

  def placeholder_sxx(self, cov, k, d):
    # S_xu = W, s_xx = psi + |W_d|^2, S_uu = I, s_u = 0: with N_k = 1 and
    # s_x = 0 the M-step gives W and psi back (plus reg_covar).
    W, psi = loadings(cov), noise(cov)
    top = pack(W, psi + jnp.sum(W * W, -1))
    q = W.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(q, dtype=cov.dtype), (k, q, q))
    return jnp.concatenate(
        [top, pack(eye, jnp.zeros((k, q), cov.dtype))], axis=1)

  def mask_inactive(self, cov, pc, mask):
    k, d, q1 = cov.shape
    unit_cov = pack(jnp.zeros((k, d, q1 - 1), cov.dtype),
                    jnp.ones((k, d), cov.dtype))
    active = mask[:, None, None]
    return (jnp.where(active, cov, unit_cov),
            jnp.where(active, pc, unit_factor(k, d, q1 - 1, pc.dtype)))

  def noise_width(self, d, cov):
    return d + rank_of(cov)

  def sample_noise(self, z, pc, cov, labels):
    d = cov.shape[-2]
    W, psi = loadings(cov), noise(cov)
    return (z[:, :d] * jnp.sqrt(psi)[labels]
            + mm.einsum("ndj,nj->nd", W[labels], z[:, d:]))

  def _no(self, what):
    raise ValueError(f"covariance_type='lowrank' has no {what}: its EM "
                     "update needs the current loadings (use gx.fit, or "
                     "gx.e_step_stats then gx.params_from_stats).")

  def estimate(self, nk, diff, sxx, reg_covar):
    self._no("covariance estimate from responsibilities alone")

  def centred_moments(self, xc, rw):
    self._no("moments without the current loadings")

  def second_moments(self, xc, rw):
    self._no("moments without the current loadings")

  def component_sxx(self, rz, z, sample_axis):
    self._no("moments without the current loadings")

  def map_covariance(self, sxx, nk, xdiff, dev, shrink, psi, n0, reg):
    raise ValueError("covariance_type='lowrank' has no conjugate prior "
                     "(MAP-EM); fit it without `prior`.")

  def log_prior(self, pc, cov, dev, psi, n0, kappa):
    raise ValueError("covariance_type='lowrank' has no conjugate prior "
                     "(MAP-EM); fit it without `prior`.")
