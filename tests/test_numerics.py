"""float32 on hard data: the fit must agree with float64, not go silently wrong.

A tight cluster far from the others is the case where second moments summed
around one global shift cancel catastrophically in float32 (the variance is
a small difference of two large numbers). gmmjax centres every component on
its own mean, so float32 must track float64.
"""

import jax
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import cholesky
from gmmjax._src import covariance as cov_ops

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _fit(X, cov_type, dtype):
  X = X.astype(dtype)
  p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type=cov_type,
                      method="kmeans")
  return gx.fit(X, p0, max_iter=100, tol=1e-6)


def _tight_far_cluster():
  rng = np.random.default_rng(0)
  return np.concatenate([rng.normal(0, 1, (200, 2)),
                         1000 + rng.normal(0, 0.01, (100, 2))])


def _offset(X, offset=0.0, scale=1.0):
  return X * scale + offset


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("case", ["tight_far", "offset_1e6", "scale_1e-6",
                                  "scale_1e6"])
def test_float32_agrees_with_float64(cov_type, case):
  rng = np.random.default_rng(1)
  base = np.concatenate([rng.normal(0, 1, (150, 2)),
                         rng.normal(6, 1.5, (150, 2))])
  X = {"tight_far": _tight_far_cluster(),
       "offset_1e6": _offset(base, offset=1e6),
       "scale_1e-6": _offset(base, scale=1e-6),
       "scale_1e6": _offset(base, scale=1e6)}[case]
  r32 = _fit(X, cov_type, np.float32)
  with jax.enable_x64(True):
    r64 = _fit(X, cov_type, np.float64)
  assert not bool(r32.failed)
  for leaf in jax.tree.leaves(r32.params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  ll32, ll64 = float(r32.log_likelihood), float(r64.log_likelihood)
  assert abs(ll32 - ll64) <= 1e-3 * abs(ll64) + 1e-3, (ll32, ll64)


# -- the Cholesky jitter fallback and the degeneracy count -------------------


def _spd(rng, d, scale=10.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + np.eye(d))


def test_cholesky_jitter_is_zero_on_positive_definite_matrices():
  rng = np.random.default_rng(0)
  cov = np.stack([_spd(rng, 4) for _ in range(3)]).astype(np.float32)
  assert np.all(np.asarray(gx.cholesky_jitter(cov)) == 0.0)
  out, prec, jitter = cov_ops.precision_cholesky_jittered(cov, "full")
  np.testing.assert_array_equal(np.asarray(out), cov)
  assert float(jitter) == 0.0


def test_cholesky_jitter_takes_the_first_step_that_factorises():
  # Component 0 is singular (rank 1, scale ~10): float32 cannot factorise
  # it. Component 1 is well conditioned and must keep a zero jitter.
  rng = np.random.default_rng(1)
  v = rng.normal(size=(4, 1)) * 3.0
  cov = np.stack([v @ v.T, _spd(rng, 4)]).astype(np.float32)
  assert not bool(cholesky.cholesky_ok(cov)[0])
  jitter = np.asarray(gx.cholesky_jitter(cov))
  assert jitter[1] == 0.0 and jitter[0] > 0.0
  eps = np.finfo(np.float32).eps
  scale = np.mean(np.diag(cov[0]))
  steps = jitter[0] / (eps * scale)
  m = int(round(np.log10(steps)))
  np.testing.assert_allclose(steps, 10.0 ** m, rtol=1e-5)
  eye = np.eye(4, dtype=np.float32)
  assert bool(cholesky.cholesky_ok(cov[0] + jitter[0] * eye))
  if m > 0:  # the step before did not factorise
    assert not bool(cholesky.cholesky_ok(cov[0] + jitter[0] / 10 * eye))
  # precision_cholesky_jittered returns the covariance it factorised.
  out, prec, top = cov_ops.precision_cholesky_jittered(cov, "full")
  np.testing.assert_allclose(np.asarray(out)[0], cov[0] + jitter[0] * eye)
  np.testing.assert_array_equal(np.asarray(out)[1], cov[1])
  assert float(top) == jitter[0]
  assert np.all(np.isfinite(np.asarray(prec)))


@pytest.mark.parametrize("ctype", ["full", "tied"])
def test_gradients_through_a_jittered_factorisation(x64, ctype):
  """Reverse and forward mode through precision_cholesky_jittered where a
  matrix needs a jitter of a few ladder rungs equal those of the plain
  factorisation of ``cov + jitter I`` (the jitter a constant), in float64,
  and agree with central finite differences. The ladder's unused rungs
  have NaN factors, which must not leak into the gradient."""
  rng = np.random.default_rng(3)
  v = rng.normal(size=(4, 2))
  # Rank 2, indefinite by 1e-9: the last rung (10**7 eps * scale, 8.6e-9)
  # factorises with a margin that finite differences can resolve.
  bad = v @ v.T - 1e-9 * np.eye(4)
  cov = bad if ctype == "tied" else np.stack([bad, _spd(rng, 4)])
  jitter = np.asarray(gx.cholesky_jitter(cov))
  # At least the second rung: the first one's factor is NaN.
  assert np.max(jitter) > 5 * np.finfo(np.float64).eps * np.trace(bad) / 4
  weights = jax.numpy.asarray(rng.normal(size=cov.shape))

  def objective(c):
    _, prec, _ = cov_ops.precision_cholesky_jittered(c, ctype)
    return jax.numpy.sum(weights * prec) * 1e-6

  def plain(c):
    eye = np.eye(4)
    shift = jitter[..., None, None] * eye if ctype == "full" else jitter * eye
    return jax.numpy.sum(weights * cov_ops.precision_cholesky(
        c + shift, ctype)) * 1e-6

  g = np.asarray(jax.grad(objective)(cov))
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, np.asarray(jax.grad(plain)(cov)), rtol=1e-6,
                             atol=1e-12 * np.abs(g).max())
  t = rng.normal(size=cov.shape)
  t = 0.5 * (t + np.swapaxes(t, -1, -2))
  _, jvp = jax.jvp(objective, (cov,), (t,))
  h = 1e-3 * np.min(jitter[jitter > 0])
  fd = (objective(cov + h * t) - objective(cov - h * t)) / (2 * h)
  np.testing.assert_allclose(float(jvp), float(fd), rtol=1e-4)
  np.testing.assert_allclose(float(jvp), float(np.sum(g * t)), rtol=1e-8)
  # Second order (a Hessian-vector product) through the repair branch: its
  # factor carries the factorisation's derivative (_cholesky_of) to second
  # order too, like the plain factorisation of the repaired matrix.
  hv = np.asarray(jax.jvp(jax.grad(objective), (cov,), (t,))[1])
  hv_ref = np.asarray(jax.jvp(jax.grad(plain), (cov,), (t,))[1])
  assert np.all(np.isfinite(hv)) and np.abs(hv_ref).max() > 0
  np.testing.assert_allclose(hv, hv_ref, rtol=1e-6,
                             atol=1e-12 * np.abs(hv_ref).max())


