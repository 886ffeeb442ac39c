"""Full and tied covariances with missing entries: work in the missing block.

With the precision ``Lambda = P P^T`` of a component and ``z~`` the
difference ``x - mu`` with its missing entries zeroed, Schur's complement
gives everything EM needs from the *missing* block ``G = Lambda_MM`` alone:

    x_O Mahalanobis     |P^T z~|^2 - u^T G^-1 u,   u = (Lambda z~)_M
    log det Sigma_OO    log det Sigma + log det G
    E[x_M | x_O]        mu_M - G^-1 u
    Cov[x_M | x_O]      G^-1

``P^T z~`` and ``Lambda z~`` come from one GEMM on the centred, zero-filled
rows and their masks (:func:`terms`); the rest is a factorisation of an
``m x m`` matrix per row and component, ``m`` a static number of *slots*
per row (:func:`slot_indices`: its missing features in increasing order,
``D`` in the unused slots, whose block is the identity). The statistics
group rows by their number of missing entries (each piece of rows takes the
slot count of its most-missing row, ``stats.py``), so that ``m`` is small
for most rows. The factorisation works elementwise over all rows and
components at once (XLA's batched LAPACK calls on millions of tiny matrices
cost microseconds each), one step per slot (:func:`_factorise`).

The M-step's statistics come in two forms: :func:`slot_centred_moments`,
GEMMs around one centre (the fast form, moved to per-component shifts under
the guard of ``moments.moved_moments``), and :func:`slot_moments`, the
per-component moments of the completed rows formed from differences (no
cancellation), plus the conditional covariances scattered into their
missing blocks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm


class SlotTerms(NamedTuple):
  """The E-step's terms of rows with missing entries (full/tied)."""

  log_gauss: jax.Array  # (n, K), log N(x_O | mu_kO, Sigma_kOO)
  delta: jax.Array  # (m, n, K), G^-1 u: E[x_M | x_O] = mu_kM - delta
  inverse: jax.Array  # (P, n, Kc), G^-1's upper triangle, pairs(m) order
  slots: jax.Array  # (n, m) int32, the missing features (D: unused)


def pairs(m: int):
  """The slot pairs ``(a, b)``, ``a <= b``, of the stored upper triangle."""
  return [(a, b) for a in range(m) for b in range(a, m)]


def slot_indices(ob, m: int):
  """``(n, m)`` indices of each row's missing entries in increasing order;
  ``D`` fills unused slots. ``m`` must be at least the most entries a row
  misses.

  Two small products of 0/1 values (exact in float32), not a per-row sort
  or a cumulative sum, which XLA's CPU backend runs far slower: the rank
  of each missing entry among its row's, then each slot's feature.
  """
  d = ob.shape[1]
  miss = (~ob).astype(jnp.float32)
  upper = jnp.triu(jnp.ones((d, d), jnp.float32))
  rank = mm.matmul(miss, upper)  # (n, D): missing entries up to each
  target = jnp.arange(1, m + 1, dtype=jnp.float32)
  hit = miss[:, None, :] * (rank[:, None, :] == target[None, :, None])
  offset = jnp.arange(d, dtype=jnp.float32) - d
  return (mm.matmul(hit, offset) + d).astype(jnp.int32)


def observed_of_slots(slots, d: int):
  """The ``(n, D)`` observed mask of rows whose missing features are
  ``slots``."""
  cols = jnp.arange(d, dtype=slots.dtype)
  return jnp.all(slots[:, :, None] != cols[None, None, :], axis=1)


