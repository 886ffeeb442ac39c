"""scikit-learn citizenship for gmmjax's estimators, scikit-learn optional.

An estimator becomes a scikit-learn citizen by inheriting
:class:`DensityEstimator` and declaring its constructor parameters in
``_parameter_spec`` (a dict of :func:`integer`, :func:`real`,
:func:`options` and the names :data:`BOOLEAN`, :data:`VERBOSE`,
:data:`RANDOM_STATE`, :data:`ARRAY_OR_NONE`). It then calls
``self._validate_params()`` at the start of ``fit`` and
``self._validate_feature_names(X, reset=...)`` wherever it takes ``X``
(``estimator_base.MixtureBase._validate_X`` does). A second estimator
adopts both by inheriting them, e.g.::

  class BayesianGaussianMixture(MixtureBase, DensityEstimator):
    _parameter_spec = dict(n_components=integer(1),
                           weight_concentration_prior=real(0.0, or_none=True),
                           ...)  # one entry per constructor parameter

and joins ``ESTIMATORS`` in ``tests/test_sklearn_conformance.py``, whose
``check_param_validation`` requires an entry for every parameter.

When scikit-learn is importable (the pattern of other libraries with
optional scikit-learn support), :class:`DensityEstimator` derives from
``sklearn.base.DensityMixin`` and ``sklearn.base.BaseEstimator``, so the
estimator has scikit-learn's ``get_params``/``set_params``, repr and HTML
repr (``_repr_html_``), tags, metadata routing (``set_fit_request`` and
friends, from the method signatures), parameter validation
(``InvalidParameterError``, a ``ValueError`` and a ``TypeError``, with
scikit-learn's wording) and ``feature_names_in_`` checks (its errors and
warnings). Without scikit-learn, a small fallback keeps the same protocol:
``get_params``/``set_params``/repr, the same checks with plain
``ValueError``s and the same feature-name messages.
"""

from __future__ import annotations

import inspect
import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from gmmjax._src import validation as val

try:
  from sklearn.base import BaseEstimator as _SkBaseEstimator
  from sklearn.base import DensityMixin as _SkDensityMixin
  from sklearn.utils._param_validation import Interval, StrOptions
  from sklearn.utils.validation import _check_feature_names
  HAVE_SKLEARN = True
except ImportError:  # scikit-learn is optional (a test dependency)
  HAVE_SKLEARN = False

# -- parameter specs: one table, checked by scikit-learn or by gmmjax -------

BOOLEAN = "boolean"
VERBOSE = "verbose"  # an int >= 0 or a bool
RANDOM_STATE = "random_state"  # None, an int, a RandomState or a Generator
ARRAY_OR_NONE = "array-like or None"  # checked later, against the data


class Range(NamedTuple):
  """A number of ``kind`` ("int" or "real") in ``[low, high]`` (``high``
  None: ``[low, inf)``, infinity excluded); ``None`` too if ``or_none``."""
  kind: str
  low: float
  high: float | None = None
  or_none: bool = False


class Options(NamedTuple):
  """One of the strings ``names``; ``None`` too if ``or_none``."""
  names: tuple
  or_none: bool = False


def integer(low: int, high: int = val.INT32_MAX, *,
            or_none: bool = False) -> Range:
  """An int in ``[low, high]``; counts the compiled program holds in int32
  are bounded by ``2**31 - 1`` by default."""
  return Range("int", low, high, or_none)


def real(low: float, high: float | None = None, *,
         or_none: bool = False) -> Range:
  """A finite real number in ``[low, high]`` (``[low, inf)`` by default)."""
  return Range("real", low, high, or_none)


def options(*names: str, or_none: bool = False) -> Options:
  return Options(tuple(names), or_none)


