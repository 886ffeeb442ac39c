"""gmmjax.GaussianMixture: scikit-learn's semantics and error messages."""

import pickle
import warnings

import jax
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SkGMM

import gmmjax as gx
from tests.conftest import make_blobs


@pytest.fixture(scope="module")
def X():
  return make_blobs(2, 60, [[0, 0], [5, 1], [1, 6]])


@pytest.fixture(scope="module")
def fitted(X):
  return gx.GaussianMixture(3, random_state=0, n_init=2).fit(X)


def test_constructor_matches_sklearn_parameters_and_defaults():
  ours = gx.GaussianMixture().get_params()
  theirs = SkGMM().get_params()
  assert set(theirs) <= set(ours)
  for name, value in theirs.items():
    assert ours[name] == value, name


def test_fitted_attributes(fitted, X):
  gm = fitted
  k, d = 3, X.shape[1]
  assert gm.weights_.shape == (k,) and gm.means_.shape == (k, d)
  assert gm.covariances_.shape == (k, d, d)
  assert gm.precisions_.shape == (k, d, d)
  assert gm.precisions_cholesky_.shape == (k, d, d)
  assert isinstance(gm.converged_, bool) and gm.converged_
  assert isinstance(gm.n_iter_, int) and gm.n_iter_ >= 1
  assert gm.n_features_in_ == d
  assert len(gm.lower_bounds_) == gm.n_iter_
  assert gm.lower_bound_ == gm.lower_bounds_[-1]
  for cov, prec in zip(gm.covariances_, gm.precisions_):
    np.testing.assert_allclose(cov @ prec, np.eye(d), atol=2e-3)
  assert isinstance(gm.weights_, np.ndarray)
  assert gm.means_.dtype == np.float32  # x64 off: float32 compute


def test_predict_family_is_consistent(fitted, X):
  gm = fitted
  proba = gm.predict_proba(X)
  np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(gm.predict(X), proba.argmax(1))
  logp = gm.score_samples(X)
  assert logp.shape == (len(X),)
  np.testing.assert_allclose(gm.score(X), logp.mean(), rtol=1e-6)
  # fit_predict equals fit(X).predict(X) (final E-step), whatever max_iter.
  for max_iter in (1, 2, 100):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", gx.ConvergenceWarning)
      a = gx.GaussianMixture(3, random_state=1, max_iter=max_iter)
      labels = a.fit_predict(X)
    np.testing.assert_array_equal(labels, a.predict(X))


def test_bic_aic_equal_sklearns_on_the_same_parameters(fitted, X):
  gm = fitted
  sk = SkGMM(3)
  sk.weights_ = gm.weights_.astype(np.float64)
  sk.means_ = gm.means_.astype(np.float64)
  sk.covariances_ = gm.covariances_.astype(np.float64)
  sk.precisions_cholesky_ = gm.precisions_cholesky_.astype(np.float64)
  np.testing.assert_allclose(gm.bic(X), sk.bic(X), rtol=1e-5)
  np.testing.assert_allclose(gm.aic(X), sk.aic(X), rtol=1e-5)
  np.testing.assert_allclose(gm.score(X), sk.score(X), rtol=1e-5)


def test_float64_with_x64(X, x64):
  gm = gx.GaussianMixture(3, random_state=0).fit(X)
  assert gm.means_.dtype == np.float64
  assert gm.predict_proba(X).dtype == np.float64


def test_random_state_reproducible_and_restarts_help(X):
  a = gx.GaussianMixture(3, random_state=5, init_params="random").fit(X)
  b = gx.GaussianMixture(3, random_state=5, init_params="random").fit(X)
  np.testing.assert_array_equal(a.means_, b.means_)
  many = gx.GaussianMixture(3, random_state=5, init_params="random",
                            n_init=6).fit(X)
  assert many.lower_bound_ >= a.lower_bound_ - 1e-4
  rs = gx.GaussianMixture(3, random_state=np.random.RandomState(0)).fit(X)
  assert rs.converged_


def test_warm_start_continues_from_fitted_params(X, x64):
  gm = gx.GaussianMixture(3, random_state=0, warm_start=True, max_iter=2,
                          tol=1e-10)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", gx.ConvergenceWarning)
    gm.fit(X)
    first = gm.lower_bounds_
    gm.fit(X)
  second = gm.lower_bounds_
  # The second fit picks up where the first stopped: its first E-step sees
  # the first fit's final parameters, so the curve continues upward.
  assert second[0] >= first[-1]
  cold = gx.GaussianMixture(3, random_state=0, max_iter=4, tol=1e-10)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", gx.ConvergenceWarning)
    cold.fit(X)
  np.testing.assert_allclose(first + second, cold.lower_bounds_, rtol=1e-10)


