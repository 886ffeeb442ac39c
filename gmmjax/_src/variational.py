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
from jax.scipy.special import betaln, gammaln

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
  # An empty component (or a masked slot, of weight 0) adds nothing; its
  # log-weight is not taken (-inf times 0 would be NaN in derivatives).
  log_w = jnp.log(jnp.where(stats.nk > 0, mixture.weights, 1.0))
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


def bound_terms(post: bp.BayesParams, mask=None):
  """The lower bound's terms of the posterior alone (scikit-learn's
  ``_compute_lower_bound`` without the entropy); ``mask``: the active
  component slots, the only ones summed."""
  ct = cov_lib.get(post.covariance_type)
  k, d = post.means.shape
  dof = post.degrees_of_freedom
  log_det = (ct.log_det(post.precisions_cholesky, d)
             - 0.5 * d * jnp.log(dof))
  wc = post.weight_concentration
  lg_offsets = gammaln(bp._feature_offsets(dof, d))
  wishart = -(dof * log_det + dof * d * 0.5 * math.log(2.0)
              + jnp.sum(lg_offsets, axis=-1))
  active = (lambda a: a) if mask is None else (
      lambda a: jnp.where(mask, a, 0.0))
  log_wishart = jnp.sum(active(jnp.broadcast_to(wishart, (k,))))
  # The weights' log-normaliser as log-Beta functions, not differences of
  # lgamma: concentrations grow with the prior (1e5 and more), where lgamma
  # reaches 1e6 and float32 keeps only ~0.06 of it; the bound is a few 1e3,
  # so those differences made its float32 value noisy by ~0.1 between
  # iterations, above tol. betaln keeps ~1e-4 there.
  if post.weight_concentration_prior_type == "dirichlet_process":
    log_norm_weight = -jnp.sum(active(betaln(wc[0], wc[1])))
  else:  # log B(a_1..a_K) = sum_k betaln(a_1 + ... + a_k, a_k+1)
    terms = betaln(jnp.cumsum(wc)[:-1], wc[1:])
    if mask is not None:
      terms = jnp.where(mask[1:], terms, 0.0)
    log_norm_weight = -jnp.sum(terms)
  return (-log_wishart - log_norm_weight
          - 0.5 * d * jnp.sum(active(jnp.log(post.mean_precision))))


def variational_stats(post: bp.BayesParams, X, sample_weight=None):
  """The variational E-step reduced to statistics (around the means) and
  the mixture it evaluated."""
  mix = bp.variational_mixture(post)
  return mix, stats_lib.e_step_stats(mix, X, sample_weight=sample_weight,
                                     shift=stats_lib.component_shift(mix))


# Iterations over which the bound's change is averaged where ``tol`` is
# within its rounding (:func:`tested_by_resolution`).
WINDOW = 8


class VBState(NamedTuple):
  posterior: bp.BayesParams  # the current iterate
  mixture: GMMParams  # its variational mixture (the E-step's)
  stats: stats_lib.SuffStats  # its E-step statistics (around its means)
  recent: jax.Array  # (WINDOW,) the last recorded bounds, oldest first


def tested_by_resolution(bound, recent, tol):
  """Whether ``|change| < tol`` may stop the fit at ``bound``.

  The lower bound is a total over the samples (scikit-learn's), so in
  float32 its spacing ``eps |bound|`` can reach ``tol``: at ``|bound| ~
  1e4`` it moves in steps of ``2**-10``, and one change below ``tol=1e-3``
  is rounding, not convergence (it stopped scikit-learn's
  concentration-prior example after 98 of ~500 iterations). Where ``tol``
  is within ``4 eps |bound|``, the bound must also have gained less than
  ``tol`` an iteration over the last :data:`WINDOW`; elsewhere (float64,
  small totals) the rule is scikit-learn's alone.
  """
  resolution = 4 * jnp.finfo(bound.dtype).eps * jnp.abs(bound)
  averaged = bound - recent[0] < tol * WINDOW  # little progress, or none
  return (tol >= resolution) | averaged


