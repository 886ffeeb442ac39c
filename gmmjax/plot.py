"""Plots of mixtures and fits (matplotlib is an optional extra).

Install it with ``pip install "gmmjax[plot]"``. Every function draws on a
given ``ax`` (or a new figure's) and returns the axes. Where a function takes
``params``, a :class:`gmmjax.GMMParams` or a fitted
:class:`gmmjax.GaussianMixture` (through its ``params_``) will do. Component
``k`` has one colour everywhere (:func:`component_colors`): its ellipses,
its mean, its density curve and the points labelled ``k``.

* :func:`plot_ellipses`: component ellipses (1, 2, 3 sigma) over the data,
  for any two features.
* :func:`plot_pairs`: ellipses for every pair of features, densities on the
  diagonal.
* :func:`plot_density_1d`: the mixture density and its weighted components
  along one feature, over a histogram of the data.
* :func:`plot_log_likelihood`: the log-likelihood per EM iteration of a fit.
* :func:`plot_criterion`: BIC/AIC against the number of components, from
  :func:`gmmjax.select_n_components`.
"""

from __future__ import annotations

import numpy as np

from gmmjax import GMMParams


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


def _as_params(model) -> GMMParams:
  """``GMMParams`` from params or a fitted estimator (its ``params_``; an
  unfitted one raises ``NotFittedError``)."""
  if isinstance(model, GMMParams):
    return model
  if not hasattr(type(model), "params_"):
    raise TypeError(f"expected GMMParams or a fitted GaussianMixture, got "
                    f"{type(model).__name__}")
  return model.params_


def component_colors(n: int) -> np.ndarray:
  """``(n, 4)`` RGBA colours, one per component (or label value) ``k``.

  matplotlib's default colour cycle (``tab10``) for up to 10 components, so
  that lines drawn without a colour match; ``tab20`` up to 20; beyond, ``n``
  evenly spaced hues.

  Args:
    n: the number of colours.

  Returns:
    The colours, row ``k`` for component ``k``.

  Example:
    >>> from gmmjax.plot import component_colors
    >>> component_colors(3).shape
    (3, 4)
  """
  cm = _plt().cm
  k = np.arange(n)
  if n <= 10:
    return cm.tab10(k)
  if n <= 20:
    return cm.tab20(k)
  return cm.hsv(k / n)


def _label_colors(labels, n_components: int) -> np.ndarray:
  """Each point's colour: that of the component its label names. Other
  labels (strings, negative numbers) are numbered in sorted order."""
  labels = np.asarray(labels)
  if not (labels.dtype.kind in "iu" and labels.min(initial=0) >= 0):
    _, labels = np.unique(labels, return_inverse=True)
  labels = labels.reshape(-1)
  n = max(n_components, int(labels.max(initial=-1)) + 1)
  return component_colors(n)[labels]


