"""Value checks for the NumPy-facing shell, run before anything compiles.

Messages follow scikit-learn's wording where scikit-learn has one, so users
coming from it recognise them, and say what to do.
"""

from __future__ import annotations

import functools
import sys

import jax
import numpy as np

from gmmjax._src.cov_type import CovarianceType


class NotFittedError(ValueError, AttributeError):
  """Raised when a method needs a fitted estimator (as scikit-learn's)."""


class ConvergenceWarning(UserWarning):
  """The best restart did not converge (as scikit-learn's)."""


@functools.cache
def _with_sklearn_base(ours, theirs):
  return type(ours.__name__, (ours, theirs), {"__module__": ours.__module__})


def sklearn_compatible(cls, sklearn_name: str):
  """``cls``, also a subclass of ``sklearn.exceptions.<sklearn_name>`` once
  scikit-learn is imported.

  Code that catches or filters scikit-learn's exception or warning (its
  own tests, ``check_estimator``, users' ``warnings.simplefilter``) has
  imported scikit-learn; gmmjax never imports it for this.
  """
  module = sys.modules.get("sklearn.exceptions")
  theirs = getattr(module, sklearn_name, None)
  return cls if theirs is None else _with_sklearn_base(cls, theirs)


def convergence_warning():
  """The class to warn with: :class:`ConvergenceWarning` (and scikit-learn's)."""
  return sklearn_compatible(ConvergenceWarning, "ConvergenceWarning")


def compute_dtype(X: np.ndarray) -> np.dtype:
  """float64 when the input is float64 and JAX's x64 mode is on, else float32."""
  if X.dtype == np.float64 and jax.config.read("jax_enable_x64"):
    return np.dtype(np.float64)
  return np.dtype(np.float32)


def _overflow_limit(dtype) -> float:
  """Largest magnitude whose square, summed over samples, stays finite."""
  return float(np.sqrt(np.finfo(dtype).max))


def check_array(X, *, estimator: str = "GaussianMixture",
                ensure_min_samples: int = 1, name: str = "X",
                dtype=None, nan_hint: str = "") -> np.ndarray:
  """A finite, numeric, 2-D NumPy array, or a ``ValueError`` that says why.

  Accepted as scikit-learn accepts them: integer and boolean arrays (as
  0/1), object arrays of numbers. Refused: strings and bytes (scikit-learn's
  message), complex numbers, sparse matrices, NaN and infinity, and values
  so spread out that the second moments overflow the dtype the fit computes
  in (``dtype``; by default the one :func:`compute_dtype` picks, e.g. data
  beyond about 1e19 in float32), which would otherwise turn into NaN
  parameters inside the compiled fit.

  Example:
    >>> import numpy as np
    >>> from gmmjax._src.validation import check_array
    >>> check_array([[True], [False]]).dtype
    dtype('float64')
    >>> check_array(np.array([["1"], ["2"]]))
    Traceback (most recent call last):
    ...
    ValueError: dtype='numeric' is not compatible with arrays of bytes/strings.Convert your data to numeric values explicitly instead: X should contain numbers.
  """
  arr = _numeric_array(X, estimator, name)
  arr = _two_dimensional(arr, estimator, ensure_min_samples)
  _check_values(arr, name, estimator, dtype, nan_hint)
  return arr


def _numeric_array(X, estimator, name) -> np.ndarray:
  """``X`` as a NumPy array of a numeric dtype, or why not."""
  if hasattr(X, "toarray") and hasattr(X, "nnz"):
    raise TypeError(f"{estimator} does not accept sparse input; convert it "
                    "with X.toarray().")
  try:
    arr = np.asarray(X)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} could not be converted to a numeric array: "
                     f"{e}") from e
  if np.iscomplexobj(arr):
    raise ValueError("Complex data not supported\n" + repr(arr))
  if arr.dtype.kind in "USV":
    raise ValueError(
        "dtype='numeric' is not compatible with arrays of bytes/strings."
        f"Convert your data to numeric values explicitly instead: {name} "
        "should contain numbers.")
  if arr.dtype.kind in "mM":
    raise ValueError(f"{name} has dtype {arr.dtype} (dates or durations): "
                     "convert it to numbers explicitly.")
  if arr.dtype.kind not in "biuf":
    try:
      arr = arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as e:
      raise ValueError(f"{name} should contain numbers; could not convert "
                       f"it to float: {e}") from e
  return arr


