"""The EM loop: invariants, vmap/jit, compile-once, failure reporting."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import chunks, compiling
from gmmjax._src import fit as fit_lib
from tests.conftest import SMALL_BLOCKS, make_blobs

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def X():
  return make_blobs(4, 60, [[0, 0], [3, 1], [1, 4]])


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_history_never_decreases_and_result_is_consistent(X, cov_type, x64):
  p0 = gx.init_params(jax.random.key(1), X, 3, covariance_type=cov_type,
                      method="random")
  res = gx.fit(X, p0, max_iter=200, tol=1e-10)
  n = int(res.n_iter)
  hist = np.asarray(res.history)
  assert res.history.shape[0] >= 200  # rounded up: max_iter is traced
  assert np.all(np.isfinite(hist[:n])) and np.all(np.isnan(hist[n:]))
  assert np.all(np.diff(hist[:n]) >= -1e-12)
  # log_likelihood is that of the returned params, >= the last E-step value.
  np.testing.assert_allclose(float(res.log_likelihood),
                             float(gx.log_likelihood(res.params, X)),
                             rtol=1e-12)
  assert float(res.log_likelihood) >= hist[n - 1] - 1e-12
  assert float(res.lower_bound) == hist[n - 1]
  # params are exactly n_iter EM iterations from p0.
  step = jax.jit(lambda p: gx.em_step(X, p, sample_weight=None,
                                      reg_covar=1e-6)[0])
  p = p0
  for _ in range(n):
    p = step(p)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(res.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                               atol=1e-12)


def test_convergence_rule_is_sklearns(X, x64):
  p0 = gx.init_params(jax.random.key(2), X, 3, method="random")
  res = gx.fit(X, p0, max_iter=500, tol=1e-3)
  hist = np.asarray(res.history)
  n = int(res.n_iter)
  assert bool(res.converged)
  changes = np.diff(np.concatenate([[-np.inf], hist[:n]]))
  assert abs(changes[-1]) < 1e-3
  assert np.all(np.abs(changes[:-1]) >= 1e-3)
  # max_iter bounds the loop and reports non-convergence.
  short = gx.fit(X, p0, max_iter=2, tol=0.0)
  assert int(short.n_iter) == 2 and not bool(short.converged)


def test_vmap_over_initial_params_equals_separate_fits(X, x64):
  keys = jax.random.split(jax.random.key(3), 8)
  batch = jax.vmap(lambda k: gx.init_params(k, X, 3, method="random"))(keys)
  results = jax.vmap(lambda p: gx.fit(X, p, max_iter=300, tol=1e-6))(batch)
  assert results.params.means.shape == (8, 3, 2)
  n_iters = set()
  for i in range(8):
    p_i = jax.tree.map(lambda a, i=i: a[i], batch)
    single = gx.fit(X, p_i, max_iter=300, tol=1e-6)
    n_iters.add(int(single.n_iter))
    assert int(results.n_iter[i]) == int(single.n_iter)
    assert bool(results.converged[i]) == bool(single.converged)
    np.testing.assert_allclose(np.asarray(results.params.means[i]),
                               np.asarray(single.params.means), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(results.history[i]),
                               np.asarray(single.history), rtol=1e-9)
  assert len(n_iters) > 1  # members really stopped at different iterations


@pytest.mark.parametrize("block", [2, 1, 3])
def test_vmapped_problems_compacted_equal_separate_fits(
    X, x64, compactions, monkeypatch, block):
  # 7 problems (blocks of 2, the last one partial, or of 1: the unbatched
  # body) on different data, so that they stop at different iterations and
  # finished ones are skipped. Block 3: an accelerator's memory bound
  # (backend patched) with 4 KiB chunks: each member's E-step (180 x 3 x 2
  # float64, 8,640 bytes) is capped at one chunk, and blocks hold 3.
  options = SMALL_BLOCKS
  if block == 1:
    options = dataclasses.replace(options, sequential_member_bytes=1)
  if block == 3:
    options = dataclasses.replace(options, accelerator_block_chunks=3,
                                  accelerator_bytes=4096)
    monkeypatch.setattr(chunks, "on_cpu", lambda: False)
    monkeypatch.setattr(chunks, "device_memory", lambda: None)
  rng = np.random.default_rng(0)
  Xs = np.stack([np.asarray(X) * rng.uniform(0.5, 1.5)
                 + rng.normal(0, 0.3, X.shape) for _ in range(7)])
  keys = jax.random.split(jax.random.key(4), 7)
  p0s = jax.vmap(lambda k, x: gx.init_params(k, x, 3, method="random"))(
      keys, Xs)
  batched = jax.jit(jax.vmap(
      lambda x, p: gx.fit(x, p, max_iter=200, tol=1e-8, chunking=options)))(
          Xs, p0s)
  assert compactions == [(block, 7)]
  n_iters = []
  for i in range(7):
    single = gx.fit(Xs[i], jax.tree.map(lambda a, i=i: a[i], p0s),
                    max_iter=200, tol=1e-8)
    n_iters.append(int(single.n_iter))
    assert int(batched.n_iter[i]) == n_iters[-1]
    assert bool(batched.converged[i]) == bool(single.converged)
    for a, b in zip(jax.tree.leaves(batched.params),
                    jax.tree.leaves(single.params)):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b),
                                 rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(batched.history[i]),
                               np.asarray(single.history), rtol=1e-9)
  assert len(set(n_iters)) > 3, n_iters


def test_tiny_programs_take_an_optimisation_level_set_in_xla_flags():
  """Level 1 for tiny programs, unless XLA_FLAGS sets one (the user's
  choice; this suite's level 0): read when gmmjax is imported."""
  code = ("from gmmjax._src import compiling; "
          "print(compiling.TINY_OPTIONS.get('xla_backend_optimization_level'))")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  levels = []
  for flags in ("", "--xla_backend_optimization_level=0",
                "--xla_cpu_use_fusion_emitters=false"):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, timeout=120,
                         env={**env, "XLA_FLAGS": flags})
    levels.append(out.stdout.split()[-1])
  assert levels == ["1", "None", "1"]


