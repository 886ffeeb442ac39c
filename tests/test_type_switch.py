"""The four covariance types in the full type's program (issue 19).

Small problems fit and evaluate tied, diagonal and spherical mixtures in
the full type's program, the structure a traced code (``type_switch``): a
model-selection sweep over the types compiles once. Checked here: the
projected M-step against each type's estimate written in NumPy, the shared
fit against each type's own program from the same key, and the compile log
of a sweep.
"""

import jax
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import covariance, padding, restarts, type_switch
from tests.conftest import make_blobs

TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def X():
  return make_blobs(11, 60, [[0, 0], [4, 1], [1, 5]])  # 180 x 2


def _numpy_estimate(ctype, nk, diff, sxx, reg):
  """Each type's M-step covariance (scikit-learn's formulas), from full
  second moments ``sxx`` (K, D, D) around a zero shift."""
  outer = diff[:, :, None] * diff[:, None, :]
  cov = sxx / nk[:, None, None] - outer
  d = diff.shape[1]
  if ctype == "full":
    return cov + reg * np.eye(d)
  if ctype == "tied":
    tied = (sxx.sum(0) - np.einsum("k,kd,ke->de", nk, diff, diff)) / nk.sum()
    return np.broadcast_to(tied + reg * np.eye(d), cov.shape)
  var = np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0)
  if ctype == "diag":
    return np.stack([np.diag(v + reg) for v in var])
  spherical = np.maximum(np.diagonal(cov, axis1=1, axis2=2).mean(1), 0.0)
  return np.stack([(s + reg) * np.eye(d) for s in spherical])


@pytest.mark.parametrize("ctype", TYPES)
def test_projected_estimate_is_each_types_estimate(ctype, x64):
  rng = np.random.default_rng(3)
  k, d = 4, 3
  nk = rng.uniform(0.5, 20.0, k)
  a = rng.normal(size=(k, 6, d))
  sxx = np.einsum("kni,knj->kij", a, a)
  diff = rng.normal(size=(k, d)) * 0.3
  # A component whose variance comes out negative by rounding: the
  # diagonal types clip it at 0 before adding reg_covar.
  diff[1, 0] = np.sqrt(sxx[1, 0, 0] / nk[1]) * (1 + 1e-9)
  got = type_switch.estimate(nk, diff, sxx, 1e-3, type_switch.CODES[ctype])
  want = _numpy_estimate(ctype, nk, diff, sxx, 1e-3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ctype", TYPES)
def test_host_conversions_round_trip(ctype):
  rng = np.random.default_rng(4)
  k, d = 3, 2
  shape = covariance.covariance_shape(ctype, k, d)
  a = rng.uniform(0.5, 2.0, shape)
  full = type_switch.to_full(a, ctype, k, d)
  assert full.shape == (k, d, d)
  np.testing.assert_array_equal(type_switch.from_full(full, ctype), a)
  # With a leading restart axis too.
  np.testing.assert_array_equal(
      type_switch.from_full(np.stack([full, full]), ctype), np.stack([a, a]))


@pytest.mark.parametrize("ctype,method", [
    ("tied", "kmeans"), ("diag", "random"), ("spherical", "kmeans"),
    ("tied", "random")])
def test_shared_program_fits_as_the_types_own(X, ctype, method, x64):
  """Initialisation (hard and soft responsibilities) and EM from the same
  key: the type's own program and the full type's with the structure code
  give the same fit."""
  k, slots = 3, 8
  common = dict(n_init=2, method=method, max_iter=60, tol=1e-9,
                reg_covar=1e-6, sample_weight=None, callback=None,
                n_active=k)
  key = jax.random.key(5)
  own = restarts.restart_results(key, X, slots, covariance_type=ctype,
                                 **common)
  shared = restarts.restart_results(key, X, slots, covariance_type="full",
                                    structure=type_switch.CODES[ctype],
                                    **common)
  own, shared = jax.device_get((own, shared))
  np.testing.assert_array_equal(shared.n_iter, own.n_iter)
  np.testing.assert_array_equal(shared.converged, own.converged)
  assert not shared.failed.any()
  np.testing.assert_allclose(shared.log_likelihood, own.log_likelihood,
                             rtol=1e-12)
  got = type_switch.params_from_full(
      padding.unpad_components(shared.params, k), ctype)
  want = padding.unpad_components(own.params, k)
  for name in ("weights", "means", "covariances", "precisions_cholesky"):
    np.testing.assert_allclose(getattr(got, name), getattr(want, name),
                               rtol=1e-9, atol=1e-12, err_msg=name)
  np.testing.assert_array_equal(shared.n_degenerate, own.n_degenerate)


@pytest.mark.parametrize("ctype", ["diag", "spherical"])
def test_shared_program_fits_float32_as_the_types_own(X, ctype):
  """The same in float32 (the default): the sums' order differs, so the
  fits agree to float32 rounding, not bit for bit."""
  X32 = np.asarray(X, np.float32)
  common = dict(n_init=1, method="kmeans", max_iter=100, tol=1e-5,
                reg_covar=1e-6, sample_weight=None, callback=None,
                n_active=3)
  key = jax.random.key(6)
  own = restarts.restart_results(key, X32, 8, covariance_type=ctype,
                                 **common)
  shared = restarts.restart_results(key, X32, 8, covariance_type="full",
                                    structure=type_switch.CODES[ctype],
                                    **common)
  own, shared = jax.device_get((own, shared))
  assert shared.params.means.dtype == np.float32
  np.testing.assert_allclose(shared.log_likelihood, own.log_likelihood,
                             rtol=1e-5)
  got = type_switch.params_from_full(
      padding.unpad_components(shared.params, 3), ctype)
  want = padding.unpad_components(own.params, 3)
  np.testing.assert_allclose(got.means, want.means, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-3,
                             atol=1e-4)


def test_a_sweep_over_types_and_counts_compiles_once(X, compiles):
  """n_components 1..6 x the four types, fit and bic, as users write the
  sweep: after the first type, nothing compiles. The models are each
  type's own (test_padding checks the estimator's fits against gx.fit in
  the type's own program): covariances and factors agree, and
  score_samples in the shared program is gx.log_prob in the type's own."""
  gm = gx.GaussianMixture(1, covariance_type="full", random_state=0).fit(X)
  gm.bic(X), gm.predict_proba(X)
  del compiles[:]
  kept = {}
  for ctype in TYPES:
    for k in range(1, 7):
      gm = gx.GaussianMixture(k, covariance_type=ctype,
                              random_state=0).fit(X)
      assert gm.covariances_.shape == covariance.covariance_shape(ctype, k, 2)
      assert np.isfinite(gm.bic(X))
      assert gm.predict_proba(X).shape == (180, k)
      if k == 3:  # the data's own count: well-conditioned components
        kept[ctype] = (gm, gm.score_samples(X))
  assert compiles == []
  for ctype, (gm, scores) in kept.items():
    # precisions_ is P P^T (or P**2) of the factors: the inverse of the
    # covariances only if both are the type's own.
    prec, cov = gm.precisions_, gm.covariances_
    if ctype in ("full", "tied"):
      np.testing.assert_allclose(prec @ cov, np.broadcast_to(
          np.eye(2), prec.shape), atol=1e-4)
    else:
      np.testing.assert_allclose(prec * cov, 1.0, rtol=1e-4)
    np.testing.assert_allclose(
        scores, np.asarray(gx.log_prob(gm.params_, X)), rtol=1e-5,
        atol=1e-5)