def plot_ellipses(params, X=None, labels=None, *, features=(0, 1),
                  n_std=(1, 2, 3), ax=None):
  """Component ellipses at ``n_std`` standard deviations over the data.

  Each ellipse is the contour of the component's marginal Gaussian over the
  two chosen features at Mahalanobis radius ``s``: axes ``2 s sqrt(lambda)``
  along the eigenvectors of the 2 x 2 marginal covariance.

  Args:
    params: fitted :class:`gmmjax.GMMParams` or ``GaussianMixture`` (D >= 2).
    X: optional ``(N, D)`` data to scatter.
    labels: optional ``(N,)`` labels to colour the points, such as
      ``GaussianMixture.predict``'s: points labelled ``k`` take the colour
      of component ``k``'s ellipses.
    features: the two feature indices to show (any pair of ``range(D)``).
    n_std: radii of the ellipses in standard deviations.
    ax: matplotlib axes.

  Returns:
    The axes, with each component's ellipses (one per radius) and mean.

  Example:
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> from gmmjax.plot import plot_ellipses
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[0., 0, 0],
    ...                    [3, 3, 3]]), jnp.ones((2, 3)),
    ...                    covariance_type="diag")
    >>> ax = plot_ellipses(p, features=(0, 2))
    >>> len(ax.patches)  # 2 components x 3 radii
    6
  """
  from matplotlib.patches import Ellipse
  ax = _axes(ax)
  params = _as_params(params)
  n_features = int(np.asarray(params.means).shape[1])
  if n_features < 2:
    raise ValueError("plot_ellipses needs at least 2 features; for 1-D data "
                     "use plot_density_1d.")
  i, j = (int(f) for f in features)
  if i == j or not (0 <= i < n_features and 0 <= j < n_features):
    raise ValueError(f"features should be two different indices in "
                     f"range({n_features}), got {tuple(features)}.")
  means = np.asarray(params.means)
  colors = component_colors(len(means))
  if X is not None:
    X = np.asarray(X)
    if labels is None:
      ax.scatter(X[:, i], X[:, j], s=6, color="gray", alpha=0.5)
    else:
      ax.scatter(X[:, i], X[:, j], c=_label_colors(labels, len(means)), s=6,
                 alpha=0.6)
  covs = params.covariance_matrices()
  weights = np.asarray(params.weights)
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
  """Mixture density and weighted component densities along one feature.

  Draws ``w_k N(x | mu_k, sigma_k^2)`` for each component (dashed), their sum
  (the marginal mixture density, solid black) and, given ``X``, a density
  histogram of the data.

  Args:
    params: :class:`gmmjax.GMMParams` or a fitted ``GaussianMixture``.
    X: optional ``(N, D)`` data for the histogram.
    feature: the feature index to show.
    grid: optional 1-D array of points to evaluate the densities at.
    ax: matplotlib axes.

  Returns:
    The axes, with a line per component and one for the mixture.

  Example:
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> from gmmjax.plot import plot_density_1d
    >>> p = gx.make_params(jnp.array([0.3, 0.7]), jnp.array([[-2.0], [2.0]]),
    ...                    jnp.array([1.0, 0.5]), covariance_type="spherical")
    >>> ax = plot_density_1d(p)
    >>> [line.get_label() for line in ax.get_lines()]
    ['component 0', 'component 1', 'mixture']
  """
  ax = _axes(ax)
  params = _as_params(params)
  means = np.asarray(params.means)[:, feature]
  var = params.covariance_matrices()[:, feature, feature]
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
  colors = component_colors(len(means))
  for k in range(len(means)):
    ax.plot(grid, comp[k], "--", lw=1.2, color=colors[k],
            label=f"component {k}")
  ax.plot(grid, comp.sum(0), "k-", lw=2, label="mixture")
  ax.set_xlabel(f"feature {feature}")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  return ax


def plot_log_likelihood(history, *, ax=None, label=None):
  """Mean log-likelihood per EM iteration (``FitResult.history`` or a list).

  A first value far below the rest (an initialisation on single points,
  whose covariances start at ``reg_covar``, can score -1e6) would flatten
  the curve: the axis then spans the later iterations and the first one is
  noted in the corner (one curve per axes; with several, matplotlib's own
  limits).

  Args:
    history: a :class:`gmmjax.FitResult`, its ``history`` (NaN padding is
      dropped) or a list such as ``GaussianMixture.lower_bounds_``.
    ax: matplotlib axes.
    label: legend label.

  Returns:
    The axes, with the history as one line.

  Example:
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from gmmjax.plot import plot_log_likelihood
    >>> ax = plot_log_likelihood([-3.0, -2.5, -2.4, float("nan")])
    >>> ax.get_lines()[0].get_xdata().tolist()
    [1, 2, 3]
  """
  ax = _axes(ax)
  history = np.asarray(getattr(history, "history", history), dtype=float)
  finite = np.isfinite(history)
  iterations = np.arange(1, len(history) + 1)[finite]
  history = history[finite]
  ax.plot(iterations, history, "o-", ms=3, label=label)
  _clip_far_first(ax, iterations, history)
  ax.set_xlabel("EM iteration")
  ax.set_ylabel("mean log-likelihood")
  if label is not None:
    ax.legend()
  return ax


_FAR_NOTE = "gmmjax-far-first-value"


