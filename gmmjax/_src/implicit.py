"""Implicit differentiation at a fixed point: a dense or a Krylov solve.

A converged EM fit satisfies ``theta* = T(theta*, inputs)`` where ``T`` is
one EM step and ``inputs`` are the data, sample weights, ``reg_covar`` and
prior hyper-parameters. Differentiating both sides gives the tangent
equation::

  (I - dT/dtheta) t = dT/dinputs . dinputs

It is solved with ``lax.custom_linear_solve``: up to ``DENSE_MAX_UNKNOWNS``
unknowns with the matrix ``I - dT/dtheta`` formed once and Gauss-Jordan
elimination, beyond by a matrix-free Krylov method (BiCGSTAB by default, or
GMRES), for both the solve and its transpose, so the rule is a
``custom_jvp`` that forward mode uses directly and reverse mode transposes:
``jax.jvp``, ``jax.grad`` and ``jax.vjp`` all work, under ``jit`` and
``vmap``. Iterating ``t <- J t + b`` instead would need ``~1 / (1 - rho)``
matrix products, hundreds when clusters overlap and the EM map's spectral
radius ``rho`` is close to 1; a Krylov method needs far fewer.

The fixed point is defined on a minimal parameterisation, ``theta =
(weights, means, covariances)`` (the precision factors are derived). The
weights live on the simplex and full covariances are symmetric; ``T``'s
outputs always are, so in the ambient coordinates ``dT/dtheta`` is block
triangular with a zero block on the off-simplex and antisymmetric
directions: ``I - dT/dtheta`` has eigenvalue 1 there and is non-singular
exactly when EM's own Jacobian on the constrained manifold has no eigenvalue
1 (a strict local maximum of the likelihood). Right-hand sides from ``T``
lie in the constrained directions, and so do the solutions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.sparse import linalg as sparse_linalg

from gmmjax._src import cholesky as cholesky_lib
from gmmjax._src import covariance as cov_ops
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams
from gmmjax._src.results import FitResult

# A fit's dense solve forms the EM step's Jacobian by forward passes up to
# this many features (the step's matrices unrolled), by a batched backward
# pass beyond (cholesky.UNROLLED_MAX_DIM).
FORWARD_JACOBIAN_MAX_DIM = cholesky_lib.UNROLLED_MAX_DIM

# "auto" forms the matrix up to this many unknowns (K * (1 + D + D^2) for
# full covariances: K=8 in 10 dimensions), a Krylov method beyond.
DENSE_MAX_UNKNOWNS = 1024


class ImplicitSolver(NamedTuple):
  """Settings of the linear solve in implicit differentiation.

  Static (a program is compiled for them), except ``tol``, which may be a
  traced value.

  Attributes:
    method: ``"auto"`` (default: ``"dense"`` up to
      ``DENSE_MAX_UNKNOWNS`` = 1024 unknowns, ``"bicgstab"`` beyond),
      ``"dense"`` (the matrix ``I - J`` formed and solved by Gauss-Jordan
      elimination with partial pivoting: exact to
      rounding, a smaller program to compile), ``"bicgstab"`` or
      ``"gmres"`` (matrix-free Krylov methods). At a strict local
      maximum the EM Jacobian ``J = I - I_complete^-1 I_observed`` has real
      eigenvalues in ``[0, 1)``, so ``I - J`` (and its transpose) has a real
      positive spectrum, where BiCGSTAB converges well; it compiles to a
      smaller program than GMRES. GMRES (monotone residual) is the fallback.
    tol: relative residual tolerance; ``None`` picks ``1e-10`` in float64 and
      ``1e-5`` in float32.
    restart: GMRES Krylov subspace size before a restart (capped at the
      number of unknowns).
    maxiter: maximum outer iterations (GMRES restarts; BiCGSTAB steps);
      ``None`` is 20 for GMRES and 1000 for BiCGSTAB.
  """

  method: str = "auto"
  tol: float | None = None
  restart: int = 40
  maxiter: int | None = None


class Theta(NamedTuple):
  """Minimal parameterisation of a mixture: the fixed point's coordinates."""

  weights: jax.Array  # (K,)
  means: jax.Array  # (K, D)
  covariances: jax.Array  # scikit-learn's shape for the type


