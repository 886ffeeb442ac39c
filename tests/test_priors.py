"""MAP-EM with conjugate priors: closed forms, limits, monotonicity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import gmmjax as gx
from gmmjax._src import em as em_lib
from gmmjax._src import fit as fit_lib
from gmmjax._src import implicit
from gmmjax._src.priors import ConjugatePrior, log_prior, make_prior

TYPES = ["full", "tied", "diag", "spherical"]
K = 3


@pytest.fixture(scope="module")
def data():
  return make_blobs(21, 30, [[0, 0, 0], [3, 1, 0], [0, 3, 2]], stretch=True)


def _dense(params):
  c = np.asarray(params.covariances)
  d = params.means.shape[1]
  return {"full": lambda: c, "tied": lambda: np.broadcast_to(c, (K, d, d)),
          "diag": lambda: np.stack([np.diag(v) for v in c]),
          "spherical": lambda: c[:, None, None] * np.eye(d)
          }[params.covariance_type]()


def _np_log_prior(params, prior):
  """The prior kernel written with explicit inverses and slogdet."""
  ctype = params.covariance_type
  w, mu = np.asarray(params.weights), np.asarray(params.means)
  a, m0, kap, psi, n0 = (np.asarray(x) for x in prior)
  out = np.sum((np.broadcast_to(a, (K,)) - 1) * np.log(w))
  covs = _dense(params)
  comps = [covs[0]] if ctype == "tied" else list(covs)
  for s in comps:
    inv = np.linalg.inv(s)
    if ctype == "diag":
      out += (-0.5 * n0 * np.linalg.slogdet(s)[1]
              - 0.5 * np.sum(np.diag(psi) * np.diag(inv)))
    elif ctype == "spherical":
      out += (-0.5 * n0 * np.linalg.slogdet(s)[1]
              - 0.5 * np.trace(psi) * inv[0, 0])
    else:
      out += -0.5 * n0 * np.linalg.slogdet(s)[1] - 0.5 * np.trace(psi @ inv)
  for k in range(K):
    inv = np.linalg.inv(covs[k])
    out += -0.5 * kap * (mu[k] - m0) @ inv @ (mu[k] - m0)
  return out


def _np_map_objective(params, prior, X):
  covs = _dense(params)
  logp = logsumexp(np.stack([
      np.log(float(params.weights[k])) + multivariate_normal(
          np.asarray(params.means[k]), covs[k]).logpdf(X)
      for k in range(K)]), axis=0)
  return (np.sum(logp) + _np_log_prior(params, prior)) / X.shape[0]


def _init(X, ctype):
  return gx.init_params(jax.random.key(0), X, K, covariance_type=ctype,
                        method="kmeans")


@pytest.mark.parametrize("covariance_type", TYPES)
def test_map_objective_never_decreases(x64, data, covariance_type):
  X = jnp.asarray(data)
  prior = make_prior(X, K, strength=2.0)
  step = jax.jit(lambda p: fit_lib.em_step(X, p, sample_weight=None,
                                           reg_covar=0.0, prior=prior))
  params = _init(X, covariance_type)
  previous = -np.inf
  for _ in range(15):
    new, objective = step(params)
    expected = _np_map_objective(params, prior, np.asarray(X))
    np.testing.assert_allclose(objective, expected, rtol=1e-10)
    assert expected >= previous - 1e-12
    previous, params = expected, new
  # The compiled fit records the same objective, non-decreasing.
  res = gx.fit(X, _init(X, covariance_type), prior=prior, reg_covar=0.0,
               tol=0.0, max_iter=40)
  hist = np.asarray(res.history)[:int(res.n_iter)]
  assert np.all(np.diff(hist) >= -1e-12)
  np.testing.assert_allclose(hist[14], previous, rtol=1e-10)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_map_step_maximises_q_plus_log_prior(x64, data, covariance_type):
  X = jnp.asarray(data)
  prior = make_prior(X, K, strength=1.5)._replace(
      mean_precision=jnp.asarray(0.7), weight_concentration=jnp.asarray(
          [1.5, 2.0, 3.0]))
  params = _init(X, covariance_type)
  log_resp = gx.e_step(params, X)[0]
  new, _ = fit_lib.em_step(X, params, sample_weight=None, reg_covar=0.0,
                           prior=prior)
  n = X.shape[0]

  def objective(theta):
    p = implicit.params_from_theta(theta, covariance_type)
    return n * em_lib.Q(p, X, log_resp) + log_prior(p, prior)

  g = jax.jit(jax.grad(objective))(implicit.theta_from_params(new))
  np.testing.assert_allclose(g.means, 0.0, atol=1e-8)
  np.testing.assert_allclose(g.covariances, 0.0, atol=1e-8)
  # On the simplex the weight gradient is constant (a Lagrange multiplier).
  np.testing.assert_allclose(g.weights, g.weights.mean(), atol=1e-8)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_vanishing_prior_reproduces_plain_em(x64, data, covariance_type):
  X = jnp.asarray(data)
  p0 = _init(X, covariance_type)
  plain = gx.fit(X, p0, tol=0.0, max_iter=50)
  gaps = []
  for strength in (0.0, 1e-4, 1e-7):
    res = gx.fit(X, p0, tol=0.0, max_iter=50,
                 prior=make_prior(X, K, strength=strength))
    gaps.append(max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(res.params), jax.tree.leaves(plain.params),
        strict=True)))
  assert gaps[0] < 1e-10
  assert gaps[2] < 1e-5 and gaps[2] < gaps[1] / 10


def test_flat_prior_log_density_is_zero_and_explicit_prior_shapes(x64):
  p = gx.make_params(jnp.array([0.2, 0.8]), jnp.zeros((2, 2)),
                     jnp.ones((2, 2)), covariance_type="diag")
  flat = ConjugatePrior(1.0, jnp.zeros(2), 0.0, jnp.zeros((2, 2)), 0.0)
  assert float(log_prior(p, flat)) == 0.0
  with pytest.raises(ValueError, match="covariance_prior"):
    gx.fit(jnp.zeros((4, 2)), p, prior=flat._replace(
        covariance_prior=jnp.zeros((3, 3))))


def test_gradient_wrt_prior_strength_matches_finite_differences(x64, data):
  X = jnp.asarray(data)
  p0 = _init(X, "diag")

  @jax.jit
  def loss(dof):
    prior = make_prior(X, K, strength=1.0)._replace(covariance_dof=dof)
    res = gx.fit(X, p0, prior=prior, tol=0.0, max_iter=600, reg_covar=0.0)
    return jnp.sum(res.params.covariances) + res.log_likelihood

  g = jax.jit(jax.grad(loss))(5.0)
  h = 1e-5
  fd = (loss(5.0 + h) - loss(5.0 - h)) / (2 * h)
  np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_gradient_of_the_recorded_map_objective_matches_finite_differences(
    x64, data):
  """``result.lower_bound`` of a MAP fit is the history's objective, the
  log-likelihood plus the prior's term (engine.objective), and its implicit
  derivative is that objective's: it carried the log-likelihood's tangent
  alone: here -0.0051 against a finite difference of +0.0050 for the prior's
  degrees of freedom (found in review, 2026-12-04)."""
  X = jnp.asarray(data)
  p0 = _init(X, "diag")

  @jax.jit
  def bound(dof):
    prior = make_prior(X, K, strength=1.0)._replace(covariance_dof=dof)
    return gx.fit(X, p0, prior=prior, tol=0.0, max_iter=600,
                  reg_covar=0.0).lower_bound

  g = jax.jit(jax.grad(bound))(5.0)
  h = 1e-5
  fd = (bound(5.0 + h) - bound(5.0 - h)) / (2 * h)
  assert abs(float(fd)) > 1e-3
  np.testing.assert_allclose(g, fd, rtol=1e-5)
