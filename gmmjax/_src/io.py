"""Saving and loading mixtures: a versioned, pickle-free file format.

A gmmjax model file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays)
that holds only numeric arrays and one UTF-8 JSON document, so loading it never
runs code: the reader parses each ``.npy`` header itself, refuses object
dtypes and never unpickles anything. Layout (format version 1)::

  metadata.json          uint8 array: the JSON document below, UTF-8
  weights                (K,)
  means                  (K, D)
  covariances            scikit-learn's shape for the covariance type
  precisions_cholesky    same shape as covariances
  precisions             (estimator files) scikit-learn's ``precisions_``
  init.weights_init ...  (estimator files) array-valued constructor params

The JSON document records ``format`` (``"gmmjax-model"``),
``format_version``, ``gmmjax_version``, ``kind`` (``"params"`` or
``"estimator"``), ``covariance_type``, ``dtype``, ``n_components``,
``n_features``, each array's shape and dtype, and, for an estimator, its
constructor parameters and fitted scalars (``converged_``, ``n_iter_``,
``lower_bound_``, ..., the diagnostics ``jitter_`` and ``n_degenerate_``,
and ``feature_names_in_`` when it was fitted on a DataFrame). A SHA-256 digest over the JSON document and every
array's bytes catches truncated, corrupted or hand-edited files (it guards
against accidents, not against someone who recomputes it; safety against code
execution comes from the absence of pickle).

Arrays are stored bit for bit, so a round trip is exact.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import warnings

import numpy as np

from gmmjax._src import checks, model_file
from gmmjax._src.params import GMMParams

_INIT_ARRAYS = ("weights_init", "means_init", "precisions_init")


def _json_value(name, value):
  """A constructor parameter as JSON, or raise TypeError."""
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value)
  raise TypeError(f"{name}={value!r} cannot be stored in a gmmjax model file.")


def _estimator_payload(estimator):
  """Metadata and arrays of a fitted :class:`GaussianMixture`."""
  if not hasattr(estimator, "means_"):
    raise ValueError("Cannot save an unfitted GaussianMixture: call fit "
                     "first.")
  ctor, arrays = {}, {}
  for name, value in estimator.get_params().items():
    if name in _INIT_ARRAYS and value is not None:
      arrays[f"init.{name}"] = np.asarray(value)
      ctor[name] = "<array>"
    elif name == "random_state" and not (
        value is None or isinstance(value, (int, np.integer))):
      warnings.warn(
          f"random_state={value!r} is not an int or None and is stored as "
          "None: a loaded model samples with fresh randomness. Pass an int "
          "random_state to make it reproducible.", UserWarning, stacklevel=3)
      ctor[name] = None
    else:
      ctor[name] = _json_value(name, value)
  fitted = {
      "converged_": bool(estimator.converged_),
      "n_iter_": int(estimator.n_iter_),
      "lower_bound_": float(estimator.lower_bound_),
      "lower_bounds_": [float(v) for v in getattr(estimator, "lower_bounds_",
                                                  [])],
      "n_features_in_": int(estimator.n_features_in_),
  }
  if hasattr(estimator, "feature_names_in_"):  # fitted on a DataFrame
    fitted["feature_names_in_"] = [str(c) for c in
                                   estimator.feature_names_in_]
  # The diagnostics fit and partial_fit set (absent on a bare estimator).
  if hasattr(estimator, "jitter_"):
    fitted["jitter_"] = float(estimator.jitter_)
    fitted["n_degenerate_"] = int(estimator.n_degenerate_)
  if estimator.covariance_type == "lowrank":  # the packed leaves
    p = estimator.params_
    arrays.update({k: np.asarray(getattr(p, k))
                   for k in model_file.PARAM_ARRAYS})
    return estimator.covariance_type, {"constructor": ctor,
                                       "fitted": fitted}, arrays
  params = dict(weights=estimator.weights_, means=estimator.means_,
                covariances=estimator.covariances_,
                precisions_cholesky=estimator.precisions_cholesky_)
  arrays.update({k: np.asarray(v) for k, v in params.items()})
  arrays["precisions"] = np.asarray(estimator.precisions_)
  return estimator.covariance_type, {"constructor": ctor,
                                     "fitted": fitted}, arrays


def save(path, model) -> None:
  """Saves mixture parameters or a fitted estimator to a model file.

  The file is an ``.npz`` archive of plain arrays plus JSON metadata (format
  version, covariance type, dtype, gmmjax version, a SHA-256 digest); no
  pickle is involved, and the arrays are stored bit for bit. The file is
  written to a temporary name first and then renamed, so an interrupted save
  never leaves a half-written model at ``path``.

  Args:
    path: file path (the name is used as given; ``.npz`` is customary).
    model: a :class:`gmmjax.GMMParams` (unbatched: ``weights`` of shape
      ``(K,)``) or a fitted :class:`gmmjax.GaussianMixture`.

  Raises:
    ValueError: for an unfitted estimator, batched params, or params whose
      factors do not match their covariances (after ``jax.tree.map``
      arithmetic: :meth:`GMMParams.recompute_factors`).
    TypeError: for anything else.

  Example:
    >>> import os, tempfile, jax.numpy as jnp, gmmjax as gx
    >>> from gmmjax import save, load
    >>> p = gx.make_params(jnp.array([0.4, 0.6]), jnp.array([[0.0], [3.0]]),
    ...                    jnp.array([1.0, 2.0]), covariance_type="spherical")
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save(path, p)
    >>> q = load(path)
    >>> q.covariance_type, q.covariances.tolist()
    ('spherical', [1.0, 2.0])
  """
  meta = {"format": model_file.FORMAT_NAME, "format_version": model_file.FORMAT_VERSION,
          "gmmjax_version": model_file.gmmjax_version()}
  if isinstance(model, GMMParams):
    arrays = {k: np.asarray(getattr(model, k)) for k in model_file.PARAM_ARRAYS}
    if arrays["weights"].ndim != 1:
      raise ValueError(
          f"save expects one mixture (weights of shape (K,)), got weights of "
          f"shape {arrays['weights'].shape}: save each element of a batch "
          "separately.")
    checks.check_factors(model)
    ctype = model.covariance_type
    meta["kind"] = "params"
  elif _is_bayesian(model):
    raise TypeError(
        "save does not write a BayesianGaussianMixture yet (its posterior "
        "would be lost); save bgm.posterior_'s arrays, or pickle the "
        "estimator.")
  elif hasattr(model, "get_params") and hasattr(model, "covariance_type"):
    ctype, extra, arrays = _estimator_payload(model)
    meta["kind"] = "estimator"
    meta["estimator"] = {"class": "GaussianMixture", **extra}
  else:
    raise TypeError("save expects a GMMParams or a fitted GaussianMixture, "
                    f"got {type(model).__name__}.")
  means = arrays["means"]
  meta.update(covariance_type=ctype, dtype=means.dtype.name,
              n_components=int(means.shape[0]),
              n_features=int(means.shape[1]))
  try:  # what load checks: a file it would refuse is never written
    model_file.check_params_arrays(path, meta, arrays)
  except ValueError as e:
    raise ValueError(f"save would write a file that load refuses: {e}") \
        from None
  meta["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str}
                    for k, v in sorted(arrays.items())}
  meta["sha256"] = model_file.digest(meta, arrays)
  blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)

  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".gmmjax-", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **{model_file.METADATA: blob}, **arrays)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> an ordinary file's
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _is_bayesian(model) -> bool:
  """Whether ``model`` is a BayesianGaussianMixture, without importing its
  module (that imports scikit-learn, which saving params does not need):
  if nobody imported it, ``model`` is not one."""
  module = sys.modules.get("gmmjax._src.bayes_estimator")
  return module is not None and isinstance(model,
                                           module.BayesianGaussianMixture)


def _estimator_from(path, meta, arrays):
  # Imported here: the estimator imports scikit-learn when it is installed,
  # which gmmjax (that imports this module) does not (gmmjax/__init__.py).
  from gmmjax._src.estimator import GaussianMixture
  info = meta.get("estimator")
  if not isinstance(info, dict) or info.get("class") != "GaussianMixture":
    raise model_file.bad(path, "its estimator section is missing or of an unknown "
               "class.")
  ctor, fitted = info.get("constructor", {}), info.get("fitted")
  if not isinstance(ctor, dict) or not isinstance(fitted, dict):
    raise model_file.bad(path, "its estimator constructor or fitted section is not a "
               "JSON object.")
  known = set(GaussianMixture().get_params())
  unknown = sorted(set(ctor) - known)
  if unknown:
    raise model_file.bad(path, f"unknown constructor parameters {unknown!r:.200}.")
  ctor = dict(ctor)
  for name in _INIT_ARRAYS:
    if ctor.get(name) == "<array>":
      key = f"init.{name}"
      if key not in arrays:
        raise model_file.bad(path, f"array {key!r} is missing.")
      if arrays[key].dtype.kind not in "fiu":
        raise model_file.bad(path, f"array {key!r} is not numeric.")
      ctor[name] = arrays[key]
  extra = sorted(set(arrays) - set(model_file.PARAM_ARRAYS) - {"precisions"} - {
      f"init.{name}" for name in _INIT_ARRAYS if ctor.get(name) is not None})
  if extra:
    raise model_file.bad(path, f"unexpected arrays {extra!r:.200}.")
  state = ctor.get("random_state")
  if state is not None and not model_file.is_count(state + 1 if isinstance(
      state, int) else None):
    raise model_file.bad(path, f"random_state {state!r:.50} is not None or an int.")
  if ctor.get("covariance_type", "full") != meta["covariance_type"]:
    raise model_file.bad(path, "the estimator's covariance_type disagrees with the "
               "file's.")
  if "precisions" not in arrays and meta["covariance_type"] != "lowrank":
    raise model_file.bad(path, "array 'precisions' is missing.")
  try:
    fitted = _fitted_scalars(fitted, meta)
  except (KeyError, TypeError, ValueError) as e:
    raise model_file.bad(path, f"its fitted attributes are incomplete or invalid "
               f"({e!r:.200}).") from e
  # The file's arrays as they are (bit for bit, whatever JAX's x64 mode):
  # the estimator keeps NumPy arrays. Its precisions_ are computed from the
  # factors as fit computes them (the stored ones were checked to agree).
  params = GMMParams(*(arrays[k] for k in model_file.PARAM_ARRAYS),
                     covariance_type=meta["covariance_type"])
  try:
    return GaussianMixture.from_params(params, fitted=fitted, **ctor)
  except (TypeError, ValueError) as e:
    raise model_file.bad(path, f"its constructor parameters are invalid ({e}).") from e


def _fitted_scalars(fitted, meta) -> dict:
  """The estimator's fitted scalars from the file, checked (TypeError or
  KeyError otherwise); ``n_features_in_`` must match the means."""
  converged, n_iter = fitted["converged_"], fitted["n_iter_"]
  lower_bound, n_in = fitted["lower_bound_"], fitted["n_features_in_"]
  bounds = fitted.get("lower_bounds_", [])
  if not (isinstance(converged, bool) and model_file.is_count(n_iter + 1)
          and isinstance(lower_bound, (int, float))
          and not isinstance(lower_bound, bool) and model_file.is_count(n_in)
          and isinstance(bounds, list)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in bounds)):
    raise TypeError("wrong types")
  if n_in != meta["n_features"]:
    raise ValueError("n_features_in_ disagrees with the means' shape")
  out = dict(converged_=converged, n_iter_=n_iter,
             lower_bound_=float(lower_bound),
             lower_bounds_=[float(v) for v in bounds])
  if "feature_names_in_" in fitted:
    columns = fitted["feature_names_in_"]
    if not (isinstance(columns, list) and len(columns) == n_in
            and all(isinstance(c, str) for c in columns)):
      raise TypeError("wrong feature_names_in_")
    out["feature_names_in_"] = columns
  if "jitter_" in fitted or "n_degenerate_" in fitted:
    jitter, n_degenerate = fitted["jitter_"], fitted["n_degenerate_"]
    if not (isinstance(jitter, (int, float)) and not isinstance(jitter, bool)
            and math.isfinite(jitter) and jitter >= 0
            and not isinstance(n_degenerate, bool)
            and model_file.is_count(n_degenerate + 1)
            and n_degenerate <= meta["n_components"]):
      raise TypeError("wrong jitter_ or n_degenerate_")
    out.update(jitter_=float(jitter), n_degenerate_=n_degenerate)
  return out


def load(path):
  """Loads what :func:`save` wrote: a ``GMMParams`` or a fitted estimator.

  Nothing in the file is trusted: each ``.npy`` header is checked against
  its member's size before any data is read (no allocation the file does
  not justify, no zip bombs), object dtypes are refused (nothing is ever
  unpickled), and the format name, format version, checksum, array shapes
  and dtypes, and the values (finite; weights a probability vector;
  covariances symmetric positive definite; precision factors upper
  triangular, positive and consistent with them; estimator parameters
  valid) are checked before anything is built. See docs/robustness.md.

  Args:
    path: a file written by :func:`save`.

  Returns:
    The saved object: a :class:`gmmjax.GMMParams` (JAX arrays; a float64
    model becomes float32 with a warning unless JAX's x64 mode is on) or a
    fitted :class:`gmmjax.GaussianMixture` (NumPy attributes, bit for bit).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: if the file is not a gmmjax model file, is truncated,
      corrupted or modified, or has an unsupported format version; the
      message says which.

  Example:
    >>> import os, tempfile, numpy as np, gmmjax as gx
    >>> from gmmjax import save, load
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> gm = gx.GaussianMixture(2, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "gm.npz")
    >>> save(path, gm)
    >>> bool(np.array_equal(load(path).predict(X), gm.predict(X)))
    True
  """
  meta, arrays = model_file.read_archive(path)
  model_file.check_params_arrays(path, meta, arrays)
  kind = meta.get("kind")
  if kind == "params":
    if set(arrays) != set(model_file.PARAM_ARRAYS):
      raise model_file.bad(path, f"unexpected arrays {sorted(arrays)} for params.")
    return model_file.params_from_arrays(arrays, meta["covariance_type"])
  if kind == "estimator":
    return _estimator_from(path, meta, arrays)
  raise model_file.bad(path, f"unknown kind {kind!r:.50}.")


def read_metadata(path) -> dict:
  """The JSON metadata of a model file (after the integrity checks).

  Args:
    path: a file written by :func:`save`.

  Returns:
    The metadata dict: ``format``, ``format_version``, ``gmmjax_version``,
    ``kind``, ``covariance_type``, ``dtype``, ``n_components``,
    ``n_features``, ``arrays``, ``sha256`` (and ``estimator``).

  Example:
    >>> import os, tempfile, jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones((1, 2)),
    ...                    covariance_type="diag")
    >>> path = os.path.join(tempfile.mkdtemp(), "p.npz")
    >>> gx.save(path, p)
    >>> meta = gx.read_metadata(path)
    >>> meta["format_version"], meta["kind"], meta["n_features"]
    (1, 'params', 2)
  """
  return model_file.read_archive(path)[0]
