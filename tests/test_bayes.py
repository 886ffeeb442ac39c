"""Variational Bayesian mixtures (bayes_params, variational, bayes_fit,
bayes_estimator) against scikit-learn's BayesianGaussianMixture.

Agreement: both start from the same responsibilities (scikit-learn's
``_initialize_parameters`` is replaced by its ``_initialize(X, resp)``) and
run the same number of iterations in float64; the lower bounds agree to
1e-6 relative and the posterior parameters to 1e-5, for both prior types
and every covariance type, on blobs and iris (which share programs: the
blobs have iris's shape) and on wine (two cases by default, all eight with
``GMMJAX_TEST_FULL=1``; all pass).
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.mixture import BayesianGaussianMixture as SkBGMM

import gmmjax as gx
from gmmjax import datasets

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
N_ITER = 8
K = 4


class _InjectedResp(SkBGMM):
  """scikit-learn's estimator started from given responsibilities."""

  def _initialize_parameters(self, X, random_state, xp=None):
    self._initialize(X, self.resp0)


def _datasets():
  blobs, _ = make_blobs(n_samples=150, n_features=4, centers=3,
                        random_state=0)
  return {"blobs": blobs, "iris": load_iris().data, "wine": load_wine().data}


def _resp(n, seed):
  resp = np.random.default_rng(seed).random((n, K))
  return resp / resp.sum(axis=1, keepdims=True)


def _sklearn(X, resp, ctype, ptype):
  sk = _InjectedResp(n_components=K, covariance_type=ctype,
                     weight_concentration_prior_type=ptype,
                     max_iter=N_ITER, tol=0.0)
  sk.resp0 = resp
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sk.fit(X)
  return sk


def _ours(X, resp, ctype, ptype):
  X = jnp.asarray(X)
  prior = gx.make_bayes_prior(X, K, covariance_type=ctype)
  post0 = gx.posterior_from_resp(X, resp, prior, covariance_type=ctype,
                                 prior_type=ptype)
  return jax.device_get(gx.fit_bayes(X, post0, prior, max_iter=N_ITER,
                                     tol=0.0))


def _check_agreement(sk, ours):
  post = ours.params
  assert post.means.dtype == np.float64
  assert int(ours.n_iter) == sk.n_iter_ == N_ITER
  assert_allclose(float(ours.lower_bound), float(np.squeeze(sk.lower_bound_)),
                  rtol=1e-6)
  assert_allclose(ours.history[:N_ITER],
                  np.squeeze(np.asarray(sk.lower_bounds_)), rtol=1e-6)
  wc = np.asarray(post.weight_concentration)
  sk_wc = np.asarray(sk.weight_concentration_)
  assert wc.shape == sk_wc.shape
  for ours_value, theirs in (
      (wc, sk_wc), (post.mean_precision, sk.mean_precision_),
      (post.means, sk.means_),
      (post.degrees_of_freedom, sk.degrees_of_freedom_),
      (post.covariances, sk.covariances_),
      (post.precisions_cholesky, sk.precisions_cholesky_),
      (post.weights, sk.weights_)):
    assert_allclose(ours_value, theirs, rtol=1e-5, atol=1e-12)
  # The lower bound never decreases.
  history = ours.history[:N_ITER]
  assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


FULL = os.environ.get("GMMJAX_TEST_FULL") == "1"
ALL_CASES = [(c, p) for c in COVARIANCE_TYPES for p in PRIOR_TYPES]
# Wine has programs of its own (13 features): by default two of its cases,
# every case with GMMJAX_TEST_FULL=1 (the suite's time budget).
WINE_CASES = ALL_CASES if FULL else [("full", "dirichlet_process"),
                                     ("diag", "dirichlet_distribution")]


# Blobs have iris's shape: one test, one set of programs. Every (data set,
# covariance type, prior type) is checked; a failure names its case.
@pytest.mark.parametrize("names", [("blobs", "iris"), ("wine",)],
                         ids=["blobs+iris", "wine"])
def test_agrees_with_sklearn(names):
  data = _datasets()
  failures = []
  with jax.enable_x64(True):
    for name in names:
      X = data[name]
      resp = _resp(X.shape[0], list(data).index(name))
      for ctype, ptype in WINE_CASES if name == "wine" else ALL_CASES:
        try:
          _check_agreement(_sklearn(X, resp, ctype, ptype),
                           _ours(X, resp, ctype, ptype))
        except AssertionError as e:
          failures.append(f"{name}-{ctype}-{ptype}: {e}")
  assert not failures, "\n".join(failures)


