"""``BayesianGaussianMixture``: scikit-learn's variational Bayesian mixture
over the functional core (``bayes_fit.py``).

It is a :class:`~gmmjax.GaussianMixture` whose fit is the variational one:
the input checks, padding, restarts bookkeeping, ``predict``/``score``
plumbing, warm starts and ``sample`` are shared; the differences are the
constructor (scikit-learn's parameters), the fitted posterior attributes,
and the mixture ``predict`` and ``score_samples`` evaluate (the variational
one, as scikit-learn's, with expected log-weights and precisions).
"""

from __future__ import annotations

import jax
import numpy as np

from gmmjax._src import bayes_fit, padding, type_switch
from gmmjax._src import bayes_params as bp
from gmmjax._src import covariance as cov_lib
from gmmjax._src import param_spec as spec
from gmmjax._src.estimator import GaussianMixture
from gmmjax._src.estimator_base import (
  MIXTURE_PARAMETERS,
  MixtureBase,
  key_from_random_state,
)
from gmmjax._src.params import COVARIANCE_TYPES, GMMParams
from gmmjax._src.results import history_length


class _Absent:
  """A ``GaussianMixture`` member that scikit-learn's Bayesian mixture does
  not have: ``hasattr`` is False and access says so."""

  def __set_name__(self, owner, name):
    self.name = name

  def __get__(self, obj, owner=None):
    raise AttributeError(f"'BayesianGaussianMixture' has no {self.name!r} "
                         "(scikit-learn's has none either).")


_POSITIVE_OR_NONE = spec.real(0.0, open_low=True, or_none=True)


