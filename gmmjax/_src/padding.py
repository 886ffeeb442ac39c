"""Sample counts rounded up to a ladder: nearby sizes share one program.

JAX compiles a program per input shape, so every new number of samples (a
cross-validation fold, a train/test split, 999 rows instead of 1,000) costs
a compile, which for a small fit is most of its time. Rows of weight 0
change no statistic, no gradient and no result, so data padded with them to
:func:`gmmjax._src.compiling.ladder_size` rows fit exactly as the unpadded
data do, in a program shared by every count of the same rung.

The estimator, ``select_n_components`` and the command line pad their
samples; in the functional API it is the caller's explicit choice
(:func:`pad_samples`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gmmjax._src import compiling

# Data larger than this many entries keep their exact shape: their compile
# is a small part of their fit, and padding would copy them.
PAD_MAX_ENTRIES = 1 << 24
MIN_ROWS = 16


def padded_rows(n_samples: int, n_features: int) -> int:
  """Rows the estimator computes with for ``(n_samples, n_features)`` data."""
  if n_samples * max(n_features, 1) > PAD_MAX_ENTRIES:
    return n_samples
  return compiling.ladder_size(n_samples, MIN_ROWS)


def pad_samples(X, sample_weight=None, *, n_rows: int | None = None):
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
