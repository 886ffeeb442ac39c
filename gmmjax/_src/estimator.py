"""``GaussianMixture``: a scikit-learn-style estimator over the functional core.

It converts and validates NumPy input, runs the compiled core and stores
NumPy results. scikit-learn is not needed: ``get_params``/``set_params``
follow its conventions, so ``clone``, ``Pipeline`` and ``GridSearchCV`` work,
and ``sklearn.utils.estimator_checks.check_estimator`` passes (its tags come
from ``__sklearn_tags__``, which imports scikit-learn only when asked).

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

import functools
import inspect
import time
import warnings

import jax
import numpy as np

from gmmjax._src import (
    cache,
    checks,
    compiling,
    conditional,
    em,
    missing,
    padding,
    restarts,
    scale_online,
)
from gmmjax._src import estimator_lowrank as est_lowrank
from gmmjax._src import fit as fit_lib
from gmmjax._src import init as init_lib
from gmmjax._src import nan_policy as nan_lib
from gmmjax._src import validation as val
from gmmjax._src.params import ALL_TYPES, GMMParams

# predict, predict_proba and score_samples of a fitted model: compiled with
# the options of the problem's size (compiling.pick), as the fit was.
_evaluators = compiling.jit_by_size(lambda fn, params, X: fn(params, X),
                                    static_argnames="fn")


def key_from_random_state(random_state):
  """A JAX key from scikit-learn's ``random_state`` (None, int, RandomState)."""
  if random_state is None:
    seed = np.random.randint(np.iinfo(np.int32).max)
  elif isinstance(random_state, (int, np.integer)) and not isinstance(
      random_state, bool):
    seed = int(random_state)
  elif isinstance(random_state, np.random.RandomState):
    seed = random_state.randint(np.iinfo(np.int32).max)
  elif isinstance(random_state, np.random.Generator):
    seed = int(random_state.integers(np.iinfo(np.int32).max))
  else:
    raise ValueError(f"{random_state!r} cannot be used to seed a random "
                     "number generator: use None, an int or a "
                     "numpy.random.RandomState.")
  seed %= 2**32
  if jax.config.jax_default_prng_impl == "threefry2x32":
    # jax.random.key(seed)'s own bits, built on the host: the seeding is a
    # program of its own, which a first fit would compile (~0.2 s).
    return jax.random.wrap_key_data(np.array([0, seed], np.uint32))
  return jax.random.key(seed)


@functools.cache
def _progress_printer(verbose: int, interval: int):
  """A host callback printing progress lines; cached so jit sees one object."""
  start = [time.perf_counter()]

  def callback(n_iter, log_likelihood, change):
    n_iter = int(n_iter)
    if n_iter == 1:
      start[0] = time.perf_counter()
    if n_iter % interval:
      return
    if verbose >= 2:
      lapse = time.perf_counter() - start[0]
      print(f"  Iteration {n_iter}\t time lapse {lapse:.5f}s\t "
            f"log-likelihood {float(log_likelihood):.5f}\t ll change "
            f"{float(change):.5f}", flush=True)
    else:
      print(f"  Iteration {n_iter}", flush=True)

  return callback


@functools.lru_cache(maxsize=16)
def _both(first, second):
  """One host callback calling ``first`` then ``second``; cached so that a
  fit repeated with the same hook reuses its compiled program."""

  def callback(*values):
    first(*values)
    second(*values)

  return callback


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


