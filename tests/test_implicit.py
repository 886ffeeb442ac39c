"""Implicit differentiation through a converged EM fit.

References are independent of the implicit rule: central finite differences
of the (non-differentiated) fit, the step-by-step unrolled gradient, a dense
linear solve, and Fisher's identity between the likelihood and ``Q``.
"""

import functools

import jax
import jax.extend.core
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_BLOCKS, make_blobs
from jax.test_util import check_grads

import gmmjax as gx
from gmmjax._src import covariance as cov_ops
from gmmjax._src import em as em_lib
from gmmjax._src import fit as fit_lib
from gmmjax._src import implicit

K = 3
N = 90
# Enough EM steps for the overlapping case (spectral radius up to ~0.98) to
# reach the fixed point, so finite differences see the true derivative.
MAX_ITER = 2000
REG = 1e-3


def _datasets():
  separated = make_blobs(1, N // K, [[0, 0], [6, 1], [1, 7]], stretch=False)
  overlapping = make_blobs(2, N // K, [[0, 0], [2.5, 0.4], [0.6, 2.7]],
                           stretch=False)
  return np.stack([separated, overlapping])


def _init(X, covariance_type, seed=0):
  return gx.init_params(jax.random.key(seed), X, K,
                        covariance_type=covariance_type, method="kmeans",
                        reg_covar=REG)


def _coefficients(covariance_type, seed=0):
  rng = np.random.default_rng(seed)
  cov_shape = cov_ops.covariance_shape(covariance_type, K, 2)
  return (rng.normal(size=(K, 2)), rng.normal(size=cov_shape),
          rng.normal(size=K), rng.normal(size=(N, K)))


def _objective(X, w, reg, p0, coef, differentiation="implicit",
               max_iter=MAX_ITER):
  """A scalar of everything a fit returns: params, likelihood, resp."""
  a, b, c, r = coef
  res = gx.fit(X, p0, sample_weight=w, reg_covar=reg, tol=0.0,
               max_iter=max_iter, differentiation=differentiation)
  resp = jnp.exp(gx.e_step(res.params, X[:N])[0])
  return (res.log_likelihood + jnp.sum(a * res.params.means)
          + jnp.sum(b * res.params.covariances)
          + jnp.sum(c * jnp.log(res.params.weights))
          + jnp.sum(r * resp) / N)


_f = jax.jit(_objective, static_argnames=("differentiation", "max_iter"))
_grad = jax.jit(jax.grad(_objective, argnums=(0, 1, 2)),
                static_argnames=("differentiation", "max_iter"))


def _rel(a, b):
  return abs(float(a) - float(b)) / abs(float(b))


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag",
                                             "spherical"])
def test_implicit_gradient_matches_finite_differences(x64, covariance_type):
  Xs = _datasets()
  ws = np.random.default_rng(3).uniform(0.5, 1.5, (2, N))
  coef = jax.tree.map(jnp.asarray, _coefficients(covariance_type))
  rng = np.random.default_rng(4)
  h = np.array([1e-5, 1e-5, 1e-6])  # steps for X, w, reg
  for s in range(2):  # separated, overlapping
    X, w = jnp.asarray(Xs[s]), jnp.asarray(ws[s])
    p0 = _init(X, covariance_type)
    res = gx.fit(X, p0, sample_weight=w, reg_covar=REG, tol=0.0,
                 max_iter=MAX_ITER)
    # The finite differences see the fixed point only if the fit reached it.
    last = int(res.n_iter) - 1
    assert abs(float(res.history[last] - res.history[last - 1])) < 1e-14
    gX, gw, greg = _grad(X, w, REG, p0, coef)
    vX, vw = rng.normal(size=X.shape), rng.normal(size=w.shape)
    dirs = [(vX, 0 * vw, 0.0), (0 * vX, vw, 0.0), (0 * vX, 0 * vw, 1.0)]
    ad = [np.vdot(gX, vX), np.vdot(gw, vw), greg]
    for name, hi, (dx, dw, dr), a in zip(["X", "w", "reg"], h, dirs, ad,
                                         strict=True):
      d = (_f(X + hi * dx, w + hi * dw, REG + hi * dr, p0, coef)
           - _f(X - hi * dx, w - hi * dw, REG - hi * dr, p0, coef)) / (2 * hi)
      assert _rel(a, d) <= 1e-4, (covariance_type, s, name, a, d)


