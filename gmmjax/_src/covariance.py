"""Per-covariance-type operations: shapes, Cholesky factors, densities.

Conventions follow scikit-learn's ``GaussianMixture``: ``covariances`` has
shape full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``,
and ``precisions_cholesky`` ``P`` has the same shape with ``P @ P.T`` the
precision (full/tied; ``P`` upper triangular) or ``P**2`` the precision
(diag/spherical). No covariance is ever inverted explicitly: the factor comes
from a Cholesky decomposition and a triangular solve.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import matmul as mm

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def covariance_shape(covariance_type: str, n_components: int,
                     n_features: int) -> tuple[int, ...]:
  """scikit-learn's shape of ``covariances`` for a covariance type."""
  return {
      "full": (n_components, n_features, n_features),
      "tied": (n_features, n_features),
      "diag": (n_components, n_features),
      "spherical": (n_components,),
  }[covariance_type]


def n_parameters(covariance_type: str, n_components: int,
                 n_features: int) -> int:
  """Number of free parameters of a mixture (weights, means, covariances)."""
  k, d = n_components, n_features
  cov = {
      "full": k * d * (d + 1) // 2,
      "tied": d * (d + 1) // 2,
      "diag": k * d,
      "spherical": k,
  }[covariance_type]
  return int(cov + k * d + k - 1)


def _eye_like(a):
  return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _is_matrix(covariance_type: str) -> bool:
  return covariance_type in ("full", "tied")


def precision_cholesky(covariances, covariance_type: str):
  """Precision Cholesky factors from covariances (scikit-learn's convention).

  For full/tied, ``L = cholesky(Sigma)`` and ``P = L^{-T}`` (upper
  triangular), so ``P P^T = Sigma^{-1}``. A covariance that is not positive
  definite gives non-finite entries, which callers detect and report.
  """
  if _is_matrix(covariance_type):
    return _precision_from_chol(jnp.linalg.cholesky(covariances))
  return lax.rsqrt(covariances)


def _precision_from_chol(chol):
  inv_chol = lax.linalg.triangular_solve(
      chol, _eye_like(chol), left_side=True, lower=True)
  return jnp.swapaxes(inv_chol, -1, -2)


# Diagonal jitters tried, in order, when a covariance's Cholesky factorisation
# fails: ``eps * 10**m`` times the mean of its diagonal, m = 0, 1, ..., 7
# (float32: 1.2e-7 up to 1.2 relative; float64: 2.2e-16 up to 2.2e-9).
JITTER_STEPS = 8


def _chol_ok(chol):
  diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
  return jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & jnp.all(diag > 0, -1)


def _cholesky_ok(cov):
  return _chol_ok(jnp.linalg.cholesky(cov))


def _jitter_ladder(cov, ok):
  """Per matrix, the first ladder rung that factorises.

  Returns ``(jitter, factor)``: the rung (0 where ``ok``) and the Cholesky
  factor of ``cov + rung I`` (meaningful only where not ``ok``). The factor
  is the very one that passed the test: recomputing it from ``cov + jitter
  I`` elsewhere in a compiled program can round differently (other
  instructions, another batch layout) and fail on a rung that sits at the
  rounding level, which is where the smallest rung is meant to be. Not
  differentiated: the unused rungs' factors are NaN, and a zero cotangent
  times NaN is NaN (see :func:`_cholesky_of`).
  """
  cov = lax.stop_gradient(cov)
  dtype = cov.dtype
  eps = jnp.finfo(dtype).eps
  scale = jnp.mean(jnp.abs(jnp.diagonal(cov, axis1=-2, axis2=-1)), axis=-1)
  powers = jnp.asarray(10.0, dtype) ** jnp.arange(JITTER_STEPS, dtype=dtype)
  rungs = scale[..., None] * eps * powers  # (..., JITTER_STEPS)
  # All rungs at once: one batched factorisation, no loop to compile.
  eye = jnp.eye(cov.shape[-1], dtype=dtype)
  trial = cov[..., None, :, :] + rungs[..., None, None] * eye
  chols = jnp.linalg.cholesky(trial)
  good = _chol_ok(chols)  # (..., JITTER_STEPS)
  first = jnp.where(jnp.any(good, axis=-1), jnp.argmax(good, axis=-1),
                    JITTER_STEPS - 1)
  jitter = jnp.take_along_axis(rungs, first[..., None], axis=-1)[..., 0]
  factor = jnp.take_along_axis(chols, first[..., None, None, None],
                               axis=-3)[..., 0, :, :]
  return jnp.where(ok, jnp.zeros_like(jitter), jitter), factor


def _symmetrised(m):
  """``(m + m^T) / 2``: the tangent of a symmetric matrix, as
  ``jnp.linalg.cholesky`` reads it."""
  return 0.5 * (m + jnp.swapaxes(m, -1, -2))


@jax.custom_jvp
def _cholesky_of(cov, chol):
  """``chol``, a Cholesky factor of ``cov`` computed elsewhere, with the
  derivative of ``cholesky(cov)``: ``dL = L Phi(L^-1 dC L^-T)``, ``Phi``
  the lower triangle with the diagonal halved (``dC`` symmetrised, as
  ``jnp.linalg.cholesky`` does). ``chol`` itself is not differentiated."""
  del cov
  return chol


