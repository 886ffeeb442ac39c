"""The estimator's ``nan_policy``: NaN entries as missing values (host side).

``"raise"`` (the default, scikit-learn's behaviour) refuses NaN;
``"marginalize"`` treats NaN entries as missing at random: the data go to
the compiled programs with the missing entries filled (by the observed
column means, which is also what initialisation sees) and a boolean mask of
the observed ones, which the functional layer's ``observed=`` argument
takes. Rows without any observed entry, and features never observed, are
refused here, before anything compiles.
"""

from __future__ import annotations

import numpy as np

NAN_POLICIES = ("raise", "marginalize")


def split_missing(X, nan_policy: str):
  """``(X, observed)``: ``X`` with NaN filled by column means and the mask
  of observed entries, or ``(X, None)`` when nothing is missing (or the
  policy is ``"raise"``, whose checks then refuse NaN as before)."""
  if nan_policy != "marginalize":
    return X, None
  try:
    if hasattr(X, "to_numpy"):  # DataFrames: bool columns, pandas' NA
      arr = X.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
      arr = np.asarray(X)
      if arr.dtype == object:  # numbers stored as objects (None is NaN)
        arr = arr.astype(np.float64)
  except (TypeError, ValueError):
    return X, None  # check_array says why
  if arr.dtype.kind not in "fc" or arr.ndim != 2:
    return X, None
  missing = np.isnan(arr)
  if not missing.any():
    return X, None
  empty_rows = np.flatnonzero(missing.all(axis=1))
  if empty_rows.size:
    raise ValueError(
        f"nan_policy='marginalize' needs at least one observed entry per "
        f"row, but {empty_rows.size} row(s) of X are all NaN (e.g. row "
        f"{int(empty_rows[0])}): drop them, they carry no information.")
  observed = ~missing
  counts = observed.sum(axis=0)
  never = np.flatnonzero(counts == 0)
  if never.size:
    raise ValueError(
        f"Feature(s) {never.tolist()} of X are never observed (all NaN): "
        f"their distribution cannot be estimated; drop those columns.")
  means = np.where(observed, arr, 0.0).sum(axis=0) / counts
  return np.where(observed, arr, means[None, :]).astype(arr.dtype), observed


def pad_observed(observed, n_rows: int):
  """The mask padded with all-observed rows to ``n_rows`` (None stays)."""
  if observed is None:
    return None
  pad = np.ones((n_rows - observed.shape[0], observed.shape[1]), bool)
  return np.concatenate([observed, pad], axis=0)
