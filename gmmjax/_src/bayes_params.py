"""Variational Bayesian mixtures: the posterior pytree, its prior, and the
variational M-step from sufficient statistics.

The model is scikit-learn's ``BayesianGaussianMixture`` (Bishop, PRML
chapter 10; Blei & Jordan 2006 for the Dirichlet process): a Dirichlet
(``"dirichlet_distribution"``) or stick-breaking (``"dirichlet_process"``)
prior on the weights and a Normal-Wishart prior on each component. The
variational posterior has the same form, and its parameters are
:class:`BayesParams`.

Variational EM is the spine's E-step/M-step pair on the same
:class:`~gmmjax.SuffStats`:

* the M-step (:func:`posterior_from_stats`) turns the per-component counts,
  sums and shifted second moments into posterior hyper-parameters;
* the E-step is an ordinary E-step on :func:`variational_mixture`, the
  mixture whose log-weights are the expected log-weights plus the
  expected log-determinant and mean-precision terms, and whose precisions
  are the expected precisions. So the chunked, guarded and sharded E-step
  of plain EM serves the variational fit unchanged.

Formulas, names and shapes follow scikit-learn's ``_bayesian_mixture.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import digamma

from gmmjax._src import checks, moments, type_switch
from gmmjax._src import covariance as cov_lib
from gmmjax._src import matmul as mm
from gmmjax._src.params import ComponentArrays, GMMParams
from gmmjax._src.stats import SuffStats, unit_where_inactive

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["weight_concentration", "mean_precision", "means",
                 "degrees_of_freedom", "covariances", "precisions_cholesky"],
    meta_fields=["covariance_type", "weight_concentration_prior_type"])
@dataclasses.dataclass(frozen=True)
class BayesParams(ComponentArrays):
  """The variational posterior of a Bayesian Gaussian mixture (a pytree).

  Array leaves (scikit-learn's fitted attributes of the same names)::

    weight_concentration  dirichlet_process (2, K): the Beta parameters of
                          the stick breaks; dirichlet_distribution (K,)
    mean_precision        (K,)   beta_k
    means                 (K, D) m_k
    degrees_of_freedom    (K,)   nu_k (tied: ())
    covariances           the Wishart scale as a covariance, W_k^-1 / nu_k,
                          in scikit-learn's shapes per type
    precisions_cholesky   its precision factor (``GMMParams``' convention)

  ``covariance_type`` and ``weight_concentration_prior_type`` are static.
  """

  weight_concentration: Any
  mean_precision: Any
  means: Any
  degrees_of_freedom: Any
  covariances: Any
  precisions_cholesky: Any
  covariance_type: str = "full"
  weight_concentration_prior_type: str = "dirichlet_process"

  @property
  def weights(self):
    """The posterior mean weights (scikit-learn's ``weights_``)."""
    return expected_weights(self)

  @property
  def precisions(self):
    return cov_lib.precisions_from_cholesky(self.precisions_cholesky,
                                            self.covariance_type)

  def _slot_weights(self, mask):
    """The posterior mean weights of the active component slots (``mask``),
    0 in the others."""
    return expected_weights(self, mask)


class BayesPrior(NamedTuple):
  """The prior's hyper-parameters (scikit-learn's ``*_prior_`` values)."""

  weight_concentration_prior: jax.Array  # shape=(), gamma_0 or alpha_0
  mean_precision_prior: jax.Array  # shape=(), beta_0 > 0
  mean_prior: jax.Array  # shape=(D,), m_0
  degrees_of_freedom_prior: jax.Array  # shape=(), nu_0 > D - 1
  covariance_prior: jax.Array  # full/tied (D, D), diag (D,), spherical ()


def check_prior_type(prior_type: str) -> None:
  if prior_type not in PRIOR_TYPES:
    raise ValueError(
        f"Invalid value for 'weight_concentration_prior_type': "
        f"{prior_type!r}; it should be in {list(PRIOR_TYPES)}.")


def make_bayes_prior(X, n_components: int, *, covariance_type: str = "full",
                     sample_weight=None, weight_concentration_prior=None,
                     mean_precision_prior=None, mean_prior=None,
                     degrees_of_freedom_prior=None,
                     covariance_prior=None) -> BayesPrior:
  """scikit-learn's priors, each default computed from the data.

  Defaults: ``weight_concentration_prior = 1 / K``, ``mean_precision_prior
  = 1``, ``mean_prior`` the (weighted) data mean, ``degrees_of_freedom_prior
  = D``, ``covariance_prior`` the (weighted, ``ddof=1``) data covariance in
  the type's shape (diag its diagonal, spherical the mean variance).

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (100, 2))
    >>> prior = gx.make_bayes_prior(X, 4, covariance_type="diag")
    >>> prior.covariance_prior.shape, float(prior.weight_concentration_prior)
    ((2,), 0.25)
  """
  X = checks.as_data(X)
  dtype = X.dtype
  d = X.shape[1]
  ct = cov_lib.get(covariance_type)
  w = checks.as_sample_weight(sample_weight, X.shape[0], dtype)
  mean, data_cov = _data_moments(X, w)
  data_cov = _in_type(data_cov, covariance_type)

  def pick(value, default, shape):
    value = default if value is None else value
    # Host values are converted on the host (an eager conversion is a
    # program to compile); arrays (traced too) keep JAX's astype.
    if isinstance(value, jax.Array):
      out = value if value.dtype == dtype else value.astype(dtype)
    else:
      out = jax.device_put(np.asarray(value, dtype))
    if out.shape != shape:
      raise ValueError(f"The prior should have shape {shape}, got "
                       f"{out.shape}.")
    return out

  return BayesPrior(
      weight_concentration_prior=pick(weight_concentration_prior,
                                      1.0 / n_components, ()),
      mean_precision_prior=pick(mean_precision_prior, 1.0, ()),
      mean_prior=pick(mean_prior, mean, (d,)),
      degrees_of_freedom_prior=pick(degrees_of_freedom_prior, float(d), ()),
      covariance_prior=pick(covariance_prior, data_cov,
                            ct.shape(1, d)[1:] if ct.name != "tied"
                            else (d, d)))


@jax.jit
def _data_moments(X, w):
  """The (weighted) data mean and ``ddof=1`` covariance ``(D, D)``: one
  small program, not a dispatch per operation, shared by the four types."""
  ww = jnp.ones(X.shape[0], X.dtype) if w is None else w
  total = jnp.sum(ww)
  mean = mm.matmul(ww, X) / total
  xc = X - mean
  return mean, mm.matmul((xc * ww[:, None]).T, xc) / (total - 1.0)


def _in_type(cov, covariance_type: str):
  """A ``(D, D)`` covariance in the type's shape (``from_full``): on the
  host when it is concrete (an eager conversion is a program to compile
  per type), traced otherwise."""
  if isinstance(cov, jax.core.Tracer):
    return cov_lib.get(covariance_type).from_full(cov)
  cov = np.asarray(cov)
  if covariance_type == "diag":
    return np.diagonal(cov).copy()
  if covariance_type == "spherical":
    return np.mean(np.diagonal(cov))
  return cov


# ---------------------------------------------------------------------------
# Expectations under the posterior.


def special_many(fn, *arrays):
  """``[fn(a) for a in arrays]`` as one call of ``fn`` on their
  concatenation: XLA expands ``digamma`` and ``lgamma`` into long
  polynomial programs, one per call site, and compile time grows with
  each."""
  flat = jnp.concatenate([jnp.ravel(a) for a in arrays])
  out = fn(flat)
  sizes = [math.prod(jnp.shape(a)) for a in arrays]
  pieces = jnp.split(out, list(itertools.accumulate(sizes))[:-1])
  return [p.reshape(jnp.shape(a)) for p, a in zip(pieces, arrays)]


def expected_log_weights(post: BayesParams, extra=None, mask=None):
  """``E[log pi_k]`` ``(K,)`` (scikit-learn's ``_estimate_log_weights``).

  ``extra``: an optional array whose digamma is computed in the same call
  (returned second). ``mask``: the active component slots (the others'
  values are meaningless; a stick's breaks depend only on the ones before
  it, and the Dirichlet's sum is over the active slots)."""
  wc = post.weight_concentration
  more = () if extra is None else (extra,)
  if post.weight_concentration_prior_type == "dirichlet_process":
    a, b = wc[..., 0, :], wc[..., 1, :]
    dig_a, dig_b, digamma_sum, *rest = special_many(digamma, a, b, a + b,
                                                    *more)
    log_1mv = dig_b - digamma_sum
    out = dig_a - digamma_sum + _exclusive(jnp.cumsum, log_1mv, 0.0)
  else:
    total = jnp.sum(wc if mask is None else jnp.where(mask, wc, 0.0),
                    axis=-1, keepdims=True)
    dig, dig_sum, *rest = special_many(digamma, wc, total, *more)
    out = dig - dig_sum
  return out if extra is None else (out, rest[0])


def _exclusive(scan, x, first):
  """``[first, scan(x)[0], ..., scan(x)[-2]]`` along the last axis."""
  head = jnp.full(x.shape[:-1] + (1,), first, x.dtype)
  return jnp.concatenate([head, scan(x[..., :-1], axis=-1)], axis=-1)


def expected_weights(post: BayesParams, mask=None):
  """The posterior mean weights (scikit-learn's ``weights_``); batched
  posteriors (leading axes) too; 0 in the slots where ``mask`` is False."""
  wc = post.weight_concentration
  if post.weight_concentration_prior_type == "dirichlet_process":
    a, b = wc[..., 0, :], wc[..., 1, :]
    w = a / (a + b) * _exclusive(jnp.cumprod, b / (a + b), 1.0)
  else:
    w = wc
  if mask is not None:
    w = jnp.where(mask, w, 0.0)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def _feature_offsets(dof, d: int):
  """``0.5 * (nu - j)`` for ``j < D``: shape ``nu.shape + (D,)``."""
  return 0.5 * (dof[..., None] - jnp.arange(d, dtype=dof.dtype))


def variational_log_weights(post: BayesParams, mask=None):
  """``E[log pi_k] + 1/2 E[log det Lambda_k] - D / (2 beta_k)`` minus the
  plug-in log-determinant's ``D/2 log nu_k`` (scikit-learn's
  ``_estimate_log_prob`` terms besides the Gaussian): ``(K,)``; ``-inf``
  in the slots where ``mask`` is False."""
  d = post.n_features
  dtype = post.means.dtype
  dof = post.degrees_of_freedom
  log_weights, dig = expected_log_weights(post, _feature_offsets(dof, d),
                                          mask)
  log_lambda = d * math.log(2.0) + jnp.sum(dig, axis=-1)
  extra = (0.5 * (log_lambda - d / post.mean_precision)
           - 0.5 * d * jnp.log(dof))
  out = (log_weights + extra).astype(dtype)
  return out if mask is None else jnp.where(mask, out, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("normalise",))
def variational_mixture(post: BayesParams, *, normalise: bool = True,
                        mask=None) -> GMMParams:
  """The mixture whose E-step is the variational E-step.

  Its precisions are the expected precisions ``nu_k W_k`` (the inverse of
  ``post.covariances``) and its (unnormalised) weights
  ``exp(`` :func:`variational_log_weights` ``)``, so that
  ``log w_k + log N(x | m_k, Sigma_k)`` is scikit-learn's
  ``_estimate_weighted_log_prob``. With ``normalise`` the weights are
  divided by the largest (responsibilities do not change; no underflow);
  without, ``log_prob`` of the mixture is scikit-learn's ``score_samples``.
  ``mask``: the active component slots; the others get weight 0.
  """
  lw = variational_log_weights(post, mask)
  if normalise:
    lw = lw - lax.stop_gradient(jnp.max(lw))
  return GMMParams(jnp.exp(lw), post.means, post.covariances,
                   post.precisions_cholesky, post.covariance_type)


# ---------------------------------------------------------------------------
# The variational M-step.


def _weight_concentration(nk, prior0, prior_type: str, mask=None):
  if prior_type == "dirichlet_process":
    if mask is not None:  # the active sticks break after the last one
      nk = jnp.where(mask, nk, 0.0)
    after = jnp.concatenate([jnp.cumsum(nk[::-1])[-2::-1],
                             jnp.zeros((1,), nk.dtype)])
    return jnp.stack([1.0 + nk, prior0 + after])
  return prior0 + nk


def posterior_from_moments(nk, xk, sk, prior: BayesPrior, *,
                           covariance_type: str, prior_type: str, mask=None,
                           structure=None):
  """Posterior hyper-parameters from floored masses ``nk`` ``(K,)``,
  component means ``xk`` ``(K, D)`` and covariances ``sk`` (``reg_covar``
  included): scikit-learn's ``_estimate_weights``, ``_estimate_means`` and
  ``_estimate_wishart_*``. Returns ``(BayesParams, jitter)``.

  ``mask``: the active component slots. The others (empty) get the prior's
  own posterior with a unit scale, finite, and add nothing to the active
  ones' (a tied scale averages over the active slots). ``structure`` (a traced
  ``type_switch.CODES`` value, with full ``sk`` projected onto it and a
  ``(D, D)`` covariance prior): the full type's posterior of a model of
  that type (:func:`_structured_wishart`).
  """
  ct = cov_lib.get(covariance_type)
  beta0 = prior.mean_precision_prior
  beta = beta0 + nk
  means = (beta0 * prior.mean_prior[None, :] + nk[:, None] * xk) / beta[:, None]
  dev = xk - prior.mean_prior[None, :]
  if structure is None:
    dof, cov = ct.wishart_posterior(nk, sk, dev, nk * beta0 / beta,
                                    prior.covariance_prior,
                                    prior.degrees_of_freedom_prior, mask)
  else:
    dof, cov = _structured_wishart(nk, sk, dev, nk * beta0 / beta,
                                   prior.covariance_prior,
                                   prior.degrees_of_freedom_prior, mask,
                                   structure)
  if mask is not None:
    # The empty slots' scale is the prior's, singular where the data's
    # covariance is (collinear or repeated features): they get the unit
    # before the factorisation, which they then neither need nor report a
    # jitter for (as EM's empty slots, stats.params_and_jitter_from_stats).
    cov = unit_where_inactive(cov, "full" if structure is not None
                              else covariance_type, mask)
  cov, prec_chol, jitter = ct.precision_cholesky_jittered(cov)
  wc = _weight_concentration(nk, prior.weight_concentration_prior, prior_type,
                             mask)
  return BayesParams(wc, beta, means, dof, cov, prec_chol, covariance_type,
                     prior_type), jitter


def _structured_wishart(nk, sk, dev, shrink, psi, dof0, mask, structure):
  """Each type's Wishart posterior as full matrices, the type's picked by
  the traced ``structure`` (``type_switch.CODES``): the program the four
  types share. ``sk``: full covariances with the type's structure
  (``type_switch.estimate``), ``psi``: the prior as a ``(D, D)`` matrix.

  Diagonal and spherical scales are the full posterior's diagonal and its
  mean (their ``psi`` is diagonal, their ``sk`` too); a tied one is the
  tied formula (one scale, degrees of freedom ``dof0 + mean N_k``) in
  every slot.
  """
  full = cov_lib.get("full")
  dof, cov = full.wishart_posterior(nk, sk, dev, shrink, psi, dof0)
  tied_dof, tied = cov_lib.get("tied").wishart_posterior(
      nk, sk[0], dev, shrink, psi, dof0, mask)
  eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
  var = jnp.diagonal(cov, axis1=-2, axis2=-1)
  cov = jnp.stack([cov, jnp.broadcast_to(tied, cov.shape),
                   var[..., None] * eye,
                   jnp.mean(var, axis=-1)[:, None, None] * eye])[structure]
  dof = jnp.stack([dof, jnp.broadcast_to(tied_dof, dof.shape), dof,
                   dof])[structure]
  return dof, cov


def posterior_from_stats(stats: SuffStats, shift, prior: BayesPrior, *,
                         covariance_type: str,
                         prior_type: str = "dirichlet_process",
                         reg_covar=1e-6) -> BayesParams:
  """The variational M-step: posterior hyper-parameters from statistics.

  scikit-learn's ``_m_step`` (``_estimate_weights``, ``_estimate_means``,
  ``_estimate_wishart_*``) on the component masses, means and covariances
  that the statistics give (computed around ``shift``, ``(D,)`` or
  ``(K, D)``; masses floored by ``10 * eps``), so it works with every way of
  summing statistics. A full/tied scale that is not positive definite up to
  rounding gets the M-step's diagonal jitter.

  Args:
    stats: :class:`~gmmjax.SuffStats` (e.g. of the variational E-step).
    shift: the statistics' centre(s).
    prior: a :class:`BayesPrior`.
    covariance_type: the type.
    prior_type: ``"dirichlet_process"`` or ``"dirichlet_distribution"``.
    reg_covar: added to the data covariances' diagonals, as scikit-learn
      does.

  Returns:
    :class:`BayesParams`.
  """
  return posterior_and_jitter_from_stats(
      stats, shift, prior, covariance_type=covariance_type,
      prior_type=prior_type, reg_covar=reg_covar)[0]


def posterior_and_jitter_from_stats(stats: SuffStats, shift,
                                    prior: BayesPrior, *,
                                    covariance_type: str, prior_type: str,
                                    reg_covar, mask=None, structure=None):
  """:func:`posterior_from_stats` and the largest jitter it added
  (``mask``: the active component slots, ``structure``: the type a full
  posterior has, :func:`posterior_from_moments`)."""
  dtype = stats.sx.dtype
  nk = stats.nk + 10 * jnp.finfo(dtype).eps
  diff = stats.sx / nk[:, None]
  shift = jnp.asarray(shift, dtype)
  xk = (shift if shift.ndim == 2 else shift[None, :]) + diff
  sk = _estimate(nk, diff, stats.sxx, jnp.asarray(reg_covar, dtype),
                 covariance_type, mask, structure)
  return posterior_from_moments(nk, xk, sk, prior,
                                covariance_type=covariance_type,
                                prior_type=prior_type, mask=mask,
                                structure=structure)


def _estimate(nk, diff, sxx, reg_covar, covariance_type: str, mask,
              structure):
  """The M-step's covariances (``reg_covar`` included): the type's own, a
  shared (tied) one summed over the active slots only; with
  ``structure``, full ones projected onto that type's structure."""
  if structure is not None:
    return type_switch.estimate(nk, diff, sxx, reg_covar, structure)
  ct = cov_lib.get(covariance_type)
  if mask is not None and ct.shared:
    nk = jnp.where(mask, nk, 0.0)
  return ct.estimate(nk, diff, sxx, reg_covar)


def posterior_from_resp(X, resp, prior: BayesPrior, *, sample_weight=None,
                        covariance_type: str = "full",
                        prior_type: str = "dirichlet_process",
                        reg_covar=1e-6) -> BayesParams:
  """The first variational M-step, from responsibilities (scikit-learn's
  ``_initialize``): how a fit starts.

  Each component's scatter is summed around its own mean (as
  ``gmmjax.init_params`` does), exact for hard responsibilities.

  Args:
    X: ``(N, D)`` samples.
    resp: ``(N, K)`` responsibilities (rows summing to 1).
    prior: a :class:`BayesPrior`.
    sample_weight: optional ``(N,)`` weights.
    covariance_type, prior_type, reg_covar: as in
      :func:`posterior_from_stats`.

  Returns:
    :class:`BayesParams`.
  """
  X = checks.as_data(X)
  resp = jnp.asarray(resp, X.dtype)
  if resp.ndim != 2 or resp.shape[0] != X.shape[0]:
    raise ValueError(f"resp should have shape ({X.shape[0]}, n_components), "
                     f"got {resp.shape}.")
  check_prior_type(prior_type)
  w = checks.as_sample_weight(sample_weight, X.shape[0], X.dtype)
  prior = BayesPrior(*(jnp.asarray(a, X.dtype) for a in prior))
  return posterior_and_jitter_from_resp(
      X, resp, prior, sample_weight=w, covariance_type=covariance_type,
      prior_type=prior_type, reg_covar=reg_covar)[0]


@functools.partial(jax.jit, static_argnames=("covariance_type",
                                             "prior_type"))
def posterior_and_jitter_from_resp(X, resp, prior: BayesPrior, *,
                                   sample_weight, covariance_type: str,
                                   prior_type: str, reg_covar):
  """:func:`posterior_from_resp` on checked arguments, and its jitter.
  (The estimator's fits start from the responsibilities' statistics
  instead: ``init.init_stats``, whose M-step is the variational loop's.)"""
  dtype = X.dtype
  nk, center, diff, sxx, _, _, _ = moments.resp_moments(
      X, resp, sample_weight, covariance_type)
  sk = _estimate(nk, jnp.zeros_like(diff), sxx, jnp.asarray(reg_covar, dtype),
                 covariance_type, None, None)
  return posterior_from_moments(nk, center[None, :] + diff, sk, prior,
                                covariance_type=covariance_type,
                                prior_type=prior_type)
