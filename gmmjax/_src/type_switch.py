"""scikit-learn's four covariance types in one program, for small problems.

A model-selection sweep over ``covariance_type`` compiles a fit program and
an evaluation program per type, and on a small problem compiling is most of
a fit's time. A tied, diagonal or spherical covariance is also a full
matrix of a certain structure, so the full type's programs can fit and
evaluate all four: the M-step estimates full covariances and projects them
onto the type's structure (a traced code, :data:`CODES`) before they are
factorised, and the E-step of a diagonal covariance written as a full
matrix computes the same distances (the zeros off the diagonal add exact
zeros). The estimator converts the results back to the type's shapes on the
host, exactly: it is the same model, up to the order of float sums.

Only where it costs little: where the full type's component slots fit
``padding``'s budget (:func:`slots_for`), i.e. few features and few
samples. Elsewhere each type keeps its own program.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gmmjax._src import covariance, padding
from gmmjax._src.params import GMMParams

# The traced code of each type (``structure``), the order of project's stack.
CODES = {"full": 0, "tied": 1, "diag": 2, "spherical": 3}


def slots_for(covariance_type: str, n_components: int, n_rows: int,
              n_features: int) -> tuple[int | None, bool]:
  """``(slots, shared)``: the component slots a problem is fitted and
  evaluated in, and whether they are the full type's (the program the four
  types share); ``(padding.component_slots, False)`` where the type keeps
  its own program (low rank, or the full type's slots too large)."""
  if covariance_type in CODES:
    slots = padding.component_slots(n_components, n_rows, n_features, "full")
    if slots is not None:
      return slots, True
  return padding.component_slots(n_components, n_rows, n_features,
                                 covariance_type), False


def project(cov, nk, structure):
  """Full covariances ``(K, D, D)`` (no ``reg_covar`` yet) with the
  structure of type ``structure`` (traced :data:`CODES` value), as that
  type's own M-step estimates them from the same statistics.

  Tied: the mass-weighted mean (``(sum_k N_k S_k) / sum_k N_k``, the tied
  estimate), in every component. Diagonal: the variances, clipped at 0 as
  the diagonal type clips them. Spherical: their mean, clipped at 0.
  """
  eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
  var = jnp.diagonal(cov, axis1=-2, axis2=-1)
  tied = jnp.sum(nk[:, None, None] * cov, axis=0) / jnp.sum(nk)
  diag = jnp.maximum(var, 0.0)[..., None] * eye
  spherical = jnp.maximum(jnp.mean(var, axis=-1), 0.0)[:, None, None] * eye
  return jnp.stack([cov, jnp.broadcast_to(tied, cov.shape), diag,
                    spherical])[structure]


def estimate(nk, diff, sxx, reg_covar, structure):
  """The full type's ``estimate`` with the covariances projected onto
  ``structure`` before ``reg_covar`` is added (as each type adds it)."""
  raw = covariance.TYPES["full"].estimate(nk, diff, sxx, 0.0)
  eye = jnp.eye(diff.shape[-1], dtype=diff.dtype)
  return (project(raw, nk, structure)
          + jnp.asarray(reg_covar, diff.dtype) * eye)


# Host conversions, NumPy: nothing to compile.

def to_full(a, covariance_type: str, n_components: int, n_features: int):
  """A covariance, precision or factor in the type's shape (scikit-learn's)
  as ``(K, D, D)`` matrices."""
  return covariance.get(covariance_type).dense(a, n_components, n_features)


def from_full(a, covariance_type: str):
  """:func:`to_full`'s inverse (a leading batch axis allowed): the type's
  entries of matrices that have its structure."""
  return covariance.get(covariance_type).from_dense(a)


def params_from_full(params, covariance_type: str):
  """NumPy params (or a Bayesian posterior) of the shared program as the
  type's own (a leading batch axis allowed)."""
  if hasattr(params, "weight_concentration"):  # a Bayesian posterior
    dof = np.asarray(params.degrees_of_freedom)
    return params.replace(
        degrees_of_freedom=dof[..., 0] if covariance_type == "tied" else dof,
        covariances=from_full(params.covariances, covariance_type),
        precisions_cholesky=from_full(params.precisions_cholesky,
                                      covariance_type),
        covariance_type=covariance_type)
  return GMMParams(params.weights, params.means,
                   from_full(params.covariances, covariance_type),
                   from_full(params.precisions_cholesky, covariance_type),
                   covariance_type)


def posterior_to_full(post):
  """A NumPy Bayesian posterior as full matrices (a tied one's degrees of
  freedom in every component): what the shared program evaluates."""
  k, d = post.means.shape
  ctype = post.covariance_type
  dof = np.asarray(post.degrees_of_freedom)
  return post.replace(
      degrees_of_freedom=np.full(k, dof) if ctype == "tied" else dof,
      covariances=to_full(post.covariances, ctype, k, d),
      precisions_cholesky=to_full(post.precisions_cholesky, ctype, k, d),
      covariance_type="full")


def prior_to_full(covariance_prior, covariance_type: str, n_features: int):
  """A Bayesian prior's covariance in the type's shape as a ``(D, D)``
  matrix (NumPy)."""
  a = np.asarray(covariance_prior)
  if covariance_type in ("full", "tied"):
    return a
  return to_full(a[None], covariance_type, 1, n_features)[0]
