"""Packed second-moment features of full covariances.

The ``D (D + 1) / 2`` distinct products ``x_i x_j`` of a sample, laid out
so that one GEMM ``rw^T @ [x, packed(x x^T)]`` gives a chunk's first and
second moments, and the expanded quadratic form of float64 distances reads
the same features.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def packed_index(n_features: int):
  """Index pairs of the packed second-moment columns and the map back.

  The packing is by wrapped diagonals: column ``s * D + i`` holds
  ``x_i * x_((i + s) mod D)`` for ``s = 0 .. D // 2``. For odd ``D`` every
  unordered pair appears once (``D (D + 1) / 2`` columns); for even ``D``
  the last diagonal holds each of its ``D / 2`` pairs twice, and the second
  copy gets multiplicity 0.

  Returns:
    ``(iu, ju, mult, back)``: the pair of each column, how many times the
    column counts in a symmetric quadratic form (1 diagonal, 2 off-diagonal,
    0 duplicate), and the ``(D, D)`` column of each matrix entry.
  """
  d = n_features
  shifts = np.arange(d // 2 + 1)[:, None]
  rows = np.arange(d)[None, :]
  iu = np.broadcast_to(rows, (shifts.size, d)).ravel()
  ju = ((rows + shifts) % d).ravel()
  mult = np.where(iu == ju, 1.0, 2.0)
  if d % 2 == 0 and d > 0:
    mult[(d // 2) * d + d // 2:] = 0.0  # pairs (i, i + D/2), i >= D/2: copies
  keep = mult > 0
  cols = np.arange(iu.size)
  back = np.zeros((d, d), np.int32)
  back[iu[keep], ju[keep]] = cols[keep]
  back[ju[keep], iu[keep]] = cols[keep]
  return iu, ju, mult, back


def n_moment_features(n_features: int) -> int:
  """Width of :func:`moment_features` for full covariances."""
  return n_features * (n_features // 2 + 2)


def diagonal_windows(xc, with_ones: bool):
  """``(n, S, D)`` factors whose product with ``xc`` is the packed outer.

  Window ``s`` is ``xc`` rotated left by ``s`` columns (a slice of
  ``[xc, xc]``); ``with_ones`` puts a window of ones first, so the product's
  first ``D`` columns are ``xc`` itself.
  """
  d = xc.shape[-1]
  x2 = jnp.concatenate([xc, xc], axis=1)
  windows = [x2[:, s:s + d] for s in range(d // 2 + 1)]
  if with_ones:
    windows.insert(0, jnp.ones_like(xc))
  return jnp.stack(windows, axis=1)


def packed_outer(xc):
  """Products ``x_i x_j`` of each row, packed as :func:`packed_index` says.

  One broadcast product of ``D // 2 + 1`` rotated copies of the rows with
  the rows: uniform slabs that XLA fuses into one loop, where rows of the
  upper triangle (``x_i * x[i:]``, concatenated) make ``D`` slices of
  different widths and measured slower (benchmarks/README.md, "Figures
  behind the kernels' defaults").
  """
  n, d = xc.shape
  return (diagonal_windows(xc, False) * xc[:, None, :]).reshape(n, -1)



def packed_features(xc):
  """``[x, packed(x x^T)]`` of each row: :func:`n_moment_features` wide."""
  n, _ = xc.shape
  return (diagonal_windows(xc, True) * xc[:, None, :]).reshape(n, -1)


def split_packed(summed, n_features: int):
  """``(sx, sxx)`` from ``rw^T @ packed_features(...)``: ``(K, D)`` and
  ``(K, D, D)``."""
  d = n_features
  return summed[:, :d], summed[:, d:][:, packed_index(d)[3]]
