"""Variational EM for Bayesian mixtures: a step of the one EM driver.

:class:`VariationalStep` is to the driver (``engine.run``) what
:class:`~gmmjax._src.engine.EMStep` is: each pass is the variational
M-step (``bayes_params.posterior_from_stats``) on the statistics of the
previous E-step, then the E-step of the new posterior
(``stats.e_step_stats`` of its :func:`~bayes_params.variational_mixture`).
The objective recorded per iteration is scikit-learn's lower bound, from
the responsibilities of the E-step before the M-step and the posterior
after it; the stopping rule is the driver's ``|change| < tol``.

The lower bound's entropy term ``-sum_i w_i sum_k r_ik log r_ik`` is read
from the same statistics: with ``log r_ik = log w_k + log det P_k - D/2
log 2 pi - 1/2 (x_i - m_k)^T Lambda_k (x_i - m_k) - log p(x_i)`` and second
moments taken around the means ``m_k``, ``sum_i w_i r_ik (x_i - m_k)^T
Lambda_k (...)`` is ``tr(Lambda_k S_k)``. So the variational fit needs
nothing beyond :class:`~gmmjax.SuffStats` and runs wherever they are summed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from gmmjax._src import bayes_params as bp
from gmmjax._src import covariance as cov_lib
from gmmjax._src import engine
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams, all_finite


def responsibility_entropy(mixture: GMMParams, stats: stats_lib.SuffStats):
  """``-sum_i w_i sum_k r_ik log r_ik`` from the E-step statistics of
  ``mixture`` taken around its own means (:func:`stats.component_shift`).

  ``sum_i w_i r_ik (x_i - m_k)^T Lambda_k (x_i - m_k)`` is ``tr(Lambda_k
  S_k)`` around the shift ``c_k = m_k``, plus terms in ``d_k = m_k - c_k``
  that vanish in value (the shift is the means, gradient-stopped) but carry
  the derivative with respect to the means.
  """
  ct = cov_lib.get(mixture.covariance_type)
  k, d = mixture.means.shape
  pc = mixture.precisions_cholesky
  log_det = jnp.broadcast_to(ct.log_det(pc, d), (k,))
  log_w = jnp.log(mixture.weights)
  per_k = log_w + log_det - 0.5 * d * math.log(2 * math.pi)
  move = mixture.means - stats_lib.component_shift(mixture)  # 0 in value

  def maha(v):  # v_k^T Lambda_k v_k, (K,)
    return ct.direct_mahalanobis(v[None], pc)[0]

  cross = 0.25 * (maha(move + stats.sx) - maha(move - stats.sx))
  scatter = (jnp.sum(ct.precisions_from_cholesky(pc) * stats.sxx)
             + jnp.sum(stats.nk * maha(move) - 2.0 * cross))
  expected = (jnp.sum(jnp.where(stats.nk > 0, stats.nk * per_k, 0.0))
              - 0.5 * scatter)
  return stats.log_likelihood - expected


def bound_terms(post: bp.BayesParams):
  """The lower bound's terms of the posterior alone (scikit-learn's
  ``_compute_lower_bound`` without the entropy)."""
  ct = cov_lib.get(post.covariance_type)
  k, d = post.means.shape
  dof = post.degrees_of_freedom
  log_det = (ct.log_det(post.precisions_cholesky, d)
             - 0.5 * d * jnp.log(dof))
  wc = post.weight_concentration
  dirichlet_process = (post.weight_concentration_prior_type
                       == "dirichlet_process")
  # One lgamma call for every term (bayes_params.special_many).
  weight_args = ((wc[0], wc[1], wc[0] + wc[1]) if dirichlet_process
                 else (wc, jnp.sum(wc)))
  lg_offsets, *lg_weights = bp.special_many(
      gammaln, bp._feature_offsets(dof, d), *weight_args)
  wishart = -(dof * log_det + dof * d * 0.5 * math.log(2.0)
              + jnp.sum(lg_offsets, axis=-1))
  log_wishart = jnp.sum(jnp.broadcast_to(wishart, (k,)))
  if dirichlet_process:  # -sum betaln(a, b)
    log_norm_weight = -jnp.sum(lg_weights[0] + lg_weights[1] - lg_weights[2])
  else:
    log_norm_weight = lg_weights[1] - jnp.sum(lg_weights[0])
  return (-log_wishart - log_norm_weight
          - 0.5 * d * jnp.sum(jnp.log(post.mean_precision)))


def variational_stats(post: bp.BayesParams, X, sample_weight=None):
  """The variational E-step reduced to statistics (around the means) and
  the mixture it evaluated."""
  mix = bp.variational_mixture(post)
  return mix, stats_lib.e_step_stats(mix, X, sample_weight=sample_weight,
                                     shift=stats_lib.component_shift(mix))


def lower_bound_of(post: bp.BayesParams, X, sample_weight=None):
  """The lower bound of ``post`` with its own responsibilities."""
  mix, stats = variational_stats(post, X, sample_weight)
  return responsibility_entropy(mix, stats) + bound_terms(post)


class VBState(NamedTuple):
  posterior: bp.BayesParams  # the current iterate
  mixture: GMMParams  # its variational mixture (the E-step's)
  stats: stats_lib.SuffStats  # its E-step statistics (around its means)
  bound: jax.Array  # the last recorded lower bound


class VariationalStep(NamedTuple):
  """Variational EM on the driver (see the module docstring).

  ``problem.prior`` is a :class:`~gmmjax.BayesPrior`. As with EM, the
  first pass only evaluates the initial posterior (its E-step). The state
  keeps the posterior's variational mixture: its digamma terms are
  computed once per iteration.
  """
  reduce: Callable | None = None  # adds statistics over shards (lax.psum)
  evaluates_first = True

  def init(self, post: bp.BayesParams, problem: engine.Problem) -> VBState:
    del problem
    mix = bp.variational_mixture(post)
    return VBState(post, mix, engine.placeholder_stats(mix),
                   jnp.full((), -jnp.inf, post.means.dtype))

  def advance(self, state: VBState, problem: engine.Problem, started):
    """The variational M-step (the initial posterior on the first pass)."""
    post = state.posterior
    stepped, jitter = bp.posterior_and_jitter_from_stats(
        state.stats, stats_lib.component_shift(state.mixture), problem.prior,
        covariance_type=post.covariance_type,
        prior_type=post.weight_concentration_prior_type,
        reg_covar=problem.reg_covar)
    return engine.tree_where(started, stepped, post), jitter

  def evaluate(self, mix: GMMParams, problem: engine.Problem):
    """The E-step statistics of a variational mixture over all the data."""
    stats = stats_lib.e_step_stats(mix, problem.X,
                                   sample_weight=problem.sample_weight,
                                   shift=stats_lib.component_shift(mix))
    return stats if self.reduce is None else self.reduce(stats)

  def evaluated(self, post: bp.BayesParams) -> GMMParams:
    """The mixture whose E-step statistics the step reads."""
    return bp.variational_mixture(post)

  def conclude(self, state: VBState, started, new, jitter, stats, problem):
    """:meth:`conclude_with` (``engine.host_fit``'s signature)."""
    del problem
    return self.conclude_with(state, started, new, self.evaluated(new),
                              jitter, stats)

  def conclude_with(self, state: VBState, started, new, mix, jitter, stats):
    """The next state; the bound of the iteration from the previous
    E-step's responsibilities and the new posterior (``mix`` its
    variational mixture, computed once per iteration)."""
    bound = responsibility_entropy(state.mixture, state.stats) + bound_terms(
        new)
    ok = (all_finite(new) & all_finite(stats)
          & (jnp.isfinite(bound) | ~started))
    counted = started & ok
    report = engine.Report(counted=counted, objective=bound, tested=counted,
                           failed=~ok, jitter=jnp.where(counted, jitter, 0))
    keep = lambda a, b: engine.tree_where(ok, a, b)
    return VBState(posterior=keep(new, state.posterior),
                   mixture=keep(mix, state.mixture),
                   stats=keep(stats, state.stats),
                   bound=jnp.where(counted, bound, state.bound)), report

  def step(self, state: VBState, problem: engine.Problem, started):
    new, jitter = self.advance(state, problem, started)
    mix = bp.variational_mixture(new)
    return self.conclude_with(state, started, new, mix, jitter,
                              self.evaluate(mix, problem))

  def result(self, state: VBState, problem: engine.Problem):
    """The posterior and its lower bound with its own responsibilities."""
    del problem
    return state.posterior, (responsibility_entropy(state.mixture,
                                                    state.stats)
                             + bound_terms(state.posterior))

  n_positive = engine.EMStep.n_positive
