"""Several EM fits from different initialisations, as one vmapped program."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import batching, checks, compiling, missing
from gmmjax._src import covariance as cov_ops
from gmmjax._src import init as init_lib
from gmmjax._src.chunks import ChunkOptions
from gmmjax._src.fit import (
    FitResult,
    check_max_iter,
    fit_checked,
    history_length,
)
from gmmjax._src.params import GMMParams
from gmmjax._src.results import error_if_bad


@jax.jit
def best_restart(results: FitResult) -> FitResult:
  """The best of a batch of fits (a leading restart axis): the highest final
  log-likelihood.

  Failed fits rank last; ties go to the first (scikit-learn keeps a later
  restart only if it is strictly better). Works under ``jit``.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (200, 2))
    >>> keys = jax.random.split(jax.random.key(1), 4)
    >>> batch = jax.vmap(lambda k: gx.init_params(k, X, 2))(keys)
    >>> results = jax.vmap(lambda p: gx.fit(X, p))(batch)
    >>> best = gx.best_restart(results)
    >>> bool(best.log_likelihood == results.log_likelihood.max())
    True
  """
  # One compiled program (jit): run eagerly, the comparisons and each
  # leaf's indexing were programs of their own, about 20 small compiles
  # on a first call.
  return take(results, _best_index(results))


def _best_index(results: FitResult) -> jax.Array:
  score = jnp.where(results.failed | ~jnp.isfinite(results.log_likelihood),
                    -jnp.inf, results.log_likelihood)
  return jnp.argmax(score)


def take(tree, index):
  """Element ``index`` of a batched pytree (e.g. one restart's result)."""
  return jax.tree.map(lambda x: x[index], tree)


@functools.partial(jax.jit, static_argnames=(
    "n_components", "n_init", "covariance_type", "method", "rank",
    "chunking"))
def _init_batch(key, X, sample_weight, reg_covar, n_components, n_init,
                covariance_type, method, rank=None, chunking=None):
  keys = jax.random.split(key, n_init)

  def one(k):
    return init_lib.init_params(
        k, X, n_components, covariance_type=covariance_type, method=method,
        reg_covar=reg_covar, sample_weight=sample_weight, rank=rank)

  # Each restart's initialisation holds (N, K) responsibilities and k-means
  # distances: restarts run in blocks (batching.map_members), one at a time
  # on CPU where a restart fills the cache-sized chunks, so that memory
  # does not grow with n_init (32 restarts of 1,000,000 samples, K=64: 8 GB
  # at once).
  return batching.map_members(
      one, keys, member_bytes=X.shape[0] * n_components * X.dtype.itemsize,
      options=chunking)


@jax.jit
def _add_axis(tree):
  return jax.tree.map(lambda a: jnp.expand_dims(a, 0), tree)


def _init_one(key, X, n_components, covariance_type, method, reg_covar,
              sample_weight, rank=None) -> GMMParams:
  """Restart 0 of ``n_init=1``: the first key of ``split(key, 1)``."""
  return init_lib.init_first_of_split(
      key, X, n_components, covariance_type=covariance_type, method=method,
      reg_covar=reg_covar, sample_weight=sample_weight, rank=rank)


def init_restarts(key, X, n_components: int, *, n_init: int = 1,
                  covariance_type: str = "full", method: str = "k-means++",
                  reg_covar=1e-6, sample_weight=None,
                  rank: int | None = None,
                  chunking: ChunkOptions | None = None) -> GMMParams:
  """``n_init`` initial params (a leading batch axis) from ``split(key)``.

  Restart ``i`` is ``init_params(jax.random.split(key, n_init)[i], ...)``.
  One restart runs the unbatched :func:`init_params` program (with the
  split compiled in). ``chunking`` sizes the blocks restarts run in.
  """
  X = init_lib.check_init_args(X, n_components, covariance_type, method)
  checks.check_n_init(n_init)
  if n_init == 1:
    return _add_axis(_init_one(key, X, n_components, covariance_type, method,
                               reg_covar, sample_weight, rank))
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  return _init_batch(key, X, w, jnp.asarray(reg_covar, X.dtype),
                     n_components=n_components, n_init=n_init,
                     covariance_type=covariance_type, method=method,
                     rank=init_lib.check_rank(rank, covariance_type,
                                              X.shape[1]),
                     chunking=chunking)


def fit_restarts(key, X, n_components: int, *, n_init: int = 1,
                 covariance_type: str = "full", method: str = "k-means++",
                 max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                 sample_weight=None,
                 callback: Callable | None = None,
                 rank: int | None = None,
                 chunking: ChunkOptions | None = None, throw: bool = False
                 ) -> tuple[FitResult, FitResult]:
  """``n_init`` initialisations and EM fits, as one compiled program.

  With ``n_init=1`` they are unbatched. The inits and the fits are vmapped in
  blocks: on CPU the fits skip finished restarts and run one at a time once
  a restart's data fill a chunk, and the inits of such restarts run one at
  a time; on accelerators a block holds at most
  ``ChunkOptions.accelerator_block_chunks`` E-step chunks.

  Args:
    key: PRNG key; it is split into ``n_init`` keys, one per restart.
    X: ``(N, D)`` samples.
    n_components: number of components.
    n_init: number of restarts (static).
    covariance_type, method, reg_covar, sample_weight, rank: as in
      :func:`init_params`.
    max_iter, tol, callback, chunking: as in :func:`fit` (``chunking`` also
      sizes the blocks the restarts' initialisations run in).
    throw: raise a :class:`FitError` when the best restart failed, did not
      converge or has degenerate components (as :func:`fit`'s ``throw``).

  Returns:
    ``(best, all_results)``: the best :class:`FitResult` (highest final
    log-likelihood, failed fits last) and every restart's result with a
    leading ``(n_init,)`` axis.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (300, 2))
    >>> best, runs = gx.fit_restarts(jax.random.key(1), X, 3, n_init=4,
    ...                              covariance_type="diag")
    >>> runs.log_likelihood.shape, bool(best.log_likelihood >= runs.log_likelihood.max())
    ((4,), True)
  """
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  results = restart_results(key, X, n_components, n_init=n_init,
                            covariance_type=covariance_type, method=method,
                            max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                            sample_weight=sample_weight, callback=callback,
                            rank=rank, chunking=chunking)
  return best_and_all(results, n_init, "gmmjax.fit_restarts", throw)


def best_and_all(results, n_init: int, name: str, throw: bool, *,
                 degenerate: bool = True):
  """``(best, all_results)`` of restart results, unbatched for one restart
  (the program's shape), with ``throw``'s check of the best (``name`` and
  ``degenerate`` as :func:`results.error_if_bad` takes them)."""
  best = results if n_init == 1 else best_restart(results)
  if throw:
    error_if_bad(best, name, degenerate=degenerate)
  return best, (_add_axis(results) if n_init == 1 else results)


def _init_and_fit(key, X, sample_weight, tol, reg_covar, max_iter, overrides,
                  n_active, observed=None, structure=None, *, n_components,
                  n_init, covariance_type, method, history_len, callback,
                  rank=None, slots=None, chunking=None, init_as_stats=False):
  """Initialisations and EM fits of every restart: one program.

  ``overrides`` (user-given weights, means or precisions, or None) replace
  parts of every initialisation. One restart is unbatched, with restart 0's
  key (``split(key, 1)[0]``). With ``n_active`` (a traced int), only the
  first ``n_active`` of the ``n_components`` slots are fitted, the others
  held at weight 0: every component count up to ``n_components`` shares
  the program. With ``structure`` (a traced ``type_switch.CODES`` value,
  with ``n_active``), full params are fitted as that covariance type: the
  four types share the program. With ``init_as_stats`` (the estimator's,
  which nothing differentiates) and no overrides, low rank or missing
  entries, the draw reaches the loop as statistics (below).
  """
  mask = (None if n_active is None
          else jnp.arange(n_components) < n_active)
  if observed is not None:  # initialisations see the observed means
    X = missing.fill_means(X, observed, sample_weight)

  def drawn(k, first_of_split):
    if mask is None:
      return init_lib.init_traced(k, X, sample_weight, reg_covar,
                                  n_components, covariance_type, method,
                                  first_of_split, rank)
    if first_of_split:
      k = jax.random.split(k, 1)[0]
    return init_lib.init_masked(k, X, sample_weight, reg_covar, n_components,
                                mask, covariance_type, method, structure)

  def init(k, first_of_split):
    if not overrides:
      return drawn(k, first_of_split)
    # Weights, means and precisions all given replace the whole draw: skip
    # it (k-means on the data can cost as much as the fit), as a branch on
    # a traced flag, so that the program stays the one of every *_init.
    if "precisions" not in overrides:  # low rank: no precisions_init
      return _with_given(drawn(k, first_of_split), overrides)
    return jax.lax.cond(
        _all_given(overrides),
        lambda: _only_given(overrides, covariance_type),
        lambda: _with_given(drawn(k, first_of_split), overrides))

  # The draw handed to the loop as statistics: its first pass makes the
  # initial params with the loop's own M-step (init.init_stats), so the
  # program compiles one M-step, not two (36 of a first fit's 193 kernels).
  # That loop is not differentiated (fit_checked): gx.fit_restarts, whose
  # fits jax.grad can differentiate implicitly, keeps the separate M-step.
  as_stats = (init_as_stats and not overrides and rank is None
              and observed is None)

  def start(k, first_of_split):
    if as_stats:
      return init_lib.init_stats(k, X, sample_weight, n_components,
                                 covariance_type, method, first_of_split,
                                 mask)
    return init(k, first_of_split), None

  def fit_one(params, stats):
    return fit_checked(X, params, sample_weight, tol, reg_covar, -jnp.inf,
                       None, max_iter, history_len, callback=callback,
                       mask=mask, observed=observed, slots=slots,
                       structure=structure, chunking=chunking,
                       init_stats=stats)

  if n_init == 1:
    return fit_one(*start(key, True))
  # Each restart's initialisation holds (N, K) responsibilities and k-means
  # distances: restarts run in blocks (see _init_batch).
  params0, stats0 = batching.map_members(
      lambda k: start(k, False), jax.random.split(key, n_init),
      member_bytes=X.shape[0] * n_components * X.dtype.itemsize,
      options=chunking)
  # The vmapped loop runs only the restarts still iterating (on CPU), one at
  # a time once a restart's data fill a chunk, and on accelerators in
  # blocks bounded by memory (batching.while_loop).
  return jax.vmap(fit_one)(params0, stats0)


_init_and_fit_programs = compiling.jit_by_size(
    _init_and_fit, static_argnames=("n_components", "n_init",
                                    "covariance_type", "method",
                                    "history_len", "callback", "rank",
                                    "slots", "chunking", "init_as_stats"))


def restart_results(key, X, n_components: int, *, n_init: int,
                    covariance_type: str, method: str, max_iter: int, tol,
                    reg_covar, sample_weight, callback,
                    overrides: dict | None = None,
                    n_active: int | None = None,
                    rank: int | None = None,
                    observed=None, structure: int | None = None,
                    chunking: ChunkOptions | None = None,
                    init_as_stats: bool = False) -> FitResult:
  """:func:`fit_restarts`' results: batched, or unbatched for one restart.

  Initialisation and EM run as one compiled program (a first fit compiles
  once). ``overrides``: optional ``weights``, ``means`` and ``precisions``
  replacing those parts of every initialisation (the estimator's
  ``*_init``). With ``n_active``, ``n_components`` is a number of slots
  of which the first ``n_active`` are fitted (the others keep weight 0 and
  a unit covariance); ``overrides`` then have ``n_components`` slots too.
  The estimator reads the results on the host, where the missing axis of
  one restart costs nothing. ``observed``: optional ``(N, D)`` mask of
  observed entries (missing values; initialisations see the missing
  entries filled with their feature's observed mean). ``structure`` (with
  ``n_active`` and ``covariance_type="full"``): a ``type_switch.CODES``
  value, full params fitted as that type in the program the four share.
  ``init_as_stats``: see :func:`_init_and_fit` (not differentiable).
  """
  X = init_lib.check_init_args(X, n_components, covariance_type, method)
  checks.check_n_init(n_init)
  max_iter = check_max_iter(max_iter)
  rank = init_lib.check_rank(rank, covariance_type, X.shape[1])
  if rank is not None and n_active is not None:
    raise ValueError("covariance_type='lowrank' is not supported in "
                     "component-count selection; compare bic over fits.")
  if structure is not None and (n_active is None or covariance_type != "full"
                                or observed is not None):
    raise ValueError("structure needs n_active, covariance_type='full' and "
                     "no missing entries.")
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  n, d = X.shape
  if observed is not None:
    missing.check_type(covariance_type)
    observed = missing.as_observed(observed, X)
    X, w, observed = missing.sorted_rows(X, w, observed, n_components)
  overrides = _given_values(overrides, n_components, d, covariance_type,
                            X.dtype)
  program = compiling.pick(_init_and_fit_programs, n, n_components, d,
                           batch=n_init)
  dtype = X.dtype
  # NumPy scalars: a jnp conversion would be a program of its own.
  return program(key, X, w, checks.as_scalar(tol, dtype),
                 checks.as_scalar(reg_covar, dtype), np.int32(max_iter), overrides,
                 None if n_active is None else np.int32(n_active), observed,
                 None if structure is None else np.int32(structure),
                 n_components=n_components, n_init=n_init,
                 covariance_type=covariance_type, method=method,
                 history_len=history_length(max_iter), callback=callback,
                 rank=rank, slots=missing.max_missing(observed),
                 chunking=chunking, init_as_stats=bool(init_as_stats))


def _given_values(overrides, k, d, covariance_type, dtype):
  """``{name: (value, given)}`` for every part ``overrides`` names.

  A part not given gets a placeholder of its shape and ``given=False``,
  so the program is the same whichever parts a user gives (one compile
  for ``means_init`` alone or all three; the estimator passes no
  overrides when none is given, a program without the placeholders).
  """
  if overrides is None:
    return {}
  eye = np.eye(d)
  placeholder = dict(weights=np.full(k, 1.0 / k), means=np.zeros((k, d)))
  if covariance_type != "lowrank":  # no precisions_init for low rank
    placeholder["precisions"] = {
        "full": np.broadcast_to(eye, (k, d, d)), "tied": eye,
        "diag": np.ones((k, d)), "spherical": np.ones(k)}[covariance_type]
  return {name: (jax.device_put(np.asarray(
      placeholder[name] if overrides.get(name) is None
      else overrides[name], dtype)), np.bool_(overrides.get(name) is not None))
          for name in placeholder}


def _all_given(given):
  return given["weights"][1] & given["means"][1] & given["precisions"][1]


def _only_given(given, covariance_type) -> GMMParams:
  """The params of :func:`_given_values` alone (every part given)."""
  precisions = given["precisions"][0]
  template = GMMParams(given["weights"][0], given["means"][0], precisions,
                       precisions, covariance_type)
  return params_with_overrides(template, precisions=precisions)


def _with_given(params: GMMParams, given) -> GMMParams:
  """:func:`params_with_overrides` of :func:`_given_values`, traced."""
  if not given:
    return params
  pick = {name: value for name, (value, _) in given.items()}
  new = params_with_overrides(params, **pick)
  use = {name: flag for name, (_, flag) in given.items()}
  if "precisions" not in use:
    return params.replace(
        weights=jnp.where(use["weights"], new.weights, params.weights),
        means=jnp.where(use["means"], new.means, params.means))
  return params.replace(
      weights=jnp.where(use["weights"], new.weights, params.weights),
      means=jnp.where(use["means"], new.means, params.means),
      covariances=jnp.where(use["precisions"], new.covariances,
                            params.covariances),
      precisions_cholesky=jnp.where(use["precisions"],
                                    new.precisions_cholesky,
                                    params.precisions_cholesky))


def params_with_overrides(params: GMMParams, *, weights=None, means=None,
                          precisions=None) -> GMMParams:
  """Replaces parts of initial params by user-given values (as scikit-learn).

  ``precisions`` (scikit-learn's ``precisions_init``) replaces the precision
  factors and the covariances derived from them.
  """
  dtype = params.means.dtype
  if weights is not None:
    params = params.replace(weights=jnp.asarray(weights, dtype))
  if means is not None:
    params = params.replace(means=jnp.asarray(means, dtype))
  if precisions is not None:
    ctype = params.covariance_type
    prec_chol = cov_ops.precision_cholesky_from_precisions(
        jnp.asarray(precisions, dtype), ctype)
    params = params.replace(
        precisions_cholesky=prec_chol,
        covariances=cov_ops.covariances_from_cholesky(prec_chol, ctype))
  return params
