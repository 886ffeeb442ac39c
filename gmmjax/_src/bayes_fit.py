"""Fitting Bayesian mixtures: :func:`fit_bayes` (the driver of engine.py
with :class:`~gmmjax._src.variational.VariationalStep`), differentiable at
the fixed point, and :func:`fit_bayes_restarts` (initialisations and fits
of ``n_init`` restarts as one vmapped program)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import batching, checks, compiling, engine
from gmmjax._src import bayes_params as bp
from gmmjax._src import covariance as cov_lib
from gmmjax._src import implicit as implicit_lib
from gmmjax._src import init as init_lib
from gmmjax._src import variational as vb
from gmmjax._src.fit import DIFFERENTIATION_MODES
from gmmjax._src.restarts import best_and_all
from gmmjax._src.results import FitResult, error_if_bad, history_length


def _variational_fit_impl(X, post, sample_weight, tol, reg_covar, prev,
                          prior, max_iter, history_len: int,
                          callback: Callable | None, mask=None,
                          structure=None, init_stats=None):
  """The variational loop; ``init_stats``: ``(mixture, stats)`` of an
  initialisation (:func:`init.init_stats`), whose M-step, the loop's first
  pass, makes the initial posterior (``post`` is then a placeholder of
  its shapes)."""
  problem = engine.Problem(X, sample_weight, tol, reg_covar, prior, mask,
                           structure=structure)
  state = None
  if init_stats is not None:
    mixture, stats = init_stats
    state = vb.VBState(post, mixture, stats,
                       jnp.full((vb.WINDOW,), -jnp.inf, X.dtype))
  step = vb.VariationalStep(steps_first=init_stats is not None)
  result, _ = engine.run(step, post, problem, prev_ll=prev,
                         max_iter=max_iter, history_len=history_len,
                         callback=callback, state=state)
  return result


_variational_fit_programs = compiling.jit_by_size(
    _variational_fit_impl, static_argnames=("history_len", "callback"))


_variational_fit = compiling.call_for_size(_variational_fit_programs)


class _Theta(NamedTuple):
  """The posterior's coordinates at the fixed point (factors derived)."""
  weight_concentration: jax.Array
  mean_precision: jax.Array
  means: jax.Array
  degrees_of_freedom: jax.Array
  covariances: jax.Array


def _post_from_theta(theta: _Theta, like: bp.BayesParams) -> bp.BayesParams:
  pc = cov_lib.precision_cholesky_given(
      theta.covariances, like.precisions_cholesky, like.covariance_type)
  return bp.BayesParams(*theta, pc, like.covariance_type,
                        like.weight_concentration_prior_type)


class _VariationalFixedPoint(NamedTuple):
  """Variational EM at its fixed point: ``implicit.fit_at_fixed_point``'s
  rule for :func:`fit_bayes` (args ``(X, posterior, sample_weight, tol,
  reg_covar, prev, prior, max_iter)``)."""
  history_len: int
  callback: Callable | None
  empty_ok = True  # the prior empties the components the data do not need

  def run(self, X, post, w, tol, reg_covar, prev, prior, max_iter):
    return _variational_fit(X, post, w, tol, reg_covar, prev, prior, max_iter,
                history_len=self.history_len, callback=self.callback)

  def theta(self, post: bp.BayesParams) -> _Theta:
    return _Theta(post.weight_concentration, post.mean_precision, post.means,
                  post.degrees_of_freedom, post.covariances)

  def step(self, theta, inputs, fixed, args):
    del args
    x, w, reg, pri = inputs
    post = self.params(theta, fixed)
    mix, stats = vb.variational_stats(post, x, w)
    new, _ = bp.posterior_and_jitter_from_stats(
        stats, lax.stop_gradient(post.means), pri,
        covariance_type=post.covariance_type,
        prior_type=post.weight_concentration_prior_type, reg_covar=reg)
    # The lower bound of ``post`` from the same E-step: returned and
    # recorded alike.
    bound = vb.responsibility_entropy(mix, stats) + vb.bound_terms(post)
    return self.theta(new), (bound, bound)

  def params(self, theta, fixed):
    return _post_from_theta(theta, fixed)


