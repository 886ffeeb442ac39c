"""Honest results at every functional entry point (issue 20).

Concrete data holding NaN or infinity, and parameters whose precision
factors no longer match their covariances, are refused with the same
``ValueError`` as :func:`gmmjax.fit`; tracers are not checked. Host-level
functions say what to call under a transformation, and a traced static
argument gets its name and the fix.
"""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax import datasets
from gmmjax._src import checks

KEY = jax.random.key(0)
NOT_FINITE = "contains NaN or infinity"
NOT_CANONICAL = r"not a Cholesky factor.*recompute_factors\(\)"


@pytest.fixture(scope="module")
def data():
  """40 x 2 float32 samples and canonical K=2 diag parameters."""
  X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
  params = gx.make_params(jnp.array([0.5, 0.5]),
                          jnp.array([[-1.0, 0.0], [1.0, 0.0]]),
                          jnp.ones((2, 2)), covariance_type="diag")
  return X, params


def with_entry(X, value, row=3):
  bad = np.array(X, copy=True)
  bad[row, 1] = value
  return bad


def _two_chunks(X):
  """A re-iterable source of two chunks: rows 0-19, then 20-39."""
  return [X[:20], X[20:]]


# Each takes (X, params, sample_weight) and calls the entry point.
DATA_ENTRIES = {
    "init_params": lambda X, p, w: gx.init_params(KEY, X, 2,
                                                  sample_weight=w),
    "kmeans": lambda X, p, w: gx.kmeans(KEY, X, 2, sample_weight=w),
    "kmeans_plusplus": lambda X, p, w: gx.kmeans_plusplus(KEY, X, 2,
                                                          sample_weight=w),
    "fit_gradient": lambda X, p, w: gx.fit_gradient(X, p, sample_weight=w),
    "em_then_gradient": lambda X, p, w: gx.em_then_gradient(
        X, p, sample_weight=w),
    "online_init": lambda X, p, w: gx.online_init(X, p, sample_weight=w),
    "fit_online": lambda X, p, w: gx.fit_online(
        KEY, [X if w is None else (X, w)], n_components=2),
    "fit_chunked": lambda X, p, w: gx.fit_chunked(X, p, sample_weight=w,
                                                  chunk_size=16),
    "fit_sharded": lambda X, p, w: gx.fit_sharded(X, p, sample_weight=w),
    "fit_restarts_sharded": lambda X, p, w: gx.fit_restarts_sharded(
        KEY, X, 2, sample_weight=w),
}


# -inf takes the same check (its overflow case is
# test_host_check_is_exact_when_a_finite_sum_overflows).
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("entry", sorted(DATA_ENTRIES))
def test_non_finite_data_is_refused(data, entry, value):
  X, p = data
  with pytest.raises(ValueError, match=NOT_FINITE):
    DATA_ENTRIES[entry](with_entry(X, value), p, None)


@pytest.mark.parametrize("entry", ["init_params", "kmeans", "fit_gradient",
                                   "online_init", "fit_sharded"])
def test_non_finite_jax_data_is_refused(data, entry):
  X, p = data
  with pytest.raises(ValueError, match="X " + NOT_FINITE):
    DATA_ENTRIES[entry](jnp.asarray(with_entry(X, np.nan)), p, None)


@pytest.mark.parametrize("entry", sorted(DATA_ENTRIES))
def test_non_finite_sample_weight_is_refused(data, entry):
  X, p = data
  w = np.ones(X.shape[0], np.float32)
  w[5] = np.nan
  with pytest.raises(ValueError, match="sample_weight " + NOT_FINITE):
    DATA_ENTRIES[entry](X, p, w)


@pytest.mark.parametrize("entry", ["init_params", "kmeans", "kmeans_plusplus",
                                   "fit_gradient", "online_init",
                                   "fit_sharded"])
def test_numpy_data_is_refused_before_anything_compiles(data, entry, caplog):
  X, p = data
  bad = with_entry(X[:37], np.nan)  # a shape nothing compiled before
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    with pytest.raises(ValueError, match="X " + NOT_FINITE):
      DATA_ENTRIES[entry](bad, p, None)
  assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_fit_chunked_refuses_a_bad_row_in_a_later_chunk(data):
  X, p = data
  # The bad row is in the second chunk.
  with pytest.raises(ValueError, match="A chunk of X " + NOT_FINITE):
    gx.fit_chunked(_two_chunks(with_entry(X, np.nan, row=30)), p)
  with pytest.raises(ValueError, match="A chunk of X " + NOT_FINITE):
    gx.fit_chunked(lambda: iter(_two_chunks(with_entry(X, np.inf, row=30))),
                   p)


