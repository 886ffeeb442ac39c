"""scikit-learn conformance: check_estimator, Pipeline, GridSearchCV, clone.

Every check of ``sklearn.utils.estimator_checks`` (scikit-learn 1.9) runs as
its own test (so ``pytest -n 2`` spreads them), for every estimator of
``ESTIMATORS``, with JAX's default float32 computation; two numerically
sensitive ones run again for GaussianMixture with x64 on (float64
computation), since gmmjax computes in float32 unless x64 is on. Two checks that scikit-learn runs on
its own estimators but not in ``check_estimator`` run too (``EXTRA_CHECKS``:
DataFrame column names, parameter validation).

pandas is a test dependency, so the pandas checks run. Deliberately not run
(no check is skipped for gmmjax's sake): ``check_array_api_input`` needs
``SCIPY_ARRAY_API=1`` (and array-api-strict); scikit-learn raises
``SkipTest`` without it, accepted here. gmmjax converts input with NumPy, it
has no array-API dispatch.

No check is expected to fail, and none warns that the estimator is not a
``BaseEstimator``: with scikit-learn installed it is one (sklearn_compat).
"""

import functools
import warnings
from unittest import SkipTest

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    check_param_validation,
    estimator_checks_generator,
)

import gmmjax as gx

# Each estimator gmmjax has, as check_estimator takes it (a new estimator
# is added here). Most checks fit data of their own shape, so each fits in a
# program of its own: BayesianGaussianMixture's ~50 checks compile its
# variational fit for 14 data shapes (~1 s each on 2 cores, about as
# GaussianMixture's EM fit), ~40 s of the suite's CPU time.
ESTIMATORS = [gx.GaussianMixture(), gx.BayesianGaussianMixture()]

ENVIRONMENT_SKIPS = {
    "check_array_api_input": "SCIPY_ARRAY_API is not set",
}

# scikit-learn's own test suite runs these on its estimators; check_estimator
# does not.
EXTRA_CHECKS = (check_dataframe_column_names_consistency,
                check_param_validation)

# Checks comparing numbers across fits, dtypes or sample weights: also run
# with float64 computation (each check costs a few compiles, so only these,
# and for GaussianMixture only: BayesianGaussianMixture's float64 fits are
# compared with scikit-learn's in test_bayes.py and
# test_bayes_sklearn_port.py, weights as repetitions included, and its two
# reruns would cost ~9 s). (All checks pass under x64 too; that full run
# takes minutes on 2 cores.)
X64_ESTIMATORS = ("GaussianMixture",)
X64_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data", "check_fit_idempotent",
}


def _name(check):
  func = check.func if isinstance(check, functools.partial) else check
  kw = getattr(check, "keywords", {}) or {}
  extra = ",".join(f"{k}={v}" for k, v in sorted(kw.items()))
  return func.__name__ + (f"[{extra}]" if extra else "")


def _collect():
  checks = []
  for estimator in ESTIMATORS:
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # e.g. "does not inherit from Base..."
      checks += [(_name(c), e, c) for e, c in
                 estimator_checks_generator(estimator, legacy=True)]
    checks += [(_name(c), estimator,
                functools.partial(c, type(estimator).__name__))
               for c in EXTRA_CHECKS]
  return checks


CHECKS = _collect()


def _run(name, estimator, check):
  with warnings.catch_warnings():
    # Checks fit with max_iter=5 on random data: convergence warnings are
    # expected and not what the checks test.
    warnings.simplefilter("ignore", gx.ConvergenceWarning)
    try:
      check(estimator)
    except SkipTest as e:
      base = name.split("[")[0]
      assert base in ENVIRONMENT_SKIPS, f"{name} unexpectedly skipped: {e}"


def _id(name, estimator):
  prefix = type(estimator).__name__
  return name if prefix == "GaussianMixture" else f"{prefix}-{name}"


@pytest.mark.parametrize("name,estimator,check", CHECKS,
                         ids=[_id(n, e) for n, e, _ in CHECKS])
def test_sklearn_check(name, estimator, check):
  _run(name, estimator, check)


X64 = [c for c in CHECKS if c[0].split("[")[0] in X64_CHECKS
       and type(c[1]).__name__ in X64_ESTIMATORS]


