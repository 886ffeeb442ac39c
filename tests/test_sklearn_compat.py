"""scikit-learn citizenship (sklearn_compat): BaseEstimator, feature names
from DataFrames, parameter validation, metadata routing; and the fallback
that keeps the protocol when scikit-learn is not installed.

The fits share one data shape (60 x 3, padded to 64 rows) and one
configuration, so they share compiled programs.
"""

import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import BaseEstimator, DensityMixin, clone
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.utils import get_tags
from sklearn.utils._param_validation import (
    InvalidParameterError,
    validate_parameter_constraints,
)

import gmmjax as gx
from gmmjax._src import param_spec as spec
from gmmjax._src import sklearn_compat as compat

COLUMNS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def frame():
  rng = np.random.default_rng(0)
  X = np.concatenate([rng.normal(-3, 1, (30, 3)), rng.normal(3, 1, (30, 3))])
  return pd.DataFrame(X, columns=COLUMNS)


@pytest.fixture(scope="module")
def fitted(frame):
  return gx.GaussianMixture(2, random_state=0).fit(frame)


def test_is_a_scikit_learn_density_estimator():
  gm = gx.GaussianMixture(3, covariance_type="diag")
  assert compat.sklearn_adopted()
  assert isinstance(gm, BaseEstimator) and isinstance(gm, DensityMixin)
  assert get_tags(gm).estimator_type == "density_estimator"
  assert repr(gm) == "GaussianMixture(covariance_type='diag', n_components=3)"
  html = gm._repr_html_()
  assert "GaussianMixture" in html and "covariance_type" in html
  assert set(gm._parameter_constraints) == set(gm.get_params())


def test_allow_nan_tag_follows_the_nan_policy():
  """scikit-learn reads allow_nan to decide whether NaN is data (its checks
  then feed NaN instead of expecting an error)."""
  assert not get_tags(gx.GaussianMixture()).input_tags.allow_nan
  assert get_tags(gx.GaussianMixture(
      nan_policy="marginalize")).input_tags.allow_nan
  assert not get_tags(gx.BayesianGaussianMixture()).input_tags.allow_nan


def test_feature_names_from_a_dataframe(fitted, frame):
  assert isinstance(fitted.feature_names_in_, np.ndarray)
  assert fitted.feature_names_in_.dtype == object
  assert fitted.feature_names_in_.tolist() == COLUMNS
  labels = fitted.predict(frame)
  with pytest.warns(UserWarning, match="X does not have valid feature names"):
    np.testing.assert_array_equal(labels, fitted.predict(frame.to_numpy()))
  # Reordered columns would give other labels: refused, as scikit-learn does.
  reordered = frame[["c", "a", "b"]]
  for method in (fitted.predict, fitted.predict_proba, fitted.score,
                 fitted.score_samples, fitted.bic, fitted.aic):
    with pytest.raises(ValueError, match="must be in the same order"):
      method(reordered)
  with pytest.raises(ValueError, match="unseen at fit time:\n- d\n"):
    fitted.predict(frame.rename(columns={"c": "d"}))
  with pytest.raises(ValueError, match="yet now missing:\n- c\n"):
    fitted.predict(frame[["a", "b"]])


def test_feature_name_warnings_and_reset(fitted, frame):
  with pytest.warns(UserWarning, match="X does not have valid feature names"):
    fitted.predict(frame.to_numpy())
  gm = clone(fitted).fit(frame.to_numpy())
  assert not hasattr(gm, "feature_names_in_")
  with pytest.warns(UserWarning, match="X has feature names, but "
                    "GaussianMixture was fitted without"):
    gm.predict(frame)
  gm.fit(frame)  # a refit on a DataFrame records the names again
  assert gm.feature_names_in_.tolist() == COLUMNS
  gm.fit(frame.to_numpy())  # and on an array forgets them
  assert not hasattr(gm, "feature_names_in_")


def test_feature_names_need_all_strings(frame):
  gm = gx.GaussianMixture(2, random_state=0)
  X = gm._validate_X(frame.set_axis([0, 1, 2], axis=1), reset=True)
  assert X.shape == (60, 3)
  assert not hasattr(gm, "feature_names_in_")  # non-string names: none
  with pytest.raises(TypeError, match="all input features have string"):
    gx.GaussianMixture(2).fit(frame.set_axis(["a", 1, "c"], axis=1))


def test_partial_fit_and_warm_start_check_names(fitted, frame):
  # Both continue the fitted model: its names are checked (before anything
  # compiles), not reset.
  reordered = frame[["b", "a", "c"]]
  with pytest.raises(ValueError, match="same order"):
    copy.deepcopy(fitted).partial_fit(reordered)
  warm = copy.deepcopy(fitted).set_params(warm_start=True)
  with pytest.raises(ValueError, match="same order"):
    warm.fit(reordered)
  assert warm.feature_names_in_.tolist() == COLUMNS