def test_small_eager_fits_use_the_fast_compiling_programs(X, x64):
  p0 = gx.init_params(jax.random.key(0), X, 3)
  default, small, tiny = fit_lib._fit_programs
  if jax.default_backend() != "cpu":  # the options are XLA CPU's
    assert fit_lib._fit_program(X, p0) is default
    return
  assert compiling._small_options_work()
  assert X.shape[0] * 3 * 2 <= compiling.TINY_MAX_ENTRIES
  assert fit_lib._fit_program(X, p0) is tiny
  # Restarts run as one batch: the tiny bound holds for all of them.
  n = X.shape[0]
  assert compiling.pick(fit_lib._fit_programs, n, 3, 2, batch=2) is tiny
  assert compiling.pick(fit_lib._fit_programs, n, 3, 2, batch=100) is small
  mid = np.tile(np.asarray(X), (20, 1))  # 3,600 x 2 x 3: one chunk, not tiny
  assert fit_lib._fit_program(mid, p0) is small
  big = np.tile(np.asarray(X), (200, 1))  # 36,000 x 2 x 3 > one chunk
  assert fit_lib._fit_program(big, p0) is default
  # Under a trace the default program is inlined (options are top-level
  # only), also for concrete arrays a user's jit captures.
  seen = []
  jax.jit(lambda x: seen.append(fit_lib._fit_program(x, p0)) or 0)(X)
  jax.jit(lambda: seen.append(fit_lib._fit_program(X, p0)) or 0)()
  assert seen == [default, default]
  Xj, reg = jax.numpy.asarray(X), jax.numpy.asarray(1e-6, X.dtype)
  jax.jit(lambda: gx.fit(Xj, gx.init_params(jax.random.key(0), Xj, 3,
                                            reg_covar=reg),
                         reg_covar=reg, tol=reg).log_likelihood)()
  # The three code generators give the same fit.
  args = (X, p0, None, 1e-8, 1e-6, -np.inf, None, 100)
  b = default(*args, history_len=128, callback=None)
  for program in (small, tiny):
    a = program(*args, history_len=128, callback=None)
    assert int(a.n_iter) == int(b.n_iter)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(u, float), np.asarray(v, float),
                                 rtol=1e-9, atol=1e-12)


