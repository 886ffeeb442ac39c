"""The E-step statistics of low-rank-plus-diagonal covariances, one chunk.

Ghahramani & Hinton's EM for mixtures of factor analysers reads, per
component, around the shift ``c`` (one point, or the current means):

  ``N_k``, ``s_x = sum r (x - c)``, ``S_xu = sum r (x - c) E[u|x]^T`` (D, q),
  ``s_xx = sum r (x - c)^2`` (the diagonal, D), ``S_uu = sum r E[u u^T|x]``
  (q, q) and ``s_u = sum r E[u|x]`` (q),

with ``E[u|x] = beta (x - mu)``, ``beta = W^T Sigma^-1`` (Woodbury, through
the packed factors of ``cov_lowrank.py``) and ``E[u u^T|x] = Cov[u|x] +
E[u] E[u]^T``. All are sums over samples, so they add over chunks, devices
and batches like the other types' moments. They travel packed in
``SuffStats.sxx`` ``(K, D + q, q + 1)``: ``[S_xu | s_xx]`` over ``[S_uu |
s_u]``.

Every product is a GEMM with ``K q`` or ``2 D`` columns: ``O(n K D q)``.
``s_x`` and ``s_xx`` are the diagonal type's moments, moved to the
per-component shifts under that type's rounding guard
(``moments.guarded_moments``); ``S_xu`` is moved by ``- m_k s_u^T``, whose
error relative to the result is about ``eps |m_k| / sd`` (first order, and
``s_u`` is small near convergence), so it needs no guard of its own.
"""

from __future__ import annotations

import jax.numpy as jnp

from gmmjax._src import chunks, moments
from gmmjax._src import cov_lowrank as lr
from gmmjax._src import matmul as mm
from gmmjax._src.cov_diagonal import Diag

_DIAG = Diag()


def pack_moments(s_xu, s_xx, s_uu, s_u):
  """``[S_xu | s_xx]`` over ``[S_uu | s_u]``: ``(K, D + q, q + 1)``."""
  return jnp.concatenate([lr.pack(s_xu, s_xx), lr.pack(s_uu, s_u)], axis=1)


def unpack_moments(sxx, d: int):
  """``(S_xu, s_xx, S_uu, s_u)`` of :func:`pack_moments`' output."""
  top, bottom = sxx[..., :d, :], sxx[..., d:, :]
  return lr.loadings(top), lr.noise(top), lr.loadings(bottom), lr.noise(bottom)


def _marginal_variances(cov):
  """``diag(W W^T) + psi`` ``(K, D)``: the scale of the moment guard."""
  W = lr.loadings(cov)
  return jnp.sum(W * W, -1) + lr.noise(cov)


def block_moments(xb, rw, shift, centre, params,
                  options: chunks.ChunkOptions | None = None):
  """``(sx, sxx)`` of one chunk: ``sx`` ``(K, D)`` and the packed moments.

  Args:
    xb: ``(n, D)`` samples.
    rw: ``(n, K)`` responsibilities times sample weights.
    shift: ``(D,)`` or ``(K, D)``: the centre(s) of the returned moments.
    centre: ``(D,)`` the chunk's common centre for the GEMMs (``shift``
      itself, or the mean of the per-component shifts).
    params: the current ``GMMParams`` (their factors give ``E[u|x]``).
  """
  pc, cov = params.precisions_cholesky, params.covariances
  n, d = xb.shape
  k = rw.shape[1]
  xc = xb - centre
  z = lr.latent_scores(xc, params.means - centre, pc)
  e = lr.posterior_means(z, pc)  # (n, K, q)
  q = e.shape[-1]
  re = rw[:, :, None] * e
  nk = jnp.sum(rw, axis=0)
  s_u = jnp.sum(re, axis=0)
  s_uu = (mm.einsum("nki,nkj->kij", re, e)
          + nk[:, None, None] * lr.posterior_covariance(pc))
  s_xu = jnp.transpose(mm.matmul(xc.T, re.reshape(n, k * q)).reshape(d, k, q),
                       (1, 0, 2))
  if shift.ndim == 1:  # one centre: the shift itself
    sx, s_xx = _DIAG.centred_moments(xc, rw)
    return sx, pack_moments(s_xu, s_xx, s_uu, s_u)
  m = shift - centre[None, :]
  s_xu = s_xu - m[:, :, None] * s_u[:, None, :]
  if chunks.use_direct(n, k, d, options):
    sx, s_xx = moments.component_moments(xb, rw, shift, _DIAG)
  else:
    sx, s_xx = _DIAG.centred_moments(xc, rw)
    sx, s_xx = moments.guarded_moments(xb, rw, shift, centre, sx, s_xx,
                                       _marginal_variances(cov), _DIAG,
                                       options)
  return sx, pack_moments(s_xu, s_xx, s_uu, s_u)
