"""scikit-learn's own BayesianGaussianMixture tests, run against gmmjax.

A port of ``sklearn/mixture/tests/test_bayesian_mixture.py`` (scikit-learn
1.9.1): its public-behaviour tests with its data (``RandomData``), seeds and
tolerances, calling ``gmmjax.BayesianGaussianMixture``. scikit-learn's tests
are float64: these run with JAX's x64 mode on (gmmjax computes in float64).

What became of each scikit-learn test:

* ported: bayesian_mixture_weights_prior_initialisation,
  mean_prior_initialisation, precisions_prior_initialisation,
  check_is_fitted, bayesian_mixture_weights, monotonic_likelihood,
  check_covariance_precision, invariant_translation,
  bayesian_mixture_fit_predict, fit_predict_n_init,
  predict_predict_proba.
* log_dirichlet_norm, log_wishart_norm (private helpers): the same
  formulas are checked on gmmjax's lower-bound terms
  (``test_bayes.py::test_bound_terms_match_scipy``).
* compare_covar_type (private ``_initialize_parameters``): the first
  M-step is a ``max_iter=0`` fit (the initial posterior), the same
  k-means responsibilities for every type.

Trimmed for the suite's time budget: every covariance type and prior type
compiles programs of its own (a few seconds each), and scikit-learn's loops
over all eight would add minutes. By default the loops below run over
:data:`CASES` (every covariance type, each with one of the prior types, the
two prior types alternating); ``GMMJAX_TEST_FULL=1`` runs scikit-learn's
full loops (all pass). Both prior types and all four types are checked
against scikit-learn's own numbers in ``test_bayes.py``.
"""

import copy
import os

import numpy as np
import pytest
from numpy.testing import assert_almost_equal, assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.metrics.cluster import adjusted_rand_score
from sklearn.mixture.tests.test_gaussian_mixture import RandomData

from gmmjax import BayesianGaussianMixture

COVARIANCE_TYPE = ["full", "tied", "diag", "spherical"]
PRIOR_TYPE = ["dirichlet_process", "dirichlet_distribution"]

FULL = os.environ.get("GMMJAX_TEST_FULL") == "1"
# (prior type, covariance type) pairs the loops visit: see the docstring.
CASES = ([(p, c) for p in PRIOR_TYPE for c in COVARIANCE_TYPE] if FULL else
         [(PRIOR_TYPE[i % 2], c) for i, c in enumerate(COVARIANCE_TYPE)])
COVARIANCE_CASES = COVARIANCE_TYPE if FULL else ["full", "spherical"]

pytestmark = [pytest.mark.usefixtures("x64"),
              pytest.mark.filterwarnings(
                  "ignore::sklearn.exceptions.ConvergenceWarning")]


def test_bayesian_mixture_weights_prior_initialisation():
  rng = np.random.RandomState(0)
  n_samples, n_components, n_features = 10, 5, 2
  X = rng.rand(n_samples, n_features)

  weight_concentration_prior = rng.rand()
  bgmm = BayesianGaussianMixture(
      weight_concentration_prior=weight_concentration_prior,
      random_state=rng).fit(X)
  assert_almost_equal(weight_concentration_prior,
                      bgmm.weight_concentration_prior_)

  bgmm = BayesianGaussianMixture(n_components=n_components,
                                 random_state=rng).fit(X)
  assert_almost_equal(1.0 / n_components, bgmm.weight_concentration_prior_)


def test_bayesian_mixture_mean_prior_initialisation():
  rng = np.random.RandomState(0)
  n_samples, n_components, n_features = 10, 3, 2
  X = rng.rand(n_samples, n_features)

  mean_precision_prior = rng.rand()
  bgmm = BayesianGaussianMixture(mean_precision_prior=mean_precision_prior,
                                 random_state=rng).fit(X)
  assert_almost_equal(mean_precision_prior, bgmm.mean_precision_prior_)

  bgmm = BayesianGaussianMixture(random_state=rng).fit(X)
  assert_almost_equal(1.0, bgmm.mean_precision_prior_)

  mean_prior = rng.rand(n_features)
  bgmm = BayesianGaussianMixture(n_components=n_components,
                                 mean_prior=mean_prior,
                                 random_state=rng).fit(X)
  assert_almost_equal(mean_prior, bgmm.mean_prior_)

  bgmm = BayesianGaussianMixture(n_components=n_components,
                                 random_state=rng).fit(X)
  assert_almost_equal(X.mean(axis=0), bgmm.mean_prior_)