def test_nan_as_missing_allows_nan_but_not_infinity(data):
  X, p = data
  inf = with_entry(X, np.inf)
  with pytest.raises(ValueError, match="A chunk of X contains infinity"):
    gx.fit_chunked(inf, p, nan_as_missing=True, chunk_size=16)
  with pytest.raises(ValueError, match="X contains infinity"):
    gx.fit_sharded(inf, p, nan_as_missing=True)
  res = gx.fit_chunked(with_entry(X, np.nan), p, nan_as_missing=True,
                       chunk_size=16, max_iter=2)
  assert not bool(res.failed)


def test_observed_mask_checks_only_the_observed_entries(data):
  X, p = data
  obs = np.ones(X.shape, bool)
  obs[3, 1] = False
  # NaN where the mask says missing: the value is ignored.
  p0 = gx.init_params(KEY, with_entry(X, np.nan), 2, observed=obs,
                      covariance_type="diag")
  assert np.all(np.isfinite(np.asarray(p0.means)))
  obs[3, 1] = True
  for call in (lambda Xb: gx.init_params(KEY, Xb, 2, observed=obs),
               lambda Xb: gx.online_init(Xb, p, observed=obs)):
    with pytest.raises(ValueError, match="X " + NOT_FINITE):
      call(with_entry(X, np.nan))


def test_traced_data_is_not_checked(data):
  X, p = data
  bad = jnp.asarray(with_entry(X, np.nan))
  # Under jit the values are unknown: no error (the fits report failure).
  p0 = jax.jit(lambda X: gx.init_params(KEY, X, 2))(bad)
  assert not np.isfinite(np.asarray(p0.means)).all()
  # (k-means may still return finite centres: what it shows is that the
  # check does not concretise the tracer.)
  jax.block_until_ready(jax.jit(lambda X: gx.kmeans(KEY, X, 2))(bad))
  res = jax.jit(lambda X: gx.fit_gradient(X, p, max_iter=3))(bad)
  assert not np.isfinite(float(res.log_likelihood))


# -- parameters with inconsistent factors -----------------------------------


def _save(params, tmp_path):
  gx.save(os.path.join(tmp_path, "m.npz"), params)


PARAM_CASES = [
    pytest.param(lambda X, p, tmp: gx.fit_sharded(X, p), id="fit_sharded"),
    pytest.param(lambda X, p, tmp: gx.fit_chunked(X, p), id="fit_chunked"),
    pytest.param(lambda X, p, tmp: gx.e_step(p, X), id="e_step"),
    pytest.param(lambda X, p, tmp: _save(p, tmp), id="save"),
    pytest.param(lambda X, p, tmp: gx.em_step(X, p), id="em_step"),
]


@pytest.mark.parametrize("ctype", ["full", "diag"])
@pytest.mark.parametrize("call", PARAM_CASES)
def test_non_canonical_params_are_refused(data, tmp_path, call, ctype):
  X, _ = data
  a, b = (gx.init_params(KEY, scale * X, 2, covariance_type=ctype,
                         method="random") for scale in (1.0, 4.0))
  # A leaf-wise average of two parameter sets, and a hand-scaled factor.
  mid = jax.tree.map(lambda u, v: (u + v) / 2, a, b)
  scaled = a.replace(precisions_cholesky=2 * a.precisions_cholesky)
  for bad in (mid, scaled):
    with pytest.raises(ValueError, match=NOT_CANONICAL):
      call(X, bad, tmp_path)
  call(X, mid.recompute_factors(), tmp_path)  # recomputed factors pass


def test_batched_params_are_checked_per_restart(data):
  X, _ = data
  batch = jax.vmap(lambda k: gx.init_params(k, X, 2, covariance_type="tied"))(
      jax.random.split(KEY, 2))
  bad = batch.replace(precisions_cholesky=batch.precisions_cholesky.at[1].
                      multiply(3.0))
  with pytest.raises(ValueError, match=NOT_CANONICAL):
    gx.fit_sharded(X, bad)
  assert gx.fit_sharded(X, batch, max_iter=1).n_iter.shape == (2,)


def test_traced_params_are_not_checked(data):
  X, p = data
  bad = p.replace(precisions_cholesky=2 * p.precisions_cholesky)
  _, ll = jax.jit(lambda q: gx.e_step(q, X))(bad)
  assert np.isfinite(float(ll))