@_cholesky_of.defjvp
def _cholesky_of_jvp(primals, tangents):
  cov, chol = primals
  dcov, _ = tangents
  # The factor through the function itself, so that differentiating the
  # tangent again (second derivatives) goes through this rule too.
  chol = _cholesky_of(cov, lax.stop_gradient(chol))
  dcov = _symmetrised(dcov)
  tmp = lax.linalg.triangular_solve(chol, dcov, left_side=True, lower=True)
  x = lax.linalg.triangular_solve(chol, tmp, left_side=False, lower=True,
                                  transpose_a=True)
  return chol, mm.matmul(chol, _phi(x))


def _phi(x):
  """Lower triangle of ``x`` with its diagonal halved."""
  return jnp.tril(x, -1) + 0.5 * jnp.diagonal(
      x, axis1=-2, axis2=-1)[..., None] * _eye_like(x)


@jax.custom_jvp
def _precision_cholesky_of(cov, prec_chol):
  """``prec_chol``, the precision factor of ``cov`` (full/tied) known from
  elsewhere (a fit's result), with the derivative of
  ``precision_cholesky(cov)``: from ``dL = L Phi(L^-1 dC L^-T)`` and
  ``P = L^-T``, ``dP = -P Phi(P^T dC P)^T``, products only. Refactorising a
  covariance that a fit repaired with a jitter can fail by rounding; this
  never factorises. ``prec_chol`` itself is not differentiated."""
  del cov
  return prec_chol


@_precision_cholesky_of.defjvp
def _precision_cholesky_of_jvp(primals, tangents):
  cov, prec = primals
  dcov, _ = tangents
  prec = _precision_cholesky_of(cov, lax.stop_gradient(prec))  # see above
  dcov = _symmetrised(dcov)
  inner = mm.matmul(jnp.swapaxes(prec, -1, -2), mm.matmul(dcov, prec))
  return prec, -mm.matmul(prec, jnp.swapaxes(_phi(inner), -1, -2))


def precision_cholesky_given(covariances, precisions_cholesky,
                             covariance_type: str):
  """``precisions_cholesky`` as a differentiable function of ``covariances``.

  The primal is the given factor (consistent with ``covariances``, e.g. a
  fit's result, whose covariances may carry the M-step's jitter); the
  derivative is that of :func:`precision_cholesky`. Diag and spherical
  factors are recomputed (``1 / sqrt``, no factorisation to fail).
  """
  if _is_matrix(covariance_type):
    return _precision_cholesky_of(covariances,
                                  lax.stop_gradient(precisions_cholesky))
  return precision_cholesky(covariances, covariance_type)


def covariance_cholesky_given(covariances, precisions_cholesky):
  """The lower Cholesky factor of ``covariances`` (full/tied), taken from
  their precision factors (``P^-T``, :func:`_covariance_factor`) with the
  derivative of ``jnp.linalg.cholesky(covariances)``: no factorisation,
  which a covariance repaired with a jitter can fail by rounding."""
  factor = lax.stop_gradient(_covariance_factor(precisions_cholesky))
  return _cholesky_of(covariances, factor)


def cholesky_jitter(covariances):
  """Smallest diagonal jitter that lets each matrix be Cholesky-factorised.

  For full ``(K, D, D)`` or tied ``(D, D)`` covariances: per matrix, 0 when
  its Cholesky factorisation succeeds, else the first of ``eps * 10**m *
  mean(diag)`` (m = 0 .. ``JITTER_STEPS - 1``) for which it does (the last
  one when none does; the factorisation then fails and the caller reports
  it). A matrix that is positive semi-definite up to rounding, as float32
  moments of collinear or repeated data produce, needs a few ``eps`` of its
  own scale. Not differentiated (the jitter is a constant of the step).

  Returns:
    ``(K,)`` or ``()`` jitters, in the covariances' dtype.
  """
  cov = lax.stop_gradient(covariances)
  return _jitter_ladder(cov, _cholesky_ok(cov))[0]


def precision_cholesky_jittered(covariances, covariance_type: str):
  """:func:`precision_cholesky` with a reported jitter fallback.

  Full/tied covariances whose factorisation fails (not positive definite
  up to rounding) get the smallest diagonal jitter of
  :func:`cholesky_jitter` added; diag/spherical ones are used as they are.
  The common case costs one factorisation: the ladder runs in a branch
  taken only when some matrix fails.

  Returns:
    ``(covariances, precisions_cholesky, jitter)``: the covariances actually
    factorised (jitter included, so the two stay consistent) and the largest
    jitter added (a scalar, 0 when none was needed).
  """
  if not _is_matrix(covariance_type):
    return (covariances, precision_cholesky(covariances, covariance_type),
            jnp.zeros((), covariances.dtype))
  # The factors are computed as constants and the derivative is attached
  # from the one used (_cholesky_of): a failed factor is NaN, and reverse
  # mode through any computation of it (a zero cotangent times NaN) would
  # make every gradient NaN, though the branch taken never uses it.
  chol = lax.stop_gradient(jnp.linalg.cholesky(covariances))
  ok = _chol_ok(chol)

  def repair():
    jitter, trial_chol = _jitter_ladder(covariances, ok)
    repaired = covariances + jitter[..., None, None] * _eye_like(covariances)
    factor = jnp.where(ok[..., None, None], chol, trial_chol)
    return repaired, _cholesky_of(repaired, factor), jnp.max(jitter)

  def keep():
    return (covariances, _cholesky_of(covariances, chol),
            jnp.zeros((), covariances.dtype))

  covariances, chol, jitter = lax.cond(any_in_batch(~jnp.all(ok)), repair,
                                       keep)
  return covariances, _precision_from_chol(chol), jitter