def _clip_far_first(ax, iterations, history):
  """Limits the y axis to the later iterations when the first value lies
  more than 100 times their range (at least 1e-3 of their size) below
  them, with a note; axes with several curves keep matplotlib's limits."""
  for text in [t for t in ax.texts if t.get_gid() == _FAR_NOTE]:
    text.remove()
  if len(ax.get_lines()) > 1:
    ax.autoscale(enable=True, axis="y")
    return
  if len(history) < 3:
    return
  rest = history[1:]
  span = max(float(np.ptp(rest)), 1e-3 * max(1.0, abs(float(rest[-1]))))
  if history[0] < rest.min() - 100 * span:
    ax.set_ylim(rest.min() - 0.1 * span, rest.max() + 0.1 * span)
    ax.text(0.98, 0.04,
            f"iteration {iterations[0]}: {history[0]:.4g} (below the axis)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            gid=_FAR_NOTE)


def plot_criterion(selection, *, criteria=("bic", "aic"), ax=None):
  """BIC/AIC against the number of components, the best ``k`` marked.

  Args:
    selection: a :class:`SelectionResult` from
      :func:`gmmjax.select_n_components`, or its ``table`` (a mapping with
      a ``"k"`` column and one column per criterion).
    criteria: the columns to draw.
    ax: matplotlib axes.

  Returns:
    The axes, with a line per criterion, its minimum starred.

  Example:
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from gmmjax.plot import plot_criterion
    >>> table = {"k": [1, 2, 3], "bic": [30.0, 10.0, 12.0],
    ...          "aic": [28.0, 7.0, 6.0]}
    >>> ax = plot_criterion(table)
    >>> ax.get_lines()[0].get_ydata().tolist()
    [30.0, 10.0, 12.0]
  """
  ax = _axes(ax)
  table = getattr(selection, "table", selection)
  chosen = getattr(selection, "criterion", None)
  k = np.asarray(table["k"])
  order = np.argsort(k)
  for name in criteria:
    values = np.asarray(table[name], dtype=float)[order]
    line, = ax.plot(k[order], values, "o-", ms=4, label=name.upper())
    finite = np.isfinite(values)
    if finite.any():
      best = int(np.argmin(np.where(finite, values, np.inf)))
      ax.plot(k[order][best], values[best], "*", ms=14,
              color=line.get_color(), mec="k",
              label=f"best {name.upper()}: k={int(k[order][best])}"
              + (" (chosen)" if name == chosen else ""))
  ax.set_xlabel("number of components k")
  ax.set_ylabel("criterion (lower is better)")
  ax.set_xticks(k[order])
  ax.legend(fontsize=8)
  return ax


def plot_pairs(params, X=None, labels=None, *, features=None, n_std=(1, 2, 3),
               fig=None):
  """Ellipses for every pair of features, 1-D densities on the diagonal.

  Args:
    params: :class:`gmmjax.GMMParams` or a fitted ``GaussianMixture``.
    X: optional ``(N, D)`` data.
    labels: optional ``(N,)`` labels to colour the points.
    features: the feature indices to show (default: all, at most 6 are
      sensible).
    n_std: radii of the ellipses in standard deviations.
    fig: optional matplotlib figure to draw in.

  Returns:
    A ``(F, F)`` NumPy array of axes, ``F = len(features)``.

  Example:
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> from gmmjax.plot import plot_pairs
    >>> p = gx.make_params(jnp.array([1.0]), jnp.zeros((1, 3)),
    ...                    jnp.ones((1, 3)), covariance_type="diag")
    >>> plot_pairs(p).shape
    (3, 3)
  """
  plt = _plt()
  params = _as_params(params)
  n_features = int(np.asarray(params.means).shape[1])
  features = list(range(n_features)) if features is None else [
      int(f) for f in features]
  f = len(features)
  if fig is None:
    fig = plt.figure(figsize=(2.6 * f, 2.6 * f))
  axes = np.asarray(fig.subplots(f, f, squeeze=False))
  for r, i in enumerate(features):
    for c, j in enumerate(features):
      ax = axes[r, c]
      if i == j:
        plot_density_1d(params, X, feature=i, ax=ax)
        legend = ax.get_legend()
        if legend is not None:
          legend.remove()
      else:
        plot_ellipses(params, X, labels, features=(j, i), n_std=n_std, ax=ax)
  return axes