def sklearn_constraints(spec: dict) -> dict:
  """``spec`` as scikit-learn's ``_parameter_constraints``."""
  out = {}
  for name, rule in spec.items():
    if isinstance(rule, Range):
      kind = Integral if rule.kind == "int" else Real
      closed = "left" if rule.high is None else "both"
      out[name] = [Interval(kind, rule.low, rule.high, closed=closed)]
    elif isinstance(rule, Options):
      out[name] = [StrOptions(set(rule.names))]
    if isinstance(rule, Range | Options):
      out[name] += [None] if rule.or_none else []
    elif rule == RANDOM_STATE:
      out[name] = ["random_state", np.random.Generator]
    elif rule == ARRAY_OR_NONE:
      out[name] = ["array-like", None]
    else:  # BOOLEAN, VERBOSE: scikit-learn's own names
      out[name] = [rule]
  return out


def check_params(spec: dict, params: dict, estimator: str) -> None:
  """gmmjax's own check of ``params`` against ``spec`` (no scikit-learn):
  a ``ValueError`` in scikit-learn's wording for the first bad one."""
  for name, rule in spec.items():
    value = params[name]
    if value is None and getattr(rule, "or_none", False):
      continue
    if isinstance(rule, Range):
      val.check_param(name, value, "int" if rule.kind == "int" else "float",
                      low=rule.low, high=rule.high, estimator=estimator)
    elif isinstance(rule, Options):
      val.check_param(name, value, "str", options=rule.names,
                      estimator=estimator)
    elif rule in (BOOLEAN, VERBOSE) and isinstance(value, (bool, np.bool_)):
      continue
    elif rule == BOOLEAN:
      raise ValueError(f"The {name!r} parameter of {estimator} must be an "
                       f"instance of 'bool'. Got {value!r} instead.")
    elif rule == VERBOSE:
      val.check_param(name, value, "int", low=0, estimator=estimator)
    # RANDOM_STATE and ARRAY_OR_NONE are checked where they are used.


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
  (:func:`check_params`)."""

  @classmethod
  def _get_param_names(cls):
    sig = inspect.signature(cls.__init__)
    return sorted(p.name for p in sig.parameters.values()
                  if p.name != "self" and p.kind != p.VAR_KEYWORD)

  def get_params(self, deep=True):
    """Constructor parameters as a dict (scikit-learn's protocol)."""
    del deep  # no nested estimators
    return {name: getattr(self, name) for name in self._get_param_names()}

  def set_params(self, **params):
    """Sets constructor parameters; returns ``self``."""
    valid = self._get_param_names()
    for name, value in params.items():
      if name not in valid:
        raise ValueError(f"Invalid parameter {name!r} for estimator {self}. "
                         f"Valid parameters are: {valid!r}.")
      setattr(self, name, value)
    return self

  def __repr__(self):
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
    """scikit-learn's tags, for a scikit-learn imported after all."""
    from sklearn.utils import Tags, TargetTags
    return Tags(estimator_type="density_estimator",
                target_tags=TargetTags(required=False))


_BASES = (_SkDensityMixin, _SkBaseEstimator) if HAVE_SKLEARN else (
    FallbackBase,)


class DensityEstimator(*_BASES):
  """Base of gmmjax's estimators: a scikit-learn density estimator.

  A subclass declares ``_parameter_spec`` (see the module docstring); its
  ``_parameter_constraints`` (scikit-learn's form) are derived from it.
  ``score``'s ``sample_weight`` is not requested by default under metadata
  routing (``set_score_request(sample_weight=True)`` asks for it), so that
  ``GridSearchCV(...).fit(X, sample_weight=w)`` with only
  ``set_fit_request(sample_weight=True)`` routes the weights to ``fit`` and
  scores with the default scorer, as without routing.
  """

  _parameter_spec: dict = {}
  __metadata_request__score = {"sample_weight": False}

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if HAVE_SKLEARN:
      cls._parameter_constraints = sklearn_constraints(cls._parameter_spec)

  def _validate_feature_names(self, X, *, reset: bool) -> None:
    """Sets (``reset``) or checks ``feature_names_in_`` from ``X``'s
    columns, with scikit-learn's function when it is there."""
    if HAVE_SKLEARN:
      _check_feature_names(self, X, reset=reset)
    else:
      check_feature_names(self, X, reset=reset)
