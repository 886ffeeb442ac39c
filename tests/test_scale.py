"""Chunked, sharded (4 forced CPU devices) and 2-process EM against gx.fit.

The references are in-memory single-device ``gx.fit`` / ``gx.fit_restarts``
results computed in this process; the sharded and multi-process fits run in
subprocesses (``tests/_worker_*.py``) so that this process keeps one device.
Agreement is 1e-6 relative in float64 (parameters and log-likelihood).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_blobs

import gmmjax as gx

HERE = Path(__file__).parent
TOL = 1e-8
MAX_ITER = 60
RTOL = 1e-9  # the issue asks 1e-6; float64 sums in another order give ~1e-13
ATOL = 1e-12  # for entries that are ~0 (off-diagonal covariances)
SUBPROCESS_TIMEOUT = 240


def assert_same_fit(result, ref, prefix=""):
  """Parameters, log-likelihood and the loop's bookkeeping agree."""
  got = {k: np.asarray(v) for k, v in result.items()} if isinstance(
      result, dict) else {
          "weights": result.params.weights, "means": result.params.means,
          "covariances": result.params.covariances,
          "log_likelihood": result.log_likelihood, "n_iter": result.n_iter,
          "converged": result.converged, "history": result.history,
          "failed": result.failed, "jitter": result.jitter,
          "n_degenerate": result.n_degenerate}
  get = (lambda k: got[prefix + k]) if prefix else (lambda k: got[k])
  for name in ("weights", "means", "covariances"):
    np.testing.assert_allclose(get(name), getattr(ref.params, name),
                               rtol=RTOL, atol=ATOL, err_msg=name)
  np.testing.assert_allclose(get("log_likelihood"), ref.log_likelihood,
                             rtol=RTOL)
  np.testing.assert_allclose(get("history"), ref.history, rtol=RTOL)
  np.testing.assert_array_equal(get("n_iter"), ref.n_iter)
  np.testing.assert_array_equal(get("converged"), ref.converged)
  np.testing.assert_array_equal(get("failed"), ref.failed)
  np.testing.assert_array_equal(get("jitter"), ref.jitter)
  np.testing.assert_array_equal(get("n_degenerate"), ref.n_degenerate)


@pytest.fixture(scope="module")
def problem():
  """300 x 3 stretched blobs, a weight vector and initial params (float64).

  The initial params are one M-step from perturbed labels (cheaper to
  compile than k-means, and a few EM iterations away from convergence).
  """
  X = make_blobs(0, 100, [[0, 0, 0], [4, 4, 0], [-4, 3, 3]])
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(3), 100)
  flip = rng.uniform(size=300) < 0.2
  labels[flip] = rng.integers(0, 3, flip.sum())
  log_resp = np.log(np.eye(3)[labels] * 0.9 + 0.1 / 3)
  with jax.enable_x64(True):
    inits = {ct: jax.device_get(gx.m_step(X, log_resp, covariance_type=ct))
             for ct in ("full", "tied", "diag", "spherical")}
  return dict(X=X, X_odd=np.concatenate([X, rng.normal(size=(2, 3))]),
              w=rng.uniform(0.5, 2.0, X.shape[0]), inits=inits)


def reference(problem, ctype, X=None, **kw):
  X = problem["X"] if X is None else X
  return gx.fit(X, problem["inits"][ctype], tol=TOL, max_iter=MAX_ITER, **kw)


# -- chunked ---------------------------------------------------------------


@pytest.mark.parametrize("ctype", ["full", "tied"])
def test_chunked_array_equals_fit(x64, problem, ctype):
  # 300 rows in chunks of 64: the last chunk is padded with zero weights.
  ref = reference(problem, ctype)
  got = gx.fit_chunked(problem["X"], problem["inits"][ctype],
                          chunk_size=64, tol=TOL, max_iter=MAX_ITER)
  assert_same_fit(got, ref)