@pytest.mark.parametrize("ctype", ["full", "tied"])
def test_given_precision_factor_has_the_factorisations_derivative(x64,
                                                                 ctype):
  """precision_cholesky_given returns the factor it is given and the
  tangent of precision_cholesky (float64, to 1e-10), also where refactorising
  the covariance fails: a covariance singular by rounding whose factor is
  known (a fit's jittered result) gets that factor and a finite tangent,
  the derivative at the repaired matrix."""
  rng = np.random.default_rng(5)
  cov = _spd(rng, 4) if ctype == "tied" else np.stack(
      [_spd(rng, 4), _spd(rng, 4)])
  t = rng.normal(size=cov.shape)
  t = 0.5 * (t + np.swapaxes(t, -1, -2))

  def tangents(at, factor, ref_at):
    """(value, tangent) given ``factor`` at ``at``; precision_cholesky's
    tangent at ``ref_at``."""
    out, dout = jax.jvp(
        lambda c: cov_ops.precision_cholesky_given(c, factor, ctype), (at,),
        (t,))
    _, dref = jax.jvp(lambda c: cov_ops.precision_cholesky(c, ctype),
                      (ref_at,), (t,))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(factor))
    return np.asarray(dout), np.asarray(dref)

  prec = cov_ops.precision_cholesky(cov, ctype)
  dout, dref = tangents(cov, prec, cov)
  np.testing.assert_allclose(dout, dref, rtol=1e-10, atol=1e-12)
  # Second order (a Hessian-vector product) too, for this factor and for
  # the covariance factor of precision_cholesky_jittered (_cholesky_of).
  w = rng.normal(size=cov.shape)

  def hvp(fun):
    scalar = lambda c: jax.numpy.sum(w * fun(c))  # noqa: E731
    return np.asarray(jax.jvp(jax.grad(scalar), (cov,), (t,))[1])

  ref2 = hvp(lambda c: cov_ops.precision_cholesky(c, ctype))
  assert np.abs(ref2).max() > 0
  for fun in (lambda c: cov_ops.precision_cholesky_given(c, prec, ctype),
              lambda c: cov_ops.precision_cholesky_jittered(c, ctype)[1]):
    np.testing.assert_allclose(hvp(fun), ref2, rtol=1e-9,
                               atol=1e-12 * np.abs(ref2).max())
  # Rank 2, indefinite by 1e-10 (full: beside a good matrix): no factor,
  # but the repaired matrix's one is known.
  v = rng.normal(size=(4, 2))
  bad = v @ v.T - 1e-10 * np.eye(4)
  if ctype == "full":
    bad = np.stack([bad, cov[1]])
  assert not np.all(np.isfinite(np.asarray(
      cov_ops.precision_cholesky(bad, ctype))))
  repaired = bad + 1e-8 * np.eye(4)
  known = cov_ops.precision_cholesky(repaired, ctype)
  dout, dref = tangents(bad, known, repaired)
  assert np.all(np.isfinite(dout))
  np.testing.assert_allclose(dout, dref, rtol=1e-8,
                             atol=1e-12 * np.abs(dref).max())


