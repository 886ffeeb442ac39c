"""The EM driver's honest results: bad data, throw=, transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import engine


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  X = np.concatenate([rng.normal(m, 0.5, (60, 2)) for m in (-3, 3)])
  X = X.astype(np.float32)
  p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type="diag")
  return X, p0


def with_bad_entry(X, value):
  bad = X.copy()
  bad[5, 1] = value
  return bad


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_jax", [False, True])
def test_fit_refuses_non_finite_data(data, value, as_jax):
  X, p0 = data
  bad = with_bad_entry(X, value)
  bad = jnp.asarray(bad) if as_jax else bad
  with pytest.raises(ValueError, match="X contains NaN or infinity"):
    gx.fit(bad, p0)
  with pytest.raises(ValueError, match="X contains NaN or infinity"):
    gx.fit_accelerated(bad, p0)


def test_fit_refuses_non_finite_weights(data):
  X, p0 = data
  w = np.ones(X.shape[0], np.float32)
  w[3] = np.nan
  with pytest.raises(ValueError, match="sample_weight contains NaN"):
    gx.fit(X, p0, sample_weight=w)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_traced_non_finite_data_gives_nan_not_zero(data, value):
  X, p0 = data
  bad = jnp.asarray(with_bad_entry(X, value))
  res = jax.jit(lambda X: gx.fit(X, p0))(bad)
  assert bool(res.failed) and not bool(res.converged)
  assert np.isnan(float(res.log_likelihood))
  assert int(res.n_iter) == 0
  # The params returned are the initial ones, untouched.
  np.testing.assert_array_equal(np.asarray(res.params.means),
                                np.asarray(p0.means))


def test_traced_non_finite_data_under_vmap(data):
  X, p0 = data
  batch = jnp.stack([jnp.asarray(X), jnp.asarray(with_bad_entry(X, np.nan))])
  res = jax.vmap(lambda X: gx.fit(X, p0))(batch)
  assert np.asarray(res.failed).tolist() == [False, True]
  ll = np.asarray(res.log_likelihood)
  assert np.isfinite(ll[0]) and np.isnan(ll[1])


def test_throw_passes_a_good_fit(data):
  X, p0 = data
  ref = gx.fit(X, p0, tol=1e-4)
  assert bool(ref.converged) and int(ref.n_degenerate) == 0
  got = gx.fit(X, p0, tol=1e-4, throw=True)
  np.testing.assert_array_equal(np.asarray(got.params.means),
                                np.asarray(ref.params.means))
  got = jax.jit(lambda X: gx.fit(X, p0, tol=1e-4, throw=True))(X)
  assert bool(got.converged)


def test_throw_raises_outside_jit(data):
  X, p0 = data
  with pytest.raises(gx.FitError, match="did not converge in 1 "):
    gx.fit(X, p0, tol=0.0, max_iter=1, throw=True)
  with pytest.raises(gx.FitError, match="did not converge"):
    gx.fit_accelerated(X, p0, tol=0.0, max_iter=3, throw=True)
  # Without throw, the same fit is reported, not raised.
  assert not bool(gx.fit(X, p0, tol=0.0, max_iter=1).converged)


def test_throw_raises_inside_jit_vmap_and_grad(data):
  X, p0 = data

  def fit(X, max_iter=1):
    return gx.fit(X, p0, tol=0.0, max_iter=max_iter, throw=True)

  with pytest.raises(Exception, match="did not converge"):
    jax.block_until_ready(jax.jit(fit)(X))
  batch = jnp.stack([jnp.asarray(X)] * 2)
  with pytest.raises(Exception, match="did not converge"):
    jax.block_until_ready(jax.vmap(fit)(batch))
  with pytest.raises(Exception, match="did not converge"):
    jax.block_until_ready(
        jax.grad(lambda X: fit(X).log_likelihood)(jnp.asarray(X)))


def test_throw_reports_failure_and_degenerate_components(data):
  X, p0 = data
  with pytest.raises(Exception, match="failed=True"):
    jax.block_until_ready(jax.jit(lambda X: gx.fit(X, p0, throw=True))(
        jnp.asarray(with_bad_entry(X, np.nan))))
  # Three components on two distinct points: one is collapsed or empty.
  two = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]], np.float32), 20, axis=0)
  p3 = gx.make_params(jnp.ones(3) / 3, jnp.array([[0.0, 0.0], [5.0, 5.0],
                                                   [5.0, 5.0]]),
                      jnp.ones((3, 2)), covariance_type="diag")
  res = gx.fit(two, p3, reg_covar=1e-3)
  assert int(res.n_degenerate) > 0
  with pytest.raises(gx.FitError, match="n_degenerate"):
    gx.fit(two, p3, reg_covar=1e-3, throw=True)


def test_fit_chunked_under_transformations_says_what_to_call(data):
  X, p0 = data
  with pytest.raises(TypeError, match=r"gmmjax\.fit .*gmmjax\.fit_sharded"):
    jax.jit(lambda X: gx.fit_chunked(X, p0).log_likelihood)(X)
  with pytest.raises(TypeError, match="host"):
    jax.grad(lambda X: gx.fit_chunked(X, p0).log_likelihood)(jnp.asarray(X))
  with pytest.raises(TypeError, match="tracer"):
    jax.jit(lambda r: gx.fit_chunked(X, p0, reg_covar=r).n_iter)(1e-6)
  # Concrete calls still work.
  assert int(gx.fit_chunked(X, p0, chunk_size=50).n_iter) > 0


@pytest.mark.parametrize("name", ["fit", "fit_accelerated", "fit_chunked",
                                  "fit_sharded", "select"])
def test_traced_max_iter_names_the_argument_and_the_fix(data, name):
  X, p0 = data
  calls = {
      "fit": lambda m: gx.fit(X, p0, max_iter=m),
      "fit_accelerated": lambda m: gx.fit_accelerated(X, p0, max_iter=m),
      "fit_chunked": lambda m: gx.fit_chunked(X, p0, max_iter=m),
      "fit_sharded": lambda m: gx.fit_sharded(X, p0, max_iter=m),
      "select": lambda m: gx.select_n_components(jax.random.key(0), X, [1, 2], max_iter=m),
  }
  with pytest.raises(ValueError,
                     match=r"max_iter is traced.*static_argnames='max_iter'"):
    jax.jit(lambda m: calls[name](m).n_iter)(5)


def test_one_check_of_max_iter():
  assert engine.check_max_iter(np.int64(3)) == 3
  for bad in (-1, 2.0, True, "5"):
    with pytest.raises(ValueError, match="non-negative int"):
      engine.check_max_iter(bad)


def test_books_record_the_stopping_rule():
  books = engine.init_books(jnp.float32, -jnp.inf, 5, 8)
  assert bool(engine.running(books))  # the priming pass runs at max_iter 0
  t, f = jnp.ones((), bool), jnp.zeros((), bool)

  def report(value, counted=t, tested=t, failed=f, jitter=0.0):
    return engine.Report(counted, jnp.float32(value), tested, failed,
                         jnp.float32(jitter))

  books = engine.record(books, report(1.0, jitter=0.5), 0.1)
  books = engine.record(books, report(2.0, counted=f, tested=f), 0.1)
  books = engine.record(books, report(1.05), 0.1)
  assert int(books.n_iter) == 2 and float(books.jitter) == 0.5
  assert bool(books.converged) and not bool(engine.running(books))
  np.testing.assert_allclose(np.asarray(books.history[:2]), [1.0, 1.05])
  assert np.all(np.isnan(np.asarray(books.history[2:])))


def test_nan_gradients_only_where_the_fixed_point_was_not_reached(data):
  X, p0 = data

  def loss(X, max_iter, nan_gradients):
    r = gx.fit(X, p0, tol=1e-4, max_iter=max_iter,
               nan_gradients=nan_gradients)
    return r.log_likelihood + jnp.sum(r.params.means ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
  # Converged: the option changes nothing (a product by exactly 1: bit for
  # bit on CPU; a GPU's compiler fuses the two programs differently, which
  # moved 68 of 240 entries by one float32 rounding there).
  np.testing.assert_allclose(grad(X, 200, True), grad(X, 200, False),
                             rtol=1e-6, atol=0)
  assert np.all(np.isfinite(grad(X, 200, True)))
  # Stopped after one iteration: a number by default (the result's
  # `converged` says it is not a fixed point), NaN on request.
  assert not bool(gx.fit(X, p0, tol=1e-4, max_iter=1).converged)
  assert np.all(np.isfinite(grad(X, 1, False)))
  assert np.all(np.isnan(grad(X, 1, True)))


@pytest.mark.parametrize("entry", ["fit_restarts", "select_n_components"])
def test_restarts_and_selection_refuse_non_finite_data(data, entry):
  X, _ = data
  key = jax.random.key(0)
  call = {"fit_restarts": lambda X: gx.fit_restarts(key, X, 2),
          "select_n_components": lambda X: gx.select_n_components(
              key, X, [1, 2])}[entry]
  with pytest.raises(ValueError, match="X contains NaN or infinity"):
    call(with_bad_entry(X, np.nan))