def test_convergence_warning(X):
  with pytest.warns(gx.ConvergenceWarning, match="did not converge"):
    gx.GaussianMixture(3, random_state=0, max_iter=1, tol=0.0).fit(X)


def test_verbose_prints_progress(X, capfd):
  gx.GaussianMixture(3, random_state=0, verbose=2, verbose_interval=1,
                     tol=1e-6).fit(X)
  jax.effects_barrier()
  out = capfd.readouterr().out
  assert "Iteration 1" in out and "Iteration 2" in out
  assert "converged" in out


@pytest.mark.parametrize("compacted", [False, True])
def test_verbose_restarts_report_only_their_own_iterations(X, capfd, request,
                                                           compacted, x64):
  # n_init=3: vmapped restarts stop at different iterations; a stopped one
  # must not keep printing while the others run. Compacted in blocks of 2,
  # the second block's filler repeats restart 0: it must not report either.
  # In float64, where the vmapped and the single programs' rounding cannot
  # move a stopping step (in float32 it can: 49 against 50 iterations).
  blocks = request.getfixturevalue("small_blocks") if compacted else None
  gm = gx.GaussianMixture(3, random_state=0, verbose=2, verbose_interval=1,
                          n_init=3, init_params="random", tol=1e-8,
                          max_iter=300)
  keys = jax.random.split(gx._src.estimator.key_from_random_state(0), 3)
  runs = [gx.fit(X, gx.init_params(k, X, 3, method="random"), tol=1e-8,
                 max_iter=300) for k in keys]
  gm.fit(X)
  jax.effects_barrier()
  # (Restarts report from concurrent callbacks: lines may interleave.)
  reports = capfd.readouterr().out.count("Iteration ")
  n_iters = [int(r.n_iter) for r in runs]
  assert len(set(n_iters)) > 1, n_iters
  assert reports == sum(n_iters)
  assert blocks == ([(2, 3)] if compacted else None)


def test_sample_weight_integer_equals_repeats(X, x64):
  rng = np.random.default_rng(1)
  counts = rng.integers(1, 4, len(X))
  X_rep = np.repeat(X, counts, axis=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", gx.ConvergenceWarning)
    init = gx.GaussianMixture(3, random_state=0, max_iter=1).fit(X_rep)
  kw = dict(weights_init=init.weights_, means_init=init.means_,
            precisions_init=init.precisions_, tol=1e-8, max_iter=200)
  a = gx.GaussianMixture(3, **kw).fit(X, sample_weight=counts)
  b = gx.GaussianMixture(3, **kw).fit(X_rep)
  assert a.n_iter_ == b.n_iter_
  np.testing.assert_allclose(a.means_, b.means_, rtol=1e-9)
  np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9)
  np.testing.assert_allclose(a.lower_bound_, b.lower_bound_, rtol=1e-10)


def test_sample(fitted):
  Xs, y = fitted.sample(500)
  assert Xs.shape == (500, 2) and y.shape == (500,)
  assert np.all(np.diff(y) >= 0)  # grouped by component, as scikit-learn
  with pytest.raises(ValueError, match="n_samples"):
    fitted.sample(0)


def test_clone_pickle_params(fitted, X):
  c = clone(fitted)
  assert not hasattr(c, "means_")
  assert c.get_params() == clone(c).get_params()
  c.set_params(n_components=2, covariance_type="diag")
  assert c.n_components == 2 and c.covariance_type == "diag"
  with pytest.raises(ValueError, match="Invalid parameter"):
    c.set_params(bogus=1)
  restored = pickle.loads(pickle.dumps(fitted))
  np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))


@pytest.mark.parametrize("bad, match", [
    (np.arange(10.0), "Expected 2D array, got 1D array"),
    (np.zeros((2, 2, 2)), "dim 3"),
    (np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]]), "contains NaN"),
    (np.array([[1.0, np.inf], [0.0, 1.0], [2.0, 2.0]]), "infinity"),
    (np.zeros((2, 2)), "n_samples >= n_components"),
    (np.zeros((0, 2)), "0 sample"),
    (np.array([["a", "b"], ["c", "d"]]), "could not convert|numbers"),
])
def test_bad_X(bad, match):
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(3).fit(bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_components=0), "n_components"),
    (dict(covariance_type="bogus"), "covariance_type"),
    (dict(tol=-1.0), "tol"),
    (dict(reg_covar=-1e-3), "reg_covar"),
    (dict(max_iter=-1), "max_iter"),
    (dict(n_init=0), "n_init"),
    (dict(init_params="bogus"), "init_params"),
    (dict(weights_init=[0.5, 0.5]), "'weights' should have the shape"),
    (dict(weights_init=[1.2, -0.1, -0.1]), "range \\[0, 1\\]"),
    (dict(weights_init=[0.5, 0.3, 0.1]), "normalized"),
    (dict(means_init=np.zeros((3, 5))), "'means' should have the shape"),
    (dict(precisions_init=-np.ones((3, 2, 2))),
     "symmetric, positive-definite"),
    (dict(covariance_type="diag", precisions_init=-np.ones((3, 2))),
     "should be positive"),
    (dict(precisions_init=np.ones((2, 2))), "should have the shape"),
])
def test_bad_parameters(X, kwargs, match):
  kwargs = {"n_components": 3, **kwargs}
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(**kwargs).fit(X)