def _two_dimensional(arr, estimator, ensure_min_samples) -> np.ndarray:
  """``arr`` if 2-D with enough samples and a feature (integers, booleans
  and float16 as float64), or why not."""
  if arr.ndim == 0:
    raise ValueError(
        f"Expected 2D array, got scalar array instead:\narray={arr!r}.\n"
        "Reshape your data either using array.reshape(-1, 1) if your data has"
        " a single feature or array.reshape(1, -1) if it contains a single "
        "sample.")
  if arr.ndim == 1:
    raise ValueError(
        f"Expected 2D array, got 1D array instead:\narray={arr!r}.\n"
        "Reshape your data either using array.reshape(-1, 1) if your data has"
        " a single feature or array.reshape(1, -1) if it contains a single "
        "sample.")
  if arr.ndim > 2:
    raise ValueError(f"Found array with dim {arr.ndim}. {estimator} expected "
                     "<= 2.")
  if arr.dtype.kind in "biu" or arr.dtype == np.float16:
    arr = arr.astype(np.float64)
  if arr.shape[0] < ensure_min_samples:
    raise ValueError(
        f"Found array with {arr.shape[0]} sample(s) (shape={arr.shape}) while "
        f"a minimum of {ensure_min_samples} is required by {estimator}.")
  if arr.shape[1] < 1:
    raise ValueError(
        f"Found array with 0 feature(s) (shape={arr.shape}) while a minimum "
        f"of 1 is required by {estimator}.")
  return arr


def _check_values(arr, name, estimator, dtype, nan_hint="") -> None:
  """Finite values whose squared deviations fit the fit's dtype;
  ``nan_hint`` ends the message about NaN (another way to handle them)."""
  if not np.all(np.isfinite(arr)):
    if np.any(np.isnan(arr)):
      raise ValueError(
          f"Input {name} contains NaN.\n{estimator} does not accept missing "
          "values encoded as NaN natively. Remove or impute the rows with "
          f"missing values (e.g. sklearn.impute.SimpleImputer) first{nan_hint}.")
    raise ValueError(f"Input {name} contains infinity or a value too large "
                     f"for dtype({arr.dtype.name!r}).")
  target = compute_dtype(arr) if dtype is None else np.dtype(dtype)
  if arr.size:
    # Centred values, as the fit's shifted second moments see them; the
    # sum of n squares must stay finite.
    lo, hi = np.min(arr, axis=0), np.max(arr, axis=0)
    spread = float(np.max(hi - lo))
    if not np.isfinite(spread) or spread * np.sqrt(arr.shape[0]) >= (
        _overflow_limit(target)):
      raise ValueError(
          f"Input {name} spans {spread:.3g} in one feature: its squared "
          f"deviations overflow {target.name} (the fit would produce "
          "infinite covariances). Rescale the data (e.g. divide by its "
          "standard deviation)"
          + (", or enable JAX's x64 mode for float64." if target ==
             np.float32 else "."))




