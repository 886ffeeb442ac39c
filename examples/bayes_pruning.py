"""A Dirichlet-process mixture prunes the components the data do not need.

Ten components on three separated clusters: the variational fit gives all
but three (or so) of them weights near 0. Draws the fitted ellipses and the
weights next to scikit-learn's. Run: ``python examples/bayes_pruning.py``
(writes ``bayes_pruning.png``).
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import gmmjax as gx  # noqa: E402
from gmmjax import datasets, plot  # noqa: E402


def run(path="bayes_pruning.png"):
  X, _ = datasets.blobs(n_samples=600, n_centers=3, seed=0)
  bgm = gx.BayesianGaussianMixture(n_components=10, max_iter=500,
                                   random_state=0).fit(X)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  kept = bgm.weights_ > 0.01
  # The kept components only: the pruned ones sit at the prior (wide).
  kept_params = gx.make_params(bgm.weights_[kept], bgm.means_[kept],
                               bgm.covariances_[kept])
  labels = np.searchsorted(np.flatnonzero(kept), bgm.predict(X))
  plot.plot_ellipses(kept_params, X, labels, ax=axes[0])
  axes[0].set_title(f"BayesianGaussianMixture(n_components=10): "
                    f"{int(kept.sum())} kept")
  k = np.arange(10)
  axes[1].bar(k - 0.2, bgm.weights_, width=0.4, label="gmmjax")
  try:
    from sklearn.mixture import BayesianGaussianMixture
    sk = BayesianGaussianMixture(n_components=10, max_iter=500,
                                 random_state=0).fit(X)
    axes[1].bar(k + 0.2, sk.weights_, width=0.4, label="scikit-learn")
  except ImportError:  # the comparison is optional
    pass
  axes[1].axhline(0.01, color="grey", lw=0.8, ls="--")
  axes[1].set_xlabel("component")
  axes[1].set_ylabel("weight")
  axes[1].set_xticks(k)
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return bgm


if __name__ == "__main__":
  bgm = run(*sys.argv[1:])
  print(np.round(bgm.weights_, 3))