@pytest.mark.parametrize("name,estimator,check", X64,
                         ids=[_id(n, e) for n, e, _ in X64])
def test_sklearn_check_float64(name, estimator, check, x64):
  _run(name, estimator, check)


def test_all_checks_collected():
  names = {n.split("[")[0] for n, _, _ in CHECKS}
  assert X64_CHECKS <= names
  assert {"check_estimators_unfitted", "check_fit_idempotent",
          "check_estimators_pickle", "check_dtype_object",
          "check_sample_weights_pandas_series",
          "check_dataframe_column_names_consistency",
          "check_param_validation"} <= names
  assert len(CHECKS) >= 47 * len(ESTIMATORS)


# The tests below share one data shape and one configuration, so they share
# compiled programs.


@pytest.fixture(scope="module")
def three_clusters():
  rng = np.random.default_rng(0)
  return np.concatenate([rng.normal(c, 0.5, (40, 2)) * [1.0, 10.0]
                         for c in ([0, 0], [5, 0], [0, 5])])


def test_clone(three_clusters):
  gm = gx.GaussianMixture(3, random_state=0, means_init=None).fit(
      three_clusters)
  gm.set_params(means_init=np.zeros((3, 2)))
  new = clone(gm)
  assert new is not gm and not hasattr(new, "means_")
  params, new_params = gm.get_params(), new.get_params()
  np.testing.assert_array_equal(new_params.pop("means_init"),
                                params.pop("means_init"))
  assert new_params == params
  with pytest.raises(SkNotFittedError):
    new.predict(three_clusters)
  with pytest.raises(gx.NotFittedError):  # also gmmjax's own class
    new.score(three_clusters)


def test_pipeline(three_clusters):
  X = three_clusters
  pipe = make_pipeline(StandardScaler(),
                       gx.GaussianMixture(3, random_state=0))
  labels = pipe.fit(X).predict(X)
  # Reference: the same steps by hand.
  scaler = StandardScaler().fit(X)
  gm = gx.GaussianMixture(3, random_state=0).fit(scaler.transform(X))
  np.testing.assert_array_equal(labels, gm.predict(scaler.transform(X)))
  assert pipe.score(X) == pytest.approx(gm.score(scaler.transform(X)))
  assert len(np.unique(labels)) == 3


def test_grid_search(three_clusters):
  X = three_clusters
  cv = KFold(2, shuffle=True, random_state=0)
  search = GridSearchCV(gx.GaussianMixture(random_state=0),
                        {"n_components": [1, 3]}, cv=cv).fit(X)
  assert search.best_params_ == {"n_components": 3}
  # Reference: held-out mean log-likelihood by hand, same folds.
  for i, k in enumerate([1, 3]):
    scores = [gx.GaussianMixture(k, random_state=0).fit(X[tr]).score(X[te])
              for tr, te in cv.split(X)]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"][i],
                               np.mean(scores), rtol=1e-6)
  assert search.best_estimator_.n_components == 3
  assert search.best_estimator_.converged_


def test_verbose_reports_progress(three_clusters, capsys):
  X = three_clusters
  # The verbose fit's own attributes: a second, silent fit is another
  # program, whose float32 rounding may stop it one step apart (tol=1e-6
  # is 2 ulps of this log-likelihood).
  gm = gx.GaussianMixture(3, random_state=0, verbose=2, verbose_interval=1,
                          tol=1e-6).fit(X)
  out = capsys.readouterr().out
  lines = [ln for ln in out.splitlines() if ln.startswith("  Iteration")]
  assert all("log-likelihood" in ln and "ll change" in ln for ln in lines)
  assert "Initialization 0 converged" in out
  # The reported log-likelihoods are those of the fit's history.
  assert [int(ln.split()[1]) for ln in lines] == list(
      range(1, gm.n_iter_ + 1))
  reported = [float(ln.split("log-likelihood")[1].split()[0]) for ln in lines]
  np.testing.assert_allclose(reported, gm.lower_bounds_, atol=1e-5)
  # verbose=0 compiles no callback at all (no cost).
  assert gm.set_params(verbose=0)._progress_callback() is None
  assert capsys.readouterr().out == ""