def check_sample_weight(sample_weight, n_samples: int,
                        dtype=None) -> np.ndarray | None:
  """Non-negative, finite, not-all-zero weights of shape ``(n_samples,)``.

  Beyond scikit-learn's checks: weights whose sum (the effective sample
  count) overflows the dtype the fit computes in (``dtype``; by default
  float32 unless JAX's x64 mode is on) are refused, since only the ratios of
  the weights change the fit; huge integer counts given as Python ints or
  ``uint64`` are converted without wrapping around.

  Example:
    >>> from gmmjax._src.validation import check_sample_weight
    >>> check_sample_weight([1, 2, 0], 3).tolist()
    [1.0, 2.0, 0.0]
    >>> check_sample_weight([1e31, 1e31], 2, dtype="float32")
    Traceback (most recent call last):
    ...
    ValueError: sample_weight sums to 2e+31, which overflows float32 in the fit's sums. Rescale the weights: only their ratios change the fitted parameters.
  """
  if sample_weight is None:
    return None
  try:
    w = np.asarray(sample_weight)
  except (TypeError, ValueError) as e:
    raise ValueError(f"sample_weight could not be converted to numbers: "
                     f"{e}") from e
  if w.dtype.kind == "O":
    try:
      w = w.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as e:
      raise ValueError("sample_weight should contain numbers, got dtype "
                       f"object ({e}).") from e
  if w.dtype.kind not in "biuf":
    raise ValueError("sample_weight should contain numbers, got dtype "
                     f"{w.dtype}.")
  w = w.astype(np.float64)
  if w.ndim == 0:
    w = np.full(n_samples, float(w))
  if w.shape != (n_samples,):
    raise ValueError(f"sample_weight.shape == {w.shape}, expected "
                     f"({n_samples},)!")
  if not np.all(np.isfinite(w)):
    raise ValueError("sample_weight contains NaN or infinity.")
  if np.any(w < 0):
    raise ValueError("Negative values in data passed to sample_weight: "
                     "weights must be non-negative.")
  if not np.any(w > 0):
    raise ValueError("sample_weight is zero for every sample: at least one "
                     "sample needs a positive weight.")
  target = (compute_dtype(np.zeros(0)) if dtype is None
            else np.dtype(dtype))
  with np.errstate(over="ignore"):
    total = float(np.sum(w))
  # The fit sums w * r * (x - c)^2: keep a wide margin below the maximum.
  if not np.isfinite(total) or total >= np.finfo(target).max * 1e-8:
    raise ValueError(
        f"sample_weight sums to {total:.3g}, which overflows {target.name} "
        "in the fit's sums. Rescale the weights: only their ratios change "
        "the fitted parameters.")
  return w


# Counts the compiled program holds in int32 (the iteration counter, shapes)
# are bounded by this (param_spec.integer).
INT32_MAX = int(np.iinfo(np.int32).max)


def check_weights_init(weights, n_components: int) -> np.ndarray:
  given = np.asarray(weights)
  w = given.astype(np.float64)
  if w.shape != (n_components,):
    raise ValueError(f"The parameter 'weights' should have the shape of "
                     f"({n_components},), but got {w.shape}")
  # Normalised to the precision the weights were given in (scikit-learn's
  # rule): float32 weights that sum to 1 in float32 may be 1e-7 off in
  # float64. The range allows the same rounding (a fitted weights_ of one
  # component can be 1 + 2e-16).
  atol = 1e-6 if given.dtype == np.float32 else 1e-8
  if not np.all(np.isfinite(w)) or np.any(w < -atol) or np.any(w > 1 + atol):
    raise ValueError("The parameter 'weights' should be in the range [0, 1], "
                     f"but got max value {np.max(w):.5f}, min value "
                     f"{np.min(w):.5f}")
  if not np.allclose(np.abs(1.0 - np.sum(w)), 0.0, atol=atol):
    raise ValueError("The parameter 'weights' should be normalized, but got "
                     f"sum(weights) = {np.sum(w):.5f}")
  return w


def check_means_init(means, n_components: int, n_features: int) -> np.ndarray:
  m = np.asarray(means, dtype=np.float64)
  if m.shape != (n_components, n_features):
    raise ValueError(f"The parameter 'means' should have the shape of "
                     f"({n_components}, {n_features}), but got {m.shape}")
  if not np.all(np.isfinite(m)):
    raise ValueError("The parameter 'means' contains NaN or infinity.")
  return m


