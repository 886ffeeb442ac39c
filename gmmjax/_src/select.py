"""Choosing the number of components: one compiled sweep over ``k``.

Every candidate ``k`` is fitted with ``K = max(k_range)`` component slots of
which the first ``k`` are active. An inactive slot has weight exactly 0, so
its log-weight is ``-inf``, its responsibilities are exactly 0 and its
statistics are exactly 0: it never wakes up, and the active components follow
the same EM iterations as an unpadded ``k``-component fit. All ``k`` and all
restarts then share one shape and run as one vmapped ``while_loop``: one
compile for the whole sweep instead of one per ``k``. The loop is
:func:`gmmjax._src.batching.while_loop`, as in ``fit``: on CPU each fit
stops at its own iteration instead of running until the slowest one stops
(10 k's x 2 restarts of 20,000 x 8, full, float32: 0.61-0.67 s against
2.2-2.4 s warm, 7.5-8.9 against 10-11.5 s first call, the same table).

The loop is ``fit``'s (:mod:`gmmjax._src.engine`'s EM step); the mask is
applied after each M-step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import batching, checks, engine, padding, results
from gmmjax._src import covariance as cov_ops
from gmmjax._src import init as init_lib
from gmmjax._src.chunks import ChunkOptions
from gmmjax._src.params import GMMParams, check_covariance_type

CRITERIA = ("bic", "aic")


class SelectionResult(NamedTuple):
  """What :func:`select_n_components` returns.

  ``table`` maps column names to NumPy arrays with one row per candidate
  ``k`` (in the order given): ``k``, ``bic``, ``aic``, ``log_likelihood``
  (mean per sample), ``n_parameters``, ``n_iter``, ``converged``,
  ``jitter`` (the largest diagonal jitter an M-step of the kept restart
  added to factorise a covariance, 0 for none: see
  :class:`gmmjax.FitResult`).
  ``pandas.DataFrame(result.table)`` turns it into a data frame.
  """

  table: dict  # column name -> (n_k,) NumPy array
  best_k: int  # the k with the lowest criterion
  best_params: GMMParams  # that fit, with exactly best_k components
  criterion: str  # "bic" or "aic"
  params: GMMParams  # every k's best restart, padded to max(k) slots:
  # leaves have a leading (n_k,) axis; slots >= k have weight 0

  def params_for(self, k: int) -> GMMParams:
    """The fitted parameters for candidate ``k``, unpadded."""
    ks = [int(v) for v in self.table["k"]]
    if k not in ks:
      raise ValueError(f"k={k} was not in the sweep {ks}.")
    return padding.unpad_components(
        jax.tree.map(lambda a: a[ks.index(k)], self.params), k)


def _masked_fit(X, params, mask, sample_weight, tol, reg_covar, max_iter,
                callback, chunking=None):
  """``fit``'s EM on padded params with a component mask: ``(params,
  total log-likelihood, total weight, n_iter, converged, failed, jitter)``.
  """
  problem = engine.Problem(X, sample_weight, jnp.asarray(tol, X.dtype),
                           jnp.asarray(reg_covar, X.dtype), mask=mask)
  r, state = engine.run(engine.EMStep(chunking=chunking), params, problem,
                        prev_ll=-jnp.inf, max_iter=max_iter,
                        history_len=results.history_length(max_iter),
                        callback=callback, chunking=chunking)
  return (r.params, state.stats.log_likelihood, state.stats.count, r.n_iter,
          r.converged, r.failed, r.jitter)


@functools.partial(jax.jit, static_argnames=(
    "n_slots", "n_init", "covariance_type", "method", "max_iter", "callback",
    "chunking"))
def _sweep(key, X, sample_weight, ks, tol, reg_covar, n_slots, n_init,
           covariance_type, method, max_iter, callback, chunking=None):
  # The same restart keys for every k (common random numbers): the k-means++
  # seeding for k is then a prefix of the one for k + 1, so the candidates
  # differ by their number of components, not by the luck of their seeding.
  keys = jax.random.split(key, n_init)
  n_k = ks.shape[0]
  # One flat batch of (k, restart) pairs: batching.while_loop's rule sees
  # the innermost vmap only, so a nested vmap over k would run its outer
  # axis as a plain vmapped loop (every k until the slowest stops, every
  # k's chunk at once on an accelerator).
  pair_k = jnp.repeat(ks, n_init)
  pair_key = keys[jnp.tile(jnp.arange(n_init), n_k)]
  masks = jnp.arange(n_slots)[None, :] < pair_k[:, None]

  def init_one(args):
    k, key, mask = args
    return init_lib.init_masked(key, X, sample_weight, reg_covar, n_slots,
                                mask, covariance_type, method)

  p0 = batching.map_members(
      init_one, (pair_k, pair_key, masks),
      member_bytes=X.shape[0] * n_slots * X.dtype.itemsize, options=chunking)
  flat = jax.vmap(lambda p, mask: _masked_fit(
      X, p, mask, sample_weight, tol, reg_covar, max_iter, callback,
      chunking))(p0, masks)
  params, total_ll, count, n_iter, converged, failed, jitter = jax.tree.map(
      lambda a: a.reshape((n_k, n_init) + a.shape[1:]), flat)
  # Best restart per k: highest final log-likelihood, failed fits last,
  # ties to the first (scikit-learn's strict '>').
  score = jnp.where(failed | ~jnp.isfinite(total_ll), -jnp.inf, total_ll)
  best = jnp.argmax(score, axis=1)

  def pick(a):
    return jnp.take_along_axis(
        a, best.reshape((-1,) + (1,) * (a.ndim - 1)), axis=1)[:, 0]

  return jax.tree.map(pick, (params, total_ll, count, n_iter, converged,
                             failed, jitter))


def _check_k_range(k_range) -> list[int]:
  ks = [k for k in k_range]
  for k in ks:
    checks.check_static(k, "k_range", "the sweep's padded params, "
                        "(max(k_range), n_features)")
  if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(
      k, bool) and k >= 1 for k in ks):
    raise ValueError(f"k_range should be a non-empty sequence of positive "
                     f"ints, got {k_range!r}.")
  ks = [int(k) for k in ks]
  if len(set(ks)) != len(ks):
    raise ValueError(f"k_range has repeated values: {ks}.")
  return ks


def _check_options(key, X, sample_weight, tol, reg_covar, k_range, criterion,
                   covariance_type, method, n_init) -> list[int]:
  """The checked ``k_range``, or a ``ValueError`` naming the bad option
  (a ``TypeError`` under a transformation)."""
  # Static arguments first: a traced one has a fix of its own.
  checks.check_n_init(n_init)
  ks = _check_k_range(k_range)
  checks.refuse_tracers(
      "select_n_components", "reads every fit's results on the host to "
      "build its table and pick best_k",
      "gmmjax.fit_restarts for each k and compare gmmjax.bic (or "
      "gmmjax.aic) of the results", key, X, sample_weight, tol, reg_covar)
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  if criterion not in CRITERIA:
    raise ValueError(f"criterion should be one of {list(CRITERIA)}, got "
                     f"{criterion!r}.")
  check_covariance_type(covariance_type)
  if covariance_type == "lowrank":
    raise ValueError("select_n_components does not fit covariance_type="
                     "'lowrank'; compare GaussianMixture(k, covariance_type="
                     "'lowrank', rank=q).fit(X).bic(X) over k and q instead.")
  if method not in init_lib.INIT_METHODS:
    raise ValueError(f"method should be one of "
                     f"{list(init_lib.INIT_METHODS)}, got {method!r}.")
  return ks


def select_n_components(key, X, k_range: Sequence[int] | range, *,
                        criterion: str = "bic", covariance_type: str = "full",
                        n_init: int = 1, method: str = "k-means++",
                        max_iter: int = 100, tol=1e-3, reg_covar=1e-6,
                        sample_weight=None, callback: Callable | None = None,
                        chunking: ChunkOptions | None = None
                        ) -> SelectionResult:
  """Fits a mixture for every ``k`` in ``k_range`` and picks the best by BIC/AIC.

  The whole sweep (every ``k``, every restart) is one compiled program: each
  fit uses ``max(k_range)`` component slots, the slots beyond its ``k``
  masked to weight exactly 0 (see the module docstring). The active
  components then follow exactly the iterations of an unpadded fit from the
  same initialisation. The samples are padded with rows of weight 0 to the
  sizes of :func:`gmmjax.pad_samples`, so nearby sample counts share it.

  ``BIC = -2 log L + p log n`` and ``AIC = -2 log L + 2 p``, with ``log L``
  the total (weighted) log-likelihood, ``n`` the number (total weight) of
  samples and ``p`` the number of free parameters; lower is better.

  Args:
    key: a ``jax.random`` key for the initialisations.
    X: ``(N, D)`` samples (NumPy or JAX; float64 is kept only under x64).
    k_range: candidate numbers of components (positive ints, e.g.
      ``range(1, 11)``), each at most ``N``.
    criterion: ``"bic"`` or ``"aic"``.
    covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
    n_init: restarts per ``k`` (the best log-likelihood is kept).
    method: ``"k-means++"``, ``"kmeans"``, ``"random"`` or
      ``"random_from_data"``, as in :func:`gmmjax.init_params`.
    max_iter, tol, reg_covar: as in :func:`gmmjax.fit`.
    sample_weight: optional ``(N,)`` non-negative weights.
    callback: optional host function ``callback(n_iter, log_likelihood,
      change)`` called by every fit after every iteration (progress).
    chunking: optional :class:`ChunkOptions`, as in :func:`gmmjax.fit`
      (also the blocks the sweep's batch of fits runs in).

  Returns:
    A :class:`SelectionResult`: the table, ``best_k``, ``best_params`` and
    all padded params.

  Raises:
    TypeError: under ``jax.jit``, ``jax.grad`` or ``jax.vmap`` with traced
      data, key or options: this is a host-level function (it reads the
      fits on the host); call :func:`gmmjax.fit_restarts` for each ``k``
      there instead.
    ValueError: concrete ``X`` or ``sample_weight`` holding NaN or
      infinity, or a traced ``k_range`` or ``n_init`` (mark it static).

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(m, 0.5, (100, 2)) for m in (-4, 0, 4)])
    >>> res = gx.select_n_components(jax.random.key(0), X, range(1, 6),
    ...                              covariance_type="diag")
    >>> res.best_k, res.table["k"].tolist()
    (3, [1, 2, 3, 4, 5])
  """
  max_iter = engine.check_max_iter(max_iter)
  ks = _check_options(key, X, sample_weight, tol, reg_covar, k_range,
                      criterion, covariance_type, method, n_init)
  given = X
  X = checks.as_data(X)
  n_samples, n_features = X.shape
  if max(ks) > n_samples:
    raise ValueError(f"Expected n_samples >= n_components but got "
                     f"n_components = {max(ks)}, n_samples = {n_samples}")
  w = checks.as_sample_weight(sample_weight, n_samples, X.dtype)
  # Padded to the ladder with rows of weight 0 (padding.pad_samples): the
  # sweep's fits are unchanged, and nearby sample counts share its program.
  n_rows = padding.padded_rows(n_samples, n_features)
  if n_rows != n_samples and isinstance(given, np.ndarray):
    # NumPy data are padded on the host, from the caller's array (eager
    # jnp padding compiles programs; the weights are small).
    X = np.asarray(given, X.dtype)
    w = None if w is None else np.asarray(w)
  X, w = padding.pad_samples(X, sample_weight=w, n_rows=n_rows)
  dtype = X.dtype
  out = _sweep(key, X, w, np.asarray(ks, np.int32),
               checks.as_scalar(tol, dtype), checks.as_scalar(reg_covar, dtype),
               n_slots=max(ks), n_init=n_init,
               covariance_type=covariance_type, method=method,
               max_iter=max_iter, callback=callback, chunking=chunking)
  params, *fits = jax.device_get(out)
  table = _table(ks, covariance_type, n_features, *fits)
  scores = table[criterion]
  if not np.any(np.isfinite(scores)):
    raise ValueError("Every fit of the sweep failed (non-finite parameters): "
                     "increase reg_covar, or scale the input data.")
  best = int(np.argmin(scores))  # ties: the first, i.e. in k_range's order
  # Indexed on the host, then put (indexing device arrays compiles).
  best_params = jax.device_put(
      padding.unpad_components(jax.tree.map(lambda a: a[best], params),
                               ks[best]))
  params = jax.device_put(params)
  return SelectionResult(table=table, best_k=ks[best],
                         best_params=best_params, criterion=criterion,
                         params=params)


def _table(ks, covariance_type, n_features, total_ll, count, n_iter,
           converged, failed, jitter) -> dict:
  """The sweep's table from its best fits per ``k`` (host values)."""
  total_ll = np.asarray(total_ll, np.float64)
  count = np.asarray(count, np.float64)
  n_par = np.array([cov_ops.count_parameters(covariance_type, k, n_features)
                    for k in ks], np.float64)
  failed = np.asarray(failed)
  return {
      "k": np.asarray(ks),
      "bic": np.where(failed, np.inf,
                      -2.0 * total_ll + n_par * np.log(count)),
      "aic": np.where(failed, np.inf, -2.0 * total_ll + 2.0 * n_par),
      "log_likelihood": total_ll / count,
      "n_parameters": n_par.astype(int),
      "n_iter": np.asarray(n_iter),
      "converged": np.asarray(converged),
      "jitter": np.asarray(jitter, np.float64),
  }


def format_table(result: SelectionResult) -> str:
  """The selection table as aligned text, the best row marked with ``*``.

  Args:
    result: a :class:`SelectionResult`.

  Returns:
    One header line and one line per candidate ``k``.

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(m, 0.5, (100, 2)) for m in (-4, 0, 4)])
    >>> table = gx.format_table(gx.select_n_components(
    ...     jax.random.key(0), X, range(1, 6), covariance_type="diag"))
    >>> print(table.splitlines()[0])
        k           bic           aic  log-likelihood  n_iter  converged
    >>> table.splitlines()[3].endswith("*")  # k = 3
    True
  """
  t = result.table
  lines = [f"{'k':>5} {'bic':>13} {'aic':>13} {'log-likelihood':>15} "
           f"{'n_iter':>7} {'converged':>10}"]
  for i, k in enumerate(t["k"]):
    mark = " *" if int(k) == result.best_k else ""
    lines.append(f"{int(k):>5} {t['bic'][i]:>13.3f} {t['aic'][i]:>13.3f} "
                 f"{t['log_likelihood'][i]:>15.5f} {int(t['n_iter'][i]):>7} "
                 f"{bool(t['converged'][i])!s:>10}{mark}")
  return "\n".join(lines)
