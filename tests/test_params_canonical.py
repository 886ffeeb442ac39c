"""GMMParams has one canonical form: factors that match the covariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx

TYPES = ["full", "tied", "diag", "spherical"]


def _ill_conditioned():
  """float32 data whose features differ by 1e6 in scale, one pair nearly
  collinear: the factors gmmjax computes must still pass the check."""
  rng = np.random.default_rng(0)
  X = rng.normal(size=(240, 3)) * np.array([1e3, 1.0, 1e-3])
  X[:, 1] += 1e-3 * X[:, 0]
  return X.astype(np.float32)


def _dense_precisions(params):
  """``P P^T`` in float64, the precisions the factors stand for."""
  pc = np.asarray(params.precisions_cholesky, np.float64)
  if params.covariance_type in ("full", "tied"):
    return pc @ np.swapaxes(pc, -1, -2)
  return pc * pc


def _inverse(params):
  cov = np.asarray(params.covariances, np.float64)
  return np.linalg.inv(cov) if params.covariance_type in ("full", "tied") \
      else 1.0 / cov


@pytest.mark.parametrize("ctype", TYPES)
def test_tree_average_is_refused_then_recomputed(ctype):
  X = _ill_conditioned()
  a = gx.init_params(jax.random.key(0), X, 2, covariance_type=ctype)
  fitted = gx.fit(X, a, max_iter=5)  # fitted factors pass the check
  b = gx.init_params(jax.random.key(1), X, 2, covariance_type=ctype)
  mid = jax.tree.map(lambda u, v: (u + v) / 2, fitted.params, b)
  with pytest.raises(ValueError, match="recompute_factors"):
    gx.fit(X, mid, max_iter=1)
  fixed = mid.recompute_factors()
  np.testing.assert_allclose(_dense_precisions(fixed), _inverse(mid),
                             rtol=2e-3)
  np.testing.assert_array_equal(fixed.covariances, mid.covariances)
  assert gx.fit(X, fixed, max_iter=1).params.dtype == jnp.float32


def test_estimator_refuses_inconsistent_params():
  X = _ill_conditioned()
  p = gx.init_params(jax.random.key(0), X, 2, covariance_type="diag")
  bad = p.replace(precisions_cholesky=2 * p.precisions_cholesky)
  with pytest.raises(ValueError, match="not a Cholesky factor"):
    gx.GaussianMixture.from_params(bad)
  assert gx.GaussianMixture.from_params(bad.recompute_factors()).predict(
      X).shape == (240,)
