"""``GaussianMixture``: a scikit-learn-style estimator over the functional core.

It converts and validates NumPy input (and DataFrames, whose column names
become ``feature_names_in_``), runs the compiled core and stores NumPy
results. scikit-learn is optional: once it is imported the estimator is a
``sklearn.base.BaseEstimator`` and ``DensityMixin`` (sklearn_compat), and
``sklearn.utils.estimator_checks.check_estimator`` passes; without it, the
same parameter protocol and checks work on their own.

The class is assembled from ``MixtureBase`` (fitted state and data
checks, estimator_base), ``MixtureInference`` (``predict``, ``score``,
``sample``, ..., estimator_inference), ``MixtureRestarts`` (the restarts,
warm starts and the kept restart, estimator_restarts) and
``DensityEstimator``; this module holds the constructor, the parameter
checks, ``fit`` and ``partial_fit``.

Differences from ``sklearn.mixture.GaussianMixture`` (all deliberate):

* ``n_init`` restarts run as one vmapped compiled program, not a Python loop;
  the kept restart is scikit-learn's (the highest ``lower_bound_``).
* ``fit``, ``fit_predict``, ``score``, ``score_samples``, ``bic`` and ``aic``
  take ``sample_weight``.
* Computation is float32 unless the input is float64 *and* JAX's x64 mode is
  on (``jax.config.update("jax_enable_x64", True)``); fitted attributes have
  the compute dtype.
"""

from __future__ import annotations

import time
import warnings

import jax
import numpy as np

from gmmjax._src import fit as fit_lib
from gmmjax._src import init as init_lib
from gmmjax._src import nan_policy as nan_lib
from gmmjax._src import param_spec as spec
from gmmjax._src import progress as progress_lib
from gmmjax._src import restarts, scale_online
from gmmjax._src import sklearn_compat as compat
from gmmjax._src import validation as val
from gmmjax._src.estimator_base import (
  MIXTURE_PARAMETERS,
  MixtureBase,
  key_from_random_state,
)
from gmmjax._src.estimator_inference import MixtureInference
from gmmjax._src.estimator_restarts import MixtureRestarts
from gmmjax._src.params import ALL_TYPES


