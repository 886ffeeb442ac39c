"""The fitted mixture's side of gmmjax's estimators: state and data.

:class:`MixtureBase` holds what does not depend on how a mixture was
fitted: ``_set_fitted`` (the one place fitted attributes are written),
``_params``/``params_`` (reading them back as a :class:`GMMParams`),
:meth:`MixtureBase.from_params`, the checks of data given to a fitted
model (``_validate_X``, which also sets or checks ``feature_names_in_``),
and the padding of data to the ladder of sizes (``_on_device``) and of
components to slots (``_slots``). What a fitted mixture computes on data
(``predict``, ``predict_proba``, ``score_samples``, ``score``, ``bic``,
``aic``, ``impute``, ``sample``) is the mixin
:class:`gmmjax._src.estimator_inference.MixtureInference`.

A subclass provides ``n_components``, ``covariance_type``, ``rank``
(None but for ``covariance_type="lowrank"``), ``random_state`` and
``_check_parameters``, and inherits ``MixtureInference`` and
:class:`gmmjax._src.sklearn_compat.DensityEstimator` after this class (the
latter for ``_validate_feature_names``).
"""

from __future__ import annotations

import jax
import numpy as np

from gmmjax._src import cache, checks, padding, type_switch
from gmmjax._src import covariance as cov_ops
from gmmjax._src import estimator_lowrank as est_lowrank
from gmmjax._src import init as init_lib
from gmmjax._src import nan_policy as nan_lib
from gmmjax._src import param_spec as spec
from gmmjax._src import validation as val
from gmmjax._src.params import GMMParams

# The constructor parameters every mixture estimator has, with
# scikit-learn's constraints (its ``BaseMixture._parameter_constraints``);
# an estimator's ``_parameter_spec`` adds ``covariance_type`` and its own.
MIXTURE_PARAMETERS = dict(
    n_components=spec.integer(1), tol=spec.real(0.0),
    reg_covar=spec.real(0.0), max_iter=spec.integer(0),
    n_init=spec.integer(1),
    init_params=spec.options(*init_lib.INIT_METHODS),
    random_state=spec.RANDOM_STATE, warm_start=spec.BOOLEAN,
    verbose=spec.VERBOSE, verbose_interval=spec.integer(1))


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