def test_bound_terms_match_scipy():
  """The lower bound's normalisers against SciPy's gammaln/betaln."""
  from scipy.special import betaln, gammaln

  from gmmjax._src import variational as vb
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    d, k = 3, 4
    dof = 3.0 + rng.random(k)
    beta = 1.0 + rng.random(k)
    wc = 0.5 + rng.random((2, k))
    cov = 0.5 + rng.random((k, d))
    post = gx.BayesParams(jnp.asarray(wc), jnp.asarray(beta),
                          jnp.zeros((k, d)), jnp.asarray(dof),
                          jnp.asarray(cov), jnp.asarray(cov ** -0.5), "diag",
                          "dirichlet_process")
    got = float(vb.bound_terms(post))
  log_det = np.sum(np.log(cov ** -0.5), axis=1) - 0.5 * d * np.log(dof)
  wishart = -(dof * log_det + dof * d * 0.5 * np.log(2.0) + sum(
      gammaln(0.5 * (dof - j)) for j in range(d)))
  expected = (-np.sum(wishart) + np.sum(betaln(wc[0], wc[1]))
              - 0.5 * d * np.sum(np.log(beta)))
  assert_allclose(got, expected, rtol=1e-12)


def _bound_terms_reference(wc, beta, dof, cov, prior_type):
  """scikit-learn's normalisers written with SciPy (float64), either prior,
  for diagonal covariances ``cov``."""
  from scipy.special import betaln, gammaln
  d = cov.shape[1]
  log_det = np.sum(np.log(cov ** -0.5), axis=1) - 0.5 * d * np.log(dof)
  wishart = -(dof * log_det + dof * d * 0.5 * np.log(2.0) + sum(
      gammaln(0.5 * (dof - j)) for j in range(d)))
  if prior_type == "dirichlet_process":
    log_norm_weight = -np.sum(betaln(wc[0], wc[1]))
  else:
    log_norm_weight = gammaln(np.sum(wc)) - np.sum(gammaln(wc))
  return -np.sum(wishart) - log_norm_weight - 0.5 * d * np.sum(np.log(beta))


@pytest.mark.parametrize("prior_type", ["dirichlet_process",
                                        "dirichlet_distribution"])
def test_bound_terms_hold_in_float32_for_large_concentrations(prior_type):
  """Concentrations of 1e3-1e5 (a large weight_concentration_prior) put
  lgamma near 1e6; the normaliser is a log-Beta function of them, which
  float32 keeps to ~1e-3 (the difference of lgamma values was off by ~0.2,
  noise above tol between iterations). Float64 equals SciPy."""
  from gmmjax._src import variational as vb
  rng = np.random.default_rng(1)
  k, d = 6, 2
  if prior_type == "dirichlet_process":
    wc = np.stack([1.0 + 400 * rng.random(k), 1e5 + 600 * rng.random(k)])
  else:
    wc = 1000.0 + 400 * rng.random(k)
  cov = 0.1 + rng.random((k, d))
  dof = 100.0 + 300 * rng.random(k)
  beta = 1.0 + 300 * rng.random(k)

  def post(dtype):
    a = lambda v: jnp.asarray(v, dtype)
    return gx.BayesParams(a(wc), a(beta), a(np.zeros((k, d))), a(dof),
                          a(cov), a(cov ** -0.5), "diag", prior_type)
  expected = _bound_terms_reference(wc, beta, dof, cov, prior_type)
  with jax.enable_x64(True):
    assert_allclose(float(vb.bound_terms(post(np.float64))), expected,
                    rtol=1e-12)
  got32 = float(jax.jit(vb.bound_terms)(post(np.float32)))
  assert abs(got32 - expected) < 0.02, (got32, expected)


