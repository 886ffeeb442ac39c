"""Full and tied covariances with missing entries: work in the missing block.

With the precision ``Lambda = P P^T`` of a component and ``z~`` the
difference ``x - mu`` with its missing entries zeroed, Schur's complement
gives everything EM needs from the *missing* block ``G = Lambda_MM`` alone:

    x_O Mahalanobis     z~^T Lambda z~ - u^T G^-1 u,   u = (Lambda z~)_M
    log det Sigma_OO    log det Sigma + log det G
    E[x_M | x_O]        mu_M - G^-1 u
    Cov[x_M | x_O]      G^-1

``z~^T Lambda z~`` and ``Lambda z~`` are the complete-data GEMMs on
zero-filled data; the rest is a factorisation of an ``m x m`` matrix per
sample and component, ``m`` the most entries a row misses (rounded up to a
power of two, a static shape: ``m`` slots per row, the unused ones an
identity block). Rows missing few entries among many features (the common
case) cost ``O(m^3)`` instead of the ``O(D^3)`` of factorising the observed
block. The small factorisations are written out over the slots (``m``
is small), elementwise over all samples and components at once: XLA's
batched LAPACK calls on millions of tiny matrices cost microseconds each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmmjax._src import matmul as mm


def slots(ob, m: int):
  """``(n, m)`` indices of each row's missing entries; ``D`` fills unused
  slots. ``m`` must be at least the most entries a row misses."""
  d = ob.shape[1]
  order = jnp.argsort(ob.astype(jnp.int8), axis=1, stable=True)[:, :m]
  used = ~jnp.take_along_axis(ob, order, axis=1)
  return jnp.where(used, order, d)


def _small_cholesky_solve(ge, u):
  """``log det G``, ``|L^-1 u|^2``, ``G^-1 u`` and ``G^-1`` for SPD ``G``,
  given entry-major as ``ge`` ``(m, m, n, Kc)``, and ``u`` ``(n, K, m)``.

  Written out entry by entry over ``m`` (Cholesky ``G = L L^T``, forward
  substitution, ``W = L^-1``): every operation is elementwise on
  contiguous ``(n, Kc)`` or ``(n, K)`` arrays, which XLA fuses into a few
  vector loops (slicing the trailing ``m`` axes instead measured 15x
  slower: strided, unfused).
  """
  m = ge.shape[0]
  ue = jnp.moveaxis(u, 2, 0)
  low = [[None] * m for _ in range(m)]
  for j in range(m):
    acc = ge[j, j]
    for p in range(j):
      acc = acc - low[j][p] * low[j][p]
    low[j][j] = jnp.sqrt(acc)
    for i in range(j + 1, m):
      acc = ge[i, j]
      for p in range(j):
        acc = acc - low[i][p] * low[j][p]
      low[i][j] = acc / low[j][j]
  log_det = 2.0 * sum(jnp.log(low[j][j]) for j in range(m))
  # t = L^-1 u; W = L^-1 (lower); G^-1 = W^T W, G^-1 u = W^T t.
  t, w = [], [[None] * m for _ in range(m)]
  for j in range(m):
    acc = ue[j]
    for p in range(j):
      acc = acc - low[j][p] * t[p]
    t.append(acc / low[j][j])
    w[j][j] = 1.0 / low[j][j]
    for c in range(j):
      acc = low[j][c] * w[c][c]
      for p in range(c + 1, j):
        acc = acc + low[j][p] * w[p][c]
      w[j][c] = -acc * w[j][j]
  solved = [sum(w[r][a] * t[r] for r in range(a, m)) for a in range(m)]
  # The upper triangle of G^-1, pair by pair (pairs(m)'s order), stacked
  # with the components minor: (n, P, Kc).
  inverse = jnp.stack([sum(w[r][a] * w[r][b] for r in range(b, m))
                       for a, b in pairs(m)], axis=1)
  return (log_det, sum(tj * tj for tj in t), jnp.stack(solved, axis=-1),
          inverse)


def pairs(m: int):
  """The slot pairs ``(a, b)``, ``a <= b``, of the stored upper triangle."""
  return [(a, b) for a in range(m) for b in range(a, m)]


def matrix_terms(params, xb, ob, m: int):
  """Full/tied: ``(log N(x_O | k) (n, K), xhat (n, K, D), (G^-1, slots))``.

  ``G^-1`` is the upper triangle of each missing block's inverse, ``(n, P,
  K)`` (full) or ``(n, P, 1)`` (tied) with ``P = m (m + 1) / 2`` pairs
  (:func:`pairs`); the missing entries are zero in ``xb``.
  """
  tied = params.covariance_type == "tied"
  pc = params.precisions_cholesky[None] if tied else params.precisions_cholesky
  k, d = params.means.shape
  pc = jnp.broadcast_to(pc, (k, d, d))
  of = ob.astype(xb.dtype)
  # y = P_k^T (o * (x - mu_k)): two GEMMs (n, D) @ (D, K D).
  y = (mm.einsum("nd,kde->nke", xb, pc)
       - mm.einsum("nd,kde->nke", of, params.means[:, :, None] * pc))
  lam_z = mm.einsum("kde,nke->nkd", pc, y)  # Lambda z~, (n, K, D)
  idx = slots(ob, m)
  pad = jnp.zeros_like(lam_z[..., :1])
  u = jnp.take_along_axis(jnp.concatenate([lam_z, pad], axis=-1),
                          idx[:, None, :], axis=2)  # (n, K, m)
  prec = params.precisions_cholesky[None] if tied else params.precisions_cholesky
  prec = mm.matmul(prec, jnp.swapaxes(prec, -1, -2))  # (Kc, D, D)
  kc = prec.shape[0]
  # G entry-major (m, m, n, Kc), gathered as rows of Kc contiguous values
  # from a ((D + 1)^2, Kc) table (an element gather measured far slower).
  table = jnp.zeros((d + 1, d + 1, kc), xb.dtype).at[:d, :d].set(
      jnp.moveaxis(prec, 0, -1)).reshape((d + 1) ** 2, kc)
  slot_t = idx.T  # (m, n)
  ge = table[slot_t[:, None, :] * (d + 1) + slot_t[None, :, :]]
  unused = (slot_t == d).astype(xb.dtype)  # their block: the identity
  ge = ge + (jnp.eye(m, dtype=xb.dtype)[:, :, None] * unused[None])[..., None]
  log_det_g, correction, solved, inverse = _small_cholesky_solve(ge, u)
  log_det_p = jnp.sum(jnp.log(jnp.diagonal(pc, axis1=-2, axis2=-1)), -1)
  n_obs = jnp.sum(of, axis=1)[:, None]
  maha = jnp.sum(y * y, axis=-1) - correction
  log_gauss = (-0.5 * (n_obs * jnp.log(2 * jnp.pi).astype(xb.dtype) + maha)
               + log_det_p[None, :] - 0.5 * log_det_g)
  xhat = jnp.where(ob[:, None, :], xb[:, None, :], params.means[None])
  hot = jax.nn.one_hot(idx, d, dtype=xb.dtype)  # (n, m, D); unused: zeros
  for j in range(m):
    xhat = xhat - solved[..., j:j + 1] * hot[:, None, j, :]
  return log_gauss, xhat, (inverse, idx)


def scatter_conditional(rw, cond, d: int, tied: bool):
  """``sum_i r_ik Cov[x_M | x_O, k]`` embedded in ``(K, D, D)`` (full) or
  summed over components ``(D, D)`` (tied)."""
  inverse, idx = cond
  weights = jnp.sum(rw, axis=1, keepdims=True) if tied else rw
  r = weights[:, None, :] * inverse  # (n, P, Kc)
  n, n_pairs, kc = r.shape
  a, b = (jnp.asarray(v) for v in zip(*pairs(idx.shape[1]), strict=True))
  # Slots hold a row's missing features in increasing order: pair (a, b)
  # lands in the upper triangle; the lower one is its transpose.
  flat = (idx[:, a] * (d + 1) + idx[:, b]).reshape(-1)
  summed = jax.ops.segment_sum(r.reshape(n * n_pairs, kc), flat,
                               num_segments=(d + 1) ** 2)
  upper = jnp.moveaxis(summed.reshape(d + 1, d + 1, kc)[:d, :d], -1, 0)
  diag = jnp.diagonal(upper, axis1=-2, axis2=-1)
  out = (upper + jnp.swapaxes(upper, -1, -2)
         - diag[..., :, None] * jnp.eye(d, dtype=upper.dtype))
  return out[0] if tied else out


def dense_conditional(cond, d: int):
  """The conditional covariances ``(n, Kc, D, D)`` (zero on observed
  rows and columns), for sampling."""
  inverse, idx = cond
  m = idx.shape[1]
  full = [[None] * m for _ in range(m)]
  for p, (a, b) in enumerate(pairs(m)):
    full[a][b] = full[b][a] = inverse[:, p, :]
  dense = jnp.stack([jnp.stack(row, axis=-1) for row in full], axis=-2)
  hot = jax.nn.one_hot(idx, d, dtype=inverse.dtype)  # (n, m, D)
  return mm.einsum("nad,nkab,nbe->nkde", hot, dense, hot)