class MixtureBase:
  """A fitted Gaussian mixture's state and data checks."""

  def __init__(self, n_components, covariance_type, tol, reg_covar, max_iter,
               n_init, init_params, random_state, warm_start, verbose,
               verbose_interval):
    """The parameters every mixture estimator has (scikit-learn's
    ``BaseMixture.__init__``): each stored as given, checked at ``fit``."""
    self.n_components = n_components
    self.covariance_type = covariance_type
    self.tol = tol
    self.reg_covar = reg_covar
    self.max_iter = max_iter
    self.n_init = n_init
    self.init_params = init_params
    self.random_state = random_state
    self.warm_start = warm_start
    self.verbose = verbose
    self.verbose_interval = verbose_interval

  # -- fitted state ---------------------------------------------------------

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

  def _check_is_fitted(self):
    if not hasattr(self, "means_"):
      raise val.sklearn_compatible(val.NotFittedError, "NotFittedError")(
          f"This {type(self).__name__} instance is not fitted yet. Call "
          "'fit' with appropriate arguments before using this estimator.")

  def _fitted_type(self) -> str:
    return getattr(self, "_fitted_covariance_type", self.covariance_type)

  def _rank(self):
    """The number of factors of a low-rank model, else None."""
    return self.rank if self.covariance_type == "lowrank" else None

  def _params(self, n_slots: int | None = None,
              as_full: bool = False) -> GMMParams:
    """The fitted parameters on the device, optionally in ``n_slots``
    component slots (the extra ones of weight 0); ``as_full``: as full
    matrices, for the program the four types share (``type_switch``)."""
    ctype = self._fitted_type()
    if ctype == "lowrank":
      leaves = (self.weights_, self.means_, *est_lowrank.leaves(self))
    else:
      leaves = (self.weights_, self.means_, self.covariances_,
                self.precisions_cholesky_)
    if as_full:
      k, d = self.means_.shape
      leaves = leaves[:2] + tuple(type_switch.to_full(a, ctype, k, d)
                                  for a in leaves[2:])
      ctype = "full"
    if n_slots is not None:
      leaves = padding.pad_components(*leaves, ctype, n_slots)
    return GMMParams(*jax.device_put(leaves), ctype)

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
                          if cov_ops.get(params.covariance_type).is_matrix
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
    ``gm.score_samples(X)`` (to float rounding: the estimator evaluates
    small models in component slots, and tied, diagonal and spherical ones
    as full matrices), ``gx.fit(X, gm.params_)`` continues the fit and
    ``gmmjax.plot`` draws it. A new pytree on each access (the estimator
    keeps NumPy arrays). Raises :class:`gmmjax.NotFittedError` (an
    ``AttributeError``) before the estimator is fitted.
    """
    self._check_is_fitted()
    return self._params()

  @classmethod
  def from_params(cls, params: GMMParams, *, fitted=None,
                  **estimator_kwargs) -> MixtureBase:
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
        ``n_degenerate_``. ``feature_names_in_`` (one string per feature)
        restores the column names a DataFrame gave the fit.
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
             "jitter_", "n_degenerate_", "feature_names_in_")
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
    columns = fitted.pop("feature_names_in_", None)
    gm._set_fitted(params, **{name[:-1]: value
                              for name, value in fitted.items()})
    if columns is not None:
      gm._restore_feature_names(columns)
    return gm

  def _restore_feature_names(self, columns):
    """Sets ``feature_names_in_`` (a saved model's), one string a feature."""
    columns = np.asarray(list(columns), dtype=object)
    if columns.shape != (self.n_features_in_,) or not all(
        isinstance(c, str) for c in columns):
      raise ValueError(
          f"feature_names_in_ should be {self.n_features_in_} strings, one "
          f"per feature, got {columns.tolist()!r:.200}.")
    self.feature_names_in_ = columns

  # -- data -----------------------------------------------------------------

  def _validate_X(self, X, *, reset: bool, names_from=None):
    """``X`` checked (feature names from ``names_from``, the user's data,
    when ``X`` was derived from it), in the dtype it is computed in."""
    cache.enable_default_cache()  # every fit and predict passes here
    self._validate_feature_names(X if names_from is None else names_from,
                                 reset=reset)
    ensure = 2 if reset else 1
    if isinstance(X, np.ndarray) and X.dtype == object:
      # Numbers stored as objects are accepted (scikit-learn's rule); any
      # other object is a TypeError, as NumPy and scikit-learn raise it.
      X = X.astype(np.float64)
    # Data for a fitted model take the model's dtype (the one it was fitted
    # or loaded in); n_features_in_ is set with the rest of the fitted state.
    known = None if reset else self.means_.dtype
    hint = (", or fit with nan_policy='marginalize' (missing values "
            "treated as unobserved)"
            if "nan_policy" in self._parameter_spec else "")
    X = val.check_array(X, ensure_min_samples=ensure, dtype=known,
                        estimator=type(self).__name__, nan_hint=hint)
    if not reset and X.shape[1] != self.n_features_in_:
      raise ValueError(
          f"X has {X.shape[1]} features, but {type(self).__name__} is "
          f"expecting {self.n_features_in_} features as input.")
    return X.astype(val.compute_dtype(X) if reset else known, copy=False)

  @staticmethod
  def _on_device(X, sample_weight=None):
    """``(X, weights)`` padded to the ladder (padding.padded_rows) as JAX
    arrays: nearby sample counts share every compiled program."""
    n, d = X.shape
    Xp, wp = padding.pad_samples(X, sample_weight=sample_weight,
                                 n_rows=padding.padded_rows(n, d))
    # device_put: jnp.asarray of a NumPy array compiles a copy per shape.
    return jax.device_put(Xp), jax.device_put(wp)

  def _validate_observed(self, X, *, reset: bool, policy=None):
    """``(X, observed)``: :meth:`_validate_X` of ``X`` with NaN entries
    filled (``nan_policy="marginalize"``), and the mask of observed entries
    (``None`` when nothing is missing)."""
    policy = getattr(self, "nan_policy", "raise") if policy is None else policy
    filled, observed = nan_lib.split_missing(X, policy)
    # The names are the user's data's (a filled DataFrame is an array).
    return self._validate_X(filled, reset=reset, names_from=X), observed

  def _slots(self, k: int, n_rows: int, n_features: int, missing: bool,
             covariance_type: str | None = None) -> tuple[int | None, bool]:
    """``(slots, shared)`` for fitting or evaluating ``k`` components of
    ``covariance_type`` (default: the estimator's) on ``n_rows`` padded
    rows: small problems in component slots, and where the full type's
    slots fit the budget in the program the four types share
    (``type_switch.slots_for``); with missing entries (their own program)
    exactly ``k`` components of the type."""
    if missing:
      return None, False
    return type_switch.slots_for(covariance_type or self.covariance_type,
                                 k, n_rows, n_features)
