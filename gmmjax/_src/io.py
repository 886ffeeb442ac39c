"""Saving and loading mixtures: a versioned, pickle-free file format.

A gmmjax model file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays)
that holds only numeric arrays and one UTF-8 JSON document, so loading it never
runs code: every array is read with ``allow_pickle=False``. Layout (format
version 1)::

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
``lower_bound_``, ...). A SHA-256 digest over the JSON document and every
array's bytes catches truncated, corrupted or hand-edited files (it guards
against accidents, not against someone who recomputes it; safety against code
execution comes from the absence of pickle).

Arrays are stored bit for bit, so a round trip is exact.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
import tempfile
import warnings
import zipfile

import numpy as np

from gmmjax._src import covariance as cov_ops
from gmmjax._src.params import GMMParams

FORMAT_NAME = "gmmjax-model"
FORMAT_VERSION = 1

_PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
_METADATA = "metadata.json"
_INIT_ARRAYS = ("weights_init", "means_init", "precisions_init")


def _gmmjax_version() -> str:
  from importlib import metadata
  try:
    return metadata.version("gmmjax")
  except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    return "unknown"


def _digest(meta: dict, arrays: dict) -> str:
  """SHA-256 of the metadata (minus its digest) and every array's bytes."""
  h = hashlib.sha256()
  body = {k: v for k, v in meta.items() if k != "sha256"}
  h.update(json.dumps(body, sort_keys=True).encode())
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(name.encode())
    h.update(str(a.dtype.str).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


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
    ValueError: for an unfitted estimator or batched params.
    TypeError: for anything else.

  Example:
    >>> import os, tempfile, jax.numpy as jnp, gmmjax as gx
    >>> from gmmjax._src.io import save, load
    >>> p = gx.make_params(jnp.array([0.4, 0.6]), jnp.array([[0.0], [3.0]]),
    ...                    jnp.array([1.0, 2.0]), covariance_type="spherical")
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save(path, p)
    >>> q = load(path)
    >>> q.covariance_type, q.covariances.tolist()
    ('spherical', [1.0, 2.0])
  """
  meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
          "gmmjax_version": _gmmjax_version()}
  if isinstance(model, GMMParams):
    arrays = {k: np.asarray(getattr(model, k)) for k in _PARAM_ARRAYS}
    if arrays["weights"].ndim != 1:
      raise ValueError(
          f"save expects one mixture (weights of shape (K,)), got weights of "
          f"shape {arrays['weights'].shape}: save each element of a batch "
          "separately.")
    ctype = model.covariance_type
    meta["kind"] = "params"
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
  meta["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.str}
                    for k, v in sorted(arrays.items())}
  meta["sha256"] = _digest(meta, arrays)
  blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)

  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".gmmjax-", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **{_METADATA: blob}, **arrays)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> an ordinary file's
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _bad(path, why: str) -> ValueError:
  return ValueError(f"{path!s} is not a valid gmmjax model file: {why}")


def _read_archive(path):
  """The metadata dict and arrays of a model file, checked for integrity."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such model file: {path!r}")
  try:
    with open(path, "rb") as f:
      raw = f.read()
    with np.load(_io.BytesIO(raw), allow_pickle=False) as npz:
      names = list(npz.files)
      if _METADATA not in names:
        raise _bad(path, "it has no metadata (was it written by gmmjax.save?)")
      contents = {name: npz[name] for name in names}
  except ValueError as e:
    if "not a valid gmmjax model file" in str(e):
      raise
    raise _bad(path, f"it could not be read as an .npz archive ({e}).") from e
  except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise _bad(path, "it is truncated or not an .npz archive "
               f"({type(e).__name__}: {e}).") from e
  blob = contents.pop(_METADATA)
  try:
    if blob.dtype != np.uint8 or blob.ndim != 1:
      raise TypeError("metadata is not a byte string")
    meta = json.loads(blob.tobytes().decode("utf-8"))
    if not isinstance(meta, dict):
      raise TypeError("metadata is not a JSON object")
  except (TypeError, ValueError) as e:
    raise _bad(path, f"its metadata is unreadable ({e}).") from e
  if meta.get("format") != FORMAT_NAME:
    raise _bad(path, f"format is {meta.get('format')!r}, expected "
               f"{FORMAT_NAME!r}.")
  version = meta.get("format_version")
  if not isinstance(version, int) or isinstance(version, bool):
    raise _bad(path, f"format_version {version!r} is not an integer.")
  if version != FORMAT_VERSION:
    newer = version > FORMAT_VERSION
    raise ValueError(
        f"{path} has gmmjax model format version {version}, but this gmmjax "
        f"({_gmmjax_version()}) reads version {FORMAT_VERSION}"
        + (": upgrade gmmjax to load it." if newer else "."))
  declared = meta.get("arrays")
  if not isinstance(declared, dict) or set(declared) != set(contents):
    raise _bad(path, f"it holds arrays {sorted(contents)} but its metadata "
               f"declares {sorted(declared or {})}.")
  for name, a in contents.items():
    spec = declared[name]
    if (not isinstance(spec, dict) or list(a.shape) != spec.get("shape")
        or a.dtype.str != spec.get("dtype")):
      raise _bad(path, f"array {name!r} has shape {a.shape} and dtype "
                 f"{a.dtype.str}, but the metadata declares {spec}.")
  if meta.get("sha256") != _digest(meta, contents):
    raise _bad(path, "its checksum does not match its contents (the file "
               "was modified or corrupted after it was saved).")
  return meta, contents


