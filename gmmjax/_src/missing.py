"""Missing values: the E-step over each sample's observed coordinates.

A boolean mask ``observed`` ``(N, D)`` (True where an entry was observed)
marks the missing entries of ``X``; their values are ignored (NaN is fine).
Under component ``k`` the observed coordinates ``O`` of a sample have the
marginal ``N(x_O | mu_kO, Sigma_kOO)``, and given them the missing ones ``M``
are Gaussian with

    mean  mu_kM + Sigma_kMO Sigma_kOO^-1 (x_O - mu_kO)
    cov   Sigma_kMM - Sigma_kMO Sigma_kOO^-1 Sigma_kOM.

EM for data missing at random (Ghahramani & Jordan, 1994) takes the
responsibilities from the observed marginals, and the sufficient statistics
of the *completed* samples ``xhat_ik`` (observed entries, conditional means
of the missing ones) plus, in the second moments, the conditional
covariances ``C_ik``. :func:`observed_terms` computes the E-step's terms of
a piece of rows and :func:`moments` reduces them to the spine's ``(sx,
sxx)``, so every path that sums statistics (chunks, shards, processes,
online averages, vmapped restarts, implicit derivatives) works unchanged.

Full and tied work in the missing block of each precision, factorised in
``m`` slots per row (``missing_slots.py``). The statistics are summed over
pieces of rows (:func:`piece_size`); each piece takes the kernel of the
smallest slot count on the ladder :func:`slot_sizes` that holds its
most-missing row, and a piece with nothing missing takes the complete-data
kernel (``stats.py``). Rows sorted by their number of missing entries
(:func:`sort_rows`, which the fits do once) make most pieces cheap: with
10% of 16 features missing at random, most rows miss one or two. Diag and
spherical need no factorisation: coordinates are independent given the
component.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import chunks, missing_slots
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams
from gmmjax._src.reductions import max_in_batch

SUPPORTED = ("full", "tied", "diag", "spherical")


def check_type(covariance_type: str) -> None:
  if covariance_type not in SUPPORTED:
    raise ValueError(
        f"Missing values are not supported for covariance_type="
        f"{covariance_type!r}; use one of {list(SUPPORTED)}.")


def as_observed(observed, X):
  """``observed`` as an ``(N, D)`` bool array, or a ``ValueError``."""
  if observed is None:
    return None
  observed = jnp.asarray(observed)
  if observed.shape != X.shape:
    raise ValueError(f"observed should be a boolean mask of X's shape "
                     f"{X.shape}, got shape {observed.shape}.")
  if observed.dtype != bool:
    raise ValueError(f"observed should be a boolean mask (True where an "
                     f"entry was observed), got dtype {observed.dtype}.")
  return observed


def fill(X, observed, value=0.0):
  """``X`` with its missing entries set to ``value`` (no NaN left over)."""
  return jnp.where(observed, X, jnp.asarray(value, X.dtype))


def fill_means(X, observed, sample_weight=None):
  """``X`` with each missing entry set to its feature's (weighted) observed
  mean: what initialisations (k-means, k-means++) run on."""
  w = (jnp.ones(X.shape[0], X.dtype) if sample_weight is None
       else sample_weight)
  ow = observed * w[:, None]
  means = (jnp.sum(jnp.where(observed, X, 0.0) * w[:, None], axis=0)
           / jnp.maximum(jnp.sum(ow, axis=0), jnp.finfo(X.dtype).tiny))
  return jnp.where(observed, X, means[None, :])


def max_missing(observed) -> int | None:
  """The top of the slot ladder for a concrete mask: the most entries a
  row misses, rounded up to a power of two (at most ``D``: masks that
  differ a little share programs); ``None`` for a traced one (then
  ``D``)."""
  if observed is None or isinstance(observed, jax.core.Tracer):
    return None
  observed = np.asarray(observed)
  d = observed.shape[1]
  most = int((~observed).sum(axis=1).max()) if observed.size else 0
  return min(d, 1 << max(most - 1, 0).bit_length())


def sort_rows(observed):
  """A stable order of the rows by their number of missing entries (host
  side, for a concrete mask), or ``None`` where there is nothing to gain
  (no mask, a traced one, or rows already in that order)."""
  if observed is None or isinstance(observed, jax.core.Tracer):
    return None
  counts = (~np.asarray(observed)).sum(axis=1)
  if np.all(counts[1:] >= counts[:-1]):
    return None
  return np.argsort(counts, kind="stable")


def sorted_rows(X, sample_weight, observed, n_components: int):
  """``(X, sample_weight, observed)`` ready for a fit's loop: the rows in
  :func:`sort_rows`' order (a fit's statistics are sums over rows, and
  sorted rows let most pieces take a small kernel), then zero-weight,
  fully observed rows up to a whole number of pieces
  (:func:`pad_to_pieces`, done here once instead of copying the data in
  every iteration). Gathers and concatenations: derivatives with respect
  to ``X`` and the weights flow back to the caller's rows. Unchanged for
  a traced mask or none."""
  order = sort_rows(observed)
  if observed is None or isinstance(observed, jax.core.Tracer):
    return X, sample_weight, observed
  if order is not None:
    order = jnp.asarray(order, jnp.int32)
    X, sample_weight, observed = (
        None if a is None else jnp.take(a, order, axis=0)
        for a in (X, sample_weight, observed))
  n, d = X.shape
  size = piece_rows(n_components, d, n, X.dtype)
  if n % size:
    X, observed, sample_weight = pad_to_pieces(size, X, observed,
                                               sample_weight)
  return X, sample_weight, observed


# The slot counts of the masked kernels below the top: fine where most rows
# are (1 to 4: with 10% of 16 features missing at random, 97% of the rows),
# then powers of two. Each is one more kernel to compile; a piece pays for
# its most-missing row's count, about m^3 per row and component.
SLOT_LADDER = (1, 2, 3, 4, 6, 8)


def slot_sizes(covariance_type: str, d: int, slots: int | None,
               one_piece: bool = False):
  """The slot counts of the masked kernels: :data:`SLOT_LADDER` and the
  powers of two beyond it below the top (``slots``, or ``D``), then the
  top. Diag/spherical, and data of ``one_piece`` (whose one piece takes
  one kernel anyway: compiling the others would be most of a small fit's
  cost): the top alone."""
  top = d if slots is None else max(1, min(int(slots), d))
  if one_piece or not cov_lib.get(covariance_type).is_matrix:
    return (top,)
  sizes = [m for m in SLOT_LADDER if m < top]
  m = 2 * SLOT_LADDER[-1]
  while m < top:
    sizes.append(m)
    m *= 2
  return tuple(sizes) + (top,)


def branch_index(ob, sizes):
  """Which kernel a piece takes: 0 (complete rows), else ``1 + i`` for the
  smallest ``sizes[i]`` that holds the piece's most-missing row; under
  ``vmap`` the largest over the batch (one branch for all members)."""
  most = jnp.max(jnp.sum((~ob).astype(jnp.int32), axis=1))
  below = jnp.asarray((0,) + tuple(sizes[:-1]), jnp.int32)
  return max_in_batch(jnp.sum((most > below).astype(jnp.int32)))


def _scale_terms(params: GMMParams, xb, ob):
  """Diag/spherical: ``(log N(x_O|k), xhat, missing indicators (n, D))``."""
  pc = cov_lib.get(params.covariance_type).per_feature(
      params.precisions_cholesky, params.means.shape[1])
  z = jnp.where(ob[:, None, :], xb[:, None, :] - params.means[None], 0.0)
  y = z * pc[None]
  of = ob.astype(xb.dtype)
  log_det = mm.matmul(of, jnp.log(pc).T)  # log det of the observed precision
  n_obs = jnp.sum(of, axis=1)[:, None]
  log_gauss = (-0.5 * (n_obs * math.log(2 * math.pi)
                       + jnp.sum(y * y, axis=-1)) + log_det)
  xhat = jnp.where(ob[:, None, :], xb[:, None, :], params.means[None])
  return log_gauss, (xhat, 1.0 - of)


def observed_terms(params: GMMParams, xb, ob, m: int, centre=None):
  """``(log N(x_O | mu_kO, Sigma_kOO) (n, K), terms)`` of a piece of rows
  (missing entries zero in ``xb``), each missing at most ``m`` entries.

  ``terms`` is what :func:`moments` and :func:`completed` read: full/tied
  a :class:`missing_slots.SlotTerms`, diag/spherical the completed rows
  and the missing indicators. ``centre`` (``(D,)``; default the mean of
  the means) is where the full/tied GEMM's inputs are centred.
  """
  check_type(params.covariance_type)
  if not cov_lib.get(params.covariance_type).is_matrix:
    return _scale_terms(params, xb, ob)
  if centre is None:
    centre = jax.lax.stop_gradient(jnp.mean(params.means, axis=0))
  st = missing_slots.terms(params, xb, ob,
                           missing_slots.slot_indices(ob, m), centre)
  return st.log_gauss, st


def moments(params: GMMParams, rw, xb, ob, terms, shift):
  """``(sx, sxx)`` of completed samples around ``shift`` (``(D,)`` or
  ``(K, D)``), conditional covariances included."""
  ct = cov_lib.get(params.covariance_type)
  if ct.is_matrix:
    return missing_slots.slot_moments(params, rw, xb, ob, terms, shift)
  xhat, cond = terms
  z = xhat - shift  # (n, K, D)
  rz = rw[:, :, None] * z
  sxx = (ct.component_sxx(rz, z, 0)
         + mm.matmul(rw.T, ct.sum_features(cond)) * params.covariances)
  return jnp.sum(rz, axis=0), sxx


def completed(params: GMMParams, xb, ob, terms):
  """The completed samples ``(n, K, D)``: observed entries, conditional
  means of the missing ones."""
  if cov_lib.get(params.covariance_type).is_matrix:
    return jnp.swapaxes(missing_slots.slot_completed(params, xb, ob, terms),
                        0, 1)
  return terms[0]


def piece_size(params: GMMParams, n: int, dtype,
               options: chunks.ChunkOptions | None = None) -> int:
  """Rows per piece of the masked kernels (:func:`piece_rows`)."""
  k, d = params.means.shape
  return piece_rows(k, d, n, dtype, options)


def piece_rows(n_components: int, n_features: int, n: int, dtype,
               options: chunks.ChunkOptions | None = None) -> int:
  """About four ``(n, K, D)`` intermediates (the GEMMs' outputs, the
  completed rows' offsets and their cross terms) within the budget of the
  complete-data whitened chunks (``chunks.chunk_size``): 2,048 rows for K
  = D = 16 in float32 on CPU, large enough for XLA to split its loops over
  the CPU's threads; at most ``n``."""
  return chunks.chunk_size(n, 4 * n_components, n_features, "full", dtype,
                           options=options)


def slot_rows(params: GMMParams, m: int, size: int, dtype,
              options: chunks.ChunkOptions | None = None) -> int:
  """Rows per part of a piece of ``size`` rows in the kernel of ``m``
  slots: the factorisation's entry-major blocks, about three ``(m, m, n,
  K)`` arrays, within the chunk budget too (at most ``size``, and a
  divisor of it: no remainder part, whose program would compile again)."""
  k, d = params.means.shape
  rows = chunks.chunk_size(size, 3 * k * m, m, "full", dtype, options=options)
  parts = -(-size // rows)
  while size % parts:
    parts += 1
  return size // parts


def pad_to_pieces(size: int, X, ob, w):
  """``(X, ob, w)`` with zero-weight, fully observed rows up to a whole
  number of pieces of ``size`` rows (one scan, no remainder piece, whose
  program would be compiled a second time); ``w`` is materialised. The
  fits pad once (:func:`sorted_rows`); then nothing is copied here."""
  n = X.shape[0]
  w = jnp.ones(n, X.dtype) if w is None else w
  pad = -n % size
  if not pad:
    return X, ob, w
  return (jnp.concatenate([X, jnp.zeros((pad, X.shape[1]), X.dtype)]),
          jnp.concatenate([ob, jnp.ones((pad, ob.shape[1]), bool)]),
          jnp.concatenate([w, jnp.zeros(pad, X.dtype)]))


def map_observed(fn, params: GMMParams, X, observed,
                 options: chunks.ChunkOptions | None = None):
  """``fn(xb, ob)`` over row pieces of bounded memory, concatenated."""
  n = X.shape[0]
  return chunks.map_chunks(
      fn, n, piece_size(params, n, X.dtype, options), X, observed)
