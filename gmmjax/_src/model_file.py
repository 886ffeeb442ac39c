"""Reading a gmmjax model file safely: the archive, its checksum and the
checks of its arrays (the format is described in ``io.py``).

Nothing here unpickles or evaluates: each ``.npy`` header is parsed by hand,
object dtypes are refused, deflated members are bounded (zip bombs), and
every array is checked (shapes, finiteness, positive-definite covariances,
factors consistent with them) before a mixture is built from it.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
import struct
import warnings
import zipfile

import numpy as np

from gmmjax._src import covariance as cov_ops
from gmmjax._src.params import GMMParams

FORMAT_NAME = "gmmjax-model"
FORMAT_VERSION = 1
PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
METADATA = "metadata.json"

def gmmjax_version() -> str:
  """``gmmjax.__version__``: the package's metadata is absent where it
  runs from a source checkout on ``PYTHONPATH`` (files then said
  ``"unknown"``)."""
  import gmmjax
  return gmmjax.__version__


def digest(meta: dict, arrays: dict) -> str:
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


def bad(path, why: str) -> ValueError:
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
    raise bad(path, f"member {info.filename!r} uses an unsupported "
               "compression method.")
  if info.compress_type == zipfile.ZIP_DEFLATED and (
      info.file_size > _MAX_EXPANSION * info.compress_size + 65536):
    raise bad(path, f"member {info.filename!r} would expand from "
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
      raise bad(path, f"member {info.filename!r} has .npy version "
                 f"{version}.")
    offset = f.tell()
  if dtype.hasobject or dtype.fields is not None or dtype.subdtype:
    raise bad(path, f"member {info.filename!r} holds Python objects or "
               f"structured data (dtype {dtype}); gmmjax files hold only "
               "plain numbers and are never unpickled.")
  if not all(isinstance(n, int) and n >= 0 for n in shape):
    raise bad(path, f"member {info.filename!r} declares shape {shape}.")
  nbytes = math.prod(shape) * dtype.itemsize
  if offset + nbytes != info.file_size:
    raise bad(path, f"member {info.filename!r} declares shape {shape} of "
               f"{dtype} ({nbytes} bytes) but holds "
               f"{info.file_size - offset} bytes of data.")
  with archive.open(info) as f:
    f.seek(offset)
    data = f.read(nbytes)
  if len(data) != nbytes:
    raise bad(path, f"member {info.filename!r} is truncated.")
  a = np.frombuffer(data, dtype=dtype).reshape(shape,
                                               order="F" if fortran else "C")
  return np.array(a)  # writable, C-ordered, owns its data


def _read_members(path, raw: bytes) -> dict:
  """The arrays of an ``.npz`` archive, read without trusting any size."""
  with zipfile.ZipFile(_io.BytesIO(raw)) as archive:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
      raise bad(path, "it has duplicate members.")
    contents = {}
    for info in infos:
      if not info.filename.endswith(".npy") or info.is_dir():
        raise bad(path, f"unexpected member {info.filename!r}.")
      contents[info.filename[:-4]] = _member_array(path, archive, info)
  return contents


def read_archive(path):
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
    raise bad(path, "it is truncated, corrupted or not an .npz archive "
               f"({type(e).__name__}: {e}).") from e
  if METADATA not in contents:
    raise bad(path, "it has no metadata (was it written by gmmjax.save?)")
  blob = contents.pop(METADATA)
  try:
    if blob.dtype != np.uint8 or blob.ndim != 1:
      raise TypeError("metadata is not a byte string")
    meta = json.loads(blob.tobytes().decode("utf-8"))
    if not isinstance(meta, dict):
      raise TypeError("metadata is not a JSON object")
  except (TypeError, ValueError, RecursionError) as e:
    raise bad(path, f"its metadata is unreadable ({type(e).__name__}: "
               f"{str(e)[:200]}).") from e
  if meta.get("format") != FORMAT_NAME:
    raise bad(path, f"format is {meta.get('format')!r}, expected "
               f"{FORMAT_NAME!r}.")
  version = meta.get("format_version")
  if not isinstance(version, int) or isinstance(version, bool):
    raise bad(path, f"format_version {version!r} is not an integer.")
  if version != FORMAT_VERSION:
    newer = version > FORMAT_VERSION
    raise ValueError(
        f"{path} has gmmjax model format version {version}, but this gmmjax "
        f"({gmmjax_version()}) reads version {FORMAT_VERSION}"
        + (": upgrade gmmjax to load it." if newer else "."))
  declared = meta.get("arrays")
  if not isinstance(declared, dict) or set(declared) != set(contents):
    raise bad(path, f"it holds arrays {sorted(contents)} but its metadata "
               f"declares {sorted(declared) if isinstance(declared, dict) else declared!r}.")
  for name, a in contents.items():
    spec = declared[name]
    if (not isinstance(spec, dict) or list(a.shape) != spec.get("shape")
        or a.dtype.str != spec.get("dtype")):
      raise bad(path, f"array {name!r} has shape {a.shape} and dtype "
                 f"{a.dtype.str}, but the metadata declares {spec!r:.200}.")
  if meta.get("sha256") != digest(meta, contents):
    raise bad(path, "its checksum does not match its contents (the file "
               "was modified or corrupted after it was saved).")
  return meta, contents


def is_count(n) -> bool:
  return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def check_params_arrays(path, meta, arrays):
  """Shapes, dtypes and values of the mixture arrays are consistent.

  Non-native byte orders are converted in place in ``arrays``.
  """
  ctype = meta.get("covariance_type")
  if not isinstance(ctype, str) or ctype not in cov_ops.ALL_TYPES:
    raise bad(path, f"unknown covariance_type {ctype!r:.100}.")
  for name in PARAM_ARRAYS:
    if name not in arrays:
      raise bad(path, f"array {name!r} is missing.")
  k, d = meta.get("n_components"), meta.get("n_features")
  if not (is_count(k) and is_count(d)):
    raise bad(path, f"n_components={k!r:.50}, n_features={d!r:.50} are "
               "invalid.")
  ct = cov_ops.get(ctype)
  expected = {"weights": (k,), "means": (k, d)}
  try:
    expected.update(ct.stored_shapes(arrays, k, d))
  except ValueError as e:
    raise bad(path, str(e)) from None
  if "precisions" in arrays:
    expected["precisions"] = expected["covariances"]
  dtype = meta.get("dtype")
  if dtype not in ("float32", "float64"):
    raise bad(path, f"dtype {dtype!r:.50} is not float32 or float64.")
  for name, shape in expected.items():
    a = arrays[name]
    if a.shape != shape:
      raise bad(path, f"{name} has shape {a.shape}; a {ctype} mixture with "
                 f"{k} components and {d} features needs {shape}.")
    if a.dtype.kind != "f" or a.dtype.name != dtype:
      raise bad(path, f"{name} has dtype {a.dtype}, expected {dtype}.")
    if not np.all(np.isfinite(a)):
      raise bad(path, f"{name} contains NaN or infinity.")
    if not a.dtype.isnative:
      arrays[name] = a.astype(a.dtype.newbyteorder("="))
  w = arrays["weights"].astype(np.float64)
  if np.any(w < 0) or not math.isclose(float(np.sum(w)), 1.0, rel_tol=1e-4):
    raise bad(path, "its weights are not a probability vector.")
  why = ct.check_stored(arrays["covariances"], arrays["precisions_cholesky"])
  if why is not None:
    raise bad(path, why)
  if "precisions" in arrays:
    prec = arrays["precisions"].astype(np.float64)
    factor = arrays["precisions_cholesky"].astype(np.float64)
    implied = (factor @ np.swapaxes(factor, -1, -2)
               if ct.is_matrix else factor * factor)
    eps = float(np.finfo(arrays["precisions"].dtype).eps)
    scale = np.max(np.abs(implied))
    if not np.max(np.abs(prec - implied)) <= 1e3 * eps * scale:
      raise bad(path, "its precisions do not match its "
                 "precisions_cholesky.")


def params_from_arrays(arrays, ctype) -> GMMParams:
  import jax
  import jax.numpy as jnp
  dtype = arrays["means"].dtype
  if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
    warnings.warn(
        "The model was saved in float64 but JAX's x64 mode is off, so its "
        "parameters are converted to float32. Enable it with "
        "jax.config.update('jax_enable_x64', True) before loading to keep "
        "float64.", UserWarning, stacklevel=3)
  return GMMParams(*(jnp.asarray(arrays[k]) for k in PARAM_ARRAYS),
                   covariance_type=ctype)
