"""The public names of DESIGN.md exist and are exported."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx

DESIGN_NAMES = [
    "GMMParams", "make_params", "init_params", "e_step", "m_step",
    "log_likelihood", "log_prob", "fit", "FitResult", "predict",
    "predict_proba", "sample", "bic", "aic", "n_parameters",
    "GaussianMixture",
]


def test_design_names_exported():
  for name in DESIGN_NAMES:
    assert name in gx.__all__, name
    assert callable(getattr(gx, name)) or isinstance(getattr(gx, name), type)


def test_all_is_importable_and_documented():
  for name in gx.__all__:
    obj = getattr(gx, name)
    if callable(obj):
      assert obj.__doc__, f"{name} has no docstring"


def test_estimator_methods():
  for method in ["fit", "fit_predict", "predict", "predict_proba", "score",
                 "score_samples", "sample", "bic", "aic", "get_params",
                 "set_params"]:
    assert callable(getattr(gx.GaussianMixture, method)), method


def test_import_does_not_import_scikit_learn():
  """``import gmmjax`` stays light (issue 19): scikit-learn (~1-2 s) loads
  with the estimators, on first use (a fresh process: this one has it)."""
  code = ("import sys, gmmjax; assert 'sklearn' not in sys.modules, "
          "sorted(m for m in sys.modules if m.startswith('sklearn'))[:5]")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lazy_estimators_are_ordinary_names():
  from sklearn.base import BaseEstimator

  from gmmjax import BayesianGaussianMixture, GaussianMixture
  assert {"GaussianMixture", "BayesianGaussianMixture"} <= set(dir(gx))
  assert gx.GaussianMixture is GaussianMixture
  assert gx.BayesianGaussianMixture is BayesianGaussianMixture
  # The bases are adopted once scikit-learn is imported and an estimator
  # is made or used (sklearn_compat.adopt_sklearn): in this process an
  # earlier test may not have made one since importing scikit-learn.
  GaussianMixture()
  assert issubclass(GaussianMixture, BaseEstimator)
  assert issubclass(BayesianGaussianMixture, BaseEstimator)


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match="has no attribute 'Gaussian'"):
    gx.Gaussian  # noqa: B018


# Covariance shapes per type for K components of D features, scikit-learn's.
def _cov_shape(cov_type, k, d):
  return {"full": (k, d, d), "tied": (d, d), "diag": (k, d),
          "spherical": (k,)}[cov_type]


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_contract_shapes_and_dtypes(cov_type):
  """Every call of DESIGN.md's contract returns its documented shapes."""
  n, k, d, max_iter = 40, 3, 2, 7
  X = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
  params = gx.init_params(jax.random.key(0), X, k, covariance_type=cov_type)
  cov = _cov_shape(cov_type, k, d)
  chex.assert_shape([params.weights, params.means, params.covariances,
                     params.precisions_cholesky], [(k,), (k, d), cov, cov])
  chex.assert_type(jax.tree.leaves(params), jnp.float32)

  log_resp, mean_ll = gx.e_step(params, X)
  chex.assert_shape([log_resp, mean_ll], [(n, k), ()])
  new = gx.m_step(X, log_resp, covariance_type=cov_type)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
  chex.assert_shape([gx.log_likelihood(params, X), gx.log_prob(params, X),
                     gx.predict(params, X), gx.predict_proba(params, X)],
                    [(), (n,), (n,), (n, k)])
  chex.assert_type(gx.predict(params, X), jnp.int32)

  result = gx.fit(X, params, max_iter=max_iter)
  chex.assert_trees_all_equal_shapes_and_dtypes(result.params, params)
  chex.assert_shape([result.log_likelihood, result.n_iter, result.converged],
                    [(), (), ()])
  chex.assert_type([result.n_iter, result.converged], [jnp.int32, jnp.bool_])
  # At least max_iter entries (rounded up so nearby max_iter share a program).
  chex.assert_rank(result.history, 1)
  assert result.history.shape[0] >= max_iter

  draws, labels = gx.sample(jax.random.key(1), params, 11)
  chex.assert_shape([draws, labels], [(11, d), (11,)])


def test_params_repr_shows_values_and_dtype_or_traced_shapes():
  p = gx.make_params(jnp.array([0.25, 0.75]), jnp.array([[1.5, -2.0],
                                                          [3.25, 0.5]]),
                     jnp.array([0.5, 2.0]), covariance_type="spherical")
  text = repr(p)
  assert "dtype=float32" in text and "'spherical'" in text
  for value in ("0.25", "0.75", "1.5", "-2.", "3.25", "2."):
    assert value in text, (value, text)
  seen = []
  jax.jit(lambda q: seen.append(repr(q)) or q.weights)(p)
  assert "weights=<float32[2]>" in seen[0]
  assert "means=<float32[2, 2]>" in seen[0]
