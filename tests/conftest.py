"""Shared fixtures: small data sets, compiled once per session."""

import dataclasses
import os
import shutil
import tempfile

# Compile time is most of this suite's time. Two XLA settings cut it (the
# second lowers LLVM's effort on GPUs too; a GPU run sets
# GMMJAX_TEST_CPU_FLAGS=0, see benchmarks/gpu_run.sh): the loop emitters
# instead of the newer "fusion emitters" (faster compiles, kernels as fast),
# and LLVM's optimisation level 0; what each saved is in benchmarks/README.md
# ("Test suite compile settings"). The tests check numbers, not speed;
# unoptimised code rounds differently (other instructions), which exposed
# one real bug (the jitter ladder, see cholesky._jitter_ladder). The
# library, the command line and the benchmarks set no XLA flag; test_cli's
# demo and test_hard_cases' default-codegen case run without these. Set
# before JAX creates its CPU client; subprocesses inherit them (and so share
# the compilation cache).
# GMMJAX_TEST_CPU_FLAGS=0 leaves XLA_FLAGS alone (runs on a GPU, where an
# XLA that no longer knows a flag would refuse to start).
TEST_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",
                  "--xla_backend_optimization_level=0")
if os.environ.get("GMMJAX_TEST_CPU_FLAGS", "1") != "0":
  for _flag in TEST_XLA_FLAGS:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = " ".join(
          [os.environ.get("XLA_FLAGS", ""), _flag]).strip()

# One OpenMP thread per process: scikit-learn's k-means (the references'
# default init) runs OpenMP loops, and on the 2-core machine with two xdist
# workers (and JAX's own threads) two threads per worker oversubscribe it:
# a tiny k-means then waits on descheduled threads, up to seconds
# (benchmarks/README.md, "Figures behind the kernels' defaults"). Results
# do not depend on it (scikit-learn tests k-means labels
# equal across thread counts). Set before scikit-learn loads its OpenMP
# runtime; subprocesses inherit it. A value the user set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite tests the estimators as scikit-learn citizens: a developer's
# GMMJAX_NO_SKLEARN (sklearn_compat) must not turn that off.
os.environ.pop("GMMJAX_NO_SKLEARN", None)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gmmjax._src import batching, chunks  # noqa: E402

_CACHE_ENV = "GMMJAX_TEST_COMPILATION_CACHE"


def pytest_configure(config):
  """One persistent compilation cache per test run.

  Created by the first process (pytest itself, or xdist's controller) and
  inherited through the environment by the xdist workers and by the
  subprocesses tests start (command line, README, multi-process), so a
  program compiled in one of them is loaded, not recompiled, in the others.
  A fresh directory per run: nothing carries over between runs.
  """
  if _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="gmmjax-test-jit-")
    config._gmmjax_cache_owner = os.environ[_CACHE_ENV]
  cache = os.environ[_CACHE_ENV]
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  if os.environ.get(_PROFILE_ENV):
    _start_compile_profile()


def pytest_unconfigure(config):
  owner = getattr(config, "_gmmjax_cache_owner", None)
  if owner:
    shutil.rmtree(owner, ignore_errors=True)


# Where the suite's time goes: with GMMJAX_TEST_PROFILE=DIR, each process
# appends one JSON line per test to DIR/<pid>.jsonl with the seconds JAX
# spent tracing, lowering and compiling (persistent-cache hits included)
# and, under "programs", each compiled program's name and seconds.
_PROFILE_ENV = "GMMJAX_TEST_PROFILE"
_profile = {"test": None, "seconds": {}}


