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
``lower_bound_``, ..., and the diagnostics ``jitter_`` and
``n_degenerate_``). A SHA-256 digest over the JSON document and every
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
import struct
import tempfile
import warnings
import zipfile

import numpy as np

from gmmjax._src import covariance as cov_ops
from gmmjax._src import io_lowrank
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
  # The diagnostics fit and partial_fit set (absent on a bare estimator).
  if hasattr(estimator, "jitter_"):
    fitted["jitter_"] = float(estimator.jitter_)
    fitted["n_degenerate_"] = int(estimator.n_degenerate_)
  if estimator.covariance_type == "lowrank":  # the packed leaves
    p = estimator.params_
    arrays.update({k: np.asarray(getattr(p, k)) for k in _PARAM_ARRAYS})
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
    ValueError: for an unfitted estimator or batched params.
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


# A deflated member may expand at most this much (plus a little): gmmjax
# writes stored (uncompressed) members, floats barely compress, and a
# larger ratio is the signature of a zip bomb.
_MAX_EXPANSION = 100
_MAX_HEADER = 10_000  # bytes of a .npy header (NumPy's own default limit)
# Everything a hostile or damaged archive can make the readers below raise.
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
                KeyError, NotImplementedError, RuntimeError, ValueError,
                TypeError, OverflowError, struct.error, UnicodeError,
                SyntaxError, MemoryError, RecursionError, IndexError)