def test_chunked_memmap_and_weights(x64, problem, tmp_path):
  X, w = problem["X"], problem["w"]
  path = tmp_path / "X.f64"
  mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
  mm[:] = X
  mm.flush()
  data = np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)
  ref = reference(problem, "full", sample_weight=w)
  got = gx.fit_chunked(data, problem["inits"]["full"], sample_weight=w,
                          chunk_size=64, tol=TOL, max_iter=MAX_ITER)
  assert_same_fit(got, ref)


def test_chunked_factory_of_uneven_pairs(x64, problem):
  # A generator function yielding (X, w) pairs of varying sizes; a chunk
  # larger than the first is split, smaller ones padded.
  X, w = problem["X"], problem["w"]
  bounds = [0, 64, 100, 250, 251, 300]
  reads = []

  def chunks():
    reads.append(1)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
      yield X[a:b], w[a:b]

  ref = reference(problem, "diag", sample_weight=w)
  got = gx.fit_chunked(chunks, problem["inits"]["diag"], tol=TOL,
                          max_iter=MAX_ITER, prefetch=0)
  assert_same_fit(got, ref)
  # One read to learn the chunk shape, one per iteration, one for the final
  # log-likelihood: the data is streamed, never gathered.
  assert len(reads) == int(ref.n_iter) + 2


def test_chunked_list_of_chunks_and_callback(x64, problem):
  X = problem["X"]
  chunks = [X[i:i + 64] for i in range(0, X.shape[0], 64)]
  seen_ref, seen = [], []
  ref = reference(problem, "spherical",
                  callback=lambda *a: seen_ref.append([float(v) for v in a]))
  got = gx.fit_chunked(chunks, problem["inits"]["spherical"], tol=TOL,
                          max_iter=MAX_ITER,
                          callback=lambda *a: seen.append([float(v) for v in
                                                           a]))
  assert_same_fit(got, ref)
  seen, seen_ref = np.asarray(seen), np.asarray(sorted(seen_ref))
  np.testing.assert_array_equal(seen[:, 0], seen_ref[:, 0])
  np.testing.assert_allclose(seen[:, 1], seen_ref[:, 1], rtol=RTOL)
  # The change is a difference of nearly equal numbers: absolute tolerance.
  np.testing.assert_allclose(seen[:, 2], seen_ref[:, 2], atol=1e-12)


def test_chunked_failure_matches_fit(x64):
  # A negative reg_covar makes a covariance indefinite: fit stops, keeps the
  # last finite params and flags `failed`; the chunked fit must do the same.
  X = np.concatenate([np.linspace(-1.0, 1.0, 9), np.linspace(5.0, 9.0, 16)])
  X = X[:, None]
  p0 = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[0.0], [7.0]]),
                      jnp.array([[[1.0]], [[4.0]]]), covariance_type="full")
  ref = gx.fit(X, p0, reg_covar=-0.6, max_iter=20)
  got = gx.fit_chunked(X, p0, reg_covar=-0.6, max_iter=20, chunk_size=8)
  assert bool(ref.failed)
  assert bool(got.failed) and not bool(got.converged)
  assert int(got.n_iter) == int(ref.n_iter)
  np.testing.assert_allclose(got.params.means, ref.params.means, rtol=RTOL)
  np.testing.assert_allclose(got.log_likelihood, ref.log_likelihood,
                             rtol=RTOL)


def test_chunked_float32_follows_input(problem):
  X = problem["X"].astype(np.float32)
  p0 = problem["inits"]["full"]
  got = gx.fit_chunked(X, p0, chunk_size=128, max_iter=20)
  ref = gx.fit(X, p0, max_iter=20)
  assert got.params.means.dtype == jnp.float32
  assert got.history.dtype == jnp.float32
  np.testing.assert_allclose(got.log_likelihood, ref.log_likelihood,
                             rtol=1e-4)


def test_chunked_refuses_one_shot_iterator(problem):
  gen = (c for c in [problem["X"]])
  with pytest.raises(TypeError, match="re-iterable|one-shot"):
    gx.fit_chunked(gen, problem["inits"]["full"])


