"""What a fitted mixture estimator computes on data: the inference methods.

:class:`MixtureInference` holds ``predict``, ``predict_proba``,
``score_samples``, ``score``, ``bic``, ``aic``, ``impute`` and ``sample``,
and ``_evaluate``, the plumbing the first three share: data checked and
padded to the ladder of sizes, the mixture in component slots (or as full
matrices in the program the four covariance types share), one compiled
program per size, the paddings dropped from the result.

A mixin of the estimators, next to
:class:`gmmjax._src.estimator_base.MixtureBase`, whose fitted state
(``_params``, ``_check_is_fitted``, ``_fitted_type``), data checks
(``_validate_observed``) and padding (``_on_device``, ``_slots``) it uses.
"""

from __future__ import annotations

import jax
import numpy as np

from gmmjax._src import cache, compiling, conditional, em, missing
from gmmjax._src import nan_policy as nan_lib
from gmmjax._src import validation as val
from gmmjax._src.estimator_base import key_from_random_state
from gmmjax._src.params import GMMParams

# predict, predict_proba and score_samples of a fitted model: compiled with
# the options of the problem's size (compiling.pick), as the fit was.
_evaluators = compiling.jit_by_size(lambda params, X, fn: fn(params, X),
                                    static_argnames="fn")


class MixtureInference:
  """The methods that evaluate or sample a fitted mixture (a mixin of the
  estimators, after ``MixtureBase``)."""

  def _evaluate(self, what: str, X, policy=None):
    """``em.<what>(params, X)`` per sample, on padded data and in component
    slots (padding.component_slots; small problems as full matrices in the
    program the four types share, type_switch.shared_slots), both paddings
    dropped from the result;
    with missing entries ``em.evaluate_observed`` on the rows sorted by
    their number of missing entries (their order restored)."""
    self._check_is_fitted()
    X, observed = self._validate_observed(X, reset=False, policy=policy)
    order = missing.sort_rows(observed)  # rows by their missing entries
    if order is not None:
      X, observed = np.asarray(X)[order], observed[order]
    Xp, _ = self._on_device(X)
    k = self.weights_.shape[0]
    slots, as_full = self._slots(k, Xp.shape[0], Xp.shape[1],
                                 observed is not None, self._fitted_type())
    params = self._evaluation_params(slots, as_full)
    if observed is None:
      # No slots (low-rank models, large problems): exactly k components.
      program = compiling.pick(_evaluators, Xp.shape[0],
                               k if slots is None else slots, Xp.shape[1])
      out = program(params, Xp, fn=getattr(em, what))
    else:
      mask = nan_lib.pad_observed(observed, Xp.shape[0])
      out = em.evaluate_observed(params, Xp, jax.device_put(mask),
                                 what=what, slots=missing.max_missing(mask))
    out = np.asarray(out)[:X.shape[0]]
    if order is not None:
      out = out[np.argsort(order)]
    return out[:, :k] if out.ndim == 2 else out

  def _evaluation_params(self, n_slots: int | None = None,
                         as_full: bool = False) -> GMMParams:
    """The mixture ``predict``, ``predict_proba`` and ``score_samples``
    evaluate (the fitted one; a Bayesian mixture's variational one), in
    ``n_slots`` component slots and as full matrices if asked (see
    :meth:`_params`; a subclass may ignore both)."""
    return self._params(n_slots, as_full)

  def predict(self, X):
    """Component labels ``(n_samples,)``."""
    return self._evaluate("predict", X)

  def predict_proba(self, X):
    """Responsibilities ``(n_samples, n_components)``."""
    return self._evaluate("predict_proba", X)

  def score_samples(self, X):
    """Per-sample log density ``(n_samples,)``."""
    return self._evaluate("log_prob", X)

  def score(self, X, y=None, sample_weight=None):
    """Mean (weighted) per-sample log-likelihood of ``X``."""
    del y
    logp = self.score_samples(X)
    w = val.check_sample_weight(sample_weight, logp.shape[0])
    return float(np.average(logp, weights=w))

  def bic(self, X, sample_weight=None):
    """Bayesian information criterion on ``X`` (lower is better)."""
    logp = self.score_samples(X)
    w = val.check_sample_weight(sample_weight, logp.shape[0])
    n = logp.shape[0] if w is None else float(np.sum(w))
    total = float(np.sum(logp if w is None else w * logp))
    return -2.0 * total + self._n_parameters() * np.log(n)

  def aic(self, X, sample_weight=None):
    """Akaike information criterion on ``X`` (lower is better)."""
    logp = self.score_samples(X)
    w = val.check_sample_weight(sample_weight, logp.shape[0])
    total = float(np.sum(logp if w is None else w * logp))
    return -2.0 * total + 2.0 * self._n_parameters()

  def impute(self, X):
    """``X`` with its NaN entries replaced by their conditional means
    ``E[x_missing | x_observed]`` under the fitted mixture (observed
    entries unchanged); see :func:`gmmjax.impute`. Rows with no observed
    entry are refused."""
    self._check_is_fitted()
    X, observed = self._validate_observed(X, reset=False,
                                          policy="marginalize")
    if observed is None:
      return np.array(X)
    Xp, _ = self._on_device(X)
    mask = nan_lib.pad_observed(observed, Xp.shape[0])
    return np.asarray(conditional.impute(self._params(), Xp,
                                         observed=mask))[:X.shape[0]]

  def _n_parameters(self):
    return em.n_parameters(self._params())

  def sample(self, n_samples=1):
    """Draws ``(X, y)``: samples grouped by component, and their labels."""
    self._check_is_fitted()
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
      raise ValueError(f"Invalid value for 'n_samples': {n_samples} . The "
                       "sampling requires at least one sample.")
    cache.enable_default_cache()
    key = key_from_random_state(self.random_state)
    # Drawn in a ladder size (compiling.ladder_size), so that nearby counts
    # share one program; the surplus is dropped on the host.
    n = int(n_samples)
    X, y = em.sample(key, self._params(), compiling.ladder_size(n, 256))
    X, y = np.asarray(X)[:n], np.asarray(y)[:n]
    order = np.argsort(y, kind="stable")
    return X[order], y[order]
