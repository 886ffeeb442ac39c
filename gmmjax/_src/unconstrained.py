"""An unconstrained parameterisation of a mixture, for gradient-based fits.

Every covariance type maps to free real arrays, with exact round trips:

  weights    -> logits ``log w`` (``softmax`` back)
  full       -> per component, the lower Cholesky factor ``L`` of the
                covariance with its diagonal replaced by ``log diag L``
                (``K, D, D``; the strict upper triangle is ignored)
  tied       -> the same for the shared covariance (``D, D``)
  diag       -> log-variances (``K, D``)
  spherical  -> log-variances (``K,``)

Means are unconstrained already. The precision factors are derived by one
triangular solve (full/tied) or an exponential (diag/spherical), no
covariance is inverted.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from gmmjax._src import covariance as cov_lib
from gmmjax._src.params import GMMParams


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["logits", "means", "scale"],
    meta_fields=["covariance_type"])
@dataclasses.dataclass(frozen=True)
class UnconstrainedParams:
  """Free coordinates of a mixture (a pytree; ``covariance_type`` static).

  Attributes:
    logits: ``(K,)`` mixture logits (``softmax`` gives the weights).
    means: ``(K, D)`` means.
    scale: full ``(K, D, D)`` / tied ``(D, D)`` Cholesky factors with log
      diagonal; diag ``(K, D)`` / spherical ``(K,)`` log-variances.
    covariance_type: the type (static).
  """

  logits: Any
  means: Any
  scale: Any
  covariance_type: str = "full"


def to_unconstrained(params: GMMParams) -> UnconstrainedParams:
  """Free coordinates of ``params``.

  Full and tied: the covariance factor is taken from
  ``params.precisions_cholesky`` (no factorisation, which a covariance
  repaired with a jitter can fail by rounding), with the derivative of
  ``cholesky(params.covariances)``: the two must describe the same model
  (``gx.make_params`` recomputes the factors of new covariances).

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.25, 0.75]), jnp.zeros((2, 1)),
    ...                    jnp.array([1.0, 4.0]), covariance_type="spherical")
    >>> u = gx.to_unconstrained(p)
    >>> gx.from_unconstrained(u).covariances.tolist()
    [1.0, 4.0]
  """
  ctype = params.covariance_type
  logits = jnp.log(params.weights)
  scale = cov_lib.get(ctype).to_unconstrained(params.covariances,
                                              params.precisions_cholesky)
  return UnconstrainedParams(logits, params.means, scale, ctype)


def from_unconstrained(u: UnconstrainedParams) -> GMMParams:
  """:class:`GMMParams` from free coordinates (differentiable)."""
  ctype = u.covariance_type
  weights = jax.nn.softmax(u.logits)
  covariances, prec_chol = cov_lib.get(ctype).from_unconstrained(u.scale)
  return GMMParams(weights, u.means, covariances, prec_chol, ctype)
