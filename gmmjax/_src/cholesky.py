"""Cholesky factors of covariance matrices, the jitter ladder, derivatives.

scikit-learn's convention: ``P = L^-T`` (upper triangular) with ``L`` the
lower Cholesky factor of ``Sigma``, so ``P P^T = Sigma^-1``. No covariance is
inverted explicitly. Factors that a fit already computed are reused with the
derivative of a fresh factorisation attached (:func:`cholesky_of`,
:func:`precision_cholesky_of`): refactorising a covariance repaired with a
jitter can fail by rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import matmul as mm
from gmmjax._src.reductions import any_in_batch


def eye_like(a):
  return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


# -- small matrices without LAPACK ---------------------------------------------
#
# On CPU, JAX lowers Cholesky factorisations and triangular solves to LAPACK
# calls, and the first one lowered in a process imports SciPy's LAPACK
# (jaxlib.lapack.prepare_lapack_call: 0.34 s on the project's 2-core
# machine), a cost every fresh process pays, compilation cache or not. Up to
# UNROLLED_MAX_DIM features the two are written out instead, one column at a
# time over the batch: the same arithmetic (Cholesky-Banachiewicz, forward
# and back substitution), a handful of element-wise operations, on every
# platform.
UNROLLED_MAX_DIM = 4


def cholesky(a):
  """Lower Cholesky factor of the symmetric ``(..., D, D)`` ``a``, as
  ``jnp.linalg.cholesky`` computes it: ``a`` symmetrised, and NaN (its
  lower triangle) where a pivot is not positive (the matrix is not positive definite)."""
  if a.shape[-1] > UNROLLED_MAX_DIM:
    return jnp.linalg.cholesky(a)
  return _unrolled_cholesky(a)


# A nested jit: traced once per shape, where differentiating or vmapping
# the operations one by one took a tenth of a second a call (profiled in
# a gradient through a fit).
@jax.jit
def _unrolled_cholesky(a):
  d = a.shape[-1]
  a = 0.5 * (a + jnp.swapaxes(a, -1, -2))
  zero = jnp.zeros(a.shape[:-2], a.dtype)
  low = [[zero] * d for _ in range(d)]
  pivots = []
  for j in range(d):
    pivot = a[..., j, j]
    for k in range(j):
      pivot = pivot - low[j][k] * low[j][k]
    pivots.append(pivot)
    diag = jnp.sqrt(jnp.maximum(pivot, 0))
    low[j][j] = diag
    for i in range(j + 1, d):
      entry = a[..., i, j]
      for k in range(j):
        entry = entry - low[i][k] * low[j][k]
      low[i][j] = entry / diag
  factor = jnp.stack([jnp.stack(row, axis=-1) for row in low], axis=-2)
  ok = jnp.all(jnp.stack(pivots, axis=-1) > 0, axis=-1)
  upper = np.triu(np.ones((d, d), bool), 1)  # zero either way, as JAX's
  return jnp.where(ok[..., None, None] | upper, factor, jnp.nan)


def triangular_solve(a, b, *, left_side: bool, lower: bool,
                     transpose_a: bool = False):
  """``lax.linalg.triangular_solve`` (``op(a) x = b`` or ``x op(a) = b``,
  ``op`` the transpose with ``transpose_a``), for real matrices."""
  if a.shape[-1] > UNROLLED_MAX_DIM:
    return lax.linalg.triangular_solve(a, b, left_side=left_side, lower=lower,
                                       transpose_a=transpose_a)
  return _unrolled_solve(a, b, left_side=left_side, lower=lower,
                         transpose_a=transpose_a)


@functools.partial(jax.jit,
                   static_argnames=("left_side", "lower", "transpose_a"))
def _unrolled_solve(a, b, *, left_side: bool, lower: bool,
                    transpose_a: bool):
  if not left_side:  # x op(a) = b  <=>  op(a)^T x^T = b^T
    return jnp.swapaxes(_unrolled_solve(
        a, jnp.swapaxes(b, -1, -2), left_side=True, lower=lower,
        transpose_a=not transpose_a), -1, -2)
  if transpose_a:
    a, lower = jnp.swapaxes(a, -1, -2), not lower
  d = a.shape[-1]
  rows = [None] * d
  order = range(d) if lower else range(d - 1, -1, -1)
  for i in order:
    row = b[..., i, :]
    for k in (range(i) if lower else range(i + 1, d)):
      row = row - a[..., i, k, None] * rows[k]
    rows[i] = row / a[..., i, i, None]
  return jnp.stack(rows, axis=-2)


def precision_from_chol(chol):
  """``P = L^-T`` from the lower factor ``L`` of the covariance."""
  inv_chol = triangular_solve(chol, eye_like(chol), left_side=True,
                              lower=True)
  return jnp.swapaxes(inv_chol, -1, -2)


# Diagonal jitters tried, in order, when a covariance's Cholesky factorisation
# fails: ``eps * 10**m`` times the mean of its diagonal, m = 0, 1, ..., 7
# (float32: 1.2e-7 up to 1.2 relative; float64: 2.2e-16 up to 2.2e-9).
JITTER_STEPS = 8


def chol_ok(chol):
  diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
  return jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & jnp.all(diag > 0, -1)


def cholesky_ok(cov):
  return chol_ok(cholesky(cov))


def _jitter_ladder(cov, ok):
  """Per matrix, the first ladder rung that factorises.

  Returns ``(jitter, factor)``: the rung (0 where ``ok``) and the Cholesky
  factor of ``cov + rung I`` (meaningful only where not ``ok``). The factor
  is the very one that passed the test: recomputing it from ``cov + jitter
  I`` elsewhere in a compiled program can round differently (other
  instructions, another batch layout) and fail on a rung that sits at the
  rounding level, which is where the smallest rung is meant to be. Not
  differentiated: the unused rungs' factors are NaN, and a zero cotangent
  times NaN is NaN (see :func:`cholesky_of`).
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
  chols = cholesky(trial)
  good = chol_ok(chols)  # (..., JITTER_STEPS)
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


