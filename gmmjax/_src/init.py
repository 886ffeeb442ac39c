"""Initial parameters: k-means, k-means++, random and random-from-data.

As in scikit-learn, each method produces initial responsibilities that one
M-step turns into parameters. Everything is JAX: it runs under ``jit`` (with
``n_components``, ``covariance_type`` and ``method`` static) and under
``vmap`` over keys, which is how restarts are built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import (
  checks,
  compiling,
  init_lowrank,
  missing,
  moments,
  type_switch,
)
from gmmjax._src import covariance as cov_ops
from gmmjax._src import matmul as mm
from gmmjax._src import stats as stats_lib
from gmmjax._src.kmeans import _kmeans_traced, lloyd, seeding
from gmmjax._src.params import GMMParams, check_covariance_type

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
# Methods that put each component on one sample.
SEEDINGS = ("k-means++", "random_from_data")


def _row_uniforms(key, n: int, k: int, dtype):
  """``(n, k)`` uniforms in [0, 1), row ``i`` drawn from ``fold_in(key, i)``.

  A row's numbers do not depend on ``n``: data padded with rows of weight 0
  (:func:`gmmjax.pad_samples`) get the same draws for their real rows.
  """
  return jax.vmap(lambda i: jax.random.uniform(
      jax.random.fold_in(key, i), (k,), dtype))(jnp.arange(n))


def _weighted_sample_without_replacement(key, w, k: int, dtype):
  """``k`` row indices drawn without replacement with probability ``~ w``.

  Gumbel top-k on row-wise uniforms: rows of weight 0 are never drawn, and
  padding rows change nothing.
  """
  u = _row_uniforms(key, w.shape[0], 1, dtype)[:, 0]
  tiny = jnp.finfo(dtype).tiny
  gumbel = -jnp.log(-jnp.log(jnp.maximum(u, tiny)))
  score = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)) + gumbel,
                    -jnp.inf)
  return jax.lax.top_k(score, k)[1]


def initial_responsibilities(key, X, n_components: int, method: str,
                             sample_weight=None, n_active=None):
  """Initial responsibilities ``(N, K)`` of scikit-learn's init methods.

  Every method draws the same for data padded with rows of weight 0.
  ``n_active`` (traced): k-means++ seeds the first ``n_active`` centres as
  a seeding of that many (:func:`kmeans.seeding`).
  """
  n = X.shape[0]
  if method == "kmeans":
    _, labels = _kmeans_traced(key, X, n_components, sample_weight)
    return jax.nn.one_hot(labels, n_components, dtype=X.dtype)
  if method == "random":
    resp = _row_uniforms(key, n, n_components, X.dtype)
    return resp / jnp.sum(resp, axis=1, keepdims=True)
  if method == "k-means++":
    _, indices = seeding(key, X, n_components, sample_weight, n_active)
  else:  # random_from_data
    w = jnp.ones(n, X.dtype) if sample_weight is None else sample_weight
    indices = _weighted_sample_without_replacement(key, w, n_components,
                                                   X.dtype)
  return jnp.zeros((n, n_components), X.dtype).at[
      indices, jnp.arange(n_components)].set(1.0)


def params_from_resp(X, resp, sample_weight, covariance_type: str,
                     reg_covar, structure=None, mask=None) -> GMMParams:
  """An M-step that centres every component on its own new mean (two passes).

  Initial responsibilities are often hard (one sample per component for
  k-means++), where the one-pass shifted statistics would subtract two large
  nearly equal numbers; here each component's scatter is summed around its
  own mean from the differences ``x_i - mu_k`` (in chunks of bounded
  memory), so a one-point component gets exactly ``reg_covar``.
  ``structure``: full covariances projected onto that type's structure
  (``type_switch``). ``mask``: the active component slots, the others
  factorised as the unit (``stats.params_and_jitter_from_stats``).
  """
  nk, center, diff, sxx, _, _, _ = moments.resp_moments(
      X, resp, sample_weight, covariance_type)
  if structure is None:
    covariances = cov_ops.estimate_covariances(
        nk, jnp.zeros_like(diff), sxx, covariance_type, reg_covar)
  else:
    covariances = type_switch.estimate(nk, jnp.zeros_like(diff), sxx,
                                       reg_covar, structure)
  if mask is not None:
    covariances = stats_lib.unit_where_inactive(covariances, covariance_type,
                                                mask)
  # Float32 moments of collinear or repeated data can come out indefinite
  # by rounding: the M-step's jitter ladder keeps the initial factors finite.
  covariances, prec_chol, _ = cov_ops.precision_cholesky_jittered(
      covariances, covariance_type)
  return GMMParams(nk / jnp.sum(nk), center[None, :] + diff, covariances,
                   prec_chol, covariance_type)


def init_traced(key, X, sample_weight, reg_covar, n_components,
                covariance_type, method, first_of_split=False,
                rank=None) -> GMMParams:
  """:func:`init_params` on checked arguments, to trace into a program."""
  if first_of_split:
    key = jax.random.split(key, 1)[0]
  xc, resp = drawn_responsibilities(key, X, sample_weight, n_components,
                                    method)
  if rank is not None:  # low-rank: clusters' principal axes
    if method in SEEDINGS:
      resp = init_lowrank.hard_assignment(xc, resp)
    return init_lowrank.lowrank_params_from_resp(
        jax.random.fold_in(key, 1), X, resp, sample_weight, rank, reg_covar)
  return params_from_resp(X, resp, sample_weight, covariance_type, reg_covar)


def _masked_kmeans(key, X, n_slots, mask, sample_weight, max_iter=300,
                   tol=1e-4):
  """Lloyd's k-means with only the first ``k`` of ``n_slots`` centres.

  The seeding is greedy k-means++ for ``n_slots`` centres, of which the first
  ``k`` are kept, each chosen among ``k``'s candidates
  (:func:`kmeans.seeding`): the seeding of ``k`` centres. Then Lloyd's
  iterations run with the inactive centres masked out, as
  :func:`gmmjax.kmeans` would with ``n_clusters=k``, in a shape shared by
  every ``k``.
  """
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  centers, _ = seeding(key, X, n_slots, w, jnp.sum(mask))
  _, labels = lloyd(X, centers, w, mask, max_iter=max_iter, tol=tol)
  return jax.nn.one_hot(labels, n_slots, dtype=X.dtype)


def masked_responsibilities(key, xc, n_slots, mask, method, sample_weight):
  """Initial responsibilities ``(N, n_slots)`` with zero inactive columns:
  the active ones are :func:`initial_responsibilities` of that many
  components."""
  if method == "kmeans":
    return _masked_kmeans(key, xc, n_slots, mask, sample_weight)
  # random_from_data: the first k of n_slots draws are a draw of k (each
  # depends only on the ones before it); k-means++: the seeding of k, with
  # k's candidates per centre (kmeans.seeding). Their other rows stay
  # unassigned (all zero). Every method draws what an exact k's does.
  resp = initial_responsibilities(key, xc, n_slots, method, sample_weight,
                                  n_active=jnp.sum(mask)) * mask[None, :]
  if method != "random":
    return resp
  return resp / jnp.sum(resp, axis=1, keepdims=True)


def drawn_responsibilities(key, X, sample_weight, n_components: int,
                           method: str, mask=None):
  """``(xc, resp)``: ``X`` centred at its weighted mean (k-means distances
  are expanded) and the method's initial responsibilities of it, in
  ``n_components`` slots of which ``mask`` marks the active ones
  (:func:`masked_responsibilities`) when given."""
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  xc = X - (mm.matmul(w, X) / jnp.sum(w))[None, :]
  if mask is None:
    return xc, initial_responsibilities(key, xc, n_components, method,
                                        sample_weight)
  return xc, masked_responsibilities(key, xc, n_components, mask, method,
                                     sample_weight)


def init_masked(key, X, sample_weight, reg_covar, n_slots, mask,
                covariance_type, method, structure=None) -> GMMParams:
  """Initial params in ``n_slots`` component slots, those where ``mask`` is
  False with weight 0 (:func:`stats.mask_components`): the active slots
  are an initialisation of that many components, in a shape shared by
  every count of active ones. The M-step is :func:`params_from_resp`'s,
  as for an unmasked initialisation (``structure``: see there)."""
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  _, resp = drawn_responsibilities(key, X, sample_weight, n_slots, method,
                                   mask)
  params = params_from_resp(X, resp, sample_weight, covariance_type,
                            reg_covar, structure, mask)
  return stats_lib.mask_components(params, mm.matmul(w, resp), mask)


def resp_stats(X, resp, sample_weight, covariance_type: str):
  """``(means, stats)``: the new means of responsibilities ``(N, K)`` and
  their statistics around them, the two passes of :func:`params_from_resp`
  (``moments.resp_moments``), in the EM loop's convention
  (``stats.SuffStats``, shift ``means``, masses not floored): the loop's
  M-step of them is :func:`params_from_resp`'s params to rounding."""
  m = moments.resp_moments(X, resp, sample_weight, covariance_type)
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  stats = stats_lib.SuffStats(
      count=jnp.sum(w), nk=jnp.sum(m.rw, axis=0), sx=m.sx, sxx=m.sxx,
      log_likelihood=jnp.full((), jnp.nan, X.dtype))
  return m.center[None, :] + m.diff, stats