def _as_posterior(post: bp.BayesParams, X) -> bp.BayesParams:
  if not isinstance(post, bp.BayesParams):
    raise TypeError(f"posterior should be a BayesParams, got {type(post)}.")
  if post.means.ndim != 2:
    raise ValueError(f"posterior.means should have shape (n_components, "
                     f"n_features), got {post.means.shape}; for a batch of "
                     f"posteriors use jax.vmap.")
  if post.means.shape[1] != X.shape[1]:
    raise ValueError(f"X has {X.shape[1]} features, but the posterior has "
                     f"{post.means.shape[1]}.")
  bp.check_prior_type(post.weight_concentration_prior_type)
  return jax.tree.map(lambda a: jnp.asarray(a, X.dtype), post)


def _as_prior(prior: bp.BayesPrior, dtype) -> bp.BayesPrior:
  if not isinstance(prior, bp.BayesPrior):
    raise TypeError(f"prior should be a BayesPrior (gx.make_bayes_prior), "
                    f"got {type(prior)}.")
  return bp.BayesPrior(*(jnp.asarray(a, dtype) for a in prior))


def fit_bayes(X, posterior: bp.BayesParams, prior: bp.BayesPrior, *,
              sample_weight=None, max_iter: int = 100, tol=1e-3,
              reg_covar=1e-6, prev_lower_bound=-jnp.inf,
              callback: Callable | None = None,
              differentiation: str = "implicit",
              solver: implicit_lib.ImplicitSolver | None = None,
              throw: bool = False, nan_gradients: bool = False
              ) -> FitResult:
  """Fits a Bayesian Gaussian mixture by variational EM from a posterior.

  scikit-learn's ``BayesianGaussianMixture`` iteration on the spine: the
  variational E-step (:func:`variational_mixture`'s E-step) and M-step
  (posterior hyper-parameters from the statistics), one compiled
  ``lax.while_loop`` until the lower bound changes by less than ``tol``
  (not divided by the sample count, as in scikit-learn) or ``max_iter``.
  Works under ``jit`` and ``vmap``; ``jax.grad``/``jax.jvp`` with respect to
  ``X``, ``sample_weight``, ``reg_covar`` and ``prior`` by implicit
  differentiation at the converged fixed point (``differentiation``:
  ``"implicit"`` or ``"none"``).

  Args:
    X: ``(N, D)`` samples.
    posterior: the initial :class:`BayesParams` (e.g.
      :func:`posterior_from_resp`, or a previous fit's).
    prior: a :class:`BayesPrior` (:func:`make_bayes_prior`).
    sample_weight: optional ``(N,)`` non-negative weights (weighted counts
      and sums; zero rows change nothing).
    max_iter, tol, reg_covar, callback: as in :func:`gmmjax.fit`.
    prev_lower_bound: the bound the first change is measured from.
    differentiation: ``"implicit"`` or ``"none"``.
    solver: :class:`ImplicitSolver` settings.
    throw, nan_gradients: as in :func:`gmmjax.fit`: a fit that failed or
      did not converge raises a :class:`FitError`, or its implicit
      derivatives are NaN (empty components are the prior's doing, not a
      failure).

  Returns:
    A :class:`FitResult` whose ``params`` is the :class:`BayesParams`
    posterior, ``history`` the lower bounds (``lower_bound`` is
    scikit-learn's ``lower_bound_``) and ``log_likelihood`` the lower
    bound of the returned posterior with its own responsibilities.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> prior = gx.make_bayes_prior(X, 3, covariance_type="diag")
    >>> resp = jax.nn.softmax(jax.random.normal(jax.random.key(1), (200, 3)))
    >>> post0 = gx.posterior_from_resp(X, resp, prior,
    ...                                covariance_type="diag")
    >>> result = gx.fit_bayes(X, post0, prior)
    >>> result.params.weight_concentration.shape
    (2, 3)
  """
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  X = checks.as_data(X)
  post = _as_posterior(posterior, X)
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  prior = _as_prior(prior, X.dtype)
  max_iter = engine.check_max_iter(max_iter)
  if differentiation not in ("implicit", "none"):
    raise ValueError(f"differentiation should be 'implicit' or 'none' for "
                     f"fit_bayes, got {differentiation!r} (modes of "
                     f"gx.fit: {list(DIFFERENTIATION_MODES)}).")
  result = fit_bayes_checked(X, post, w, tol, reg_covar, prev_lower_bound,
                             prior, np.int32(max_iter),
                             history_length(max_iter), callback=callback,
                             differentiation=differentiation, solver=solver,
                             nan_gradients=nan_gradients)
  if throw:
    return error_if_bad(result, "gmmjax.fit_bayes", degenerate=False)
  return result