class BayesianGaussianMixture(GaussianMixture):
  """Variational Bayesian Gaussian mixture, with scikit-learn's interface.

  Parameters, defaults and fitted attributes are those of
  ``sklearn.mixture.BayesianGaussianMixture`` (see it for their meaning);
  ``fit``, ``fit_predict`` and ``score`` also take ``sample_weight``
  (weighted counts and sums; the default priors use the weighted data mean
  and covariance). Restarts run as one vmapped program; the fit is
  :func:`gmmjax.fit_bayes` on the EM driver. With the Dirichlet-process
  prior, components the data do not need get weights near 0. It is a
  scikit-learn estimator as :class:`~gmmjax.GaussianMixture` is (its
  parameters checked with scikit-learn's constraints for this class,
  ``feature_names_in_`` from DataFrames, metadata routing).

  Besides scikit-learn's attributes, ``posterior_`` is the fitted
  :class:`gmmjax.BayesParams` and ``prior_`` the :class:`gmmjax.BayesPrior`.
  ``params_`` is the plug-in mixture (``weights_``, ``means_``,
  ``covariances_``), what ``sample`` draws from and ``gmmjax.plot`` draws;
  ``predict`` and ``score_samples`` evaluate the variational mixture
  (:func:`gmmjax.variational_mixture` of the posterior), as scikit-learn's
  do.

  Example:
    >>> import numpy as np, gmmjax as gx
    >>> from gmmjax import datasets
    >>> X, _ = datasets.blobs(n_samples=600, n_centers=3, seed=0)
    >>> bgm = gx.BayesianGaussianMixture(n_components=10, random_state=0,
    ...                                  max_iter=500).fit(X)
    >>> int(np.sum(bgm.weights_ > 0.01))
    3
  """

  # Low-rank covariances are GaussianMixture's alone (no Wishart posterior
  # for them): the inherited checks read this in place of a rank parameter.
  rank = None
  # So are missing values: NaN is refused, as scikit-learn's Bayesian
  # mixture does (the variational E-step would need the expected
  # log-determinant of each row's observed block of the Wishart posterior).
  nan_policy = "raise"

  # scikit-learn's BayesianGaussianMixture._parameter_constraints.
  _parameter_spec = dict(
      MIXTURE_PARAMETERS, covariance_type=spec.options(*COVARIANCE_TYPES),
      weight_concentration_prior_type=spec.options(*bp.PRIOR_TYPES),
      weight_concentration_prior=_POSITIVE_OR_NONE,
      mean_precision_prior=_POSITIVE_OR_NONE,
      mean_prior=spec.ARRAY_OR_NONE,
      degrees_of_freedom_prior=_POSITIVE_OR_NONE,
      covariance_prior=spec.any_of(spec.ARRAY_OR_NONE,
                                   spec.real(0.0, open_low=True)))

  def __init__(self, *, n_components=1, covariance_type="full", tol=1e-3,
               reg_covar=1e-6, max_iter=100, n_init=1, init_params="kmeans",
               weight_concentration_prior_type="dirichlet_process",
               weight_concentration_prior=None, mean_precision_prior=None,
               mean_prior=None, degrees_of_freedom_prior=None,
               covariance_prior=None, random_state=None, warm_start=False,
               verbose=0, verbose_interval=10):
    # The shared parameters (GaussianMixture's own, such as weights_init,
    # are not this estimator's).
    MixtureBase.__init__(self, n_components, covariance_type, tol, reg_covar,
                         max_iter, n_init, init_params, random_state,
                         warm_start, verbose, verbose_interval)
    self.weight_concentration_prior_type = weight_concentration_prior_type
    self.weight_concentration_prior = weight_concentration_prior
    # The Gaussian-Wishart prior of the components (None: from the data).
    (self.mean_precision_prior, self.mean_prior, self.degrees_of_freedom_prior,
     self.covariance_prior) = (mean_precision_prior, mean_prior,
                               degrees_of_freedom_prior, covariance_prior)

  # GaussianMixture members scikit-learn's Bayesian mixture lacks.
  bic = _Absent()
  aic = _Absent()
  partial_fit = _Absent()
  from_params = _Absent()
  impute = _Absent()

  def _prior(self, X, sample_weight) -> bp.BayesPrior:
    """The ``*_prior_`` values (scikit-learn's ``_check_parameters``),
    checked on the host, then set as attributes."""
    d = X.shape[1]
    ctype = self.covariance_type
    dof = self.degrees_of_freedom_prior
    if dof is not None and not dof > d - 1.0:
      raise ValueError(f"The parameter 'degrees_of_freedom_prior' should be "
                       f"greater than {d - 1}, but got {dof:.3f}.")
    given = {}
    if self.mean_prior is not None:
      given["mean_prior"] = _checked_array(self.mean_prior, (d,), "means")
    if self.covariance_prior is not None:
      given["covariance_prior"] = _checked_covariance_prior(
          self.covariance_prior, ctype, d)
    prior = bp.make_bayes_prior(
        X, int(self.n_components), covariance_type=ctype,
        sample_weight=sample_weight,
        weight_concentration_prior=self.weight_concentration_prior,
        mean_precision_prior=self.mean_precision_prior,
        degrees_of_freedom_prior=dof, **given)
    host = jax.device_get(prior)
    self.weight_concentration_prior_ = float(host.weight_concentration_prior)
    self.mean_precision_prior_ = float(host.mean_precision_prior)
    self.mean_prior_ = np.asarray(host.mean_prior)
    self.degrees_of_freedom_prior_ = float(host.degrees_of_freedom_prior)
    cov = np.asarray(host.covariance_prior)
    self.covariance_prior_ = float(cov) if cov.ndim == 0 else cov
    self.prior_ = prior
    return prior

  def _fit_restarts(self, X, kwargs):
    """Every restart's init and variational fit; small problems in
    component slots (padding.component_slots), so that nearby
    n_components share the program, and where the full type's slots fit
    the budget as full matrices (type_switch.shared_slots), so that the
    four types share it too (the caller drops the extra slots and
    converts the shapes on the host)."""
    prior = self._prior(X, kwargs["sample_weight"])
    k, ctype = int(self.n_components), self.covariance_type
    n, d = X.shape
    slots, shared = self._slots(k, n, d, False)
    structure = None
    if shared:
      structure = type_switch.CODES[ctype]
      prior = prior._replace(covariance_prior=jax.device_put(
          type_switch.prior_to_full(jax.device_get(prior.covariance_prior),
                                    ctype, d)))
      ctype = "full"
    return bayes_fit.bayes_restart_results(
        key_from_random_state(self.random_state), X,
        k if slots is None else slots, n_init=int(self.n_init),
        covariance_type=ctype,
        prior_type=self.weight_concentration_prior_type,
        method=self.init_params, prior=prior,
        n_active=None if slots is None else k, structure=structure,
        **kwargs)

  def _continue_fit(self, X, prev_log_likelihood, kwargs):
    prior = self._prior(X, kwargs["sample_weight"])
    max_iter = kwargs["max_iter"]
    return bayes_fit.fit_bayes_checked(
        X, self.posterior_, kwargs["sample_weight"], kwargs["tol"],
        kwargs["reg_covar"], prev_log_likelihood, prior, np.int32(max_iter),
        history_length(max_iter), callback=kwargs["callback"])

  def _check_warm_start(self):
    super()._check_warm_start()
    fitted = self._fitted_prior_type
    if fitted != self.weight_concentration_prior_type:
      raise ValueError(
          f"warm_start=True continues the fitted model (weight_concentration"
          f"_prior_type={fitted!r}), but the estimator now has "
          f"{self.weight_concentration_prior_type!r}. Set warm_start=False.")

  def _set_fitted(self, params, **kwargs):
    """The posterior's attributes, then ``GaussianMixture``'s (weights
    the posterior means, covariances the Wishart scales as covariances)."""
    post = jax.device_get(params)
    wc = np.asarray(post.weight_concentration)
    self._fitted_prior_type = post.weight_concentration_prior_type
    self.weight_concentration_ = ((wc[0], wc[1]) if wc.ndim == 2 else wc)
    self.mean_precision_ = np.asarray(post.mean_precision)
    self.degrees_of_freedom_ = np.asarray(post.degrees_of_freedom)
    weights = _expected_weights(wc)
    super()._set_fitted(
        GMMParams(weights, np.asarray(post.means),
                  np.asarray(post.covariances),
                  np.asarray(post.precisions_cholesky),
                  post.covariance_type), **kwargs)

  @property
  def posterior_(self) -> bp.BayesParams:
    """The fitted posterior as a :class:`gmmjax.BayesParams` of JAX arrays
    (what :func:`gmmjax.fit_bayes` takes)."""
    return jax.device_put(self._host_posterior())

  def _host_posterior(self) -> bp.BayesParams:
    """The fitted posterior of NumPy arrays (the fitted attributes)."""
    self._check_is_fitted()
    wc = self.weight_concentration_
    wc = np.stack(wc) if isinstance(wc, tuple) else wc
    return bp.BayesParams(wc, self.mean_precision_, self.means_,
                          self.degrees_of_freedom_, self.covariances_,
                          self.precisions_cholesky_, self._fitted_type(),
                          self._fitted_prior_type)

  def _evaluation_params(self, n_slots=None, as_full=False) -> GMMParams:
    """The variational mixture, in ``n_slots`` component slots (the extra
    ones of weight 0) and as full matrices if asked: the evaluation
    programs of ``GaussianMixture`` of the same slots serve it."""
    if n_slots is None:
      return bp.variational_mixture(self.posterior_, normalise=False)
    k = self.means_.shape[0]
    post = self._host_posterior()
    if as_full:  # the program the four types share
      post = type_switch.posterior_to_full(post)
    return bp.variational_mixture(
        jax.device_put(padding.pad_posterior(post, n_slots)),
        normalise=False, mask=jax.device_put(np.arange(n_slots) < k))


