"""Shared fixtures: small data sets, compiled once per session.

The suite is dominated by XLA compile time (hundreds of small programs), so
the tests, and the subprocesses they start, compile with LLVM's cheaper
optimisation passes: about a third less time on 2 cores, with the same
floating-point semantics (XLA's CPU backend does not enable fast-math at any
level). Users and the benchmarks keep XLA's defaults. A value already in
``XLA_FLAGS`` is kept and these are appended; ``GMMJAX_TEST_DEFAULT_XLA=1``
runs the suite with XLA's defaults instead.
"""

import os

import jax
import numpy as np
import pytest

# Read when the backend starts (the first computation), not at import.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                  "--xla_llvm_disable_expensive_passes=true")
if (os.environ.get("GMMJAX_TEST_DEFAULT_XLA") != "1"
    and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS",
                                                               "")):
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS) if f)


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