def test_gradient_under_the_compiler_options_gmmjax_offers(x64):
  """A user's jit with gx.compiler_options: the same gradient (finite
  differences, and the default-compiled program), only compiled faster."""
  X, w = jnp.asarray(_datasets()[1]), jnp.ones(N)
  p0 = _init(X, "full")
  coef = jax.tree.map(jnp.asarray, _coefficients("full"))
  options = gx.compiler_options(X, K)
  if jax.default_backend() == "cpu":
    assert "xla_cpu_use_fusion_emitters" in options
  grad = jax.jit(jax.grad(_objective, argnums=(0, 1, 2)),
                 compiler_options=options)
  got = grad(X, w, REG, p0, coef)
  for a, b in zip(got, _grad(X, w, REG, p0, coef), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                               atol=1e-12)
  v = np.random.default_rng(5).normal(size=X.shape)
  h = 1e-5
  d = (_f(X + h * v, w, REG, p0, coef) - _f(X - h * v, w, REG, p0, coef)
       ) / (2 * h)
  assert _rel(np.vdot(got[0], v), d) <= 1e-4


@pytest.mark.parametrize("transform", ["grad", "jvp", "vmap_grad"])
def test_eager_derivatives_run_the_implicit_rule_as_one_program(
    x64, compiles, transform):
  """Differentiated outside any jit (``jax.grad(loss)(X)``, as the docs
  first show it), the implicit rule's tangents are one compiled program,
  not a few hundred operations compiled and dispatched one by one (242
  compiles for a gradient before, 84 for a jvp, 203 for a vmapped
  gradient); values equal the jitted derivative's."""
  X = jnp.asarray(_datasets()[0][:77])  # a shape no other test compiles
  a = jnp.asarray(np.random.default_rng(7).normal(size=(K, 2)))
  v = jnp.asarray(np.random.default_rng(8).normal(size=X.shape))

  def loss(X, p0):
    res = gx.fit(X, p0, tol=1e-9, max_iter=500, reg_covar=REG)
    return res.log_likelihood + jnp.vdot(a, res.params.means)

  if transform == "vmap_grad":
    p0 = jax.vmap(lambda s: _init(X, "full", s))(jnp.arange(2))
    run = lambda f: jax.vmap(f, in_axes=(None, 0))(X, p0)
    derivative = jax.grad(loss)
  else:
    p0 = _init(X, "full")
    run = lambda f: f(X, p0)
    derivative = (jax.grad(loss) if transform == "grad" else
                  lambda X, p0: jax.jvp(lambda X: loss(X, p0), (X,), (v,))[1])
  expected = run(jax.jit(derivative))
  compiles.clear()
  got = run(derivative)
  assert len(compiles) <= 20, compiles
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected),
                             rtol=1e-10, atol=1e-12)
  compiles.clear()
  run(derivative)  # later calls run what the first compiled
  assert compiles == []


def test_tangents_are_inlined_in_a_users_jit():
  """Staged into a user's program, the tangents are traced inline (a nested
  jit would only add its partial evaluation); this also tells when JAX
  renames the tracer type implicit._staged looks for."""
  X = jnp.asarray(_datasets()[0])
  p0 = _init(X, "full")
  loss = lambda X: gx.fit(X, p0, tol=1e-6).log_likelihood
  names = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.append(str(eqn.params.get("name", eqn.primitive.name)))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(jax.grad(loss))(X).jaxpr)
  assert "_fit_impl" in names  # the walk sees nested programs
  assert "_tangents" not in names