def theta_from_params(params: GMMParams) -> Theta:
  """The minimal coordinates of ``params`` (drops the precision factors)."""
  return Theta(params.weights, params.means, params.covariances)


def params_from_theta(theta: Theta, covariance_type: str,
                      precisions_cholesky=None) -> GMMParams:
  """:class:`GMMParams` from minimal coordinates.

  The precision factors are computed from the covariances, or, given
  ``precisions_cholesky`` (the factors of ``theta``'s own covariances, e.g.
  a fit's result), taken as they are with the derivative of the
  factorisation (``covariance.precision_cholesky_given``):
  a fit's covariances may carry the M-step's jitter, and factorising them
  again can fail by rounding.
  """
  if precisions_cholesky is None:
    prec_chol = cov_ops.precision_cholesky(theta.covariances,
                                           covariance_type)
  else:
    prec_chol = cov_ops.precision_cholesky_given(
        theta.covariances, precisions_cholesky, covariance_type)
  return GMMParams(theta.weights, theta.means, theta.covariances, prec_chol,
                   covariance_type)


def _tree_size(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _method(solver: ImplicitSolver, size: int) -> str:
  if solver.method == "auto":
    return "dense" if size <= DENSE_MAX_UNKNOWNS else "bicgstab"
  return solver.method


def krylov_solve(solver: ImplicitSolver, dtype, size: int):
  """A ``solve(matvec, b)`` function for ``lax.custom_linear_solve``, for
  the Krylov methods (the dense one is :func:`fixed_point_and_aux_jvp`'s
  own)."""
  tol = solver.tol
  if tol is None:
    tol = 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5
  method = _method(solver, size)
  if method == "gmres":
    restart = max(1, min(solver.restart, size))
    maxiter = 20 if solver.maxiter is None else solver.maxiter

    def solve(matvec, b):
      return sparse_linalg.gmres(matvec, b, tol=tol, restart=restart,
                                 maxiter=maxiter)[0]
  elif method == "bicgstab":
    maxiter = 1000 if solver.maxiter is None else solver.maxiter

    def solve(matvec, b):
      return sparse_linalg.bicgstab(matvec, b, tol=tol, maxiter=maxiter)[0]
  else:
    raise ValueError(f"Unknown implicit solver method {solver.method!r}; "
                     "use 'auto', 'dense', 'gmres' or 'bicgstab'.")
  return solve


def gauss_jordan_solve(a, b):
  """``a^-1 b`` for a square ``a`` and a vector ``b``, by Gauss-Jordan
  elimination with partial pivoting in one loop of array operations.

  ``jnp.linalg.solve`` would call LAPACK, whose first use in a process
  imports SciPy's (0.34 s on CPU, compilation cache or not): a quarter of
  what compiling a gradient through a fit costs with the cache warm. For
  the few hundred unknowns of the dense implicit solve the loop costs
  nothing that shows; one loop (no back substitution) is fewer kernels to
  compile than elimination and substitution. Not differentiated
  (``lax.custom_linear_solve`` differentiates the solve by solving again).
  """
  n = a.shape[0]
  rows = jnp.arange(n)

  def eliminate(k, carry):
    a, b = carry
    pivot = jnp.argmax(jnp.where(rows >= k, jnp.abs(a[:, k]), -1))
    swap = jnp.where(rows == k, pivot, jnp.where(rows == pivot, k, rows))
    a, b = a[swap], b[swap]
    # Row k divided by its pivot, then removed from every other row.
    is_k, pivot_value = rows == k, a[k, k]
    a = jnp.where(is_k[:, None], a / pivot_value, a)
    b = jnp.where(is_k, b / pivot_value, b)
    factors = jnp.where(rows == k, 0, a[:, k])
    return a - factors[:, None] * a[k], b - factors * b[k]

  return lax.fori_loop(0, n, eliminate, (a, b))[1]


def fixed_point_jvp(step, theta, inputs, d_inputs, *,
                    solver: ImplicitSolver | None = None):
  """Tangent ``t`` of the fixed point ``theta = step(theta, inputs)``.

  Solves ``(I - d step / d theta) t = d step / d inputs . d_inputs``: with
  the default solver up to ``DENSE_MAX_UNKNOWNS`` unknowns by forming the
  matrix once (from the primal values), beyond matrix-free by a Krylov
  method. Linear in ``d_inputs`` and transposable (the transposed system
  is solved the same way), so it can sit inside a ``custom_jvp`` rule that
  reverse mode differentiates.

  Args:
    step: ``step(theta, inputs) -> theta``, e.g. one EM iteration.
    theta: the fixed point (a pytree).
    inputs: pytree of the inputs the fixed point depends on.
    d_inputs: their tangents (same structure).
    solver: :class:`ImplicitSolver` settings (``None``: the defaults).

  Returns:
    The tangent of ``theta``, a pytree like ``theta``.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> step = lambda x, a: 0.5 * x + a  # fixed point x = 2 a
    >>> t = gx.fixed_point_jvp(step, jnp.array(2.0), jnp.array(1.0),
    ...                        jnp.array(1.0))
    >>> round(float(t), 6)
    2.0
  """
  return fixed_point_and_aux_jvp(lambda th, inp: (step(th, inp), ()), theta,
                                 inputs, d_inputs, solver=solver)[0]


def fixed_point_and_aux_jvp(step, theta, inputs, d_inputs, *,
                            solver: ImplicitSolver | None = None,
                            forward_jacobian: bool = False):
  """:func:`fixed_point_jvp` for ``step(theta, inputs) -> (theta, aux)``,
  plus the total tangent of ``aux`` (e.g. the objective at ``theta``).

  The step is linearised once, in ``theta`` and the inputs together: the
  right-hand side, the matrix of the solve and ``aux``'s tangent share one
  trace of the step, and reverse mode one backward pass for the inputs.
  The dense solve forms the step's Jacobian in ``theta`` from the primal
  values, by one batched backward pass, or with ``forward_jacobian`` by
  forward passes (fewer kernels to compile; faster where the step's
  matrices are small and unrolled, slower where they are LAPACK calls).

  Returns:
    ``(d_theta, d_aux)``.
  """
  leaves, tree = jax.tree.flatten(inputs)
  d_leaves = tree.flatten_up_to(d_inputs)  # raises on another structure
  # Only floating inputs have tangents (integers carry float0).
  moving = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
  floats = [x for x, m in zip(leaves, moving) if m]
  d_floats = [t for t, m in zip(d_leaves, moving) if m]

  def flat_step(th, fl):
    it = iter(fl)
    return step(th, jax.tree.unflatten(
        tree, [next(it) if m else x for x, m in zip(leaves, moving)]))

  _, lin = jax.linearize(flat_step, theta, floats)
  # The inputs' part of both tangents from one call: reverse mode
  # transposes it into one backward pass through the step.
  rhs, aux_inputs = lin(jax.tree.map(jnp.zeros_like, theta), d_floats)
  # Reverse mode transposes the solve, which needs every leaf of the
  # right-hand side to be linear in the input tangents; a leaf the tangents
  # do not reach (e.g. the weights, when only a covariance hyper-parameter is
  # differentiated) would be a known zero. Tie each leaf to the tangents.
  if d_floats:
    tie = 0.0 * sum(jnp.sum(x) for x in d_floats)
    rhs = jax.tree.map(lambda r: r + tie.astype(r.dtype), rhs)
  no_inputs = [jnp.zeros_like(x) for x in floats]

  def matvec(t):
    return jax.tree.map(jnp.subtract, t, lin(t, no_inputs)[0])

  if solver is None:
    solver = ImplicitSolver()
  size = _tree_size(theta)
  if _method(solver, size) != "dense":
    solve = krylov_solve(solver, jax.tree.leaves(theta)[0].dtype, size)
    d_theta = lax.custom_linear_solve(matvec, rhs, solve=solve,
                                      transpose_solve=solve)
    return d_theta, lin(d_theta, d_floats)[1]
  ravel = lambda t: jax.flatten_util.ravel_pytree(t)[0]
  flat, unravel = jax.flatten_util.ravel_pytree(theta)
  flat_aux, unravel_aux = jax.flatten_util.ravel_pytree(aux_inputs)
  eye = jnp.eye(size, dtype=flat.dtype)
  # The Jacobians of the step and of aux in theta, J (n, n) and G (m, n),
  # formed once with the primal values (reverse mode transposes only
  # products with them): reverse mode has no backward pass of the step in
  # theta left to transpose.
  if forward_jacobian:  # n forward passes, one per column
    jac, aux_jac = jax.vmap(
        lambda e: tuple(map(ravel, lin(unravel(e), no_inputs))),
        out_axes=1)(eye)
  else:  # one batched backward pass, one row per output entry
    transposed = jax.linear_transpose(lambda t: lin(t, no_inputs), theta)
    rows = jax.vmap(lambda ct: ravel(transposed((
        unravel(ct[:size]),
        unravel_aux(ct[size:].astype(flat_aux.dtype))))[0]))(
            jnp.eye(size + flat_aux.size, dtype=flat.dtype))
    jac, aux_jac = rows[:size], rows[size:]
  a = eye - jac
  d_theta = lax.custom_linear_solve(
      lambda t: unravel(mm.matmul(a, ravel(t))), rhs,
      solve=lambda _, b: unravel(gauss_jordan_solve(a, ravel(b))),
      transpose_solve=lambda _, b: unravel(gauss_jordan_solve(a.T,
                                                              ravel(b))))
  # G d_theta as a sum of products (full float32 on GPUs too).
  aux_theta = unravel_aux(jnp.sum(aux_jac * ravel(d_theta), axis=1).astype(
      flat_aux.dtype))
  return d_theta, jax.tree.map(jnp.add, aux_inputs, aux_theta)


# ---------------------------------------------------------------------------
# A fit differentiated at its fixed point.

# Where every fit's arguments hold the inputs the fixed point depends on:
# ``(X, params, sample_weight, tol, reg_covar, prev, prior, max_iter, ...)``.
# The initial params, ``tol`` and ``prev`` do not move the fixed point:
# their tangents are dropped, so gradients with respect to them are zero.
_INPUTS = (0, 2, 4, 6)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def fit_at_fixed_point(rule, solver: ImplicitSolver, nan_gradients: bool,
                       *args) -> FitResult:
  """``rule.run(*args)``, a fit's :class:`FitResult`, whose derivatives are
  taken implicitly at the fixed point it returns.

  ``rule`` (static, hashable) says what the fit iterates:

  - ``run(*args)``: the compiled fit, ``args`` laid out as ``(X, params,
    sample_weight, tol, reg_covar, prev, prior, max_iter, ...)``;
  - ``theta(params)``: the coordinates of the fixed point;
  - ``step(theta, inputs, fixed, args)``: ``(theta', (returned,
    recorded))``: one iteration from ``theta``, and at ``theta`` the
    objective the fit returns (``log_likelihood``) and the one its history
    records (EM with a MAP prior records the prior's term too), with
    ``inputs = (X, sample_weight, reg_covar, prior)`` and ``fixed`` the
    returned params (their derived factors are reused);
  - ``params(theta, fixed)``: the returned params at ``theta``.

  With ``nan_gradients``, the tangents of a fit that failed, did not
  converge or kept a degenerate component are NaN: the implicit derivative
  holds at a fixed point only. A rule whose ``empty_ok`` is true (a
  Bayesian fit, whose prior empties the components the data do not need)
  counts only failure and non-convergence.
  """
  return rule.run(*args)


@fit_at_fixed_point.defjvp
def _fit_at_fixed_point_jvp(rule, solver, nan_gradients, primals, tangents):
  out = fit_at_fixed_point(rule, solver, nan_gradients, *primals)
  # The tangents' program is keyed on what shapes it: not on the progress
  # callback (the forward fit's alone), nor on a solver tolerance that may
  # be traced.
  if "callback" in getattr(rule, "_fields", ()):
    rule = rule._replace(callback=None)
  tol, solver = solver.tol, solver._replace(tol=None)
  tangents_of = (_tangents if _staged(primals) else _fixed_point_tangents)
  d_params, d_obj, d_history = tangents_of(
      rule, solver, nan_gradients, tol, primals, out,
      tuple(tangents[i] for i in _INPUTS))
  zero = lambda x: np.zeros(np.shape(x), dtype=jax.dtypes.float0)
  return out, FitResult(
      params=d_params, log_likelihood=d_obj, n_iter=zero(out.n_iter),
      converged=zero(out.converged), history=d_history,
      failed=zero(out.failed), jitter=jnp.zeros_like(out.jitter),
      n_degenerate=zero(out.n_degenerate))


def _staged(tree) -> bool:
  """Whether ``tree`` holds values being staged into a user's program
  (``jit``): the tangents are inlined there, and a nested ``jit`` would only
  add its partial evaluation (about 25 ms of tracing on 1,000 x 2, K=3).
  By the tracer's type name: where JAX renames it, the nested ``jit`` (the
  same values) runs everywhere. A staged jaxpr that JAX then evaluates
  eagerly (an eager ``jax.grad`` of ``jax.checkpoint(loss)``) runs the
  inlined tangents operation by operation, as before this program."""
  return any(type(x).__name__ == "DynamicJaxprTracer"
             for x in jax.tree.leaves(tree))


def _tangents(rule, solver, nan_gradients, tol, primals, out: FitResult,
              d_inputs):
  """``(d_params, d_log_likelihood, d_history)`` of ``out``, the fit of
  ``primals``, for the tangents ``d_inputs`` of ``primals[i]``, ``i`` in
  :data:`_INPUTS` (``tol``: the solver's, passed apart)."""
  solver = solver._replace(tol=tol)
  fixed = out.params
  inputs = tuple(primals[i] for i in _INPUTS)
  theta = rule.theta(fixed)
  # Forward passes where the step's matrices are unrolled (a gradient's
  # program compiled in 0.84 of the time, and ran faster); a batched
  # backward pass where they are LAPACK calls (benchmarks/README.md).
  means = getattr(fixed, "means", None)
  forward = means is not None and means.shape[-1] <= FORWARD_JACOBIAN_MAX_DIM
  d_theta, (d_obj, d_recorded) = fixed_point_and_aux_jvp(
      lambda th, inp: rule.step(th, inp, fixed, primals), theta, inputs,
      d_inputs, solver=solver, forward_jacobian=forward)
  d_params = jax.jvp(lambda th: rule.params(th, fixed), (theta,),
                     (d_theta,))[1]
  if nan_gradients:
    # A product, not a select: reverse mode transposes it into the
    # cotangents too (a select's constant branch would transpose to 0).
    bad = out.failed | ~out.converged
    if not rule.empty_ok:
      bad = bad | (out.n_degenerate > 0)
    d_params, d_obj, d_recorded = jax.tree.map(
        lambda t: t * jnp.where(bad, jnp.nan, 1.0).astype(t.dtype),
        (d_params, d_obj, d_recorded))
  d_obj = d_obj.astype(out.log_likelihood.dtype)
  # The history's last recorded entry (``lower_bound``) is the recorded
  # objective at the fixed point: it carries that objective's tangent, so
  # that differentiating ``result.lower_bound`` is not silently zero.
  # Earlier entries, from iterates before the fixed point, have none.
  last = jnp.maximum(out.n_iter - 1, 0)
  d_history = jnp.where(
      jnp.arange(out.history.shape[-1]) == last,
      d_recorded.astype(out.history.dtype), jnp.zeros_like(out.history))
  return d_params, d_obj, d_history


# One program for the tangents: differentiated eagerly (``jax.grad(loss)(X)``
# outside any ``jit``, or under ``vmap``), the rule's few hundred operations
# would otherwise be dispatched, and each compiled, one by one, forward and
# transposed (``_staged`` calls :func:`_tangents` inline instead).
_fixed_point_tangents = jax.jit(_tangents, static_argnums=(0, 1, 2))