def _start_compile_profile():
  import jax.monitoring

  def listen(event, duration, fun_name=None, **_):
    if _profile["test"] is not None:
      name = event.rsplit("/", 1)[-1]
      _profile["seconds"][name] = _profile["seconds"].get(name, 0.0) + duration
      if name == "backend_compile_duration":
        _profile["seconds"].setdefault("programs", []).append(
            [fun_name, round(duration, 3)])

  jax.monitoring.register_event_duration_secs_listener(listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  if not os.environ.get(_PROFILE_ENV):
    yield
    return
  import json
  import time
  _profile["test"], _profile["seconds"] = item.nodeid, {}
  start = time.perf_counter()
  yield
  record = {"test": item.nodeid, "wall": time.perf_counter() - start,
            **_profile["seconds"]}
  _profile["test"] = None
  path = os.path.join(os.environ[_PROFILE_ENV], f"{os.getpid()}.jsonl")
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


@pytest.fixture
def retrace(monkeypatch):
  """``retrace(obj, name, value)``: patch a constant traced code reads.

  Sets an attribute (or, for a dict, an item) and drops every cached
  trace, and drops them again at teardown, before monkeypatch restores the
  value. The public functions are jitted: a trace cached under the old
  value would otherwise be reused, and e.g. a "chunked" check would compare
  the unchunked computation with itself.
  """
  def patch(obj, name, value):
    if isinstance(obj, dict):
      monkeypatch.setitem(obj, name, value)
    else:
      monkeypatch.setattr(obj, name, value)
    jax.clear_caches()

  yield patch
  jax.clear_caches()


@pytest.fixture
def small_chunks(retrace):
  """Forces the smallest chunk (128 samples), with fresh traces."""
  force_small_chunks(retrace)


def force_small_chunks(retrace):
  """The smallest chunks on every backend (CPU and accelerator budgets)."""
  retrace(chunks, "DEFAULT_CHUNKS", dataclasses.replace(
      chunks.DEFAULT_CHUNKS, cpu_bytes=1, accelerator_bytes=1))


@pytest.fixture
def guarded_kernels(retrace):
  """Small chunks take the guarded GEMM forms, not the exact direct ones.

  Chunks of at most ``ChunkOptions.direct_max_entries`` (n, K, D)
  differences normally skip the fast forms; the tests of those forms and
  their guards use this. (Functions that take ``chunking=`` get it passed
  instead; the public fits read the defaults.)
  """
  retrace(chunks, "DEFAULT_CHUNKS", dataclasses.replace(
      chunks.DEFAULT_CHUNKS, direct_max_entries=0))


@pytest.fixture
def x64():
  """Runs the test with JAX's float64 mode on."""
  with jax.enable_x64(True):
    yield


def make_blobs(seed, n_per, centers, scale=1.0, stretch=True):
  """Gaussian blobs, optionally stretched into ellipses by a linear map."""
  rng = np.random.default_rng(seed)
  centers = np.asarray(centers, dtype=np.float64)
  parts = [rng.normal(c, scale, (n_per, centers.shape[1])) for c in centers]
  X = np.concatenate(parts)
  if stretch:
    X = X @ (np.eye(centers.shape[1]) + 0.4 * rng.normal(
        size=(centers.shape[1], centers.shape[1])))
  return X


@pytest.fixture(scope="session")
def blobs3():
  """300 x 3 data with 3 stretched clusters (float64 NumPy)."""
  return make_blobs(0, 100, [[0, 0, 0], [4, 4, 0], [-4, 3, 3]])


def numpy_m_step(X, resp, cov_type, reg):
  """scikit-learn's M-step from (weighted) responsibilities, in NumPy.

  The tests' independent reference: ``(weights, means, covariances)`` with
  each covariance summed around its own new mean, no shifts or GEMM tricks.
  """
  d = X.shape[1]
  nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
  means = resp.T @ X / nk[:, None]
  full = np.stack([
      (resp[:, j, None] * (X - means[j])).T @ (X - means[j]) / nk[j]
      for j in range(resp.shape[1])])
  return nk / nk.sum(), means, numpy_covariances(full, nk, cov_type, reg, d)


def numpy_covariances(full, nk, cov_type, reg, d):
  """The type's covariances from per-component full ones ``(K, D, D)`` and
  the masses ``nk`` (scikit-learn's definitions), ``reg`` on the diagonal."""
  if cov_type == "full":
    return full + reg * np.eye(d)
  if cov_type == "tied":
    return np.einsum("k,kde->de", nk, full) / nk.sum() + reg * np.eye(d)
  if cov_type == "diag":
    return np.stack([np.diag(c) for c in full]) + reg
  return np.stack([np.diag(c).mean() for c in full]) + reg


# Block budgets that compact any vmapped batch of fits into blocks of 2
# members (batching.while_loop): pass as ``chunking=`` with ``compactions``.
SMALL_BLOCKS = chunks.ChunkOptions(block_bytes=1, min_block=2, min_blocks=1)


@pytest.fixture
def compactions(monkeypatch):
  """Records the ``(block, batch)`` of every batch batching.while_loop
  compacts, under the CPU's block rule on any backend, with fresh traces
  (the record is made while tracing)."""
  monkeypatch.setattr(chunks, "on_cpu", lambda: True)
  sizes = []
  real = batching._compacted

  def spy(*args):
    sizes.append((args[-2], args[-1]))  # (block, batch)
    return real(*args)

  monkeypatch.setattr(batching, "_compacted", spy)
  jax.clear_caches()
  yield sizes
  jax.clear_caches()


@pytest.fixture
def small_blocks(compactions, retrace):
  """:data:`SMALL_BLOCKS` as the defaults, for the entry points that take
  no ``chunking=`` (the estimator, ``select_n_components``); records the
  compacted batches as ``compactions``."""
  retrace(chunks, "DEFAULT_CHUNKS", dataclasses.replace(
      chunks.DEFAULT_CHUNKS, block_bytes=1, min_block=2, min_blocks=1))
  return compactions


@pytest.fixture
def compiles():
  """A list that records every XLA compile (or persistent-cache load)
  during the test: the compiled program's name."""
  import jax.monitoring
  seen = []

  def listen(event, duration, fun_name=None, **_):
    del duration
    if event.endswith("backend_compile_duration"):
      seen.append(fun_name or event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  yield seen
  jax.monitoring.unregister_event_duration_listener(listen)