def test_bayesian_mixture_precisions_prior_initialisation():
  rng = np.random.RandomState(0)
  n_samples, n_features = 10, 2
  X = rng.rand(n_samples, n_features)

  bad_degrees_of_freedom_prior_ = n_features - 1.0
  bgmm = BayesianGaussianMixture(
      degrees_of_freedom_prior=bad_degrees_of_freedom_prior_,
      random_state=rng)
  msg = ("The parameter 'degrees_of_freedom_prior' should be greater than"
         f" {n_features - 1}, but got {bad_degrees_of_freedom_prior_:.3f}.")
  with pytest.raises(ValueError, match=msg):
    bgmm.fit(X)

  degrees_of_freedom_prior = rng.rand() + n_features - 1.0
  bgmm = BayesianGaussianMixture(
      degrees_of_freedom_prior=degrees_of_freedom_prior,
      random_state=rng).fit(X)
  assert_almost_equal(degrees_of_freedom_prior,
                      bgmm.degrees_of_freedom_prior_)

  degrees_of_freedom_prior_default = n_features
  bgmm = BayesianGaussianMixture(
      degrees_of_freedom_prior=degrees_of_freedom_prior_default,
      random_state=rng).fit(X)
  assert_almost_equal(degrees_of_freedom_prior_default,
                      bgmm.degrees_of_freedom_prior_)

  covariance_prior = {
      "full": np.cov(X.T, bias=1) + 10,
      "tied": np.cov(X.T, bias=1) + 5,
      "diag": np.diag(np.atleast_2d(np.cov(X.T, bias=1))) + 3,
      "spherical": rng.rand(),
  }
  bgmm = BayesianGaussianMixture(random_state=rng)
  for cov_type in COVARIANCE_TYPE:
    bgmm.covariance_type = cov_type
    bgmm.covariance_prior = covariance_prior[cov_type]
    bgmm.fit(X)
    assert_almost_equal(covariance_prior[cov_type], bgmm.covariance_prior_)

  covariance_prior_default = {
      "full": np.atleast_2d(np.cov(X.T)),
      "tied": np.atleast_2d(np.cov(X.T)),
      "diag": np.var(X, axis=0, ddof=1),
      "spherical": np.var(X, axis=0, ddof=1).mean(),
  }
  bgmm = BayesianGaussianMixture(random_state=0)
  for cov_type in COVARIANCE_TYPE:
    bgmm.covariance_type = cov_type
    bgmm.fit(X)
    assert_almost_equal(covariance_prior_default[cov_type],
                        bgmm.covariance_prior_)


def test_bayesian_mixture_check_is_fitted():
  rng = np.random.RandomState(0)
  n_samples, n_features = 10, 2
  bgmm = BayesianGaussianMixture(random_state=rng)
  X = rng.rand(n_samples, n_features)
  msg = "This BayesianGaussianMixture instance is not fitted yet."
  with pytest.raises(ValueError, match=msg):
    bgmm.score(X)


def test_bayesian_mixture_weights():
  rng = np.random.RandomState(0)
  n_samples, n_features = 10, 2
  X = rng.rand(n_samples, n_features)

  bgmm = BayesianGaussianMixture(
      weight_concentration_prior_type="dirichlet_distribution",
      n_components=3, random_state=rng).fit(X)
  expected_weights = (bgmm.weight_concentration_
                      / np.sum(bgmm.weight_concentration_))
  assert_almost_equal(expected_weights, bgmm.weights_)
  assert_almost_equal(np.sum(bgmm.weights_), 1.0)

  dpgmm = BayesianGaussianMixture(
      weight_concentration_prior_type="dirichlet_process",
      n_components=3, random_state=rng).fit(X)
  weight_dirichlet_sum = (dpgmm.weight_concentration_[0]
                          + dpgmm.weight_concentration_[1])
  tmp = dpgmm.weight_concentration_[1] / weight_dirichlet_sum
  expected_weights = (dpgmm.weight_concentration_[0] / weight_dirichlet_sum
                      * np.hstack((1, np.cumprod(tmp[:-1]))))
  expected_weights /= np.sum(expected_weights)
  assert_almost_equal(expected_weights, dpgmm.weights_)
  assert_almost_equal(np.sum(dpgmm.weights_), 1.0)


def test_monotonic_likelihood():
  rng = np.random.RandomState(0)
  rand_data = RandomData(rng, scale=20)
  n_components = rand_data.n_components

  for prior_type, covar_type in CASES:
    X = rand_data.X[covar_type]
    bgmm = BayesianGaussianMixture(
        weight_concentration_prior_type=prior_type,
        n_components=2 * n_components, covariance_type=covar_type,
        warm_start=True, max_iter=1, random_state=rng, tol=1e-3)
    current_lower_bound = -np.inf
    for _ in range(600):
      prev_lower_bound = current_lower_bound
      current_lower_bound = bgmm.fit(X).lower_bound_
      assert current_lower_bound >= prev_lower_bound
      if bgmm.converged_:
        break
    assert bgmm.converged_