def test_tangents_program_ignores_the_callback_and_takes_a_traced_tol(
    x64, compiles):
  """The tangents' program is not keyed on the progress callback (a new
  one per call must not recompile it), and the solver's tolerance may be
  traced (it was before the program existed)."""
  X = jnp.asarray(_datasets()[0][:66])
  p0 = _init(X, "full")

  def loss(X, tol, callback=None):
    solver = gx.ImplicitSolver(method="bicgstab", tol=tol)
    return gx.fit(X, p0, tol=1e-9, max_iter=500, reg_covar=REG,
                  solver=solver, callback=callback).log_likelihood

  traced = jax.jit(jax.grad(loss))(X, 1e-12)
  fixed = jax.jit(jax.grad(lambda X: loss(X, 1e-12)))(X)
  np.testing.assert_allclose(np.asarray(traced), np.asarray(fixed),
                             rtol=1e-9, atol=1e-12)
  # Eager and vmapped over tol (the tangents' own program): each row
  # solves to its own tolerance.
  rows = jax.vmap(jax.grad(loss), in_axes=(None, 0))(
      X, jnp.asarray([1e-12, 1e-3]))
  np.testing.assert_allclose(np.asarray(rows[0]), np.asarray(fixed),
                             rtol=1e-9, atol=1e-12)
  assert np.max(np.abs(np.asarray(rows[1] - rows[0]))) > 1e-9
  seen = []
  jax.grad(loss)(X, 1e-12, lambda *a: seen.append(a))
  compiles.clear()
  jax.grad(loss)(X, 1e-12, lambda *a: seen.append(a))  # another callback
  assert seen
  assert not any("tangents" in str(name) for name in compiles), compiles


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("forward", [False, True])
def test_dense_jacobian_by_forward_or_backward_passes(x64, d, forward,
                                                     monkeypatch):
  """The dense solve's Jacobian, formed by forward passes (unrolled small
  matrices) or one batched backward pass (LAPACK ones), both ways for both
  kinds of step: finite differences of the fitted objective agree."""
  monkeypatch.setattr(implicit, "FORWARD_JACOBIAN_MAX_DIM", 10 if forward
                      else 0)
  rng = np.random.default_rng(6)
  X = jnp.asarray(np.concatenate([rng.normal(rng.normal(0, 1.2, d), 1.0,
                                             (30, d)) for _ in range(2)]))
  p0 = gx.init_params(jax.random.key(0), X, 2, method="kmeans",
                      reg_covar=REG)
  c = jnp.asarray(rng.normal(size=(2, d)))

  def objective(X):
    res = gx.fit(X, p0, tol=0.0, max_iter=3000, reg_covar=REG)
    return res.log_likelihood + jnp.sum(c * res.params.means)

  grad = jax.jit(jax.grad(objective))(X)
  value = jax.jit(objective)
  v = rng.normal(size=X.shape)
  h = 1e-5
  fd = (value(X + h * v) - value(X - h * v)) / (2 * h)
  assert _rel(np.vdot(grad, v), fd) <= 1e-4, (d, forward)