def test_chunk_source_covers_rows_once():
  X = np.arange(23.0).reshape(-1, 1)
  parts = [x for x, _ in gx.chunk_source(X, chunk_size=5)()]
  np.testing.assert_array_equal(np.concatenate(parts), X)
  assert [p.shape[0] for p in parts] == [5, 5, 5, 5, 3]


# -- sharded, in this process (one device) ----------------------------------


def test_sharded_restarts_refuse_a_bad_n_init(problem):
  for n_init in (0, 2.0, True):
    with pytest.raises(ValueError, match="n_init should be a positive int"):
      gx.fit_restarts_sharded(jax.random.key(0), problem["X"], 3,
                              n_init=n_init)


def test_sharded_batched_restarts_equal_separate_fits(x64, problem):
  # A leading restart axis on params is vmapped inside the sharded program.
  X = problem["X"]
  keys = jax.random.split(jax.random.key(5), 3)
  batch = jax.vmap(lambda k: gx.init_params(k, X, 3, covariance_type="diag",
                                            method="random"))(keys)
  got = gx.fit_sharded(X, batch, tol=TOL, max_iter=MAX_ITER)
  assert got.params.means.shape == (3, 3, 3)
  for i in range(3):
    ref = gx.fit(X, jax.tree.map(lambda a, i=i: a[i], batch), tol=TOL,
                 max_iter=MAX_ITER)
    assert_same_fit(jax.tree.map(lambda a, i=i: a[i], got), ref)


# -- 4 forced CPU devices, in a subprocess ----------------------------------


def _inputs(problem, path):
  data = dict(X=problem["X"], X_odd=problem["X_odd"], w=problem["w"],
              tol=TOL, max_iter=MAX_ITER, seed=3, split=149,
              resp_odd=_resp_odd(problem))
  for ct in ("full", "diag"):
    p = problem["inits"][ct]
    data.update({f"p0_{ct}/weights": np.asarray(p.weights),
                 f"p0_{ct}/means": np.asarray(p.means),
                 f"p0_{ct}/covariances": np.asarray(p.covariances)})
  np.savez(path, **data)