def test_float32_fit_stops_on_convergence_not_on_rounding():
  """scikit-learn's concentration-prior example (900 points, six
  components, Dirichlet distribution prior 1000): the total bound is ~1e4,
  whose float32 spacing (2**-10) is tol. From the same initial
  responsibilities the float32 fit runs about as long as the float64 one
  and ends at its bound; it used to stop after 98 of ~500 iterations,
  2 nats short."""
  rng = np.random.RandomState(2)
  covs = np.array([[[0.7, 0.0], [0.0, 0.1]], [[0.5, 0.0], [0.0, 0.1]],
                   [[0.5, 0.0], [0.0, 0.1]]])
  centres = [[0.0, -0.7], [0.0, 0.0], [0.0, 0.7]]
  X = np.vstack([rng.multivariate_normal(m, c, n) for m, c, n in
                 zip(centres, covs, (200, 500, 200), strict=True)])
  resp = np.random.default_rng(0).random((900, 6))
  resp /= resp.sum(1, keepdims=True)
  runs = {}
  for dtype in (np.float32, np.float64):
    with jax.enable_x64(dtype == np.float64):
      Xd = jnp.asarray(X, dtype)
      prior = gx.make_bayes_prior(Xd, 6, weight_concentration_prior=1000.0,
                                  mean_precision_prior=0.8)
      post0 = gx.posterior_from_resp(Xd, jnp.asarray(resp, dtype), prior,
                                     prior_type="dirichlet_distribution")
      r = gx.fit_bayes(Xd, post0, prior, max_iter=1500, tol=1e-3)
      runs[dtype] = (int(r.n_iter), float(r.log_likelihood),
                     bool(r.converged))
  (n32, b32, c32), (n64, b64, c64) = runs[np.float32], runs[np.float64]
  assert c32 and c64, runs
  assert n32 > 0.6 * n64, runs
  assert abs(b32 - b64) < 0.2, runs


