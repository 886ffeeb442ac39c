"""gmmjax against scikit-learn's GaussianMixture from the same initial params.

In float64, from identical initial weights/means/precisions, every fitted
attribute and the iteration count must match scikit-learn to 1e-6 relative,
for every covariance type, on synthetic data and on the real data sets that
ship with scikit-learn (iris, wine, digits).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets as skdatasets
from sklearn.mixture import GaussianMixture as SkGMM

import gmmjax as gx
from tests.conftest import make_blobs

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _data(name):
  if name == "blobs":
    return make_blobs(3, 80, [[0, 0], [5, 1], [1, 6]]), 3
  if name == "iris":
    return skdatasets.load_iris().data, 3
  if name == "wine":
    X = skdatasets.load_wine().data
    return (X - X.mean(0)) / X.std(0), 3
  X = skdatasets.load_digits().data[:600]
  return X, 5


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("name", ["blobs", "iris", "wine", "digits"])
def test_fit_matches_sklearn_from_same_init(name, cov_type, x64):
  X, k = _data(name)
  Xj = jnp.asarray(X)
  p0 = gx.init_params(jax.random.key(7), Xj, k, covariance_type=cov_type,
                      method="kmeans", reg_covar=1e-3)
  tol, max_iter = 1e-5, 60
  sk = SkGMM(k, covariance_type=cov_type, tol=tol, max_iter=max_iter,
             reg_covar=1e-6, weights_init=np.asarray(p0.weights),
             means_init=np.asarray(p0.means),
             precisions_init=np.asarray(p0.precisions))
  sk.fit(X)
  res = gx.fit(Xj, p0, tol=tol, max_iter=max_iter, reg_covar=1e-6)
  assert res.params.means.dtype == jnp.float64
  assert int(res.n_iter) == sk.n_iter_
  assert bool(res.converged) == sk.converged_
  assert abs(float(res.lower_bound) - sk.lower_bound_) <= 1e-6 * abs(
      sk.lower_bound_)
  np.testing.assert_allclose(np.asarray(res.history)[:sk.n_iter_],
                             sk.lower_bounds_, rtol=1e-6)
  assert _rel(res.params.weights, sk.weights_) < 1e-6
  assert _rel(res.params.means, sk.means_) < 1e-6
  assert _rel(res.params.covariances, sk.covariances_) < 1e-6
  # The precisions are the same matrices (factors may differ by convention).
  assert _rel(res.params.precisions, sk.precisions_) < 1e-6
  # result.log_likelihood is that of the returned parameters.
  np.testing.assert_allclose(float(res.log_likelihood), sk.score(X),
                             rtol=1e-8)


@pytest.mark.parametrize("name", ["iris", "wine"])
def test_restart_quality_at_least_sklearn(name, x64):
  """With n_init=8, gmmjax's best is on average at least scikit-learn's
  best - 1e-3 (beyond two standard errors). Which optimum one seed's
  restarts reach is luck: the two libraries draw different k-means starts
  (wine, random_state=0: -11.764 against -11.739)."""
  X, k = _data(name)
  ours, theirs = [], []
  for seed in range(4):
    gm = gx.GaussianMixture(k, n_init=8, random_state=seed).fit(X)
    assert gm.means_.dtype == np.float64
    ours.append(gm.lower_bound_)
    theirs.append(SkGMM(k, n_init=8, random_state=seed).fit(X).lower_bound_)
  ours, theirs = np.array(ours), np.array(theirs)
  stderr = np.sqrt((ours.var(ddof=1) + theirs.var(ddof=1)) / len(ours))
  assert ours.mean() >= theirs.mean() - 1e-3 - 2 * stderr, (ours, theirs)


def test_restart_quality_on_digits_matches_sklearn_on_average(x64):
  """digits is multimodal: which optimum 8 restarts reach is luck (the best
  lower bound ranges over about 4 nats across random states for both
  libraries), so the claim is tested on average over random states: gmmjax's
  mean best is not worse than scikit-learn's beyond two standard errors."""
  X, k = _data("digits")
  ours, theirs = [], []
  for seed in range(8):
    ours.append(gx.GaussianMixture(k, covariance_type="diag", n_init=8,
                                   random_state=seed).fit(X).lower_bound_)
    theirs.append(SkGMM(k, covariance_type="diag", n_init=8,
                        random_state=seed).fit(X).lower_bound_)
  ours, theirs = np.array(ours), np.array(theirs)
  stderr = np.sqrt((ours.var(ddof=1) + theirs.var(ddof=1)) / len(ours))
  assert ours.mean() >= theirs.mean() - 1e-3 - 2 * stderr, (ours, theirs)
