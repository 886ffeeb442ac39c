"""Shared fixtures: small data sets, compiled once per session."""

import jax
import numpy as np
import pytest


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