def precision_cholesky_from_precisions(precisions, covariance_type: str):
  """Upper factor ``U`` with ``U U^T = precision`` (scikit-learn's convention).

  Uses the exchange-matrix trick: ``J Lambda J = L L^T`` gives ``U = J L J``.
  """
  if _is_matrix(covariance_type):
    flipped = jnp.flip(precisions, axis=(-2, -1))
    chol = jnp.linalg.cholesky(flipped)
    return jnp.flip(chol, axis=(-2, -1))
  return jnp.sqrt(precisions)


def precisions_from_cholesky(prec_chol, covariance_type: str):
  """Precisions (inverse covariances) from their Cholesky factors."""
  if _is_matrix(covariance_type):
    return mm.matmul(prec_chol, jnp.swapaxes(prec_chol, -1, -2))
  return prec_chol * prec_chol


def _covariance_factor(prec_chol):
  """Lower Cholesky factor ``P^-T`` of the covariance (full/tied): the
  precision factor ``P`` is upper triangular, so ``Sigma = (P P^T)^-1 =
  P^-T P^-1``. Taken from ``P``, not by refactorising ``Sigma``, which a
  covariance repaired with a jitter can fail by rounding."""
  inv = lax.linalg.triangular_solve(
      prec_chol, _eye_like(prec_chol), left_side=True, lower=False)
  return jnp.swapaxes(inv, -1, -2)


def covariances_from_cholesky(prec_chol, covariance_type: str):
  """Covariances from precision Cholesky factors, by triangular solves."""
  if _is_matrix(covariance_type):
    factor = _covariance_factor(prec_chol)
    return mm.matmul(factor, jnp.swapaxes(factor, -1, -2))
  return 1.0 / (prec_chol * prec_chol)


def log_det_cholesky(prec_chol, covariance_type: str, n_features: int):
  """``log det P`` (half the log-determinant of the precision) per component.

  Shape ``(K,)``, or ``()`` for tied.
  """
  if _is_matrix(covariance_type):
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), -1)
  if covariance_type == "diag":
    return jnp.sum(jnp.log(prec_chol), axis=-1)
  return n_features * jnp.log(prec_chol)


# Memory budget, in bytes, of the largest per-chunk intermediate of the
# kernels below (the whitened differences ``(chunk, K, D)`` of full
# covariances, the ``(chunk, K)`` log-probabilities otherwise). Chunks this
# size stay in the CPU's caches, which made the fused E+M pass faster than
# one pass over all samples in measurements (benchmarks/README.md), and they
# bound memory on data sets far larger than the cache or the RAM headroom.
CHUNK_BYTES = 2 << 20
_MIN_CHUNK = 128

# The budget on GPUs and TPUs, capped at 1/32 of the memory JAX may
# allocate on the device (``bytes_limit``, about 75% of a GPU by default).
# There each of a chunk's kernels launches once per chunk and a scan step
# costs a round-trip, so cache-sized chunks leave the device idle and long
# GEMMs run nearer the product rate. 1,000,000 x 64, K=64 full, float32 on
# an H200 (2026-11-26, benchmarks/README.md): 209 ms per iteration at 8 MiB
# (1,954 chunks), 76 at 64, 54 at 256 and 48 at 1,024 MiB (16 chunks), 44%
# of the float32 product rate (TPUs unmeasured). The budget is per fit: the
# members of a vmapped batch each hold their own chunk. gmmjax's EM loops
# (fit, restarts, model selection, a user's vmap of fit) run their members
# in blocks of at most batching.ACCELERATOR_BLOCK_CHUNKS chunks; a user's
# vmap of the E-step or log-likelihood alone takes B times the memory.
# The backend is JAX's default one, not the device an array was placed on.
ACCELERATOR_CHUNK_BYTES = 1 << 30
_ACCELERATOR_MEMORY_SHARE = 32


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