def test_unrolled_gradient_of_long_fit_equals_implicit(x64):
  X = jnp.asarray(_datasets()[1])
  w = jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.5, N))
  coef = jax.tree.map(jnp.asarray, _coefficients("full", 2))
  p0 = _init(X, "full")
  grads = {m: _grad(X, w, REG, p0, coef, differentiation=m)
           for m in ("implicit", "unrolled")}
  for a, b in zip(grads["implicit"], grads["unrolled"], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_krylov_solvers_in_reverse_mode_equal_the_dense_solve(x64):
  # "auto" forms the matrix on small problems; the Krylov methods serve the
  # large ones, and their transposed solves must give the same gradients.
  X = jnp.asarray(_datasets()[1])
  p0 = _init(X, "full")

  def loss(X, method):
    res = gx.fit(X, p0, reg_covar=REG, tol=0.0, max_iter=MAX_ITER,
                 solver=gx.ImplicitSolver(method=method))
    return res.log_likelihood + jnp.sum(res.params.means ** 2)

  grads = {m: jax.jit(jax.grad(loss), static_argnums=1)(X, m)
           for m in ("dense", "bicgstab", "gmres")}
  for m in ("bicgstab", "gmres"):
    np.testing.assert_allclose(grads[m], grads["dense"], rtol=1e-7,
                               atol=1e-9)


def test_second_derivative_through_a_fit(x64):
  """The implicit rule is differentiable again: d2/dreg2 of a loss through
  a converged fit against central differences of its first derivative."""
  X = jnp.asarray(_datasets()[1])
  p0 = _init(X, "full")

  def loss(reg):
    res = gx.fit(X, p0, reg_covar=reg, tol=0.0, max_iter=MAX_ITER)
    return res.log_likelihood + jnp.sum(res.params.means ** 2)

  first = jax.jit(jax.grad(loss))
  second = jax.jit(jax.grad(jax.grad(loss)))(0.01)
  h = 1e-5
  assert _rel(second, (first(0.01 + h) - first(0.01 - h)) / (2 * h)) < 1e-5


def test_gradient_through_a_chunked_e_step_equals_the_whole_one(x64):
  """The implicit rule's step, objective included, runs the fit's own
  E-step: split into scanned chunks (``sum_chunks``) it must give the
  gradients of the whole pass, with sample weights, in reverse mode."""
  X = jnp.asarray(_datasets()[1])
  w = jnp.asarray(np.random.default_rng(4).uniform(0.5, 1.5, N))
  p0 = _init(X, "full")
  small = gx.ChunkOptions(cpu_bytes=1, min_chunk=16, direct_max_entries=0)

  def loss(X, w, chunking):
    res = gx.fit(X, p0, sample_weight=w, reg_covar=REG, tol=0.0,
                 max_iter=MAX_ITER, chunking=chunking)
    return res.log_likelihood + jnp.sum(res.params.means ** 2)

  grads = {c: jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(
      X, w, c) for c in (None, small)}
  assert np.abs(np.asarray(grads[None][0])).max() > 0
  for a, b in zip(grads[small], grads[None], strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_check_grads_forward_and_reverse(x64):
  X = jnp.asarray(_datasets()[1])
  w = jnp.asarray(np.random.default_rng(5).uniform(0.5, 1.5, N))
  p0 = _init(X, "tied")
  coef = jax.tree.map(jnp.asarray, _coefficients("tied", 1))
  f = jax.jit(lambda X, w, reg: _objective(X, w, reg, p0, coef))
  check_grads(f, (X, w, jnp.asarray(REG)), order=1, modes=("fwd", "rev"),
              eps=1e-6, atol=1e-6, rtol=1e-6)


def test_vmap_grad_over_restarts_equals_each_restart_float32(compactions):
  # float32, the default dtype: the implicit rule must work there too. The
  # batched fits (shared data, batched params and regularisers) run in
  # blocks of 2 restarts, the finished ones skipped (batching.while_loop).
  X = jnp.asarray(_datasets()[1], jnp.float32)
  p0s = jax.vmap(lambda k: gx.init_params(
      k, X, K, covariance_type="spherical", method="random_from_data",
      reg_covar=REG))(jax.random.split(jax.random.key(7), 3))
  # Different regularisers too, so that the restarts end at different fits.
  regs = jnp.asarray([REG, 0.05, 0.3], jnp.float32)
  loss = lambda X, p0, reg, chunking=None: gx.fit(
      X, p0, tol=1e-7, max_iter=500, reg_covar=reg,
      chunking=chunking).log_likelihood
  grad = jax.jit(jax.grad(loss))
  batched = jax.jit(jax.vmap(jax.grad(functools.partial(
      loss, chunking=SMALL_BLOCKS)), in_axes=(None, 0, 0)))(X, p0s, regs)
  assert compactions == [(2, 3)]
  singles = [grad(X, jax.tree.map(lambda a, i=i: a[i], p0s), regs[i])
             for i in range(3)]
  assert batched.dtype == jnp.float32 and np.all(np.isfinite(batched))
  assert np.abs(singles[0] - singles[2]).max() > 1e-3
  for i in range(3):
    np.testing.assert_allclose(batched[i], singles[i], rtol=1e-4, atol=1e-5)


def test_zero_weight_padding_changes_neither_fit_nor_gradients(x64):
  X = _datasets()[1]
  n_pad = 7
  X_pad = np.concatenate([X, np.full((n_pad, 2), 50.0)])
  w = np.random.default_rng(6).uniform(0.5, 1.5, N)
  w_pad = np.concatenate([w, np.zeros(n_pad)])
  p0 = _init(jnp.asarray(X), "diag")

  def loss(X, w):
    res = gx.fit(X, p0, sample_weight=w, tol=0.0, max_iter=MAX_ITER,
                 reg_covar=REG)
    return (res.log_likelihood + jnp.sum(res.params.means ** 2)
            + jnp.sum(jnp.sqrt(res.params.covariances))), res

  vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, res), (gX, gw) = vg(jnp.asarray(X), jnp.asarray(w))
  (_, res_p), (gX_p, gw_p) = vg(jnp.asarray(X_pad), jnp.asarray(w_pad))
  for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(res_p.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(res.log_likelihood, res_p.log_likelihood,
                             rtol=1e-12)
  np.testing.assert_allclose(gX_p[:N], gX, rtol=1e-8, atol=1e-10)
  np.testing.assert_array_equal(gX_p[N:], 0.0)
  np.testing.assert_allclose(gw_p[:N], gw, rtol=1e-8, atol=1e-10)


def test_initial_params_gradient_zero_in_implicit_nonzero_unrolled(x64):
  X = jnp.asarray(_datasets()[1])
  p0 = _init(X, "spherical")

  @functools.partial(jax.jit, static_argnums=1)
  def loss(means0, differentiation):
    res = gx.fit(X, p0.replace(means=means0), tol=0.0, max_iter=5,
                 reg_covar=REG, differentiation=differentiation)
    return jnp.sum(res.params.means ** 2) + res.log_likelihood

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_imp = grad(p0.means, "implicit")
  np.testing.assert_array_equal(g_imp, 0.0)
  g_none = grad(p0.means, "none")
  np.testing.assert_array_equal(g_none, 0.0)
  # Unrolled: the gradient through 5 EM steps, checked by central differences.
  g_unr = grad(p0.means, "unrolled")
  v = np.random.default_rng(8).normal(size=p0.means.shape)
  h = 1e-6
  fd = (loss(p0.means + h * v, "none") - loss(p0.means - h * v, "none")) / (
      2 * h)
  assert np.abs(g_unr).max() > 1e-3
  assert _rel(np.vdot(g_unr, v), fd) < 1e-5


def test_modes_return_identical_fits_float32():
  X = jnp.asarray(_datasets()[1], jnp.float32)
  p0 = _init(X, "full")
  results = [gx.fit(X, p0, differentiation=m, tol=1e-3)
             for m in ("implicit", "none", "unrolled")]
  # "implicit" and "none" run one program eagerly: bit for bit. "unrolled"
  # is another program (a masked scan), which XLA may round differently:
  # EM contracts, so that stays within a few float32 eps of the fit.
  for other, exact in zip(results[1:], (True, False)):
    assert int(other.n_iter) == int(results[0].n_iter)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(other),
                    strict=True):
      if exact:
        np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float),
                                   rtol=1e-5, atol=1e-6)
  assert results[0].params.means.dtype == jnp.float32
  assert 1 < int(results[0].n_iter) < 100


