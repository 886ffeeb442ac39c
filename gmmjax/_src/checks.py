"""Trace-time checks of shapes and dtypes (no value checks: those need data).

Each raises ``ValueError`` with a message that says what was wrong, so it
works the same under ``jit`` and ``vmap`` and fails before XLA compiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from gmmjax._src import memory_maps
from gmmjax._src.params import GMMParams, check_covariance_type


def float_dtype(x):
  """The floating dtype to compute in for input ``x``."""
  dtype = (jax.dtypes.canonicalize_dtype(x.dtype) if isinstance(x, np.ndarray)
           else jnp.asarray(x).dtype)
  if jnp.issubdtype(dtype, jnp.floating):
    return dtype
  return jnp.result_type(float)


def _is_float_array(x) -> bool:
  """A JAX array (or tracer) that needs no conversion to a floating one."""
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


def auto_view(x):
  """``x`` sharded as it is, on an ``Auto`` view of its mesh where that
  mesh has ``Explicit`` axes (``jax.make_mesh``'s default).

  gmmjax's programs are ordinary ``jit`` code: on ``Auto`` axes XLA's
  partitioner turns their sums over sharded samples into per-device sums
  and an all-reduce, while on ``Explicit`` axes JAX asks every matrix
  product for an output sharding and refuses them (``ShardingTypeError``).
  The view uses the same devices, layout and shard buffers. Tracers and
  other arrays pass unchanged (a user's ``jit`` decides their sharding), so
  the jitted evaluation functions (``predict``, ``log_prob``, ...) need
  ``Auto`` (or unsharded) arrays.
  """
  if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    return x
  sharding = getattr(x, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return x
  mesh = sharding.mesh
  explicit = jax.sharding.AxisType.Explicit
  if not any(t == explicit for t in getattr(mesh, "axis_types", ())):
    return x
  auto = Mesh(mesh.devices, mesh.axis_names,
              axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
  view = NamedSharding(auto, sharding.spec, memory_kind=sharding.memory_kind)
  # The same buffers under the new sharding: no copy, and no collective
  # step that every process would have to reach (multi-host arrays).
  return jax.make_array_from_single_device_arrays(
      x.shape, view, [shard.data for shard in x.addressable_shards])


def as_data(X, name: str = "X"):
  """``X`` as a floating ``(N, D)`` array; a 1-D array is refused.

  An array sharded over a mesh with ``Explicit`` axes is viewed on the
  same mesh with ``Auto`` axes (:func:`auto_view`). Every public entry
  point comes here first, so this is where the process's memory maps are
  watched (:func:`memory_maps.guard`).
  """
  memory_maps.guard()
  X = auto_view(X)
  if isinstance(X, np.ndarray):
    # Converted on the host and put: an eager jnp.asarray or astype
    # compiles a small program for every new shape.
    X = jax.device_put(X.astype(float_dtype(X), copy=False))
  elif not _is_float_array(X):  # (eager conversions cost ~0.1 ms each)
    X = jnp.asarray(X)
    X = X.astype(float_dtype(X))
  if X.ndim != 2:
    raise ValueError(
        f"{name} should be a 2-D array of shape (n_samples, n_features), got "
        f"shape {X.shape}. Reshape your data with X.reshape(-1, 1) if it has "
        "a single feature, or X.reshape(1, -1) if it is a single sample.")
  return X


@functools.partial(jax.jit, static_argnames=("allow_nan",))
def _all_finite(x, allow_nan: bool = False):
  return jnp.all(~jnp.isinf(x) if allow_nan else jnp.isfinite(x))


def _host_all_finite(x: np.ndarray, allow_nan: bool) -> bool:
  """Whether a NumPy ``x`` is finite (``allow_nan``: has no infinity).

  A sum is finite if every entry is (and costs no array of flags); only a
  sum that is not, by overflow or a bad entry, looks at each entry.
  """
  if not np.issubdtype(x.dtype, np.inexact):
    return True
  if allow_nan:
    return not bool(np.isinf(x).any())
  with np.errstate(over="ignore", invalid="ignore"):
    if np.isfinite(x.sum()):
      return True
  return bool(np.isfinite(x).all())


def check_finite(x, name: str = "X", *, allow_nan: bool = False) -> None:
  """A ``ValueError`` if a concrete ``x`` holds NaN or infinity.

  Tracers (and concrete arrays captured by a user's ``jit``) pass: their
  values are not known when the program is built, and a fit under ``jit``
  reports such data with a NaN ``log_likelihood`` and ``failed`` set. NumPy
  input is checked on the host, before any transfer. ``allow_nan``: NaN
  entries are missing values; only infinity is refused.
  """
  if x is None or isinstance(x, jax.core.Tracer):
    return
  if isinstance(x, jax.Array):
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      return
    finite = _all_finite(x, allow_nan=bool(allow_nan))
    if isinstance(finite, jax.core.Tracer):  # a concrete array a jit captured
      return
    finite = bool(finite)
  else:
    finite = _host_all_finite(np.asarray(x), bool(allow_nan))
  if not finite:
    what = "infinity" if allow_nan else "NaN or infinity"
    raise ValueError(
        f"{name} contains {what}: a Gaussian mixture cannot be "
        f"fitted to it. Drop or impute those entries first.")


def check_static(value, name: str, sets: str) -> None:
  """A ``ValueError`` naming ``name`` and the fix if ``value`` is traced.

  ``sets`` says what shape it sets (e.g. ``"the parameters, (n_components,
  n_features)"``): a shape must be known when the program is built.
  """
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
        f"{name} is traced: it sets the shape of {sets}, so it must be a "
        f"concrete int. Mark it static (jax.jit(..., "
        f"static_argnames='{name}')) or close over it.")


def refuse_tracers(function: str, why: str, instead: str, *args) -> None:
  """A ``TypeError`` if an argument of a host-level function is a tracer.

  Host-level functions (``fit_chunked``, ``select_n_components``) read
  values on the host: under ``jit``, ``grad`` or ``vmap`` they would die
  on a tracer. ``why`` says what they do on the host, ``instead`` what to
  call under a transformation.
  """
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
    raise TypeError(
        f"{function} is a host-level function: it {why}, so it cannot be "
        f"called under jax.jit, jax.grad or jax.vmap (an argument is a "
        f"tracer). Under a transformation, call {instead} instead.")


def check_params_data(params: GMMParams, X) -> None:
  """``X`` has as many features as ``params`` has."""
  if not isinstance(params, GMMParams):
    raise TypeError(f"params should be a GMMParams, got {type(params)}.")
  check_covariance_type(params.covariance_type)
  if params.means.ndim != 2:
    raise ValueError(
        f"params.means should have shape (n_components, n_features), got "
        f"{params.means.shape}; for a batch of params use jax.vmap.")
  if X.shape[1] != params.means.shape[1]:
    raise ValueError(
        f"X has {X.shape[1]} features, but the mixture has "
        f"{params.means.shape[1]}.")


def as_params(params: GMMParams, dtype) -> GMMParams:
  """``params`` with every leaf cast to ``dtype``."""
  if all(isinstance(a, jax.Array) and a.dtype == dtype
         for a in jax.tree.leaves(params)):
    return params
  return params.replace(
      weights=jnp.asarray(params.weights, dtype),
      means=jnp.asarray(params.means, dtype),
      covariances=jnp.asarray(params.covariances, dtype),
      precisions_cholesky=jnp.asarray(params.precisions_cholesky, dtype))


def as_scalar(value, dtype):
  """A scalar argument of a compiled program: JAX values (traced ones
  too) as they are, host values converted on the host (``jnp.asarray``
  would compile a conversion program of its own)."""
  return value if isinstance(value, jax.Array) else np.asarray(value, dtype)


def as_sample_weight(sample_weight, n_samples: int, dtype):
  """``sample_weight`` as an ``(N,)`` array of ``dtype`` (``None`` stays)."""
  if sample_weight is None:
    return None
  w = auto_view(sample_weight)
  if isinstance(w, np.ndarray):
    w = jax.device_put(w.astype(dtype, copy=False))
  if not (isinstance(w, jax.Array) and w.dtype == dtype):
    w = jnp.asarray(w)
  if w.shape != (n_samples,):
    raise ValueError(f"sample_weight should have shape ({n_samples},), got "
                     f"{w.shape}.")
  return w if w.dtype == dtype else w.astype(dtype)


# Largest ``|P^T Sigma P w - w|`` (``w`` a unit probe) that passes as
# rounding in a well-conditioned component: the factors of a leaf-wise
# average of two parameter sets miss by tens of percent. The float rounding
# of a factor grows with the conditioning, so an ill-conditioned component
# (a jittered, nearly singular float32 covariance misses by O(1)) is allowed
# ``CONDITION_SLACK * eps * cond`` more, ``cond`` (of the correlations)
# estimated from the factor's diagonal.
CONSISTENCY_TOL = 0.05
CONDITION_SLACK = 64.0


def factor_mismatch(params: GMMParams):
  """How far ``precisions_cholesky`` is from a factor of ``covariances``'
  inverse, per component, and the rounding allowed for it: ``(error,
  allowed)``, ``(K,)`` each (``(1,)`` for tied).

  ``error`` is ``max |P^T Sigma P w - w|`` for a fixed unit probe ``w``
  (``max |p^2 sigma - 1|`` for diag and spherical), computed in float64 on
  the host in ``O(K D^2)``; it is 0 up to rounding for parameters gmmjax
  made."""
  # Non-finite entries give NaN errors silently: they are the finiteness
  # checks' to report (a fit from them is flagged), not NumPy's to warn of.
  with np.errstate(invalid="ignore", over="ignore"):
    return _factor_mismatch(params)


def _factor_mismatch(params: GMMParams):
  eps = float(np.finfo(np.dtype(params.precisions_cholesky.dtype)).eps)
  cov = np.asarray(params.covariances, np.float64)
  pc = np.asarray(params.precisions_cholesky, np.float64)
  if params.covariance_type in ("diag", "spherical"):
    err = np.abs(pc * pc * cov - 1.0)
    err = err.reshape(err.shape[0], -1).max(axis=1)
    return err, np.full_like(err, CONSISTENCY_TOL)
  if params.covariance_type == "tied":
    cov, pc = cov[None], pc[None]
  w = np.cos(np.arange(1, cov.shape[-1] + 1.0))
  w /= np.linalg.norm(w)
  u = np.einsum("kij,j->ki", pc, w)
  r = np.einsum("kji,kj->ki", pc, np.einsum("kij,kj->ki", cov, u))
  # The conditioning of the correlations: rounding is blind to the scales
  # of the features (Cholesky commutes with a diagonal scaling).
  diag = np.abs(np.diagonal(pc, axis1=-2, axis2=-1)) * np.sqrt(np.abs(
      np.diagonal(cov, axis1=-2, axis2=-1)))
  with np.errstate(divide="ignore"):
    cond = (diag.max(axis=1) / diag.min(axis=1)) ** 2
  allowed = CONSISTENCY_TOL + CONDITION_SLACK * eps * cond
  return np.abs(r - w).max(axis=1), allowed


def check_n_init(n_init) -> None:
  """A static positive int ``n_init`` (a number of restarts), or an error
  saying what is wrong with it."""
  check_static(n_init, "n_init", "the batch of restarts, (n_init,)")
  if not isinstance(n_init, int) or isinstance(n_init, bool) or n_init < 1:
    raise ValueError(f"n_init should be a positive int, got {n_init!r}.")


def check_factors(params: GMMParams) -> None:
  """A ``ValueError`` if concrete ``params`` hold factors that do not match
  their covariances (tracers pass: values unknown).

  ``params`` may carry leading batch axes (restarts made by
  ``jax.vmap(gx.init_params)``): each mixture is checked. Arrays not held
  whole by this process (multi-process global arrays) pass.
  """
  if not isinstance(params, GMMParams):
    return
  leaves = (params.covariances, params.precisions_cholesky)
  if (params.covariance_type not in ("full", "tied", "diag", "spherical")
      or any(isinstance(a, jax.core.Tracer) for a in leaves)
      or any(isinstance(a, jax.Array) and not a.is_fully_addressable
             for a in leaves)):
    return
  batch = np.ndim(params.means) - 2
  if batch > 0:
    cov, pc = (np.asarray(a) for a in leaves)
    n = int(np.prod(np.shape(params.means)[:batch]))
    for c, p in zip(cov.reshape((n,) + cov.shape[batch:]),
                    pc.reshape((n,) + pc.shape[batch:]), strict=True):
      _check_one_factor(params.replace(covariances=c, precisions_cholesky=p))
    return
  _check_one_factor(params)


def _check_one_factor(params: GMMParams) -> None:
  err, allowed = factor_mismatch(params)
  if np.any(err > allowed):  # (NaN factors are the finiteness checks' job)
    raise ValueError(
        f"params.precisions_cholesky is not a Cholesky factor of "
        f"inv(params.covariances) (mismatch {np.max(err):.3g}); this happens after "
        f"arithmetic on the leaves of GMMParams (jax.tree.map averaging or "
        f"interpolating parameter sets), which changes both independently. "
        f"Call params.recompute_factors() to derive the factors from the "
        f"covariances again.")


def prepare(params: GMMParams, X, sample_weight=None):
  """Common entry of the core functions: checked, dtype-consistent inputs."""
  X = as_data(X)
  check_params_data(params, X)
  check_factors(params)
  params = as_params(params, X.dtype)
  return params, X, as_sample_weight(sample_weight, X.shape[0], X.dtype)
