"""Model files: exact round trips, and bad files rejected with clear errors."""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import io, model_file

K, D = 3, 2


def random_params(ctype, dtype, seed=0):
  """Valid parameters of every covariance type, built from NumPy draws."""
  rng = np.random.default_rng(seed)
  w = rng.uniform(0.5, 1.0, K)
  w = w / w.sum()
  means = rng.normal(size=(K, D))
  a = rng.normal(size=(K, D, D))
  full = a @ np.swapaxes(a, 1, 2) + np.eye(D)
  cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.5, 2, (K, D)),
         "spherical": rng.uniform(0.5, 2, K)}[ctype]
  return gx.make_params(jnp.asarray(w, dtype), jnp.asarray(means, dtype),
                        jnp.asarray(cov, dtype), covariance_type=ctype)


def assert_params_identical(p, q):
  assert q.covariance_type == p.covariance_type
  for name in ("weights", "means", "covariances", "precisions_cholesky"):
    a, b = np.asarray(getattr(p, name)), np.asarray(getattr(q, name))
    assert b.dtype == a.dtype, name
    assert b.shape == a.shape, name
    # Bit for bit, not approximately.
    assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_params_round_trip_float32(tmp_path, ctype):
  p = random_params(ctype, jnp.float32)
  path = tmp_path / "m.npz"
  io.save(path, p)
  q = io.load(path)
  assert isinstance(q, gx.GMMParams)
  assert np.asarray(q.means).dtype == np.float32
  assert_params_identical(p, q)


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_params_round_trip_float64(tmp_path, ctype, x64):
  p = random_params(ctype, jnp.float64, seed=1)
  assert np.asarray(p.means).dtype == np.float64
  path = tmp_path / "m64.npz"
  io.save(path, p)
  meta = io.read_metadata(path)
  assert meta["dtype"] == "float64" and meta["covariance_type"] == ctype
  assert meta["format_version"] == model_file.FORMAT_VERSION
  assert meta["gmmjax_version"] == gx.__version__
  assert_params_identical(p, io.load(path))


def test_float64_file_without_x64_warns_and_converts(tmp_path):
  with jax.enable_x64(True):
    p = random_params("diag", jnp.float64)
    io.save(tmp_path / "m.npz", p)
  with pytest.warns(UserWarning, match="x64"):
    q = io.load(tmp_path / "m.npz")
  assert q.means.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(q.means), np.asarray(p.means),
                             rtol=1e-7)


@pytest.fixture(scope="module")
def fitted(blobs3):
  X = blobs3[:120]
  means_init = np.stack([X[:40].mean(0), X[40:80].mean(0), X[80:].mean(0)])
  gm = gx.GaussianMixture(3, covariance_type="diag", means_init=means_init,
                          random_state=3, max_iter=300, tol=1e-4).fit(X)
  return gm, X


def test_estimator_round_trip(tmp_path, fitted):
  gm, X = fitted
  path = tmp_path / "gm.npz"
  io.save(path, gm)
  gm2 = io.load(path)
  assert type(gm2) is gx.GaussianMixture
  for name in ("weights_", "means_", "covariances_", "precisions_",
               "precisions_cholesky_"):
    a, b = getattr(gm, name), getattr(gm2, name)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
  for name in ("converged_", "n_iter_", "lower_bound_", "lower_bounds_",
               "n_features_in_", "jitter_", "n_degenerate_"):
    assert getattr(gm2, name) == getattr(gm, name), name
  p1, p2 = gm.get_params(), gm2.get_params()
  np.testing.assert_array_equal(p2.pop("means_init"), p1.pop("means_init"))
  assert p2 == p1
  np.testing.assert_array_equal(gm2.predict(X), gm.predict(X))
  np.testing.assert_array_equal(gm2.score_samples(X), gm.score_samples(X))
  # The loaded model is a working estimator: it refits.
  assert gm2.fit(X).converged_


def test_file_is_plain_arrays_without_pickle(tmp_path, fitted):
  path = tmp_path / "gm.npz"
  io.save(path, fitted[0])
  with np.load(path, allow_pickle=False) as npz:
    for name in npz.files:
      assert npz[name].dtype != object
  with zipfile.ZipFile(path) as z:
    meta = json.loads(np.load(z.open("metadata.json.npy")).tobytes())
  assert meta["kind"] == "estimator"
  assert meta["estimator"]["constructor"]["covariance_type"] == "diag"


def rewrite(src, dst, *, arrays=None, meta_update=None, redigest=False):
  """Copies a model file, changing arrays and/or metadata."""
  with np.load(src, allow_pickle=False) as npz:
    contents = {k: npz[k] for k in npz.files}
  meta = json.loads(contents.pop("metadata.json").tobytes())
  contents.update(arrays or {})
  meta.update(meta_update or {})
  if redigest:
    meta["sha256"] = model_file.digest(meta, contents)
  blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  with open(dst, "wb") as f:
    np.savez(f, **{"metadata.json": blob}, **contents)


@pytest.fixture
def saved(tmp_path):
  path = tmp_path / "good.npz"
  io.save(path, random_params("full", jnp.float32))
  return path


def test_truncated_file_rejected(saved, tmp_path):
  raw = saved.read_bytes()
  for cut in (len(raw) // 2, 30, 0):
    bad = tmp_path / f"cut{cut}.npz"
    bad.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match="not a valid gmmjax model file.*"
                       "truncated"):
      io.load(bad)


