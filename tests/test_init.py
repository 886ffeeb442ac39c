"""Initialisation methods: k-means (JAX Lloyd), k-means++, random, from data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from tests.conftest import make_blobs

CENTERS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


@pytest.fixture(scope="module")
def X():
  return make_blobs(0, 50, CENTERS, stretch=False)


@pytest.mark.parametrize("method", gx.INIT_METHODS)
@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_methods_give_valid_params_under_vmap(X, method, cov_type):
  keys = jax.random.split(jax.random.key(0), 3)
  batch = jax.vmap(lambda k: gx.init_params(
      k, X, 4, covariance_type=cov_type, method=method))(keys)
  assert batch.means.shape == (3, 4, 2)
  assert batch.weights.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(batch.weights).sum(1), 1.0, rtol=1e-5)
  for leaf in jax.tree.leaves(batch):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_kmeans_recovers_separated_centers(X):
  centers, labels = gx.kmeans(jax.random.key(1), jnp.asarray(X, jnp.float32),
                              4)
  dist = np.linalg.norm(np.asarray(centers)[:, None] - CENTERS[None], axis=-1)
  assert sorted(dist.argmin(1).tolist()) == [0, 1, 2, 3]
  assert np.all(dist.min(1) < 0.5)
  assert labels.shape == (200,)


def test_kmeans_inertia_close_to_sklearn(x64):
  from sklearn.cluster import KMeans
  Xo = make_blobs(5, 80, [[0, 0, 0], [3, 1, 0], [1, 3, 1], [-2, 2, 2],
                          [2, -2, 1]])
  km = KMeans(5, n_init=1, random_state=0).fit(Xo)
  centers, labels = gx.kmeans(jax.random.key(0), Xo, 5)
  d = ((Xo[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1)
  ours = d[np.arange(len(Xo)), np.asarray(labels)].sum()
  assert np.all(np.asarray(labels) == d.argmin(1))  # labels are nearest
  assert ours <= 1.05 * km.inertia_


def test_kmeans_plusplus_picks_distinct_data_points(X):
  Xj = jnp.asarray(X, jnp.float32)
  centers, idx = gx.kmeans_plusplus(jax.random.key(0), Xj, 4)
  idx = np.asarray(idx)
  assert len(set(idx.tolist())) == 4
  np.testing.assert_array_equal(np.asarray(centers), X[idx].astype(np.float32))
  # One seed lands in each well-separated blob (D^2 sampling).
  assert sorted((idx // 50).tolist()) == [0, 1, 2, 3]
  # Zero-weight samples are never chosen.
  w = np.ones(200, np.float32)
  w[:50] = 0
  _, idx_w = gx.kmeans_plusplus(jax.random.key(0), Xj, 3, sample_weight=jnp.asarray(w))
  assert np.all(np.asarray(idx_w) >= 50)


def test_kmeans_plusplus_init_matches_sklearn_semantics(X, x64):
  """Means are the chosen samples and covariances start at reg_covar."""
  p = gx.init_params(jax.random.key(0), X, 4, covariance_type="diag",
                     method="k-means++", reg_covar=1e-6)
  means = np.asarray(p.means)
  assert all(np.any(np.all(np.isclose(X, m), axis=1)) for m in means)
  np.testing.assert_allclose(np.asarray(p.covariances), 1e-6, rtol=1e-6)


def test_random_methods_differ_by_key(X):
  a = gx.init_params(jax.random.key(0), X, 4, method="random_from_data")
  b = gx.init_params(jax.random.key(1), X, 4, method="random_from_data")
  assert not np.allclose(np.asarray(a.means), np.asarray(b.means))
  r = gx.init_params(jax.random.key(0), X, 4, method="random")
  np.testing.assert_allclose(np.asarray(r.weights), 0.25, atol=0.08)


def test_init_params_under_jit_with_static_config(X):
  f = jax.jit(gx.init_params, static_argnames=("n_components",
                                               "covariance_type", "method"))
  p = f(jax.random.key(0), X, n_components=4, covariance_type="tied",
        method="kmeans")
  assert p.covariances.shape == (2, 2)
  assert p.covariance_type == "tied"


def test_bad_arguments():
  X = np.zeros((3, 2))
  with pytest.raises(ValueError, match="n_samples >= n_components"):
    gx.init_params(jax.random.key(0), X, 4)
  with pytest.raises(ValueError, match="method"):
    gx.init_params(jax.random.key(0), X, 2, method="bogus")
  with pytest.raises(ValueError, match="covariance_type"):
    gx.init_params(jax.random.key(0), X, 2, covariance_type="bogus")


@pytest.mark.parametrize("blocks", ["vmapped", "pairs", "sequential"])
def test_restart_inits_are_the_split_keys_inits(X, x64, monkeypatch, blocks):
  """Restart i of init_restarts is init_params(split(key, n)[i]), whether
  the restarts run vmapped (small data), in blocks (lax.map with a batch
  size: 5 restarts in pairs, a remainder of one) or one at a time (large
  data; forced here through the block thresholds)."""
  from gmmjax._src import batching, chunks, restarts
  chosen = []
  real = batching.block_size
  monkeypatch.setattr(batching, "block_size",
                      lambda *a: chosen.append(real(*a)) or chosen[-1])
  options = None  # the defaults: 5 small restarts, one vmap
  if blocks != "vmapped":
    monkeypatch.setattr(chunks, "on_cpu", lambda: True)  # the CPU's rule
    options = gx.ChunkOptions(min_blocks=1, block_bytes=1, min_block=2)
  if blocks == "sequential":
    options = gx.ChunkOptions(sequential_member_bytes=1)
  jax.clear_caches()  # block_size is read while tracing
  key = jax.random.key(7)
  batch = restarts.init_restarts(key, X, 4, n_init=5, method="kmeans",
                                 chunking=options)
  assert chosen == [{"vmapped": 5, "pairs": 2, "sequential": 1}[blocks]]
  keys = jax.random.split(key, 5)
  for i in range(5):
    one = gx.init_params(keys[i], X, 4, method="kmeans")
    for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(one)):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b),
                                 rtol=1e-10, atol=1e-12)
  # The restarts differ (their k-means orders the clusters differently),
  # else the per-restart comparison above would prove little.
  assert np.ptp(np.asarray(batch.means), axis=0).max() > 1.0


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_an_initialisation_as_statistics_is_the_initial_params(X, cov_type,
                                                                x64):
  """The estimator's program hands its draw to the EM loop as statistics
  (init.init_stats), whose first M-step, the loop's own, makes the initial
  params: they are init_params' (max_iter=0), and the fit from them is
  gx.fit's from init_params, with sample weights and two restarts."""
  from gmmjax._src import restarts
  w = np.random.default_rng(3).uniform(0.5, 2.0, len(X))
  key = jax.random.key(7)
  kw = dict(covariance_type=cov_type, method="k-means++", tol=1e-8,
            reg_covar=1e-6, sample_weight=w, callback=None)
  for n_init, keys in [(1, jax.random.split(key, 1)),
                       (2, jax.random.split(key, 2))]:
    for max_iter in (0, 50):
      got = restarts.restart_results(key, X, 4, n_init=n_init,
                                     max_iter=max_iter, init_as_stats=True,
                                     **kw)
      for i, k in enumerate(keys):
        p0 = gx.init_params(k, X, 4, covariance_type=cov_type,
                            method="k-means++", sample_weight=w)
        want = gx.fit(X, p0, sample_weight=w, max_iter=max_iter, tol=1e-8)
        mine = jax.tree.map(lambda a, i=i, n=n_init: a if n == 1 else a[i],
                            got)
        assert int(mine.n_iter) == int(want.n_iter)
        assert (int(want.n_iter) == 0) == (max_iter == 0)
        assert not bool(mine.failed)
        for f in ("weights", "means", "covariances", "precisions_cholesky"):
          np.testing.assert_allclose(getattr(mine.params, f),
                                     getattr(want.params, f),
                                     rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(mine.log_likelihood),
                                   float(want.log_likelihood), rtol=1e-12)


