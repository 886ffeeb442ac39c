"""k-means++ seeding and Lloyd's k-means, in JAX.

The public :func:`kmeans` and :func:`kmeans_plusplus`, and the traced
pieces the initialisations build on (``init.py``: k-means responsibilities,
masked component slots): one compiled ``while_loop`` each, weighted, under
``jit`` and ``vmap``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import checks
from gmmjax._src import matmul as mm


def _sq_distances(X, centers):
  """Squared Euclidean distances ``(N, C)`` (clamped at zero)."""
  d = (jnp.sum(X * X, axis=1)[:, None] - 2.0 * mm.matmul(X, centers.T)
       + jnp.sum(centers * centers, axis=1)[None, :])
  return jnp.maximum(d, 0.0)


def n_trials(n_clusters: int) -> int:
  """Candidates per centre of the greedy seeding: ``2 + log(k)``."""
  return 2 + int(math.log(n_clusters))


# Columns of the seeding's uniforms: 2 + log(k) candidates fit for every
# k below e**15 (about 3.3 million centres); more take as many as they need.
CANDIDATE_COLUMNS = 16


def _seeding_uniforms(key, n_centres: int, n_candidates: int, dtype):
  """``(n_centres, n_candidates)`` uniforms, the leading block of one
  ``(n_centres, CANDIDATE_COLUMNS)`` draw: entry ``(c, t)``'s bits come
  from its index ``c * CANDIDATE_COLUMNS + t`` alone (JAX's partitionable
  threefry, its default), so a seeding of fewer centres, or with fewer
  candidates, reads the same numbers for the ones it has. One draw: a
  uniform per entry keyed by ``fold_in`` made the slotted k-means init
  program 119 kernels instead of 107, compiled in 1.22 s instead of
  0.84-1.0 s."""
  columns = max(CANDIDATE_COLUMNS, n_candidates)
  return jax.random.uniform(key, (n_centres, columns),
                            dtype)[:, :n_candidates]


def kmeans_plusplus(key, X, n_clusters: int, *, sample_weight=None):
  """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant).

  The first centre is drawn with probability proportional to ``w_i``; each
  further one is the best of ``2 + log(k)`` candidates drawn with
  probability proportional to ``w_i D(x_i)^2``. All the uniform numbers
  are drawn at once and turned into indices by inverse CDF (one random
  draw and no search loop to compile, which halves the compile time).
  Centre ``c``'s candidate ``t`` reads entry ``(c, t)`` of one
  ``(n_clusters, 16)`` draw, whose numbers do not depend on
  ``n_clusters``: the seeding of the first ``k`` of more centres, as
  component slots fit it (masked, with ``k``'s candidates), is this one's.

  Args:
    key: PRNG key.
    X: ``(N, D)`` samples (best centred: distances are computed expanded).
    n_clusters: static number of centres.
    sample_weight: optional ``(N,)`` weights.

  Returns:
    ``(centers, indices)``: ``(n_clusters, D)`` and ``(n_clusters,)`` int32.

  Raises:
    ValueError: concrete ``X`` or ``sample_weight`` holding NaN or infinity,
      or a traced ``n_clusters``.
  """
  X = _checked(X, sample_weight, n_clusters)
  return seeding(key, X, n_clusters, sample_weight)


def seeding(key, X, n_clusters: int, sample_weight=None, n_active=None):
  """:func:`kmeans_plusplus` on checked arguments, to trace into a program.

  ``n_active`` (traced, ``1 <= n_active <= n_clusters``): only the first
  ``n_active`` centres are wanted (component slots). Each centre depends
  only on the ones before it, and each takes ``n_active``'s number of
  candidates (the others drawn and never chosen), so those centres are
  the seeding of ``n_active`` clusters, to rounding; the rest are filler.
  """
  n = X.shape[0]
  w = jnp.ones(n, X.dtype) if sample_weight is None else sample_weight
  trials = n_trials(n_clusters)
  u = _seeding_uniforms(key, n_clusters, trials, X.dtype)
  if n_active is None:
    active_trials = trials
  else:
    table = jnp.asarray([n_trials(k) for k in range(1, n_clusters + 1)],
                        jnp.int32)
    active_trials = table[jnp.clip(n_active, 1, n_clusters) - 1]

  def draw(p, u_row):
    """Indices with probability proportional to ``p``, from uniforms."""
    cum = jnp.cumsum(p)
    # side="right": a zero-weight row (a flat step of cum) is never drawn.
    idx = jnp.searchsorted(cum, u_row * cum[-1], side="right",
                           method="compare_all")
    return jnp.clip(idx, 0, n - 1).astype(jnp.int32)

  def body(c, carry):
    # Centre 0 is the loop's first pass (one program for the draw): one
    # candidate, drawn with probability ~ w.
    indices, closest = carry
    first = c == 0
    cand = draw(jnp.where(first, w, w * closest), u[c])
    dist = jnp.minimum(closest[None, :], _sq_distances(X, X[cand]).T)
    potential = mm.matmul(dist, w)
    ok = jnp.arange(trials) < jnp.where(first, 1, active_trials)
    best = jnp.argmin(jnp.where(ok, potential, jnp.inf))
    return indices.at[c].set(cand[best]), dist[best]

  indices, _ = lax.fori_loop(
      0, n_clusters, body, (jnp.zeros(n_clusters, jnp.int32),
                            jnp.full((n,), jnp.inf, X.dtype)))
  return X[indices], indices


def kmeans(key, X, n_clusters: int, *, sample_weight=None, max_iter: int = 300,
           tol=1e-4):
  """Lloyd's k-means from a k-means++ seeding, in one ``while_loop``.

  Stops when the squared centre shift falls below ``tol * mean(var(X))``
  (scikit-learn's rule) or after ``max_iter`` iterations. A cluster that
  empties keeps its previous centre.

  Returns:
    ``(centers, labels)``: ``(n_clusters, D)`` and ``(N,)`` int32.

  Raises:
    ValueError: as :func:`kmeans_plusplus`.
  """
  X = _checked(X, sample_weight, n_clusters)
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  # One compiled program: run eagerly, the seeding and the loop's set-up
  # were about 55 small programs to compile on a first call.
  return _kmeans_program(key, X, w, checks.as_scalar(max_iter, np.int32),
                         checks.as_scalar(tol, X.dtype),
                         n_clusters=n_clusters)


def _checked(X, sample_weight, n_clusters):
  """``X`` as data, once it and the weights are finite (where concrete)
  and ``n_clusters`` is static."""
  checks.check_static(n_clusters, "n_clusters",
                      "the centres, (n_clusters, n_features)")
  checks.check_finite(X)
  checks.check_finite(sample_weight, "sample_weight")
  return checks.as_data(X)


def _kmeans_traced(key, X, n_clusters: int, sample_weight=None,
                   max_iter=300, tol=1e-4):
  """:func:`kmeans` on checked arguments, to trace into a program."""
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  centers, _ = seeding(key, X, n_clusters, sample_weight)
  return lloyd(X, centers, w, max_iter=max_iter, tol=tol)


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _kmeans_program(key, X, sample_weight, max_iter, tol, *,
                    n_clusters: int):
  return _kmeans_traced(key, X, n_clusters, sample_weight, max_iter, tol)


def lloyd(X, centers, w, mask=None, *, max_iter: int = 300, tol=1e-4):
  """Lloyd's iterations from ``centers`` (the loop of :func:`kmeans`).

  ``w`` are ``(N,)`` sample weights. ``mask``, an optional ``(C,)``
  boolean, keeps the inactive centres out of the assignment and of the
  stopping rule (model selection fits every ``k`` in one padded shape).

  Returns:
    ``(centers, labels)``: ``(C, D)`` and ``(N,)`` int32.
  """
  n_clusters = centers.shape[0]
  threshold = tol * jnp.mean(jnp.var(X, axis=0))

  def assign(centers):
    d = _sq_distances(X, centers)
    if mask is not None:
      d = jnp.where(mask[None, :], d, jnp.inf)
    return jnp.argmin(d, axis=1)

  def cond(carry):
    i, _, shift = carry
    return (i < max_iter) & (shift > threshold)

  def body(carry):
    i, centers, _ = carry
    onehot = jax.nn.one_hot(assign(centers), n_clusters, dtype=X.dtype)
    onehot = onehot * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    sums = mm.matmul(onehot.T, X)
    new = jnp.where(counts[:, None] > 0,
                    sums / jnp.maximum(counts, 1e-30)[:, None], centers)
    if mask is None:
      shift = jnp.sum((new - centers) ** 2)
    else:
      shift = jnp.sum(jnp.where(mask, jnp.sum((new - centers) ** 2, axis=1),
                                0.0))
    return i + 1, new, shift

  _, centers, _ = lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), centers,
                   jnp.asarray(jnp.inf, X.dtype)))
  return centers, assign(centers).astype(jnp.int32)
