"""select_n_components: the masked sweep, its table, and recovering K."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import gmmjax as gx
from gmmjax._src import padding, select
from tests.conftest import SMALL_BLOCKS


def four_component_data(seed=0, n_per=120):
  """A known 4-component mixture with distinct full covariances."""
  rng = np.random.default_rng(seed)
  centers = np.array([[0.0, 0.0], [7.0, 0.0], [0.0, 7.0], [7.0, 7.0]])
  covs = [np.array([[1.0, 0.6], [0.6, 1.0]]), np.array([[0.5, 0.0], [0.0, 2.0]]),
          np.array([[2.0, -0.8], [-0.8, 1.0]]), np.eye(2) * 0.7]
  return np.concatenate([rng.multivariate_normal(c, s, n_per)
                         for c, s in zip(centers, covs, strict=True)])


@pytest.fixture(scope="module")
def sweep():
  X = four_component_data()
  # Another test in this process may have compiled the same sweep.
  select._sweep.clear_cache()
  before = select._sweep._cache_size()
  result = select.select_n_components(jax.random.key(0), X, range(1, 8),
                                      n_init=2, criterion="bic",
                                      method="kmeans")
  compiles = select._sweep._cache_size() - before
  return X, result, compiles


def test_recovers_true_k_by_bic(sweep):
  _, result, _ = sweep
  assert result.best_k == 4
  assert result.table["k"].tolist() == list(range(1, 8))
  assert int(np.argmin(result.table["bic"])) == 3
  assert result.best_params.weights.shape == (4,)
  np.testing.assert_allclose(np.sort(np.asarray(result.best_params.weights)),
                             0.25, atol=0.02)


def test_whole_sweep_is_one_program(sweep):
  X, _, compiles = sweep
  assert compiles == 1
  # Other k values of the same count and maximum reuse that program.
  before = select._sweep._cache_size()
  select.select_n_components(jax.random.key(1), X, [7, 1, 3, 4, 5, 6, 2],
                             n_init=2, method="kmeans")
  assert select._sweep._cache_size() == before


def test_padded_slots_have_exactly_zero_weight(sweep):
  _, result, _ = sweep
  w = np.asarray(result.params.weights)
  for row, k in enumerate(result.table["k"]):
    assert np.all(w[row, k:] == 0.0)
    assert np.all(w[row, :k] > 0.0)
    np.testing.assert_allclose(w[row].sum(), 1.0, rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(result.params.precisions_cholesky)))


def test_table_matches_independent_formulas(sweep):
  X, result, _ = sweep
  n, d = X.shape
  for i, k in enumerate(result.table["k"]):
    p = result.params_for(int(k))
    dens = sum(float(w) * multivariate_normal(np.asarray(m, np.float64),
                                              np.asarray(c, np.float64)).pdf(X)
               for w, m, c in zip(p.weights, p.means, p.covariances,
                                  strict=True))
    total = np.sum(np.log(dens))
    n_par = k * d * (d + 1) / 2 + k * d + k - 1
    np.testing.assert_allclose(result.table["log_likelihood"][i], total / n,
                               rtol=1e-5)
    np.testing.assert_allclose(result.table["bic"][i],
                               -2 * total + n_par * np.log(n), rtol=1e-5)
    np.testing.assert_allclose(result.table["aic"][i],
                               -2 * total + 2 * n_par, rtol=1e-5)
    assert result.table["n_parameters"][i] == n_par
  text = select.format_table(result)
  assert text.splitlines()[4].endswith("*")  # k = 4 is marked


def pad(params, n_slots):
  """Appends inactive components (weight 0, unit covariance)."""
  k, d = params.means.shape
  extra = n_slots - k
  ct = params.covariance_type
  cov, pc = params.covariances, params.precisions_cholesky
  if ct == "full":
    eye = jnp.broadcast_to(jnp.eye(d, dtype=cov.dtype), (extra, d, d))
    cov, pc = jnp.concatenate([cov, eye]), jnp.concatenate([pc, eye])
  elif ct == "diag":
    cov = jnp.concatenate([cov, jnp.ones((extra, d), cov.dtype)])
    pc = jnp.concatenate([pc, jnp.ones((extra, d), pc.dtype)])
  elif ct == "spherical":
    cov = jnp.concatenate([cov, jnp.ones(extra, cov.dtype)])
    pc = jnp.concatenate([pc, jnp.ones(extra, pc.dtype)])
  return params.replace(
      weights=jnp.concatenate([params.weights,
                               jnp.zeros(extra, params.weights.dtype)]),
      means=jnp.concatenate([params.means,
                             jnp.zeros((extra, d), params.means.dtype)]),
      covariances=cov, precisions_cholesky=pc)


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_masked_loop_equals_unpadded_fit(ctype, x64, blobs3):
  """The padded, masked EM iterates exactly as an unpadded fit."""
  X = jnp.asarray(blobs3[::2, :2])
  k, slots = 2, 4
  p0 = gx.init_params(jax.random.key(0), X, k, covariance_type=ctype,
                      method="random_from_data")
  ref = gx.fit(X, p0, max_iter=15, tol=1e-8, reg_covar=1e-4)
  mask = jnp.arange(slots) < k
  run = jax.jit(lambda p: select._masked_fit(X, p, mask, None, 1e-8, 1e-4,
                                             15, None))
  params, total_ll, count, n_iter, converged, failed, jitter = run(
      pad(p0, slots))
  assert int(n_iter) == int(ref.n_iter)
  assert float(jitter) == float(ref.jitter) == 0.0
  assert not bool(failed)
  assert bool(converged) == bool(ref.converged)
  np.testing.assert_allclose(float(total_ll / count),
                             float(ref.log_likelihood), rtol=1e-10)
  got = padding.unpad_components(params, k)
  # Tied differs by the 10*eps floors of the 2 empty slots in sum(N_k).
  rtol = 1e-9 if ctype == "tied" else 1e-10
  for name in ("weights", "means", "covariances"):
    np.testing.assert_allclose(np.asarray(getattr(got, name)),
                               np.asarray(getattr(ref.params, name)),
                               rtol=rtol, atol=1e-12, err_msg=name)
  assert np.all(np.asarray(params.weights)[k:] == 0.0)


def test_table_reports_the_cholesky_jitter():
  """float32 collinear features (x2 = x0 - 2 x1): full covariances singular
  but for reg_covar, far below float32's rounding of moments of O(1e3), so
  the null direction's variance comes out of either sign; over the
  iterations of k = 2 and 3 (not k = 1: one covariance, one draw) some
  M-step needs a diagonal jitter whatever the compiler's rounding, and the
  table reports it. Independent features: none. (The GEMM forms:
  direct_max_entries=0, as conftest's guarded_kernels.)"""
  rng = np.random.default_rng(5)
  base = rng.normal(0, 30, (800, 2))
  collinear = np.concatenate([base, base[:, :1] - 2 * base[:, 1:]], axis=1)
  for X, needs in ((collinear, True), (rng.normal(0, 3, (800, 3)), False)):
    result = gx.select_n_components(
        jax.random.key(0), X.astype(np.float32), [2, 3], max_iter=20,
        method="kmeans", chunking=gx.ChunkOptions(direct_max_entries=0))
    jitter = result.table["jitter"]
    assert jitter.shape == (2,) and np.all(jitter >= 0)
    assert bool(np.all(jitter > 0)) == needs, jitter


def test_bad_arguments():
  X = np.random.default_rng(0).normal(size=(10, 2))
  with pytest.raises(ValueError, match="criterion"):
    select.select_n_components(jax.random.key(0), X, [1, 2], criterion="icl")
  with pytest.raises(ValueError, match="non-empty sequence of positive"):
    select.select_n_components(jax.random.key(0), X, [])
  with pytest.raises(ValueError, match="positive ints"):
    select.select_n_components(jax.random.key(0), X, [0, 1])
  with pytest.raises(ValueError, match="repeated"):
    select.select_n_components(jax.random.key(0), X, [2, 2])
  with pytest.raises(ValueError, match="n_samples >= n_components"):
    select.select_n_components(jax.random.key(0), X, [1, 11])
  with pytest.raises(ValueError, match="2-D array"):
    select.select_n_components(jax.random.key(0), X[:, 0], [1, 2])


def test_compacted_sweep_equals_plain_and_reports_running_fits(x64, request):
  """The sweep's (k, restart) pairs form one batch of batching.while_loop:
  in blocks of 2 (forced) the table equals the plain vmapped loop's, and
  each fit reports each of its own iterations once, in both: stopped
  members (finished, or a block's filler) do not. With one restart per k
  the table's n_iter are all the fits there are. (float64: blocks and the
  plain loop round differently, by 1e-16 here.)"""
  X = four_component_data(seed=3, n_per=60)

  def sweep(chunking=None):
    calls = []
    result = select.select_n_components(
        jax.random.key(2), X, [1, 2, 3, 5], covariance_type="diag",
        method="random", tol=1e-6, max_iter=60, chunking=chunking,
        callback=lambda n, ll, change: calls.append((int(n), float(ll))))
    jax.effects_barrier()
    return result, calls

  plain, plain_calls = sweep()
  compacted = request.getfixturevalue("compactions")
  blocked, blocked_calls = sweep(SMALL_BLOCKS)
  assert compacted == [(2, 4)]  # one flat batch of 4 (k, restart) pairs
  n_iter = plain.table["n_iter"].tolist()
  assert len(set(n_iter)) > 1, n_iter  # fits stop at different iterations
  assert blocked.table["n_iter"].tolist() == n_iter
  np.testing.assert_allclose(blocked.table["log_likelihood"],
                             plain.table["log_likelihood"], rtol=1e-10)
  for calls in (plain_calls, blocked_calls):
    assert len(calls) == sum(n_iter)
    assert max(n for n, _ in calls) == max(n_iter)
    assert all(np.isfinite(ll) for _, ll in calls)
  np.testing.assert_allclose(sorted(plain_calls), sorted(blocked_calls),
                             rtol=1e-10)


def test_rows_equal_single_k_sweeps_with_restarts(x64):
  """Each (k, restart) pair of the flat batch gets restart j's key: the
  k=3 row of a [1, 3] sweep with 3 restarts equals a [3] sweep (same slots,
  same keys), its restarts included (the best one is the same). With
  key 5 the restarts' fits differ (pairing keys by repeat instead of tile
  gives -4.92 against -4.317 for k=3)."""
  X = four_component_data(seed=5, n_per=40)
  kw = dict(covariance_type="full", n_init=3, method="random", tol=1e-8,
            max_iter=40)
  both = select.select_n_components(jax.random.key(5), X, [1, 3], **kw)
  alone = select.select_n_components(jax.random.key(5), X, [3], **kw)
  for name in ("log_likelihood", "n_iter", "bic"):
    np.testing.assert_allclose(both.table[name][1], alone.table[name][0],
                               rtol=1e-12)
  for a, b in zip(jax.tree.leaves(both.params_for(3)),
                  jax.tree.leaves(alone.params_for(3)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
