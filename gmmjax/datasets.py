"""Built-in synthetic data sets (NumPy; seeded, no global random state).

These are the classic GMM tutorial's data: three 1-D clusters,
scikit-learn-style blobs stretched by a random linear map into ellipses, and
a known four-component mixture for model selection.
"""

from __future__ import annotations

import numpy as np


def tutorial_1d(n_per_cluster: int = 100, seed: int = 0):
  """Three 1-D clusters spread around -15, 0 and +15.

  Args:
    n_per_cluster: samples per cluster.
    seed: seed of the NumPy generator.

  Returns:
    ``(X, y)``: ``(3 * n_per_cluster, 1)`` float64 samples and their labels.

  Example:
    >>> from gmmjax import datasets
    >>> X, y = datasets.tutorial_1d(50)
    >>> X.shape, y.shape, sorted(set(y.tolist()))
    ((150, 1), (150,), [0, 1, 2])
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

  Args:
    n_samples: total number of samples (spread evenly over the centres).
    n_centers: number of clusters.
    n_features: dimension ``D``.
    cluster_std: standard deviation of each blob before stretching.
    center_box: range of the uniformly drawn centres.
    seed: seed of the NumPy generator.
    stretch: multiply the data by a random ``(D, D)`` Gaussian matrix.

  Returns:
    ``(X, y)``: ``(n_samples, n_features)`` float64 samples and labels.

  Example:
    >>> from gmmjax import datasets
    >>> X, y = datasets.blobs(n_samples=90, n_centers=3, n_features=4)
    >>> X.shape, [int((y == k).sum()) for k in range(3)]
    ((90, 4), [30, 30, 30])
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


FOUR_MEANS = np.array([[0.0, 0.0], [7.0, 0.0], [0.0, 7.0], [7.0, 7.0]])
FOUR_COVARIANCES = np.array([[[1.0, 0.6], [0.6, 1.0]],
                             [[0.5, 0.0], [0.0, 2.0]],
                             [[2.0, -0.8], [-0.8, 1.0]],
                             [[0.7, 0.0], [0.0, 0.7]]])
FOUR_WEIGHTS = np.array([0.25, 0.25, 0.25, 0.25])


def four_components(n_samples: int = 600, seed: int = 0):
  """Draws from a known 2-D mixture of four full-covariance Gaussians.

  The mixture is ``FOUR_WEIGHTS``, ``FOUR_MEANS`` ``(4, 2)`` and
  ``FOUR_COVARIANCES`` ``(4, 2, 2)`` (module constants): the data of the
  model-selection example, where BIC should pick ``k = 4``.

  Args:
    n_samples: number of samples.
    seed: seed of the NumPy generator.

  Returns:
    ``(X, y)``: ``(n_samples, 2)`` float64 samples and their component labels.

  Example:
    >>> from gmmjax import datasets
    >>> X, y = datasets.four_components(400)
    >>> X.shape, sorted(set(y.tolist()))
    ((400, 2), [0, 1, 2, 3])
  """
  rng = np.random.default_rng(seed)
  y = rng.choice(4, size=n_samples, p=FOUR_WEIGHTS)
  chol = np.linalg.cholesky(FOUR_COVARIANCES)
  z = rng.standard_normal((n_samples, 2))
  X = FOUR_MEANS[y] + np.einsum("nij,nj->ni", chol[y], z)
  return X, y
