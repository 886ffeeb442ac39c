"""Sample counts rounded up to a ladder: nearby sizes share one program.

JAX compiles a program per input shape, so every new number of samples (a
cross-validation fold, a train/test split, 999 rows instead of 1,000) costs
a compile, which for a small fit is most of its time. Rows of weight 0
change no statistic, no gradient and no result, so data padded with them to
the ladder's sizes (``compiling.ladder_size``) fit exactly as the unpadded
data do, in a program shared by every count of the same rung.

The estimator, ``select_n_components`` and the command line pad their
samples; in the functional API it is the caller's explicit choice
(:func:`pad_samples`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gmmjax._src import compiling, covariance

# Data larger than this many entries keep their exact shape: their compile
# is a small part of their fit, and padding would copy them.
PAD_MAX_ENTRIES = 1 << 24
MIN_ROWS = 16
# Small data pad to a power of two instead of the ladder's next size: where
# a fit runs in milliseconds and a compile takes a second, up to half the
# rows may be padding, and cross-validation folds and the refit on all the
# rows (400 and 500 rows: 512) share one program. Only while the padded
# data stay within this many entries (4,096 rows of 2 features).
POWER_OF_TWO_MAX_ENTRIES = 1 << 13
# Beyond this many entries an iteration costs milliseconds and the coarse
# ladder's padding (up to 1/8 of the rows) is paid on every one of them:
# 100,000 x 16 padded to 106,496 rows, 6.5% more work per iteration. There
# the ladder has 64 rungs per doubling (at most 1/64 of the rows padding);
# cross-validation folds of one size still share their program. The switch
# is at a power of two, a rung of both ladders, so sizes never decrease.
FINE_LADDER_MIN_ENTRIES = 1 << 18
FINE_LADDER_BITS = 7


def padded_rows(n_samples: int, n_features: int) -> int:
  """Rows the estimator computes with for ``(n_samples, n_features)`` data:
  the next power of two for small data, else the ladder's next size (a
  finer ladder beyond :data:`FINE_LADDER_MIN_ENTRIES`), the count itself
  beyond :data:`PAD_MAX_ENTRIES`."""
  d = max(n_features, 1)
  if n_samples * d > PAD_MAX_ENTRIES:
    return n_samples
  power = max(MIN_ROWS, 1 << (int(n_samples) - 1).bit_length())
  if power * d <= POWER_OF_TWO_MAX_ENTRIES:
    return power
  # The largest power of two of rows within FINE_LADDER_MIN_ENTRIES.
  coarse_max = 1 << (max(FINE_LADDER_MIN_ENTRIES // d, 1).bit_length() - 1)
  if n_samples > coarse_max:
    return compiling.ladder_size(n_samples, MIN_ROWS, FINE_LADDER_BITS)
  return compiling.ladder_size(n_samples, MIN_ROWS)


def pad_samples(X, *, sample_weight=None, n_rows: int | None = None):
  """``(X, sample_weight)`` with rows of weight 0 appended.

  Every ``gmmjax`` function that takes ``sample_weight`` gives the same
  result (up to the order of float sums) on the padded data, and programs
  compiled for one padded size serve every sample count that pads to it:
  pass the padded pair to ``fit``, ``init_params`` (k-means, k-means++,
  random and random_from_data draw no padding row and the same rows), and
  evaluate with the padded data, dropping the padding rows from per-sample
  outputs (``log_prob(params, Xp)[:n]``).

  Args:
    X: ``(N, D)`` samples, NumPy or JAX.
    sample_weight: optional ``(N,)`` weights (all 1 when omitted).
    n_rows: rows to pad to (at least ``N``); by default the next size of
      the ladder (``m * 2**e`` with ``m`` in 8..15, at least 16), so at
      most 1/8 of the work is padding.

  Returns:
    ``(X_padded, weights_padded)``: the padding rows repeat the first
    sample (so every intermediate stays finite) with weight 0. NumPy input
    gives NumPy output.

  Example:
    >>> import numpy as np, gmmjax as gx
    >>> X = np.random.default_rng(0).normal(size=(999, 2))
    >>> Xp, wp = gx.pad_samples(X)
    >>> Xp.shape, float(wp.sum())
    ((1024, 2), 999.0)
  """
  xp = np if isinstance(X, np.ndarray) else jnp
  n = X.shape[0]
  if X.ndim != 2 or n < 1:
    raise ValueError(f"X should be a non-empty (n_samples, n_features) "
                     f"array, got shape {X.shape}.")
  target = compiling.ladder_size(n, MIN_ROWS) if n_rows is None else n_rows
  if target < n:
    raise ValueError(f"n_rows={target} is below the {n} samples.")
  w = (xp.ones(n, X.dtype) if sample_weight is None
       else xp.asarray(sample_weight, X.dtype))
  if target == n:
    return X, w
  extra = target - n
  X = xp.concatenate([X, xp.broadcast_to(X[:1], (extra, X.shape[1]))])
  return X, xp.concatenate([w, xp.zeros(extra, X.dtype)])


# Component slots: a small problem's fit and evaluation programs are
# compiled for a power of two of at least SLOTS_MIN components, of which the
# model's own are active and the others held at weight 0
# (stats.mask_components), so a sweep over n_components (1..8 here) shares
# one program instead of compiling one per count (and, where the full
# type's slots fit the budget, the four covariance types share it too:
# type_switch.py).
# Only where the extra slots cost little: at most SLOTS_MAX_ENTRIES entries
# of the E-step's (rows x slots x features [x features]) work. At 4 times
# that, the slots' extra work cost more than the compiles they save
# (benchmarks/README.md, "Figures behind the kernels' defaults"), so
# larger problems keep their exact count.
SLOTS_MIN = 8
SLOTS_MAX_ENTRIES = 1 << 18


def component_slots(n_components: int, n_rows: int, n_features: int,
                    covariance_type: str) -> int | None:
  """Slots to fit or evaluate ``n_components`` in, or None for exactly them.

  Any ``reg_covar``: the M-step factorises an empty slot as the unit
  (``stats.params_and_jitter_from_stats``' mask), so even at
  ``reg_covar=0`` it needs no jitter.
  """
  if covariance_type == "lowrank":  # fitted in exactly its components
    return None
  slots = max(SLOTS_MIN, 1 << (int(n_components) - 1).bit_length())
  matrix = covariance.get(covariance_type).is_matrix
  per_slot = n_features * (n_features if matrix else 1)
  if n_rows * slots * per_slot > SLOTS_MAX_ENTRIES:
    return None
  return slots


def unit_covariance(covariance_type: str, n_features: int):
  """One extra slot's covariance (and precision, and factor): the unit; None
  for tied, whose covariance is shared and gets no slot."""
  return covariance.get(covariance_type).unit_slot(n_features)


def grow_components(a, n_slots: int, fill):
  """NumPy ``a`` (components first) with rows of ``fill`` up to ``n_slots``."""
  a = np.asarray(a)
  return np.concatenate([a, np.broadcast_to(
      np.asarray(fill, a.dtype), (n_slots - a.shape[0],) + a.shape[1:])])


def pad_components(weights, means, covariances, precisions_cholesky,
                   covariance_type: str, n_slots: int):
  """NumPy parameters with slots of weight 0 and unit covariance appended
  (a tied covariance is shared: unchanged)."""
  if n_slots == weights.shape[0]:
    return weights, means, covariances, precisions_cholesky
  unit = unit_covariance(covariance_type, means.shape[1])
  weights = grow_components(weights, n_slots, 0.0)
  means = grow_components(means, n_slots, 0.0)
  if unit is not None:
    covariances = grow_components(covariances, n_slots, unit)
    precisions_cholesky = grow_components(precisions_cholesky, n_slots, unit)
  return weights, means, covariances, precisions_cholesky


def pad_posterior(post, n_slots: int):
  """A NumPy posterior (``BayesParams``) with ``n_slots`` components: the
  extra ones finite (unit scale, ``D`` degrees of freedom, concentrations
  1), for a program that masks them out (``bayes_params``' ``mask``)."""
  k, d = post.means.shape
  if n_slots == k:
    return post
  unit = unit_covariance(post.covariance_type, d)
  wc = np.asarray(post.weight_concentration)
  wc = (grow_components(wc.T, n_slots, 1.0).T if wc.ndim == 2
        else grow_components(wc, n_slots, 1.0))
  dof, cov, prec = (post.degrees_of_freedom, post.covariances,
                    post.precisions_cholesky)
  if unit is not None:
    dof = grow_components(dof, n_slots, float(d))
    cov = grow_components(cov, n_slots, unit)
    prec = grow_components(prec, n_slots, unit)
  return post.replace(
      weight_concentration=wc,
      mean_precision=grow_components(post.mean_precision, n_slots, 1.0),
      means=grow_components(post.means, n_slots, 0.0),
      degrees_of_freedom=dof, covariances=cov, precisions_cholesky=prec)


def unpad_components(params, n_components: int):
  """The first ``n_components`` of slotted params or a slotted posterior
  (``BayesParams``; tied: shared, kept).

  Works on batched params too (a leading restart axis).
  """
  # The means' component axis: a posterior's weights are computed.
  if params.means.shape[-2] == n_components:
    return params
  # Axes after the component axis: those of one slot's covariance.
  unit = unit_covariance(params.covariance_type, params.means.shape[-1])

  def cut(a, after):
    return a[(Ellipsis, slice(0, n_components)) + (slice(None),) * after]

  cov, prec = params.covariances, params.precisions_cholesky
  if unit is not None:
    cov, prec = cut(cov, unit.ndim), cut(prec, unit.ndim)
  if hasattr(params, "weight_concentration"):  # a Bayesian posterior
    dof = params.degrees_of_freedom  # tied: one, shared
    return params.replace(
        weight_concentration=cut(params.weight_concentration, 0),
        mean_precision=cut(params.mean_precision, 0),
        means=cut(params.means, 1),
        degrees_of_freedom=dof if unit is None else cut(dof, 0),
        covariances=cov, precisions_cholesky=prec)
  return params.replace(weights=cut(params.weights, 0),
                        means=cut(params.means, 1), covariances=cov,
                        precisions_cholesky=prec)