def _expected_weights(wc) -> np.ndarray:
  """scikit-learn's ``weights_`` from ``weight_concentration_``, in NumPy
  (:func:`bayes_params.expected_weights` without a program to compile)."""
  if wc.ndim == 2:  # dirichlet_process: the stick breaks' means
    total = wc[0] + wc[1]
    w = wc[0] / total * np.hstack((1, np.cumprod(wc[1][:-1] / total[:-1])))
  else:
    w = wc
  return w / np.sum(w)


def _checked_array(value, shape, name) -> np.ndarray:
  arr = np.asarray(value, dtype=np.float64)
  if arr.shape != shape:
    raise ValueError(f"The parameter '{name}' should have the shape of "
                     f"{shape}, but got {arr.shape}")
  return arr


def _checked_covariance_prior(value, covariance_type, d):
  """scikit-learn's checks of a given ``covariance_prior``."""
  ct = cov_lib.get(covariance_type)
  shape = (d, d) if ct.is_matrix else ct.shape(1, d)[1:]
  arr = _checked_array(value, shape, f"{covariance_type} covariance_prior")
  if ct.is_matrix:
    if not (np.allclose(arr, arr.T) and np.all(np.linalg.eigvalsh(arr) > 0)):
      raise ValueError(f"'{covariance_type} precision' should be symmetric, "
                       "positive-definite")
  elif np.any(np.less_equal(arr, 0.0)):
    raise ValueError(f"'{covariance_type} precision' should be positive")
  return arr
