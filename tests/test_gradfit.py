"""Unconstrained parameterisation and gradient-based fits with optax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_blobs
from scipy.stats import multivariate_normal

import gmmjax as gx
from gmmjax._src.gradfit import (
    em_then_gradient,
    fit_gradient,
    negative_log_likelihood,
)
from gmmjax._src.unconstrained import from_unconstrained, to_unconstrained

TYPES = ["full", "tied", "diag", "spherical"]
K = 3


@pytest.fixture(scope="module")
def data():
  return make_blobs(11, 60, [[0, 0], [5, 1], [1, 6]], stretch=True)


def _random_params(rng, covariance_type, d=3):
  w = rng.dirichlet(np.ones(K))
  means = rng.normal(size=(K, d))
  a = rng.normal(size=(K, d, d))
  full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
  cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.2, 3, (K, d)),
         "spherical": rng.uniform(0.2, 3, K)}[covariance_type]
  return gx.make_params(w, means, cov, covariance_type=covariance_type)


def _dense_cov(params):
  c, k, d = params.covariances, K, params.means.shape[1]
  return {"full": lambda: c,
          "tied": lambda: np.broadcast_to(c, (k, d, d)),
          "diag": lambda: np.stack([np.diag(v) for v in c]),
          "spherical": lambda: c[:, None, None] * np.eye(d)
          }[params.covariance_type]()


@pytest.mark.parametrize("covariance_type", TYPES)
def test_round_trips_are_exact(x64, covariance_type):
  p = _random_params(np.random.default_rng(0), covariance_type)
  back = from_unconstrained(to_unconstrained(p))
  for name in ("weights", "means", "covariances", "precisions_cholesky"):
    np.testing.assert_allclose(getattr(back, name), getattr(p, name),
                               rtol=1e-12, atol=1e-12, err_msg=name)
  # From free coordinates (normalised logits) and back.
  u = to_unconstrained(p)
  u = jax.tree.map(lambda a: a + 0.3, u)
  u = u.__class__(u.logits - jax.nn.logsumexp(u.logits), u.means,
                  jnp.tril(u.scale) if covariance_type in ("full", "tied")
                  else u.scale,
                  covariance_type)
  again = to_unconstrained(from_unconstrained(u))
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(u), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_free_coordinates_use_the_stored_factor(x64, covariance_type):
  """to_unconstrained takes the covariance factor from the stored precision
  factor, with cholesky's derivative: its tangent w.r.t. the covariances
  equals that of jnp.linalg.cholesky (1e-10), and a model whose stored
  covariance does not refactorise (singular by rounding, repaired by a
  jitter its factor includes) still gets finite coordinates that map back
  to its factor."""
  rng = np.random.default_rng(4)
  p = _random_params(rng, covariance_type)
  t = rng.normal(size=p.covariances.shape)
  t = 0.5 * (t + np.swapaxes(t, -1, -2))

  def scale(cov):
    return to_unconstrained(p.replace(covariances=cov)).scale

  def scale_ref(cov):
    chol = jnp.linalg.cholesky(cov)
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    return jnp.tril(chol, -1) + jnp.log(diag)[..., None] * jnp.eye(3)

  out, dout = jax.jvp(scale, (p.covariances,), (t,))
  ref, dref = jax.jvp(scale_ref, (p.covariances,), (t,))
  np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(dout, dref, rtol=1e-10, atol=1e-12)
  # Rank 2 of 3, indefinite by 1e-10: cholesky fails; the factor of
  # cov + 1e-8 I is stored.
  v = rng.normal(size=(3, 2))
  bad = v @ v.T - 1e-10 * np.eye(3)
  if covariance_type == "full":
    bad = np.broadcast_to(bad, (K, 3, 3))
  assert not np.all(np.isfinite(np.asarray(jnp.linalg.cholesky(bad))))
  known = gx.make_params(p.weights, p.means, bad + 1e-8 * np.eye(3),
                         covariance_type=covariance_type).precisions_cholesky
  q = p.replace(covariances=jnp.asarray(bad), precisions_cholesky=known)
  u = to_unconstrained(q)
  assert np.all(np.isfinite(np.asarray(u.scale)))
  np.testing.assert_allclose(from_unconstrained(u).precisions_cholesky,
                             known, rtol=1e-6, atol=1e-9 * np.abs(known).max())


@pytest.mark.parametrize("covariance_type", TYPES)
def test_negative_log_likelihood_matches_scipy(x64, covariance_type):
  rng = np.random.default_rng(1)
  p = _random_params(rng, covariance_type)
  X = rng.normal(size=(40, 3))
  w = rng.uniform(0.5, 2.0, 40)
  covs = _dense_cov(p)
  dens = sum(float(p.weights[k]) * multivariate_normal(
      np.asarray(p.means[k]), covs[k]).pdf(X) for k in range(K))
  expected = -np.sum(w * np.log(dens)) / np.sum(w)
  got = negative_log_likelihood(to_unconstrained(p), jnp.asarray(X),
                                sample_weight=jnp.asarray(w))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


@functools.cache
def _optimizers():
  return {"lbfgs": optax.lbfgs(), "adam": optax.adam(3e-2)}


@pytest.mark.parametrize("covariance_type", TYPES)
def test_lbfgs_reaches_em_likelihood(x64, data, covariance_type):
  X = jnp.asarray(data)
  p0 = gx.init_params(jax.random.key(0), X, K,
                      covariance_type=covariance_type, method="kmeans",
                      reg_covar=0.0)
  em = gx.fit(X, p0, tol=1e-12, max_iter=2000, reg_covar=0.0)
  lb = fit_gradient(X, p0, _optimizers()["lbfgs"], max_iter=300, tol=1e-12)
  assert bool(lb.converged) and not bool(lb.failed)
  assert abs(float(lb.log_likelihood - em.log_likelihood)) < 1e-3
  if covariance_type == "full":
    # Adam (not asserted tight, it may stall): never above the EM optimum.
    adam = fit_gradient(X, p0, _optimizers()["adam"], max_iter=3000,
                        tol=1e-10)
    assert float(adam.log_likelihood) < float(em.log_likelihood) + 1e-6
    assert float(adam.log_likelihood) > float(gx.log_likelihood(p0, X))
  # Results are self-consistent: the reported likelihood is the params'.
  np.testing.assert_allclose(lb.log_likelihood,
                             gx.log_likelihood(lb.params, X), rtol=1e-12)
  assert int(lb.n_iter) < 300
  # The stopping rule: the last recorded losses changed by less than tol.
  hist = np.asarray(lb.history)[: int(lb.n_iter)]
  assert np.all(np.isfinite(hist)) and np.all(np.isnan(
      np.asarray(lb.history)[int(lb.n_iter):]))


def test_vmapped_restarts_with_a_penalty(x64, data):
  X = jnp.asarray(data)
  p0s = jax.vmap(lambda k: gx.init_params(k, X, K, covariance_type="diag",
                                          method="kmeans", reg_covar=0.0))(
      jax.random.split(jax.random.key(2), 3))
  opt = _optimizers()["lbfgs"]
  # A penalty pulling all means towards the origin.
  pull = _pull
  batched = jax.vmap(lambda p: fit_gradient(X, p, opt, max_iter=200,
                                            tol=1e-12, penalty=pull))(p0s)
  p_first = jax.tree.map(lambda a: a[0], p0s)
  single = fit_gradient(X, p_first, opt, max_iter=200, tol=1e-12,
                        penalty=pull)
  # 200 L-BFGS steps amplify the different reduction orders of a batched
  # and a single run: 5e-10 relative on an H200 (2026-11-26).
  np.testing.assert_allclose(batched.loss[0], single.loss, rtol=1e-8)
  # The penalised objective is flat near its optimum: a loss within 1e-8
  # leaves the means free to about 1e-6 (2e-6 apart with XLA's unoptimised
  # CPU code), so they are compared at 1e-5.
  np.testing.assert_allclose(batched.params.means[0], single.params.means,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      single.loss, -gx.log_likelihood(single.params, X) + pull(single.params),
      rtol=1e-10)
  em = gx.fit(X, p_first, tol=1e-12, max_iter=2000, reg_covar=0.0)
  assert float(jnp.sum(single.params.means ** 2)) < 0.2 * float(
      jnp.sum(em.params.means ** 2))
  # At the penalised optimum the gradient of NLL + penalty vanishes.
  g = jax.jit(jax.grad(lambda u: negative_log_likelihood(
      u, X, penalty=pull)))(to_unconstrained(single.params))
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g)) < 1e-3


def _pull(params):
  return 10.0 * jnp.sum(params.means ** 2)


def test_em_then_gradient_starts_from_the_em_fit(x64, data):
  X = jnp.asarray(data)
  p0 = gx.init_params(jax.random.key(0), X, K, covariance_type="spherical",
                      method="kmeans")
  em, gd = em_then_gradient(X, p0, _optimizers()["adam"], em_tol=1e-3,
                            max_iter=5, tol=0.0)
  # The first loss the gradient phase records is the EM fit's.
  np.testing.assert_allclose(gd.history[0], -em.log_likelihood, rtol=1e-12)
  assert int(gd.n_iter) == 5


def test_small_eager_fits_run_the_fast_compiling_program(x64, data,
                                                        monkeypatch):
  """An eager fit of a small problem runs the program compiled with the
  small-problem options (compiling.pick); under a user's jit the default
  one is inlined. Both reach the same optimum."""
  from gmmjax._src import cache, compiling, gradfit  # noqa: PLC0415
  X = jnp.asarray(data)
  p0 = gx.init_params(jax.random.key(0), X, K, method="kmeans")
  default, _, tiny = gradfit._fit_gradient_programs
  for program in (default, tiny):
    program.clear_cache()
  # gmmjax's cache off (a test before may have turned it on in this
  # process): the executables store compiles outside the jit's own cache.
  monkeypatch.setitem(cache._state, "dir", None)
  picked = compiling.pick(gradfit._fit_gradient_programs, X.shape[0], K, 2)
  assert picked is (tiny if jax.default_backend() == "cpu"
                    and compiling._small_options_work() else default)
  opt = _optimizers()["lbfgs"]
  eager = fit_gradient(X, p0, opt, max_iter=300, tol=1e-12)
  # The eager fit ran the picked program, not the other.
  fast = picked is tiny and picked is not default
  assert (tiny._cache_size(), default._cache_size()) == (
      (1, 0) if fast else (0, 1))
  jitted = jax.jit(lambda X: fit_gradient(X, p0, opt, max_iter=300,
                                          tol=1e-12))(X)
  assert bool(eager.converged) and bool(jitted.converged)
  np.testing.assert_allclose(float(eager.log_likelihood),
                             float(jitted.log_likelihood), rtol=1e-9)
  np.testing.assert_allclose(np.asarray(eager.params.means),
                             np.asarray(jitted.params.means), rtol=1e-5,
                             atol=1e-6)