def init_stats(key, X, sample_weight, n_components: int, covariance_type,
               method, first_of_split=False, mask=None):
  """An initialisation as statistics: ``(params, stats)``, ``stats`` the
  initial responsibilities' (:func:`resp_stats`) and ``params`` their
  means with unit covariances, for a loop that starts with their M-step
  (``fit_checked(init_stats=...)``): :func:`init_traced` (``mask=None``)
  or :func:`init_masked` (``n_components`` slots) without an M-step of
  its own. Full, tied, diagonal and spherical types."""
  if first_of_split:
    key = jax.random.split(key, 1)[0]
  _, resp = drawn_responsibilities(key, X, sample_weight, n_components,
                                   method, mask)
  means, stats = resp_stats(X, resp, sample_weight, covariance_type)
  d = X.shape[1]
  shape = cov_ops.get(covariance_type).shape(n_components, d)
  # The unit covariance in the type's shape (full and tied: matrices).
  unit = (jnp.eye(d, dtype=X.dtype) if covariance_type in ("full", "tied")
          else 1.0)
  cov = jnp.broadcast_to(jnp.asarray(unit, X.dtype), shape)
  weights = jnp.full((n_components,), 1.0 / n_components, X.dtype)
  return GMMParams(weights, means, cov, cov, covariance_type), stats


