"""Plots: PNG files with content, and geometry checked against NumPy/SciPy."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from scipy.stats import norm  # noqa: E402

import gmmjax as gx  # noqa: E402
from gmmjax import plot  # noqa: E402
from gmmjax._src.select import SelectionResult  # noqa: E402

K, D = 2, 3


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close("all")


def full_covs(ctype, cov):
  """Independent (K, D, D) covariance matrices of each type."""
  cov = np.asarray(cov, np.float64)
  if ctype == "full":
    return cov
  if ctype == "tied":
    return np.stack([cov] * K)
  if ctype == "diag":
    return np.stack([np.diag(c) for c in cov])
  return np.stack([c * np.eye(D) for c in cov])


def make(ctype):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(K, D, D))
  full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(D)
  cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.5, 2, (K, D)),
         "spherical": np.array([0.5, 2.0])}[ctype]
  means = np.array([[0.0, 1.0, 2.0], [4.0, -1.0, 3.0]])
  return gx.make_params(np.array([0.3, 0.7], np.float32),
                        means.astype(np.float32),
                        np.asarray(cov, np.float32), covariance_type=ctype)


def save_and_check_png(fig, path):
  fig.savefig(path, dpi=60)
  assert path.stat().st_size > 3000
  img = mpimg.imread(path)[..., :3]
  non_white = np.any(img < 0.95, axis=-1).mean()
  assert 0.01 < non_white < 0.9  # drawn on, not blank, not a solid fill
  assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # several colours


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_covariance_matrices_expand_each_type(ctype):
  """The public host accessor plot reads (GMMParams.covariance_matrices)."""
  p = make(ctype)
  dense = p.covariance_matrices()
  assert isinstance(dense, np.ndarray) and dense.shape == (K, D, D)
  np.testing.assert_array_equal(dense, full_covs(ctype, p.covariances))


@pytest.mark.parametrize("ctype", gx.COVARIANCE_TYPES)
def test_ellipses_geometry_any_two_features(ctype, tmp_path):
  p = make(ctype)
  X = np.random.default_rng(1).normal(size=(50, D))
  fig, ax = plt.subplots()
  plot.plot_ellipses(p, X, np.arange(50) % 2, features=(2, 0), ax=ax)
  ellipses = [e for e in ax.patches if isinstance(e, Ellipse)]
  assert len(ellipses) == K * 3
  covs = full_covs(ctype, p.covariances)
  for k in range(K):
    sub = covs[k][np.ix_([2, 0], [2, 0])]
    lam, vec = np.linalg.eigh(sub)
    for s, e in zip((1, 2, 3), ellipses[3 * k:3 * k + 3], strict=True):
      np.testing.assert_allclose(e.center, np.asarray(p.means)[k, [2, 0]],
                                 rtol=1e-6)
      np.testing.assert_allclose(e.width, 2 * s * np.sqrt(lam[1]), rtol=1e-5)
      np.testing.assert_allclose(e.height, 2 * s * np.sqrt(lam[0]),
                                 rtol=1e-5)
      # The major axis points along the leading eigenvector (up to sign).
      t = np.radians(e.angle)
      assert abs(abs(np.dot([np.cos(t), np.sin(t)], vec[:, 1])) - 1) < 1e-5
  assert ax.get_xlabel() == "feature 2" and ax.get_ylabel() == "feature 0"
  save_and_check_png(fig, tmp_path / f"ellipses_{ctype}.png")


def test_ellipses_bad_arguments():
  p1 = gx.make_params(np.ones(1), np.zeros((1, 1)), np.ones(1),
                      covariance_type="spherical")
  with pytest.raises(ValueError, match="plot_density_1d"):
    plot.plot_ellipses(p1)
  with pytest.raises(ValueError, match="two different indices"):
    plot.plot_ellipses(make("diag"), features=(1, 1))
  with pytest.raises(ValueError, match="range"):
    plot.plot_ellipses(make("diag"), features=(0, 3))


@pytest.mark.parametrize("ctype", ["full", "spherical"])
def test_density_1d_is_the_marginal_mixture(ctype, tmp_path):
  p = make(ctype)
  X = np.random.default_rng(2).normal(size=(300, D)) + 2
  fig, ax = plt.subplots()
  plot.plot_density_1d(p, X, feature=1, ax=ax)
  lines = {ln.get_label(): ln for ln in ax.get_lines()}
  covs = full_covs(ctype, p.covariances)
  grid = lines["mixture"].get_xdata()
  means = np.asarray(p.means, np.float64)
  w = np.asarray(p.weights, np.float64)
  comps = [w[k] * norm(means[k, 1], np.sqrt(covs[k][1, 1])).pdf(grid)
           for k in range(K)]
  np.testing.assert_allclose(lines["mixture"].get_ydata(), sum(comps),
                             rtol=1e-5, atol=1e-12)
  for k in range(K):
    np.testing.assert_allclose(lines[f"component {k}"].get_ydata(), comps[k],
                               rtol=1e-5, atol=1e-12)
  # The grid covers the data.
  assert grid.min() <= X[:, 1].min() and grid.max() >= X[:, 1].max()
  save_and_check_png(fig, tmp_path / "density.png")


def test_log_likelihood_curve_from_fit_result(tmp_path):
  X = np.random.default_rng(3).normal(size=(60, 2))
  gm = gx.GaussianMixture(2, covariance_type="spherical", random_state=0,
                          max_iter=500).fit(X)
  fig, ax = plt.subplots()
  plot.plot_log_likelihood(gm.lower_bounds_, ax=ax, label="fit")
  line = ax.get_lines()[0]
  np.testing.assert_array_equal(line.get_xdata(),
                                np.arange(1, gm.n_iter_ + 1))
  np.testing.assert_array_equal(line.get_ydata(), gm.lower_bounds_)
  # NaN padding of FitResult.history is dropped.
  padded = np.r_[gm.lower_bounds_, np.full(5, np.nan)]
  ax2 = plot.plot_log_likelihood(padded)
  assert len(ax2.get_lines()[0].get_xdata()) == gm.n_iter_
  save_and_check_png(fig, tmp_path / "ll.png")
  # An estimator is accepted wherever params are.
  ax3 = plot.plot_ellipses(gm, X)
  assert len(ax3.patches) == 6


def test_log_likelihood_axis_skips_a_far_first_value():
  """A k-means++ start scores -3.3e6 before its first M-step: the axis
  spans the later iterations and a note gives the first value; an ordinary
  curve keeps matplotlib's own limits."""
  history = [-3.3e6, -4.95, -4.86, -4.83, -4.827]
  _, ax = plt.subplots()
  plot.plot_log_likelihood(history, ax=ax)
  low, high = ax.get_ylim()
  assert -5.0 < low < -4.95 and -4.827 < high < -4.8
  notes = [t.get_text() for t in ax.texts]
  assert notes == ["iteration 1: -3.3e+06 (below the axis)"]
  np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), history)
  # A second curve on the same axes: matplotlib's limits, no note.
  plot.plot_log_likelihood([-7.0, -6.0, -5.5, -5.4], ax=ax)
  assert ax.get_ylim()[0] <= -3.3e6 and not ax.texts
  # Not far: a jump of 1 against a range of 0.12, or a flat tail after a
  # jump of 1.05 (100 x a floor of 1e-3 of its size is 0.5: clipped, with
  # a readable range, not +-1e-13).
  _, ax = plt.subplots()
  plot.plot_log_likelihood([-6.0, -4.95, -4.86, -4.83], ax=ax)
  assert ax.get_ylim()[0] <= -6.0 and not ax.texts
  _, ax = plt.subplots()
  plot.plot_log_likelihood([-6.0, -4.95, -4.95, -4.95], ax=ax)
  low, high = ax.get_ylim()
  assert high - low > 5e-4 and low < -4.95 < high
  plt.close("all")


