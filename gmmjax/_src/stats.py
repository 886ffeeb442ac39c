"""Sufficient statistics: the spine every EM variant shares.

The E-step reduces a batch of samples to per-component sums; the M-step reads
only those sums. Full-batch, chunked, sharded and online EM differ only in how
the sums are added up (a Python loop over chunks, a ``psum`` across devices,
a running average), so they all call :func:`e_step_stats` and
:func:`params_from_stats`.

Second moments are accumulated around a common shift ``c`` (the mixture mean
of the current parameters), never around zero, so float32 does not cancel
catastrophically on data far from the origin.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import covariance as cov_ops
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams


class SuffStats(NamedTuple):
  """Additive sufficient statistics of a (weighted) batch of samples.

  Every field is a sum over samples, so statistics of disjoint batches add
  (``jax.tree.map(jnp.add, a, b)``, or ``lax.psum`` across devices) as long
  as they were computed around the same ``shift``.
  """

  count: jax.Array  # shape=(), sum of sample weights
  nk: jax.Array  # shape=(K,), sum_i w_i r_ik
  sx: jax.Array  # shape=(K, D), sum_i w_i r_ik (x_i - c)
  sxx: jax.Array  # full (K, D, D) | tied (D, D) | diag (K, D) | spherical (K,)
  log_likelihood: jax.Array  # shape=(), sum_i w_i log p(x_i)


def mixture_mean(params: GMMParams):
  """``sum_k w_k mu_k``: the shift used for second moments (gradient-stopped)."""
  return lax.stop_gradient(mm.matmul(params.weights, params.means))


def component_shift(params: GMMParams):
  """Per-component shifts ``(K, D)``: the current means (gradient-stopped).

  Second moments around each component's own current mean do not cancel:
  ``Sigma_k = S_k / N_k - d_k d_k^T`` with ``d_k`` the (small) move of the
  mean. Around one global shift ``c`` the subtraction loses about
  ``eps * |mu_k - c|^2`` absolutely, which in float32 exceeds the variance
  of a tight or nearly singular component (e.g. 23 points in 32
  dimensions) and makes its covariance indefinite. Pass this as ``shift``
  to :func:`e_step_stats` and :func:`params_from_stats`.
  """
  return lax.stop_gradient(params.means)


def weighted_log_prob(params: GMMParams, X):
  """``log w_k + log N(x_i | k)``, shape ``(N, K)`` (computed in chunks)."""
  return (cov_ops.log_gaussian_prob(X, params.means,
                                    params.precisions_cholesky,
                                    params.covariance_type)
          + jnp.log(params.weights)[None, :])


def _block_stats(params: GMMParams, xb, wb, shift, temperature) -> SuffStats:
  """Fused E-step and statistics of one chunk of samples.

  ``xb`` is ``(n, D)``; ``wb`` ``(n,)`` weights or ``None``. The fast forms
  are GEMMs on samples translated by one centre; where their own error
  estimate says a chunk lost digits (a narrow component far from the centre,
  in float32 or float64), that chunk's distances and second moments are
  recomputed from per-component differences (see
  :func:`gmmjax._src.covariance.guarded_mahalanobis` and
  :func:`_guarded_moments`).
  """
  ctype = params.covariance_type
  d = xb.shape[-1]
  per_component = shift.ndim == 2
  # The E-step's forms are translation invariant: centre them on one point.
  centre = lax.stop_gradient(jnp.mean(shift, axis=0) if per_component
                             else shift)
  prec_chol = params.precisions_cholesky
  maha = cov_ops.guarded_mahalanobis(xb, centre, params.means, prec_chol,
                                     ctype)
  log_det = cov_ops.log_det_cholesky(prec_chol, ctype, d)
  wlp = (-0.5 * (d * math.log(2 * math.pi) + maha) + log_det
         + jnp.log(params.weights)[None, :])
  log_norm = cov_ops.logsumexp_small(wlp, axis=1)
  if temperature is None:
    resp = jnp.exp(wlp - log_norm[:, None])
  else:
    resp = jax.nn.softmax(wlp / temperature, axis=1)
  if wb is None:
    rw, count, ll = resp, jnp.asarray(xb.shape[0], xb.dtype), jnp.sum(log_norm)
  else:
    rw, count, ll = resp * wb[:, None], jnp.sum(wb), jnp.sum(wb * log_norm)
  if per_component and cov_ops.use_direct(xb.shape[0], *shift.shape):
    sx, sxx = component_moments(xb, rw, shift, ctype)
  else:
    sx, sxx = _centred_moments(xb - centre, rw, ctype)
    if per_component:
      sx, sxx = _guarded_moments(xb, rw, shift, centre, sx, sxx,
                                 params.covariances, ctype)
  return SuffStats(count=count, nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
                   log_likelihood=ll)


def _centred_moments(xc, rw, covariance_type: str):
  """``sx, sxx`` around one centre by GEMMs (the fast form)."""
  if covariance_type == "tied":
    return mm.matmul(rw.T, xc), cov_ops.second_moments(xc, rw, covariance_type)
  # sx and sxx from one GEMM: rw^T @ [x, moments(x)].
  summed = mm.matmul(rw.T, cov_ops.moment_features(xc, covariance_type))
  return cov_ops.split_moments(summed, xc.shape[-1], covariance_type)


def _guarded_moments(xb, rw, shift, centre, sx_c, sxx_c, covariances,
                     covariance_type: str):
  """Moments around per-component shifts from the centred (fast) ones.

  Moving ``S(c)`` to ``S(a_k)`` subtracts terms of size ``N_k |a_k - c|^2``;
  where that loses more than ``fast_form_tol(dtype, moments=True)`` of a
  component's scatter, the chunk's moments are recomputed from the
  differences ``x_i - a_k`` (:func:`chunked_component_moments`), which carry no
  cancellation.

  The scatter a chunk's error is measured against is the larger of its own
  moments and ``n_k`` times the current covariance: the M-step divides the
  sum over all chunks by ``N_k``, so an error below ``tol * n_k * Sigma_k``
  in every chunk stays below it in the sum. (The chunk's own moments alone
  would trip on chance: one sample near a mean in one coordinate.)
  """
  nk = jnp.sum(rw, axis=0)
  m = shift - centre[None, :]  # (K, D)
  sx = sx_c - nk[:, None] * m
  if covariance_type == "full":
    outer = sx_c[:, :, None] * m[:, None, :]
    sxx = (sxx_c - outer - jnp.swapaxes(outer, -1, -2)
           + nk[:, None, None] * m[:, :, None] * m[:, None, :])
    scale = jnp.trace(sxx_c, axis1=1, axis2=2) + nk * jnp.sum(m * m, 1)
    result = jnp.trace(sxx, axis1=1, axis2=2)
    expected = nk * jnp.trace(covariances, axis1=1, axis2=2)
  elif covariance_type == "tied":
    cross = mm.matmul(sx_c.T, m)
    sxx = sxx_c - cross - cross.T + mm.matmul((m * nk[:, None]).T, m)
    scale = jnp.trace(sxx_c)[None] + jnp.sum(nk * jnp.sum(m * m, 1))
    result = jnp.trace(sxx)[None]
    expected = jnp.sum(nk) * jnp.trace(covariances)[None]
  elif covariance_type == "diag":
    sxx = sxx_c - 2.0 * m * sx_c + nk[:, None] * m * m
    scale, result = sxx_c + nk[:, None] * m * m, sxx
    expected = nk[:, None] * covariances
  else:
    m2 = jnp.sum(m * m, axis=1)
    sxx = sxx_c - 2.0 * jnp.sum(m * sx_c, axis=1) + nk * m2
    scale, result = sxx_c + nk * m2, sxx
    expected = nk * covariances * m.shape[-1]
  eps = jnp.finfo(xb.dtype).eps
  tiny = jnp.sqrt(jnp.finfo(xb.dtype).tiny)
  bad = jnp.any(lax.stop_gradient(
      4.0 * eps * scale > cov_ops.fast_form_tol(xb.dtype, moments=True)
      * jnp.maximum(jnp.abs(result), expected) + tiny))

  def exact():
    return chunked_component_moments(xb, rw, shift, covariance_type)

  return lax.cond(cov_ops.any_in_batch(bad), exact, lambda: (sx, sxx))


def chunked_component_moments(X, rw, shift, covariance_type: str):
  """:func:`component_moments` summed over pieces of bounded memory.

  The ``(n, K, D)`` differences of each piece stay within the chunk budget
  (:func:`gmmjax._src.covariance.fallback_chunk`).
  """
  n = X.shape[0]
  k, d = shift.shape
  return cov_ops.sum_chunks(
      lambda x, r: component_moments(x, r, shift, covariance_type),
      n, cov_ops.fallback_chunk(n, k, d, X.dtype), X, rw)


def component_moments(xb, rw, shift, covariance_type: str):
  """``sx, sxx`` around per-component shifts ``(K, D)``, one chunk.

  The differences ``z_ik = x_i - a_k`` are formed before any product, so
  the second moments carry no cancellation (see :func:`component_shift`).
  """
  k, d = shift.shape
  if d <= cov_ops.UNROLLED_MAX_ORDER:
    # Tiny D: sample-major (n, K, D), contracted over n (measured fastest
    # there, notably vmapped over many small problems).
    z = xb[:, None, :] - shift[None, :, :]
    rz = rw[:, :, None] * z
    sx = jnp.sum(rz, axis=0)
    if covariance_type in ("full", "tied"):
      sxx = mm.einsum("nkd,nke->kde", rz, z)
      return sx, (sxx if covariance_type == "full" else jnp.sum(sxx, 0))
    sxx = jnp.sum(rz * z, axis=0)
    return sx, (sxx if covariance_type == "diag" else cov_ops.sum_small(sxx))
  # Component-major (K, n, D): the second moments are then a batched GEMM
  # with the batch axis leading (faster on CPU than (n, K, D) in tests).
  z = xb[None, :, :] - shift[:, None, :]
  rz = rw.T[:, :, None] * z
  sx = jnp.sum(rz, axis=1)
  n = xb.shape[0]
  if covariance_type == "full":
    sxx = mm.einsum("knd,kne->kde", rz, z)
  elif covariance_type == "tied":
    # One GEMM: (D, K*n) @ (K*n, D).
    sxx = mm.matmul(rz.reshape(k * n, d).T, z.reshape(k * n, d))
  elif covariance_type == "diag":
    sxx = jnp.sum(rz * z, axis=1)
  else:
    sxx = jnp.sum(rz * z, axis=(1, 2))
  return sx, sxx


def stats_from_resp(X, resp, sample_weight, shift, covariance_type: str,
                    log_prob_norm=None) -> SuffStats:
  """Statistics of samples ``X`` with responsibilities ``resp`` ``(N, K)``.

  ``shift`` is ``(D,)`` (one centre) or ``(K, D)`` (one per component, the
  cancellation-free choice; see :func:`component_shift`).
  """
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  rw = resp * w[:, None]
  ll = (jnp.zeros((), X.dtype) if log_prob_norm is None
        else jnp.sum(w * log_prob_norm))
  if jnp.ndim(shift) == 2:
    sx, sxx = chunked_component_moments(X, rw, shift, covariance_type)
  else:
    xc = X - shift
    sx = mm.matmul(rw.T, xc)
    sxx = cov_ops.second_moments(xc, rw, covariance_type)
  return SuffStats(count=jnp.sum(w), nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
                   log_likelihood=ll)


@jax.jit
def e_step_stats(params: GMMParams, X, sample_weight=None, shift=None,
                 temperature=None) -> SuffStats:
  """Fused E-step: responsibilities of ``X`` reduced to statistics.

  The samples are processed in chunks (``lax.scan`` over ``dynamic_slice``
  windows of ``X``, sized by :func:`gmmjax._src.covariance.chunk_size`):
  each chunk's responsibilities are reduced to statistics at once, so no
  ``(N, K)`` or ``(N, K, D)`` array is ever materialised and peak memory is
  the data plus a few megabytes. The per-chunk work is two large GEMMs
  (whitening for full covariances, ``rw^T @ [x, moments(x)]``).

  Args:
    params: current parameters.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` non-negative weights.
    shift: centre of the second moments: ``(D,)`` one point, or ``(K, D)``
      one per component (cancellation-free in float32, see
      :func:`component_shift`). Defaults to :func:`mixture_mean`. Batches
      whose statistics will be added must share it.
    temperature: optional positive scalar; responsibilities become
      ``softmax(log(w_k N_k(x)) / temperature)`` (1 is plain EM).

  Returns:
    :class:`SuffStats` whose ``log_likelihood`` is ``sum_i w_i log p(x_i)``.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
    ...                    jnp.array([1.0, 1.0]), covariance_type="spherical")
    >>> s = gx.e_step_stats(p, jnp.array([[-1.0], [1.0], [3.0]]))
    >>> float(s.count), s.nk.shape, s.sxx.shape
    (3.0, (2,), (2,))
  """
  if shift is None:
    shift = mixture_mean(params)
  n, d = X.shape
  chunk = cov_ops.chunk_size(n, params.means.shape[0], d,
                             params.covariance_type, X.dtype)
  arrays = (X,) if sample_weight is None else (X, sample_weight)
  return cov_ops.sum_chunks(
      lambda xb, wb=None: _block_stats(params, xb, wb, shift, temperature),
      n, chunk, *arrays)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def params_from_stats(stats: SuffStats, shift, covariance_type: str,
                      reg_covar) -> GMMParams:
  """The M-step: new parameters from statistics (no data needed).

  ``shift`` is the one the statistics were computed around: ``(D,)`` or
  ``(K, D)``.

  Empty components get scikit-learn's floor (``10 * eps`` added to ``N_k``):
  their mean falls back to the shift and their covariance to ``reg_covar``,
  so the parameters stay finite. A full/tied covariance that is not positive
  definite up to rounding gets the smallest diagonal jitter that makes it so
  (:func:`gmmjax.cholesky_jitter`); :func:`params_and_jitter_from_stats`
  reports it.
  """
  return params_and_jitter_from_stats(stats, shift, covariance_type,
                                      reg_covar)[0]


def params_and_jitter_from_stats(stats: SuffStats, shift,
                                 covariance_type: str, reg_covar):
  """:func:`params_from_stats` and the largest jitter it added (a scalar)."""
  dtype = stats.sx.dtype
  nk = stats.nk + 10 * jnp.finfo(dtype).eps
  weights = nk / jnp.sum(nk)
  diff = stats.sx / nk[:, None]
  shift = jnp.asarray(shift, dtype)
  means = (shift if shift.ndim == 2 else shift[None, :]) + diff
  covariances = cov_ops.estimate_covariances(nk, diff, stats.sxx,
                                             covariance_type, reg_covar)
  covariances, prec_chol, jitter = cov_ops.precision_cholesky_jittered(
      covariances, covariance_type)
  return (GMMParams(weights, means, covariances, prec_chol, covariance_type),
          jitter)


def add_stats(a: SuffStats, b: SuffStats) -> SuffStats:
  """Statistics of the union of two disjoint batches (same shift)."""
  return jax.tree.map(jnp.add, a, b)


def mask_components(params: GMMParams, nk, mask) -> GMMParams:
  """Zero weight and a harmless unit covariance for the inactive slots.

  Component slots beyond a fit's ``k`` (``mask`` False) keep weight exactly
  0, so their log-weight is ``-inf`` and their responsibilities and
  statistics are exactly 0: they never wake up.

  ``nk`` are the M-step's component masses (the active ones are the same
  masses, floor included, that an unpadded fit would see), so the active
  weights equal the unpadded fit's weights.
  """
  ctype = params.covariance_type
  dtype = params.means.dtype
  nk = nk + 10 * jnp.finfo(dtype).eps  # params_from_stats' floor
  nk = jnp.where(mask, nk, 0.0)
  weights = nk / jnp.sum(nk)
  # The active slots keep their factors: refactorising a covariance the
  # M-step repaired with a jitter can round differently and fail. The
  # inactive ones get the unit covariance, whose factor is the unit too.
  # Tied: one shared covariance; inactive slots add exactly 0 to it.
  cov, prec_chol = params.covariances, params.precisions_cholesky
  if ctype == "full":
    eye = jnp.eye(params.means.shape[-1], dtype=dtype)
    cov = jnp.where(mask[:, None, None], cov, eye[None])
    prec_chol = jnp.where(mask[:, None, None], prec_chol, eye[None])
  elif ctype in ("diag", "spherical"):
    active = mask.reshape((-1,) + (1,) * (cov.ndim - 1))
    cov = jnp.where(active, cov, 1.0)
    prec_chol = jnp.where(active, prec_chol, 1.0)
  return params.replace(weights=weights, covariances=cov,
                        precisions_cholesky=prec_chol)