# (default, small) compiled programs; init_params picks one by size.
_init_programs = compiling.jit_by_size(
    init_traced, static_argnames=("n_components", "covariance_type", "method",
                                  "first_of_split", "rank"))


def init_params(key, X, n_components: int, *, covariance_type: str = "full",
                method: str = "k-means++", reg_covar=1e-6,
                sample_weight=None, rank: int | None = None,
                observed=None) -> GMMParams:
  """Initial mixture parameters by one of scikit-learn's methods.

  ``"kmeans"`` runs Lloyd's algorithm (in JAX) and uses its hard labels;
  ``"k-means++"`` and ``"random_from_data"`` put each component on one chosen
  sample (its covariance starts at ``reg_covar``, as in scikit-learn);
  ``"random"`` uses uniform random responsibilities. One M-step turns the
  responsibilities into parameters.

  ``covariance_type="lowrank"`` (``Sigma_k = W_k W_k^T + diag(psi_k)``, a
  mixture of factor analysers) needs ``rank=q``: each component gets its
  cluster's mean and top ``q`` principal axes (probabilistic PCA's loadings,
  the residual diagonal as noise); the seedings (``"k-means++"``,
  ``"random_from_data"``) assign every sample to its nearest seed first.

  Args:
    key: ``jax.random.key`` or legacy ``PRNGKey``.
    X: ``(N, D)`` samples.
    n_components: number of components ``K`` (static).
    covariance_type: ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"`` or
      ``"lowrank"``.
    method: ``"kmeans"``, ``"k-means++"``, ``"random"`` or
      ``"random_from_data"``.
    reg_covar: regulariser added to covariance diagonals (low-rank: the
      noise's floor).
    sample_weight: optional ``(N,)`` non-negative weights.
    rank: the number of factors ``q`` (static), ``1 <= q < n_features``;
      only for ``"lowrank"``.
    observed: optional ``(N, D)`` boolean mask of observed entries: the
      missing ones (values ignored) are set to their feature's observed
      mean before initialising (EM then treats them as missing).

  Returns:
    :class:`GMMParams` in ``X``'s floating dtype.

  Raises:
    ValueError: concrete ``X`` (its observed entries) or ``sample_weight``
      holding NaN or infinity, or a traced ``n_components`` (mark it
      static).

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (100, 3))
    >>> keys = jax.random.split(jax.random.key(1), 4)
    >>> batch = jax.vmap(lambda k: gx.init_params(k, X, 2))(keys)
    >>> batch.means.shape
    (4, 2, 3)
  """
  checks.check_finite(sample_weight, "sample_weight")
  if observed is None:
    checks.check_finite(X)
  else:
    X = checks.as_data(X)
    X = missing.fill(X, missing.as_observed(observed, X))
    checks.check_finite(X)  # the observed entries (the others are zeroed)
    X = missing.fill_means(
        X, observed,
        checks.as_sample_weight(sample_weight, X.shape[0], X.dtype))
  return _checked_init(key, X, n_components, covariance_type, method,
                       reg_covar, sample_weight, first_of_split=False,
                       rank=rank)