class GaussianMixture(MixtureBase, MixtureInference, MixtureRestarts,
                      compat.DensityEstimator):
  """Gaussian mixture fitted by EM, with scikit-learn's interface.

  Parameters, defaults and fitted attributes are those of
  ``sklearn.mixture.GaussianMixture``; see that class for their meaning.

  Args:
    n_components: number of mixture components.
    covariance_type: ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"`` or
      ``"lowrank"`` (``W W^T + diag(psi)``, a mixture of factor analysers;
      needs ``rank``).
    tol: convergence threshold on the change of the mean log-likelihood.
    reg_covar: non-negative regulariser added to covariance diagonals.
    max_iter: EM iterations per restart.
    n_init: restarts (run together, vmapped); the best is kept.
    init_params: ``"kmeans"``, ``"k-means++"``, ``"random"`` or
      ``"random_from_data"``.
    weights_init, means_init, precisions_init: user-given initial values.
    random_state: None, an int or a ``numpy.random.RandomState``.
    warm_start: continue from the fitted parameters on the next ``fit``.
    verbose: 0 silent, 1 iteration numbers, 2 also log-likelihood and timing.
    verbose_interval: iterations between progress lines.
    rank: the number of factors ``q`` of ``covariance_type="lowrank"``
      (``1 <= rank < n_features``); ``None`` for the other types. A low-rank
      fit sets ``loadings_`` ``(K, D, q)`` and ``noise_`` ``(K, D)``;
      ``covariances_``, ``precisions_`` and ``precisions_cholesky_`` are
      then the dense ``(K, D, D)`` matrices, computed on each access.
    nan_policy: ``"raise"`` (default, as scikit-learn: NaN in ``X`` is a
      ``ValueError``) or ``"marginalize"``: NaN entries are missing at
      random; ``fit`` maximises the observed-data likelihood, and
      ``predict``, ``predict_proba``, ``score_samples``, ``score``, ``bic``
      and ``aic`` use each row's observed marginal. Rows with no observed
      entry are refused. :meth:`impute` fills NaN entries with their
      conditional means (under either policy).

  Fitted on a pandas DataFrame whose column names are all strings, it also
  sets ``feature_names_in_``; later data with other, missing or reordered
  columns are refused (and data without names warned about), as in
  scikit-learn.

  Beyond scikit-learn's fitted attributes, ``fit`` sets two diagnostics of
  the kept restart (:class:`gmmjax.FitResult`): ``jitter_``, the largest
  diagonal jitter a covariance needed to be factorised (0.0 when none; a
  nonzero value also raises a ``ConvergenceWarning``), and
  ``n_degenerate_``, the number of empty or collapsed components
  (:func:`gmmjax.count_degenerate`). ``partial_fit`` sets them for the
  stream so far (the largest jitter of any update; empty components
  counted against the rows of positive weight seen, as ``fit`` counts).
  :func:`gmmjax.save` keeps them.

  The functional API and the estimator meet in two places: ``params_`` is
  the fitted mixture as a :class:`gmmjax.GMMParams`, and
  :meth:`from_params` builds a fitted estimator from one. Progress is
  reported through ``fit(X, callback=...)`` (see :meth:`fit`).

  Example:
    >>> import numpy as np, gmmjax as gx
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-5, 1, (100, 2)),
    ...                     rng.normal(5, 1, (100, 2))])
    >>> gm = gx.GaussianMixture(2, random_state=0).fit(X)
    >>> np.sort(gm.means_[:, 0]).round(0).tolist()
    [-5.0, 5.0]
  """

  _parameter_spec = dict(
      MIXTURE_PARAMETERS, covariance_type=spec.options(*ALL_TYPES),
      weights_init=spec.ARRAY_OR_NONE, means_init=spec.ARRAY_OR_NONE,
      precisions_init=spec.ARRAY_OR_NONE,
      rank=spec.integer(1, or_none=True),
      nan_policy=spec.options(*nan_lib.NAN_POLICIES))

  def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3,
               reg_covar=1e-6, max_iter=100, n_init=1, init_params="kmeans",
               weights_init=None, means_init=None, precisions_init=None,
               random_state=None, warm_start=False, verbose=0,
               verbose_interval=10, rank=None, nan_policy="raise"):
    super().__init__(n_components, covariance_type, tol, reg_covar, max_iter,
                     n_init, init_params, random_state, warm_start, verbose,
                     verbose_interval)
    self.weights_init = weights_init
    self.means_init = means_init
    self.precisions_init = precisions_init
    self.rank = rank
    self.nan_policy = nan_policy

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    # NaN entries are data under nan_policy="marginalize" (missing values).
    tags.input_tags.allow_nan = (
        getattr(self, "nan_policy", "raise") == "marginalize")
    return tags

  # -- validation -----------------------------------------------------------

  def _check_parameters(self):
    """Constructor parameters against ``_parameter_spec``: scikit-learn's
    ``InvalidParameterError`` when it is installed, else a ``ValueError``
    in its wording (sklearn_compat); then the rules that tie parameters
    together (``rank`` goes with ``covariance_type="lowrank"``)."""
    self._validate_params()
    if self.covariance_type == "lowrank":
      if self.rank is None:
        raise ValueError("covariance_type='lowrank' needs rank=q, the "
                         "number of factors (1 <= q < n_features).")
      if self.precisions_init is not None:
        raise ValueError("precisions_init is not supported with "
                         "covariance_type='lowrank'; give weights_init and "
                         "means_init only.")
    elif self.rank is not None:
      raise ValueError(f"rank={self.rank!r} is only for covariance_type="
                       f"'lowrank', not {self.covariance_type!r}.")
    if (self.nan_policy == "marginalize"
        and self.covariance_type == "lowrank"):
      raise ValueError("nan_policy='marginalize' is not supported with "
                       "covariance_type='lowrank'; use 'full', 'tied', "
                       "'diag' or 'spherical', or impute the missing values "
                       "first.")

  # -- fitting (its start and kept restart: MixtureRestarts) ----------------

  def _progress_callback(self, callback=None, progress=False):
    """The host callback the compiled loop calls each iteration, or None.

    ``verbose``'s printer, the shared hook of the progress bar (``progress``)
    and the user's ``callback``, in turn. With none of them no callback is
    compiled at all, so progress costs nothing.
    """
    if callback is not None and not callable(callback):
      raise TypeError(f"callback should be None or a callable "
                      f"callback(n_iter, log_likelihood, change), got "
                      f"{type(callback).__name__}.")
    printer = (progress_lib.printer(int(self.verbose),
                                    int(self.verbose_interval))
               if self.verbose else None)
    return progress_lib.chain(printer, progress_lib.forward if progress
                              else None, callback)

  def fit(self, X, y=None, sample_weight=None, *, callback=None,
          progress=False):
    """Fits the mixture to ``X`` ``(n_samples, n_features)``; returns self.

    Args:
      X: ``(n_samples, n_features)`` data.
      y: ignored (scikit-learn's signature).
      sample_weight: optional non-negative ``(n_samples,)`` weights.
      callback: optional progress hook ``callback(n_iter, log_likelihood,
        change)``, called on the host after every EM iteration while the
        compiled loop runs, once per running restart (under ``vmap``,
        restarts report in no fixed order): ``n_iter`` counts from 1,
        ``log_likelihood`` is the mean (weighted) log-likelihood before
        that iteration's M-step (``lower_bounds_[n_iter - 1]`` of the kept
        restart) and ``change`` its difference to the previous one
        (``inf`` at the first). Called as well as ``verbose``'s lines. A
        fit argument, not a constructor parameter: a hook is not part of
        the model (it is neither cloned, compared nor saved). It is a
        static argument of the compiled loop, so pass the same object to
        reuse the program; ``None`` compiles no callback.
      progress: show a progress bar over the EM iterations while the fit
        runs (:func:`gmmjax.progress_bar`: tqdm's, a widget in Jupyter,
        when tqdm is installed; else a text line on stderr). Every bar
        shares one compiled hook, so this compiles once, not per fit.
    """
    del y
    self._fit(X, sample_weight, callback, progress)
    return self

  def fit_predict(self, X, y=None, sample_weight=None, *, callback=None,
                  progress=False):
    """Fits and returns the component of each sample (after a final E-step,
    in the predict program every n_components of a slot rung shares);
    ``callback`` and ``progress`` as in :meth:`fit`."""
    del y
    return self._fit(X, sample_weight, callback, progress).predict(X)

  def _fit(self, X, sample_weight, callback=None, progress=False):
    """The fit behind ``fit`` and ``fit_predict``; returns ``self``.

    ``fit`` needs no labels: skipping them saves a pass over the data and,
    on the first call, compiling ``predict`` (~0.15 s).
    """
    self._check_parameters()
    self.__dict__.pop("_online_state", None)  # partial_fit restarts here
    self.__dict__.pop("_online_n_positive", None)
    warm = bool(self.warm_start and hasattr(self, "converged_"))
    if warm:
      self._check_warm_start()
    X, observed = self._validate_observed(X, reset=not warm)
    n_samples, n_features = X.shape
    if n_samples < self.n_components:
      raise ValueError(
          "Expected n_samples >= n_components but got n_components = "
          f"{self.n_components}, n_samples = {n_samples}")
    w = val.check_sample_weight(sample_weight, n_samples, dtype=X.dtype)
    # Rows of weight 0 pad the data to the ladder: the fit is the unpadded
    # one (every init method draws the same), its program shared.
    X, w = self._on_device(X, w)
    kwargs = dict(sample_weight=w, max_iter=int(self.max_iter),
                  tol=float(self.tol), reg_covar=float(self.reg_covar),
                  callback=self._progress_callback(callback, progress))
    if observed is not None:
      kwargs["observed"] = jax.device_put(
          nan_lib.pad_observed(observed, X.shape[0]))
    start = time.perf_counter()
    with progress_lib.showing(progress, int(self.max_iter), "EM"):
      if warm:
        prev = (self.lower_bound_ if np.isfinite(self.lower_bound_)
                else -np.inf)
        results = self._continue_fit(X, prev, kwargs)
      else:
        results = self._fit_restarts(X, kwargs)
      result, lower_bound = self._kept_restart(results, warm, start)
    if float(result.jitter) > 0:
      self._warn_jitter(float(result.jitter))
    if not bool(result.converged) and self.max_iter > 0:
      warnings.warn(
          "Best performing initialization did not converge. Try different "
          "init parameters, or increase max_iter, tol, or check for "
          "degenerate data.", val.convergence_warning(), stacklevel=2)

    n_iter = int(result.n_iter)
    self._set_fitted(result.params, converged=result.converged, n_iter=n_iter,
                     lower_bound=lower_bound,
                     lower_bounds=np.asarray(result.history)[:n_iter],
                     jitter=result.jitter, n_degenerate=result.n_degenerate)
    if self.n_degenerate_ and not warm:
      self._warn_few_distinct_points(X, w, n_samples)
    return self

  # -- warnings and online fitting ------------------------------------------

  def _warn_few_distinct_points(self, X, w, n_samples):
    """scikit-learn's k-means warning, where the data explain a degenerate
    fit: fewer distinct samples (of positive weight) than components. The
    first ``n_samples`` rows, cut on the host (slicing the padded device
    arrays would compile a program)."""
    X = np.asarray(X)[:n_samples][np.asarray(w)[:n_samples] > 0]
    distinct = np.unique(X, axis=0).shape[0]
    if distinct < self.n_components:
      warnings.warn(
          f"Number of distinct clusters ({distinct}) found smaller than "
          f"n_components ({self.n_components}). Possibly due to duplicate "
          f"points in X: {self.n_degenerate_} components are empty or "
          "collapsed (n_degenerate_).", val.convergence_warning(),
          stacklevel=3)

  def _warn_jitter(self, jitter):
    warnings.warn(
        f"A covariance was not positive definite up to rounding: a "
        f"diagonal jitter of up to {jitter:.3g} was added, on "
        f"top of reg_covar={self.reg_covar!r}, to factorise it (jitter_). "
        "Increase reg_covar, remove collinear or duplicated features, or "
        "fit in float64.", val.convergence_warning(), stacklevel=3)

  def partial_fit(self, X, y=None, sample_weight=None):
    """One online-EM (stepwise EM) update with the batch ``X``; returns self.

    The first call initialises from ``X`` (``init_params``, ``random_state``,
    ``weights_init``/``means_init``/``precisions_init``) or continues from a
    previous ``fit``; each later call is one update with step size
    ``(t + 2) ** -0.6`` (Cappé & Moulines, 2009). Memory does not grow with
    the number of calls. Like ``fit``, it raises a ``ConvergenceWarning``
    when a covariance needed a diagonal jitter to be factorised: on the
    first such update and whenever the stream's largest jitter (``jitter_``)
    grows, not on every later call. It sets the fitted attributes of the
    stream so far: ``converged_`` False, ``n_iter_`` the updates made,
    ``lower_bound_`` the running log-likelihood estimate and
    ``lower_bounds_`` empty (there are no EM iterations to list).
    """
    del y
    self._check_parameters()
    state = getattr(self, "_online_state", None)
    new_stream = state is None
    fitted = hasattr(self, "means_")
    X, observed = self._validate_observed(X, reset=not fitted)
    w = val.check_sample_weight(sample_weight, X.shape[0])
    # Rows with positive weight: the count n_degenerate_ is measured against.
    n_pos = X.shape[0] if w is None else int(np.count_nonzero(w))
    X, w = self._on_device(X, w)  # batches of nearby sizes share programs
    if observed is not None:
      observed = jax.device_put(nan_lib.pad_observed(observed, X.shape[0]))
    if state is None:
      if fitted:  # continue a batch fit online
        params = self._params()
      else:
        if n_pos < self.n_components:
          raise ValueError(
              "Expected n_samples >= n_components in the first partial_fit "
              f"batch but got n_components = {self.n_components}, n_samples = "
              f"{n_pos}")
        params = restarts.params_with_overrides(
            init_lib.init_params(
                key_from_random_state(self.random_state), X,
                int(self.n_components), covariance_type=self.covariance_type,
                method=self.init_params, reg_covar=float(self.reg_covar),
                sample_weight=w, rank=self._rank()),
            **self._initial_overrides(X.shape[1]))
      state = scale_online.online_init(X, params, sample_weight=w,
                                       reg_covar=float(self.reg_covar),
                                       observed=observed)
    else:
      state = scale_online.online_update(X, state, sample_weight=w,
                                         reg_covar=float(self.reg_covar),
                                         observed=observed)
    # Rows with positive weight seen so far (skipped batches excepted).
    previous = 0 if new_stream else self._online_n_positive
    self._online_n_positive = previous + (0 if bool(state.failed) else n_pos)
    self._online_state = state
    previous_jitter = 0.0 if new_stream else getattr(self, "jitter_", 0.0)
    if float(state.jitter) > previous_jitter:
      self._warn_jitter(float(state.jitter))
    self._set_fitted(
        state.params, converged=False, n_iter=int(state.step) + 1,
        lower_bound=state.log_likelihood, jitter=state.jitter,
        n_degenerate=fit_lib.count_degenerate(state.params,
                                              self._online_n_positive,
                                              reg_covar=float(self.reg_covar)))
    return self