def test_dirichlet_process_prunes():
  """10 components on 3 separated clusters keep at most 4 of weight > 0.01,
  as scikit-learn's do."""
  X, _ = datasets.blobs(n_samples=600, n_centers=3, seed=0)  # README's
  kwargs = dict(n_components=10, random_state=0, max_iter=500)
  ours = gx.BayesianGaussianMixture(**kwargs).fit(X)
  theirs = SkBGMM(**kwargs).fit(X)
  assert np.sum(theirs.weights_ > 0.01) <= 4
  assert np.sum(ours.weights_ > 0.01) <= 4
  assert ours.converged_
  assert_allclose(np.sum(ours.weights_), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny():
  """A small float64 problem and its initial posterior (diag, DP)."""
  with jax.enable_x64(True):
    X, _ = make_blobs(n_samples=40, n_features=2, centers=2,
                      cluster_std=0.7, random_state=1)
    X = jnp.asarray(X)
    prior = gx.make_bayes_prior(X, 3, covariance_type="diag")
    resp = _resp(40, 3)[:, :3]
    resp = resp / resp.sum(axis=1, keepdims=True)
    post0 = gx.posterior_from_resp(X, resp, prior, covariance_type="diag")
  return X, prior, post0


def test_sample_weight_is_repetition(tiny):
  """Integer weights fit as repeated rows."""
  X, prior, post0 = tiny
  with jax.enable_x64(True):
    counts = (np.arange(40) + 1) % 3  # 1, 2 or 0 copies: 40 rows in all
    rows = np.repeat(np.arange(40), counts)
    assert rows.size == 40  # the same shapes: one program
    repeated = X[rows]
    a = gx.fit_bayes(X, post0, prior, sample_weight=jnp.asarray(
        counts, jnp.float64), max_iter=5, tol=0.0)
    b = gx.fit_bayes(repeated, post0, prior, max_iter=5, tol=0.0)
  assert_allclose(a.history[:5], b.history[:5], rtol=1e-10)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_chunked_and_sharded_are_the_in_memory_fit(tiny):
  """The host loop over chunks and the sharded loop (one device here; four
  in test_scale.py) run the same variational iterations; the sharded loop
  takes a batch of posteriors (restarts), each fitted as on its own."""
  X, prior, post0 = tiny
  with jax.enable_x64(True):
    resp = _resp(40, 5)[:, :3]
    post1 = gx.posterior_from_resp(X, resp / resp.sum(1, keepdims=True),
                                   prior, covariance_type="diag")
    a = [gx.fit_bayes(X, p, prior, max_iter=5, tol=0.0)
         for p in (post0, post1)]
    b = gx.fit_bayes_chunked(np.asarray(X), post0, prior, chunk_size=16,
                             max_iter=5, tol=0.0)
    both = jax.tree.map(lambda u, v: jnp.stack([u, v]), post0, post1)
    c = gx.fit_bayes_sharded(X, both, prior, max_iter=5, tol=0.0)
  assert int(b.n_iter) == 5 and c.n_iter.tolist() == [5, 5]
  assert_allclose(b.history[:5], a[0].history[:5], rtol=1e-12)
  for x, y in zip(jax.tree.leaves(a[0].params), jax.tree.leaves(b.params)):
    assert_allclose(x, y, rtol=1e-10, atol=1e-12)
  for i in (0, 1):
    assert_allclose(c.history[i, :5], a[i].history[:5], rtol=1e-12)
    for x, y in zip(jax.tree.leaves(a[i].params), jax.tree.leaves(c.params)):
      assert_allclose(y[i], x, rtol=1e-10, atol=1e-12)
  assert not np.allclose(c.params.means[0], c.params.means[1])


def test_implicit_gradient_matches_finite_differences(tiny):
  """Derivatives of the converged fit's lower bound and of a mean with
  respect to sample_weight and X (implicit, one program) against central
  differences of converged fits."""
  X, prior, post0 = tiny
  with jax.enable_x64(True):
    def fitted(w, x):
      r = gx.fit_bayes(x, post0, prior, sample_weight=w, max_iter=300,
                       tol=0.0)  # 300 iterations: at the fixed point
      return jnp.stack([r.log_likelihood, r.params.means[1, 0]])

    w0 = jnp.ones(40)
    jac_w, jac_x = jax.jit(jax.jacrev(fitted, argnums=(0, 1)))(w0, X)
    h = 1e-5
    for i in (0, 7):
      e = jnp.zeros(40).at[i].set(h)
      fd = (fitted(w0 + e, X) - fitted(w0 - e, X)) / (2 * h)
      assert_allclose(jac_w[:, i], fd, rtol=1e-6, atol=1e-9)
      e = jnp.zeros_like(X).at[i, 1].set(h)
      fd = (fitted(w0, X + e) - fitted(w0, X - e)) / (2 * h)
      assert_allclose(jac_x[:, i, 1], fd, rtol=1e-6, atol=1e-9)


def test_restarts_one_program(tiny):
  """n_init restarts in one vmapped program: the best is the highest
  lower bound, and each restart equals its own fit."""
  X, prior, _ = tiny
  with jax.enable_x64(True):
    best, results = gx.fit_bayes_restarts(
        jax.random.key(0), X, 3, n_init=3, covariance_type="diag",
        prior=prior, method="random", max_iter=50)
    assert results.n_iter.shape == (3,)
    assert float(best.log_likelihood) == float(
        jnp.max(results.log_likelihood))
    one, _ = gx.fit_bayes_restarts(
        jax.random.key(0), X, 3, n_init=1, covariance_type="diag",
        prior=prior, method="random", max_iter=50)
  assert_allclose(one.params.means, results.params.means[0], rtol=1e-9)


def test_online_first_batch_is_one_variational_iteration(tiny):
  """Stochastic variational inference's first step on the whole data set
  (``n_samples`` its size) is the first iteration of fit_bayes (the
  statistics kept around the data mean, not the components': rounding)."""
  X, prior, post0 = tiny
  with jax.enable_x64(True):
    state = gx.online_bayes_init(X, post0, prior, n_samples=40)
    one = gx.fit_bayes(X, post0, prior, max_iter=1, tol=0.0)
  assert int(state.step) == 0 and not bool(state.failed)
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(one.params)):
    assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_online_stream_finds_the_mixture():
  """20 batches of 300 from three unit Gaussians, 6 components started two
  per cluster: after one pass the posterior's mixture scores held-out data
  within 0.01 nats of the true density (stochastic variational inference
  merges duplicate components slowly; the density is what it fits)."""
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
  labels = [rng.integers(0, 3, 300) for _ in range(21)]
  batches = [centres[lab] + rng.normal(size=(300, 2)) for lab in labels]
  X0, X_test = batches[0], batches.pop()
  seeds = X0[np.concatenate([np.flatnonzero(labels[0] == c)[:2]
                             for c in range(3)])]
  resp = np.eye(6)[((X0[:, None] - seeds[None]) ** 2).sum(-1).argmin(1)]
  prior = gx.make_bayes_prior(np.concatenate(batches), 6,
                              covariance_type="diag")
  p0 = gx.posterior_from_resp(X0, resp, prior, covariance_type="diag")
  state = gx.online_bayes_init(X0, p0, prior, n_samples=6000)
  for Xb in batches[1:]:
    state = gx.online_bayes_update(Xb, state, prior, n_samples=6000,
                                   alpha=0.7)
  assert int(state.step) == 19 and float(state.n_seen) == 6000.0
  post = state.params
  plug_in = gx.make_params(post.weights, post.means, post.covariances,
                           covariance_type="diag")
  ours = float(gx.log_likelihood(plug_in, X_test))
  sq = ((X_test[:, None, :] - centres[None]) ** 2).sum(-1)
  truth = np.mean(np.log(np.mean(np.exp(-0.5 * sq), axis=1) / (2 * np.pi)))
  assert abs(ours - truth) < 0.01, (ours, truth)
  for c in centres:  # every cluster has a component of real weight
    near = np.linalg.norm(np.asarray(post.means) - c, axis=1) < 1.0
    assert np.asarray(post.weights)[near].sum() > 0.25
  with pytest.raises(ValueError, match="n_samples"):
    gx.online_bayes_update(X0, state, prior, n_samples=0)
  with pytest.raises(TypeError, match="batch first"):
    gx.online_bayes_update(state, X0, prior, n_samples=6000)


