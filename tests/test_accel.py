"""SQUAREM-accelerated EM: same fixed point as EM, fewer E-steps, monotone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src.accel import fit_accelerated, squarem_point
from tests.conftest import SMALL_BLOCKS


def _overlapping(seed=0):
  """Three strongly overlapping 2-D clusters (centres ~1.5 sigma apart)."""
  rng = np.random.default_rng(seed)
  centers = [[0.0, 0.0], [1.5, 0.5], [0.5, 1.8]]
  return np.concatenate([rng.normal(c, 1.0, (700, 2)) for c in centers])


def _steps_to(history, target):
  """E-steps until the log-likelihood first reaches ``target``."""
  h = np.asarray(history)
  hit = np.nonzero(h >= target)[0]
  return int(hit[0]) + 1 if hit.size else None


@pytest.fixture(scope="module", params=["full", "spherical"])
def fits(request):
  with jax.enable_x64(True):
    ctype = request.param
    X = jnp.asarray(_overlapping())
    p0 = gx.init_params(jax.random.key(1), X, 3, covariance_type=ctype,
                        method="random")
    em = gx.fit(X, p0, max_iter=5000, tol=1e-11)
    acc, info = gx.fit_accelerated_with_info(X, p0, max_iter=5000, tol=1e-11)
    # One more EM step from each end point: how far from a fixed point.
    em_next, _ = gx.em_step(X, em.params)
    acc_next, _ = gx.em_step(X, acc.params)
    yield dict(X=X, p0=p0, em=em, acc=acc, info=info, em_next=em_next,
               acc_next=acc_next)


def test_same_fixed_point_as_em(fits):
  em, acc = fits["em"], fits["acc"]
  assert bool(em.converged) and bool(acc.converged)
  np.testing.assert_allclose(float(acc.log_likelihood),
                             float(em.log_likelihood), rtol=0, atol=1e-7)
  # The accelerated end point is (numerically) a fixed point of the EM map.
  for a, b in zip(jax.tree.leaves(fits["acc_next"]),
                  jax.tree.leaves(acc.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  # Both end points describe the same mixture (same init, so same labels);
  # plain EM crawls, so it is itself only close to its limit.
  np.testing.assert_allclose(np.asarray(acc.params.means),
                             np.asarray(em.params.means), atol=2e-3)
  np.testing.assert_allclose(np.asarray(acc.params.weights),
                             np.asarray(em.params.weights), atol=2e-3)


def test_fewer_e_steps_on_overlapping_clusters(fits):
  em, acc = fits["em"], fits["acc"]
  best = max(float(em.log_likelihood), float(acc.log_likelihood))
  n_em = _steps_to(em.history, best - 1e-6)
  n_acc = _steps_to(acc.history, best - 1e-6)
  assert n_em is not None and n_acc is not None
  assert n_acc <= 0.7 * n_em, (n_acc, n_em)
  assert int(fits["info"].n_accepted) > 0


def test_log_likelihood_never_decreases(fits):
  acc = fits["acc"]
  h = np.asarray(acc.history)[:int(acc.n_iter)]
  assert np.all(np.isfinite(h))
  assert np.all(np.diff(h) >= -1e-12)
  assert float(acc.log_likelihood) >= h[-1] - 1e-12
  assert np.all(np.isnan(np.asarray(acc.history)[int(acc.n_iter):]))


def test_alpha_one_is_two_em_steps(x64):
  X = jnp.asarray(_overlapping(1)[:300])
  p0 = gx.init_params(jax.random.key(2), X, 3, covariance_type="full")
  p1, _ = gx.em_step(X, p0)
  p2, _ = gx.em_step(X, p1)
  point, alpha = squarem_point(p0, p1, p2, jnp.asarray(1.0))
  assert float(alpha) == 1.0
  for a, b in zip(jax.tree.leaves(point), jax.tree.leaves(p2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_float32_and_vmap(x64, compactions, dtype):
  """Float32 stays finite and monotone; a vmapped batch equals single fits
  (compacted: blocks of 2 running members, batching.while_loop).

  The vmapped and single programs use different kernels, so they round
  differently. In float64 they agree to 1e-9, stopping step included. In
  float32 a rounding difference can move the stopping step, and these
  overlapping clusters are far from converged at tol=1e-5 (means 0.7-2.2
  from the float64 optimum), so each SQUAREM step still moves a mean by
  about 0.01: two runs stopping 2 steps apart were 0.022 apart (AMD EPYC
  with AVX-512). So each member is compared with a single fit of the same
  number of steps (``tol=0``, ``max_iter`` its ``n_iter``), which tests
  the batching itself: 4e-4 apart in a mean after 65 float32 steps, held
  to 2e-3. Against the single fit with its own stopping rule only the
  log-likelihood is held, to 1e-4 relative (steps of about tol each).
  """
  X = jnp.asarray(_overlapping(2)[:900], dtype)
  keys = jax.random.split(jax.random.key(3), 3)
  p0 = jax.vmap(lambda k: gx.init_params(k, X, 3, covariance_type="diag",
                                         method="random"))(keys)
  batch = jax.vmap(lambda p: fit_accelerated(X, p, max_iter=300, tol=1e-5,
                                             chunking=SMALL_BLOCKS))(p0)
  assert compactions == [(2, 3)]
  exact = dtype == jnp.float64
  for i in range(3):
    p_i = jax.tree.map(lambda a, i=i: a[i], p0)
    n = int(batch.n_iter[i])
    same = fit_accelerated(X, p_i, max_iter=n, tol=0.0)
    assert batch.params.means.dtype == dtype
    assert int(same.n_iter) == n
    np.testing.assert_allclose(float(batch.log_likelihood[i]),
                               float(same.log_likelihood),
                               rtol=1e-9 if exact else 1e-5)
    np.testing.assert_allclose(np.asarray(batch.params.means[i]),
                               np.asarray(same.params.means),
                               rtol=1e-9 if exact else 0,
                               atol=1e-9 if exact else 2e-3)
    one = fit_accelerated(X, p_i, max_iter=300, tol=1e-5)
    if exact:
      assert int(one.n_iter) == n
    np.testing.assert_allclose(float(batch.log_likelihood[i]),
                               float(one.log_likelihood),
                               rtol=1e-9 if exact else 1e-4)
    h = np.asarray(one.history)[:int(one.n_iter)]
    assert np.all(np.isfinite(h)) and not bool(one.failed)
    assert np.all(np.diff(h) >= -1e-5 * np.abs(h[:-1]))


def test_small_eager_fits_run_the_fast_compiling_program(x64, monkeypatch):
  """An eager fit of a small problem runs the program compiled with the
  small-problem options (compiling.pick); under a user's jit the default
  one is inlined. Both reach the same fixed point."""
  from gmmjax._src import accel, cache, compiling  # noqa: PLC0415
  X = jnp.asarray(_overlapping()[::7])
  p0 = gx.init_params(jax.random.key(1), X, 3, method="kmeans")
  default, _, tiny = accel._fit_squarem_programs
  for program in (default, tiny):
    program.clear_cache()
  # gmmjax's cache off (a test before may have turned it on in this
  # process): the executables store compiles outside the jit's own cache.
  monkeypatch.setitem(cache._state, "dir", None)
  picked = compiling.pick(accel._fit_squarem_programs, X.shape[0], 3, 2)
  assert picked is (tiny if jax.default_backend() == "cpu"
                    and compiling._small_options_work() else default)
  eager, _ = gx.fit_accelerated_with_info(X, p0, max_iter=2000, tol=1e-12)
  # The eager fit ran the picked program, not the other.
  fast = picked is tiny and picked is not default
  assert (tiny._cache_size(), default._cache_size()) == (
      (1, 0) if fast else (0, 1))
  jitted, _ = jax.jit(lambda X: gx.fit_accelerated_with_info(
      X, p0, max_iter=2000, tol=1e-12))(X)
  assert bool(eager.converged) and bool(jitted.converged)
  for a, b in zip(jax.tree.leaves(eager.params), jax.tree.leaves(
      jitted.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                               atol=1e-8)
  np.testing.assert_allclose(float(eager.log_likelihood),
                             float(jitted.log_likelihood), rtol=1e-12)
