"""A first call compiles its program and nothing else (issue 19).

Operations run eagerly on JAX arrays outside a program (indexing each leaf
of a result, converting a scalar, padding with ``jnp``) are programs of
their own: each a trace, a lowering and a compile of 10-40 ms on a first
call. Each test drops JAX's caches first (another test in the process may
have compiled the same programs) and lists what its call compiled (a
persistent-cache hit is listed too).
"""

import jax
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import compiling
from tests.conftest import make_blobs


@pytest.fixture(scope="module")
def X():
  return make_blobs(3, 40, [[0, 0], [5, 1], [1, 6]])  # 120 x 2


@pytest.fixture
def fresh(compiles):
  """The ``compiles`` list, after the keys were made, the once-per-process
  probe of the compile options had run, and caches were dropped."""
  keys = jax.random.key(0), jax.random.key(1)
  jax.block_until_ready(keys)
  compiling._small_options_work()
  jax.clear_caches()
  del compiles[:]
  return keys, compiles


def test_fit_restarts_compiles_one_fit_and_one_selection(X, fresh):
  (key, _), compiles = fresh
  best, runs = gx.fit_restarts(key, X, 3, n_init=3, method="kmeans")
  assert sorted(compiles) == ["jit(_init_and_fit)", "jit(best_restart)"]
  assert runs.log_likelihood.shape == (3,)
  assert float(best.log_likelihood) == float(np.max(runs.log_likelihood))
  del compiles[:]
  one, batch = gx.fit_restarts(key, X, 3, n_init=1, method="kmeans")
  assert sorted(compiles) == ["jit(_add_axis)", "jit(_init_and_fit)"]
  assert float(batch.log_likelihood[0]) == float(one.log_likelihood)


def test_select_n_components_compiles_its_sweep_alone(X, fresh):
  (key, _), compiles = fresh
  result = gx.select_n_components(key, X, range(1, 5), n_init=1)
  assert compiles == ["jit(_sweep)"]
  # The best fit indexed on the host is the sweep's own entry.
  k = result.best_k
  np.testing.assert_array_equal(np.asarray(result.best_params.means),
                                np.asarray(result.params.means)[
                                    result.table["k"].tolist().index(k), :k])


def test_bayesian_fit_compiles_its_program_and_the_data_moments(X, fresh):
  _, compiles = fresh
  bgm = gx.BayesianGaussianMixture(n_components=4, random_state=0,
                                   max_iter=200).fit(X)
  assert sorted(compiles) == ["jit(_data_moments)",
                             "jit(_variational_init_and_fit)"]
  assert bgm.weights_.shape == (4,)
  np.testing.assert_allclose(bgm.weights_.sum(), 1.0, rtol=1e-6)


def test_kmeans_compiles_one_program(X, fresh):
  (key, _), compiles = fresh
  centers, labels = gx.kmeans(key, X, 3)
  assert compiles == ["jit(_kmeans_program)"]
  # Lloyd's fixed point: each centre is the mean of its points, and each
  # point is labelled with its nearest centre.
  centers, labels = np.asarray(centers), np.asarray(labels)
  for j in range(3):
    np.testing.assert_allclose(centers[j], X[labels == j].mean(0),
                               rtol=1e-4, atol=1e-4)
  d = ((X[:, None, :] - centers[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(labels, d.argmin(1))


def test_fit_chunked_compiles_its_loop_programs_once(X, fresh):
  _, compiles = fresh
  X32 = X.astype(np.float32)
  p0 = gx.init_params(jax.random.key(2), X32, 3)
  del compiles[:]
  r = gx.fit_chunked(X32, p0, max_iter=30)
  # The host loop's start, step, statistics pass, conclusion, result and
  # finish: one program each, whatever the number of iterations.
  assert sorted(compiles) == sorted([
      "jit(_host_start)", "jit(_host_advance)", "jit(_accumulate)",
      "jit(_host_conclude)", "jit(_host_result)", "jit(finish)"]), compiles
  assert int(r.n_iter) > 2
  ref = gx.fit(X32, p0, max_iter=30)
  assert int(ref.n_iter) == int(r.n_iter)
  np.testing.assert_allclose(float(r.log_likelihood),
                             float(ref.log_likelihood), rtol=1e-5)