class GaussianMixture:
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

  def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3,
               reg_covar=1e-6, max_iter=100, n_init=1, init_params="kmeans",
               weights_init=None, means_init=None, precisions_init=None,
               random_state=None, warm_start=False, verbose=0,
               verbose_interval=10, rank=None, nan_policy="raise"):
    self.n_components = n_components
    self.covariance_type = covariance_type
    self.tol = tol
    self.reg_covar = reg_covar
    self.max_iter = max_iter
    self.n_init = n_init
    self.init_params = init_params
    self.weights_init = weights_init
    self.means_init = means_init
    self.precisions_init = precisions_init
    self.random_state = random_state
    self.warm_start = warm_start
    self.verbose = verbose
    self.verbose_interval = verbose_interval
    self.rank = rank
    self.nan_policy = nan_policy

  # -- scikit-learn's parameter protocol -----------------------------------

  @classmethod
  def _get_param_names(cls):
    sig = inspect.signature(cls.__init__)
    return sorted(p.name for p in sig.parameters.values()
                  if p.name != "self" and p.kind != p.VAR_KEYWORD)

  def get_params(self, deep=True):
    """Constructor parameters as a dict (scikit-learn's protocol)."""
    del deep  # no nested estimators
    return {name: getattr(self, name) for name in self._get_param_names()}

  def set_params(self, **params):
    """Sets constructor parameters; returns ``self``."""
    valid = self._get_param_names()
    for name, value in params.items():
      if name not in valid:
        raise ValueError(f"Invalid parameter {name!r} for estimator {self}. "
                         f"Valid parameters are: {valid!r}.")
      setattr(self, name, value)
    return self

  def __repr__(self):
    defaults = {name: p.default for name, p in
                inspect.signature(type(self).__init__).parameters.items()}
    changed = []
    for name in self._get_param_names():
      value = getattr(self, name)
      default = defaults.get(name)
      if isinstance(value, np.ndarray) or value is not default and (
          value != default):
        changed.append(f"{name}={value!r}")
    return f"{type(self).__name__}({', '.join(changed)})"

  def __getattr__(self, name):
    # Only called when ordinary lookup fails: the dense covariances_,
    # precisions_ and precisions_cholesky_ of a low-rank fit.
    if name in est_lowrank.DENSE and "loadings_" in self.__dict__:
      return est_lowrank.dense(self, name)
    prop = getattr(type(self), name, None)
    if isinstance(prop, property):  # its own error (NotFittedError), not ours
      return prop.fget(self)
    raise AttributeError(f"{type(self).__name__!r} object has no attribute "
                         f"{name!r}")

  def __sklearn_is_fitted__(self):
    return hasattr(self, "means_")

  def __sklearn_tags__(self):
    """scikit-learn's estimator tags (needs scikit-learn, imported lazily).

    A density estimator that takes 2-D float input, no NaN, no sparse data
    and no ``y``, like ``sklearn.mixture.GaussianMixture``.
    """
    from sklearn.utils import Tags, TargetTags
    return Tags(estimator_type="density_estimator",
                target_tags=TargetTags(required=False))

  # -- validation -----------------------------------------------------------

  def _check_parameters(self):
    val.check_param("n_components", self.n_components, "int", low=1)
    val.check_param("covariance_type", self.covariance_type, "str",
                    options=ALL_TYPES)
    val.check_param("tol", self.tol, "float", low=0.0)
    val.check_param("reg_covar", self.reg_covar, "float", low=0.0)
    val.check_param("max_iter", self.max_iter, "int", low=0)
    val.check_param("n_init", self.n_init, "int", low=1)
    val.check_param("init_params", self.init_params, "str",
                    options=init_lib.INIT_METHODS)
    val.check_param("verbose", self.verbose, "int", low=0)
    val.check_param("verbose_interval", self.verbose_interval, "int", low=1)
    lowrank = self.covariance_type == "lowrank"
    if lowrank:
      if self.rank is None:
        raise ValueError("covariance_type='lowrank' needs rank=q, the "
                         "number of factors (1 <= q < n_features).")
      val.check_param("rank", self.rank, "int", low=1)
      if self.precisions_init is not None:
        raise ValueError("precisions_init is not supported with "
                         "covariance_type='lowrank'; give weights_init and "
                         "means_init only.")
    elif self.rank is not None:
      raise ValueError(f"rank={self.rank!r} is only for covariance_type="
                       f"'lowrank', not {self.covariance_type!r}.")
    val.check_param("nan_policy", self.nan_policy, "str",
                    options=nan_lib.NAN_POLICIES)
    if self.nan_policy == "marginalize" and lowrank:
      raise ValueError("nan_policy='marginalize' is not supported with "
                       "covariance_type='lowrank'; use 'full', 'tied', "
                       "'diag' or 'spherical', or impute the missing values "
                       "first.")

  def _check_is_fitted(self):
    if not hasattr(self, "means_"):
      raise val.sklearn_compatible(val.NotFittedError, "NotFittedError")(
          f"This {type(self).__name__} instance is not fitted yet. Call "
          "'fit' with appropriate arguments before using this estimator.")

  def _validate_X(self, X, *, reset: bool):
    cache.enable_default_cache()  # every fit and predict passes here
    ensure = 2 if reset else 1
    if isinstance(X, np.ndarray) and X.dtype == object:
      # Numbers stored as objects are accepted (scikit-learn's rule); any
      # other object is a TypeError, as NumPy and scikit-learn raise it.
      X = X.astype(np.float64)
    # Data for a fitted model take the model's dtype (the one it was fitted
    # or loaded in); n_features_in_ is set with the rest of the fitted state.
    known = None if reset else self.means_.dtype
    X = val.check_array(X, ensure_min_samples=ensure, dtype=known)
    if not reset and X.shape[1] != self.n_features_in_:
      raise ValueError(
          f"X has {X.shape[1]} features, but {type(self).__name__} is "
          f"expecting {self.n_features_in_} features as input.")
    return X.astype(val.compute_dtype(X) if reset else known, copy=False)

  def _validate_observed(self, X, *, reset: bool, policy=None):
    """``(X, observed)``: :meth:`_validate_X` of ``X`` with NaN entries
    filled (``nan_policy="marginalize"``), and the mask of observed entries
    (``None`` when nothing is missing)."""
    policy = getattr(self, "nan_policy", "raise") if policy is None else policy
    X, observed = nan_lib.split_missing(X, policy)
    return self._validate_X(X, reset=reset), observed

  @staticmethod
  def _on_device(X, sample_weight=None):
    """``(X, weights)`` padded to the ladder (padding.padded_rows) as JAX
    arrays: nearby sample counts share every compiled program."""
    n, d = X.shape
    Xp, wp = padding.pad_samples(X, sample_weight=sample_weight,
                                 n_rows=padding.padded_rows(n, d))
    # device_put: jnp.asarray of a NumPy array compiles a copy per shape.
    return jax.device_put(Xp), jax.device_put(wp)

  def _evaluate(self, what: str, X, policy=None):
    """``em.<what>(params, X)`` per sample, on padded data and in component
    slots (padding.component_slots), both paddings dropped from the result;
    with missing entries ``em.evaluate_observed`` on the rows sorted by
    their number of missing entries (their order restored)."""
    self._check_is_fitted()
    X, observed = self._validate_observed(X, reset=False, policy=policy)
    order = missing.sort_rows(observed)  # rows by their missing entries
    if order is not None:
      X, observed = np.asarray(X)[order], observed[order]
    Xp, _ = self._on_device(X)
    k = self.weights_.shape[0]
    slots = padding.component_slots(k, Xp.shape[0], Xp.shape[1],
                                    self._fitted_type(), 1.0)
    params = self._evaluation_params(slots)
    if observed is None:
      program = compiling.pick(_evaluators, Xp.shape[0], slots or k,
                               Xp.shape[1])
      out = program(getattr(em, what), params, Xp)
    else:
      mask = nan_lib.pad_observed(observed, Xp.shape[0])
      out = em.evaluate_observed(params, Xp, jax.device_put(mask),
                                 what=what, slots=missing.max_missing(mask))
    out = np.asarray(out)[:X.shape[0]]
    if order is not None:
      out = out[np.argsort(order)]
    return out[:, :k] if out.ndim == 2 else out

  def _evaluation_params(self, n_slots: int | None = None) -> GMMParams:
    """The mixture ``predict``, ``predict_proba`` and ``score_samples``
    evaluate (the fitted one; a Bayesian mixture's variational one)."""
    return self._params(n_slots)

  # -- fitting --------------------------------------------------------------

  def _fitted_type(self) -> str:
    return getattr(self, "_fitted_covariance_type", self.covariance_type)

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

  def _params(self, n_slots: int | None = None) -> GMMParams:
    """The fitted parameters on the device, optionally in ``n_slots``
    component slots (the extra ones of weight 0)."""
    if self._fitted_type() == "lowrank":
      leaves = (self.weights_, self.means_, *est_lowrank.leaves(self))
    else:
      leaves = (self.weights_, self.means_, self.covariances_,
                self.precisions_cholesky_)
    if n_slots is not None:
      leaves = padding.pad_components(*leaves, self._fitted_type(), n_slots)
    return GMMParams(*jax.device_put(leaves), self._fitted_type())

  def _set_fitted(self, params: GMMParams, *, converged: bool = True,
                  n_iter: int = 0, lower_bound: float = -np.inf,
                  lower_bounds=(), jitter: float | None = None,
                  n_degenerate: int | None = None):
    """Sets the fitted state: the one place fitted attributes are assigned.

    ``fit``, ``partial_fit`` and :meth:`from_params` (hence
    :func:`gmmjax.load` and the command line) all come here, so the
    attributes always describe one model. The leaves are kept as NumPy
    arrays with their dtype (bit for bit); ``jitter_`` and
    ``n_degenerate_`` are removed when not given (nothing measured them).
    """
    self.weights_ = np.asarray(params.weights)
    self.means_ = np.asarray(params.means)
    self._fitted_covariance_type = params.covariance_type
    if params.covariance_type == "lowrank":  # dense covariances on access
      est_lowrank.set_fitted(self, params)
    else:
      est_lowrank.clear(self)
      self.covariances_ = np.asarray(params.covariances)
      self.precisions_cholesky_ = np.asarray(params.precisions_cholesky)
      p = self.precisions_cholesky_  # P P^T, in NumPy (nothing to compile)
      self.precisions_ = (p @ np.swapaxes(p, -1, -2)
                          if params.covariance_type in ("full", "tied")
                          else p * p)
    self.n_features_in_ = int(self.means_.shape[1])
    self.converged_ = bool(converged)
    self.n_iter_ = int(n_iter)
    self.lower_bound_ = float(lower_bound)
    self.lower_bounds_ = [float(v) for v in lower_bounds]
    for name, value, kind in (("jitter_", jitter, float),
                              ("n_degenerate_", n_degenerate, int)):
      if value is None:
        self.__dict__.pop(name, None)
      else:
        setattr(self, name, kind(value))

  @property
  def params_(self) -> GMMParams:
    """The fitted mixture as a :class:`gmmjax.GMMParams` of JAX arrays.

    What the functional API takes: ``gx.log_prob(gm.params_, X)`` is
    ``gm.score_samples(X)``, ``gx.fit(X, gm.params_)`` continues the fit and
    ``gmmjax.plot`` draws it. A new pytree on each access (the estimator
    keeps NumPy arrays). Raises :class:`gmmjax.NotFittedError` (an
    ``AttributeError``) before the estimator is fitted.
    """
    self._check_is_fitted()
    return self._params()

  @classmethod
  def from_params(cls, params: GMMParams, *, fitted=None,
                  **estimator_kwargs) -> GaussianMixture:
    """A fitted estimator holding ``params``, without running EM.

    The way back from the functional API (``gx.fit``, ``gx.fit_restarts``,
    ``gx.select_n_components``, ...) to the estimator's methods; ``load``
    builds the estimators it reads this way. ``from_params(gm.params_)``
    predicts and scores as ``gm`` does.

    Args:
      params: one mixture (``weights`` of shape ``(K,)``); its arrays are
        kept with their dtype.
      fitted: optional mapping of the fitted scalars to restore, by
        attribute name: ``converged_``, ``n_iter_``, ``lower_bound_``,
        ``lower_bounds_``, ``jitter_``, ``n_degenerate_``. By default those
        of a model no fit has run on: ``converged_=True``, ``n_iter_=0``,
        ``lower_bound_=-inf``, ``lower_bounds_=[]`` and no ``jitter_`` or
        ``n_degenerate_``.
      **estimator_kwargs: constructor parameters (``random_state``,
        ``reg_covar``, ...: they matter for ``sample`` and later fits).
        ``n_components`` and ``covariance_type`` default to the params' and
        must agree with them.

    Returns:
      A fitted :class:`GaussianMixture`.

    Raises:
      ValueError: for invalid constructor parameters, ones that disagree
        with ``params``, batched params, factors that do not match the
        covariances (``GMMParams.recompute_factors``) or an unknown
        ``fitted`` name.

    Example:
      >>> import jax.numpy as jnp, numpy as np, gmmjax as gx
      >>> p = gx.make_params(jnp.array([0.5, 0.5]),
      ...                    jnp.array([[-3.0], [3.0]]), jnp.array([1.0, 1.0]),
      ...                    covariance_type="spherical")
      >>> gm = gx.GaussianMixture.from_params(p, random_state=0)
      >>> gm.predict(np.array([[-2.5], [4.0]])).tolist()
      [0, 1]
      >>> gm.params_.covariance_type, gm.n_features_in_
      ('spherical', 1)
    """
    fitted = dict(fitted or {})
    names = ("converged_", "n_iter_", "lower_bound_", "lower_bounds_",
             "jitter_", "n_degenerate_")
    unknown = sorted(set(fitted) - set(names))
    if unknown:
      raise ValueError(f"from_params got unknown fitted attributes "
                       f"{unknown}; known: {list(names)}.")
    if np.ndim(params.weights) != 1:
      raise ValueError(
          "from_params expects one mixture (weights of shape (K,)), got "
          f"weights of shape {np.shape(params.weights)}.")
    checks.check_factors(params)
    estimator_kwargs.setdefault("n_components", int(params.n_components))
    estimator_kwargs.setdefault("covariance_type", params.covariance_type)
    if params.rank is not None:
      estimator_kwargs.setdefault("rank", params.rank)
    gm = cls(**estimator_kwargs)
    gm._check_parameters()
    if (gm.n_components, gm.covariance_type, gm._rank()) != (
        params.n_components, params.covariance_type, params.rank):
      raise ValueError(
          f"n_components={gm.n_components}, covariance_type="
          f"{gm.covariance_type!r} disagree with the params' "
          f"({params.n_components}, {params.covariance_type!r}).")
    gm._set_fitted(params, **{name[:-1]: value
                              for name, value in fitted.items()})
    return gm

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
    program (the caller drops the extra slots on the host)."""
    k, ctype = int(self.n_components), self.covariance_type
    n, d = X.shape
    slots = padding.component_slots(k, n, d, ctype, float(self.reg_covar))
    overrides = self._initial_overrides(d)
    if slots is not None:
      overrides = self._slotted_overrides(overrides, slots, d)
    return restarts.restart_results(
        key_from_random_state(self.random_state), X,
        k if slots is None else slots, n_init=int(self.n_init),
        covariance_type=ctype, method=self.init_params, overrides=overrides,
        n_active=None if slots is None else k, rank=self._rank(), **kwargs)

  def _rank(self):
    return self.rank if self.covariance_type == "lowrank" else None

  def _slotted_overrides(self, overrides, slots, d):
    """User-given initial values padded to ``slots`` components (weight 0,
    mean 0, unit precision: padding.pad_components' slots)."""
    fill = dict(weights=0.0, means=0.0,
                precisions=padding.unit_covariance(self.covariance_type, d))
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
        val.check_precisions_init(self.precisions_init, ctype, k, n_features))

  def _progress_callback(self, callback=None):
    """The host callback the compiled loop calls each iteration, or None.

    ``verbose``'s printer, the user's ``callback``, or both in turn. With
    neither no callback is compiled at all, so progress costs nothing.
    """
    if callback is not None and not callable(callback):
      raise TypeError(f"callback should be None or a callable "
                      f"callback(n_iter, log_likelihood, change), got "
                      f"{type(callback).__name__}.")
    if not self.verbose:
      return callback
    printer = _progress_printer(int(self.verbose), int(self.verbose_interval))
    return printer if callback is None else _both(printer, callback)

  def fit(self, X, y=None, sample_weight=None, *, callback=None):
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
    """
    del y
    self._fit(X, sample_weight, callback)
    return self

  def fit_predict(self, X, y=None, sample_weight=None, *, callback=None):
    """Fits and returns the component of each sample (after a final E-step,
    in the predict program every n_components of a slot rung shares);
    ``callback`` as in :meth:`fit`."""
    del y
    return self._fit(X, sample_weight, callback).predict(X)

  def _fit(self, X, sample_weight, callback=None):
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
                  callback=self._progress_callback(callback))
    if observed is not None:
      kwargs["observed"] = jax.device_put(
          nan_lib.pad_observed(observed, X.shape[0]))
    start = time.perf_counter()

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
      self._warn_few_distinct_points(X[:n_samples], w[:n_samples])
    return self

  def _kept_restart(self, results, warm: bool, start: float):
    """The restart ``fit`` keeps (scikit-learn's), and its lower bound.

    On the host: small NumPy work, nothing more to compile. Reports every
    restart when ``verbose``; raises when the kept one failed.
    """
    results = jax.device_get(results)
    results = results._replace(params=padding.unpad_components(
        results.params, int(self.n_components)))
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

  # -- inference ------------------------------------------------------------

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

  def _warn_few_distinct_points(self, X, w):
    """scikit-learn's k-means warning, where the data explain a degenerate
    fit: fewer distinct samples (of positive weight) than components."""
    X = np.asarray(X)[np.asarray(w) > 0]
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

  def _n_parameters(self):
    return em.n_parameters(self._params())

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