# -- host-level functions under transformations -----------------------------


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
def test_select_n_components_under_a_transformation_says_what_to_call(
    data, transform):
  X, _ = data

  def best(X):
    return gx.select_n_components(KEY, X, [1, 2]).best_params.means.sum()

  call = {"jit": jax.jit(best), "grad": jax.grad(best),
          "vmap": jax.vmap(best)}[transform]
  arg = jnp.stack([X, X]) if transform == "vmap" else jnp.asarray(X)
  with pytest.raises(TypeError, match=(r"select_n_components is a host-level "
                                       r"function.*gmmjax\.fit_restarts")):
    call(arg)


def test_select_n_components_with_a_traced_key_says_what_to_call(data):
  X, _ = data
  with pytest.raises(TypeError, match=(r"select_n_components is a host-level "
                                       r"function.*gmmjax\.fit_restarts")):
    jax.vmap(lambda k: gx.select_n_components(k, X, [1, 2]).best_k)(
        jax.random.split(KEY, 2))


def test_fit_chunked_says_it_is_host_level(data):
  X, p = data
  with pytest.raises(TypeError, match=(r"fit_chunked is a host-level "
                                       r"function.*gmmjax\.fit_sharded")):
    jax.jit(lambda X: gx.fit_chunked(X, p).log_likelihood)(X)


# -- traced static arguments ------------------------------------------------


STATIC_ENTRIES = {
    "init_params": ("n_components", lambda X, p, k: gx.init_params(KEY, X, k)),
    "kmeans": ("n_clusters", lambda X, p, k: gx.kmeans(KEY, X, k)),
    "kmeans_plusplus": ("n_clusters",
                        lambda X, p, k: gx.kmeans_plusplus(KEY, X, k)),
    "fit_restarts": ("n_components",
                     lambda X, p, k: gx.fit_restarts(KEY, X, k)),
    "select_n_components.k_range": (
        "k_range", lambda X, p, k: gx.select_n_components(KEY, X, [1, k])),
    "select_n_components.n_init": (
        "n_init", lambda X, p, k: gx.select_n_components(KEY, X, [1, 2],
                                                         n_init=k)),
    "fit_restarts_sharded.n_components": (
        "n_components", lambda X, p, k: gx.fit_restarts_sharded(KEY, X, k)),
    "fit_restarts_sharded.n_init": (
        "n_init", lambda X, p, k: gx.fit_restarts_sharded(KEY, X, 2,
                                                          n_init=k)),
    "sample": ("n_samples", lambda X, p, k: gx.sample(KEY, p, k)),
}
STATIC_ENTRIES["fit_restarts.n_init"] = (
    "n_init", lambda X, p, k: gx.fit_restarts(KEY, X, 2, n_init=k))
STATIC_CASES = [pytest.param(name, id=name) for name in STATIC_ENTRIES]


@pytest.mark.parametrize("entry", STATIC_CASES)
def test_traced_static_argument_names_it_and_the_fix(data, entry):
  X, p = data
  name, call = STATIC_ENTRIES[entry]
  with pytest.raises(ValueError, match=(
      rf"{name} is traced: it sets the shape of .*"
      rf"static_argnames='{name}'\)\) or close over it")):
    jax.jit(lambda k: jax.tree.leaves(call(X, p, k))[0])(2)


def test_static_arguments_work_when_marked_static(data):
  X, p = data
  draw = jax.jit(lambda n: gx.sample(KEY, p, n), static_argnums=0)
  assert draw(3)[0].shape == (3, 2)


# -- the helpers ------------------------------------------------------------


def test_host_check_is_exact_when_a_finite_sum_overflows():
  big = np.full((4, 2), 3e38, np.float32)  # the sum overflows to inf
  checks.check_finite(big)
  checks.check_finite(np.arange(6).reshape(3, 2))  # integers pass
  with pytest.raises(ValueError, match="X " + NOT_FINITE):
    checks.check_finite(with_entry(np.zeros((5, 2)), -np.inf))
  with pytest.raises(ValueError, match="Y contains infinity"):
    checks.check_finite(with_entry(np.zeros((5, 2)), np.inf), "Y",
                        allow_nan=True)
  checks.check_finite(with_entry(np.zeros((5, 2)), np.nan), allow_nan=True)


# -- throw= and nan_gradients= beyond gx.fit -----------------------------------


@pytest.fixture(scope="module")
def bayes_problem():
  """Three blobs fitted with 6 components under the Dirichlet process: a
  converged posterior with components emptied by the prior."""
  X, _ = datasets.blobs(n_samples=150, n_centers=3, seed=0)
  X = jnp.asarray(X, jnp.float32)
  prior = gx.make_bayes_prior(X, 6, covariance_type="diag")
  best, _ = gx.fit_bayes_restarts(KEY, X, 6, covariance_type="diag",
                                  prior=prior, max_iter=300)
  return X, prior, best


