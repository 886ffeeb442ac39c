"""Sufficient statistics: the spine every EM variant shares.

The E-step reduces a batch of samples to per-component sums; the M-step reads
only those sums. Full-batch, chunked, sharded and online EM differ only in how
the sums are added up (a Python loop over chunks, a ``psum`` across devices,
a running average), so they all call :func:`e_step_stats` and
:func:`params_from_stats`.

Second moments are accumulated around a shift, never around zero, so float32
does not cancel catastrophically on data far from the origin: one point
``c`` (:func:`mixture_mean`, the default) or, as the fits pass, one per
component, the current means (:func:`component_shift`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import (
    chunks,
    kernels,
    missing,
    missing_slots,
    moments,
    moments_lowrank,
    type_switch,
)
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams
from gmmjax._src.reductions import any_in_batch, logsumexp_small


class SuffStats(NamedTuple):
  """Additive sufficient statistics of a (weighted) batch of samples.

  Every field is a sum over samples, so statistics of disjoint batches add
  (``jax.tree.map(jnp.add, a, b)``, or ``lax.psum`` across devices) as long
  as they were computed around the same ``shift``.
  """

  count: jax.Array  # shape=(), sum of sample weights
  nk: jax.Array  # shape=(K,), sum_i w_i r_ik
  sx: jax.Array  # shape=(K, D), sum_i w_i r_ik (x_i - c)
  sxx: jax.Array  # full (K, D, D) | tied (D, D) | diag (K, D) | spherical (K,)
  log_likelihood: jax.Array  # shape=(), sum_i w_i log p(x_i)


def mixture_mean(params: GMMParams):
  """``sum_k w_k mu_k``: the shift used for second moments (gradient-stopped)."""
  return lax.stop_gradient(mm.matmul(params.weights, params.means))


def component_shift(params: GMMParams):
  """Per-component shifts ``(K, D)``: the current means (gradient-stopped).

  Second moments around each component's own current mean do not cancel:
  ``Sigma_k = S_k / N_k - d_k d_k^T`` with ``d_k`` the (small) move of the
  mean. Around one global shift ``c`` the subtraction loses about
  ``eps * |mu_k - c|^2`` absolutely, which in float32 exceeds the variance
  of a tight or nearly singular component (e.g. 23 points in 32
  dimensions) and makes its covariance indefinite. Pass this as ``shift``
  to :func:`e_step_stats` and :func:`params_from_stats`.
  """
  return lax.stop_gradient(params.means)


def weighted_log_prob(params: GMMParams, X,
                      chunking: chunks.ChunkOptions | None = None,
                      observed=None, slots: int | None = None):
  """``log w_k + log N(x_i | k)``, shape ``(N, K)`` (computed in chunks).

  With ``observed`` (``(N, D)`` bools), the density of each sample's
  observed coordinates (:mod:`gmmjax._src.missing`).
  """
  if observed is not None:
    return _masked_log_prob(params, X, observed, chunking, slots)
  return (kernels.log_gaussian_prob(X, params.means,
                                    params.precisions_cholesky,
                                    params.covariance_type, chunking)
          + jnp.log(params.weights)[None, :])


def _block_stats(params: GMMParams, xb, wb, shift, temperature,
                 chunking: chunks.ChunkOptions | None) -> SuffStats:
  """Fused E-step and statistics of one chunk of samples.

  ``xb`` is ``(n, D)``; ``wb`` ``(n,)`` weights or ``None``. The fast forms
  are GEMMs on samples translated by one centre; where their own error
  estimate says a chunk lost digits (a narrow component far from the centre,
  in float32 or float64), that chunk's distances and second moments are
  recomputed from per-component differences (see
  :func:`gmmjax._src.kernels.guarded_mahalanobis` and
  :func:`gmmjax._src.moments.guarded_moments`).
  """
  ct = cov_lib.get(params.covariance_type)
  d = xb.shape[-1]
  per_component = shift.ndim == 2
  # The E-step's forms are translation invariant: centre them on one point.
  centre = lax.stop_gradient(jnp.mean(shift, axis=0) if per_component
                             else shift)
  prec_chol = params.precisions_cholesky
  maha = kernels.guarded_mahalanobis(xb, centre, params.means, prec_chol,
                                     ct, chunking)
  log_det = ct.log_det(prec_chol, d)
  wlp = (-0.5 * (d * math.log(2 * math.pi) + maha) + log_det
         + jnp.log(params.weights)[None, :])
  rw, count, ll = _weighted_resp(wlp, wb, temperature)
  if ct.moments_need_factors:
    sx, sxx = moments_lowrank.block_moments(xb, rw, shift, centre, params,
                                            chunking)
  elif per_component and chunks.use_direct(xb.shape[0], *shift.shape,
                                           chunking):
    sx, sxx = moments.component_moments(xb, rw, shift, ct)
  else:
    sx, sxx = ct.centred_moments(xb - centre, rw)
    if per_component:
      sx, sxx = moments.guarded_moments(xb, rw, shift, centre, sx, sxx,
                                        params.covariances, ct, chunking)
  return SuffStats(count=count, nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
                   log_likelihood=ll)


def _weighted_resp(wlp, wb, temperature):
  """``(r_ik w_i, sum w_i, sum w_i log p(x_i))`` of one chunk."""
  log_norm = logsumexp_small(wlp, axis=1)
  if temperature is None:
    resp = jnp.exp(wlp - log_norm[:, None])
  else:
    resp = jax.nn.softmax(wlp / temperature, axis=1)
  if wb is None:
    return (resp, jnp.asarray(wlp.shape[0], wlp.dtype), jnp.sum(log_norm))
  return resp * wb[:, None], jnp.sum(wb), jnp.sum(wb * log_norm)


def _masked_stats(params: GMMParams, X, ob, w, shift, temperature, chunking,
                  slots) -> SuffStats:
  """Statistics of samples with missing entries, in pieces of bounded
  memory. Each piece takes the kernel its most-missing row needs
  (``missing.branch_index``): the complete-data block where nothing is
  missing (the same numbers as without a mask), else the masked kernel of
  the smallest slot count that holds that row (:func:`_masked_piece`)."""
  size = missing.piece_size(params, X.shape[0], X.dtype, chunking)
  sizes = missing.slot_sizes(params.covariance_type, X.shape[1], slots,
                             one_piece=size >= X.shape[0])
  branches = [functools.partial(_complete_piece, params, shift, temperature,
                                chunking)]
  for m in sizes:
    part = missing.slot_rows(params, m, size, X.dtype, chunking)
    branches.append(functools.partial(
        chunks.sum_chunks, functools.partial(
            _masked_piece, params, shift, temperature, m, chunking), size,
        part))

  def piece(xb, ob, wb):
    # Missing entries zeroed piece by piece (NaN is fine): a whole-data
    # copy per iteration otherwise.
    return lax.switch(missing.branch_index(ob, sizes), branches,
                      missing.fill(xb, ob), ob, wb)

  X, ob, w = missing.pad_to_pieces(size, X, ob, w)
  return chunks.sum_chunks(piece, X.shape[0], size, X, ob, w)


def _complete_piece(params, shift, temperature, chunking, xb, ob, wb):
  del ob
  return _block_stats(params, xb, wb, shift, temperature, chunking)


def _masked_piece(params, shift, temperature, m: int, chunking, xb, ob, wb):
  """The statistics of one piece whose rows miss at most ``m`` entries.

  Full/tied: the moments of the completed rows by GEMMs around the centre
  (``missing_slots.slot_centred_moments``), moved to per-component shifts;
  where ``moments.moved_moments`` says the move lost digits, the exact
  per-component form (``missing.moments``), from the same E-step terms.
  Diag/spherical, and pieces small enough for the complete data's exact
  forms (``chunks.use_direct``: no gain from GEMMs, half the compile):
  that form.
  """
  per_component = shift.ndim == 2
  centre = lax.stop_gradient(jnp.mean(shift, axis=0) if per_component
                             else shift)
  log_gauss, terms = missing.observed_terms(params, xb, ob, m, centre)
  rw, count, ll = _weighted_resp(
      log_gauss + jnp.log(params.weights)[None, :], wb, temperature)

  def exact():
    return missing.moments(params, rw, xb, ob, terms, shift)

  if (not cov_lib.get(params.covariance_type).is_matrix
      or chunks.use_direct(xb.shape[0], *params.means.shape, chunking)):
    sx, sxx = exact()
  else:
    a = jnp.where(ob, xb - centre[None, :], 0.0)
    sx, sxx = missing_slots.slot_centred_moments(params, rw, a, terms, centre)
    if per_component:
      sx, sxx, bad = moments.moved_moments(rw, shift, centre, sx, sxx,
                                           params.covariances,
                                           params.covariance_type)
      sx, sxx = lax.cond(any_in_batch(bad), exact, lambda: (sx, sxx))
  return SuffStats(count=count, nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
                   log_likelihood=ll)


def _masked_log_prob(params: GMMParams, X, ob, chunking, slots):
  """``log w_k + log N(x_O | k)`` ``(N, K)`` of samples with missing
  entries, piece by piece as :func:`_masked_stats`."""
  log_w = jnp.log(params.weights)[None, :]
  centre = lax.stop_gradient(jnp.mean(params.means, axis=0))

  def masked(m):
    def run(xb, ob):
      return missing.observed_terms(params, xb, ob, m, centre)[0] + log_w
    return run

  def complete(xb, ob):
    del ob
    return kernels.log_gaussian_prob(xb, params.means,
                                     params.precisions_cholesky,
                                     params.covariance_type, chunking) + log_w

  n = X.shape[0]
  size = missing.piece_size(params, n, X.dtype, chunking)
  sizes = missing.slot_sizes(params.covariance_type, X.shape[1], slots,
                             one_piece=size >= n)
  branches = [complete] + [functools.partial(
      chunks.map_chunks, masked(m), size,
      missing.slot_rows(params, m, size, X.dtype, chunking)) for m in sizes]
  X, ob, _ = missing.pad_to_pieces(size, X, ob, None)
  return chunks.map_chunks(
      lambda xb, ob: lax.switch(missing.branch_index(ob, sizes), branches,
                                missing.fill(xb, ob), ob),
      X.shape[0], size, X, ob)[:n]


def stats_from_resp(X, resp, *, sample_weight=None, shift,
                    covariance_type: str, log_prob_norm=None) -> SuffStats:
  """Statistics of samples ``X`` with responsibilities ``resp`` ``(N, K)``.

  ``shift`` is ``(D,)`` (one centre) or ``(K, D)`` (one per component, the
  cancellation-free choice; see :func:`component_shift`).
  """
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  rw = resp * w[:, None]
  ll = (jnp.zeros((), X.dtype) if log_prob_norm is None
        else jnp.sum(w * log_prob_norm))
  if jnp.ndim(shift) == 2:
    sx, sxx = moments.chunked_component_moments(X, rw, shift,
                                                covariance_type)
  else:
    xc = X - shift
    sx = mm.matmul(rw.T, xc)
    sxx = moments.second_moments(xc, rw, covariance_type)
  return SuffStats(count=jnp.sum(w), nk=jnp.sum(rw, axis=0), sx=sx, sxx=sxx,
                   log_likelihood=ll)


@functools.partial(jax.jit, static_argnames=("chunking", "slots"))
def e_step_stats(params: GMMParams, X, *, sample_weight=None, shift=None,
                 temperature=None,
                 chunking: chunks.ChunkOptions | None = None,
                 observed=None, slots: int | None = None) -> SuffStats:
  """Fused E-step: responsibilities of ``X`` reduced to statistics.

  The samples are processed in chunks (``lax.scan`` over ``dynamic_slice``
  windows of ``X``, sized by the memory budget of ``chunking``):
  each chunk's responsibilities are reduced to statistics at once, so no
  ``(N, K)`` or ``(N, K, D)`` array is ever materialised and peak memory is
  the data plus a few megabytes. The per-chunk work is two large GEMMs
  (whitening for full covariances, ``rw^T @ [x, moments(x)]``).

  Args:
    params: current parameters.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` non-negative weights.
    shift: centre of the second moments: ``(D,)`` one point, or ``(K, D)``
      one per component (cancellation-free in float32, see
      :func:`component_shift`). Defaults to :func:`mixture_mean`. Batches
      whose statistics will be added must share it.
    temperature: optional positive scalar; responsibilities become
      ``softmax(log(w_k N_k(x)) / temperature)`` (1 is plain EM).
    chunking: chunk sizes and memory budgets (a hashable
      :class:`gmmjax.ChunkOptions`, static); ``None`` for the measured
      defaults.
    observed: optional ``(N, D)`` boolean mask, True where an entry of
      ``X`` was observed: the others are missing at random (their values
      are ignored). Responsibilities and ``log_likelihood`` then come from
      each sample's observed marginal, and ``sx``, ``sxx`` are the expected
      statistics of the completed samples (conditional means of the missing
      entries, conditional covariances added to the second moments).
    slots: with ``observed`` (static), at least the most entries any row
      misses (``None``: ``D``, always enough; :func:`fit` passes the
      smallest power of two that is): the largest missing block full and
      tied covariances factorise. Rows sorted by their number of missing
      entries (as :func:`fit` sorts them) make the statistics cheaper: each
      piece of rows factorises the blocks of its most-missing row.

  Returns:
    :class:`SuffStats` whose ``log_likelihood`` is ``sum_i w_i log p(x_i)``.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[-1.0], [1.0]]),
    ...                    jnp.array([1.0, 1.0]), covariance_type="spherical")
    >>> s = gx.e_step_stats(p, jnp.array([[-1.0], [1.0], [3.0]]))
    >>> float(s.count), s.nk.shape, s.sxx.shape
    (3.0, (2,), (2,))
  """
  if shift is None:
    shift = mixture_mean(params)
  n, d = X.shape
  chunk = chunks.chunk_size(n, params.means.shape[0], d,
                            params.covariance_type, X.dtype, options=chunking)
  if observed is not None:
    missing.check_type(params.covariance_type)
    observed = missing.as_observed(observed, X)
    return _masked_stats(params, X, observed, sample_weight, shift,
                         temperature, chunking, slots)
  arrays = (X,) if sample_weight is None else (X, sample_weight)
  return chunks.sum_chunks(
      lambda xb, wb=None: _block_stats(params, xb, wb, shift, temperature,
                                       chunking),
      n, chunk, *arrays)


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def params_from_stats(stats: SuffStats, shift, *, covariance_type: str,
                      reg_covar) -> GMMParams:
  """The M-step: new parameters from statistics (no data needed).

  ``shift`` is the one the statistics were computed around: ``(D,)`` or
  ``(K, D)``.

  Empty components get scikit-learn's floor (``10 * eps`` added to ``N_k``):
  their mean falls back to the shift and their covariance to ``reg_covar``,
  so the parameters stay finite. A full/tied covariance that is not positive
  definite up to rounding gets the smallest diagonal jitter that makes it so
  (:func:`gmmjax.cholesky_jitter`); :func:`params_and_jitter_from_stats`
  reports it.
  """
  return params_and_jitter_from_stats(stats, shift, covariance_type,
                                      reg_covar)[0]


def params_and_jitter_from_stats(stats: SuffStats, shift,
                                 covariance_type: str, reg_covar,
                                 structure=None, mask=None):
  """:func:`params_from_stats` and the largest jitter it added (a scalar).

  ``structure`` (a traced ``type_switch.CODES`` value, with full
  statistics): the full covariances projected onto that type's structure.
  ``mask`` (component slots, :func:`mask_components`): the inactive slots
  get the unit covariance before they are factorised, so that an empty
  slot (covariance 0 with ``reg_covar=0``) needs and reports no jitter.
  """
  dtype = stats.sx.dtype
  nk = stats.nk + 10 * jnp.finfo(dtype).eps
  weights = nk / jnp.sum(nk)
  ct = cov_lib.get(covariance_type)
  if structure is None:
    diff, covariances = ct.m_step(nk, stats.sx, stats.sxx, reg_covar)
  else:
    diff = stats.sx / nk[:, None]
    covariances = type_switch.estimate(nk, diff, stats.sxx, reg_covar,
                                       structure)
  shift = jnp.asarray(shift, dtype)
  means = (shift if shift.ndim == 2 else shift[None, :]) + diff
  if mask is not None:
    covariances = unit_where_inactive(covariances, covariance_type, mask)
  covariances, prec_chol, jitter = ct.precision_cholesky_jittered(covariances)
  return (GMMParams(weights, means, covariances, prec_chol, covariance_type),
          jitter)


def add_stats(a: SuffStats, b: SuffStats) -> SuffStats:
  """Statistics of the union of two disjoint batches (same shift)."""
  return jax.tree.map(jnp.add, a, b)


def unit_where_inactive(covariances, covariance_type: str, mask):
  """``covariances`` with the unit covariance in the slots where ``mask``
  is False (tied: unchanged, inactive slots add exactly 0 to it)."""
  return cov_lib.get(covariance_type).mask_inactive(
      covariances, covariances, mask)[0]


def mask_components(params: GMMParams, nk, mask) -> GMMParams:
  """Zero weight and a harmless unit covariance for the inactive slots.

  Component slots beyond a fit's ``k`` (``mask`` False) keep weight exactly
  0, so their log-weight is ``-inf`` and their responsibilities and
  statistics are exactly 0: they never wake up.

  ``nk`` are the M-step's component masses (the active ones are the same
  masses, floor included, that an unpadded fit would see), so the active
  weights equal the unpadded fit's weights.
  """
  ctype = params.covariance_type
  dtype = params.means.dtype
  nk = nk + 10 * jnp.finfo(dtype).eps  # params_from_stats' floor
  nk = jnp.where(mask, nk, 0.0)
  weights = nk / jnp.sum(nk)
  # The active slots keep their factors: refactorising a covariance the
  # M-step repaired with a jitter can round differently and fail. The
  # inactive ones get the unit covariance, whose factor is the unit too.
  # Tied: one shared covariance; inactive slots add exactly 0 to it.
  cov, prec_chol = cov_lib.get(ctype).mask_inactive(
      params.covariances, params.precisions_cholesky, mask)
  return params.replace(weights=weights, covariances=cov,
                        precisions_cholesky=prec_chol)