def test_compiler_options_are_the_options_of_the_fits_own_programs(
    X, monkeypatch):
  """gx.compiler_options gives a user's jit what compiling.pick gives
  gmmjax's eager fits, by the same size rule; never silently set."""
  default, small, tiny = fit_lib._fit_programs
  by_program = {id(tiny): compiling.TINY_OPTIONS,
                id(small): compiling.SMALL_OPTIONS, id(default): {}}
  mid = np.tile(X, (20, 1))  # 3,600 x 2 x 3: one chunk, not tiny
  big = np.tile(X, (200, 1))  # more than one chunk
  cases = [(X, 1), (X, 2), (X, 100), (mid, 1), (big, 1), (X[:1], 1)]
  for data, batch in cases:
    options = gx.compiler_options(data, 3, batch=batch)
    picked = compiling.pick(fit_lib._fit_programs, data.shape[0], 3, 2,
                            batch=batch)
    assert options == by_program[id(picked)], (data.shape, batch)
  if jax.default_backend() == "cpu":
    assert gx.compiler_options(X, 3) == compiling.TINY_OPTIONS
    assert gx.compiler_options(mid, 3) == compiling.SMALL_OPTIONS
    assert gx.compiler_options(big, 3) == {}
  # A shape alone is enough (jax.ShapeDtypeStruct), and a new dict each
  # time: changing it changes nothing of gmmjax's.
  spec = jax.ShapeDtypeStruct(X.shape, np.float32)
  assert gx.compiler_options(spec, 3) == gx.compiler_options(X, 3)
  assert gx.compiler_options(X.shape, 3) == gx.compiler_options(X, 3)
  assert gx.compiler_options(list(X.shape), 3) == gx.compiler_options(X, 3)
  assert gx.compiler_options(big.shape, 3) == gx.compiler_options(big, 3)
  gx.compiler_options(X, 3).clear()
  assert gx.compiler_options(X, 3) == by_program[id(fit_lib._fit_program(
      X, gx.init_params(jax.random.key(0), X, 3)))]
  # An XLA that refuses the options: XLA's defaults.
  monkeypatch.setattr(compiling, "_small_options_work", lambda: False)
  assert gx.compiler_options(X, 3) == {}
  with pytest.raises(ValueError, match="shape"):
    gx.compiler_options((-5, 2), 3)  # a negative count, as a shape


@pytest.mark.parametrize("args", [((5,), 2, 1), ((5, 2, 1), 2, 1),
                                  ((0, 2), 2, 1), ((5, 0), 2, 1),
                                  ((5, 2), 0, 1), ((5, 2), True, 1),
                                  ((5, 2), 2.0, 1), ((5, 2), 2, 0),
                                  ((5, 2), 2, None)])
@pytest.mark.parametrize("as_shape", [False, True])
def test_compiler_options_refuse_bad_input(args, as_shape):
  shape, k, batch = args
  with pytest.raises(ValueError, match="shape|positive int"):
    gx.compiler_options(shape if as_shape else np.zeros(shape), k,
                        batch=batch)


def test_jit_and_compile_once_per_shape(X):
  p0 = gx.init_params(jax.random.key(0), X, 3)
  program = fit_lib._fit_program(X, p0)
  assert program is fit_lib._fit_program(X[:50], p0)
  program.clear_cache()
  for tol, reg in [(1e-3, 1e-6), (1e-4, 1e-5), (1e-2, 1e-3)]:
    gx.fit(X, p0, tol=tol, reg_covar=reg, max_iter=20)
  gx.fit(X + 1.0, p0, max_iter=20)
  assert program._cache_size() == 1
  gx.fit(X[:50], p0, max_iter=20)  # a new shape compiles once more
  assert program._cache_size() == 2
  # Works inside a user's jit. tol=0: both run 20 iterations, whatever the
  # two programs' float32 rounding (the last change is 3 ulps from 1e-3).
  f = jax.jit(lambda X, p: gx.fit(X, p, max_iter=20, tol=0.0).log_likelihood)
  np.testing.assert_allclose(
      float(f(X, p0)),
      float(gx.fit(X, p0, max_iter=20, tol=0.0).log_likelihood), rtol=1e-6)


