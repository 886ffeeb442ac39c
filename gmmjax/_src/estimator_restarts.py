"""Where a mixture estimator's fit starts, and which restart it keeps.

:class:`MixtureRestarts` holds the start of ``GaussianMixture.fit``: the
user's initial values (``weights_init``, ``means_init``,
``precisions_init``, padded to component slots when the fit runs in them),
the ``n_init`` restarts run as one program (``_fit_restarts``), a warm
start's continuation of the fitted model (``_check_warm_start``,
``_continue_fit``) and the choice among the results (``_kept_restart``:
scikit-learn's, the highest ``lower_bound_``).
``BayesianGaussianMixture`` replaces ``_fit_restarts``, ``_continue_fit``
and ``_check_warm_start`` with its variational ones and keeps the rest.

A mixin of the estimators, after
:class:`gmmjax._src.estimator_base.MixtureBase`, whose fitted state
(``_params``, ``_fitted_type``, ``_rank``) and ``_slots`` it uses.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from gmmjax._src import checks, missing, padding, restarts, type_switch
from gmmjax._src import covariance as cov_ops
from gmmjax._src import fit as fit_lib
from gmmjax._src import validation as val
from gmmjax._src.estimator_base import key_from_random_state


def _best_by_lower_bound(lower_bounds, failed) -> int:
  """scikit-learn's choice of restart: the highest ``lower_bound_``.

  As its loop keeps them: a later restart replaces the kept one when its
  lower bound is strictly higher or the kept one's is ``-inf`` (so with
  ``max_iter=0`` the last restart is kept). Failed restarts are kept only
  when all failed. More restarts never lower ``lower_bound_``.
  """
  best, best_lb = None, -np.inf
  for i, (lb, bad) in enumerate(zip(lower_bounds, failed)):
    if bad:
      continue
    if best is None or lb > best_lb or best_lb == -np.inf:
      best, best_lb = i, lb
  return 0 if best is None else best


class MixtureRestarts:
  """The restarts and warm starts of ``fit`` (a mixin of the
  estimators, after ``MixtureBase``)."""

  def _continue_fit(self, X, prev_log_likelihood, kwargs):
    """``gx.fit`` from the fitted parameters on data ``_validate_X`` and
    ``check_sample_weight`` already checked: ``gx.fit``'s own finiteness
    check would be a second pass (and a program) over the same data."""
    params, X, w = checks.prepare(self._params(), X, kwargs["sample_weight"])
    observed = kwargs.get("observed")
    X, w, observed = missing.sorted_rows(X, w, observed,
                                         params.n_components)
    max_iter = kwargs["max_iter"]
    return fit_lib.fit_checked(
        X, params, w, kwargs["tol"], kwargs["reg_covar"], prev_log_likelihood,
        None, np.int32(max_iter), fit_lib.history_length(max_iter),
        callback=kwargs["callback"], observed=observed,
        slots=missing.max_missing(observed))

  def _check_warm_start(self):
    """A warm start continues the fitted model: its shape must not change.

    scikit-learn silently keeps the fitted number of components when
    ``n_components`` changed; gmmjax says so instead.
    """
    fitted_k = self.weights_.shape[0]
    fitted_type = self._fitted_type()
    fitted_rank = getattr(self, "loadings_", np.zeros((0, 0, 0))).shape[-1]
    if (fitted_k != self.n_components or fitted_type != self.covariance_type
        or (fitted_type == "lowrank" and fitted_rank != self.rank)):
      raise ValueError(
          f"warm_start=True continues the fitted model ({fitted_k} "
          f"components, covariance_type={fitted_type!r}), but the "
          f"estimator now has n_components={self.n_components}, "
          f"covariance_type={self.covariance_type!r}. Set warm_start=False "
          "to fit the new model from a fresh initialisation.")

  def _fit_restarts(self, X, kwargs):
    """Every restart's init and EM fit; small problems in component slots
    (padding.component_slots), so that nearby n_components share the
    program, and in the full type's program fitting any of the four types
    (type_switch.shared_slots), so that the types share it too (the
    caller drops the extra slots and converts the shapes on the host)."""
    k, ctype = int(self.n_components), self.covariance_type
    n, d = X.shape
    overrides = self._initial_overrides(d)
    slots, shared = self._slots(k, n, d, "observed" in kwargs)
    structure = None
    if shared:
      structure = type_switch.CODES[ctype]
      if overrides["precisions"] is not None:
        overrides["precisions"] = type_switch.to_full(
            overrides["precisions"], ctype, k, d)
      ctype = "full"
    if slots is not None:
      overrides = self._slotted_overrides(overrides, slots, d, ctype)
    # Nothing given: no overrides at all, and the initialisation reaches
    # the EM loop as statistics (restarts._init_and_fit: one M-step in the
    # program, not two).
    if all(value is None for value in overrides.values()):
      overrides = None
    return restarts.restart_results(
        key_from_random_state(self.random_state), X,
        k if slots is None else slots, n_init=int(self.n_init),
        covariance_type=ctype, method=self.init_params, overrides=overrides,
        n_active=None if slots is None else k, rank=self._rank(),
        structure=structure, init_as_stats=True, **kwargs)

  def _slotted_overrides(self, overrides, slots, d, covariance_type):
    """User-given initial values padded to ``slots`` components (weight 0,
    mean 0, unit precision: padding.pad_components' slots)."""
    fill = dict(weights=0.0, means=0.0,
                precisions=padding.unit_covariance(covariance_type, d))
    return {name: value if value is None or fill[name] is None
            else padding.grow_components(value, slots, fill[name])
            for name, value in overrides.items()}

  def _initial_overrides(self, n_features):
    k, ctype = self.n_components, self.covariance_type
    return dict(
        weights=None if self.weights_init is None else
        val.check_weights_init(self.weights_init, k),
        means=None if self.means_init is None else
        val.check_means_init(self.means_init, k, n_features),
        precisions=None if self.precisions_init is None else
        val.check_precisions_init(self.precisions_init, cov_ops.get(ctype), k,
                                  n_features))

  def _kept_restart(self, results, warm: bool, start: float):
    """The restart ``fit`` keeps (scikit-learn's), and its lower bound.

    On the host: small NumPy work, nothing more to compile. Reports every
    restart when ``verbose``; raises when the kept one failed.
    """
    results = jax.device_get(results)
    params = padding.unpad_components(results.params, int(self.n_components))
    if params.covariance_type != self.covariance_type:  # type_switch's
      params = type_switch.params_from_full(params, self.covariance_type)
    results = results._replace(params=params)
    if warm or int(self.n_init) == 1:
      results = jax.tree.map(lambda a: np.asarray(a)[None], results)
    lower_bounds = fit_lib.lower_bound(results.history, results.n_iter, np)
    best = _best_by_lower_bound(lower_bounds, np.asarray(results.failed))
    result = restarts.take(results, best)
    # Failed restarts rank last: the kept one failed only if all did. As in
    # scikit-learn, that is an error (the functional fit returns the last
    # finite params with `failed` set instead).
    if bool(result.failed) or not all(
        np.all(np.isfinite(np.asarray(leaf)))
        for leaf in jax.tree.leaves(result.params)):
      raise ValueError(
          "Fitting the mixture model failed because some components have "
          "ill-defined empirical covariance (for instance caused by singleton "
          "or collapsed samples). Try to decrease the number of components, "
          "increase reg_covar, or scale the input data.")
    if self.verbose:
      lapse = time.perf_counter() - start
      for i in range(results.n_iter.shape[0]):
        state = "converged" if results.converged[i] else "did not converge"
        print(f"Initialization {i} {state} after {int(results.n_iter[i])} "
              f"iterations.\t time lapse {lapse:.5f}s\t lower bound "
              f"{float(lower_bounds[i]):.5f}", flush=True)
    return result, float(lower_bounds[best])