def check_precisions_init(precisions, covariance_type: CovarianceType,
                          n_components: int, n_features: int) -> np.ndarray:
  name = covariance_type.name
  p = np.asarray(precisions, dtype=np.float64)
  shape = covariance_type.shape(n_components, n_features)
  if p.shape != shape:
    raise ValueError(f"The parameter '{name} precision' should "
                     f"have the shape of {shape}, but got {p.shape}")
  if not np.all(np.isfinite(p)):
    raise ValueError(f"'{name} precision' contains NaN or infinity.")
  if not covariance_type.is_matrix:
    if np.any(p <= 0.0):
      raise ValueError(f"'{name} precision' should be positive")
    return p
  mats = p[None] if covariance_type.shared else p
  for mat in mats:
    if not (np.allclose(mat, mat.T) and np.all(np.linalg.eigvalsh(mat) > 0.0)):
      raise ValueError(f"'{name} precision' should be symmetric, "
                       "positive-definite")
  return p


# Stored arrays (model files): computed in float64 on the stored values.

def _in_float64(cov, pc):
  """``(eps of the stored dtype, cov, pc)``, the arrays in float64."""
  return (float(np.finfo(cov.dtype).eps), cov.astype(np.float64),
          pc.astype(np.float64))


def stored_scales_problem(name: str, cov, pc) -> str | None:
  """Why diag/spherical ``(covariances, precisions_cholesky)`` are not
  positive and consistent, or ``None``."""
  eps, cov, pc = _in_float64(cov, pc)
  if np.any(cov <= 0):
    return f"its {name} covariances are not all positive."
  if np.any(pc <= 0):
    return "its precisions_cholesky are not all positive."
  err = np.max(np.abs(cov * pc * pc - 1.0))
  if not err <= 1e3 * eps:
    return ("its precisions_cholesky do not match its "
            f"covariances (relative error {err:.3g}).")
  return None


def stored_matrices_problem(name: str, cov, pc) -> str | None:
  """Why full/tied ``(covariances, precisions_cholesky)`` are not
  symmetric positive definite with upper, positive, consistent factors, or
  ``None``.

  The consistency tolerance grows with the conditioning of the covariance,
  so a legitimate float32 model with a collapsed (``reg_covar``-sized)
  component still loads, while a factor that belongs to another covariance
  does not.
  """
  eps, cov, pc = _in_float64(cov, pc)
  mats = cov.reshape(-1, *cov.shape[-2:])
  factors = pc.reshape(mats.shape)
  scale = np.max(np.abs(mats), axis=(-2, -1), keepdims=True)
  if np.any(np.abs(mats - np.swapaxes(mats, -1, -2)) > 1e2 * eps * scale):
    return f"its {name} covariances are not symmetric."
  try:
    chol = np.linalg.cholesky(mats)
  except np.linalg.LinAlgError:
    return f"its {name} covariances are not positive definite."
  diag = np.diagonal(factors, axis1=-2, axis2=-1)
  if np.any(np.tril(factors, -1) != 0) or np.any(diag <= 0):
    return ("its precisions_cholesky are not upper triangular "
            "with a positive diagonal.")
  # P^T Sigma P = I exactly; rounding grows like eps * cond(Sigma).
  ld = np.diagonal(chol, axis1=-2, axis2=-1)
  cond = (np.max(ld, axis=-1) / np.min(ld, axis=-1)) ** 2
  prod = np.swapaxes(factors, -1, -2) @ mats @ factors
  err = np.max(np.abs(prod - np.eye(mats.shape[-1])), axis=(-2, -1))
  if np.any(~(err <= np.maximum(1e-4, 1e3 * eps * cond))):
    return ("its precisions_cholesky do not match its covariances "
            f"(max |P^T Sigma P - I| = {np.max(err):.3g}).")
  return None
