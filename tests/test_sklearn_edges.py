"""Edge parameters scikit-learn accepts: gmmjax behaves as it does, or
refuses with a clear message where scikit-learn's behaviour is silently
wrong (issue 18). float64, from scikit-learn's own initial parameters where
the fit itself is compared.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

import gmmjax as gx


def _both(X, **kwargs):
  """(scikit-learn, gmmjax) fitted with the same parameters; gmmjax starts
  from scikit-learn's initialisation (its k-means draws differ)."""
  sk = SkGMM(**{**kwargs, "max_iter": 0}).fit(X)
  start = dict(weights_init=sk.weights_, means_init=sk.means_,
               precisions_init=sk.precisions_)
  sk = SkGMM(**kwargs, **start).fit(X)
  return sk, gx.GaussianMixture(**kwargs, **start).fit(X)


def _assert_same_fit(sk, gm):
  assert gm.n_iter_ == sk.n_iter_ and gm.converged_ == sk.converged_
  np.testing.assert_allclose(gm.lower_bound_, sk.lower_bound_, rtol=1e-6)
  np.testing.assert_allclose(gm.means_, sk.means_, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(gm.covariances_, sk.covariances_, rtol=1e-6,
                             atol=1e-9)


@pytest.mark.parametrize("n_samples", [2, 3])
def test_one_component_on_very_few_samples(n_samples, x64):
  # One component starts from all the data: no initialisation to share
  # (and scikit-learn refuses its own weights_ of 1 + 1e-15 as weights_init).
  X = np.random.RandomState(0).normal(size=(n_samples, 2))
  _assert_same_fit(SkGMM(1).fit(X), gx.GaussianMixture(1).fit(X))


def test_one_sample_is_refused_as_scikit_learn_refuses_it():
  X = np.ones((1, 2))
  with pytest.raises(ValueError) as theirs:
    SkGMM(1).fit(X)
  with pytest.raises(ValueError) as ours:
    gx.GaussianMixture(1).fit(X)
  assert str(ours.value) == str(theirs.value)


def test_tol_zero_runs_max_iter_and_warns(x64):
  X = np.random.RandomState(1).normal(size=(50, 2))
  with pytest.warns(ConvergenceWarning):
    sk, gm = _both(X, n_components=2, tol=0.0, max_iter=30, random_state=0)
  assert gm.n_iter_ == 30 and not gm.converged_
  _assert_same_fit(sk, gm)


def test_reg_covar_zero(x64):
  rng = np.random.RandomState(2)
  X = np.concatenate([rng.normal(-3, 1, (40, 2)), rng.normal(3, 1, (40, 2))])
  _assert_same_fit(*_both(X, n_components=2, reg_covar=0.0, random_state=0))
  # One point per component: singular covariances, refused by both.
  msg = "ill-defined empirical covariance"
  with pytest.raises(ValueError, match=msg):
    SkGMM(4, reg_covar=0.0, random_state=0).fit(X[:4])
  with pytest.raises(ValueError, match=msg):
    gx.GaussianMixture(4, reg_covar=0.0, random_state=0).fit(X[:4])


@pytest.mark.parametrize("change", [dict(n_components=3),
                                    dict(covariance_type="diag")])
def test_warm_start_with_a_changed_model_is_refused(change):
  # scikit-learn silently continues the fitted 2-component full model.
  X = np.random.RandomState(3).normal(size=(60, 2))
  if "n_components" in change:
    sk = SkGMM(2, warm_start=True, random_state=0).fit(X)
    sk.set_params(**change).fit(X)
    assert sk.means_.shape == (2, 2)  # (what gmmjax refuses to do silently)
  gm = gx.GaussianMixture(2, warm_start=True, random_state=0).fit(X)
  with pytest.raises(ValueError, match="warm_start=True continues the fitted"
                     " model .2 components, covariance_type='full'.*"
                     "warm_start=False"):
    gm.set_params(**change).fit(X)
  gm.set_params(warm_start=False).fit(X)  # a fresh fit of the new model
  assert gm.weights_.shape == (change.get("n_components", 2),)


def test_weights_init_from_a_fitted_model(x64):
  # A fitted model's weights_ may exceed 1 by a rounding error (1 + 2e-16
  # for one component); they are a valid weights_init.
  X = np.random.RandomState(5).normal(size=(20, 2))
  gm = gx.GaussianMixture(1, weights_init=np.array([1.0 + 2e-16])).fit(X)
  np.testing.assert_allclose(gm.weights_, [1.0])
  with pytest.raises(ValueError, match=r"range \[0, 1\]"):
    gx.GaussianMixture(1, weights_init=np.array([1.0 + 1e-6])).fit(X)


def test_more_restarts_than_distinct_points(x64):
  X = np.repeat(np.random.RandomState(4).normal(size=(3, 2)), 5, axis=0)
  sk = SkGMM(2, n_init=20, random_state=0).fit(X)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    gm = gx.GaussianMixture(2, n_init=20, random_state=0).fit(X)
  # Every restart reaches one of few optima; the best is scikit-learn's.
  np.testing.assert_allclose(gm.lower_bound_, sk.lower_bound_, rtol=1e-6)
  assert gm.converged_


def test_more_components_than_distinct_points_warns_as_scikit_learn(x64):
  X = np.repeat(np.random.RandomState(4).normal(size=(3, 2)), 5, axis=0)
  with pytest.warns(ConvergenceWarning, match="distinct clusters"):
    SkGMM(4, random_state=0).fit(X)
  with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(3\) "
                    r"found smaller than n_components \(4\)"):
    gm = gx.GaussianMixture(4, random_state=0).fit(X)
  assert gm.n_degenerate_ >= 1