def test_bad_sample_weight(X):
  gm = gx.GaussianMixture(3)
  with pytest.raises(ValueError, match="Negative"):
    gm.fit(X, sample_weight=-np.ones(len(X)))
  with pytest.raises(ValueError, match="zero for every sample"):
    gm.fit(X, sample_weight=np.zeros(len(X)))
  with pytest.raises(ValueError, match="shape"):
    gm.fit(X, sample_weight=np.ones(3))


def test_not_fitted_and_feature_mismatch(fitted):
  with pytest.raises(gx.NotFittedError, match="not fitted"):
    gx.GaussianMixture(2).predict(np.zeros((3, 2)))
  assert issubclass(gx.NotFittedError, ValueError)
  with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture"
                     " is expecting 2 features"):
    fitted.predict(np.zeros((4, 3)))


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random",
                                         "random_from_data"])
def test_max_iter_zero_returns_the_initialisation(X, init_params):
  """scikit-learn's contract: initialise, run no EM iteration, warn nothing."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    gm = gx.GaussianMixture(3, max_iter=0, init_params=init_params,
                            random_state=0, n_init=2).fit(X)
  assert gm.n_iter_ == 0 and gm.converged_ is False
  assert gm.lower_bound_ == -np.inf and gm.lower_bounds_ == []
  # The parameters are an initialisation: EM from them is a different fit.
  one = gx.GaussianMixture(3, max_iter=1, init_params=init_params,
                           random_state=0, n_init=2, tol=0.0)
  with pytest.warns(gx.ConvergenceWarning):
    one.fit(X)
  assert one.n_iter_ == 1
  assert not np.allclose(gm.means_, one.means_)
  assert gm.predict(X).shape == (len(X),)


def test_max_iter_zero_keeps_the_given_parameters(X, x64):
  w = np.array([0.2, 0.3, 0.5])
  means = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
  prec = np.stack([np.eye(2) * s for s in (1.0, 2.0, 0.5)])
  gm = gx.GaussianMixture(3, max_iter=0, weights_init=w, means_init=means,
                          precisions_init=prec).fit(X)
  assert gm.n_iter_ == 0 and gm.lower_bound_ == -np.inf
  np.testing.assert_allclose(gm.weights_, w, rtol=1e-12)
  np.testing.assert_allclose(gm.means_, means, rtol=1e-12)
  np.testing.assert_allclose(gm.precisions_, prec, rtol=1e-12)


def test_float32_weights_init_normalised_in_float32(X):
  # Sums to 1 within float32's precision, but not to 1e-8 in float64.
  w = np.full(10, 0.1, np.float32)
  assert abs(1 - np.sum(w)) < 1e-6
  assert abs(1 - np.sum(w.astype(np.float64))) > 1e-8
  gm = gx.GaussianMixture(10, weights_init=w, max_iter=2).fit(X)
  np.testing.assert_allclose(gm.weights_.sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="normalized"):  # float64: 1e-8
    gx.GaussianMixture(10, weights_init=w.astype(np.float64)).fit(X)


def test_max_iter_values_of_one_bucket_share_a_program(X, compiles):
  """max_iter is traced: 70 and 100 iterations run one compiled loop."""
  Xj = jax.numpy.asarray(X, jax.numpy.float32)
  p0 = gx.init_params(jax.random.key(0), Xj, 3, covariance_type="diag")
  gx.fit(Xj, p0, max_iter=100, tol=0.0)
  del compiles[:]
  res = gx.fit(Xj, p0, max_iter=70, tol=0.0)
  assert compiles == []
  assert int(res.n_iter) == 70 and res.history.shape == (128,)
  assert np.all(np.isnan(np.asarray(res.history)[70:]))


# -- the public seam: params_, from_params, fit(callback=) ---------------------


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_params_round_trip_through_from_params(X, ctype):
  gm = gx.GaussianMixture(3, covariance_type=ctype, random_state=0).fit(X)
  p = gm.params_
  assert isinstance(p, gx.GMMParams) and p.covariance_type == ctype
  np.testing.assert_array_equal(np.asarray(p.means), gm.means_)
  # The same model: small tied, diag and spherical models are evaluated
  # as full matrices in the program the four types share (type_switch),
  # which rounds differently in the last bits than gx.log_prob's own-type
  # program under some code generators.
  np.testing.assert_allclose(np.asarray(gx.log_prob(p, X)),
                             gm.score_samples(X), rtol=2e-6, atol=2e-6)
  back = gx.GaussianMixture.from_params(p, random_state=0)
  assert (back.n_components, back.covariance_type) == (3, ctype)
  assert back.n_features_in_ == X.shape[1]
  for name in ("weights_", "means_", "covariances_", "precisions_",
               "precisions_cholesky_"):
    a, b = getattr(gm, name), getattr(back, name)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
  np.testing.assert_array_equal(back.predict(X), gm.predict(X))
  np.testing.assert_array_equal(back.score_samples(X), gm.score_samples(X))
  assert back.bic(X) == gm.bic(X)
  # Nothing was fitted: the documented defaults, no diagnostics.
  assert back.converged_ is True and back.n_iter_ == 0
  assert back.lower_bound_ == -np.inf and back.lower_bounds_ == []
  assert not hasattr(back, "jitter_") and not hasattr(back, "n_degenerate_")
  # The restored diagnostics, and a working estimator: it refits.
  again = gx.GaussianMixture.from_params(
      p, fitted=dict(converged_=False, n_iter_=7, lower_bound_=-1.5,
                     lower_bounds_=[-2.0, -1.5], jitter_=0.0,
                     n_degenerate_=1))
  assert (again.converged_, again.n_iter_, again.lower_bound_,
          again.lower_bounds_, again.jitter_, again.n_degenerate_) == (
              False, 7, -1.5, [-2.0, -1.5], 0.0, 1)
  assert again.fit(X).n_degenerate_ == 0


def test_params_and_from_params_errors(fitted):
  with pytest.raises(gx.NotFittedError, match="not fitted"):
    _ = gx.GaussianMixture(2).params_
  assert not hasattr(gx.GaussianMixture(2), "params_")
  p = fitted.params_
  with pytest.raises(ValueError, match="disagree with the params"):
    gx.GaussianMixture.from_params(p, n_components=2)
  with pytest.raises(ValueError, match="disagree with the params"):
    gx.GaussianMixture.from_params(p, covariance_type="diag")
  with pytest.raises(ValueError, match="unknown fitted attributes"):
    gx.GaussianMixture.from_params(p, fitted={"means_": 0})
  with pytest.raises(ValueError, match="reg_covar"):
    gx.GaussianMixture.from_params(p, reg_covar=-1.0)
  batch = jax.tree.map(lambda a: a[None], p)
  with pytest.raises(ValueError, match="one mixture"):
    gx.GaussianMixture.from_params(batch)


def test_fit_callback_reports_each_iteration(X, capfd):
  calls = []

  def hook(n_iter, log_likelihood, change):
    calls.append((int(n_iter), float(log_likelihood), float(change)))

  gm = gx.GaussianMixture(3, random_state=0, tol=1e-6).fit(X, callback=hook)
  assert [c[0] for c in calls] == list(range(1, gm.n_iter_ + 1))
  lls = [c[1] for c in calls]
  assert lls == gm.lower_bounds_
  changes = [c[2] for c in calls]
  assert changes[0] == np.inf
  np.testing.assert_allclose(changes[1:], np.diff(lls), rtol=1e-5, atol=1e-7)
  assert capfd.readouterr().out == ""
  # A fit argument, not a parameter: not in get_params, not kept.
  assert "callback" not in gm.get_params()
  # With verbose, the hook is called as well as the lines printed.
  calls.clear()
  labels = gx.GaussianMixture(3, random_state=0, tol=1e-6, verbose=1,
                              verbose_interval=1).fit_predict(X, callback=hook)
  out = capfd.readouterr().out
  assert len(calls) == out.count("  Iteration ") and len(calls) >= 1
  assert labels.shape == (len(X),)
  with pytest.raises(TypeError, match="callback"):
    gx.GaussianMixture(3).fit(X, callback=3)


def test_nan_message_names_the_estimator_and_its_nan_policy():
  """Refused before anything compiles; the message names the estimator
  and, where there is one, the way to fit with missing values."""
  X = np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]])
  with pytest.raises(ValueError, match=r"GaussianMixture does not accept "
                     r"(.|\n)*nan_policy='marginalize'"):
    gx.GaussianMixture(1).fit(X)
  with pytest.raises(ValueError) as info:
    gx.BayesianGaussianMixture(n_components=1).fit(X)
  assert "BayesianGaussianMixture does not accept" in str(info.value)
  assert "nan_policy" not in str(info.value)