def fit_bayes_checked(X, post, w, tol, reg_covar, prev, prior, max_iter,
                      history_len: int, *, callback=None,
                      differentiation="implicit", solver=None,
                      nan_gradients: bool = False) -> FitResult:
  """:func:`fit_bayes` on checked arguments (``max_iter`` may be traced)."""
  tol = jnp.asarray(tol, X.dtype)
  reg_covar = jnp.asarray(reg_covar, X.dtype)
  prev = jnp.asarray(prev, X.dtype)
  args = (X, post, w, tol, reg_covar, prev, prior, max_iter)
  if differentiation == "implicit" and any(
      isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
    return implicit_lib.fit_at_fixed_point(
        _VariationalFixedPoint(history_len, callback),
        implicit_lib.ImplicitSolver() if solver is None else solver,
        bool(nan_gradients), *args)
  if differentiation == "none":
    args = lax.stop_gradient(args[:7]) + (max_iter,)
  return _variational_fit(*args, history_len=history_len, callback=callback)


def _variational_init_and_fit(key, X, sample_weight, tol, reg_covar,
                              max_iter, prior, n_active=None, structure=None,
                              *, n_components,
                              n_init, covariance_type, prior_type, method,
                              history_len, callback):
  """Initialisations and fits of every restart: one program (restart ``i``
  draws with ``split(key, n_init)[i]``; one restart is unbatched). With
  ``n_active`` (traced), ``n_components`` slots of which the first
  ``n_active`` are fitted: every component count up to ``n_components``
  shares the program. With ``structure`` (traced, with ``n_active``, full
  type and a ``(D, D)`` covariance prior): the posterior of a model of
  that ``type_switch.CODES`` type, as full matrices (the program the four
  types share)."""
  keys = jax.random.split(key, n_init)
  mask = (None if n_active is None
          else jnp.arange(n_components) < n_active)

  # The draw reaches the loop as statistics, whose first pass makes the
  # initial posterior with the loop's own M-step (one M-step compiled, not
  # two; see restarts._init_and_fit). The posterior carried in until then
  # is a placeholder of the right shapes.
  def init(k):
    mixture, stats = init_lib.init_stats(k, X, sample_weight, n_components,
                                         covariance_type, method, mask=mask)
    shapes = jax.eval_shape(
        lambda: bp.posterior_and_jitter_from_stats(
            stats, mixture.means, prior, covariance_type=covariance_type,
            prior_type=prior_type, reg_covar=reg_covar, mask=mask,
            structure=structure)[0])
    post = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), shapes)
    return post, mixture, stats

  def fit_one(post, mixture, stats):
    return _variational_fit_impl(X, post, sample_weight, tol, reg_covar,
                     jnp.asarray(-jnp.inf, X.dtype), prior, max_iter,
                     history_len, callback, mask, structure,
                     (mixture, stats))

  if n_init == 1:
    return fit_one(*init(keys[0]))
  posts = batching.map_members(
      init, keys, member_bytes=X.shape[0] * n_components * X.dtype.itemsize)
  return jax.vmap(fit_one)(*posts)


_variational_init_and_fit_programs = compiling.jit_by_size(
    _variational_init_and_fit, static_argnames=("n_components", "n_init",
                                    "covariance_type", "prior_type",
                                    "method", "history_len", "callback"))


