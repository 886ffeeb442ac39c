"""Plots of mixtures and fits (matplotlib is an optional extra).

Install it with ``pip install "gmmjax[plot]"``. Every function draws on a
given ``ax`` (or a new figure's) and returns the axes.
"""

from __future__ import annotations

import numpy as np


def _plt():
  try:
    import matplotlib
    matplotlib.use(matplotlib.get_backend() or "Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("gmmjax.plot needs matplotlib: pip install "
                      "'gmmjax[plot]'") from e
  return plt


def _axes(ax):
  if ax is None:
    _, ax = _plt().subplots()
  return ax


def _covariance_matrices(params) -> np.ndarray:
  """Covariances as ``(K, D, D)`` matrices whatever the type."""
  cov = np.asarray(params.covariances)
  k, d = np.asarray(params.means).shape
  ctype = params.covariance_type
  if ctype == "full":
    return cov
  if ctype == "tied":
    return np.broadcast_to(cov, (k, d, d))
  if ctype == "diag":
    return np.stack([np.diag(c) for c in cov])
  return cov[:, None, None] * np.eye(d)[None]


def plot_ellipses(params, X=None, labels=None, *, features=(0, 1),
                  n_std=(1, 2, 3), ax=None):
  """Component ellipses at ``n_std`` standard deviations over the data.

  Args:
    params: fitted :class:`gmmjax.GMMParams` (D >= 2).
    X: optional ``(N, D)`` data to scatter.
    labels: optional ``(N,)`` labels to colour the points.
    features: the two feature indices to show.
    n_std: radii of the ellipses in standard deviations.
    ax: matplotlib axes.
  """
  from matplotlib.patches import Ellipse
  ax = _axes(ax)
  i, j = features
  if X is not None:
    X = np.asarray(X)
    ax.scatter(X[:, i], X[:, j], c=labels, s=6, cmap="viridis", alpha=0.6)
  means = np.asarray(params.means)
  covs = _covariance_matrices(params)
  weights = np.asarray(params.weights)
  colors = _plt().cm.tab10(np.arange(len(means)) % 10)
  for k in range(len(means)):
    sub = covs[k][np.ix_([i, j], [i, j])]
    vals, vecs = np.linalg.eigh(sub)
    vals = np.maximum(vals, 0.0)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    for s in n_std:
      ax.add_patch(Ellipse(
          (means[k, i], means[k, j]), 2 * s * np.sqrt(vals[-1]),
          2 * s * np.sqrt(vals[0]), angle=angle, fill=False,
          color=colors[k], lw=1.5, alpha=max(0.25, 0.9 - 0.25 * s)))
    ax.plot(means[k, i], means[k, j], "x", color=colors[k], ms=8, mew=2)
    ax.annotate(f"w={weights[k]:.2f}", (means[k, i], means[k, j]),
                textcoords="offset points", xytext=(5, 5), fontsize=8)
  ax.set_xlabel(f"feature {i}")
  ax.set_ylabel(f"feature {j}")
  ax.autoscale_view()
  return ax


def plot_density_1d(params, X=None, *, feature=0, grid=None, ax=None):
  """Mixture density and weighted component densities along one feature."""
  ax = _axes(ax)
  means = np.asarray(params.means)[:, feature]
  var = np.array([c[feature, feature] for c in _covariance_matrices(params)])
  weights = np.asarray(params.weights)
  if grid is None:
    lo = np.min(means - 4 * np.sqrt(var))
    hi = np.max(means + 4 * np.sqrt(var))
    if X is not None:
      lo = min(lo, np.min(np.asarray(X)[:, feature]))
      hi = max(hi, np.max(np.asarray(X)[:, feature]))
    grid = np.linspace(lo, hi, 500)
  comp = weights[:, None] * np.exp(
      -0.5 * (grid[None] - means[:, None]) ** 2 / var[:, None]) / np.sqrt(
          2 * np.pi * var[:, None])
  if X is not None:
    ax.hist(np.asarray(X)[:, feature], bins=50, density=True, alpha=0.3,
            color="gray", label="data")
  for k in range(len(means)):
    ax.plot(grid, comp[k], "--", lw=1.2, label=f"component {k}")
  ax.plot(grid, comp.sum(0), "k-", lw=2, label="mixture")
  ax.set_xlabel(f"feature {feature}")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  return ax


def plot_log_likelihood(history, *, ax=None, label=None):
  """Mean log-likelihood per EM iteration (``FitResult.history`` or a list)."""
  ax = _axes(ax)
  history = np.asarray(getattr(history, "history", history), dtype=float)
  history = history[np.isfinite(history)]
  ax.plot(np.arange(1, len(history) + 1), history, "o-", ms=3, label=label)
  ax.set_xlabel("EM iteration")
  ax.set_ylabel("mean log-likelihood")
  if label is not None:
    ax.legend()
  return ax