def _given_factor(name: str, tangent, doc: str):
  """``f(cov, factor) = factor``, a factor of ``cov`` computed elsewhere,
  whose derivative in ``cov`` is ``tangent(factor, dcov)`` (``dcov``
  symmetrised, as ``jnp.linalg.cholesky`` reads it); ``factor`` itself is
  not differentiated."""

  def given(cov, factor):
    del cov
    return factor

  given.__name__ = given.__qualname__ = name
  given.__doc__ = doc
  f = jax.custom_jvp(given)

  @f.defjvp
  def _jvp(primals, tangents):
    cov, factor = primals
    # The factor through the function itself, so that differentiating the
    # tangent again (second derivatives) goes through this rule too.
    factor = f(cov, lax.stop_gradient(factor))
    return factor, tangent(factor, _symmetrised(tangents[0]))

  return f


def _cholesky_tangent(chol, dcov):
  """``dL = L Phi(L^-1 dC L^-T)``."""
  tmp = triangular_solve(chol, dcov, left_side=True, lower=True)
  x = triangular_solve(chol, tmp, left_side=False, lower=True,
                       transpose_a=True)
  return mm.matmul(chol, _phi(x))


def _precision_cholesky_tangent(prec, dcov):
  """``dP = -P Phi(P^T dC P)^T`` (``P = L^-T``), products only."""
  inner = mm.matmul(jnp.swapaxes(prec, -1, -2), mm.matmul(dcov, prec))
  return -mm.matmul(prec, jnp.swapaxes(_phi(inner), -1, -2))


def _phi(x):
  """Lower triangle of ``x`` with its diagonal halved."""
  return jnp.tril(x, -1) + 0.5 * jnp.diagonal(
      x, axis1=-2, axis2=-1)[..., None] * eye_like(x)