def _factorise(ge, ue):
  """``log det G`` ``(n, Kc)``, ``|L^-1 u|^2`` ``(n, K)``, ``G^-1 u``
  ``(m, n, K)`` and ``G^-1``'s upper triangle ``(P, n, Kc)`` for SPD ``G``
  given entry-major as ``ge`` ``(m, m, n, Kc)``, and ``ue`` ``(m, n, K)``.

  Each step of the right-looking Cholesky ``G = L L^T``, of the forward
  substitutions for ``t = L^-1 u`` and ``W = L^-1`` and of the sums ``G^-1
  = W^T W``, ``G^-1 u = W^T t`` works on a whole trailing block at once:
  elementwise on contiguous ``(n, Kc)`` slabs, ``O(m)`` operations to
  compile. (Stacking per-entry results instead made XLA's compile time
  grow to seconds per slot count: its concatenations duplicate their
  operands' fused producers.)
  """
  m = ge.shape[0]
  piv, cols, a = [], [], ge
  for _ in range(m):
    piv.append(jnp.sqrt(a[0, 0]))
    cols.append(a[1:, 0] / piv[-1])  # L[j+1:, j], (m - j - 1, n, Kc)
    a = a[1:, 1:] - cols[-1][:, None] * cols[-1][None, :]
  log_det = 2.0 * sum(jnp.log(p) for p in piv)
  eye = jnp.eye(m, dtype=ge.dtype)[:, :, None, None]
  rest_u, rest_w = ue, jnp.broadcast_to(eye, (m, m) + ge.shape[2:])
  pa, pb = _pair_index(m)
  corr, delta, inverse = 0.0, 0.0, 0.0
  for j in range(m):
    t = rest_u[0] / piv[j]  # (n, K)
    w = rest_w[0] / piv[j]  # (m, n, Kc): row j of W = L^-1
    corr = corr + t * t
    delta = delta + w * t[None]  # W^T t
    inverse = inverse + w[pa] * w[pb]  # W^T W, upper triangle
    rest_u = rest_u[1:] - cols[j] * t[None]
    rest_w = rest_w[1:] - cols[j][:, None] * w[None]
  return log_det, corr, delta, inverse


def _factorise_small(ge, ue):
  """:func:`_factorise` for one or two slots, in closed form (most rows:
  with 10% of 16 features missing at random, 60% miss one or two)."""
  if ge.shape[0] == 1:
    g, u = ge[0, 0], ue[0]
    return (jnp.log(g), u * u / g, (u / g)[None], (1.0 / g)[None])
  g00, g01, g11 = ge[0, 0], ge[0, 1], ge[1, 1]
  l00 = jnp.sqrt(g00)
  l10 = g01 / l00
  s11 = g11 - l10 * l10  # the Schur complement, l11^2
  t0 = ue[0] / l00
  t1 = (ue[1] - l10 * t0) / jnp.sqrt(s11)
  det = g00 * s11
  inv00, inv01, inv11 = g11 / det, -g01 / det, g00 / det
  delta = jnp.stack([inv00 * ue[0] + inv01 * ue[1],
                     inv01 * ue[0] + inv11 * ue[1]])
  return (jnp.log(g00) + jnp.log(s11), t0 * t0 + t1 * t1, delta,
          jnp.stack([inv00, inv01, inv11]))


def _materialised(fn, *args):
  """``fn(*args)``, its outputs materialised once: a branch of a
  conditional on a value XLA cannot fold (it is always taken). XLA's CPU
  compiler drops ``optimization_barrier`` and would otherwise fuse a long
  elementwise chain (a factorisation) into each of its consumers,
  computing it several times over."""
  first = args[0].reshape(-1)[:1]
  always = jnp.all(first == first) | jnp.any(first != first)
  shapes = jax.eval_shape(fn, *args)
  return lax.cond(always, fn, lambda *_: jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), shapes), *args)


def _gemm_weights(params, centre):
  """Two ``(2D, D K)`` weights: ``[a, o] @ B`` gives ``P_k^T z~`` and
  ``Lambda_k z~`` of ``z~ = o (x - mu_k)`` from ``a = o (x - centre)``
  (columns ordered (feature, component), components minor). Two products,
  not one twice as wide: slicing the halves out of one copied them."""
  k, d = params.means.shape
  pc = params.precisions_cholesky
  pc = jnp.broadcast_to(pc[None] if pc.ndim == 2 else pc, (k, d, d))
  lam = mm.matmul(pc, jnp.swapaxes(pc, -1, -2))
  mc = params.means - centre[None, :]

  def weights(m):  # (K, D, E) -> [[m], [-mc m]] as (2D, E K)
    def flat(f):  # [d, e K + k] = f[k, d, e]
      return jnp.transpose(f, (1, 2, 0)).reshape(d, -1)
    return jnp.concatenate([flat(m), -flat(mc[:, :, None] * m)], axis=0)

  return weights(pc), weights(lam), pc


def _missing_blocks(params, slots, dtype):
  """``G`` entry-major ``(m, m, n, Kc)``: the precisions' entries at the
  slot pairs, gathered as rows of ``Kc`` contiguous values from a
  ``((D + 1)^2, Kc)`` table (an element gather measured far slower); the
  unused slots' block is the identity."""
  pc = params.precisions_cholesky
  prec = pc[None] if pc.ndim == 2 else pc
  prec = mm.matmul(prec, jnp.swapaxes(prec, -1, -2))  # (Kc, D, D)
  kc, d = prec.shape[0], prec.shape[-1]
  table = jnp.zeros((d + 1, d + 1, kc), dtype).at[:d, :d].set(
      jnp.moveaxis(prec, 0, -1)).reshape((d + 1) ** 2, kc)
  st = slots.T  # (m, n)
  ge = table[st[:, None, :] * (d + 1) + st[None, :, :]]
  m = st.shape[0]
  unused = (st == d).astype(dtype)
  return ge + (jnp.eye(m, dtype=dtype)[:, :, None] * unused[None])[..., None]


