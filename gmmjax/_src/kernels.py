"""Squared Mahalanobis distances: fast GEMM forms, their guards, chunking.

The fast forms (each type's ``centred_mahalanobis``) work on samples and
means translated by one centre; their rounding error grows with the squared
(whitened) distance of the data from it. :func:`guarded_mahalanobis`
estimates that error per chunk and recomputes exactly
(``direct_mahalanobis``, from per-component differences) the columns of the
components where it matters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import chunks
from gmmjax._src import covariance as cov_lib
from gmmjax._src.reductions import any_in_batch

# Relative rounding error tolerated from the fast (GEMM) forms, per dtype.
# Where a chunk's own error estimate exceeds it, the distances of the
# components at fault are recomputed from per-component differences, which
# carry no cancellation. float64 is held to near its own precision (EM stays
# monotone to ~1e-10), float32 to what its 24 bits can give on ordinary data
# without leaving the GEMMs.
FAST_FORM_TOL = {"float32": 1e-4, "float64": 1e-11}

# The same for the second moments moved from the chunk's centre to each
# component's mean (``moments.guarded_moments``), relative to the component's
# scatter. An error there shifts the M-step's variances by that fraction;
# the log-likelihood at the fixed point moves only to second order in it, so
# float32 tolerates 1e-3. (scikit-learn's own float32 diag and spherical
# moments are taken around the origin and lose far more.) Tighter, float32
# fits of well-separated, narrow components (workload 4's diag: a component
# 8 sd from the centre in a coordinate) take the exact per-component path on
# most chunks, about 5x slower.
MOMENT_TOL = {"float32": 1e-3, "float64": 1e-11}


def fast_form_tol(dtype, moments: bool = False) -> float:
  table = MOMENT_TOL if moments else FAST_FORM_TOL
  return table.get(jnp.dtype(dtype).name, table["float32"])


def mahalanobis_centred(xc, mc, prec_chol, covariance_type):
  """Squared Mahalanobis distances ``(n, K)`` of centred samples, one chunk.

  ``xc`` and ``mc`` are samples and means translated by the same shift.
  Full: whitened differences (a GEMM, stable; float64: the expanded form
  over packed features). Tied, diag, spherical: expanded quadratic forms
  ``|a|^2 - 2 a.b + |b|^2`` as single GEMMs with ``K`` columns; their
  rounding error is about ``eps`` times the squared whitened distance of the
  shift to the samples and means, which centring keeps small, and negative
  round-offs are clamped to zero.
  """
  return cov_lib.get(covariance_type).centred_mahalanobis(xc, mc, prec_chol)


def direct_mahalanobis(xb, means, prec_chol, covariance_type):
  """Squared Mahalanobis distances from per-component differences ``x - mu_k``.

  ``(n, K, D)`` work with no cancellation whatever the data's offset or the
  components' spread; slower than the GEMM forms, so used where those lose
  digits.
  """
  diff = xb[:, None, :] - means[None, :, :]
  return cov_lib.get(covariance_type).direct_mahalanobis(diff, prec_chol)


def guarded_mahalanobis(xb, centre, means, prec_chol, covariance_type,
                        options: chunks.ChunkOptions | None = None):
  """Fast GEMM distances of one chunk, recomputed exactly where they are not.

  The components with any distance that matters off (``error >
  FAST_FORM_TOL * max(maha, 1)``, estimated per entry by the type's
  ``fast_form_error`` where a chunk-wide bound, ``fast_form_bound``, does
  not already rule it out) get their column recomputed by
  :func:`direct_mahalanobis` (:func:`_exact_columns`). Ordinary data never
  take that branch; a narrow component far from the rest (a collapsed one
  on an outlier) does, in float32 and float64 alike. Chunks of at most
  ``options.direct_max_entries`` differences use the exact form only
  (:func:`gmmjax._src.chunks.use_direct`).
  """
  ct = cov_lib.get(covariance_type)
  k, d = means.shape
  if chunks.use_direct(xb.shape[0], k, d, options):
    return direct_mahalanobis(xb, means, prec_chol, ct)
  xc = xb - centre
  mc = means - centre
  maha = ct.centred_mahalanobis(xc, mc, prec_chol)
  maha_sg = lax.stop_gradient(maha)
  tol = fast_form_tol(xb.dtype)
  xc_sg, mc_sg, pc_sg = (lax.stop_gradient(a) for a in (xc, mc, prec_chol))

  def entrywise():
    err = ct.fast_form_error(xc_sg, mc_sg, pc_sg, maha_sg)
    return jnp.any(err > tol * jnp.maximum(maha_sg, 1.0), axis=0)  # (K,)

  # The (n, K) estimate only where the chunk-wide bound does not settle it.
  bound = ct.fast_form_bound(xc_sg, mc_sg, pc_sg)
  # "Nothing to redo" derived from the chunk's own distances, not a
  # constant: inside shard_map it must vary over the data axis as
  # entrywise's result does (a constant is a different type there).
  redo = lax.cond(any_in_batch(jnp.any(bound > tol)), entrywise,
                  lambda: jnp.zeros_like(maha_sg[0], dtype=bool))
  return lax.cond(
      any_in_batch(jnp.any(redo)),
      lambda: _exact_columns(xb, means, prec_chol, ct, maha, redo),
      lambda: maha)


def _exact_columns(xb, means, prec_chol, covariance_type, maha, redo):
  """``maha`` with the columns of the components flagged in ``redo`` exact.

  One component at a time, skipping the unflagged ones: the fast form
  loses digits on the few components that are narrow and far from the
  chunk's centre (a collapsed component in workload 3 of the benchmarks,
  float32: one of 64, in 19 of 64 chunks), so recomputing only those costs
  ``1 / K`` of recomputing the chunk. Each flagged column is an ``(n, D)``
  difference and one ``(n, D) @ (D, D)`` product (full), within the chunk's
  memory budget; the loop body is checkpointed, so reverse mode keeps no
  per-component residuals either.
  """
  ct = cov_lib.get(covariance_type)

  def column(k):
    def exact():
      mean = lax.dynamic_slice_in_dim(means, k, 1)
      prec = ct.component_factor(prec_chol, k)
      return direct_mahalanobis(xb, mean, prec, ct)[:, 0]
    # Zeros shaped (and, under shard_map, varying) like a column of maha.
    return lax.cond(any_in_batch(redo[k]), exact,
                    lambda: jnp.zeros_like(maha[:, 0]))

  cols = lax.map(jax.checkpoint(column), jnp.arange(means.shape[0]))
  return jnp.where(redo[None, :], cols.T.astype(maha.dtype), maha)


def mahalanobis(X, means, prec_chol, covariance_type,
                options: chunks.ChunkOptions | None = None):
  """Squared Mahalanobis distances ``(N, K)`` of samples to every component.

  Data and means are first translated by the (gradient-stopped) average of
  the means. The distances are invariant to that translation, and it keeps
  float32 from losing digits on data far from the origin. Samples are
  processed in chunks (:func:`gmmjax._src.chunks.chunk_size`) so the ``(N,
  K, D)`` intermediate of full covariances is never materialised.
  """
  shift = lax.stop_gradient(jnp.mean(means, axis=0))
  n, d = X.shape
  ct = cov_lib.get(covariance_type)
  chunk = chunks.chunk_size(n, means.shape[0], d, ct, X.dtype,
                            options=options)
  return chunks.map_chunks(
      lambda xb: guarded_mahalanobis(xb, shift, means, prec_chol, ct,
                                     options), n, chunk, X)


def log_gaussian_prob(X, means, prec_chol, covariance_type,
                      options: chunks.ChunkOptions | None = None):
  """``log N(x_i | mu_k, Sigma_k)`` for every sample and component, ``(N, K)``."""
  n_features = means.shape[-1]
  maha = mahalanobis(X, means, prec_chol, covariance_type, options)
  log_det = cov_lib.get(covariance_type).log_det(prec_chol, n_features)
  return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det