def bayes_restart_results(key, X, n_components: int, *, n_init: int,
                          covariance_type: str, prior_type: str, method: str,
                          max_iter: int, tol, reg_covar, sample_weight,
                          prior: bp.BayesPrior, callback,
                          n_active: int | None = None,
                          structure: int | None = None) -> FitResult:
  """Every restart's result (batched; unbatched for one restart), on
  checked arguments: initialisation and fit as one compiled program. With
  ``n_active``, ``n_components`` is a number of component slots of which
  the first ``n_active`` are fitted (the others stay empty, with the
  prior's posterior; ``padding.unpad_components`` drops them).
  ``structure`` (with ``n_active``, ``covariance_type="full"`` and the
  prior's covariance as a ``(D, D)`` matrix): a ``type_switch.CODES``
  value, the posterior of a model of that type as full matrices
  (``type_switch.params_from_full`` converts it)."""
  if structure is not None and (n_active is None
                                or covariance_type != "full"):
    raise ValueError("structure needs n_active and covariance_type='full'.")
  program = compiling.pick(_variational_init_and_fit_programs, X.shape[0],
                           n_components, X.shape[1], batch=n_init)
  return program(key, X, sample_weight, checks.as_scalar(tol, X.dtype),
                 checks.as_scalar(reg_covar, X.dtype), np.int32(max_iter),
                 prior, None if n_active is None else np.int32(n_active),
                 None if structure is None else np.int32(structure),
                 n_components=n_components, n_init=n_init,
                 covariance_type=covariance_type, prior_type=prior_type,
                 method=method, history_len=history_length(max_iter),
                 callback=callback)


def fit_bayes_restarts(key, X, n_components: int, *, n_init: int = 1,
                       covariance_type: str = "full",
                       weight_concentration_prior_type: str =
                       "dirichlet_process", method: str = "k-means++",
                       prior: bp.BayesPrior | None = None,
                       max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                       sample_weight=None, callback: Callable | None = None,
                       throw: bool = False):
  """``n_init`` variational fits from different initialisations, vmapped.

  Key first, as every drawing function. Returns ``(best, results)``: the
  restart with the highest final lower bound and all of them (a leading
  restart axis), as :func:`gmmjax.fit_restarts` does.

  Args:
    key: a ``jax.random.key`` or legacy ``PRNGKey``.
    X: ``(N, D)`` samples.
    n_components: ``K`` (the Dirichlet process prunes unneeded ones).
    n_init: restarts, fitted together in one program.
    covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    weight_concentration_prior_type: ``"dirichlet_process"`` or
      ``"dirichlet_distribution"``.
    method: as in :func:`gmmjax.init_params` (scikit-learn's
      ``init_params`` names; ``"k-means++"`` by default, as every function
      that initialises; ``BayesianGaussianMixture`` keeps scikit-learn's
      ``"kmeans"``).
    prior: a :class:`BayesPrior`; ``None`` for :func:`make_bayes_prior`'s
      defaults.
    max_iter, tol, reg_covar, sample_weight, callback, throw: as in
      :func:`fit_bayes` (``throw`` checks the best restart).

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> best, results = gx.fit_bayes_restarts(
    ...     jax.random.key(1), X, 3, n_init=2, covariance_type="diag",
    ...     method="random_from_data")
    >>> results.n_iter.shape, best.params.means.shape
    ((2,), (3, 2))
  """
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  init_lib.check_init_args(X, n_components, covariance_type, method)
  bp.check_prior_type(weight_concentration_prior_type)
  X = checks.as_data(X)
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  if not isinstance(n_init, int) or isinstance(n_init, bool) or n_init < 1:
    raise ValueError(f"n_init should be a positive int, got {n_init!r}.")
  max_iter = engine.check_max_iter(max_iter)
  prior = (bp.make_bayes_prior(X, n_components,
                               covariance_type=covariance_type,
                               sample_weight=w)
           if prior is None else _as_prior(prior, X.dtype))
  results = bayes_restart_results(
      key, X, n_components, n_init=n_init, covariance_type=covariance_type,
      prior_type=weight_concentration_prior_type, method=method,
      max_iter=max_iter, tol=tol, reg_covar=reg_covar, sample_weight=w,
      prior=prior, callback=callback)
  return best_and_all(results, n_init, "gmmjax.fit_bayes_restarts", throw,
                      degenerate=False)