def _env(xla_flags=""):
  """The workers' environment: CPU, this checkout, ``xla_flags`` added."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), xla_flags]).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


@pytest.fixture(scope="module")
def four_devices(problem, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("devices")
  _inputs(problem, tmp / "in.npz")
  proc = subprocess.run(
      [sys.executable, str(HERE / "_worker_devices.py"), str(tmp / "in.npz"),
       str(tmp / "out.npz")],
      env=_env("--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_four_devices_equal_one(x64, problem, four_devices, ctype):
  out = four_devices
  assert int(out["n_devices"]) == 4 and int(out["shards"]) == 4
  ref = reference(problem, ctype)
  # gx.fit itself on a NamedSharding-sharded array (Auto mesh axes).
  assert_same_fit(out, ref, prefix=f"plain/{ctype}/")
  # shard_map + psum.
  assert_same_fit(out, ref, prefix=f"sharded/{ctype}/")


def test_four_devices_explicit_mesh_weights_padding(x64, problem,
                                                    four_devices):
  out = four_devices
  # A mesh with Explicit axes (jax.make_mesh's default in current JAX):
  # fit_sharded, and plain gx.fit (which views the arrays on an Auto mesh),
  # with Explicit-sharded weights too.
  assert bool(out["explicit_mesh"])
  assert_same_fit(out, reference(problem, "full"), prefix="explicit/full/")
  assert_same_fit(out, reference(problem, "full"),
                  prefix="plain_explicit/full/")
  weighted = reference(problem, "full", sample_weight=problem["w"])
  assert_same_fit(out, weighted, prefix="weighted/full/")
  assert_same_fit(out, weighted, prefix="plain_explicit_weighted/full/")
  # 302 rows on 4 devices.
  assert_same_fit(out, reference(problem, "diag", X=problem["X_odd"]),
                  prefix="odd/diag/")


def test_four_devices_restarts_times_shards(x64, problem, four_devices):
  best, runs = gx.fit_restarts(jax.random.key(3), problem["X"], 3, n_init=2,
                               covariance_type="full", method="kmeans",
                               tol=TOL, max_iter=MAX_ITER)
  assert_same_fit(four_devices, best, prefix="restarts_best/")
  assert_same_fit(four_devices, runs, prefix="restarts_all/")
  # gx.fit_restarts itself on the Explicit-mesh array.
  assert_same_fit(four_devices, best, prefix="plain_restarts_best/")


def _resp_odd(problem):
  """Initial responsibilities of the 302 rows of ``X_odd`` (fixed seed)."""
  rng = np.random.default_rng(7)
  return rng.dirichlet(np.ones(3), size=problem["X_odd"].shape[0])


def test_four_devices_variational_equals_one(x64, problem, four_devices):
  X = problem["X_odd"]
  # As tests/_worker_devices.py makes them:
  prior = gx.make_bayes_prior(X, 3, covariance_type="full")
  post0 = gx.posterior_from_resp(X, _resp_odd(problem), prior,
                                 covariance_type="full")
  w = np.concatenate([problem["w"], [1.5, 0.5]])
  ref = gx.fit_bayes(X, post0, prior, sample_weight=w, tol=TOL,
                     max_iter=MAX_ITER)
  out = four_devices
  assert int(out["bayes/n_iter"]) == int(ref.n_iter) > 2
  assert bool(out["bayes/converged"]) == bool(ref.converged)
  for name in ("weight_concentration", "mean_precision", "means",
               "degrees_of_freedom", "covariances", "precisions_cholesky"):
    np.testing.assert_allclose(out[f"bayes/{name}"],
                               np.asarray(getattr(ref.params, name)),
                               rtol=RTOL, atol=ATOL, err_msg=name)
  np.testing.assert_allclose(out["bayes/log_likelihood"],
                             float(ref.log_likelihood), rtol=1e-10)
  np.testing.assert_allclose(out["bayes/history"], np.asarray(ref.history),
                             rtol=1e-10)


# -- two processes, in subprocesses -----------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(problem, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("processes")
  _inputs(problem, tmp / "in.npz")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "_worker_multiprocess.py"), str(port),
       str(i), str(tmp / "in.npz"), str(tmp / "out.npz")],
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=SUBPROCESS_TIMEOUT)
      errors.append(err)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert all(p.returncode == 0 for p in procs), "\n".join(
      e[-3000:] for e in errors)
  return dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_two_processes_equal_one(x64, problem, two_processes, ctype):
  out = two_processes
  assert int(out["process_count"]) == 2 and int(out["device_count"]) == 2
  assert int(out["local_rows"]) == 149  # each process held only its part
  ref = reference(problem, ctype)
  assert_same_fit(out, ref, prefix=f"sharded/{ctype}/")
  assert_same_fit(out, ref, prefix=f"chunked/{ctype}/")


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_sharded_float32_chunks_of_the_guarded_form_equal_fit(
    covariance_type):
  # 5,000 x 8 is past the direct form's size: inside shard_map the
  # rounding guard's branches must have the same (varying) types; a
  # constant "nothing to redo" made fit_sharded a TypeError in float32.
  X = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
  p0 = gx.init_params(jax.random.key(0), X, 4,
                      covariance_type=covariance_type)
  a, b = gx.fit_sharded(X, p0, max_iter=10), gx.fit(X, p0, max_iter=10)
  assert int(a.n_iter) == int(b.n_iter)
  np.testing.assert_allclose(a.history[:int(b.n_iter)],
                             b.history[:int(b.n_iter)], rtol=1e-5)
  np.testing.assert_allclose(a.params.means, b.params.means, rtol=1e-4,
                             atol=1e-4)