cholesky_of = _given_factor("cholesky_of", _cholesky_tangent, """
``chol``, a Cholesky factor of ``cov`` computed elsewhere, with the
derivative of ``cholesky(cov)``: ``dL = L Phi(L^-1 dC L^-T)``, ``Phi`` the
lower triangle with the diagonal halved (``dC`` symmetrised, as
``jnp.linalg.cholesky`` does). ``chol`` itself is not differentiated.""")

precision_cholesky_of = _given_factor(
    "precision_cholesky_of", _precision_cholesky_tangent, """
``prec_chol``, the precision factor of ``cov`` (full/tied) known from
elsewhere (a fit's result), with the derivative of
``precision_cholesky(cov)``: from ``dL = L Phi(L^-1 dC L^-T)`` and
``P = L^-T``, ``dP = -P Phi(P^T dC P)^T``, products only. Refactorising a
covariance that a fit repaired with a jitter can fail by rounding; this
never factorises. ``prec_chol`` itself is not differentiated.""")


def covariance_cholesky_given(covariances, precisions_cholesky):
  """The lower Cholesky factor of ``covariances`` (full/tied), taken from
  their precision factors (``P^-T``, :func:`covariance_factor`) with the
  derivative of ``jnp.linalg.cholesky(covariances)``: no factorisation,
  which a covariance repaired with a jitter can fail by rounding."""
  factor = lax.stop_gradient(covariance_factor(precisions_cholesky))
  return cholesky_of(covariances, factor)


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
  return _jitter_ladder(cov, cholesky_ok(cov))[0]


def jittered_factors(covariances):
  """Precision factors of full/tied covariances with a reported jitter.

  Covariances whose factorisation fails (not positive definite up to
  rounding) get the smallest diagonal jitter of :func:`cholesky_jitter`
  added. The common case costs one factorisation: the ladder runs in a
  branch taken only when some matrix fails.

  Returns:
    ``(covariances, precisions_cholesky, jitter)``: the covariances actually
    factorised (jitter included, so the two stay consistent) and the largest
    jitter added (a scalar, 0 when none was needed).
  """
  # The factors and jitters are computed as constants, in a branch that
  # differentiation never enters, and the derivative is attached outside it
  # from the factor used (cholesky_of): a failed factor is NaN, and reverse
  # mode through any computation of it (a zero cotangent times NaN) would
  # make every gradient NaN, though the branch taken never uses it. A
  # derivative that needs only the covariances (implicit differentiation's
  # EM step) drops the factor's rule whole, and nothing linearises the
  # branch: a third less to trace and compile in a gradient through a fit.
  constant = lax.stop_gradient(covariances)
  chol = cholesky(constant)
  ok = chol_ok(chol)

  def repair():
    jitter, trial_chol = _jitter_ladder(constant, ok)
    return jnp.where(ok[..., None, None], chol, trial_chol), jitter

  def keep():
    return chol, jnp.zeros(ok.shape, constant.dtype)

  factor, jitter = lax.cond(any_in_batch(~jnp.all(ok)), repair, keep)
  repaired = covariances + jitter[..., None, None] * eye_like(covariances)
  return (repaired, precision_from_chol(cholesky_of(repaired, factor)),
          jnp.max(jitter))


def covariance_factor(prec_chol):
  """Lower Cholesky factor ``P^-T`` of the covariance (full/tied): the
  precision factor ``P`` is upper triangular, so ``Sigma = (P P^T)^-1 =
  P^-T P^-1``. Taken from ``P``, not by refactorising ``Sigma``, which a
  covariance repaired with a jitter can fail by rounding."""
  inv = triangular_solve(prec_chol, eye_like(prec_chol), left_side=True,
                         lower=False)
  return jnp.swapaxes(inv, -1, -2)

