"""Hard data: every case users report against GMM libraries, one named test.

Each case asserts finite parameters with the default ``reg_covar``, a fit
that is not flagged as failed, and (float64) agreement with scikit-learn's
``GaussianMixture`` started from the same initial parameters wherever
scikit-learn computes the case accurately. Where scikit-learn itself is
inaccurate (its expanded quadratic forms lose digits on data far from the
origin), the reference is scikit-learn on the same data translated to the
origin, which is the same problem mathematically.

Initial parameters are built here in NumPy from known labels (an
independent M-step), so the tests do not depend on ``init_params``; most
data sets share one shape so that each covariance type compiles ``fit`` only
a few times.
"""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGMM

import gmmjax as gx
from gmmjax._src.validation import check_array, check_sample_weight
from tests.conftest import numpy_m_step as m_step_from_resp

COV_TYPES = ["full", "tied", "diag", "spherical"]
REG = 1e-6
TOL = 1e-8
MAX_ITER = 100
N, D, K = 60, 3, 3  # the shape most cases share


# -- helpers -----------------------------------------------------------------


def numpy_m_step(X, labels, k, ctype, reg=REG):
  """Weights, means and covariances from hard labels (scikit-learn's M-step)."""
  resp = np.zeros((X.shape[0], k))
  resp[np.arange(X.shape[0]), labels] = 1.0
  return m_step_from_resp(X, resp, ctype, reg)


def make_init(X, labels, k, ctype, dtype=jnp.float64):
  w, mu, cov = numpy_m_step(X, labels, k, ctype)
  return gx.make_params(jnp.asarray(w, dtype), jnp.asarray(mu, dtype),
                        jnp.asarray(cov, dtype), covariance_type=ctype)


def run_fit(X, p0, reg=REG, dtype=jnp.float64):
  return gx.fit(jnp.asarray(X, dtype), p0, max_iter=MAX_ITER, tol=TOL,
                reg_covar=reg)


def sk_fit(X, p0, reg=REG):
  """scikit-learn from the same initial parameters, or None if it raises."""
  sk = SkGMM(p0.n_components, covariance_type=p0.covariance_type, tol=TOL,
             max_iter=MAX_ITER, reg_covar=reg,
             weights_init=np.asarray(p0.weights),
             means_init=np.asarray(p0.means),
             precisions_init=np.asarray(p0.precisions))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", SkConvergenceWarning)
    try:
      return sk.fit(X)
    except ValueError:
      return None


