"""Initial low-rank-plus-diagonal parameters: clusters and their principal axes.

From initial responsibilities (k-means, or a seeding's hard assignment),
each component gets its weighted mean, the top ``q`` principal axes of its
scatter ``S_k`` found by subspace iteration (products ``S_k Omega`` summed
over chunks of samples, never ``S_k`` itself), and probabilistic PCA's
loadings ``W = U (Lambda - sigma^2)^{1/2}`` with ``sigma^2`` the mean
discarded variance; the noise is the residual diagonal ``diag(S - W W^T)``
(non-negative: ``S - U Lambda U^T`` is positive semi-definite) plus
``reg_covar``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import chunks, moments
from gmmjax._src import cov_lowrank as lr
from gmmjax._src import matmul as mm
from gmmjax._src.cov_diagonal import Diag
from gmmjax._src.params import GMMParams

# Subspace iterations: the axes only start EM, which refines them.
N_POWER = 6


def _scatter_times(xc, rw, diff, omega):
  """``S_k Omega_k`` ``(K, D, q)`` with ``S_k = sum r (x - d_k)(x - d_k)^T``
  (``xc`` centred data, ``diff`` ``(K, D)`` the component means there)."""
  n, d = xc.shape
  k, _, q = omega.shape
  chunk = chunks.chunk_size(n, k, d, lr.NAME, xc.dtype)

  def block(xb, rb):
    flat = jnp.transpose(omega, (1, 0, 2)).reshape(d, k * q)
    p = (mm.matmul(xb, flat).reshape(-1, k, q)
         - mm.einsum("kd,kdj->kj", diff, omega)[None])
    rp = rb[:, :, None] * p
    prod = mm.matmul(xb.T, rp.reshape(-1, k * q)).reshape(d, k, q)
    return jnp.transpose(prod, (1, 0, 2)), jnp.sum(rp, axis=0)

  prod, s_p = chunks.sum_chunks(block, n, chunk, xc, rw)
  return prod - diff[:, :, None] * s_p[:, None, :]


def principal_axes(key, xc, rw, diff, rank: int):
  """Top ``rank`` eigenpairs of each ``S_k``: ``(U (K, D, q), lam (K, q))``,
  eigenvalues descending, by subspace iteration."""
  k, d = diff.shape
  omega = jax.random.normal(key, (k, d, rank), xc.dtype)

  def body(_, om):
    return jnp.linalg.qr(_scatter_times(xc, rw, diff, om))[0]

  u = lax.fori_loop(0, N_POWER, body, jnp.linalg.qr(omega)[0])
  su = _scatter_times(xc, rw, diff, u)
  small = mm.matmul(jnp.swapaxes(u, -1, -2), su)
  lam, vec = jnp.linalg.eigh(0.5 * (small + jnp.swapaxes(small, -1, -2)))
  lam, vec = jnp.flip(lam, -1), jnp.flip(vec, -1)
  return mm.matmul(u, vec), jnp.maximum(lam, 0.0)


def lowrank_params_from_resp(key, X, resp, sample_weight, rank: int,
                     reg_covar) -> GMMParams:
  """Low-rank parameters from responsibilities ``(N, K)`` (see the module)."""
  dtype = X.dtype
  nk, center, diff, sxx, xc, rw, _ = moments.resp_moments(
      X, resp, sample_weight, Diag())
  var = sxx / nk[:, None]  # (K, D)
  u, lam = principal_axes(key, xc, rw, diff, rank)
  lam = lam / nk[:, None]
  d = X.shape[1]
  sigma2 = jnp.maximum(jnp.sum(var, -1) - jnp.sum(lam, -1), 0.0) / (d - rank)
  W = u * jnp.sqrt(jnp.maximum(lam - sigma2[:, None], 0.0))[:, None, :]
  psi = (jnp.maximum(var - jnp.sum(W * W, -1), 0.0)
         + jnp.asarray(reg_covar, dtype))
  cov = lr.pack(W, psi)
  return GMMParams(nk / jnp.sum(nk), center[None, :] + diff, cov,
                   lr.factor(cov), lr.NAME)


def hard_assignment(xc, resp):
  """One-hot responsibilities of the nearest of the seeds in ``resp``.

  Seedings put each component on one sample, which has no principal axes
  (and ``W = 0`` is a fixed point of EM): the seeds' Voronoi cells do.
  """
  counts = jnp.sum(resp, axis=0)
  seeds = mm.matmul(resp.T, xc) / jnp.maximum(counts, 1e-30)[:, None]
  dist = (-2.0 * mm.matmul(xc, seeds.T)
          + jnp.sum(seeds * seeds, axis=1)[None, :])
  dist = jnp.where(counts[None, :] > 0, dist, jnp.inf)
  return jax.nn.one_hot(jnp.argmin(dist, axis=1), resp.shape[1],
                        dtype=xc.dtype)