def test_save_and_load_keep_feature_names(fitted, frame, tmp_path):
  gx.save(tmp_path / "m.npz", fitted)
  loaded = gx.load(tmp_path / "m.npz")
  assert loaded.feature_names_in_.dtype == object
  assert loaded.feature_names_in_.tolist() == COLUMNS
  np.testing.assert_array_equal(loaded.predict(frame), fitted.predict(frame))
  with pytest.raises(ValueError, match="same order"):
    loaded.predict(frame[["c", "a", "b"]])
  with pytest.raises(ValueError, match="should be 3 strings"):
    gx.GaussianMixture.from_params(fitted.params_,
                                   fitted={"feature_names_in_": ["a", "b"]})


@pytest.mark.parametrize("params, message", [
    (dict(n_components=0), "The 'n_components' parameter of GaussianMixture "
     "must be an int in the range [1, 2147483647]. Got 0 instead."),
    (dict(n_components="3"), "The 'n_components' parameter of "
     "GaussianMixture must be an int in the range [1, 2147483647]. Got '3' "
     "instead."),
    (dict(tol=float("inf")), "The 'tol' parameter of GaussianMixture must be "
     "a float in the range [0.0, inf). Got inf instead."),
    (dict(warm_start="yes"), "The 'warm_start' parameter of GaussianMixture "
     "must be an instance of 'bool' or an instance of 'numpy.bool'"),
    (dict(random_state=-1), "The 'random_state' parameter of "
     "GaussianMixture must be an int in the range [0, 4294967295]"),
    # To scikit-learn a bool is an int; gmmjax refuses it as a count.
    (dict(n_components=True), "The 'n_components' parameter of "
     "GaussianMixture must be an int in the range [1, 2147483647]. Got True "
     "instead."),
])
def test_invalid_parameters_raise_scikit_learns_error(frame, params, message):
  for method in ("fit", "fit_predict", "partial_fit"):
    with pytest.raises(InvalidParameterError) as info:
      getattr(gx.GaussianMixture(**params), method)(frame)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)


def test_optional_parameters_in_scikit_learns_constraints():
  constraints = spec.sklearn_constraints(
      dict(rank=spec.integer(1, or_none=True), how=spec.options("a")))
  assert constraints["rank"][1:] == [None]
  assert len(constraints["how"]) == 1
  with pytest.raises(InvalidParameterError, match="an int in the range "
                     r"\[1, 2147483647\] or None. Got 0 instead"):
    validate_parameter_constraints(constraints, dict(rank=0, how="a"),
                                   "Est")
  validate_parameter_constraints(constraints, dict(rank=None, how="a"), "Est")


# BayesianGaussianMixture's parameters: values scikit-learn's own class
# refuses (and ones it accepts, on the edges of its constraints).
BAYES_INVALID = [
    dict(weight_concentration_prior_type="dirichlet"),
    dict(weight_concentration_prior=0.0), dict(mean_precision_prior=-1.0),
    dict(degrees_of_freedom_prior=0), dict(covariance_prior=0.0),
    dict(covariance_prior="big"), dict(mean_prior=2.0),
    dict(covariance_type="lowrank"), dict(n_components=0), dict(tol=-1.0),
]
BAYES_VALID = [
    dict(weight_concentration_prior=1e-9, mean_precision_prior=None,
         covariance_prior=2.0, mean_prior=[0.0, 1.0],
         weight_concentration_prior_type="dirichlet_distribution"),
    dict(covariance_prior=np.eye(2), degrees_of_freedom_prior=0.5,
         covariance_type="spherical"),
]


def test_bayesian_mixture_is_a_citizen():
  from sklearn.mixture import BayesianGaussianMixture as SkBGMM
  bgm = gx.BayesianGaussianMixture(n_components=3)
  assert isinstance(bgm, BaseEstimator) and isinstance(bgm, DensityMixin)
  assert get_tags(bgm).estimator_type == "density_estimator"
  assert repr(bgm) == "BayesianGaussianMixture(n_components=3)"
  assert set(bgm._parameter_constraints) == set(bgm.get_params())
  assert bgm.get_params() == SkBGMM(n_components=3).get_params()
  for params in BAYES_VALID:
    gx.BayesianGaussianMixture(**params)._validate_params()
    SkBGMM(**params)._validate_params()
  for params in BAYES_INVALID:
    with pytest.raises(InvalidParameterError) as info:
      gx.BayesianGaussianMixture(**params).fit(np.zeros((4, 2)))
    with pytest.raises(InvalidParameterError) as sk_info:
      SkBGMM(**params)._validate_params()
    # The same constraints, in scikit-learn's words (the order of the
    # allowed cases may differ).
    name = next(iter(params))
    assert str(info.value).startswith(f"The {name!r} parameter of "
                                      "BayesianGaussianMixture must be ")
    assert str(info.value).split(". Got ")[1] == str(sk_info.value).split(
        ". Got ")[1]


