"""The public names of DESIGN.md exist and are exported."""

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