def _check_params_arrays(path, meta, arrays):
  """Shapes, dtypes and values of the mixture arrays are consistent."""
  ctype = meta.get("covariance_type")
  if ctype not in cov_ops.COVARIANCE_TYPES:
    raise _bad(path, f"unknown covariance_type {ctype!r}.")
  for name in _PARAM_ARRAYS:
    if name not in arrays:
      raise _bad(path, f"array {name!r} is missing.")
  k, d = meta.get("n_components"), meta.get("n_features")
  if not (isinstance(k, int) and isinstance(d, int) and k >= 1 and d >= 1):
    raise _bad(path, f"n_components={k!r}, n_features={d!r} are invalid.")
  expected = {"weights": (k,), "means": (k, d),
              "covariances": cov_ops.covariance_shape(ctype, k, d),
              "precisions_cholesky": cov_ops.covariance_shape(ctype, k, d)}
  dtype = meta.get("dtype")
  for name, shape in expected.items():
    a = arrays[name]
    if a.shape != shape:
      raise _bad(path, f"{name} has shape {a.shape}; a {ctype} mixture with "
                 f"{k} components and {d} features needs {shape}.")
    if a.dtype.kind != "f" or a.dtype.name != dtype:
      raise _bad(path, f"{name} has dtype {a.dtype}, expected {dtype}.")
    if not np.all(np.isfinite(a)):
      raise _bad(path, f"{name} contains NaN or infinity.")
  w = arrays["weights"].astype(np.float64)
  if np.any(w < 0) or not math.isclose(float(np.sum(w)), 1.0, rel_tol=1e-4):
    raise _bad(path, "its weights are not a probability vector.")


def _params_from_arrays(arrays, ctype) -> GMMParams:
  import jax
  import jax.numpy as jnp
  dtype = arrays["means"].dtype
  if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
    warnings.warn(
        "The model was saved in float64 but JAX's x64 mode is off, so its "
        "parameters are converted to float32. Enable it with "
        "jax.config.update('jax_enable_x64', True) before loading to keep "
        "float64.", UserWarning, stacklevel=3)
  return GMMParams(*(jnp.asarray(arrays[k]) for k in _PARAM_ARRAYS),
                   covariance_type=ctype)


def _estimator_from(path, meta, arrays):
  from gmmjax._src.estimator import GaussianMixture
  info = meta.get("estimator")
  if not isinstance(info, dict) or info.get("class") != "GaussianMixture":
    raise _bad(path, "its estimator section is missing or of an unknown "
               "class.")
  ctor = dict(info.get("constructor") or {})
  fitted = info.get("fitted") or {}
  for name in _INIT_ARRAYS:
    if ctor.get(name) == "<array>":
      key = f"init.{name}"
      if key not in arrays:
        raise _bad(path, f"array {key!r} is missing.")
      ctor[name] = arrays[key]
  try:
    gm = GaussianMixture(**ctor)
  except TypeError as e:
    raise _bad(path, f"its constructor parameters are invalid ({e}).") from e
  if gm.covariance_type != meta["covariance_type"]:
    raise _bad(path, "the estimator's covariance_type disagrees with the "
               "file's.")
  if "precisions" not in arrays:
    raise _bad(path, "array 'precisions' is missing.")
  try:
    gm.weights_ = arrays["weights"]
    gm.means_ = arrays["means"]
    gm.covariances_ = arrays["covariances"]
    gm.precisions_cholesky_ = arrays["precisions_cholesky"]
    gm.precisions_ = arrays["precisions"]
    gm.converged_ = bool(fitted["converged_"])
    gm.n_iter_ = int(fitted["n_iter_"])
    gm.lower_bound_ = float(fitted["lower_bound_"])
    gm.lower_bounds_ = [float(v) for v in fitted.get("lower_bounds_", [])]
    gm.n_features_in_ = int(fitted["n_features_in_"])
  except (KeyError, TypeError, ValueError) as e:
    raise _bad(path, f"its fitted attributes are incomplete ({e!r}).") from e
  if gm.n_features_in_ != meta["n_features"]:
    raise _bad(path, "n_features_in_ disagrees with the means' shape.")
  gm._dtype = np.dtype(arrays["means"].dtype)
  return gm


def load(path):
  """Loads what :func:`save` wrote: a ``GMMParams`` or a fitted estimator.

  Every array is read with ``allow_pickle=False``; the format name, format
  version, checksum, array shapes and dtypes, and the values (finite, weights
  a probability vector) are checked before anything is built.

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
    >>> from gmmjax._src.io import save, load
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> gm = gx.GaussianMixture(2, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "gm.npz")
    >>> save(path, gm)
    >>> bool(np.array_equal(load(path).predict(X), gm.predict(X)))
    True
  """
  meta, arrays = _read_archive(path)
  _check_params_arrays(path, meta, arrays)
  kind = meta.get("kind")
  if kind == "params":
    if set(arrays) != set(_PARAM_ARRAYS):
      raise _bad(path, f"unexpected arrays {sorted(arrays)} for params.")
    return _params_from_arrays(arrays, meta["covariance_type"])
  if kind == "estimator":
    return _estimator_from(path, meta, arrays)
  raise _bad(path, f"unknown kind {kind!r}.")


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
    >>> from gmmjax._src.io import save, read_metadata
    >>> p = gx.make_params(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones((1, 2)),
    ...                    covariance_type="diag")
    >>> path = os.path.join(tempfile.mkdtemp(), "p.npz")
    >>> save(path, p)
    >>> meta = read_metadata(path)
    >>> meta["format_version"], meta["kind"], meta["n_features"]
    (1, 'params', 2)
  """
  return _read_archive(path)[0]