def assert_finite(result):
  for leaf in jax.tree.leaves(result.params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.isfinite(float(result.log_likelihood))
  assert not bool(result.failed)


def reference_log_prob(params, X):
  """Per-sample log density from explicit differences ``x - mu`` (SciPy)."""
  X = np.asarray(X, np.float64)
  ctype, k, d = params.covariance_type, params.n_components, X.shape[1]
  cov = np.asarray(params.covariances, np.float64)
  covs = {"full": lambda: cov,
          "tied": lambda: np.repeat(cov[None], k, 0),
          "diag": lambda: np.stack([np.diag(c) for c in cov]),
          "spherical": lambda: cov[:, None, None] * np.eye(d)}[ctype]()
  means = np.asarray(params.means, np.float64)
  cols = []
  for j in range(k):
    diff = X - means[j]
    chol = np.linalg.cholesky(covs[j])
    z = np.linalg.solve(chol, diff.T)
    cols.append(np.log(float(params.weights[j]))
                - 0.5 * (d * np.log(2 * np.pi) + np.sum(z * z, 0))
                - np.sum(np.log(np.diag(chol))))
  return logsumexp(np.stack(cols, 1), axis=1)


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


def assert_matches_sklearn(res, sk, X, rtol=1e-6, offset=None):
  """Fitted attributes equal scikit-learn's (``offset`` shifts sk's means)."""
  assert sk is not None
  sk_means = sk.means_ if offset is None else sk.means_ + offset
  assert int(res.n_iter) == sk.n_iter_
  assert rel(res.params.weights, sk.weights_) < rtol
  assert rel(res.params.means, sk_means) < rtol
  assert rel(res.params.covariances, sk.covariances_) < rtol
  np.testing.assert_allclose(float(res.log_likelihood),
                             sk.score(X if offset is None else X - offset),
                             rtol=rtol, atol=rtol)


def check_case(X, labels, k, ctype, *, centre=None, rtol=1e-6):
  """Fit ``X`` from the labels' M-step, compare with scikit-learn."""
  X = np.asarray(X, np.float64)
  p0 = make_init(X, labels, k, ctype)
  res = run_fit(X, p0)
  assert_finite(res)
  assert res.params.means.dtype == jnp.float64
  # The returned log-likelihood is that of the returned params (to the
  # rounding of expanded quadratic forms, ~eps * |precision| * |x - c|^2).
  np.testing.assert_allclose(float(res.log_likelihood),
                             np.mean(reference_log_prob(res.params, X)),
                             rtol=1e-7, atol=1e-9)
  if centre is None:
    assert_matches_sklearn(res, sk_fit(X, p0), X, rtol=rtol)
  else:
    q0 = make_init(X - centre, labels, k, ctype)
    assert_matches_sklearn(res, sk_fit(X - centre, q0), X, rtol=rtol,
                           offset=centre)
  return res, p0


def blobs(seed, n=N, d=D, k=K, spread=6.0):
  """``k`` well separated round blobs, ``n // k`` points each, and labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0.0, spread, (k, d))
  labels = np.repeat(np.arange(k), n // k)
  return centres[labels] + rng.normal(0.0, 1.0, (n, d)), labels


# -- the hard cases ----------------------------------------------------------


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_component_collapsing_onto_one_point(ctype, x64):
  # One component starts on a single isolated sample: its covariance
  # collapses to reg_covar * I, its weight to 1/N, and everything stays
  # finite (the log-likelihood is large but finite).
  X, labels = blobs(0)
  X[-1] = X[:-1].mean(0) + 25.0
  labels = labels.copy()
  labels[labels == K - 1] = K - 2
  labels[-1] = K - 1
  res, _ = check_case(X, labels, K, ctype)
  if ctype in ("full", "diag", "spherical"):
    single = np.asarray(res.params.covariances)[K - 1]
    expected = {"full": REG * np.eye(D), "diag": np.full(D, REG),
                "spherical": REG}[ctype]
    # 1e-5, not 1e-12: second moments summed around one global shift leave
    # eps * |mu - shift|^2 in the collapsed variance (the lead's known
    # stats.py issue, tests/test_numerics.py).
    np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-5 * REG)
    np.testing.assert_allclose(float(res.params.weights[K - 1]), 1.0 / N,
                               rtol=1e-9)
    np.testing.assert_allclose(np.asarray(res.params.means)[K - 1], X[-1],
                               rtol=1e-12)
  # The collapsed component is reported (tied: the shared covariance keeps
  # the other components' spread, nothing collapses); no jitter was needed.
  assert int(res.n_degenerate) == (0 if ctype == "tied" else 1)
  assert float(res.jitter) == 0.0
  assert bool(res.degraded) == (ctype != "tied")


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_component_losing_all_mass(ctype, x64):
  # A component initialised far from every sample gets responsibilities
  # that underflow to 0. Policy (docs/robustness.md): it is kept with the
  # 10 * eps floor on N_k, its covariance falls back to reg_covar and its
  # mean stays where it was (scikit-learn's falls to the origin). The other components and the
  # log-likelihood agree with scikit-learn, and nothing is NaN.
  X, labels = blobs(1, k=2)
  X = X + 10.0  # keep scikit-learn's fallback mean (the origin) data-free
  w, mu, cov = numpy_m_step(X, labels, 2, ctype)
  far = X.mean(0) + 1e3
  w = np.append(w, 0.1)
  w = w / w.sum()
  mu = np.vstack([mu, far])
  cov_far = {"full": np.eye(D)[None], "tied": None, "diag": np.ones((1, D)),
             "spherical": np.ones(1)}[ctype]
  cov = cov if ctype == "tied" else np.concatenate([cov, cov_far])
  p0 = gx.make_params(jnp.asarray(w), jnp.asarray(mu), jnp.asarray(cov),
                      covariance_type=ctype)
  res = run_fit(X, p0)
  assert_finite(res)
  weights = np.asarray(res.params.weights)
  assert weights[2] < 1e-12
  # Reported as degenerate: empty (and, but for tied, collapsed to reg_covar).
  assert int(res.n_degenerate) == 1 and bool(res.degraded)
  np.testing.assert_allclose(weights[:2].sum(), 1.0, rtol=1e-12)
  if ctype != "tied":
    covs = np.asarray(res.params.covariances)
    expected = {"full": REG * np.eye(D), "diag": np.full(D, REG),
                "spherical": REG}[ctype]
    np.testing.assert_allclose(covs[2], expected, rtol=1e-6)
  # One step from p0 shows where the empty component's mean goes: it stays
  # where it was (statistics are summed around each component's own mean).
  one = gx.fit(jnp.asarray(X), p0, max_iter=1, tol=0.0, reg_covar=REG)
  np.testing.assert_allclose(np.asarray(one.params.means)[2], mu[2],
                             rtol=1e-12)
  sk = sk_fit(X, p0)
  assert sk is not None
  assert int(res.n_iter) == sk.n_iter_
  assert rel(weights[:2], sk.weights_[:2]) < 1e-6
  assert rel(np.asarray(res.params.means)[:2], sk.means_[:2]) < 1e-6
  np.testing.assert_allclose(float(res.log_likelihood), sk.score(X),
                             rtol=1e-9)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_exactly_repeated_rows(ctype, x64):
  rng = np.random.default_rng(2)
  distinct = rng.normal(0.0, 4.0, (N // 4, D))
  X = np.repeat(distinct, 4, axis=0)
  labels = np.argsort(np.argsort(distinct[:, 0]))  # rank by first coordinate
  labels = np.repeat(labels * K // (N // 4), 4)
  check_case(X, labels, K, ctype)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_constant_feature(ctype, x64):
  X, labels = blobs(3)
  X[:, 1] = 7.25  # zero variance in one feature: reg_covar keeps it PD
  res, _ = check_case(X, labels, K, ctype)
  if ctype == "diag":
    np.testing.assert_allclose(np.asarray(res.params.covariances)[:, 1], REG,
                               rtol=1e-6)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_collinear_features(ctype, x64):
  X, labels = blobs(4)
  X[:, 2] = X[:, 0] - 2.0 * X[:, 1]  # rank-2 covariances in 3-D
  res, _ = check_case(X, labels, K, ctype)
  if ctype in ("full", "tied"):
    covs = np.asarray(res.params.covariances).reshape(-1, D, D)
    assert np.min(np.linalg.eigvalsh(covs)) > 0.5 * REG


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_more_components_than_distinct_points(ctype, x64):
  # Two distinct points, three components: two components share a point.
  X = np.repeat(np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]]), N // 2, 0)
  labels = np.repeat([0, 1], N // 2)
  labels[N // 2 + N // 4:] = 2  # components 1 and 2 both sit on point 1
  res, _ = check_case(X, labels, K, ctype)
  np.testing.assert_allclose(np.asarray(res.params.weights).sum(), 1.0)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_offset_1e6(ctype, x64):
  # scikit-learn's own float64 loses digits here for tied/diag/spherical
  # (avg_X2 - 2 avg_X_means + avg_means2 at 1e12 magnitude); the reference
  # is scikit-learn on the centred data.
  X, labels = blobs(5)
  check_case(X + 1e6, labels, K, ctype, centre=1e6, rtol=1e-6)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_scale_1e_minus_6(ctype, x64):
  # Variances of 1e-12 next to reg_covar=1e-6: the regulariser dominates,
  # exactly as in scikit-learn.
  X, labels = blobs(6)
  check_case(X * 1e-6, labels, K, ctype)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_scale_1e6(ctype, x64):
  X, labels = blobs(7)
  check_case(X * 1e6, labels, K, ctype)


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_heavy_outliers(ctype, x64):
  # Cauchy outliers three orders of magnitude out, all in one component
  # with the bulk: the component's covariance is huge but finite.
  X, labels = blobs(8)
  rng = np.random.default_rng(8)
  X[:5] = rng.standard_cauchy((5, D)) * 1e3
  res, _ = check_case(X, labels, K, ctype)
  assert float(res.log_likelihood) > -1e3


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_more_features_than_samples_per_component(ctype, x64):
  # D = 12 > N / K = 10: the empirical covariances are rank deficient.
  X, labels = blobs(9, n=30, d=12, k=3, spread=3.0)
  res, _ = check_case(X, labels, 3, ctype)
  if ctype == "full":
    eig = np.linalg.eigvalsh(np.asarray(res.params.covariances))
    assert np.min(eig) > 0.5 * REG


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_one_dimensional_data(ctype, x64):
  X, labels = blobs(10, d=1, k=2)
  res, _ = check_case(X, labels, 2, ctype)
  expected = {"full": (2, 1, 1), "tied": (1, 1), "diag": (2, 1),
              "spherical": (2,)}[ctype]
  assert res.params.covariances.shape == expected


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_single_component(ctype, x64):
  # K = 1 has a closed form: the sample mean and the (biased) sample
  # covariance of the type, plus reg_covar, reached in one M-step.
  X, _ = blobs(11)
  X = X @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, -0.4], [0.0, 0.0, 0.5]])
  res, _ = check_case(X, np.zeros(N, int), 1, ctype)
  mean = X.mean(0)
  full = np.cov(X.T, bias=True)
  cov = {"full": full[None] + REG * np.eye(D), "tied": full + REG * np.eye(D),
         "diag": np.diag(full)[None] + REG,
         "spherical": np.diag(full).mean()[None] + REG}[ctype]
  np.testing.assert_allclose(np.asarray(res.params.means)[0], mean,
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(res.params.covariances), cov,
                             rtol=1e-10)
  np.testing.assert_allclose(np.asarray(res.params.weights), [1.0])


# -- a fit that goes numerically bad is flagged, not returned as NaN ----------


def _one_repeated_point_component():
  """Blobs whose last component holds one point repeated 6 times."""
  X, labels = blobs(12)
  X[-6:] = X[-1]
  labels = labels.copy()
  labels[labels == K - 1] = K - 2
  labels[-6:] = K - 1
  return X, labels


def test_reg_covar_zero_collapse_is_flagged(x64):
  # A component on one repeated point with reg_covar=0 has a singular
  # covariance: scikit-learn raises; gmmjax stops, keeps the last finite
  # params and sets `failed`.
  X, labels = _one_repeated_point_component()
  p0 = make_init(X, labels, K, "full")
  assert sk_fit(X, p0, reg=0.0) is None
  res = gx.fit(jnp.asarray(X), p0, max_iter=MAX_ITER, tol=TOL, reg_covar=0.0)
  assert bool(res.failed)
  assert not bool(res.converged)
  assert int(res.n_iter) < MAX_ITER
  for leaf in jax.tree.leaves(res.params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # The reported log-likelihood is that of the returned params.
  np.testing.assert_allclose(float(res.log_likelihood), float(
      gx.log_likelihood(res.params, jnp.asarray(X))), rtol=1e-9)
  # The same from NumPy and the returned precision factor P (log N = log w
  # - D/2 log 2 pi + sum log diag P - |(x - mu) P|^2 / 2), to rounding.
  X64 = np.asarray(X, np.float64)
  prec = np.asarray(res.params.precisions_cholesky, np.float64)
  means = np.asarray(res.params.means, np.float64)
  cols = [np.log(float(res.params.weights[j]))
          - 0.5 * X.shape[1] * np.log(2 * np.pi)
          + np.sum(np.log(np.diag(prec[j])))
          - 0.5 * np.sum(((X64 - means[j]) @ prec[j]) ** 2, axis=1)
          for j in range(K)]
  np.testing.assert_allclose(float(res.log_likelihood),
                             np.mean(logsumexp(np.stack(cols, 1), axis=1)),
                             rtol=1e-9)
  # Against explicit differences and NumPy's own Cholesky of the returned
  # covariances. The collapsed covariance is rounding noise (condition
  # number about 1e15), so its Cholesky factor, and the density, differ
  # between implementations: a GPU's solver (3.3e-4 relative on an H200,
  # 2026-11-26), the factor gmmjax writes out for a few features
  # (cholesky.UNROLLED_MAX_DIM: 3e-5 on CPU). Whether NumPy can factorise
  # that noise at all is itself rounding: the M-step's fusion decides its
  # last digits, and a program change turned a matrix NumPy factorised into
  # one it refuses. Then the matrix must be singular to rounding.
  try:
    reference = np.mean(reference_log_prob(res.params, X))
  except np.linalg.LinAlgError:
    eig = np.linalg.eigvalsh(np.asarray(res.params.covariances, np.float64))
    assert np.any(eig[:, 0] <= 10 * np.finfo(np.float64).eps * eig[:, -1])
  else:
    np.testing.assert_allclose(float(res.log_likelihood), reference,
                               rtol=1e-3)


def test_fit_from_non_finite_params_is_flagged(x64):
  # reg_covar=0 on a component holding one repeated point gives an infinite
  # precision already in the initial params: the fit must say so.
  X, labels = _one_repeated_point_component()
  w, mu, cov = numpy_m_step(X, labels, K, "diag", reg=0.0)
  cov[K - 1] = 0.0  # the exact variance of one repeated point
  p0 = gx.make_params(jnp.asarray(w), jnp.asarray(mu), jnp.asarray(cov),
                      covariance_type="diag")
  assert not np.all(np.isfinite(np.asarray(p0.precisions_cholesky)))
  with warnings.catch_warnings():
    # Flagged in the result, not by a NumPy warning from the input checks.
    warnings.simplefilter("error", RuntimeWarning)
    res = gx.fit(jnp.asarray(X), p0, max_iter=MAX_ITER, tol=TOL,
                 reg_covar=0.0)
  assert bool(res.failed)
  assert not bool(res.converged)
  assert int(res.n_iter) == 0


def test_estimator_never_stores_nan_parameters(x64):
  X, _ = blobs(13)
  X[-10:] = X[-1]
  gm = gx.GaussianMixture(K, reg_covar=0.0, random_state=0, n_init=1,
                          init_params="random_from_data")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", gx.ConvergenceWarning)
      gm.fit(X)
  except ValueError as e:
    assert "reg_covar" in str(e)
    return
  for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
    assert np.all(np.isfinite(getattr(gm, attr))), attr


@pytest.mark.parametrize("ctype", ["full", "diag", "spherical"])
def test_collapsed_component_keeps_em_monotone(ctype, x64):
  X = np.array([215.29216514, -106.48744338, 178.67948297, 282.69562304,
                -246.23616586, 201.97035533, 131.05531335, -253.3724373,
                299.3317496, 316.54509562, -224.49213153, 184.38837132,
                97.16715955, -253.63485913, 223.31666069, 285.35614542,
                -218.70369563, 267.7280471])[:, None]
  labels = np.array([2, 2, 0, 1, 1, 1, 2, 1, 0, 0, 1, 0, 1, 2, 2, 2, 0, 0])
  res = gx.fit(jnp.asarray(X), make_init(X, labels, 3, ctype), max_iter=25,
               tol=0.0, reg_covar=REG)
  assert_finite(res)
  hist = np.asarray(res.history)[:int(res.n_iter)]
  assert np.all(np.diff(hist) >= -1e-9 * (1 + np.abs(hist[:-1])))


# -- a narrow component far from the shift (E-step quadratic forms) ----------



def _narrow_far_params(ctype, dtype):
  # A broad component at the origin and one collapsed to reg_covar on an
  # outlier at 1e7.
  w = np.array([50.0, 1.0]) / 51.0
  mu = np.array([[0.0, 0.0], [1e7, 0.0]])
  var = np.array([1.0, REG])
  cov = {"full": var[:, None, None] * np.eye(2),
         "diag": var[:, None] * np.ones(2), "spherical": var}[ctype]
  return gx.make_params(jnp.asarray(w, dtype), jnp.asarray(mu, dtype),
                        jnp.asarray(cov, dtype), covariance_type=ctype)


def _narrow_far_data():
  rng = np.random.default_rng(14)
  return np.concatenate([rng.normal(0.0, 1.0, (50, 2)), [[1e7, 0.0]]])


@pytest.fixture(params=["direct", "guarded"])
def kernels(request):
  """Both E-step paths: the exact direct one and the guarded GEMM forms."""
  if request.param == "guarded":
    request.getfixturevalue("guarded_kernels")
  return request.param


@pytest.mark.parametrize("ctype", ["full", "diag", "spherical"])
def test_log_prob_of_narrow_far_component_float64(ctype, kernels, x64):
  X = _narrow_far_data()
  p = _narrow_far_params(ctype, jnp.float64)
  ref = reference_log_prob(p, X)
  np.testing.assert_allclose(np.asarray(gx.log_prob(p, jnp.asarray(X))), ref,
                             rtol=1e-9, atol=1e-6)
  stats = gx.e_step_stats(p, jnp.asarray(X))
  np.testing.assert_allclose(float(stats.log_likelihood), ref.sum(),
                             rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("ctype", ["diag", "spherical"])
def test_log_prob_of_narrow_far_component_float32(ctype, kernels):
  X = _narrow_far_data()
  p = _narrow_far_params(ctype, jnp.float32)
  ref = reference_log_prob(p, X)
  got = np.asarray(gx.log_prob(p, jnp.asarray(X, jnp.float32)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-2)



@pytest.mark.parametrize("ctype", COV_TYPES)
def test_outliers_with_their_own_components(ctype, x64):
  # Outliers 1e6-1e7 out that kmeans puts in singleton components: the
  # fitted log-likelihood must be that of the returned params and must
  # not be below the initial one (EM never decreases it).
  rng = np.random.default_rng(0)
  bulk = np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal(5, 1, (40, 2))])
  X = np.concatenate([bulk, rng.standard_cauchy((5, 2)) * 1e6])
  labels = np.zeros(len(X), int)
  labels[np.argmin(X[:, 0])] = 1
  labels[np.argmax(X[:, 1])] = 2
  w, mu, cov = numpy_m_step(X, labels, 3, ctype)
  p0 = gx.make_params(jnp.asarray(w), jnp.asarray(mu), jnp.asarray(cov),
                      covariance_type=ctype)
  res = run_fit(X, p0)
  assert_finite(res)
  ll = np.mean(reference_log_prob(res.params, X))
  np.testing.assert_allclose(float(res.log_likelihood), ll, rtol=1e-9)
  assert ll >= np.mean(reference_log_prob(p0, X)) - 1e-9


# -- float32 on the hard cases -----------------------------------------------


def _float32_case(case):
  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(K), N // K)
  if case == "repeated_rows":
    return np.repeat(rng.normal(0.0, 4.0, (N // 4, D)), 4, 0), labels
  X, labels = blobs({"constant_feature": 3, "collinear": 4,
                     "heavy_outliers": 8}[case])
  if case == "constant_feature":
    X[:, 1] = 7.25
  if case == "collinear":
    X[:, 2] = X[:, 0] - 2.0 * X[:, 1]
  if case == "heavy_outliers":
    X[:5] = np.random.default_rng(8).standard_cauchy((5, D)) * 1e3
  return X, labels


@pytest.mark.parametrize("case,ctype", [
    (case, ctype) for case in ("constant_feature", "heavy_outliers",
                               "repeated_rows")
    for ctype in COV_TYPES if (case, ctype) != ("repeated_rows", "full")])
def test_float32_hard_cases_track_float64(case, ctype):
  X, labels = _float32_case(case)
  p32 = make_init(X, labels, K, ctype, dtype=jnp.float32)
  r32 = run_fit(X, p32, dtype=jnp.float32)
  assert r32.params.means.dtype == jnp.float32
  assert_finite(r32)
  with jax.enable_x64(True):
    r64 = run_fit(X, make_init(X, labels, K, ctype))
    ll64 = float(r64.log_likelihood)
  ll32 = float(r32.log_likelihood)
  assert abs(ll32 - ll64) <= 1e-3 * abs(ll64) + 1e-3, (ll32, ll64)


def _smallest_variance(params):
  cov = np.asarray(params.covariances, np.float64)
  if params.covariance_type == "tied":
    cov = cov[None]
  return np.linalg.eigvalsh(cov).min(axis=-1)


def test_float32_repeated_rows_full_reports_jitter():
  # Rows repeated 4 times: in float64 one full component ends on 4 distinct
  # points of R^3 spanning a plane, so its variance across the plane is
  # reg_covar (1e-6) next to a spread of O(10): a condition number of 1e7,
  # beyond float32's resolution. The float32 covariance, from moments that
  # large, comes out indefinite there. It gets the smallest diagonal jitter
  # that factorises it, the fit goes on (no NaN, no `failed`) and the
  # jitter is reported; its log-likelihood then cannot follow float64's
  # (whose value rests on that 1e-6 variance), and is not asserted to.
  X, labels = _float32_case("repeated_rows")
  r32 = run_fit(X, make_init(X, labels, K, "full", dtype=jnp.float32),
                dtype=jnp.float32)
  assert_finite(r32)
  assert bool(r32.degraded)
  jitter = float(r32.jitter)
  scale = float(np.mean(np.var(X, axis=0)))
  eps32 = float(np.finfo(np.float32).eps)
  assert eps32 * 1e-2 * scale < jitter < 1e-2 * scale, jitter
  with jax.enable_x64(True):
    r64 = run_fit(X, make_init(X, labels, K, "full"))
  assert_finite(r64)
  assert float(r64.jitter) == 0.0
  smallest = _smallest_variance(r64.params)
  assert int(r64.n_degenerate) == int(np.sum(smallest <= 2 * REG)) >= 1
  assert smallest.min() / scale < eps32


@pytest.mark.parametrize("ctype", COV_TYPES)
def test_float32_collinear_features_stay_finite(ctype, guarded_kernels):
  # x2 = x0 - 2 x1: every component's covariance is singular but for
  # reg_covar, below float32's rounding of moments of O(10). full/tied need
  # (and report) a jitter; diag/spherical never factorise a matrix. (The
  # GEMM forms large data take; small data's exact direct moments may
  # happen to stay positive definite.)
  X, labels = _float32_case("collinear")
  r32 = run_fit(X, make_init(X, labels, K, ctype, dtype=jnp.float32),
                dtype=jnp.float32)
  assert_finite(r32)
  if ctype in ("full", "tied"):
    assert float(r32.jitter) > 0 and bool(r32.degraded)
    # The covariances returned are positive definite (checked in float64)
    # and their precision factors upper triangular with a positive diagonal.
    cov = np.asarray(r32.params.covariances, np.float64)
    prec = np.asarray(r32.params.precisions_cholesky, np.float64)
    np.linalg.cholesky(cov)
    assert np.all(np.diagonal(prec, axis1=-2, axis2=-1) > 0)
    np.testing.assert_array_equal(prec, np.triu(prec))
    # float64 needs no jitter and reports the null direction as collapsed.
    with jax.enable_x64(True):
      r64 = run_fit(X, make_init(X, labels, K, ctype))
    assert float(r64.jitter) == 0.0
    assert int(r64.n_degenerate) == K
  else:
    assert float(r32.jitter) == 0.0


_DEFAULT_CODEGEN_FIT = """
import json, sys
import jax.numpy as jnp, numpy as np
import gmmjax as gx
d = np.load(sys.argv[1])
p0 = gx.make_params(*(jnp.asarray(d[n]) for n in "wmc"),
                    covariance_type="full")
# The GEMM forms, as guarded_kernels.
r = gx.fit(jnp.asarray(d["X"]), p0, max_iter=100, tol=1e-8, reg_covar=1e-6,
           chunking=gx.ChunkOptions(direct_max_entries=0))
print(json.dumps(dict(failed=bool(r.failed), jitter=float(r.jitter),
                      finite=bool(np.all(np.isfinite(np.asarray(r.params.means)))))))
"""


def test_float32_collinear_features_under_default_codegen(tmp_path):
  """The collinear case above under XLA's default CPU code generator: the
  suite compiles unoptimised code (conftest), users run the default, and
  this case's outcome turns on rounding. (Under the suite's settings it
  once made the jitter ladder's chosen rung fail when the factor was
  recomputed, ending the fit with ``failed``; the ladder now returns the
  factor that passed.) Full covariances, where that failure was seen (tied
  factorises with the same ladder): each covariance type is a compile of
  its own under the default code generator, in a fresh process."""
  X, labels = _float32_case("collinear")
  p = make_init(X, labels, K, "full", dtype=jnp.float32)
  np.savez(tmp_path / "case.npz", X=X.astype(np.float32),
           w=np.asarray(p.weights), m=np.asarray(p.means),
           c=np.asarray(p.covariances))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([sys.executable, "-c", _DEFAULT_CODEGEN_FIT,
                      str(tmp_path / "case.npz")], capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert not out["failed"] and out["finite"], out
  assert out["jitter"] > 0, out


def test_estimator_reports_jitter_and_degenerate_components(guarded_kernels):
  # The estimator (float32 by default) on collinear features: a warning
  # names the jitter, `jitter_` holds it, `n_degenerate_` counts the
  # components collapsed across the null direction, and the parameters
  # are finite (GEMM forms, as above). Well-posed data gets neither.
  X, _ = _float32_case("collinear")
  gm = gx.GaussianMixture(K, covariance_type="full", random_state=0,
                          tol=1e-6, max_iter=200)
  with pytest.warns(gx.ConvergenceWarning, match="jitter"):
    gm.fit(X)
  assert gm.jitter_ > 0
  # n_degenerate_ against a NumPy recount (float64 eigenvalues). The count
  # itself takes float32 eigenvalues, good to about eps32 * |cov|, which is
  # comparable to 2 * reg_covar here: a component within that of the
  # threshold may fall either way.
  eig = np.linalg.eigvalsh(gm.covariances_.astype(np.float64))
  smallest, slack = eig.min(1), 8 * np.finfo(np.float32).eps * eig.max(1)
  empty = gm.weights_ * len(X) < 1
  low = np.sum(empty | (smallest <= 2 * REG - slack))
  high = np.sum(empty | (smallest <= 2 * REG + slack))
  assert low <= gm.n_degenerate_ <= high and high >= 1
  assert np.all(np.isfinite(gm.precisions_cholesky_))
  X_ok, _ = blobs(3)
  with warnings.catch_warnings():
    warnings.simplefilter("error", gx.ConvergenceWarning)
    ok = gx.GaussianMixture(K, covariance_type="full", random_state=0).fit(
        X_ok)
  assert ok.jitter_ == 0.0 and ok.n_degenerate_ == 0


# -- the user-facing boundary on hard input ----------------------------------


def _small_data():
  return blobs(15, n=30, d=2, k=2)[0]


def test_boolean_and_object_numbers_are_accepted_as_floats():
  X = _small_data()
  B = X > 0.0
  a = gx.GaussianMixture(2, random_state=0).fit(B.astype(np.float64))
  b = gx.GaussianMixture(2, random_state=0).fit(B)
  np.testing.assert_array_equal(a.means_, b.means_)
  c = gx.GaussianMixture(2, random_state=0).fit(X.astype(object))
  d = gx.GaussianMixture(2, random_state=0).fit(X)
  np.testing.assert_array_equal(c.means_, d.means_)


@pytest.mark.parametrize("bad, match", [
    (np.array([["1.0", "2.0"], ["3.0", "4.0"], ["5", "6"]]), "bytes/strings"),
    (np.array([[b"1", b"2"], [b"3", b"4"], [b"5", b"6"]]), "bytes/strings"),
    (np.array([[1.0, None], [2.0, 3.0], [4.0, 5.0]], dtype=object),
     "contains NaN"),
    (np.array([[1.0, "x"], [2.0, 3.0], [4.0, 5.0]], dtype=object),
     "could not convert|numbers"),
    (np.array([["2020-01-01"], ["2020-01-02"], ["2020-01-03"]],
              dtype="datetime64[D]"), "dates"),
])
def test_non_numeric_X_is_refused(bad, match):
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(2).fit(bad)


def test_data_whose_squares_overflow_float32_is_refused():
  X = _small_data() * 1e20
  with pytest.raises(ValueError, match="overflow float32.*x64"):
    gx.GaussianMixture(2).fit(X)


def test_same_data_is_accepted_for_float64():
  # x64 is the way out: the same spread fits in float64's range.
  X = _small_data() * 1e20
  assert check_array(X, dtype=np.float64) is not None
  with pytest.raises(ValueError, match="overflow float32"):
    check_array(X, dtype=np.float32)


@pytest.mark.parametrize("weights, match", [
    (np.full(30, 1e31), "overflows float32"),
    (np.array([10**400] + [1] * 29, dtype=object), "numbers"),
    (np.array([np.nan] + [1.0] * 29), "NaN"),
    (np.array([-1.0] + [1.0] * 29), "Negative"),
    (np.zeros(30), "zero for every sample"),
    (np.array(["1"] * 30), "numbers"),
])
def test_bad_sample_weight_is_refused(weights, match):
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(2).fit(_small_data(), sample_weight=weights)


def test_huge_integer_counts_do_not_wrap():
  # uint64 counts near 2**64 (and Python ints beyond int64) would wrap in
  # integer arithmetic; as floats they keep their values and ratios.
  counts = np.full(30, 2**63, dtype=np.uint64)
  counts[:10] = 2**62
  w = check_sample_weight(counts, 30)
  assert w.dtype == np.float64
  np.testing.assert_array_equal(w[:10] * 2, w[10:20])
  assert w[0] == 2.0**62
  big = np.array([2**70] * 30, dtype=object)
  assert check_sample_weight(big, 30)[0] == 2.0**70


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_components=2**31), "n_components"),
    (dict(max_iter=2**40), "max_iter"),
    (dict(n_init=2**31), "n_init"),
    (dict(reg_covar=float("inf")), "reg_covar"),
    (dict(tol=float("nan")), "tol"),
    (dict(n_components=True), "n_components"),
    (dict(n_components=np.bool_(True)), "n_components"),
])
def test_count_parameters_beyond_int32_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(**kwargs).fit(_small_data())