def test_bayesian_mixture_routes_fit_weights_only():
  est = gx.BayesianGaussianMixture()
  with sklearn.config_context(enable_metadata_routing=True):
    routing = est.set_fit_request(sample_weight=True).get_metadata_routing()
    assert routing.consumes("fit", ["sample_weight"]) == {"sample_weight"}
    assert routing.consumes("score", ["sample_weight"]) == set()
    assert gx.BayesianGaussianMixture().get_metadata_routing().consumes(
        "score", ["sample_weight"]) == set()


def test_generator_random_state_is_accepted():
  # A superset of scikit-learn's random_state, as before.
  gm = gx.GaussianMixture(2, random_state=np.random.default_rng(0))
  gm._validate_params()


def _splits(n):
  """Two 'folds' that fit and score on all ``n`` rows (in two orders): the
  same shapes as the ``fitted`` fixture's, hence no new compile."""
  rows = np.arange(n)
  return [(rows, rows), (rows[::-1], rows[::-1].copy())]


def _weights(n):
  w = np.ones(n)
  w[::3] = 0.0  # a third of the rows left out of the weighted fits
  return w


def test_grid_search_routes_sample_weight_to_fit(frame):
  X = frame.to_numpy()
  w = _weights(len(X))
  cv = _splits(len(X))
  with sklearn.config_context(enable_metadata_routing=True):
    est = gx.GaussianMixture(random_state=0).set_fit_request(
        sample_weight=True)
    search = GridSearchCV(est, {"n_components": [2]}, cv=cv).fit(
        X, sample_weight=w)
    # Not requested: scikit-learn refuses to drop the weights silently.
    with pytest.raises(sklearn.exceptions.UnsetMetadataPassedError):
      GridSearchCV(gx.GaussianMixture(random_state=0),
                   {"n_components": [2]}, cv=cv).fit(X, sample_weight=w)
  # Refit on all the data with the weights; folds scored unweighted (score's
  # weights are not requested by default).
  ref = gx.GaussianMixture(2, random_state=0).fit(X, sample_weight=w)
  np.testing.assert_array_equal(search.best_estimator_.means_, ref.means_)
  for i, (train, test) in enumerate(cv):
    fold = gx.GaussianMixture(2, random_state=0).fit(
        X[train], sample_weight=w[train])
    np.testing.assert_allclose(search.cv_results_[f"split{i}_test_score"][0],
                               fold.score(X[test]), rtol=1e-6)


def test_score_weights_routed_when_requested(frame):
  X = frame.to_numpy()
  w = _weights(len(X))
  cv = _splits(len(X))
  with sklearn.config_context(enable_metadata_routing=True):
    est = gx.GaussianMixture(2, random_state=0).set_fit_request(
        sample_weight=True).set_score_request(sample_weight=True)
    scores = cross_validate(est, X, cv=cv, params={"sample_weight": w})
  for i, (train, test) in enumerate(cv):
    fold = gx.GaussianMixture(2, random_state=0).fit(
        X[train], sample_weight=w[train])
    np.testing.assert_allclose(scores["test_score"][i], fold.score(
        X[test], sample_weight=w[test]), rtol=1e-6)


def test_routing_off_passes_fit_params_as_before(frame):
  X = frame.to_numpy()
  w = _weights(len(X))
  search = GridSearchCV(gx.GaussianMixture(random_state=0),
                        {"n_components": [2]}, cv=_splits(len(X))).fit(X, sample_weight=w)
  ref = gx.GaussianMixture(2, random_state=0).fit(X, sample_weight=w)
  np.testing.assert_array_equal(search.best_estimator_.means_, ref.means_)


# -- without scikit-learn ------------------------------------------------------


