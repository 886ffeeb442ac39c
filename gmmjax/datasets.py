"""Built-in synthetic data sets (NumPy; seeded, no global random state).

These are the classic GMM tutorial's data: three 1-D clusters, and
scikit-learn-style blobs stretched by a random linear map into ellipses.
"""

from __future__ import annotations

import numpy as np


def tutorial_1d(n_per_cluster: int = 100, seed: int = 0):
  """Three 1-D clusters spread around -15, 0 and +15.

  Returns:
    ``(X, y)``: ``(3 * n_per_cluster, 1)`` float64 samples and their labels.
  """
  rng = np.random.default_rng(seed)
  centers = np.array([-15.0, 0.0, 15.0])
  scales = np.array([2.0, 3.0, 2.5])
  y = np.repeat(np.arange(3), n_per_cluster)
  X = rng.normal(centers[y], scales[y])[:, None]
  return X, y


def blobs(n_samples: int = 500, n_centers: int = 3, n_features: int = 2,
          cluster_std: float = 1.0, center_box=(-10.0, 10.0), seed: int = 0,
          stretch: bool = True):
  """Gaussian blobs (like ``sklearn.datasets.make_blobs``), optionally
  stretched by a random linear map into ellipses.

  Returns:
    ``(X, y)``: ``(n_samples, n_features)`` float64 samples and labels.
  """
  rng = np.random.default_rng(seed)
  centers = rng.uniform(*center_box, size=(n_centers, n_features))
  y = np.arange(n_samples) % n_centers
  rng.shuffle(y)
  X = centers[y] + cluster_std * rng.standard_normal((n_samples, n_features))
  if stretch:
    transform = rng.normal(size=(n_features, n_features))
    X = X @ transform
  return X, y
