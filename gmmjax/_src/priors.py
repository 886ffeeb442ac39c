"""Conjugate priors and the MAP M-step (MAP-EM), from sufficient statistics.

The prior on a mixture is a Dirichlet on the weights and, per component, a
Normal-inverse-Wishart kernel on ``(mu_k, Sigma_k)``::

  log p(w)             = sum_k (alpha_k - 1) log w_k
  log p(mu_k, Sigma_k) = - n0 / 2 log det Sigma_k - 1/2 tr(Psi Sigma_k^-1)
                         - kappa / 2 (mu_k - mu0)^T Sigma_k^-1 (mu_k - mu0)

(up to constants). In the usual Normal-inverse-Wishart notation with ``nu``
degrees of freedom, ``n0 = nu + D + 2``. With ``alpha = 1``, ``kappa = 0``,
``Psi = 0`` and ``n0 = 0`` the prior is flat and MAP-EM is plain EM; a small
positive ``Psi`` keeps covariances positive definite the way ``reg_covar``
does, but in proportion to how little data a component has (Fraley & Raftery,
2007). The other covariance types use the same kernel restricted to their
form: ``diag`` reads the diagonal of ``Psi``, ``spherical`` its trace (with
``n0 * D / 2`` as the exponent, one ``n0 / 2`` per feature), ``tied`` has
one ``Sigma`` (and one ``n0``, one ``Psi``) shared by all components.

The MAP M-step reads only the :class:`~gmmjax.SuffStats` fields, so it works
with every way of summing statistics (chunked, sharded, online).

References:
  C. Fraley and A. E. Raftery, "Bayesian regularization for normal mixture
  estimation and model-based clustering", J. Classification 24, 2007.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gmmjax._src import checks
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import GMMParams
from gmmjax._src.stats import SuffStats


class ConjugatePrior(NamedTuple):
  """Hyper-parameters of the conjugate prior (a pytree: all leaves are arrays,
  so a fit can be differentiated with respect to them).
  """

  weight_concentration: jax.Array  # shape=() or (K,), alpha >= 1
  mean_prior: jax.Array  # shape=(D,), mu0
  mean_precision: jax.Array  # shape=(), kappa >= 0
  covariance_prior: jax.Array  # shape=(D, D), Psi, positive semi-definite
  covariance_dof: jax.Array  # shape=(), n0 >= 0


def make_prior(X, n_components: int, *, strength=1.0, sample_weight=None,
               weight_concentration=None, mean_prior=None,
               mean_precision=None, covariance_prior=None,
               covariance_dof=None) -> ConjugatePrior:
  """A data-scaled conjugate prior (Fraley & Raftery's default, scaled).

  Defaults, each overridable: ``mu0`` the (weighted) data mean,
  ``kappa = 0.01 * strength``, ``n0 = (D + 2) * strength``,
  ``Psi = strength * cov(X) / K**(2 / D)``, ``alpha = 1 + strength``.
  ``strength -> 0`` gives the flat prior, i.e. plain EM.

  Args:
    X: ``(N, D)`` samples (only their mean and covariance are used).
    n_components: ``K``.
    strength: non-negative scalar scaling every default.
    sample_weight: optional ``(N,)`` weights for the data moments.
    weight_concentration, mean_prior, mean_precision, covariance_prior,
      covariance_dof: explicit values that replace the defaults.

  Returns:
    A :class:`ConjugatePrior` in ``X``'s dtype.

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (100, 2))
    >>> prior = gx.make_prior(X, 3, strength=0.1)
    >>> prior.covariance_prior.shape, round(float(prior.covariance_dof), 6)
    ((2, 2), 0.4)
  """
  X = checks.as_data(X)
  dtype = X.dtype
  d = X.shape[1]
  w = checks.as_sample_weight(sample_weight, X.shape[0], dtype)
  ww = jnp.ones(X.shape[0], dtype) if w is None else w
  mean = mm.matmul(ww, X) / jnp.sum(ww)
  xc = X - mean
  data_cov = mm.matmul((xc * ww[:, None]).T, xc) / jnp.sum(ww)
  s = jnp.asarray(strength, dtype)

  def pick(value, default):
    return jnp.asarray(default if value is None else value, dtype)

  return ConjugatePrior(
      weight_concentration=pick(weight_concentration, 1.0 + s),
      mean_prior=pick(mean_prior, mean),
      mean_precision=pick(mean_precision, 0.01 * s),
      covariance_prior=pick(covariance_prior,
                            s * data_cov / n_components ** (2.0 / d)),
      covariance_dof=pick(covariance_dof, (d + 2.0) * s))


def as_prior(prior: ConjugatePrior, dtype, n_components: int,
             n_features: int) -> ConjugatePrior:
  """``prior`` with leaves cast to ``dtype`` and shapes checked (trace time)."""
  if not isinstance(prior, ConjugatePrior):
    raise TypeError(f"prior should be a ConjugatePrior, got {type(prior)}.")
  p = ConjugatePrior(*(jnp.asarray(x, dtype) for x in prior))
  k, d = n_components, n_features
  expected = {"weight_concentration": ((), (k,)), "mean_prior": ((d,),),
              "mean_precision": ((),), "covariance_prior": ((d, d),),
              "covariance_dof": ((),)}
  for name, shapes in expected.items():
    if getattr(p, name).shape not in shapes:
      raise ValueError(f"prior.{name} should have shape "
                       f"{' or '.join(map(str, shapes))}, got "
                       f"{getattr(p, name).shape}.")
  return p


def map_params_from_stats(stats: SuffStats, shift, *, covariance_type: str,
                          reg_covar, prior: ConjugatePrior) -> GMMParams:
  """The MAP M-step: the mode of the posterior given the statistics.

  With ``N_k`` the masses, ``xbar_k`` the component means of the data,
  ``S_k`` the scatter around ``xbar_k``::

    w_k     = (N_k + alpha_k - 1) / sum_j (N_j + alpha_j - 1)
    mu_k    = (N_k xbar_k + kappa mu0) / (N_k + kappa)
    Sigma_k = (S_k + kappa N_k / (kappa + N_k) (xbar_k - mu0)(...)^T + Psi)
              / (N_k + n0)  + reg_covar I

  and the restrictions of the covariance formula per type (see the module
  docstring). ``reg_covar`` is still added, as in plain EM; with
  ``reg_covar=0`` the step is the exact maximiser and MAP-EM never decreases
  the MAP objective.

  Args:
    stats: statistics around ``shift`` (from :func:`gmmjax.e_step_stats`).
    shift: ``(D,)`` or ``(K, D)``: the statistics' centre(s).
    covariance_type: the type.
    reg_covar: non-negative scalar added to the covariance diagonals.
    prior: a :class:`ConjugatePrior`.

  Returns:
    :class:`GMMParams`.
  """
  return map_params_and_jitter_from_stats(stats, shift, covariance_type,
                                          reg_covar, prior)[0]


def map_params_and_jitter_from_stats(stats: SuffStats, shift,
                                     covariance_type: str, reg_covar,
                                     prior: ConjugatePrior):
  """:func:`map_params_from_stats` and the largest jitter it added."""
  dtype = stats.sx.dtype
  eps = jnp.finfo(dtype).eps
  reg = jnp.asarray(reg_covar, dtype)
  nk = stats.nk + 10 * eps
  alpha = jnp.broadcast_to(prior.weight_concentration, nk.shape)
  # alpha < 1 can put the mode on the boundary; keep weights positive.
  mass = jnp.maximum(nk + alpha - 1.0, 10 * eps)
  weights = mass / jnp.sum(mass)
  xdiff = stats.sx / nk[:, None]  # xbar_k - c
  # One centre (D,) or one per component (K, D); either way (K, D) here.
  shift = jnp.broadcast_to(jnp.asarray(shift, dtype), stats.sx.shape)
  m0 = prior.mean_prior[None, :] - shift  # mu0 - c_k
  kappa = prior.mean_precision
  diff = (nk[:, None] * xdiff + kappa * m0) / (nk + kappa)[:, None]
  means = shift + diff
  dev = xdiff - m0  # xbar_k - mu0
  shrink = kappa * nk / (kappa + nk)  # (K,)
  ct = cov_lib.get(covariance_type)
  cov = ct.map_covariance(stats.sxx, nk, xdiff, dev, shrink,
                          prior.covariance_prior, prior.covariance_dof, reg)
  cov, prec_chol, jitter = ct.precision_cholesky_jittered(cov)
  return GMMParams(weights, means, cov, prec_chol, covariance_type), jitter


def log_prior(params: GMMParams, prior: ConjugatePrior):
  """Log density of the prior at ``params``, up to an additive constant.

  Args:
    params: mixture parameters.
    prior: a :class:`ConjugatePrior`.

  Returns:
    A scalar.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.zeros((2, 1)),
    ...                    jnp.ones(2), covariance_type="spherical")
    >>> flat = gx.ConjugatePrior(1.0, jnp.zeros(1), 0.0, jnp.zeros((1, 1)), 0.0)
    >>> float(gx.log_prior(p, flat))
    0.0
  """
  dtype = params.means.dtype
  prior = ConjugatePrior(*(jnp.asarray(x, dtype) for x in prior))
  k = params.means.shape[0]
  alpha = jnp.broadcast_to(prior.weight_concentration, (k,))
  out = jnp.sum((alpha - 1.0) * jnp.log(params.weights))
  dev = params.means - prior.mean_prior[None, :]
  psi, n0, kappa = (prior.covariance_prior, prior.covariance_dof,
                    prior.mean_precision)
  out += cov_lib.get(params.covariance_type).log_prior(
      params.precisions_cholesky, params.covariances, dev, psi, n0, kappa)
  return out