def test_criterion_curve(tmp_path):
  table = {"k": np.array([3, 1, 2, 4]),
           "bic": np.array([90.0, 120.0, 95.0, 99.0]),
           "aic": np.array([80.0, 118.0, 90.0, 79.0])}
  sel = SelectionResult(table=table, best_k=3, best_params=None,
                        criterion="bic", params=None)
  fig, ax = plt.subplots()
  plot.plot_criterion(sel, ax=ax)
  lines = {ln.get_label(): ln for ln in ax.get_lines()}
  np.testing.assert_array_equal(lines["BIC"].get_xdata(), [1, 2, 3, 4])
  np.testing.assert_array_equal(lines["BIC"].get_ydata(),
                                [120.0, 95.0, 90.0, 99.0])
  star = lines["best BIC: k=3 (chosen)"]
  assert star.get_xdata()[0] == 3 and star.get_ydata()[0] == 90.0
  assert lines["best AIC: k=4"].get_xdata()[0] == 4
  save_and_check_png(fig, tmp_path / "criterion.png")


def test_pairs_grid(tmp_path):
  p = make("full")
  X = np.random.default_rng(4).normal(size=(80, D))
  fig = plt.figure(figsize=(6, 6))
  axes = plot.plot_pairs(p, X, features=[0, 2], fig=fig)
  assert axes.shape == (2, 2)
  assert len(axes[0, 1].patches) == K * 3  # ellipses off the diagonal
  assert axes[0, 0].get_xlabel() == "feature 0"  # densities on it
  assert axes[1, 0].get_xlabel() == "feature 0"
  assert axes[1, 0].get_ylabel() == "feature 2"
  save_and_check_png(fig, tmp_path / "pairs.png")