def test_the_estimator_initialises_as_statistics_unless_given_values(
    X, monkeypatch):
  """GaussianMixture's program takes the statistics path (one M-step)
  when no *_init is given, and the separate initial M-step when one is."""
  from gmmjax._src import init as init_lib
  calls = []
  real = init_lib.init_stats
  monkeypatch.setattr(init_lib, "init_stats",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  jax.clear_caches()  # traced anew (a persistent-cache hit traces too)
  gm = gx.GaussianMixture(3, random_state=0).fit(X)
  assert calls
  calls.clear()
  jax.clear_caches()
  given = gx.GaussianMixture(3, random_state=0, means_init=gm.means_).fit(X)
  assert not calls
  np.testing.assert_allclose(given.means_, gm.means_, rtol=1e-4, atol=1e-4)


def test_gradients_through_fit_restarts_are_the_implicit_ones(X):
  """gx.fit_restarts keeps the differentiable path: its gradient is gx.fit's
  from the same initialisation (implicit, at the fixed point)."""
  key = jax.random.key(3)
  Xj = jnp.asarray(X)

  def through_restarts(X):
    return gx.fit_restarts(key, X, 2, covariance_type="diag",
                           tol=1e-6)[0].log_likelihood

  def through_fit(X):
    p0 = gx.init_params(jax.random.split(key, 1)[0], X, 2,
                        covariance_type="diag")
    return gx.fit(X, p0, tol=1e-6).log_likelihood

  got, want = jax.grad(through_restarts)(Xj), jax.grad(through_fit)(Xj)
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_kmeans_plusplus_first_centre_is_drawn_with_probability_w():
  """The first centre is one draw with probability ~ w (not the best of
  several candidates), whatever the seeding loop does after it."""
  X = jnp.asarray([[0.0], [1.0], [2.0], [10.0]])
  w = np.array([1.0, 2.0, 3.0, 4.0])
  keys = jax.random.split(jax.random.key(0), 4000)
  first = jax.vmap(lambda k: gx.kmeans_plusplus(
      k, X, 2, sample_weight=jnp.asarray(w, jnp.float32))[1][0])(keys)
  freq = np.bincount(np.asarray(first), minlength=4) / len(keys)
  np.testing.assert_allclose(freq, w / w.sum(), atol=0.03)  # 4 sd
