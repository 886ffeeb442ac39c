"""Per-component moments of a chunk, and the guards on their rounding.

Second moments are accumulated around a shift, never around zero: one
centre ``(D,)`` (the fast GEMM forms, each type's ``centred_moments``) or
one per component ``(K, D)``, the components' current means
(``stats.component_shift``), around which the M-step's subtraction
``Sigma_k = S_k / N_k - d_k d_k^T`` does not cancel. :func:`guarded_moments`
moves the fast centred moments to the per-component shifts and falls back to
:func:`component_moments`, formed from differences, where that move loses
digits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from gmmjax._src import chunks
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.kernels import fast_form_tol
from gmmjax._src.reductions import UNROLLED_MAX_ORDER, any_in_batch


def centred_moments(xc, rw, covariance_type):
  """``sx, sxx`` around one centre (``xc`` already shifted) by GEMMs."""
  return cov_lib.get(covariance_type).centred_moments(xc, rw)


def second_moments(xc, rw, covariance_type):
  """Shifted second-moment statistic for ``estimate_covariances``.

  Args:
    xc: ``(N, D)`` shifted samples ``x_i - c``.
    rw: ``(N, K)`` responsibilities times sample weights.
    covariance_type: the type.
  """
  return cov_lib.get(covariance_type).second_moments(xc, rw)


def component_moments(xb, rw, shift, covariance_type):
  """``sx, sxx`` around per-component shifts ``(K, D)``, one chunk.

  The differences ``z_ik = x_i - a_k`` are formed before any product, so
  the second moments carry no cancellation.
  """
  ct = cov_lib.get(covariance_type)
  if shift.shape[-1] <= UNROLLED_MAX_ORDER:
    # Tiny D: sample-major (n, K, D), contracted over n (measured fastest
    # there, notably vmapped over many small problems).
    z = xb[:, None, :] - shift[None, :, :]
    rz = rw[:, :, None] * z
    return jnp.sum(rz, axis=0), ct.component_sxx(rz, z, 0)
  # Component-major (K, n, D): the second moments are then a batched GEMM
  # with the batch axis leading (faster on CPU than (n, K, D) in tests).
  z = xb[None, :, :] - shift[:, None, :]
  rz = rw.T[:, :, None] * z
  return jnp.sum(rz, axis=1), ct.component_sxx(rz, z, 1)


def chunked_component_moments(X, rw, shift, covariance_type,
                              options: chunks.ChunkOptions | None = None):
  """:func:`component_moments` summed over pieces of bounded memory.

  The ``(n, K, D)`` differences of each piece stay within the chunk budget
  (:func:`gmmjax._src.chunks.fallback_chunk`).
  """
  n = X.shape[0]
  k, d = shift.shape
  return chunks.sum_chunks(
      lambda x, r: component_moments(x, r, shift, covariance_type),
      n, chunks.fallback_chunk(n, k, d, X.dtype, options), X, rw)


def moved_moments(rw, shift, centre, sx_c, sxx_c, covariances,
                  covariance_type):
  """``(sx, sxx, bad)``: moments around ``centre`` moved to the
  per-component ``shift`` ``(K, D)``, and whether the move lost more than
  ``fast_form_tol(dtype, moments=True)`` of a component's scatter (see
  :func:`guarded_moments`, which then recomputes them exactly)."""
  nk = jnp.sum(rw, axis=0)
  m = shift - centre[None, :]  # (K, D)
  sx = sx_c - nk[:, None] * m
  sxx, scale, result, expected = cov_lib.get(covariance_type).move_moments(
      sx_c, sxx_c, nk, m, covariances)
  eps = jnp.finfo(rw.dtype).eps
  tiny = jnp.sqrt(jnp.finfo(rw.dtype).tiny)
  bad = jnp.any(lax.stop_gradient(
      4.0 * eps * scale > fast_form_tol(rw.dtype, moments=True)
      * jnp.maximum(jnp.abs(result), expected) + tiny))
  return sx, sxx, bad


def guarded_moments(xb, rw, shift, centre, sx_c, sxx_c, covariances,
                    covariance_type,
                    options: chunks.ChunkOptions | None = None):
  """Moments around per-component shifts from the centred (fast) ones.

  Moving ``S(c)`` to ``S(a_k)`` subtracts terms of size ``N_k |a_k - c|^2``;
  where that loses more than ``fast_form_tol(dtype, moments=True)`` of a
  component's scatter, the chunk's moments are recomputed from the
  differences ``x_i - a_k`` (:func:`chunked_component_moments`), which carry
  no cancellation.

  The scatter a chunk's error is measured against is the larger of its own
  moments and ``n_k`` times the current covariance: the M-step divides the
  sum over all chunks by ``N_k``, so an error below ``tol * n_k * Sigma_k``
  in every chunk stays below it in the sum. (The chunk's own moments alone
  would trip on chance: one sample near a mean in one coordinate.)
  """
  sx, sxx, bad = moved_moments(rw, shift, centre, sx_c, sxx_c, covariances,
                               covariance_type)

  def exact():
    return chunked_component_moments(xb, rw, shift, covariance_type, options)

  return lax.cond(any_in_batch(bad), exact, lambda: (sx, sxx))


class RespMoments(NamedTuple):
  nk: object  # (K,) floored masses
  center: object  # (D,) weighted data mean
  diff: object  # (K, D) new means minus ``center``
  sxx: object  # the type's scatter around each new mean
  xc: object  # (N, D) data minus ``center``
  rw: object  # (N, K) responsibilities times sample weights
  sx: object  # (K, D) first moments around each new mean (0 to rounding)


def resp_moments(X, resp, sample_weight, covariance_type) -> RespMoments:
  """Masses, centre, new means and scatter of responsibilities ``(N, K)``
  around each component's own new mean: the two-pass M-step of the
  initialisations (hard responsibilities, where one-pass shifted moments
  would cancel).

  Returns:
    A :class:`RespMoments` (``sxx`` by :func:`chunked_component_moments`).
  """
  dtype = X.dtype
  w = jnp.ones(X.shape[0], dtype) if sample_weight is None else sample_weight
  rw = resp * w[:, None]
  nk = jnp.sum(rw, axis=0) + 10 * jnp.finfo(dtype).eps
  center = mm.matmul(w, X) / jnp.sum(w)
  xc = X - center[None, :]
  diff = mm.matmul(rw.T, xc) / nk[:, None]
  sx, sxx = chunked_component_moments(xc, rw, diff, covariance_type)
  return RespMoments(nk, center, diff, sxx, xc, rw, sx)
