"""Fuzzing ``gx.load`` with corrupted and adversarial model files.

Whatever the bytes, ``load`` either returns a valid model or raises a
``ValueError`` that says the file is not a valid gmmjax model: never another
exception type, never a crash, never an allocation the file does not
justify, and never code execution (no pickle is ever read).

Adversarial files are written the way an attacker would: valid metadata and
a recomputed SHA-256 digest around bad contents, so the digest cannot be
what catches them.
"""

import io as _io
import json
import os
import struct
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import io, model_file

K, D = 2, 3
MSG = "not a valid gmmjax model file"


def _params(ctype, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(K, D, D))
  full = a @ np.swapaxes(a, 1, 2) + np.eye(D)
  cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.5, 2, (K, D)),
         "spherical": rng.uniform(0.5, 2, K)}[ctype]
  return gx.make_params(jnp.asarray([0.3, 0.7], jnp.float32),
                        jnp.asarray(rng.normal(size=(K, D)), jnp.float32),
                        jnp.asarray(cov, jnp.float32), covariance_type=ctype)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Valid files: params of every type and a fitted estimator."""
  root = tmp_path_factory.mktemp("valid")
  out = {}
  for ctype in gx.COVARIANCE_TYPES:
    path = root / f"{ctype}.npz"
    io.save(path, _params(ctype))
    out[ctype] = path
  X = np.random.default_rng(0).normal(size=(40, D))
  gm = gx.GaussianMixture(K, covariance_type="diag", random_state=0,
                          max_iter=5).fit(X)
  out["estimator"] = root / "gm.npz"
  io.save(out["estimator"], gm)
  return out


def _read(path):
  """Metadata and arrays of a valid file (through the real reader)."""
  meta, arrays = model_file.read_archive(path)
  return meta, dict(arrays)


def _npy_bytes(a):
  buf = _io.BytesIO()
  np.lib.format.write_array(buf, np.asarray(a), allow_pickle=True)
  return buf.getvalue()


def _write(path, meta, arrays, *, digest=True, raw=None, meta_bytes=None,
           compression=zipfile.ZIP_STORED):
  """An archive in gmmjax's layout; ``digest`` recomputes the checksum.

  ``raw`` maps member names to exact ``.npy`` bytes (hand-made headers;
  ``"metadata.json"`` replaces the metadata); ``meta_bytes`` replaces the
  JSON text.
  """
  raw = dict(raw or {})
  meta = dict(meta)
  meta["arrays"] = {k: {"shape": list(np.shape(v)),
                        "dtype": np.asarray(v).dtype.str}
                    for k, v in sorted(arrays.items())}
  if digest:
    meta["sha256"] = model_file.digest(meta, arrays)
  text = json.dumps(meta).encode() if meta_bytes is None else meta_bytes
  blob = np.frombuffer(text, np.uint8)
  with zipfile.ZipFile(path, "w", compression) as z:
    if "metadata.json" not in raw:
      z.writestr("metadata.json.npy", _npy_bytes(blob))
    for name, a in arrays.items():
      z.writestr(f"{name}.npy", _npy_bytes(a))
    for name, b in raw.items():
      z.writestr(f"{name}.npy", b)
  return path


def _assert_rejected(path, match=MSG):
  with pytest.raises(ValueError, match=match):
    gx.load(path)


# -- values and shapes, with a valid digest ----------------------------------


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_valid_files_load(saved, ctype):
  p = gx.load(saved[ctype])
  assert p.covariance_type == ctype


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_wrong_shapes_rejected(saved, tmp_path, ctype):
  meta, arrays = _read(saved[ctype])
  for name in ("weights", "means", "covariances", "precisions_cholesky"):
    bad = dict(arrays)
    bad[name] = np.concatenate([arrays[name], arrays[name][:1]])
    _assert_rejected(_write(tmp_path / f"{name}.npz", meta, bad))
  bad = dict(arrays)
  bad["means"] = arrays["means"][:, :, None]
  _assert_rejected(_write(tmp_path / "ndim.npz", meta, bad))


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_rejected(saved, tmp_path, ctype, value):
  meta, arrays = _read(saved[ctype])
  for name in ("weights", "means", "covariances", "precisions_cholesky"):
    bad = {k: v.copy() for k, v in arrays.items()}
    bad[name].reshape(-1)[0] = value
    _assert_rejected(_write(tmp_path / f"{name}.npz", meta, bad))


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_non_positive_definite_covariances_rejected(saved, tmp_path, ctype):
  meta, arrays = _read(saved[ctype])
  bad = {k: v.copy() for k, v in arrays.items()}
  cov = bad["covariances"]
  if ctype in ("full", "tied"):
    # Symmetric with a negative eigenvalue; the stored factor is left as is.
    flip = np.diag([1.0, 1.0, -1.0]).astype(cov.dtype)
    cov[...] = flip @ cov @ flip - 3 * np.trace(cov, axis1=-2,
                                                axis2=-1)[..., None, None] * (
        np.eye(D, dtype=cov.dtype) * [0, 0, 1])
  else:
    cov.reshape(-1)[0] = -1.0
  assert np.any(np.linalg.eigvalsh(cov.reshape(-1, D, D)) < 0) if ctype in (
      "full", "tied") else np.any(cov < 0)
  _assert_rejected(_write(tmp_path / "npd.npz", meta, bad))
  # An asymmetric "covariance".
  if ctype in ("full", "tied"):
    asym = {k: v.copy() for k, v in arrays.items()}
    asym["covariances"].reshape(-1, D, D)[0, 0, 1] += 1.0
    _assert_rejected(_write(tmp_path / "asym.npz", meta, asym))


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_inconsistent_precision_factor_rejected(saved, tmp_path, ctype):
  meta, arrays = _read(saved[ctype])
  # The factor of another (valid) model: finite, PD, but not this one's.
  other = _read(saved[ctype])[1]["precisions_cholesky"] * 3.0
  bad = dict(arrays, precisions_cholesky=other)
  _assert_rejected(_write(tmp_path / "other.npz", meta, bad))
  # A negative diagonal: P P^T is unchanged for full/tied (a sign flip of
  # a column), but log det P would be NaN.
  neg = dict(arrays, precisions_cholesky=-arrays["precisions_cholesky"])
  _assert_rejected(_write(tmp_path / "neg.npz", meta, neg))
  if ctype in ("full", "tied"):
    # Not upper triangular.
    tri = {k: v.copy() for k, v in arrays.items()}
    tri["precisions_cholesky"].reshape(-1, D, D)[:, 2, 0] = 0.5
    _assert_rejected(_write(tmp_path / "tri.npz", meta, tri))


def test_weights_not_a_probability_vector_rejected(saved, tmp_path):
  meta, arrays = _read(saved["diag"])
  for w in ([0.5, 0.6], [1.2, -0.2], [0.0, 0.0]):
    bad = dict(arrays, weights=np.asarray(w, arrays["weights"].dtype))
    _assert_rejected(_write(tmp_path / "w.npz", meta, bad))


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex64", "<U3",
                                   "bool"])
def test_unsupported_dtypes_rejected(saved, tmp_path, dtype):
  meta, arrays = _read(saved["diag"])
  bad = {k: v.astype(dtype) for k, v in arrays.items()}
  meta = dict(meta, dtype=np.dtype(dtype).name)
  _assert_rejected(_write(tmp_path / "dt.npz", meta, bad))


def test_big_endian_arrays_load_or_are_rejected(saved, tmp_path):
  meta, arrays = _read(saved["full"])
  swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in
             arrays.items()}
  path = _write(tmp_path / "be.npz", meta, swapped)
  try:
    p = gx.load(path)
  except ValueError as e:
    assert MSG in str(e)
    return
  np.testing.assert_array_equal(np.asarray(p.means), arrays["means"])
  assert np.all(np.isfinite(np.asarray(gx.log_prob(p, jnp.zeros((1, D))))))


# -- metadata ----------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("n_components", 10**12), ("n_features", 10**12), ("n_components", -1),
    ("n_components", 0), ("n_components", 2.5), ("n_components", "2"),
    ("n_components", True), ("covariance_type", "banana"),
    ("covariance_type", ["full"]), ("dtype", "object"), ("kind", "pickle"),
    ("kind", None), ("format", "npz"), ("format_version", 1.0),
    ("format_version", "1"), ("format_version", True)])
def test_adversarial_metadata_fields_rejected(saved, tmp_path, field, value):
  meta, arrays = _read(saved["full"])
  meta = dict(meta)
  meta[field] = value
  with pytest.raises(ValueError):
    gx.load(_write(tmp_path / "meta.npz", meta, arrays))


def test_huge_declared_array_shapes_rejected(saved, tmp_path):
  meta, arrays = _read(saved["full"])
  # Declared shapes that disagree with the stored arrays.
  meta = dict(meta, arrays={k: {"shape": [10**15] * 3, "dtype": "<f4"}
                            for k in meta["arrays"]})
  path = _write(tmp_path / "big.npz", meta, arrays, digest=False,
                meta_bytes=json.dumps(meta).encode())
  _assert_rejected(path)


def _npy_header(shape, descr="<f8"):
  header = repr({"descr": descr, "fortran_order": False,
                 "shape": tuple(shape)})
  header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
  return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + (
      header.encode("latin1"))


@pytest.mark.parametrize("shape", [(10**12,), (2**40, 2**20), (10**6, 10**6),
                                   (2**62, 4), (-1,)])
def test_huge_npy_headers_rejected_without_allocating(saved, tmp_path, shape):
  # The .npy header of a member declares an enormous array over 16 bytes
  # of data: load must refuse from the header and the member's size, not
  # try to allocate it (a MemoryError, or worse, the OOM killer).
  meta, arrays = _read(saved["full"])
  arrays = dict(arrays)
  del arrays["means"]
  raw = {"means": _npy_header(shape) + b"\x00" * 16}
  path = _write(tmp_path / "hdr.npz", meta, arrays, raw=raw)
  _assert_rejected(path)


def test_zip_bomb_member_rejected(saved, tmp_path):
  # A deflated member that expands 1000-fold (8 MB of zeros from ~8 kB;
  # the same file scaled up is a zip bomb): load refuses it from the
  # declared sizes, before decompressing.
  meta, arrays = _read(saved["full"])
  arrays = dict(arrays)
  del arrays["means"]
  n = 1_000_000
  body = _npy_header((n,)) + bytes(8 * n)
  path = _write(tmp_path / "bomb.npz", meta, arrays, raw={"means": body},
                compression=zipfile.ZIP_DEFLATED)
  assert os.path.getsize(path) < 100_000
  _assert_rejected(path)


@pytest.mark.parametrize("blob", [
    b"not json", b"\xff\xfe\x00", b"[1, 2, 3]", b"null", b"[" * 100_000,
    b'{"a": ' * 50_000, b'"' + b"x" * 1000 + b'"'])
def test_unreadable_metadata_rejected(saved, tmp_path, blob):
  meta, arrays = _read(saved["full"])
  _assert_rejected(_write(tmp_path / "m.npz", meta, arrays, meta_bytes=blob))


@pytest.mark.parametrize("section", [
    [1, 2], "GaussianMixture", {"class": "GaussianMixture", "constructor": [1]},
    {"class": "GaussianMixture", "constructor": {"n_components": -3}},
    {"class": "GaussianMixture", "constructor": {"n_components": "two"}},
    {"class": "GaussianMixture", "constructor": {"covariance_type": "full"}},
    {"class": "GaussianMixture", "constructor": {"__class__": "os.system"}},
    {"class": "GaussianMixture", "fitted": [1]},
    {"class": "GaussianMixture", "fitted": {"n_iter_": "1e999"}},
    {"class": "GaussianMixture", "fitted": {"converged_": True, "n_iter_": 1,
                                            "lower_bound_": "x",
                                            "n_features_in_": 3}},
    {"class": "os.system"}])
def test_adversarial_estimator_sections_rejected(saved, tmp_path, section):
  meta, arrays = _read(saved["estimator"])
  meta = dict(meta)
  if isinstance(section, dict) and "constructor" not in section:
    section = dict(section, constructor=meta["estimator"]["constructor"])
  if isinstance(section, dict) and "fitted" not in section:
    section = dict(section, fitted=meta["estimator"]["fitted"])
  meta["estimator"] = section
  _assert_rejected(_write(tmp_path / "est.npz", meta, arrays))


@pytest.mark.parametrize("change", ["shape", "nan", "inconsistent"])
def test_estimator_precisions_checked(saved, tmp_path, change):
  meta, arrays = _read(saved["estimator"])
  prec = arrays["precisions"].copy()
  if change == "shape":
    prec = prec[:, :1]
  elif change == "nan":
    prec[0, 0] = np.nan
  else:
    prec = prec * 2.0
  bad = dict(arrays, precisions=prec)
  _assert_rejected(_write(tmp_path / "prec.npz", meta, bad))


# -- never code: pickles inside the archive ----------------------------------


class _Payload:
  """Unpickling this runs a shell command that creates a flag file."""

  def __init__(self, flag):
    self.flag = str(flag)

  def __reduce__(self):
    return (os.system, (f"touch {self.flag}",))


@pytest.mark.parametrize("where", ["weights", "metadata.json", "extra"])
def test_pickled_objects_never_unpickled(saved, tmp_path, where):
  flag = tmp_path / "pwned"
  meta, arrays = _read(saved["full"])
  evil = np.empty(1, dtype=object)
  evil[0] = _Payload(flag)
  raw = {where: _npy_bytes(evil)}
  arrays = {k: v for k, v in arrays.items() if k != where}
  path = _write(tmp_path / "evil.npz", meta, arrays, raw=raw)
  _assert_rejected(path)
  with pytest.raises(ValueError, match=MSG):
    io.read_metadata(path)
  assert not flag.exists()
  # The payload is real: NumPy with allow_pickle=True would have run it.
  proof = tmp_path / "proof"
  probe = np.empty(1, dtype=object)
  probe[0] = _Payload(proof)
  np.load(_io.BytesIO(_npy_bytes(probe)), allow_pickle=True)
  assert proof.exists()


# -- random corruption -------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "estimator"])
def test_random_byte_flips_and_truncations(saved, tmp_path, kind):
  """Every corrupted copy loads to the same model or raises ValueError."""
  raw = saved[kind].read_bytes()
  reference = gx.load(saved[kind])
  ref_means = np.asarray(reference.means if kind != "estimator"
                         else reference.means_)
  rng = np.random.default_rng(0)
  path = tmp_path / "c.npz"
  outcomes = {"rejected": 0, "same": 0}
  for trial in range(120):
    data = bytearray(raw)
    if trial % 3 == 0:
      data = data[:rng.integers(0, len(data))]
    else:
      for pos in rng.integers(0, len(data), size=1 + trial % 4):
        data[pos] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    try:
      model = gx.load(path)
    except ValueError as e:
      assert MSG in str(e) or "format version" in str(e), e
      outcomes["rejected"] += 1
      continue
    # A flip in bytes no reader looks at (zip timestamps, padding).
    means = np.asarray(model.means if kind != "estimator" else model.means_)
    np.testing.assert_array_equal(means, ref_means)
    outcomes["same"] += 1
  assert outcomes["rejected"] > 60


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"\x93NUMPY",
                                     b"PK\x05\x06" + bytes(18)])
def test_not_an_archive_rejected(tmp_path, content):
  path = tmp_path / "x.npz"
  path.write_bytes(content)
  _assert_rejected(path)


def test_directory_and_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError):
    gx.load(tmp_path / "missing.npz")
  with pytest.raises(ValueError):
    gx.load(tmp_path)
