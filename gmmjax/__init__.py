"""gmmjax: Gaussian mixture models fitted by EM, in JAX.

Pure functions on immutable parameter pytrees (``init_params``, ``e_step``,
``m_step``, ``fit``, ...) that compose with ``jit``, ``vmap`` and ``grad``, and
a scikit-learn-style estimator, :class:`GaussianMixture`.
"""

import importlib

from gmmjax._src.accel import (
  AccelInfo,
  fit_accelerated,
  fit_accelerated_with_info,
)
from gmmjax._src.bayes_fit import fit_bayes, fit_bayes_restarts
from gmmjax._src.bayes_params import (
  BayesParams,
  BayesPrior,
  make_bayes_prior,
  posterior_from_resp,
  posterior_from_stats,
  variational_mixture,
)
from gmmjax._src.bayes_scale import (
  fit_bayes_chunked,
  fit_bayes_sharded,
  online_bayes_init,
  online_bayes_update,
)
from gmmjax._src.cache import enable_default_cache
from gmmjax._src.cholesky import cholesky_jitter
from gmmjax._src.chunks import ChunkOptions
from gmmjax._src.compiling import compiler_options
from gmmjax._src.conditional import (
  condition,
  impute,
  impute_samples,
  marginal,
)
from gmmjax._src.covariance import COVARIANCE_TYPES
from gmmjax._src.em import (
  Q,
  aic,
  bic,
  e_step,
  log_likelihood,
  log_prob,
  m_step,
  n_parameters,
  predict,
  predict_proba,
  sample,
)
from gmmjax._src.fit import (
  DIFFERENTIATION_MODES,
  FitResult,
  count_degenerate,
  em_step,
  fit,
)
from gmmjax._src.gradfit import (
  GradFitResult,
  em_then_gradient,
  fit_gradient,
  negative_log_likelihood,
)
from gmmjax._src.implicit import ImplicitSolver, fixed_point_jvp
from gmmjax._src.init import INIT_METHODS, init_params
from gmmjax._src.io import load, read_metadata, save
from gmmjax._src.kmeans import kmeans, kmeans_plusplus
from gmmjax._src.padding import pad_samples
from gmmjax._src.params import GMMParams, make_params
from gmmjax._src.priors import (
  ConjugatePrior,
  log_prior,
  make_prior,
  map_params_from_stats,
)
from gmmjax._src.progress import progress_bar
from gmmjax._src.restarts import best_restart, fit_restarts
from gmmjax._src.results import FitError
from gmmjax._src.scale import (
  data_mesh,
  fit_restarts_sharded,
  fit_sharded,
  global_data,
  local_copy,
  process_sum,
)
from gmmjax._src.scale_chunked import chunk_source, fit_chunked
from gmmjax._src.scale_online import (
  OnlineState,
  fit_online,
  online_init,
  online_update,
)
from gmmjax._src.select import (
  SelectionResult,
  format_table,
  select_n_components,
)
from gmmjax._src.stats import (
  SuffStats,
  add_stats,
  component_shift,
  e_step_stats,
  params_from_stats,
  stats_from_resp,
)
from gmmjax._src.unconstrained import (
  UnconstrainedParams,
  from_unconstrained,
  to_unconstrained,
)
from gmmjax._src.validation import ConvergenceWarning, NotFittedError

__version__ = "0.1.0"

# The estimators load on first use (PEP 562): with scikit-learn installed
# they are its BaseEstimators, and importing scikit-learn (~1-2 s) is a
# cost the functional API and the command line's --help need not pay.
_LAZY = {
    "BayesianGaussianMixture": "gmmjax._src.bayes_estimator",
    "GaussianMixture": "gmmjax._src.estimator",
}


def __getattr__(name):
  module = _LAZY.get(name)
  if module is None:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # later lookups are ordinary ones
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AccelInfo",
    "BayesParams",
    "BayesPrior",
    "BayesianGaussianMixture",
    "COVARIANCE_TYPES",
    "ChunkOptions",
    "ConjugatePrior",
    "ConvergenceWarning",
    "DIFFERENTIATION_MODES",
    "FitError",
    "FitResult",
    "GMMParams",
    "GaussianMixture",
    "GradFitResult",
    "INIT_METHODS",
    "ImplicitSolver",
    "NotFittedError",
    "OnlineState",
    "Q",
    "SelectionResult",
    "SuffStats",
    "UnconstrainedParams",
    "add_stats",
    "aic",
    "best_restart",
    "bic",
    "cholesky_jitter",
    "chunk_source",
    "compiler_options",
    "component_shift",
    "condition",
    "count_degenerate",
    "data_mesh",
    "e_step",
    "e_step_stats",
    "em_step",
    "em_then_gradient",
    "enable_default_cache",
    "fit",
    "fit_accelerated",
    "fit_accelerated_with_info",
    "fit_bayes",
    "fit_bayes_chunked",
    "fit_bayes_sharded",
    "online_bayes_init",
    "online_bayes_update",
    "fit_bayes_restarts",
    "fit_chunked",
    "fit_gradient",
    "fit_online",
    "fit_restarts",
    "fit_restarts_sharded",
    "fit_sharded",
    "fixed_point_jvp",
    "format_table",
    "from_unconstrained",
    "global_data",
    "impute",
    "impute_samples",
    "init_params",
    "kmeans",
    "kmeans_plusplus",
    "load",
    "local_copy",
    "log_likelihood",
    "log_prior",
    "log_prob",
    "m_step",
    "make_bayes_prior",
    "make_params",
    "make_prior",
    "map_params_from_stats",
    "marginal",
    "n_parameters",
    "negative_log_likelihood",
    "online_init",
    "online_update",
    "pad_samples",
    "params_from_stats",
    "posterior_from_resp",
    "posterior_from_stats",
    "predict",
    "predict_proba",
    "process_sum",
    "progress_bar",
    "read_metadata",
    "sample",
    "save",
    "select_n_components",
    "stats_from_resp",
    "to_unconstrained",
    "variational_mixture",
]