def terms(params, xb, ob, slots, centre) -> SlotTerms:
  """The observed log densities and conditional terms of rows ``xb``
  (missing entries zero) whose missing features are ``slots`` ``(n, m)``;
  ``centre`` ``(D,)`` the point the GEMM's inputs are centred on."""
  n, d = xb.shape
  k = params.means.shape[0]
  w_p, w_lam, pc = _gemm_weights(params, centre)
  of = ob.astype(xb.dtype)
  inputs = jnp.concatenate([of * (xb - centre[None, :]), of], axis=1)
  y = mm.matmul(inputs, w_p).reshape(n, d, k)  # P_k^T z~
  lam_z = mm.matmul(inputs, w_lam)  # Lambda_k z~, (n, D K)
  # u: Lambda z~ at the slots, rows of K gathered from (n D, K) (a one-hot
  # reduction over D measured several times slower); zero in unused slots.
  rows = (jnp.arange(n, dtype=jnp.int32)[None, :] * d
          + jnp.minimum(slots.T, d - 1))
  ue = jnp.where((slots.T < d)[..., None], lam_z.reshape(n * d, k)[rows],
                 0.0)  # (m, n, K)
  ge = _missing_blocks(params, slots, xb.dtype)
  if slots.shape[1] <= 2:
    log_det_g, corr, delta, inverse = _factorise_small(ge, ue)
  else:
    log_det_g, corr, delta, inverse = _materialised(_factorise, ge, ue)
  maha = jnp.sum(y * y, axis=1) - corr
  return SlotTerms(_log_gauss(pc, ob, maha, log_det_g), delta, inverse,
                   slots)


def _one_hot(slots, d: int, dtype):
  """``(n, m, D)``: each slot's feature as a one-hot row (zeros if
  unused)."""
  cols = jnp.arange(d, dtype=slots.dtype)
  return (slots[:, :, None] == cols[None, None, :]).astype(dtype)


def _pair_index(m: int):
  """``(a, b)`` index arrays of :func:`pairs`."""
  a, b = zip(*pairs(m), strict=True)
  return jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)


def _factors(params):
  """``(P, Lambda)`` per component ``(K, D, D)`` (tied: broadcast)."""
  k, d = params.means.shape
  pc = params.precisions_cholesky
  pc = jnp.broadcast_to(pc[None] if pc.ndim == 2 else pc, (k, d, d))
  return pc, mm.matmul(pc, jnp.swapaxes(pc, -1, -2))


def _log_gauss(pc, ob, maha, log_det_g):
  log_det_p = jnp.sum(jnp.log(jnp.diagonal(pc, axis1=-2, axis2=-1)), -1)
  n_obs = jnp.sum(ob.astype(maha.dtype), axis=1)[:, None]
  return (-0.5 * (n_obs * math.log(2 * math.pi) + maha)
          + log_det_p[None, :] - 0.5 * log_det_g)


def slot_centred_moments(params, rw, a, st: SlotTerms, centre):
  """``(sx, sxx)`` of the completed rows around ``centre`` by GEMMs (the
  fast form; :func:`slot_moments` is the exact one): the complete-data moments
  of the filled rows ``a`` (missing entries at the centre), the cross
  terms with the missing entries' offsets ``e`` from the centre, one GEMM
  ``a^T [r e]`` ``(D, n) @ (n, K D)``, and their own second moments plus
  the conditional covariances, scattered into the missing blocks."""
  ct = cov_lib.get(params.covariance_type)
  tied = ct.shared
  n, d = a.shape
  k = rw.shape[1]
  sx, sxx = ct.centred_moments(a, rw)
  m = st.slots.shape[1]
  hot = _one_hot(st.slots, d, a.dtype)  # (n, m, D)
  mc = params.means - centre[None, :]
  # The completed entries minus the centre: mu_kj - centre_j - delta.
  e = (mm.matmul(hot.reshape(n * m, d), mc.T).reshape(n, m, k)
       - jnp.moveaxis(st.delta, 0, 1))  # (n, m, K)
  # b_ikd = sum_s [slot_is = d] r_ik e_iks, one (n, K, D) loop (a product
  # with the one-hot rows would materialise (n, m, K, D) first).
  b = sum(jnp.where(hot[:, s, None, :] > 0, (rw * e[:, s])[:, :, None], 0.0)
          for s in range(m))
  cross = mm.matmul(a.T, b.reshape(n, k * d)).reshape(d, k, d)
  cross = jnp.sum(cross, axis=1) if tied else jnp.moveaxis(cross, 1, 0)
  sxx = sxx + cross + jnp.swapaxes(cross, -1, -2)
  sx = sx + jnp.sum(b, axis=0)
  e = jnp.moveaxis(e, 1, 0)  # (m, n, K)
  pa, pb = _pair_index(m)
  second = rw[None] * (e[pa] * e[pb] + st.inverse)  # (P, n, K)
  sxx = sxx + _scatter_pairs(second, st.slots, d, tied)
  return sx, sxx