def test_warm_start_previous_log_likelihood(X, x64):
  p0 = gx.init_params(jax.random.key(0), X, 3)
  first = gx.fit(X, p0, max_iter=500, tol=1e-6)
  again = gx.fit(X, first.params, tol=1e-3,
                 prev_log_likelihood=first.lower_bound)
  assert bool(again.converged) and int(again.n_iter) == 1


def test_degenerate_cluster_default_reg_is_finite(x64):
  rng = np.random.default_rng(0)
  X = np.concatenate([np.tile([[3.0, -2.0]], (30, 1)),
                      rng.normal(size=(60, 2))])
  for cov_type in COV_TYPES:
    p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type=cov_type,
                        method="kmeans")
    res = gx.fit(X, p0, max_iter=100)
    assert not bool(res.failed)
    assert all(np.all(np.isfinite(np.asarray(a)))
               for a in jax.tree.leaves(res.params))
    assert np.isfinite(float(res.log_likelihood))


def test_numerical_failure_is_flagged_not_nan(x64):
  """reg_covar=0 on a collapsed cluster: the fit stops and says so."""
  rng = np.random.default_rng(0)
  X = np.concatenate([np.tile([[3.0, -2.0]], (30, 1)),
                      rng.normal(size=(60, 2))])
  p0 = gx.make_params(np.array([0.5, 0.5]), np.array([[3.0, -2.0],
                                                      [0.0, 0.0]]),
                      np.stack([np.eye(2) * 0.1, np.eye(2)]))
  res = gx.fit(X, p0, max_iter=50, reg_covar=0.0)
  assert bool(res.failed) and not bool(res.converged)
  assert all(np.all(np.isfinite(np.asarray(a)))
             for a in jax.tree.leaves(res.params))
  assert np.isfinite(float(res.log_likelihood))
  n = int(res.n_iter)
  assert np.all(np.isnan(np.asarray(res.history)[n:]))


def test_callback_reports_every_iteration(X):
  seen = []
  p0 = gx.init_params(jax.random.key(0), X, 3)
  res = gx.fit(X, p0, max_iter=30, tol=1e-4,
               callback=lambda i, ll, ch: seen.append((int(i), float(ll))))
  jax.effects_barrier()
  assert [i for i, _ in seen] == list(range(1, int(res.n_iter) + 1))
  np.testing.assert_allclose([ll for _, ll in seen],
                             np.asarray(res.history)[:int(res.n_iter)],
                             rtol=1e-6)


def test_fit_restarts_picks_the_best(X, x64):
  best, runs = gx.fit_restarts(jax.random.key(0), X, 3, n_init=6,
                               method="random", tol=1e-6)
  assert runs.log_likelihood.shape == (6,)
  assert float(best.log_likelihood) == float(np.max(runs.log_likelihood))
  # Restarts from typed and legacy keys both work.
  best2, _ = gx.fit_restarts(jax.random.PRNGKey(0), X, 3, n_init=2)
  assert np.isfinite(float(best2.log_likelihood))


@pytest.mark.parametrize("sequential", [False, True])
def test_restarts_equal_separate_fits(X, x64, sequential, request):
  """Vmapped or one after another (CPU, large data: blocks of one restart),
  each restart is the separate fit of its own initial params, stopping at
  its own iteration."""
  from gmmjax._src import restarts
  options = None
  if sequential:
    compacted = request.getfixturevalue("compactions")
    options = dataclasses.replace(SMALL_BLOCKS, sequential_member_bytes=1)
  key = jax.random.key(3)
  params0 = restarts.init_restarts(key, X, 3, n_init=3, method="random")
  best, runs = gx.fit_restarts(key, X, 3, n_init=3, method="random",
                               tol=1e-4, max_iter=50, chunking=options)
  if sequential:
    assert compacted == [(1, 3)]
  for i in range(3):
    one = gx.fit(X, jax.tree.map(lambda a, i=i: a[i], params0), tol=1e-4,
                 max_iter=50)
    assert int(runs.n_iter[i]) == int(one.n_iter)
    np.testing.assert_allclose(np.asarray(runs.params.covariances[i]),
                               np.asarray(one.params.covariances),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(runs.log_likelihood[i]),
                               float(one.log_likelihood), rtol=1e-12)
  assert len(set(np.asarray(runs.n_iter).tolist())) > 1  # own stopping
  assert float(best.log_likelihood) == float(np.max(runs.log_likelihood))