def test_compare_covar_type():
  rng = np.random.RandomState(0)
  rand_data = RandomData(rng, scale=7)
  X = rand_data.X["full"]
  n_components = rand_data.n_components

  def initialised(prior_type, covariance_type):
    # scikit-learn's _initialize_parameters: a max_iter=0 fit.
    return BayesianGaussianMixture(
        weight_concentration_prior_type=prior_type,
        n_components=2 * n_components, covariance_type=covariance_type,
        max_iter=0, random_state=0, tol=1e-7).fit(X)

  for prior_type in PRIOR_TYPE if FULL else PRIOR_TYPE[:1]:
    bgmm = initialised(prior_type, "full")
    full_covariances = (bgmm.covariances_
                        * bgmm.degrees_of_freedom_[:, np.newaxis, np.newaxis])

    bgmm = initialised(prior_type, "tied")
    tied_covariance = bgmm.covariances_ * bgmm.degrees_of_freedom_
    assert_almost_equal(tied_covariance, np.mean(full_covariances, 0))

    bgmm = initialised(prior_type, "diag")
    diag_covariances = (bgmm.covariances_
                        * bgmm.degrees_of_freedom_[:, np.newaxis])
    assert_almost_equal(diag_covariances,
                        np.array([np.diag(cov) for cov in full_covariances]))

    bgmm = initialised(prior_type, "spherical")
    spherical_covariances = bgmm.covariances_ * bgmm.degrees_of_freedom_
    assert_almost_equal(spherical_covariances, np.mean(diag_covariances, 1))


def test_check_covariance_precision():
  rng = np.random.RandomState(0)
  rand_data = RandomData(rng, scale=7)
  n_components, n_features = 2 * rand_data.n_components, 2

  bgmm = BayesianGaussianMixture(n_components=n_components, max_iter=100,
                                 random_state=rng, tol=1e-3, reg_covar=0)
  for covar_type in COVARIANCE_TYPE:
    bgmm.covariance_type = covar_type
    bgmm.fit(rand_data.X[covar_type])
    if covar_type == "full":
      for covar, precision in zip(bgmm.covariances_, bgmm.precisions_):
        assert_almost_equal(np.dot(covar, precision), np.eye(n_features))
    elif covar_type == "tied":
      assert_almost_equal(np.dot(bgmm.covariances_, bgmm.precisions_),
                          np.eye(n_features))
    elif covar_type == "diag":
      assert_almost_equal(bgmm.covariances_ * bgmm.precisions_,
                          np.ones((n_components, n_features)))
    else:
      assert_almost_equal(bgmm.covariances_ * bgmm.precisions_,
                          np.ones(n_components))


def test_invariant_translation():
  rng = np.random.RandomState(0)
  rand_data = RandomData(rng, scale=100)
  n_components = 2 * rand_data.n_components

  for prior_type, covar_type in CASES:
    X = rand_data.X[covar_type]
    kwargs = dict(weight_concentration_prior_type=prior_type,
                  n_components=n_components, max_iter=100,
                  random_state=0, tol=1e-3, reg_covar=0)
    bgmm1 = BayesianGaussianMixture(**kwargs).fit(X)
    bgmm2 = BayesianGaussianMixture(**kwargs).fit(X + 100)
    assert_almost_equal(bgmm1.means_, bgmm2.means_ - 100)
    assert_almost_equal(bgmm1.weights_, bgmm2.weights_)
    assert_almost_equal(bgmm1.covariances_, bgmm2.covariances_)


@pytest.mark.parametrize("seed, max_iter, tol", [
    (0, 2, 1e-7),  # strict non-convergence
    (1, 2, 1e-1),  # loose non-convergence
    (3, 300, 1e-7),  # strict convergence
    (4, 300, 1e-1),  # loose convergence
])
def test_bayesian_mixture_fit_predict(seed, max_iter, tol):
  rng = np.random.RandomState(seed)
  rand_data = RandomData(rng, n_samples=50, scale=7)
  n_components = 2 * rand_data.n_components

  for covar_type in COVARIANCE_CASES:
    bgmm1 = BayesianGaussianMixture(n_components=n_components,
                                    max_iter=max_iter, random_state=rng,
                                    tol=tol, reg_covar=0)
    bgmm1.covariance_type = covar_type
    bgmm2 = copy.deepcopy(bgmm1)
    X = rand_data.X[covar_type]
    Y_pred1 = bgmm1.fit(X).predict(X)
    Y_pred2 = bgmm2.fit_predict(X)
    assert_array_equal(Y_pred1, Y_pred2)


def test_bayesian_mixture_fit_predict_n_init():
  X = np.random.RandomState(0).randn(50, 5)
  gm = BayesianGaussianMixture(n_components=5, n_init=10, random_state=0)
  y_pred1 = gm.fit_predict(X)
  y_pred2 = gm.predict(X)
  assert_array_equal(y_pred1, y_pred2)


def test_bayesian_mixture_predict_predict_proba():
  rng = np.random.RandomState(0)
  rand_data = RandomData(rng)
  for prior_type, covar_type in CASES:
    X = rand_data.X[covar_type]
    Y = rand_data.Y
    bgmm = BayesianGaussianMixture(
        n_components=rand_data.n_components, random_state=rng,
        weight_concentration_prior_type=prior_type,
        covariance_type=covar_type)
    msg = ("This BayesianGaussianMixture instance is not fitted yet. "
           "Call 'fit' with appropriate arguments before using this "
           "estimator.")
    with pytest.raises(NotFittedError, match=msg):
      bgmm.predict(X)
    bgmm.fit(X)
    Y_pred = bgmm.predict(X)
    Y_pred_proba = bgmm.predict_proba(X).argmax(axis=1)
    assert_array_equal(Y_pred, Y_pred_proba)
    assert adjusted_rand_score(Y, Y_pred) >= 0.95