def _member_array(path, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
  """One ``.npy`` member, its header checked before any data is read.

  The header's shape and dtype must account exactly for the member's
  declared size, so a header that claims a huge array is refused without
  allocating it, and object (pickled) dtypes are refused outright.
  """
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise _bad(path, f"member {info.filename!r} uses an unsupported "
               "compression method.")
  if info.compress_type == zipfile.ZIP_DEFLATED and (
      info.file_size > _MAX_EXPANSION * info.compress_size + 65536):
    raise _bad(path, f"member {info.filename!r} would expand from "
               f"{info.compress_size} to {info.file_size} bytes.")
  with archive.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(
          f, max_header_size=_MAX_HEADER)
    elif version in ((2, 0), (3, 0)):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(
          f, max_header_size=_MAX_HEADER)
    else:
      raise _bad(path, f"member {info.filename!r} has .npy version "
                 f"{version}.")
    offset = f.tell()
  if dtype.hasobject or dtype.fields is not None or dtype.subdtype:
    raise _bad(path, f"member {info.filename!r} holds Python objects or "
               f"structured data (dtype {dtype}); gmmjax files hold only "
               "plain numbers and are never unpickled.")
  if not all(isinstance(n, int) and n >= 0 for n in shape):
    raise _bad(path, f"member {info.filename!r} declares shape {shape}.")
  nbytes = math.prod(shape) * dtype.itemsize
  if offset + nbytes != info.file_size:
    raise _bad(path, f"member {info.filename!r} declares shape {shape} of "
               f"{dtype} ({nbytes} bytes) but holds "
               f"{info.file_size - offset} bytes of data.")
  with archive.open(info) as f:
    f.seek(offset)
    data = f.read(nbytes)
  if len(data) != nbytes:
    raise _bad(path, f"member {info.filename!r} is truncated.")
  a = np.frombuffer(data, dtype=dtype).reshape(shape,
                                               order="F" if fortran else "C")
  return np.array(a)  # writable, C-ordered, owns its data


def _read_members(path, raw: bytes) -> dict:
  """The arrays of an ``.npz`` archive, read without trusting any size."""
  with zipfile.ZipFile(_io.BytesIO(raw)) as archive:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
      raise _bad(path, "it has duplicate members.")
    contents = {}
    for info in infos:
      if not info.filename.endswith(".npy") or info.is_dir():
        raise _bad(path, f"unexpected member {info.filename!r}.")
      contents[info.filename[:-4]] = _member_array(path, archive, info)
  return contents


def _read_archive(path):
  """The metadata dict and arrays of a model file, checked for integrity."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such model file: {path!r}")
  try:
    with open(path, "rb") as f:
      raw = f.read()
    contents = _read_members(path, raw)
  except _READ_ERRORS as e:
    if isinstance(e, ValueError) and "not a valid gmmjax model file" in str(e):
      raise
    raise _bad(path, "it is truncated, corrupted or not an .npz archive "
               f"({type(e).__name__}: {e}).") from e
  if _METADATA not in contents:
    raise _bad(path, "it has no metadata (was it written by gmmjax.save?)")
  blob = contents.pop(_METADATA)
  try:
    if blob.dtype != np.uint8 or blob.ndim != 1:
      raise TypeError("metadata is not a byte string")
    meta = json.loads(blob.tobytes().decode("utf-8"))
    if not isinstance(meta, dict):
      raise TypeError("metadata is not a JSON object")
  except (TypeError, ValueError, RecursionError) as e:
    raise _bad(path, f"its metadata is unreadable ({type(e).__name__}: "
               f"{str(e)[:200]}).") from e
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
               f"declares {sorted(declared) if isinstance(declared, dict) else declared!r}.")
  for name, a in contents.items():
    spec = declared[name]
    if (not isinstance(spec, dict) or list(a.shape) != spec.get("shape")
        or a.dtype.str != spec.get("dtype")):
      raise _bad(path, f"array {name!r} has shape {a.shape} and dtype "
                 f"{a.dtype.str}, but the metadata declares {spec!r:.200}.")
  if meta.get("sha256") != _digest(meta, contents):
    raise _bad(path, "its checksum does not match its contents (the file "
               "was modified or corrupted after it was saved).")
  return meta, contents


def _is_count(n) -> bool:
  return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def _check_covariances(path, ctype, cov, prec_chol):
  """Covariances positive definite, factors upper, positive and consistent.

  Computed in float64 on the stored values. The consistency tolerance
  grows with the conditioning of the covariance, so a legitimate float32
  model with a collapsed (``reg_covar``-sized) component still loads, while
  a factor that belongs to another covariance does not.
  """
  eps = float(np.finfo(cov.dtype).eps)
  cov = cov.astype(np.float64)
  prec_chol = prec_chol.astype(np.float64)
  if ctype in ("diag", "spherical"):
    if np.any(cov <= 0):
      raise _bad(path, f"its {ctype} covariances are not all positive.")
    if np.any(prec_chol <= 0):
      raise _bad(path, "its precisions_cholesky are not all positive.")
    err = np.max(np.abs(cov * prec_chol * prec_chol - 1.0))
    if not err <= 1e3 * eps:
      raise _bad(path, "its precisions_cholesky do not match its "
                 f"covariances (relative error {err:.3g}).")
    return
  mats = cov.reshape(-1, *cov.shape[-2:])
  factors = prec_chol.reshape(mats.shape)
  scale = np.max(np.abs(mats), axis=(-2, -1), keepdims=True)
  if np.any(np.abs(mats - np.swapaxes(mats, -1, -2)) > 1e2 * eps * scale):
    raise _bad(path, f"its {ctype} covariances are not symmetric.")
  try:
    chol = np.linalg.cholesky(mats)
  except np.linalg.LinAlgError as e:
    raise _bad(path, f"its {ctype} covariances are not positive "
               "definite.") from e
  diag = np.diagonal(factors, axis1=-2, axis2=-1)
  if np.any(np.tril(factors, -1) != 0) or np.any(diag <= 0):
    raise _bad(path, "its precisions_cholesky are not upper triangular "
               "with a positive diagonal.")
  # P^T Sigma P = I exactly; rounding grows like eps * cond(Sigma).
  ld = np.diagonal(chol, axis1=-2, axis2=-1)
  cond = (np.max(ld, axis=-1) / np.min(ld, axis=-1)) ** 2
  prod = np.swapaxes(factors, -1, -2) @ mats @ factors
  err = np.max(np.abs(prod - np.eye(mats.shape[-1])), axis=(-2, -1))
  if np.any(~(err <= np.maximum(1e-4, 1e3 * eps * cond))):
    raise _bad(path, "its precisions_cholesky do not match its covariances "
               f"(max |P^T Sigma P - I| = {np.max(err):.3g}).")


def _check_params_arrays(path, meta, arrays):
  """Shapes, dtypes and values of the mixture arrays are consistent.

  Non-native byte orders are converted in place in ``arrays``.
  """
  ctype = meta.get("covariance_type")
  if not isinstance(ctype, str) or ctype not in cov_ops.ALL_TYPES:
    raise _bad(path, f"unknown covariance_type {ctype!r:.100}.")
  for name in _PARAM_ARRAYS:
    if name not in arrays:
      raise _bad(path, f"array {name!r} is missing.")
  k, d = meta.get("n_components"), meta.get("n_features")
  if not (_is_count(k) and _is_count(d)):
    raise _bad(path, f"n_components={k!r:.50}, n_features={d!r:.50} are "
               "invalid.")
  expected = {"weights": (k,), "means": (k, d)}
  if ctype == "lowrank":
    lowrank = io_lowrank.shapes(arrays, k, d)
    if lowrank is None:
      raise _bad(path, f"covariances have shape {arrays['covariances'].shape}"
                 f"; a lowrank mixture with {k} components and {d} features "
                 "needs (K, D, q + 1) with 1 <= q < D.")
    expected.update(lowrank)
  else:
    expected.update({
        "covariances": cov_ops.covariance_shape(ctype, k, d),
        "precisions_cholesky": cov_ops.covariance_shape(ctype, k, d)})
  if "precisions" in arrays:
    expected["precisions"] = expected["covariances"]
  dtype = meta.get("dtype")
  if dtype not in ("float32", "float64"):
    raise _bad(path, f"dtype {dtype!r:.50} is not float32 or float64.")
  for name, shape in expected.items():
    a = arrays[name]
    if a.shape != shape:
      raise _bad(path, f"{name} has shape {a.shape}; a {ctype} mixture with "
                 f"{k} components and {d} features needs {shape}.")
    if a.dtype.kind != "f" or a.dtype.name != dtype:
      raise _bad(path, f"{name} has dtype {a.dtype}, expected {dtype}.")
    if not np.all(np.isfinite(a)):
      raise _bad(path, f"{name} contains NaN or infinity.")
    if not a.dtype.isnative:
      arrays[name] = a.astype(a.dtype.newbyteorder("="))
  w = arrays["weights"].astype(np.float64)
  if np.any(w < 0) or not math.isclose(float(np.sum(w)), 1.0, rel_tol=1e-4):
    raise _bad(path, "its weights are not a probability vector.")
  if ctype == "lowrank":
    why = io_lowrank.check(arrays["covariances"],
                           arrays["precisions_cholesky"])
    if why is not None:
      raise _bad(path, why)
  else:
    _check_covariances(path, ctype, arrays["covariances"],
                       arrays["precisions_cholesky"])
  if "precisions" in arrays:
    prec = arrays["precisions"].astype(np.float64)
    factor = arrays["precisions_cholesky"].astype(np.float64)
    implied = (factor @ np.swapaxes(factor, -1, -2)
               if ctype in ("full", "tied") else factor * factor)
    eps = float(np.finfo(arrays["precisions"].dtype).eps)
    scale = np.max(np.abs(implied))
    if not np.max(np.abs(prec - implied)) <= 1e3 * eps * scale:
      raise _bad(path, "its precisions do not match its "
                 "precisions_cholesky.")


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
  from gmmjax import GaussianMixture  # here: gmmjax imports this module
  info = meta.get("estimator")
  if not isinstance(info, dict) or info.get("class") != "GaussianMixture":
    raise _bad(path, "its estimator section is missing or of an unknown "
               "class.")
  ctor, fitted = info.get("constructor", {}), info.get("fitted")
  if not isinstance(ctor, dict) or not isinstance(fitted, dict):
    raise _bad(path, "its estimator constructor or fitted section is not a "
               "JSON object.")
  known = set(GaussianMixture().get_params())
  unknown = sorted(set(ctor) - known)
  if unknown:
    raise _bad(path, f"unknown constructor parameters {unknown!r:.200}.")
  ctor = dict(ctor)
  for name in _INIT_ARRAYS:
    if ctor.get(name) == "<array>":
      key = f"init.{name}"
      if key not in arrays:
        raise _bad(path, f"array {key!r} is missing.")
      if arrays[key].dtype.kind not in "fiu":
        raise _bad(path, f"array {key!r} is not numeric.")
      ctor[name] = arrays[key]
  extra = sorted(set(arrays) - set(_PARAM_ARRAYS) - {"precisions"} - {
      f"init.{name}" for name in _INIT_ARRAYS if ctor.get(name) is not None})
  if extra:
    raise _bad(path, f"unexpected arrays {extra!r:.200}.")
  state = ctor.get("random_state")
  if state is not None and not _is_count(state + 1 if isinstance(
      state, int) else None):
    raise _bad(path, f"random_state {state!r:.50} is not None or an int.")
  if ctor.get("covariance_type", "full") != meta["covariance_type"]:
    raise _bad(path, "the estimator's covariance_type disagrees with the "
               "file's.")
  if "precisions" not in arrays and meta["covariance_type"] != "lowrank":
    raise _bad(path, "array 'precisions' is missing.")
  try:
    fitted = _fitted_scalars(fitted, meta)
  except (KeyError, TypeError, ValueError) as e:
    raise _bad(path, f"its fitted attributes are incomplete or invalid "
               f"({e!r:.200}).") from e
  # The file's arrays as they are (bit for bit, whatever JAX's x64 mode):
  # the estimator keeps NumPy arrays. Its precisions_ are computed from the
  # factors as fit computes them (the stored ones were checked to agree).
  params = GMMParams(*(arrays[k] for k in _PARAM_ARRAYS),
                     covariance_type=meta["covariance_type"])
  try:
    return GaussianMixture.from_params(params, fitted=fitted, **ctor)
  except (TypeError, ValueError) as e:
    raise _bad(path, f"its constructor parameters are invalid ({e}).") from e


def _fitted_scalars(fitted, meta) -> dict:
  """The estimator's fitted scalars from the file, checked (TypeError or
  KeyError otherwise); ``n_features_in_`` must match the means."""
  converged, n_iter = fitted["converged_"], fitted["n_iter_"]
  lower_bound, n_in = fitted["lower_bound_"], fitted["n_features_in_"]
  bounds = fitted.get("lower_bounds_", [])
  if not (isinstance(converged, bool) and _is_count(n_iter + 1)
          and isinstance(lower_bound, (int, float))
          and not isinstance(lower_bound, bool) and _is_count(n_in)
          and isinstance(bounds, list)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in bounds)):
    raise TypeError("wrong types")
  if n_in != meta["n_features"]:
    raise ValueError("n_features_in_ disagrees with the means' shape")
  out = dict(converged_=converged, n_iter_=n_iter,
             lower_bound_=float(lower_bound),
             lower_bounds_=[float(v) for v in bounds])
  if "jitter_" in fitted or "n_degenerate_" in fitted:
    jitter, n_degenerate = fitted["jitter_"], fitted["n_degenerate_"]
    if not (isinstance(jitter, (int, float)) and not isinstance(jitter, bool)
            and math.isfinite(jitter) and jitter >= 0
            and not isinstance(n_degenerate, bool)
            and _is_count(n_degenerate + 1)
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
  meta, arrays = _read_archive(path)
  _check_params_arrays(path, meta, arrays)
  kind = meta.get("kind")
  if kind == "params":
    if set(arrays) != set(_PARAM_ARRAYS):
      raise _bad(path, f"unexpected arrays {sorted(arrays)} for params.")
    return _params_from_arrays(arrays, meta["covariance_type"])
  if kind == "estimator":
    return _estimator_from(path, meta, arrays)
  raise _bad(path, f"unknown kind {kind!r:.50}.")


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
  return _read_archive(path)[0]