class VariationalStep(NamedTuple):
  """Variational EM on the driver (see the module docstring).

  ``problem.prior`` is a :class:`~gmmjax.BayesPrior`. As with EM, the
  first pass only evaluates the initial posterior (its E-step), or, with
  ``steps_first``, makes it from an initialisation's statistics. The state
  keeps the posterior's variational mixture: its digamma terms are
  computed once per iteration.
  """
  reduce: Callable | None = None  # adds statistics over shards (lax.psum)
  # The first pass keeps its M-step (engine.EMStep's steps_first): the loop
  # starts from an initialisation's statistics (init.init_stats).
  steps_first: bool = False
  evaluates_first = True

  def init(self, post: bp.BayesParams, problem: engine.Problem) -> VBState:
    mix = bp.variational_mixture(post, mask=problem.mask)
    return VBState(post, mix, engine.placeholder_stats(mix),
                   jnp.full((WINDOW,), -jnp.inf, post.means.dtype))

  def advance(self, state: VBState, problem: engine.Problem, started):
    """The variational M-step (the initial posterior on the first pass)."""
    post = state.posterior
    stepped, jitter = bp.posterior_and_jitter_from_stats(
        state.stats, stats_lib.component_shift(state.mixture), problem.prior,
        covariance_type=post.covariance_type,
        prior_type=post.weight_concentration_prior_type,
        reg_covar=problem.reg_covar, mask=problem.mask,
        structure=problem.structure)
    if self.steps_first:
      return stepped, jitter
    return engine.tree_where(started, stepped, post), jitter

  def evaluate(self, mix: GMMParams, problem: engine.Problem):
    """The E-step statistics of a variational mixture over all the data."""
    stats = stats_lib.e_step_stats(mix, problem.X,
                                   sample_weight=problem.sample_weight,
                                   shift=stats_lib.component_shift(mix))
    return stats if self.reduce is None else self.reduce(stats)

  def evaluated(self, post: bp.BayesParams, problem) -> GMMParams:
    """The mixture whose E-step statistics the step reads (its inactive
    component slots with weight 0, as :meth:`evaluate` has them)."""
    return bp.variational_mixture(post, mask=problem.mask)

  def conclude(self, state: VBState, started, new, jitter, stats, problem):
    """:meth:`conclude_with` (``engine.host_fit``'s signature; its
    statistics are of :meth:`evaluated`)."""
    return self.conclude_with(
        state, started, new, bp.variational_mixture(new, mask=problem.mask),
        jitter, stats, problem.tol, problem.mask)

  def conclude_with(self, state: VBState, started, new, mix, jitter, stats,
                    tol, mask=None):
    """The next state; the bound of the iteration from the previous
    E-step's responsibilities and the new posterior (``mix`` its
    variational mixture, computed once per iteration). The convergence
    rule applies where the bound's spacing allows
    (:func:`tested_by_resolution`)."""
    bound = responsibility_entropy(state.mixture, state.stats) + bound_terms(
        new, mask)
    ok = (all_finite(new) & all_finite(stats)
          & (jnp.isfinite(bound) | ~started))
    counted = started & ok
    tested = counted & tested_by_resolution(bound, state.recent, tol)
    report = engine.Report(counted=counted, objective=bound, tested=tested,
                           failed=~ok, jitter=jnp.where(counted, jitter, 0))
    keep = lambda a, b: engine.tree_where(ok, a, b)
    recent = jnp.roll(state.recent, -1).at[-1].set(bound)
    post, mixture = state.posterior, state.mixture
    if self.steps_first:  # a first pass that fails returns the initial
      post = engine.tree_where(started, post, new)  # posterior, not the
      mixture = engine.tree_where(started, mixture, mix)  # placeholder
    return VBState(posterior=keep(new, post),
                   mixture=keep(mix, mixture),
                   stats=keep(stats, state.stats),
                   recent=jnp.where(counted, recent, state.recent)), report

  def step(self, state: VBState, problem: engine.Problem, started):
    new, jitter = self.advance(state, problem, started)
    mix = bp.variational_mixture(new, mask=problem.mask)
    return self.conclude_with(state, started, new, mix, jitter,
                              self.evaluate(mix, problem), problem.tol,
                              problem.mask)

  def result(self, state: VBState, problem: engine.Problem):
    """The posterior and its lower bound with its own responsibilities."""
    return state.posterior, (responsibility_entropy(state.mixture,
                                                    state.stats)
                             + bound_terms(state.posterior, problem.mask))

  n_positive = engine.EMStep.n_positive
