"""Gaussian draws with each sample's component covariance."""

from __future__ import annotations

import jax

from gmmjax._src import covariance as cov_lib


def sample_noise(key, prec_chol, covariances, labels, covariance_type,
                 n_features: int, dtype):
  """Zero-mean Gaussian draws ``(n, D)``, row ``i`` with the covariance of
  component ``labels[i]``."""
  ct = cov_lib.get(covariance_type)
  width = ct.noise_width(n_features, covariances)
  z = jax.random.normal(key, (labels.shape[0], width), dtype)
  return ct.sample_noise(z, prec_chol, covariances, labels)