def _rgb(color):
  return tuple(np.round(np.asarray(matplotlib.colors.to_rgba(color))[:3], 6))


def test_one_component_one_colour():
  """Points labelled k, component k's ellipses and mean marker, and its
  density curve share one colour; different components differ."""
  p = make("full")
  rng = np.random.default_rng(5)
  labels = np.repeat([1, 0], 20)  # not in component order
  X = np.asarray(p.means)[labels] + rng.normal(size=(40, D))
  ax = plot.plot_ellipses(p, X, labels)
  ax.figure.canvas.draw()  # colours mapped from data are set when drawn
  points, = ax.collections
  face = [_rgb(c) for c in points.get_facecolors()]
  assert len(face) == len(X)
  ellipses = [a for a in ax.patches if isinstance(a, Ellipse)]
  assert len(ellipses) == K * 3
  markers = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
  colours = []
  for k in range(K):
    ring = {_rgb(e.get_edgecolor()) for e in ellipses[3 * k:3 * k + 3]}
    assert len(ring) == 1, ring
    colour, = ring
    assert {face[i] for i in np.flatnonzero(labels == k)} == {colour}
    assert _rgb(markers[k].get_color()) == colour
    colours.append(colour)
  assert len(set(colours)) == K
  dens = plot.plot_density_1d(p, feature=0, ax=plt.figure().gca())
  curves = {ln.get_label(): _rgb(ln.get_color()) for ln in dens.get_lines()}
  assert [curves[f"component {k}"] for k in range(K)] == colours


def test_plots_take_the_estimator_through_params_(tmp_path):
  X = np.random.default_rng(6).normal(size=(60, 2))
  gm = gx.GaussianMixture(2, covariance_type="diag", random_state=0).fit(X)
  a = plot.plot_ellipses(gm, X, gm.predict(X))
  b = plot.plot_ellipses(gm.params_, X, gm.predict(X), ax=plt.figure().gca())
  for e, f in zip(a.patches, b.patches, strict=True):
    assert e.get_center() == f.get_center() and e.width == f.width
  with pytest.raises(gx.NotFittedError):
    plot.plot_ellipses(gx.GaussianMixture(2))
  with pytest.raises(TypeError, match="GMMParams or a fitted"):
    plot.plot_ellipses({"means": np.zeros((2, 2))})