@pytest.mark.usefixtures("x64")
def test_bad_input_is_a_clear_error(tiny):
  X, prior, post0 = tiny
  with pytest.raises(ValueError, match="weight_concentration_prior_type"):
    gx.posterior_from_resp(X, np.ones((40, 3)) / 3, prior,
                           prior_type="dirichlet")
  with pytest.raises(TypeError, match="BayesPrior"):
    gx.fit_bayes(X, post0, None)
  with pytest.raises(ValueError, match="features"):
    gx.fit_bayes(X[:, :1], post0, prior)
  with pytest.raises(ValueError, match="degrees_of_freedom_prior"):
    gx.BayesianGaussianMixture(degrees_of_freedom_prior=0.5).fit(
        np.asarray(X))


def test_save_refuses_a_bayesian_mixture(tmp_path):
  """gx.save would write the plug-in mixture as a GaussianMixture and lose
  the posterior: refused (no fit needed to check it)."""
  bgm = gx.BayesianGaussianMixture()
  with pytest.raises(TypeError, match="BayesianGaussianMixture"):
    gx.save(tmp_path / "m.gmmjax", bgm)


@pytest.mark.parametrize(("ctype", "prior_type"),
                         [("full", "dirichlet_process"),
                          ("tied", "dirichlet_distribution"),
                          ("diag", "dirichlet_process"),
                          ("spherical", "dirichlet_distribution")])
def test_an_initialisation_as_statistics_is_the_initial_posterior(
    ctype, prior_type, x64):
  """The estimator's program hands its draw to the variational loop as
  statistics, whose first M-step, the loop's own, makes the initial
  posterior: it is posterior_from_resp's (max_iter=0), and the fit from
  it is fit_bayes', for one and two restarts, with sample weights."""
  from gmmjax._src import bayes_fit
  from gmmjax._src import init as init_lib
  X = jnp.asarray(datasets.blobs(n_samples=150, n_centers=3, seed=2)[0])
  w = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, len(X)))
  prior = gx.make_bayes_prior(X, 3, covariance_type=ctype, sample_weight=w)
  key = jax.random.key(7)
  for n_init in (1, 2):
    for max_iter in (0, 50):
      got = bayes_fit.bayes_restart_results(
          key, X, 3, n_init=n_init, covariance_type=ctype,
          prior_type=prior_type, method="k-means++", max_iter=max_iter,
          tol=1e-8, reg_covar=1e-6, sample_weight=w, prior=prior,
          callback=None)
      for i, k in enumerate(jax.random.split(key, n_init)):
        xc = X - (w @ X / jnp.sum(w))[None, :]
        resp = init_lib.initial_responsibilities(k, xc, 3, "k-means++", w)
        p0 = gx.posterior_from_resp(X, resp, prior, covariance_type=ctype,
                                    prior_type=prior_type, sample_weight=w)
        want = gx.fit_bayes(X, p0, prior, sample_weight=w,
                            max_iter=max_iter, tol=1e-8)
        mine = jax.tree.map(lambda a, i=i, n=n_init: a if n == 1 else a[i],
                            got)
        assert int(mine.n_iter) == int(want.n_iter)
        assert not bool(mine.failed)
        for a, b in zip(jax.tree.leaves(mine.params),
                        jax.tree.leaves(want.params), strict=True):
          assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        if max_iter:
          assert_allclose(float(mine.log_likelihood),
                          float(want.log_likelihood), rtol=1e-12)