def _filled_missing(delta, slots, d: int):
  """``sum_s onehot(slot_s) delta_s``: the conditional offsets scattered to
  their features, component-major ``(K, n, D)``."""
  hot = _one_hot(slots, d, delta.dtype)  # (n, m, D)
  return jnp.einsum("mnk,nmd->knd", delta, hot)


def slot_completed(params, xb, ob, st: SlotTerms):
  """Completed rows ``(K, n, D)``: observed entries, conditional means of
  the missing ones."""
  base = jnp.where(ob[None], xb[None], params.means[:, None, :])
  return base - _filled_missing(st.delta, st.slots, xb.shape[1])


def slot_moments(params, rw, xb, ob, st: SlotTerms, shift):
  """``(sx, sxx)`` of the completed rows around ``shift`` (``(D,)`` or
  ``(K, D)``), the conditional covariances included."""
  ct = cov_lib.get(params.covariance_type)
  s = shift if shift.ndim == 2 else shift[None, :]
  z = slot_completed(params, xb, ob, st) - s[:, None, :]  # (K, n, D)
  rz = rw.T[:, :, None] * z
  sxx = ct.component_sxx(rz, z, 1) + scatter_conditional(
      rw, st, xb.shape[1], ct.shared)
  return jnp.sum(rz, axis=1), sxx


def scatter_conditional(rw, st: SlotTerms, d: int, tied: bool):
  """``sum_i r_ik Cov[x_M | x_O, k]`` embedded in ``(K, D, D)`` (full) or
  summed over components ``(D, D)`` (tied)."""
  weights = jnp.sum(rw, axis=1, keepdims=True) if tied else rw
  return _scatter_pairs(weights[None] * st.inverse, st.slots, d, tied)


def _scatter_pairs(values, slots, d: int, tied: bool):
  """Per-pair values ``(P, n, Kc)`` summed into the missing blocks of
  ``(Kc, D, D)`` symmetric matrices (tied: summed to ``(D, D)``)."""
  n_pairs, n, kc = values.shape
  # Slots hold a row's missing features in increasing order: pair (a, b)
  # lands in the upper triangle; the lower one is its transpose.
  pa, pb = _pair_index(slots.shape[1])
  flat = (slots[:, pa] * (d + 1) + slots[:, pb]).T.reshape(-1)
  summed = jax.ops.segment_sum(values.reshape(n_pairs * n, kc), flat,
                               num_segments=(d + 1) ** 2)
  if tied:
    summed = jnp.sum(summed, axis=1, keepdims=True)
  upper = jnp.moveaxis(summed.reshape(d + 1, d + 1, -1)[:d, :d], -1, 0)
  diag = jnp.diagonal(upper, axis1=-2, axis2=-1)
  out = (upper + jnp.swapaxes(upper, -1, -2)
         - diag[..., :, None] * jnp.eye(d, dtype=upper.dtype))
  return out[0] if tied else out


def dense_conditional(st: SlotTerms, d: int):
  """The conditional covariances ``(n, Kc, D, D)`` (zero on observed
  rows and columns), for sampling."""
  m = st.slots.shape[1]
  full = [[None] * m for _ in range(m)]
  for p, (a, b) in enumerate(pairs(m)):
    full[a][b] = full[b][a] = st.inverse[p]
  dense = jnp.stack([jnp.stack(row, axis=-1) for row in full], axis=-2)
  hot = jax.nn.one_hot(st.slots, d, dtype=st.inverse.dtype)  # (n, m, D)
  return mm.einsum("nad,nkab,nbe->nkde", hot, dense, hot)