class _Plain(compat.FallbackBase):
  _parameter_spec = dict(k=spec.integer(1), tol=spec.real(0.0),
                         kind=spec.options("x", "y"), flag=spec.BOOLEAN,
                         verbose=spec.VERBOSE, seed=spec.RANDOM_STATE,
                         rank=spec.integer(1, or_none=True),
                         prior=spec.real(0.0, open_low=True, or_none=True),
                         cov=spec.any_of(spec.ARRAY_OR_NONE,
                                           spec.real(0.0, open_low=True)))

  def __init__(self, k=1, *, tol=1e-3, kind="x", flag=False, verbose=0,
               seed=None, rank=None, prior=None, cov=None):
    self.k, self.tol, self.kind = k, tol, kind
    self.flag, self.verbose, self.seed, self.rank = flag, verbose, seed, rank
    self.prior, self.cov = prior, cov


@pytest.mark.parametrize("params, message", [
    (dict(k=0), "The 'k' parameter of _Plain must be an int in the range "
     "[1, 2147483647]. Got 0 instead."),
    (dict(k=2.0), "must be an int"),
    (dict(tol=-1.0), "The 'tol' parameter of _Plain must be a float in the "
     "range [0.0, inf). Got -1.0 instead."),
    (dict(tol=np.nan), "'tol'"),
    (dict(kind="z"), "The 'kind' parameter of _Plain must be a str among"),
    (dict(flag=1), "The 'flag' parameter of _Plain must be an instance of "
     "'bool' or an instance of 'numpy.bool'. Got 1 instead."),
    (dict(verbose=-1), "'verbose'"),
    (dict(rank=0), "The 'rank' parameter of _Plain must be an int in the "
     "range [1, 2147483647] or None. Got 0 instead."),
    (dict(prior=0.0), "The 'prior' parameter of _Plain must be a float in "
     "the range (0.0, inf) or None. Got 0.0 instead."),
    (dict(cov=-1.0), "The 'cov' parameter of _Plain must be an array-like, "
     "None or a float in the range (0.0, inf). Got -1.0 instead."),
    (dict(cov="big"), "'cov'"),
])
def test_fallback_parameter_checks(params, message):
  _Plain(verbose=True, flag=np.bool_(True), seed=-5)._validate_params()
  _Plain(rank=2, prior=0.5, cov=[[1.0]])._validate_params()
  _Plain(cov=2.0)._validate_params()
  with pytest.raises(ValueError) as info:
    _Plain(**params)._validate_params()
  assert message in str(info.value)
  assert not isinstance(info.value, InvalidParameterError)
  # scikit-learn, given the spec's constraints, says the same (but for the
  # order of a set of options, which varies with the string hash seed).
  with pytest.raises(InvalidParameterError) as sk_info:
    validate_parameter_constraints(
        spec.sklearn_constraints(_Plain._parameter_spec),
        _Plain(**params).get_params(), "_Plain")
  ours, theirs = str(info.value), str(sk_info.value)
  if "kind" in params:
    ours, theirs = ours.split("{")[0], theirs.split("{")[0]
  assert theirs == ours


def test_fallback_parameter_protocol():
  p = _Plain(3, kind="y")
  assert p.get_params() == dict(k=3, tol=1e-3, kind="y", flag=False,
                                verbose=0, seed=None, rank=None, prior=None,
                                cov=None)
  assert repr(p) == "_Plain(k=3, kind='y')"
  assert p.set_params(tol=0.5) is p and p.tol == 0.5
  with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
    p.set_params(bogus=1)


def _sklearn_message(fitted, X):
  """scikit-learn's own error for ``X``'s names (None when it accepts)."""
  from sklearn.utils.validation import _check_feature_names
  try:
    _check_feature_names(fitted, X, reset=False)
  except ValueError as e:
    return str(e)
  return None


@pytest.mark.parametrize("columns", [
    COLUMNS, ["c", "b", "a"], ["a", "b", "d"], ["a", "b"],
    list("abcdefghi"), ["a", "b", "c", "z1", "z2", "z3", "z4", "z5", "z6"]])
def test_fallback_feature_names_match_scikit_learn(frame, columns):
  est = _Plain()
  compat.check_feature_names(est, frame, reset=True)
  assert est.feature_names_in_.tolist() == COLUMNS
  X = pd.DataFrame(np.zeros((2, len(columns))), columns=columns)
  expected = _sklearn_message(est, X)
  if expected is None:
    compat.check_feature_names(est, X, reset=False)
  else:
    with pytest.raises(ValueError) as info:
      compat.check_feature_names(est, X, reset=False)
    assert str(info.value) == expected


