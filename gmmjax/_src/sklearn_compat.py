"""scikit-learn citizenship for gmmjax's estimators, scikit-learn optional.

An estimator becomes a scikit-learn citizen by inheriting
:class:`DensityEstimator` and declaring its constructor parameters in
``_parameter_spec`` (a dict of ``param_spec``'s vocabulary:
``integer``, ``real``, ``options``, ``any_of`` and the names ``BOOLEAN``,
``VERBOSE``, ``RANDOM_STATE``, ``ARRAY_OR_NONE``). It then calls ``self._validate_params()`` at the start of ``fit`` and
``self._validate_feature_names(X, reset=...)`` wherever it takes ``X``
(``estimator_base.MixtureBase._validate_X`` does). gmmjax's two estimators
do (``BayesianGaussianMixture`` through ``GaussianMixture``), each spec
starting from the parameters they share
(``estimator_base.MIXTURE_PARAMETERS``), e.g.::

  _parameter_spec = dict(
      MIXTURE_PARAMETERS, covariance_type=options(*COVARIANCE_TYPES),
      weight_concentration_prior=real(0.0, open_low=True, or_none=True),
      ...)  # one entry per constructor parameter

Each is in ``ESTIMATORS`` in ``tests/test_sklearn_conformance.py``, whose
``check_param_validation`` requires an entry for every parameter.

With scikit-learn in use, :class:`DensityEstimator` derives from
``sklearn.base.DensityMixin`` and ``sklearn.base.BaseEstimator``, so the
estimator has scikit-learn's ``get_params``/``set_params``, repr and HTML
repr (``_repr_html_``), tags, metadata routing (``set_fit_request`` and
friends, from the method signatures), parameter validation
(``InvalidParameterError``, a ``ValueError`` and a ``TypeError``, with
scikit-learn's wording) and ``feature_names_in_`` checks (its errors and
warnings). Until then a small fallback keeps the same protocol:
``get_params``/``set_params``/repr, the same checks with plain
``ValueError``s and the same feature-name messages.

"In use" is decided lazily, because importing scikit-learn costs 1.5-2 s
(SciPy's statistics, pandas), more than importing JAX: gmmjax never
imports it for a fit. The estimators adopt scikit-learn's bases
(:func:`adopt_sklearn`) as soon as ``sklearn.base`` has been imported by
anyone, checked when an estimator is created or asked for its parameters,
tags or validation, and gmmjax imports it itself only for what exists only
in scikit-learn (metadata routing's ``set_*_request`` and
``get_metadata_routing``, the HTML repr). Adopting changes the base class
in place (``DensityEstimator.__bases__``), so instances made before become
``BaseEstimator``s too. ``GMMJAX_NO_SKLEARN=1`` (or true, yes, on) keeps
the fallback for good.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings

import numpy as np

from gmmjax._src.param_spec import check_params, sklearn_constraints

# Read once, when the estimators first load.
OPTED_OUT = os.environ.get("GMMJAX_NO_SKLEARN", "").lower() in ("1", "true",
                                                                "yes", "on")

# -- feature names ------------------------------------------------------------


def feature_names(X) -> np.ndarray | None:
  """The column names of a DataFrame ``X`` when they are all strings, as
  scikit-learn reads them (``None`` for arrays and non-string names)."""
  columns = getattr(X, "columns", None)
  if columns is None or isinstance(X, np.ndarray):
    return None
  names = np.asarray(list(columns), dtype=object)
  types = sorted({type(v).__qualname__ for v in names})
  if len(types) > 1 and "str" in types:
    raise TypeError(
        "Feature names are only supported if all input features have string "
        f"names, but your input has {types} as feature name / column name "
        "types. If you want feature names to be stored and validated, you "
        "must convert them all to strings, by using X.columns = "
        "X.columns.astype(str) for example. Otherwise you can remove feature "
        "/ column names from your input data, or convert them all to a "
        "non-string data type.")
  return names if types == ["str"] else None


def _name_list(names) -> str:
  shown = [f"- {name}\n" for name in names[:5]]
  return "".join(shown) + ("- ...\n" if len(names) > 5 else "")


def check_feature_names(estimator, X, *, reset: bool) -> None:
  """scikit-learn's ``feature_names_in_`` rule without scikit-learn: set
  (``reset``) or compare, raising and warning with its messages."""
  names = feature_names(X)
  if reset:
    if names is not None:
      estimator.feature_names_in_ = names
    else:
      estimator.__dict__.pop("feature_names_in_", None)
    return
  fitted = getattr(estimator, "feature_names_in_", None)
  cls = type(estimator).__name__
  if fitted is None and names is None:
    return
  if fitted is None:
    warnings.warn(f"X has feature names, but {cls} was fitted without "
                  "feature names", UserWarning, stacklevel=4)
    return
  if names is None:
    warnings.warn("X does not have valid feature names, but "
                  f"{cls} was fitted with feature names", UserWarning,
                  stacklevel=4)
    return
  if len(fitted) == len(names) and np.all(fitted == names):
    return
  unexpected = sorted(set(names) - set(fitted))
  missing = sorted(set(fitted) - set(names))
  message = "The feature names should match those that were passed during fit.\n"
  if unexpected:
    message += "Feature names unseen at fit time:\n" + _name_list(unexpected)
  if missing:
    message += ("Feature names seen at fit time, yet now missing:\n"
                + _name_list(missing))
  if not unexpected and not missing:
    message += "Feature names must be in the same order as they were in fit.\n"
  raise ValueError(message)


# -- the base classes ---------------------------------------------------------


class FallbackBase:
  """scikit-learn's parameter protocol without scikit-learn: ``get_params``,
  ``set_params``, a repr of the changed parameters, and parameter checks
  (:func:`check_params`). Each method first hands over to scikit-learn's
  when scikit-learn has been imported since (:func:`adopt_sklearn`)."""

  @classmethod
  def _get_param_names(cls):
    sig = inspect.signature(cls.__init__)
    return sorted(p.name for p in sig.parameters.values()
                  if p.name != "self" and p.kind != p.VAR_KEYWORD)

  def get_params(self, deep=True):
    """Constructor parameters as a dict (scikit-learn's protocol)."""
    if _handed_over(self):
      return self.get_params(deep=deep)
    del deep  # no nested estimators
    return {name: getattr(self, name) for name in self._get_param_names()}

  def set_params(self, **params):
    """Sets constructor parameters; returns ``self``."""
    if _handed_over(self):
      return self.set_params(**params)
    valid = self._get_param_names()
    for name, value in params.items():
      if name not in valid:
        raise ValueError(f"Invalid parameter {name!r} for estimator {self}. "
                         f"Valid parameters are: {valid!r}.")
      setattr(self, name, value)
    return self

  def __repr__(self):
    if _handed_over(self):
      return repr(self)
    defaults = {name: p.default for name, p in
                inspect.signature(type(self).__init__).parameters.items()}
    changed = []
    for name in self._get_param_names():
      value = getattr(self, name)
      default = defaults.get(name)
      if isinstance(value, np.ndarray) or value is not default and (
          value != default):
        changed.append(f"{name}={value!r}")
    return f"{type(self).__name__}({', '.join(changed)})"

  def _validate_params(self):
    check_params(self._parameter_spec, self.get_params(deep=False),
                 type(self).__name__)

  def __sklearn_tags__(self):
    """scikit-learn's tags (only scikit-learn asks for them)."""
    if _handed_over(self, load=True):
      return self.__sklearn_tags__()
    from sklearn.utils import Tags, TargetTags
    return Tags(estimator_type="density_estimator",
                target_tags=TargetTags(required=False))


def _handed_over(obj, *, load: bool = False) -> bool:
  """Whether ``obj``, an instance of a class that derived from
  :class:`FallbackBase` when the call began, now has scikit-learn's
  methods instead (:func:`adopt_sklearn`)."""
  return adopt_sklearn(load=load) and not isinstance(obj, FallbackBase)


class _SklearnConstraints:
  """``_parameter_constraints``, scikit-learn's form of ``_parameter_spec``,
  built when scikit-learn asks (its parameter checks read it)."""

  def __get__(self, obj, cls):
    return sklearn_constraints(cls._parameter_spec)


# Attributes only scikit-learn has (metadata routing, the HTML repr): asking
# for one adopts scikit-learn's bases, importing it if need be.
_SKLEARN_ONLY = frozenset({
    "get_metadata_routing", "_get_metadata_request", "_get_default_requests",
    "_repr_html_", "_repr_html_inner", "_repr_mimebundle_",
    "__sklearn_clone__"})


class DensityEstimator(FallbackBase):
  """Base of gmmjax's estimators: a scikit-learn density estimator.

  A subclass declares ``_parameter_spec`` (see the module docstring); its
  ``_parameter_constraints`` (scikit-learn's form) are derived from it.
  ``score``'s ``sample_weight`` is not requested by default under metadata
  routing (``set_score_request(sample_weight=True)`` asks for it), so that
  ``GridSearchCV(...).fit(X, sample_weight=w)`` with only
  ``set_fit_request(sample_weight=True)`` routes the weights to ``fit`` and
  scores with the default scorer, as without routing. Its bases are
  :class:`FallbackBase` until scikit-learn is in use, then scikit-learn's
  (:func:`adopt_sklearn`).
  """

  _parameter_spec: dict = {}
  _parameter_constraints = _SklearnConstraints()
  __metadata_request__score = {"sample_weight": False}

  def __new__(cls, *args, **kwargs):
    del args, kwargs  # for __init__
    adopt_sklearn()
    return super().__new__(cls)

  def __getattr__(self, name):
    # Only reached for attributes the instance and its classes lack.
    if (name in _SKLEARN_ONLY or name.startswith("set_")
        and name.endswith("_request")) and adopt_sklearn(load=True):
      return object.__getattribute__(self, name)
    raise AttributeError(
        f"{type(self).__name__!r} object has no attribute {name!r}")

  def _validate_params(self):
    """scikit-learn's parameter check when it is in use (its errors, its
    wording), then gmmjax's, which also refuses a bool given as a number
    (``n_components=True``: to scikit-learn a bool is an int)."""
    adopted = adopt_sklearn()
    super()._validate_params()
    if adopted:
      from sklearn.utils._param_validation import InvalidParameterError
      check_params(self._parameter_spec, self.get_params(deep=False),
                   type(self).__name__, error=InvalidParameterError)

  def _validate_feature_names(self, X, *, reset: bool) -> None:
    """Sets (``reset``) or checks ``feature_names_in_`` from ``X``'s
    columns, with scikit-learn's function when it is in use."""
    if adopt_sklearn():
      from sklearn.utils.validation import _check_feature_names
      _check_feature_names(self, X, reset=reset)
    else:
      check_feature_names(self, X, reset=reset)


_ADOPTED = [False]  # whether DensityEstimator's bases are scikit-learn's


def sklearn_adopted() -> bool:
  """Whether gmmjax's estimators derive from scikit-learn's bases now."""
  return _ADOPTED[0]


def adopt_sklearn(*, load: bool = False) -> bool:
  """Makes :class:`DensityEstimator`, and so every gmmjax estimator (made
  before or after), derive from ``sklearn.base.DensityMixin`` and
  ``BaseEstimator`` when ``sklearn.base`` has been imported (or, with
  ``load``, when it can be); returns whether they do.

  Cheap when there is nothing to do (a dict lookup): estimators call it as
  they are created and used. Never with ``GMMJAX_NO_SKLEARN`` set.
  """
  if _ADOPTED[0]:
    return True
  if OPTED_OUT or not load and "sklearn.base" not in sys.modules:
    return False
  try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.utils._metadata_requests import _MetadataRequester
  except ImportError:  # scikit-learn is optional (a test dependency)
    return False
  DensityEstimator.__bases__ = (DensityMixin, BaseEstimator)
  # What scikit-learn does to each subclass as it is defined (the generated
  # set_{method}_request methods), for the classes defined before; classes
  # defined after get it from Python, as usual.
  init_subclass = vars(_MetadataRequester)["__init_subclass__"].__func__
  todo = [DensityEstimator]
  while todo:
    cls = todo.pop(0)
    init_subclass(cls)
    todo.extend(cls.__subclasses__())
  _ADOPTED[0] = True
  return True


adopt_sklearn()  # scikit-learn imported before the estimators
