"""Constructor-parameter specs: one table per estimator, checked by
scikit-learn or by gmmjax.

An estimator declares each constructor parameter's allowed values in a dict,
its ``_parameter_spec``, built from :func:`integer`, :func:`real`,
:func:`options`, :func:`any_of` and the names :data:`BOOLEAN`,
:data:`VERBOSE`, :data:`RANDOM_STATE` and :data:`ARRAY_OR_NONE`. The table
is read two ways: :func:`sklearn_constraints` turns it into scikit-learn's
``_parameter_constraints`` (its ``InvalidParameterError``), and
:func:`check_params` checks it without scikit-learn, with the same wording.
How an estimator uses them is in :mod:`gmmjax._src.sklearn_compat`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from gmmjax._src import validation as val

BOOLEAN = "boolean"
VERBOSE = "verbose"  # an int >= 0 or a bool
RANDOM_STATE = "random_state"  # None, an int, a RandomState or a Generator
ARRAY_OR_NONE = "array-like or None"  # checked later, against the data


class Range(NamedTuple):
  """A number of ``kind`` ("int" or "real") in ``[low, high]`` (``high``
  None: ``[low, inf)``, infinity excluded; ``open_low``: ``low`` itself
  excluded); ``None`` too if ``or_none``."""
  kind: str
  low: float
  high: float | None = None
  or_none: bool = False
  open_low: bool = False


class Options(NamedTuple):
  """One of the strings ``names``; ``None`` too if ``or_none``."""
  names: tuple
  or_none: bool = False


class AnyOf(NamedTuple):
  """A value any of ``rules`` allows (e.g. an array or a positive number)."""
  rules: tuple


def integer(low: int, high: int | None = val.INT32_MAX, *,
            or_none: bool = False) -> Range:
  """An int in ``[low, high]``; counts the compiled program holds in int32
  are bounded by ``2**31 - 1`` by default."""
  return Range("int", low, high, or_none)


def real(low: float, high: float | None = None, *, or_none: bool = False,
         open_low: bool = False) -> Range:
  """A finite real number in ``[low, high]`` (``[low, inf)`` by default;
  ``(low, ...`` with ``open_low``)."""
  return Range("real", low, high, or_none, open_low)


def options(*names: str, or_none: bool = False) -> Options:
  return Options(tuple(names), or_none)


def any_of(*rules) -> AnyOf:
  return AnyOf(tuple(rules))


def _sklearn_constraint(rule) -> list:
  """One spec entry as scikit-learn's list of constraints."""
  from sklearn.utils._param_validation import Interval, StrOptions
  if isinstance(rule, AnyOf):
    return [c for r in rule.rules for c in _sklearn_constraint(r)]
  if rule == RANDOM_STATE:
    return ["random_state", np.random.Generator]
  if rule == ARRAY_OR_NONE:
    return ["array-like", None]
  if not isinstance(rule, Range | Options):  # BOOLEAN, VERBOSE: its names
    return [rule]
  if isinstance(rule, Options):
    out = [StrOptions(set(rule.names))]
  else:
    kind = Integral if rule.kind == "int" else Real
    if rule.high is None:  # [low, inf): infinity is not a parameter value
      closed = "neither" if rule.open_low else "left"
    else:
      closed = "right" if rule.open_low else "both"
    out = [Interval(kind, rule.low, rule.high, closed=closed)]
  return out + ([None] if rule.or_none else [])


def sklearn_constraints(spec: dict) -> dict:
  """``spec`` as scikit-learn's ``_parameter_constraints``."""
  return {name: _sklearn_constraint(rule) for name, rule in spec.items()}


def _in_range(rule: Range, value) -> bool:
  kind = Integral if rule.kind == "int" else Real
  if not isinstance(value, kind) or isinstance(value, bool | np.bool_):
    return False
  if not np.isfinite(float(value)):
    return False
  above = value > rule.low if rule.open_low else value >= rule.low
  return above and (rule.high is None or value <= rule.high)


def _allows(rule, value) -> bool:
  """Whether ``value`` meets ``rule`` (gmmjax's check, no scikit-learn)."""
  if isinstance(rule, AnyOf):
    return any(_allows(r, value) for r in rule.rules)
  if value is None and (rule == ARRAY_OR_NONE or getattr(rule, "or_none",
                                                          False)):
    return True
  if isinstance(rule, Range):
    return _in_range(rule, value)
  if isinstance(rule, Options):
    return isinstance(value, str) and value in rule.names
  if rule in (BOOLEAN, VERBOSE) and isinstance(value, bool | np.bool_):
    return True
  if rule == BOOLEAN:
    return False
  if rule == VERBOSE:
    return _in_range(Range("int", 0), value)
  if rule == ARRAY_OR_NONE:  # scikit-learn's "array-like": not a scalar
    return (hasattr(value, "__len__") or hasattr(value, "shape")
            or hasattr(value, "__array__")) and not np.isscalar(value)
  return True  # RANDOM_STATE is checked where it is used


def _describe(rule) -> list[str]:
  """What ``rule`` allows, in scikit-learn's words, one phrase a case."""
  if isinstance(rule, AnyOf):
    return [d for r in rule.rules for d in _describe(r)]
  if rule == ARRAY_OR_NONE:
    return ["an array-like", "None"]
  bools = ["an instance of 'bool'", "an instance of 'numpy.bool'"]
  if rule == BOOLEAN:
    return bools
  if rule == VERBOSE:
    return ["an int in the range [0, inf)", *bools]
  if isinstance(rule, Options):
    names = ", ".join(repr(n) for n in rule.names)
    out = [f"a str among {{{names}}}"]
  elif isinstance(rule, Range):
    number = int if rule.kind == "int" else float
    high = "inf)" if rule.high is None else f"{number(rule.high)}]"
    out = [f"{'an int' if rule.kind == 'int' else 'a float'} in the range "
           f"{'(' if rule.open_low else '['}{number(rule.low)}, {high}"]
  else:
    out = []
  return out + (["None"] if getattr(rule, "or_none", False) else [])


def check_params(spec: dict, params: dict, estimator: str, *,
                 error: type[Exception] = ValueError) -> None:
  """gmmjax's own check of ``params`` against ``spec`` (no scikit-learn):
  an ``error`` in scikit-learn's wording for the first bad one."""
  for name, rule in spec.items():
    value = params[name]
    if _allows(rule, value):
      continue
    cases = _describe(rule)
    allowed = (cases[0] if len(cases) == 1 else
               f"{', '.join(cases[:-1])} or {cases[-1]}")
    raise error(f"The {name!r} parameter of {estimator} must be "
                f"{allowed}. Got {value!r} instead.")