def _em_jacobian(X, params, reg):
  """Dense Jacobian of one EM step in the minimal coordinates."""
  ctype = params.covariance_type
  theta = implicit.theta_from_params(params)
  flat, unravel = jax.flatten_util.ravel_pytree(theta)

  def step(v):
    p = implicit.params_from_theta(unravel(v), ctype)
    new, _ = fit_lib.em_step(X, p, sample_weight=None, reg_covar=reg)
    return jax.flatten_util.ravel_pytree(implicit.theta_from_params(new))[0]

  return flat, unravel, step, jax.jit(jax.jacfwd(step))(flat)


def test_fixed_point_system_is_nonsingular_and_krylov_matches_dense(x64):
  X = jnp.asarray(_datasets()[1])
  res = gx.fit(X, _init(X, "full"), tol=0.0, max_iter=MAX_ITER,
               reg_covar=REG)
  flat, unravel, step, J = _em_jacobian(X, res.params, REG)
  np.testing.assert_allclose(jax.jit(step)(flat), flat, atol=1e-12)
  eig = np.abs(np.linalg.eigvals(np.asarray(J)))
  assert eig.max() < 1.0  # EM contracts: I - J is non-singular
  assert eig.max() > 0.5  # and the clusters really overlap
  sv = np.linalg.svd(np.eye(J.shape[0]) - np.asarray(J), compute_uv=False)
  assert sv.min() > 1e-3
  # Tangent of the fixed point w.r.t. X along v: Krylov vs dense solve.
  v = jnp.asarray(np.random.default_rng(9).normal(size=X.shape))

  def step_inputs(theta, X):
    p = implicit.params_from_theta(theta, "full")
    new, _ = fit_lib.em_step(X, p, sample_weight=None, reg_covar=REG)
    return implicit.theta_from_params(new)

  theta = unravel(flat)
  rhs = jax.jit(lambda theta, X, v: jax.jvp(
      lambda X: step_inputs(theta, X), (X,), (v,))[1])(theta, X, v)
  rhs_flat = jax.flatten_util.ravel_pytree(rhs)[0]
  dense = np.linalg.solve(np.eye(J.shape[0]) - np.asarray(J), rhs_flat)
  for method in ("gmres", "bicgstab", "dense"):
    t = jax.jit(functools.partial(
        implicit.fixed_point_jvp, step_inputs,
        solver=implicit.ImplicitSolver(method=method)))(theta, X, v)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(t)[0], dense,
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_fisher_identity(x64, weighted):
  X = jnp.asarray(_datasets()[1])
  w = (jnp.asarray(np.random.default_rng(10).uniform(0.5, 1.5, N))
       if weighted else None)
  params = _init(X, "full")
  theta = implicit.theta_from_params(params)

  def ll(theta, X):
    return gx.log_likelihood(implicit.params_from_theta(theta, "full"), X, sample_weight=w)

  log_resp = jax.lax.stop_gradient(gx.e_step(params, X, sample_weight=w)[0])

  def q(theta, X):
    return em_lib.Q(implicit.params_from_theta(theta, "full"), X, log_resp, sample_weight=w)

  g_ll = jax.jit(jax.grad(ll, argnums=(0, 1)))(theta, X)
  g_q = jax.jit(jax.grad(q, argnums=(0, 1)))(theta, X)
  for a, b in zip(jax.tree.leaves(g_ll), jax.tree.leaves(g_q), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
  # And Q + entropy of the responsibilities is the log-likelihood.
  r = np.exp(np.asarray(log_resp))
  ent = -np.sum(r * np.asarray(log_resp), axis=1)
  ent = ent.mean() if w is None else np.sum(w * ent) / np.sum(w)
  np.testing.assert_allclose(q(theta, X) + ent, ll(theta, X), rtol=1e-12)


def test_dense_solve_against_numpy(x64):
  """The dense implicit solve's elimination (no LAPACK): NumPy's solution
  to rounding, on systems that need row exchanges (a zero and a tiny
  leading pivot) and on an ill-conditioned one."""
  del x64
  from gmmjax._src.implicit import gauss_jordan_solve
  rng = np.random.default_rng(0)
  solve = jax.jit(gauss_jordan_solve)
  for n in (1, 2, 7, 40):
    a = rng.normal(size=(n, n))
    b = rng.normal(size=n)
    if n > 2:
      # A zero leading pivot and a tiny diagonal entry: without row
      # exchanges this fails (checked by removing the pivot search).
      a[0, 0] = 0.0
      a[1:, 1] = 0.0
      a[1, 1] = 1e-14
      a[2, 1] = 1.0
    np.testing.assert_allclose(solve(a, b), np.linalg.solve(a, b),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(solve(a.T, b), np.linalg.solve(a.T, b),
                               rtol=1e-9, atol=1e-12)
  hilbert = 1.0 / (np.arange(6)[:, None] + np.arange(6)[None, :] + 1.0)
  x = rng.normal(size=6)
  np.testing.assert_allclose(solve(hilbert, hilbert @ x), x, rtol=1e-5)


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("method", ["dense", "gmres"])
def test_fixed_point_and_aux_tangents_of_an_affine_step(x64, forward,
                                                         method):
  """A contraction ``theta -> M theta + B a`` (a pytree theta) with two
  objectives that are not stationary at the fixed point (one float32):
  tangents of the fixed point and the objectives, forward and reverse, as
  the closed form gives them, whichever way the Jacobian is formed."""
  rng = np.random.default_rng(7)
  M = jnp.asarray(0.3 * rng.normal(size=(3, 3)))
  B = jnp.asarray(rng.normal(size=(3, 2)))
  c, e = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=2))
  solver = implicit.ImplicitSolver(method=method, tol=1e-12)
  flat = lambda th: jnp.concatenate([th["u"], th["v"][None]])
  tree = lambda z: {"u": z[:2], "v": z[2]}

  def step(th, a):
    return tree(M @ flat(th) + B @ a)

  def aux(th, a):
    value = c @ flat(th) + e @ a + 0.5 * a @ a
    return value, (2.0 * value).astype(jnp.float32)

  @jax.custom_jvp
  def fitted(a):
    th = tree(jnp.linalg.solve(jnp.eye(3) - M, B @ a))
    return th, aux(th, a)

  @fitted.defjvp
  def _(primals, tangents):
    out = fitted(primals[0])
    d_th, d_aux = implicit.fixed_point_and_aux_jvp(
        lambda th, a: (step(th, a), aux(th, a)), out[0], primals[0],
        tangents[0], solver=solver, forward_jacobian=forward)
    return out, (d_th, d_aux)

  a = jnp.asarray(rng.normal(size=2))
  v = jnp.asarray(rng.normal(size=2))
  resolvent = jnp.linalg.inv(jnp.eye(3) - M)  # the reference's closed form
  (th, (obj, obj32)), (d_th, (d_obj, d_obj32)) = jax.jvp(fitted, (a,), (v,))
  np.testing.assert_allclose(flat(d_th), resolvent @ B @ v, rtol=1e-9)
  grad_obj = B.T @ resolvent.T @ c + e + a
  np.testing.assert_allclose(d_obj, grad_obj @ v, rtol=1e-9)
  assert d_obj32.dtype == jnp.float32
  np.testing.assert_allclose(d_obj32, 2 * grad_obj @ v, rtol=1e-5)
  loss = lambda a: fitted(a)[1][0] + jnp.sum(fitted(a)[0]["u"] ** 2)
  u = (resolvent @ B @ a)[:2]
  expected = grad_obj + 2 * (resolvent @ B)[:2].T @ u
  np.testing.assert_allclose(jax.grad(loss)(a), expected, rtol=1e-9)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(a), expected,
                             rtol=1e-9)

def test_fixed_point_jvp_refuses_tangents_of_another_structure():
  """The tangents must have the inputs' tree structure, as ``jax.jvp``
  requires; the same number of leaves in another tree is not enough."""
  step = lambda x, inp: 0.5 * x + inp["a"] * inp["b"]  # noqa: E731
  inputs = {"a": jnp.array(1.0), "b": jnp.array(2.0)}
  t = gx.fixed_point_jvp(step, jnp.array(4.0), inputs,
                         {"a": jnp.array(1.0), "b": jnp.array(0.0)})
  np.testing.assert_allclose(float(t), 4.0)  # x = 2 a b: dx = 2 b da
  with pytest.raises((ValueError, TypeError)):
    gx.fixed_point_jvp(step, jnp.array(4.0), inputs,
                       [jnp.array(1.0), jnp.array(0.0)])