def test_fallback_feature_name_warnings(frame):
  est = _Plain()
  compat.check_feature_names(est, frame, reset=True)
  with pytest.warns(UserWarning, match="X does not have valid feature names, "
                    "but _Plain was fitted with feature names"):
    compat.check_feature_names(est, frame.to_numpy(), reset=False)
  compat.check_feature_names(est, frame.to_numpy(), reset=True)
  assert not hasattr(est, "feature_names_in_")
  with pytest.warns(UserWarning, match="X has feature names, but _Plain was "
                    "fitted without feature names"):
    compat.check_feature_names(est, frame, reset=False)
  assert compat.feature_names(frame.set_axis([0, 1, 2], axis=1)) is None
  with pytest.raises(TypeError, match="all input features have string"):
    compat.feature_names(frame.set_axis(["a", 1, "c"], axis=1))


_NO_SKLEARN = textwrap.dedent("""
    import sys
    class Block:
      def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
          raise ImportError("scikit-learn blocked for this test")
    how = sys.argv[1]
    if how == "not importable":
      sys.meta_path.insert(0, Block())
    import numpy as np, pandas as pd
    import gmmjax as gx
    from gmmjax._src import sklearn_compat
    assert not sklearn_compat.sklearn_adopted()
    X = pd.DataFrame([[-3.0, 0.0], [3.0, 1.0], [-2.0, 0.5]],
                     columns=["a", "b"])
    for bad in (gx.GaussianMixture(0),  # refused before anything compiles
                gx.BayesianGaussianMixture(covariance_prior=-1.0)):
      try:
        bad.fit(X)
      except ValueError as e:
        print("params:", type(e).__name__, e)
    # A fitted model without a fit (no EM to compile): names from X.
    gm = gx.GaussianMixture.from_params(gx.make_params(
        np.array([0.5, 0.5]), np.array([[-3.0, 0.0], [3.0, 0.0]]),
        np.array([1.0, 1.0]), covariance_type="spherical"), random_state=0)
    gm._validate_feature_names(X, reset=True)
    print(repr(gm), list(gm.feature_names_in_))
    print(gm.predict(X).tolist())
    try:
      gm.predict(X[["b", "a"]])
    except ValueError as e:
      print("names:", str(e).splitlines()[1])
    print(gm.set_params(n_components=3).get_params()["n_components"])
    print("sklearn imported:", "sklearn" in sys.modules)
    assert "sklearn" not in sys.modules
    if how == "imported later":  # the same estimator, now scikit-learn's
      # A fit of a few features imports neither scikit-learn nor SciPy
      # (jaxlib's LAPACK calls would: cholesky.UNROLLED_MAX_DIM).
      gx.GaussianMixture(2, max_iter=3, random_state=0).fit(X)
      assert not any(m.split(".")[0] in ("sklearn", "scipy")
                     for m in sys.modules), sorted(sys.modules)
      import sklearn
      from sklearn.base import BaseEstimator, DensityMixin, clone
      from sklearn.utils._param_validation import InvalidParameterError
      print(gm.get_params()["n_components"], isinstance(gm, BaseEstimator),
            isinstance(clone(gm), DensityMixin))
      try:
        gx.GaussianMixture(0).fit(X)
      except InvalidParameterError as e:
        print("params:", type(e).__name__)
      with sklearn.config_context(enable_metadata_routing=True):
        print(gx.BayesianGaussianMixture().set_fit_request(sample_weight=True)
              .get_metadata_routing().fit.requests["sample_weight"])
""")


@pytest.mark.parametrize("how", ["not importable", "GMMJAX_NO_SKLEARN=1",
                                 "imported later"])
def test_works_without_scikit_learn(how):
  """The fallback, without scikit-learn, with it opted out, and with it
  installed but not imported: gmmjax does not import it for a fit (1.5-2 s),
  and once the user imports it the estimators made before are scikit-learn
  estimators (bases, clone, its parameter errors, metadata routing)."""
  env = {k: v for k, v in os.environ.items() if k != "GMMJAX_NO_SKLEARN"}
  if how == "GMMJAX_NO_SKLEARN=1":
    env["GMMJAX_NO_SKLEARN"] = "1"
  out = subprocess.run([sys.executable, "-c", _NO_SKLEARN, how],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr
  later = ["3 True True", "params: InvalidParameterError",
           "True"] if how == "imported later" else []
  assert out.stdout.splitlines() == [
      "params: ValueError The 'n_components' parameter of GaussianMixture "
      "must be an int in the range [1, 2147483647]. Got 0 instead.",
      "params: ValueError The 'covariance_prior' parameter of "
      "BayesianGaussianMixture must be an array-like, None or a float in "
      "the range (0.0, inf). Got -1.0 instead.",
      "GaussianMixture(covariance_type='spherical', n_components=2, "
      "random_state=0) ['a', 'b']",
      "[0, 1, 0]",
      "names: Feature names must be in the same order as they were in fit.",
      "3", "sklearn imported: False", *later]