def test_flipped_byte_rejected(saved, tmp_path):
  raw = bytearray(saved.read_bytes())
  # Flip one byte inside the stored means (locate them in the archive).
  with np.load(saved) as npz:
    needle = npz["means"].tobytes()
  at = bytes(raw).index(needle) + 3
  raw[at] ^= 0x40
  bad = tmp_path / "flipped.npz"
  bad.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="not a valid gmmjax model file"):
    io.load(bad)


def test_tampered_array_rejected(saved, tmp_path):
  bad = tmp_path / "tampered.npz"
  with np.load(saved) as npz:
    means = npz["means"] + np.float32(1.0)
  rewrite(saved, bad, arrays={"means": means})
  with pytest.raises(ValueError, match="checksum does not match"):
    io.load(bad)


def test_tampered_metadata_rejected(saved, tmp_path):
  bad = tmp_path / "meta.npz"
  rewrite(saved, bad, meta_update={"covariance_type": "tied"})
  with pytest.raises(ValueError, match="checksum does not match"):
    io.load(bad)
  # Even with a recomputed digest, inconsistent shapes are caught.
  rewrite(saved, bad, meta_update={"covariance_type": "tied"}, redigest=True)
  with pytest.raises(ValueError, match="covariances has shape"):
    io.load(bad)
  rewrite(saved, bad, arrays={"weights": np.array([0.5, 0.5, 0.5],
                                                  np.float32)},
          meta_update={}, redigest=True)
  with pytest.raises(ValueError, match="metadata declares|probability"):
    io.load(bad)


def test_fit_diagnostics_round_trip_and_are_checked(tmp_path, fitted):
  gm, _ = fitted
  path = tmp_path / "gm.npz"
  io.save(path, gm)
  for key, value in [("jitter_", -1.0), ("jitter_", "0"), ("jitter_", True),
                     ("n_degenerate_", -1), ("n_degenerate_", 1.5),
                     ("n_degenerate_", True), ("n_degenerate_", 99)]:
    with np.load(path, allow_pickle=False) as npz:
      meta = json.loads(npz["metadata.json"].tobytes())
    meta["estimator"]["fitted"][key] = value
    bad = tmp_path / "bad.npz"
    rewrite(path, bad, meta_update={"estimator": meta["estimator"]},
            redigest=True)
    with pytest.raises(ValueError, match="fitted attributes"):
      io.load(bad)
  # A degraded fit's diagnostics survive the round trip (not only zeros).
  gm.jitter_, gm.n_degenerate_ = 2.5e-5, 2
  io.save(path, gm)
  gm2 = io.load(path)
  assert (gm2.jitter_, gm2.n_degenerate_) == (2.5e-5, 2)


def test_wrong_version_rejected(saved, tmp_path):
  bad = tmp_path / "v2.npz"
  rewrite(saved, bad, meta_update={"format_version": 2}, redigest=True)
  with pytest.raises(ValueError, match="format version 2.*reads version 1.*"
                     "upgrade"):
    io.load(bad)
  rewrite(saved, bad, meta_update={"format": "something-else"},
          redigest=True)
  with pytest.raises(ValueError, match="format is 'something-else'"):
    io.load(bad)


def test_other_files_rejected(tmp_path):
  with pytest.raises(FileNotFoundError, match="No such model file"):
    io.load(tmp_path / "missing.npz")
  text = tmp_path / "text.npz"
  text.write_text("weights,means\n1,2\n")
  with pytest.raises(ValueError, match="not a valid gmmjax model file"):
    io.load(text)
  plain = tmp_path / "plain.npz"
  np.savez(plain, X=np.ones((3, 2)))
  with pytest.raises(ValueError, match="no metadata"):
    io.load(plain)
  pickled = tmp_path / "pickled.npz"
  np.savez(pickled, **{"metadata.json": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match="not a valid gmmjax model file"):
    io.load(pickled)


def test_save_refuses_what_it_cannot_store(tmp_path, fitted):
  with pytest.raises(ValueError, match="unfitted"):
    io.save(tmp_path / "u.npz", gx.GaussianMixture(2))
  batch = jax.tree.map(lambda a: jnp.stack([a, a]),
                       random_params("diag", jnp.float32))
  with pytest.raises(ValueError, match="one mixture"):
    io.save(tmp_path / "b.npz", batch)
  with pytest.raises(TypeError, match="GMMParams or a fitted"):
    io.save(tmp_path / "x.npz", {"weights": 1})
  assert not list(tmp_path.glob(".gmmjax-*"))  # no temporary files left


def test_save_never_writes_a_file_load_refuses(tmp_path):
  # Factors 2% off their covariances: within what the in-memory check
  # tolerates (checks.CONSISTENCY_TOL), beyond what a model file may hold.
  p = gx.make_params(jnp.array([0.4, 0.6]), jnp.array([[0.0], [3.0]]),
                     jnp.array([1.0, 2.0]), covariance_type="spherical")
  off = p.replace(precisions_cholesky=p.precisions_cholesky * 1.01)
  path = tmp_path / "off.npz"
  with pytest.raises(ValueError, match="save would write a file that load "
                                       "refuses.*precisions_cholesky do not "
                                       "match its covariances"):
    io.save(path, off)
  assert not path.exists()
  io.save(path, p)  # the exact factors: written, and loaded back
  np.testing.assert_array_equal(np.asarray(io.load(path).covariances),
                                np.asarray(p.covariances))