def test_fit_bayes_throw_raises_when_not_converged(bayes_problem):
  X, prior, best = bayes_problem
  # Not converged is the only reason: the components the prior emptied
  # are not one.
  with pytest.raises(gx.FitError, match=r"fit_bayes\(throw=True\): it did "
                                        r"not converge in 2 iterations[^;]*\.$"):
    gx.fit_bayes(X, best.params, prior, tol=0.0, max_iter=2, throw=True)
  with pytest.raises(gx.FitError, match=r"fit_bayes_restarts\(throw=True\): "
                                        r"it did not converge[^;]*\.$"):
    gx.fit_bayes_restarts(KEY, X, 6, covariance_type="diag", prior=prior,
                          tol=0.0, max_iter=2, throw=True)


def test_fit_bayes_throw_accepts_components_the_prior_emptied(bayes_problem):
  X, prior, best = bayes_problem
  result = gx.fit_bayes(X, best.params, prior, tol=1e-2, throw=True)
  # The exemption matters: the fit has empty components, and converged.
  assert bool(result.converged) and int(result.n_degenerate) > 0


def test_fit_bayes_nan_gradients(bayes_problem):
  X, prior, best = bayes_problem

  @jax.jit
  def grads(X, tol):  # one program: tol is traced
    def bound(X, masked):
      return gx.fit_bayes(X, best.params, prior, tol=tol, max_iter=100,
                          nan_gradients=masked).log_likelihood
    return [jax.grad(bound)(X, masked) for masked in (False, True)]

  # Converged (with emptied components): the implicit gradient, unchanged.
  plain, masked = grads(X, 1e-2)
  assert np.all(np.isfinite(plain)) and np.abs(plain).max() > 0
  np.testing.assert_array_equal(masked, plain)
  # Stopped before converging (tol=0 never holds): no fixed point, so NaN,
  # not a number.
  plain, masked = grads(X, 0.0)
  assert np.all(np.isnan(masked)) and np.all(np.isfinite(plain))


def test_fit_restarts_throw(data):
  X, _ = data
  with pytest.raises(gx.FitError, match=r"fit_restarts.*did not converge"):
    gx.fit_restarts(KEY, X, 2, n_init=2, tol=0.0, max_iter=2, throw=True)
  best, _ = gx.fit_restarts(KEY, X, 2, n_init=2, max_iter=200, throw=True)
  assert bool(best.converged)


def test_lower_bound_carries_the_objectives_gradient(data):
  """``result.lower_bound`` (the history's last entry) is differentiated
  as the objective at the fixed point, not silently zero. (One rule,
  ``implicit.fit_at_fixed_point``, serves fit and fit_bayes.)"""
  X, params = jnp.asarray(data[0]), data[1]
  fit = lambda x: gx.fit(x, params, tol=1e-6)
  by_bound = jax.grad(lambda x: fit(x).lower_bound)(X)
  by_objective = jax.grad(lambda x: fit(x).log_likelihood)(X)
  assert np.abs(by_objective).max() > 0
  np.testing.assert_array_equal(by_bound, by_objective)


THROWING_FITS = {
    "fit_sharded": lambda X, p, b, kw: gx.fit_sharded(X, p, **kw),
    "fit_restarts_sharded": lambda X, p, b, kw: gx.fit_restarts_sharded(
        KEY, X, 2, **kw)[0],  # the best restart
    "fit_chunked": lambda X, p, b, kw: gx.fit_chunked(X, p, **kw),
    "fit_gradient": lambda X, p, b, kw: gx.fit_gradient(X, p, **kw),
    "fit_bayes_chunked": lambda X, p, b, kw: gx.fit_bayes_chunked(
        np.asarray(b[0]), b[2].params, b[1], **kw),
    "fit_bayes_sharded": lambda X, p, b, kw: gx.fit_bayes_sharded(
        b[0], b[2].params, b[1], **kw),
}


@pytest.mark.parametrize("name", list(THROWING_FITS))
def test_throw_on_every_fit(data, bayes_problem, name):
  """``throw=True`` turns a fit stopped before converging (``tol=0``) into
  a FitError naming the function, on every functional fit."""
  X, params = data
  run = THROWING_FITS[name]
  # Not converged is the only reason (the Bayesian fits' emptied
  # components are not one).
  with pytest.raises(gx.FitError, match=rf"gmmjax\.{name}\(throw=True\): "
                                        r"it did not converge[^;]*\.$"):
    run(X, params, bayes_problem, dict(tol=0.0, max_iter=2, throw=True))
  result = run(X, params, bayes_problem, dict(tol=0.0, max_iter=2))
  assert not bool(result.converged)  # what throw=True refused
