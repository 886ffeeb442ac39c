"""E-step, M-step, densities and criteria against independent references.

The references are written here with NumPy/SciPy from the textbook formulas
(no gmmjax code), in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import logsumexp

import gmmjax as gx
from tests.conftest import make_blobs, numpy_m_step

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _matrices(cov, cov_type, k, d):
  """Covariances of any type as (K, D, D) matrices."""
  cov = np.asarray(cov)
  if cov_type == "full":
    return cov
  if cov_type == "tied":
    return np.broadcast_to(cov, (k, d, d))
  if cov_type == "diag":
    return np.stack([np.diag(c) for c in cov])
  return cov[:, None, None] * np.eye(d)


def _random_params(rng, cov_type, k, d):
  weights = rng.dirichlet(np.ones(k) * 3)
  means = rng.normal(0, 3, (k, d))
  a = rng.normal(size=(k, d, d))
  full = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
  cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.5, 2, (k, d)),
         "spherical": rng.uniform(0.5, 2, k)}[cov_type]
  return weights, means, cov


def _ref_log_prob_components(X, weights, means, mats):
  """log w_k + log N(x | mu_k, Sigma_k) with scipy.stats, (N, K)."""
  return np.stack([
      np.log(w) + sps.multivariate_normal(m, c).logpdf(X)
      for w, m, c in zip(weights, means, mats)], axis=1).reshape(len(X), -1)


def _ref_em_step(X, weights, means, mats, cov_type, reg, sw):
  """One E+M iteration from the textbook formulas (weighted)."""
  n, d = X.shape
  lp = _ref_log_prob_components(X, weights, means, mats)
  norm = logsumexp(lp, axis=1)
  resp = np.exp(lp - norm[:, None]) * sw[:, None]
  new_w, new_mu, cov = numpy_m_step(X, resp, cov_type, reg)
  mean_ll = np.sum(sw * norm) / np.sum(sw)
  return new_w, new_mu, cov, mean_ll, lp - norm[:, None]


@pytest.fixture(scope="module")
def data():
  return make_blobs(1, 40, [[0, 0, 0], [4, 4, 0], [-4, 3, 3]])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_one_em_iteration_matches_numpy_reference(data, cov_type, weighted,
                                                   x64):
  rng = np.random.default_rng(3)
  X = data
  n, d = X.shape
  k = 3
  weights, means, cov = _random_params(rng, cov_type, k, d)
  sw = rng.uniform(0.2, 3.0, n) if weighted else np.ones(n)
  params = gx.make_params(weights, means, cov, covariance_type=cov_type)
  reg = 1e-4

  log_resp, mean_ll = gx.e_step(params, X, sample_weight=sw if weighted
                                else None)
  new = gx.m_step(X, log_resp, covariance_type=cov_type, reg_covar=reg,
                  sample_weight=sw if weighted else None)

  mats = _matrices(cov, cov_type, k, d)
  rw, rmu, rcov, rll, rlog_resp = _ref_em_step(X, weights, means, mats,
                                               cov_type, reg, sw)
  np.testing.assert_allclose(np.asarray(log_resp), rlog_resp, rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(float(mean_ll), rll, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(new.weights), rw, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(new.means), rmu, rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(np.asarray(new.covariances), rcov, rtol=1e-9,
                             atol=1e-10)
  # em_step (the fused statistics path used by fit) gives the same.
  fused, fused_ll = gx.em_step(X, params,
                               sample_weight=sw if weighted else None,
                               reg_covar=reg)
  np.testing.assert_allclose(float(fused_ll), rll, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(fused.covariances), rcov, rtol=1e-9,
                             atol=1e-10)
  np.testing.assert_allclose(np.asarray(fused.means), rmu, rtol=1e-10,
                             atol=1e-10)
  # The precision factor is consistent with the covariance.
  prec = np.asarray(fused.precisions)
  mats_new = _matrices(rcov, cov_type, k, d)
  prec_m = _matrices(prec, cov_type, k, d) if cov_type != "spherical" else (
      prec[:, None, None] * np.eye(d))
  for c, p in zip(mats_new, prec_m):
    np.testing.assert_allclose(c @ p, np.eye(d), atol=1e-9)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_log_prob_matches_scipy_mixture_density(data, cov_type, x64):
  rng = np.random.default_rng(5)
  X = data
  n, d = X.shape
  weights, means, cov = _random_params(rng, cov_type, 4, d)
  params = gx.make_params(weights, means, cov, covariance_type=cov_type)
  mats = _matrices(cov, cov_type, 4, d)
  density = sum(w * sps.multivariate_normal(m, c).pdf(X)
                for w, m, c in zip(weights, means, mats))
  np.testing.assert_allclose(np.asarray(gx.log_prob(params, X)),
                             np.log(density), rtol=1e-10)
  np.testing.assert_allclose(float(gx.log_likelihood(params, X)),
                             np.mean(np.log(density)), rtol=1e-10)
  proba = np.asarray(gx.predict_proba(params, X))
  np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
  comp = np.stack([w * sps.multivariate_normal(m, c).pdf(X)
                   for w, m, c in zip(weights, means, mats)], 1)
  np.testing.assert_array_equal(np.asarray(gx.predict(params, X)),
                                comp.argmax(1))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_bic_aic_match_formulas_and_sklearn_parameter_count(data, cov_type,
                                                            x64):
  from sklearn.mixture import GaussianMixture as SkGMM
  rng = np.random.default_rng(8)
  X = data
  n, d = X.shape
  weights, means, cov = _random_params(rng, cov_type, 3, d)
  params = gx.make_params(weights, means, cov, covariance_type=cov_type)
  sk = SkGMM(3, covariance_type=cov_type)
  sk.means_ = means
  assert gx.n_parameters(params) == sk._n_parameters()
  total = np.sum(np.asarray(gx.log_prob(params, X)))
  p = sk._n_parameters()
  np.testing.assert_allclose(float(gx.bic(params, X)),
                             -2 * total + p * np.log(n), rtol=1e-12)
  np.testing.assert_allclose(float(gx.aic(params, X)), -2 * total + 2 * p,
                             rtol=1e-12)


def test_integer_weights_equal_repeated_rows(data, x64):
  X = data
  rng = np.random.default_rng(2)
  counts = rng.integers(0, 4, len(X))
  counts[0] = 1
  X_rep = np.repeat(X, counts, axis=0)
  for cov_type in COV_TYPES:
    p0 = gx.init_params(jax.random.key(0), X, 3, covariance_type=cov_type,
                        method="random")
    a = gx.fit(X, p0, sample_weight=counts.astype(float), tol=1e-8,
               max_iter=30)
    b = gx.fit(X_rep, p0, tol=1e-8, max_iter=30)
    assert int(a.n_iter) == int(b.n_iter)
    # Also the same tree: covariance type and every leaf's shape.
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(float(a.log_likelihood),
                               float(b.log_likelihood), rtol=1e-10)
    np.testing.assert_allclose(float(gx.bic(a.params, X, sample_weight=counts)),
                               float(gx.bic(b.params, X_rep)), rtol=1e-10)


def test_dtypes_follow_input(data):
  X32 = np.asarray(data, np.float32)
  p = gx.init_params(jax.random.key(0), X32, 2)
  chex.assert_type(jax.tree.leaves(p), jnp.float32)
  res = gx.fit(X32, p, max_iter=5)
  chex.assert_type(jax.tree.leaves(res.params), jnp.float32)
  chex.assert_type([res.log_likelihood, res.history], jnp.float32)
  with jax.enable_x64(True):
    p64 = gx.init_params(jax.random.key(0), np.asarray(data), 2)
    chex.assert_type(jax.tree.leaves(p64), jnp.float64)
    res64 = gx.fit(np.asarray(data), p64, max_iter=5)
    chex.assert_type(jax.tree.leaves(res64.params), jnp.float64)
    chex.assert_type(res64.log_likelihood, jnp.float64)
  # Integer data computes in the default float.
  pi = gx.init_params(jax.random.key(0), np.round(data).astype(np.int32), 2)
  chex.assert_type(jax.tree.leaves(pi), jnp.float32)


def test_one_dimensional_data_is_ordinary(x64):
  rng = np.random.default_rng(0)
  X = np.concatenate([rng.normal(-15, 2, 100), rng.normal(0, 3, 100),
                      rng.normal(15, 2.5, 100)])[:, None]
  for cov_type in COV_TYPES:
    p0 = gx.make_params(np.ones(3) / 3, np.array([[-1.0], [0.0], [1.0]]),
                        {"full": np.ones((3, 1, 1)), "tied": np.ones((1, 1)),
                         "diag": np.ones((3, 1)),
                         "spherical": np.ones(3)}[cov_type],
                        covariance_type=cov_type)
    res = gx.fit(X, p0, max_iter=300, tol=1e-8)
    assert bool(res.converged)
    means = np.sort(np.asarray(res.params.means).ravel())
    np.testing.assert_allclose(means, [-15, 0, 15], atol=1.0)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample_moments(cov_type):
  rng = np.random.default_rng(1)
  weights, means, cov = _random_params(rng, cov_type, 2, 2)
  params = gx.make_params(weights, means, cov, covariance_type=cov_type)
  X, y = gx.sample(jax.random.key(3), params, 40000)
  X, y = np.asarray(X), np.asarray(y)
  assert X.shape == (40000, 2) and y.dtype == np.int32
  np.testing.assert_allclose(np.bincount(y, minlength=2) / len(y), weights,
                             atol=0.01)
  mats = _matrices(cov, cov_type, 2, 2)
  for j in range(2):
    sel = X[y == j]
    np.testing.assert_allclose(sel.mean(0), means[j],
                               atol=0.06 * np.sqrt(mats[j].max()))
    np.testing.assert_allclose(np.cov(sel.T), mats[j],
                               atol=0.08 * mats[j].max())
  # Legacy PRNGKey arrays work too, and the key decides the draw.
  X2, _ = gx.sample(jax.random.PRNGKey(3), params, 10)
  X3, _ = gx.sample(jax.random.PRNGKey(3), params, 10)
  np.testing.assert_array_equal(np.asarray(X2), np.asarray(X3))


def test_make_params_from_precisions_roundtrip(x64):
  rng = np.random.default_rng(4)
  for cov_type in COV_TYPES:
    weights, means, cov = _random_params(rng, cov_type, 3, 3)
    a = gx.make_params(weights, means, cov, covariance_type=cov_type)
    b = gx.make_params(weights, means, precisions=np.asarray(a.precisions),
                       covariance_type=cov_type)
    np.testing.assert_allclose(np.asarray(b.covariances), cov, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(b.precisions),
                               np.asarray(a.precisions), rtol=1e-10)


def test_shape_errors_are_value_errors():
  p = gx.make_params(np.ones(2) / 2, np.zeros((2, 3)), np.ones((2, 3)),
                     covariance_type="diag")
  with pytest.raises(ValueError, match="features"):
    gx.e_step(p, np.zeros((5, 2)))
  with pytest.raises(ValueError, match="2-D"):
    gx.log_prob(p, np.zeros(5))
  with pytest.raises(ValueError, match="covariance_type"):
    gx.make_params(np.ones(2) / 2, np.zeros((2, 3)), np.ones((2, 3)),
                   covariance_type="banana")
  with pytest.raises(ValueError, match="shape"):
    gx.make_params(np.ones(2) / 2, np.zeros((2, 3)), np.ones((2, 3, 3)),
                   covariance_type="diag")
  with pytest.raises(ValueError, match="sample_weight"):
    gx.fit(np.zeros((5, 3)), p, sample_weight=np.ones(4))


def test_small_eager_calls_run_the_fast_compiling_programs(x64):
  """The functional API's small programs: an eager call of a small problem
  runs the one compiled with the small-problem options (compiling.pick),
  a call under a user's jit inlines the default one; same values."""
  from gmmjax._src import compiling, em, memory_maps  # noqa: PLC0415
  from gmmjax._src import fit as fit_lib  # noqa: PLC0415
  X = jnp.asarray(make_blobs(5, 40, [[0, 0], [4, 1], [1, 5]]))
  p = gx.init_params(jax.random.key(0), X, 3, method="kmeans")
  log_resp = gx.e_step(p, X)[0]
  calls = [
      (em._e_step, gx.e_step, (p, X), {}),
      (em.m_step, gx.m_step, (X, log_resp), dict(covariance_type="full")),
      (em.Q, gx.Q, (p, X, log_resp), {}),
      (em.log_prob, gx.log_prob, (p, X), {}),
      (em.log_likelihood, gx.log_likelihood, (p, X), {}),
      (em.predict_proba, gx.predict_proba, (p, X), {}),
      (em.predict, gx.predict, (p, X), {}),
      (em.bic, gx.bic, (p, X), {}),
      (em.aic, gx.aic, (p, X), {}),
      (fit_lib._em_step, gx.em_step, (X, p), {}),
  ]
  fast = jax.default_backend() == "cpu" and compiling._small_options_work()
  for sized, public, args, kwargs in calls:
    default, _, tiny = sized.programs
    sized.clear_cache()
    eager = public(*args, **kwargs)
    assert (tiny._cache_size(), default._cache_size()) == (
        (1, 0) if fast else (0, 1)), sized
    inlined = jax.jit(lambda *a, public=public, kw=kwargs: public(*a, **kw))(
        *args)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(inlined),
                    strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10,
                                 atol=1e-12, err_msg=str(sized))
  # Samples: the same draws from either program.
  default, _, tiny = em._sample.programs
  em._sample.clear_cache()
  a = gx.sample(jax.random.key(3), p, 50)
  assert (tiny._cache_size(), default._cache_size()) == (
      (1, 0) if fast else (0, 1))
  # What a jax.jit object offers, kept: lower (the default program's), and
  # memory_maps.release frees the three programs.
  np.testing.assert_allclose(np.asarray(gx.log_prob.lower(p, X).compile()(
      p, X)), np.asarray(gx.log_prob(p, X)), rtol=1e-10)
  assert gx.log_prob.eval_shape(p, X).shape == (X.shape[0],)
  memory_maps.release()
  assert tiny._cache_size() == default._cache_size() == 0
  b = jax.jit(lambda k: gx.sample(k, p, 50))(jax.random.key(3))
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10)