@functools.cache
def _device_memory() -> int | None:
  """Bytes the default device may allocate, where its backend says."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - no statistics on this backend
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def chunk_bytes() -> int:
  """The default chunk budget of the default backend.

  ``CHUNK_BYTES`` on CPU; on accelerators ``ACCELERATOR_CHUNK_BYTES``, at
  most 1/32 of the memory JAX may allocate there where the device reports
  it (a 16 GB GPU, 12 GB allocatable: 384 MB chunks).
  """
  if _on_cpu():
    return CHUNK_BYTES
  mem = _device_memory()
  if mem is None:
    return ACCELERATOR_CHUNK_BYTES
  return min(ACCELERATOR_CHUNK_BYTES, mem // _ACCELERATOR_MEMORY_SHARE)

# The whitened full-covariance path (float32) gets this many times the
# budget: its per-sample work (one GEMM row of K*D, a sum over D, then a
# 152-wide moment GEMM on workload 2) gained more from longer GEMMs than it
# lost to cache misses. E-step of 100,000 x 16, K=16: 50-59 ms with 8 MB
# chunks against 66-100 ms with 2 MB; 65,536 x 32, K=64: 220-323 against
# 315-382 ms (5 alternating pairs, 2026-11-26). Diag and float64 full
# measured no gain (or a loss) and keep the base budget.
WHITENED_BUDGET_FACTOR = 4


def chunk_size(n_samples: int, n_components: int, n_features: int,
               covariance_type: str, dtype, budget: int | None = None) -> int:
  """Samples per chunk so that no per-chunk intermediate exceeds ``budget``.

  The widest intermediate of the fast (GEMM) forms per sample is ``K * D``
  values for full covariances in float32 (whitened differences), the
  ``D (D // 2 + 2)`` packed moment features in float64, and about
  ``max(3 K, 2 D + 1)`` otherwise. The default budget is ``CHUNK_BYTES``
  on CPU (``WHITENED_BUDGET_FACTOR`` times that for the whitened form) and
  ``ACCELERATOR_CHUNK_BYTES`` on GPUs and TPUs; the result is at least
  ``_MIN_CHUNK`` and at most ``n_samples`` (a single chunk). The exact
  moment fallback, whose ``(n, K, D)`` differences are wider, cuts a chunk
  into :func:`fallback_chunk` pieces of its own; the exact distances are
  recomputed one component at a time (``(n, D)``).
  """
  k, d = n_components, n_features
  if covariance_type == "full" and not use_expanded_full(dtype):
    width = max(k * d, n_moment_features(d), 3 * k)  # whitened (n, K, D)
    if budget is None and _on_cpu():
      budget = WHITENED_BUDGET_FACTOR * CHUNK_BYTES
  elif covariance_type == "full":
    width = max(n_moment_features(d), 3 * k)  # packed moment features
  else:
    width = max(3 * k, 2 * d + 1)
  return _rows_within(n_samples, width, dtype, budget)


def fallback_chunk(n_samples: int, n_components: int, n_features: int,
                   dtype) -> int:
  """Samples per piece of the exact ``(n, K, D)`` fallbacks (same budget)."""
  return _rows_within(n_samples, n_components * n_features, dtype)


def _rows_within(n_samples: int, width: int, dtype, budget=None) -> int:
  """Rows of ``width`` values within ``budget`` bytes, clipped to the data."""
  budget = chunk_bytes() if budget is None else budget
  per = budget // (width * jnp.dtype(dtype).itemsize)
  return int(min(n_samples, max(_MIN_CHUNK, per)))


def sum_chunks(fn, n_samples: int, chunk: int, *arrays):
  """``sum`` of ``fn(*blocks)`` (a pytree) over consecutive row chunks.

  The reduction counterpart of :func:`map_chunks`: ``lax.scan`` over
  ``dynamic_slice`` windows, the remainder one more call; ``jax.checkpoint``
  keeps the backward pass chunked too.
  """
  if n_samples <= chunk:
    return fn(*arrays)
  n_full = n_samples // chunk
  block = jax.checkpoint(fn)

  def body(acc, i):
    blocks = [lax.dynamic_slice_in_dim(a, i * chunk, chunk) for a in arrays]
    return jax.tree.map(jnp.add, acc, block(*blocks)), None

  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
      fn, *[a[:chunk] for a in arrays]))
  acc, _ = lax.scan(body, zeros, jnp.arange(n_full))
  if n_full * chunk < n_samples:
    acc = jax.tree.map(jnp.add, acc,
                       fn(*[a[n_full * chunk:] for a in arrays]))
  return acc


def map_chunks(fn, n_samples: int, chunk: int, *arrays):
  """``fn`` applied to consecutive sample chunks of ``arrays``, concatenated.

  ``fn(*blocks)`` maps row blocks of the ``(N, ...)`` arrays to an
  ``(n, ...)`` array. Chunks are read with ``dynamic_slice`` inside
  ``lax.map`` (no padded copy of the data); the remainder is one more call.
  Differentiable (``jax.checkpoint`` keeps the backward pass chunked too).
  """
  if n_samples <= chunk:
    return fn(*arrays)
  n_full = n_samples // chunk
  body = jax.checkpoint(fn)

  def one(i):
    start = i * chunk
    return body(*[lax.dynamic_slice_in_dim(a, start, chunk) for a in arrays])

  out = lax.map(one, jnp.arange(n_full))
  out = out.reshape((n_full * chunk,) + out.shape[2:])
  if n_full * chunk < n_samples:
    rest = fn(*[a[n_full * chunk:] for a in arrays])
    out = jnp.concatenate([out, rest], axis=0)
  return out


def whitened_maha(xc, mc, prec_chol):
  """``|y_ik|^2`` of the whitened differences ``y_ik = P_k^T (x_i - mu_k)``.

  Full covariances, ``(n, K)``. One GEMM ``(n, D) @ (D, D*K)`` on centred
  data, then the per-component offsets ``mu_k P_k`` subtracted: the
  differences are formed in the (linear) whitened space, never through an
  expanded quadratic form, so float32 keeps its digits when components are
  narrow and far apart. The GEMM's columns are ordered (feature, component):
  the ``(n, D, K)`` result has K on its minor axis, so the sum over D adds
  contiguous ``(n, K)`` slabs, which measured 20% faster than reducing a
  minor D axis (100,000 x 16, K=16 float32: 17 against 22 ms per pass).
  """
  k, d, _ = prec_chol.shape
  p_flat = jnp.transpose(prec_chol, (1, 2, 0)).reshape(d, d * k)
  offset = mm.einsum("kd,kde->ek", mc, prec_chol)
  y = mm.matmul(xc, p_flat).reshape(xc.shape[0], d, k) - offset[None]
  return jnp.sum(y * y, axis=1)


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


def expanded_full_maha(feats, mc, prec_chol):
  """Squared Mahalanobis distances ``(n, K)`` from ``moment_features`` (full).

  ``feats = [x, packed(x x^T)]`` of centred samples; the coefficients are
  ``-2 Lambda_k mu_k`` and the packed precision (off-diagonal terms twice).
  """
  d = mc.shape[-1]
  iu, ju, mult, _ = _packed_index(d)
  prec = mm.matmul(prec_chol, jnp.swapaxes(prec_chol, -1, -2))  # no inverse
  lin = -2.0 * mm.einsum("kde,ke->kd", prec, mc)
  quad = prec[:, iu, ju] * jnp.asarray(mult, prec.dtype)
  coef = jnp.concatenate([lin, quad], axis=1)  # (K, n_moment_features)
  const = jnp.sum(mc * mm.einsum("kde,ke->kd", prec, mc), axis=1)
  return jnp.maximum(mm.matmul(feats, coef.T) + const[None, :], 0.0)


def mahalanobis_centred(xc, mc, prec_chol, covariance_type: str):
  """Squared Mahalanobis distances ``(n, K)`` of centred samples, one chunk.

  ``xc`` and ``mc`` are samples and means translated by the same shift.
  Full: whitened differences (a GEMM, stable). Tied, diag, spherical:
  expanded quadratic forms ``|a|^2 - 2 a.b + |b|^2`` as single GEMMs with
  ``K`` columns; their rounding error is about ``eps`` times the squared
  whitened distance of the shift to the samples and means, which centring
  keeps small, and negative round-offs are clamped to zero.
  """
  if covariance_type == "full":
    if use_expanded_full(xc.dtype):
      feats = moment_features(xc, "full")
      return expanded_full_maha(feats, mc, prec_chol)
    return whitened_maha(xc, mc, prec_chol)
  if covariance_type == "tied":
    y = mm.matmul(xc, prec_chol)
    m = mm.matmul(mc, prec_chol)
    out = (jnp.sum(y * y, axis=1)[:, None] - 2.0 * mm.matmul(y, m.T)
           + jnp.sum(m * m, axis=1)[None, :])
    return jnp.maximum(out, 0.0)
  if covariance_type == "diag":
    prec = prec_chol * prec_chol
    # [x^2, x] @ [prec; -2 mu prec]^T: one GEMM with 2D inner dimension.
    feats = jnp.concatenate([xc * xc, xc], axis=1)
    coef = jnp.concatenate([prec, -2.0 * mc * prec], axis=1)
    out = mm.matmul(feats, coef.T) + jnp.sum(mc * mc * prec, axis=1)[None, :]
    return jnp.maximum(out, 0.0)
  # spherical
  prec = prec_chol * prec_chol
  out = (jnp.sum(xc * xc, axis=1)[:, None] - 2.0 * mm.matmul(xc, mc.T)
         + jnp.sum(mc * mc, axis=1)[None, :]) * prec[None, :]
  return jnp.maximum(out, 0.0)


# Relative rounding error tolerated from the fast (GEMM) forms, per dtype.
# Where a chunk's own error estimate exceeds it, the distances of the
# components at fault are recomputed from per-component differences, which
# carry no cancellation. float64 is
# held to near its own precision (EM stays monotone to ~1e-10), float32 to
# what its 24 bits can give on ordinary data without leaving the GEMMs.
FAST_FORM_TOL = {"float32": 1e-4, "float64": 1e-11}

# The same for the second moments moved from the chunk's centre to each
# component's mean (``stats._guarded_moments``), relative to the component's
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


@jax.custom_batching.custom_vmap
def any_in_batch(pred):
  """``pred`` itself; under ``vmap``, ``any(pred)`` over the batch, unbatched.

  Keeps a ``lax.cond`` on it a real branch under ``vmap`` (e.g. over
  restarts): if any member needs the exact form, all take it (it is exact
  for all), instead of every member computing both branches.
  """
  return pred


@any_in_batch.def_vmap
def _any_in_batch_rule(axis_size, in_batched, pred):
  del axis_size
  return (jnp.any(pred) if in_batched[0] else pred), False


# Order up to which tiny-D kernels unroll their products over D instead of
# calling XLA's dot (which runs K, or vmapped batch x K, D x D products one
# by one).
UNROLLED_MAX_ORDER = 4

# Reductions over an axis of at most this length are written as a sum of
# slices: XLA's CPU reduce over a tiny trailing axis (D = 2, K = 2) runs
# about 10x slower than the same elementwise adds, which matters when many
# small problems are vmapped.
SMALL_AXIS = 8


def sum_small(x, axis: int = -1):
  """``jnp.sum(x, axis)``, unrolled over slices when the axis is short."""
  if x.shape[axis] > SMALL_AXIS:
    return jnp.sum(x, axis=axis)
  parts = jnp.moveaxis(x, axis, 0)
  total = parts[0]
  for part in parts[1:]:
    total = total + part
  return total


def logsumexp_small(x, axis: int = -1):
  """``jax.nn.logsumexp(x, axis)``, unrolled when the axis is short."""
  if x.shape[axis] > SMALL_AXIS:
    return jax.nn.logsumexp(x, axis=axis)
  parts = jnp.moveaxis(x, axis, 0)
  top = parts[0]
  for part in parts[1:]:
    top = jnp.maximum(top, part)
  top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  return top + jnp.log(sum_small(jnp.exp(parts - top), axis=0))


def direct_mahalanobis(xb, means, prec_chol, covariance_type: str):
  """Squared Mahalanobis distances from per-component differences ``x - mu_k``.

  ``(n, K, D)`` work with no cancellation whatever the data's offset or the
  components' spread; slower than the GEMM forms, so used where those lose
  digits.
  """
  diff = xb[:, None, :] - means[None, :, :]
  d = means.shape[-1]
  if covariance_type in ("full", "tied") and d <= UNROLLED_MAX_ORDER:
    # Tiny D: y_e = sum_d diff_d P_de unrolled, not K (or, vmapped,
    # batch x K) GEMMs of inner dimension D, which XLA's CPU dot runs one by
    # one.
    out = 0.0
    for e in range(d):
      y = sum_small(diff * prec_chol[..., :, e], axis=-1)
      out = out + y * y
    return out
  if covariance_type == "full":
    y = mm.einsum("nkd,kde->nke", diff, prec_chol)
  elif covariance_type == "tied":
    y = mm.matmul(diff, prec_chol)
  elif covariance_type == "diag":
    y = diff * prec_chol[None, :, :]
  else:
    y = diff * prec_chol[None, :, None]
  return sum_small(y * y, axis=-1)


def _fast_form_error(xc, mc, prec_chol, covariance_type: str, maha):
  """Rounding-error estimate ``(n, K)`` of :func:`mahalanobis_centred`.

  The expanded forms ``|a|^2 - 2 a.b + |b|^2`` lose about ``eps`` times
  their largest term; the whitened difference (full, float32) loses ``eps``
  times its terms' norms, times ``2 |y|``.
  """
  eps = jnp.finfo(xc.dtype).eps
  x2 = jnp.sum(xc * xc, axis=1)[:, None]
  if covariance_type == "full":
    pf2 = jnp.sum(prec_chol * prec_chol, axis=(1, 2))[None, :]  # |P_k|_F^2
    m2 = jnp.sum(mm.einsum("kd,kde->ke", mc, prec_chol) ** 2, axis=1)
    if use_expanded_full(xc.dtype):
      return 4.0 * eps * (x2 * pf2 + m2[None, :])
    return 2.0 * eps * jnp.sqrt(maha) * (jnp.sqrt(x2 * pf2)
                                         + jnp.sqrt(m2)[None, :])
  if covariance_type == "tied":
    y = mm.matmul(xc, prec_chol)
    m = mm.matmul(mc, prec_chol)
    return 4.0 * eps * (jnp.sum(y * y, axis=1)[:, None]
                        + jnp.sum(m * m, axis=1)[None, :])
  prec = prec_chol * prec_chol
  if covariance_type == "diag":
    return 4.0 * eps * (mm.matmul(xc * xc, prec.T)
                        + jnp.sum(mc * mc * prec, axis=1)[None, :])
  return 4.0 * eps * (x2 + jnp.sum(mc * mc, axis=1)[None, :]) * prec[None, :]


def _fast_form_bound(xc, mc, prec_chol, covariance_type: str):
  """Upper bound ``(K,)`` of ``error / max(maha, 1)`` over a chunk's samples.

  :func:`_fast_form_error` is ``eps`` times ``A_ik + B_k`` (or, whitened,
  ``sqrt(maha_ik)`` times ``sqrt(A_ik) + sqrt(B_k)``) with ``A`` growing with
  the sample's norm; bounding ``A_ik`` by the chunk's largest norm and
  ``maha / max(maha, 1)`` (or ``sqrt(maha) / max(maha, 1)``) by 1 needs only
  ``O(n D)`` work. Where the bound is within the tolerance, so is every
  entry, and the ``(n, K)`` estimate is not computed (ordinary float32 data:
  workloads 2 and 3 of the benchmarks).
  """
  eps = jnp.finfo(xc.dtype).eps
  x2 = jnp.max(jnp.sum(xc * xc, axis=1))
  if covariance_type == "full":
    pf2 = jnp.sum(prec_chol * prec_chol, axis=(1, 2))
    m2 = jnp.sum(mm.einsum("kd,kde->ke", mc, prec_chol) ** 2, axis=1)
    if use_expanded_full(xc.dtype):
      return 4.0 * eps * (x2 * pf2 + m2)
    return 2.0 * eps * (jnp.sqrt(x2 * pf2) + jnp.sqrt(m2))
  if covariance_type == "tied":
    # |x P| <= |x| |P|_F.
    m = mm.matmul(mc, prec_chol)
    return 4.0 * eps * (x2 * jnp.sum(prec_chol * prec_chol)
                        + jnp.sum(m * m, axis=1))
  prec = prec_chol * prec_chol
  if covariance_type == "diag":
    top = jnp.max(xc * xc, axis=0)  # (D,)
    return 4.0 * eps * (mm.matmul(prec, top) + jnp.sum(mc * mc * prec, 1))
  return 4.0 * eps * (x2 + jnp.sum(mc * mc, axis=1)) * prec


# Chunks with at most this many ``(n, K, D)`` difference entries skip the
# fast forms and their guard: the exact per-component forms cost no more at
# that size (a GEMM with inner dimension 2 or 3 gains nothing), and one branch
# compiles in about half the time of two (tutorial-sized fits, vmapped small
# problems, the test suite).
DIRECT_MAX_ENTRIES = 1 << 16


def use_direct(n: int, n_components: int, n_features: int) -> bool:
  """Whether an ``(n, D)`` chunk is small enough for the exact forms alone."""
  return n * n_components * n_features <= DIRECT_MAX_ENTRIES


def guarded_mahalanobis(xb, centre, means, prec_chol, covariance_type: str):
  """Fast GEMM distances of one chunk, recomputed exactly where they are not.

  The fast forms work on samples and means translated by ``centre``; their
  error grows with the squared (whitened) distance of the data from it. The
  components with any distance that matters off (``error > FAST_FORM_TOL *
  max(maha, 1)``, estimated per entry where a chunk-wide bound,
  :func:`_fast_form_bound`, does not already rule it out) get their column
  recomputed by
  :func:`direct_mahalanobis` (:func:`_exact_columns`). Ordinary data never
  take that branch; a narrow component far from the rest (a collapsed one
  on an outlier) does, in float32 and float64 alike. Chunks of at most
  ``DIRECT_MAX_ENTRIES`` differences use the exact form only
  (:func:`use_direct`).
  """
  k, d = means.shape
  if use_direct(xb.shape[0], k, d):
    return direct_mahalanobis(xb, means, prec_chol, covariance_type)
  xc = xb - centre
  mc = means - centre
  maha = mahalanobis_centred(xc, mc, prec_chol, covariance_type)
  maha_sg = lax.stop_gradient(maha)
  tol = fast_form_tol(xb.dtype)
  xc_sg, mc_sg, pc_sg = (lax.stop_gradient(a) for a in (xc, mc, prec_chol))

  def entrywise():
    err = _fast_form_error(xc_sg, mc_sg, pc_sg, covariance_type, maha_sg)
    return jnp.any(err > tol * jnp.maximum(maha_sg, 1.0), axis=0)  # (K,)

  # The (n, K) estimate only where the chunk-wide bound does not settle it.
  bound = _fast_form_bound(xc_sg, mc_sg, pc_sg, covariance_type)
  redo = lax.cond(any_in_batch(jnp.any(bound > tol)), entrywise,
                  lambda: jnp.zeros((k,), bool))
  return lax.cond(
      any_in_batch(jnp.any(redo)),
      lambda: _exact_columns(xb, means, prec_chol, covariance_type, maha,
                             redo),
      lambda: maha)


def _exact_columns(xb, means, prec_chol, covariance_type: str, maha, redo):
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
  n = xb.shape[0]

  def column(k):
    def exact():
      mean = lax.dynamic_slice_in_dim(means, k, 1)
      prec = (prec_chol if covariance_type == "tied"
              else lax.dynamic_slice_in_dim(prec_chol, k, 1))
      return direct_mahalanobis(xb, mean, prec, covariance_type)[:, 0]
    return lax.cond(any_in_batch(redo[k]), exact,
                    lambda: jnp.zeros((n,), maha.dtype))

  cols = lax.map(jax.checkpoint(column), jnp.arange(means.shape[0]))
  return jnp.where(redo[None, :], cols.T.astype(maha.dtype), maha)


def mahalanobis(X, means, prec_chol, covariance_type: str):
  """Squared Mahalanobis distances ``(N, K)`` of samples to every component.

  Data and means are first translated by the (gradient-stopped) average of
  the means. The distances are invariant to that translation, and it keeps
  float32 from losing digits on data far from the origin. Samples are
  processed in chunks (:func:`chunk_size`) so the ``(N, K, D)``
  intermediate of full covariances is never materialised.
  """
  shift = lax.stop_gradient(jnp.mean(means, axis=0))
  n, d = X.shape
  chunk = chunk_size(n, means.shape[0], d, covariance_type, X.dtype)
  return map_chunks(
      lambda xb: guarded_mahalanobis(xb, shift, means, prec_chol,
                                     covariance_type), n, chunk, X)


def log_gaussian_prob(X, means, prec_chol, covariance_type: str):
  """``log N(x_i | mu_k, Sigma_k)`` for every sample and component, ``(N, K)``."""
  n_features = means.shape[-1]
  maha = mahalanobis(X, means, prec_chol, covariance_type)
  log_det = log_det_cholesky(prec_chol, covariance_type, n_features)
  return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det


def estimate_covariances(nk, diff, sxx, covariance_type: str, reg_covar):
  """Covariances from shifted sufficient statistics (the M-step's core).

  Args:
    nk: ``(K,)`` floored component masses.
    diff: ``(K, D)`` new means minus the shift ``c``.
    sxx: shifted second moments: full ``(K, D, D)`` ``sum_i r_ik (x_i - c)
      (x_i - c)^T``; tied ``(D, D)`` the same summed over components; diag
      ``(K, D)`` the diagonal; spherical ``(K,)`` the trace.
    covariance_type: the type.
    reg_covar: non-negative regulariser added to the diagonal.

  Returns:
    Covariances in scikit-learn's shape.
  """
  dtype = diff.dtype
  reg = jnp.asarray(reg_covar, dtype)
  if covariance_type == "full":
    cov = sxx / nk[:, None, None] - diff[:, :, None] * diff[:, None, :]
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    return cov + reg * jnp.eye(diff.shape[-1], dtype=dtype)
  if covariance_type == "tied":
    between = mm.einsum("k,kd,ke->de", nk, diff, diff)
    cov = (sxx - between) / jnp.sum(nk)
    cov = 0.5 * (cov + cov.T)
    return cov + reg * jnp.eye(diff.shape[-1], dtype=dtype)
  if covariance_type == "diag":
    var = sxx / nk[:, None] - diff * diff
    return jnp.maximum(var, 0.0) + reg
  var = (sxx / nk - jnp.sum(diff * diff, axis=1)) / diff.shape[-1]
  return jnp.maximum(var, 0.0) + reg


def _packed_index(n_features: int):
  """Index pairs of the packed second-moment columns and the map back.

  The packing is by wrapped diagonals: column ``s * D + i`` holds
  ``x_i * x_((i + s) mod D)`` for ``s = 0 .. D // 2``. For odd ``D`` every
  unordered pair appears once (``D (D + 1) / 2`` columns); for even ``D``
  the last diagonal holds each of its ``D / 2`` pairs twice, and the second
  copy gets multiplicity 0.

  Returns:
    ``(iu, ju, mult, back)``: the pair of each column, how many times the
    column counts in a symmetric quadratic form (1 diagonal, 2 off-diagonal,
    0 duplicate), and the ``(D, D)`` column of each matrix entry.
  """
  d = n_features
  shifts = np.arange(d // 2 + 1)[:, None]
  rows = np.arange(d)[None, :]
  iu = np.broadcast_to(rows, (shifts.size, d)).ravel()
  ju = ((rows + shifts) % d).ravel()
  mult = np.where(iu == ju, 1.0, 2.0)
  if d % 2 == 0 and d > 0:
    mult[(d // 2) * d + d // 2:] = 0.0  # pairs (i, i + D/2), i >= D/2: copies
  keep = mult > 0
  cols = np.arange(iu.size)
  back = np.zeros((d, d), np.int32)
  back[iu[keep], ju[keep]] = cols[keep]
  back[ju[keep], iu[keep]] = cols[keep]
  return iu, ju, mult, back


def n_moment_features(n_features: int) -> int:
  """Width of :func:`moment_features` for full covariances."""
  return n_features * (n_features // 2 + 2)


def _diagonal_windows(xc, with_ones: bool):
  """``(n, S, D)`` factors whose product with ``xc`` is the packed outer.

  Window ``s`` is ``xc`` rotated left by ``s`` columns (a slice of
  ``[xc, xc]``); ``with_ones`` puts a window of ones first, so the product's
  first ``D`` columns are ``xc`` itself.
  """
  d = xc.shape[-1]
  x2 = jnp.concatenate([xc, xc], axis=1)
  windows = [x2[:, s:s + d] for s in range(d // 2 + 1)]
  if with_ones:
    windows.insert(0, jnp.ones_like(xc))
  return jnp.stack(windows, axis=1)


def _packed_outer(xc):
  """Products ``x_i x_j`` of each row, packed as :func:`_packed_index` says.

  One broadcast product of ``D // 2 + 1`` rotated copies of the rows with
  the rows: uniform slabs that XLA fuses into one loop. The earlier packing
  (row ``i`` of the upper triangle, ``x_i * x[i:]``, concatenated) made
  ``D`` slices of different widths and measured 1.3-1.5x slower for the
  moment GEMM with its features (65,536 x 32, K=64 float32: 62-82 against
  91-108 ms per pass).
  """
  n, d = xc.shape
  return (_diagonal_windows(xc, False) * xc[:, None, :]).reshape(n, -1)


def moment_features(xc, covariance_type: str):
  """Per-sample features whose responsibility-weighted sums are ``sx, sxx``.

  ``[x, m(x)]`` with ``m(x)`` the packed products ``x_i x_j`` (full, see
  :func:`_packed_index`), ``x^2`` (diag) or ``|x|^2`` (spherical):
  ``rw^T @ features`` is then one GEMM giving both statistics, with half the
  flops of the ``(N, K*D)`` weighted-outer-product form for full
  covariances. Tied needs no per-component second moment and returns
  ``xc``.
  """
  if covariance_type == "full":
    n, d = xc.shape
    return (_diagonal_windows(xc, True) * xc[:, None, :]).reshape(n, -1)
  if covariance_type == "diag":
    return jnp.concatenate([xc, xc * xc], axis=1)
  if covariance_type == "spherical":
    return jnp.concatenate([xc, jnp.sum(xc * xc, axis=1, keepdims=True)],
                           axis=1)
  return xc


def split_moments(summed, n_features: int, covariance_type: str):
  """``(sx, sxx)`` from ``rw^T @ moment_features(...)`` (not tied)."""
  d = n_features
  sx = summed[:, :d]
  rest = summed[:, d:]
  if covariance_type == "full":
    _, _, _, back = _packed_index(d)
    return sx, rest[:, back]
  if covariance_type == "diag":
    return sx, rest
  return sx, rest[:, 0]


def second_moments(xc, rw, covariance_type: str):
  """Shifted second-moment statistic for ``estimate_covariances``.

  Args:
    xc: ``(N, D)`` shifted samples ``x_i - c``.
    rw: ``(N, K)`` responsibilities times sample weights.
    covariance_type: the type.
  """
  d = xc.shape[-1]
  if covariance_type == "full":
    _, _, _, back = _packed_index(d)
    # (K, N) @ (N, ~D(D+1)/2): one GEMM over the packed outer products.
    return mm.matmul(rw.T, _packed_outer(xc))[:, back]
  if covariance_type == "tied":
    return mm.matmul((xc * jnp.sum(rw, axis=1)[:, None]).T, xc)
  if covariance_type == "diag":
    return mm.matmul(rw.T, xc * xc)
  return mm.matmul(rw.T, jnp.sum(xc * xc, axis=1))


def sample_noise(key, prec_chol, covariances, labels, covariance_type: str,
                 n_features: int, dtype):
  """Zero-mean Gaussian draws with each sample's component covariance."""
  z = jax.random.normal(key, (labels.shape[0], n_features), dtype)
  if _is_matrix(covariance_type):
    chol = _covariance_factor(prec_chol)
    if covariance_type == "tied":
      return mm.matmul(z, chol.T)
    return mm.einsum("nde,ne->nd", chol[labels], z)
  if covariance_type == "diag":
    return z * jnp.sqrt(covariances)[labels]
  return z * jnp.sqrt(covariances)[labels][:, None]