def init_first_of_split(key, X, n_components: int, *, covariance_type: str,
                        method: str, reg_covar, sample_weight,
                        rank: int | None = None) -> GMMParams:
  """``init_params(jax.random.split(key, 1)[0], ...)``, the split compiled in.

  Restart 0 of one: an eager split would compile two more programs (about
  0.2 s of a first fit).
  """
  return _checked_init(key, X, n_components, covariance_type, method,
                       reg_covar, sample_weight, first_of_split=True,
                       rank=rank)


def check_rank(rank, covariance_type: str, n_features: int):
  """``rank`` checked against the type and the data: ``None`` unless
  ``covariance_type="lowrank"``, where ``1 <= rank < n_features``."""
  if covariance_type != "lowrank":
    if rank is not None:
      raise ValueError(f"rank={rank!r} is only for covariance_type="
                       f"'lowrank', not {covariance_type!r}.")
    return None
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
    raise ValueError("covariance_type='lowrank' needs rank=q, an int with "
                     f"1 <= q < n_features, got {rank!r}.")
  if not 1 <= rank < n_features:
    raise ValueError(f"rank should satisfy 1 <= rank < n_features = "
                     f"{n_features}, got {rank}; use covariance_type='full' "
                     "for a full-rank covariance.")
  return int(rank)


def check_init_args(X, n_components, covariance_type, method):
  """``X`` as data, after the checks every initialisation needs."""
  check_covariance_type(covariance_type)
  if method not in INIT_METHODS:
    raise ValueError(f"Invalid value for 'method' (init_params): {method!r}. "
                     f"It should be in {list(INIT_METHODS)}.")
  checks.check_static(n_components, "n_components",
                      "the parameters, (n_components, n_features)")
  if not isinstance(n_components, int) or n_components < 1:
    raise ValueError(
        f"n_components should be a positive int, got {n_components!r}.")
  X = checks.as_data(X)
  if X.shape[0] < n_components:
    raise ValueError(f"Expected n_samples >= n_components but got "
                     f"n_components = {n_components}, n_samples = "
                     f"{X.shape[0]}")
  return X


def _checked_init(key, X, n_components, covariance_type, method, reg_covar,
                  sample_weight, first_of_split, rank=None):
  X = check_init_args(X, n_components, covariance_type, method)
  rank = check_rank(rank, covariance_type, X.shape[1])
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  args = (key, X, w, jnp.asarray(reg_covar, X.dtype))
  n, d = X.shape
  program = compiling.pick(_init_programs, n, n_components, d)
  return program(*args, n_components=n_components,
                 covariance_type=covariance_type, method=method,
                 first_of_split=first_of_split, rank=rank)