def test_cholesky_jitter_gives_up_on_a_zero_matrix():
  # No relative jitter can factorise a zero covariance (a component on one
  # point with reg_covar=0): the factor stays non-finite, and fit reports it
  # as failed (tests/test_hard_cases.py::test_reg_covar_zero_collapse_*).
  cov = np.zeros((2, 3, 3), np.float32)
  cov[1] = np.eye(3)
  _, prec, _ = cov_ops.precision_cholesky_jittered(cov, "full")
  prec = np.asarray(prec)
  assert not np.all(np.isfinite(prec[0])) and np.all(np.isfinite(prec[1]))


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_count_degenerate_against_numpy(ctype, x64):
  # float64: float32 eigenvalues of 1.5 and 3 reg err by up to ~7e-7 (n eps
  # |A|, LAPACK's kernels differ by CPU), too close to the 2 reg threshold.
  reg, n, d = 1e-6, 100, 3
  rng = np.random.default_rng(2)
  weights = np.array([0.5, 0.3, 0.2 - 1e-3, 1e-3])  # component 3: 0.1 sample
  means = rng.normal(size=(4, d))
  # Component 1: one direction of variance 1.5 reg (collapsed); component
  # 2: 3 reg (not collapsed).
  q = np.linalg.qr(rng.normal(size=(d, d)))[0]
  full = np.stack([
      _spd(rng, d),
      q @ np.diag([1.5 * reg, 1.0, 2.0]) @ q.T,
      q @ np.diag([3.0 * reg, 1.0, 2.0]) @ q.T,
      _spd(rng, d)])
  cov = {"full": full, "tied": full[1],
         "diag": np.stack([np.diagonal(c) for c in full]),
         "spherical": np.array([1.0, 1.5 * reg, 3.0 * reg, 1.0])}[ctype]
  if ctype == "diag":
    cov[1] = [1.0, 1.5 * reg, 2.0]
    cov[2] = [1.0, 3.0 * reg, 2.0]
  p = gx.make_params(weights, means, cov, covariance_type=ctype)
  if ctype == "tied":
    smallest = np.full(4, np.linalg.eigvalsh(cov).min())
  elif ctype == "full":
    smallest = np.linalg.eigvalsh(cov).min(axis=1)
  else:
    smallest = cov.min(axis=1) if ctype == "diag" else cov
  expected = np.sum((weights * n < 1) | (smallest <= 2 * reg))
  got = int(gx.count_degenerate(p, n, reg_covar=reg))
  assert got == expected
  assert got == {"full": 2, "tied": 4, "diag": 2, "spherical": 2}[ctype]


@pytest.mark.parametrize("d", [1, 2, 3, cholesky.UNROLLED_MAX_DIM,
                               cholesky.UNROLLED_MAX_DIM + 1])
def test_small_factorisations_match_lapacks(d, x64):
  """Up to UNROLLED_MAX_DIM features the Cholesky factor and triangular
  solves are written out (no LAPACK, no SciPy import on CPU): the same
  values as JAX's LAPACK-backed functions, the same NaN pattern for a
  matrix that is not positive definite (a zero or a negative pivot), the
  same derivatives; one dimension above, JAX's own functions."""
  del x64
  import jax.numpy as jnp
  from jax import lax
  rng = np.random.default_rng(d)
  a = rng.normal(size=(4, 3, d, d))
  spd = a @ np.swapaxes(a, -1, -2) + 0.1 * np.eye(d)
  bad = spd.copy()
  bad[0, 0] = -np.eye(d)
  bad[1, 1, -1, -1] = 0.0 if d == 1 else bad[1, 1, -1, -1] - 1e3
  lopsided = spd.copy()
  lopsided[..., 0, -1] += 0.3  # read symmetrised, as jnp.linalg.cholesky
  for m in (spd, bad, lopsided):
    ref = np.asarray(jnp.linalg.cholesky(m))
    got = np.asarray(cholesky.cholesky(jnp.asarray(m)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = ~np.isnan(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-12,
                               atol=1e-12)
  assert np.isnan(np.asarray(cholesky.cholesky(jnp.asarray(bad)))[0, 0]).any()
  low = np.linalg.cholesky(spd)
  b = rng.normal(size=low.shape)
  for left in (True, False):
    for lower in (True, False):
      for transpose in (True, False):
        tri = low if lower else np.swapaxes(low, -1, -2)
        kw = dict(left_side=left, lower=lower, transpose_a=transpose)
        np.testing.assert_allclose(
            cholesky.triangular_solve(jnp.asarray(tri), jnp.asarray(b), **kw),
            lax.linalg.triangular_solve(tri, b, **kw), rtol=1e-10,
            atol=1e-12)

  def ours(m):
    return jnp.sum(jnp.sin(cholesky.precision_from_chol(cholesky.cholesky(m))))

  def jaxs(m):
    inv = lax.linalg.triangular_solve(jnp.linalg.cholesky(m),
                                      cholesky.eye_like(m), left_side=True,
                                      lower=True)
    return jnp.sum(jnp.sin(jnp.swapaxes(inv, -1, -2)))

  np.testing.assert_allclose(jax.grad(ours)(spd), jax.grad(jaxs)(spd),
                             rtol=1e-9, atol=1e-12)
