"""Sufficient statistics: the spine every EM variant shares.

The E-step reduces a batch of samples to per-component sums; the M-step reads
only those sums. Full-batch, chunked, sharded and online EM differ only in how
the sums are added up (a Python loop over chunks, a ``psum`` across devices,
a running average), so they all call :func:`e_step_stats` and
:func:`params_from_stats`.

Second moments are accumulated around a common shift ``c`` (the mixture mean
of the current parameters), never around zero, so float32 does not cancel
catastrophically on data far from the origin.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import covariance as cov_ops
from gmmjax._src.params import GMMParams


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
  return lax.stop_gradient(params.weights @ params.means)


def weighted_log_prob(params: GMMParams, X):
  """``log w_k + log N(x_i | k)``, shape ``(N, K)``."""
  return (cov_ops.log_gaussian_prob(X, params.means,
                                    params.precisions_cholesky,
                                    params.covariance_type)
          + jnp.log(params.weights)[None, :])


def stats_from_resp(X, resp, sample_weight, shift, covariance_type: str,
                    log_prob_norm=None) -> SuffStats:
  """Statistics of samples ``X`` with responsibilities ``resp`` ``(N, K)``."""
  w = jnp.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
  rw = resp * w[:, None]
  xc = X - shift
  ll = (jnp.zeros((), X.dtype) if log_prob_norm is None
        else jnp.sum(w * log_prob_norm))
  return SuffStats(
      count=jnp.sum(w),
      nk=jnp.sum(rw, axis=0),
      sx=rw.T @ xc,
      sxx=cov_ops.second_moments(xc, rw, covariance_type),
      log_likelihood=ll)


def e_step_stats(params: GMMParams, X, sample_weight=None, shift=None,
                 temperature=None) -> SuffStats:
  """Fused E-step: responsibilities of ``X`` reduced to statistics.

  Args:
    params: current parameters.
    X: ``(N, D)`` samples.
    sample_weight: optional ``(N,)`` non-negative weights.
    shift: ``(D,)`` centre for the second moments; defaults to the mixture
      mean of ``params``. Batches that will be added must share it.
    temperature: optional positive scalar; responsibilities become
      ``softmax(log(w_k N_k(x)) / temperature)`` (1 is plain EM).

  Returns:
    :class:`SuffStats` whose ``log_likelihood`` is ``sum_i w_i log p(x_i)``.
  """
  if shift is None:
    shift = mixture_mean(params)
  wlp = weighted_log_prob(params, X)
  log_norm = jax.nn.logsumexp(wlp, axis=1)
  if temperature is None:
    log_resp = wlp - log_norm[:, None]
  else:
    log_resp = jax.nn.log_softmax(wlp / temperature, axis=1)
  return stats_from_resp(X, jnp.exp(log_resp), sample_weight, shift,
                         params.covariance_type, log_norm)


def params_from_stats(stats: SuffStats, shift, covariance_type: str,
                      reg_covar) -> GMMParams:
  """The M-step: new parameters from statistics (no data needed).

  Empty components get scikit-learn's floor (``10 * eps`` added to ``N_k``):
  their mean falls back to the shift and their covariance to ``reg_covar``,
  so the parameters stay finite.
  """
  dtype = stats.sx.dtype
  nk = stats.nk + 10 * jnp.finfo(dtype).eps
  weights = nk / jnp.sum(nk)
  diff = stats.sx / nk[:, None]
  means = shift[None, :] + diff
  covariances = cov_ops.estimate_covariances(nk, diff, stats.sxx,
                                             covariance_type, reg_covar)
  prec_chol = cov_ops.precision_cholesky(covariances, covariance_type)
  return GMMParams(weights, means, covariances, prec_chol, covariance_type)


def add_stats(a: SuffStats, b: SuffStats) -> SuffStats:
  """Statistics of the union of two disjoint batches (same shift)."""
  return jax.tree.map(jnp.add, a, b)
