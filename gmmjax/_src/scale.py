"""EM at scale: over sharded devices and over several processes.

Every variant here is the EM of :func:`gmmjax.fit` with the E-step's
sufficient statistics summed in a different way (see ``stats.py``); the
chunked host loop is ``scale_chunked.py``:

* :func:`fit_sharded` runs the whole compiled loop inside ``jax.shard_map``:
  each device reduces its own rows, ``lax.psum`` adds the statistics, and the
  parameters stay replicated. It also runs across processes (after
  ``jax.distributed.initialize``) on the global array built by
  :func:`global_data`, and over a batch of initial params (restarts
  vmapped, data sharded; :func:`fit_restarts_sharded`).
* :func:`process_sum` adds statistics across processes, so that
  :func:`fit_chunked` with ``reduce=process_sum`` is one exact EM over the
  union of every process's own chunks.

Within an iteration, statistics of different batches are computed around one
shift (the mixture mean of the current parameters), so they add exactly;
the results equal :func:`gmmjax.fit`'s up to the order of the floating-point
sums.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gmmjax._src import checks, engine, missing, results
from gmmjax._src.params import GMMParams
from gmmjax._src.results import FitResult, error_if_bad

# ---------------------------------------------------------------------------
# Several processes.


def process_sum(tree):
  """Sums a pytree of (small) arrays over all JAX processes.

  Every process receives the same sum, added in the same order, so every
  process makes the same M-step and the same convergence decision. Use it as
  ``fit_chunked(..., reduce=process_sum)`` after
  ``jax.distributed.initialize``, each process streaming its own data.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> gx.process_sum({"a": jnp.ones(2)})["a"].tolist()  # one process
    [1.0, 1.0]
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(tree)
  return jax.tree.map(
      lambda a, ref: jnp.asarray(np.sum(np.asarray(a), axis=0), ref.dtype),
      gathered, tree)


def data_mesh(axis_name: str = "data", *, devices=None) -> Mesh:
  """A 1-D mesh over all devices (of every process), for sample sharding.

  Axes are ``Auto`` so that plain ``jit``-ed code (and :func:`gmmjax.fit`)
  can also run on arrays sharded over it.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (axis_name,),
              axis_types=(jax.sharding.AxisType.Auto,))


def global_data(X_local, *, sample_weight=None, mesh: Mesh | None = None,
                axis_name: str = "data"):
  """Global sample-sharded arrays from each process's own rows.

  Every process calls it with its own rows (any number; even zero). The rows
  are padded with zero-weight copies so that every process contributes the
  same number, divisible by its local device count, then assembled with
  ``host_local_array_to_global_array``. The sample weights (ones for real
  rows unless given) must be passed to :func:`fit_sharded` with the data.

  Args:
    X_local: ``(n_local, D)`` rows held by this process.
    sample_weight: optional ``(n_local,)`` weights of the local rows.
    mesh: a mesh whose ``axis_name`` axis spans all devices (default:
      :func:`data_mesh`).
    axis_name: the mesh axis to shard samples along.

  Returns:
    ``(X, sample_weight)``: global ``jax.Array`` s of shapes ``(N', D)`` and
    ``(N',)`` sharded along samples (``N'`` the padded total).

  Example:
    >>> import numpy as np, gmmjax as gx
    >>> X, w = gx.global_data(np.ones((5, 2)))  # one process, one device
    >>> X.shape, float(w.sum())
    ((5, 2), 5.0)
  """
  mesh = data_mesh(axis_name) if mesh is None else mesh
  X_local = np.asarray(X_local)
  dtype = np.dtype(checks.float_dtype(X_local[:0]))
  X_local = X_local.astype(dtype, copy=False)
  if X_local.ndim != 2:
    raise ValueError(f"X_local should be 2-D, got shape {X_local.shape}.")
  n = X_local.shape[0]
  w = (np.ones(n, dtype) if sample_weight is None
       else np.asarray(sample_weight, dtype).reshape(n))
  counts = np.asarray([n])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(counts)).ravel()
  local_devices = sum(d.process_index == jax.process_index()
                      for d in mesh.devices.flat)
  rows = int(-(-max(int(counts.max()), 1) // local_devices) * local_devices)
  fill = rows - n
  if fill:
    row = X_local[-1:] if n else np.zeros((1, X_local.shape[1]), dtype)
    X_local = np.concatenate([X_local, np.repeat(row, fill, axis=0)])
    w = np.concatenate([w, np.zeros(fill, dtype)])
  if jax.process_count() == 1:
    sharding = NamedSharding(mesh, P(axis_name))
    return jax.device_put(X_local, sharding), jax.device_put(w, sharding)
  from jax.experimental import multihost_utils
  return multihost_utils.host_local_array_to_global_array(
      (X_local, w), mesh, (P(axis_name), P(axis_name)))


def local_copy(tree):
  """NumPy copies of a pytree of replicated arrays, on any process.

  Outputs of :func:`fit_sharded` are replicated over all devices; across
  processes they are not fully addressable, so ``np.asarray`` refuses them.
  Every device holds the whole value, so this process's first shard is it.
  """
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(a.addressable_data(0))
    return np.asarray(a)
  return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------
# Sharded EM: the compiled loop inside shard_map, statistics psum-ed.


@functools.lru_cache(maxsize=64)
def _sharded_fit_fn(mesh: Mesh, axes: tuple[str, ...], max_iter: int,
                    weighted: bool, batched: bool,
                    step_type: type = engine.EMStep,
                    nan_as_missing: bool = False):
  """The compiled sharded loop of one step type (``engine.EMStep``, or the
  variational step of :func:`gmmjax.fit_bayes_sharded`); with
  ``nan_as_missing``, NaN entries of each shard are missing values."""
  axis = axes if len(axes) > 1 else axes[0]

  # Statistics (and positive rows) are added over the shards: every device
  # makes the same M-step and the same stopping decision. The loop is a
  # plain while_loop, whose every iteration all devices reach.
  step = step_type(reduce=functools.partial(lax.psum, axis_name=axis))

  def local_fit(X, w, params, tol, reg_covar, prev_ll, prior):
    observed = None
    if nan_as_missing:
      observed = ~jnp.isnan(X)
      X = missing.fill(X, observed)
    problem = engine.Problem(X, w, tol, reg_covar, prior, observed=observed)

    def one(p):
      result, _ = engine.run(step, p, problem, prev_ll=prev_ll,
                             max_iter=max_iter,
                             history_len=results.history_length(max_iter),
                             compact=False)
      return result
    return jax.vmap(one)(params) if batched else one(params)

  data_spec = P(axis)
  w_spec = data_spec if weighted else P()
  mapped = jax.shard_map(
      local_fit, mesh=mesh,
      in_specs=(data_spec, w_spec, P(), P(), P(), P(), P()), out_specs=P())
  return jax.jit(mapped)


_sharded_fit_fn.releases_programs = True  # memory_maps.release empties it


def _data_axes(X, mesh, axis_name):
  if mesh is None and isinstance(getattr(X, "sharding", None), NamedSharding):
    mesh = X.sharding.mesh
    if axis_name is None:
      spec = X.sharding.spec
      first = spec[0] if len(spec) else None
      if first is not None:
        axis_name = first
  if mesh is None:
    mesh = data_mesh()
  if axis_name is None:
    axis_name = tuple(mesh.axis_names)
  axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  n_shards = int(np.prod([mesh.shape[a] for a in axes]))
  return mesh, axes, n_shards


@functools.partial(jax.jit, static_argnames=("fill", "sharding"))
def _pad_rows(X, w, fill: int, sharding):
  X = jnp.concatenate([X, jnp.broadcast_to(X[-1:], (fill, X.shape[1]))])
  w = jnp.concatenate([w, jnp.zeros((fill,), w.dtype)])
  return (jax.lax.with_sharding_constraint(X, sharding),
          jax.lax.with_sharding_constraint(w, sharding))


def fit_sharded(X, params: GMMParams, *, sample_weight=None,
                mesh: Mesh | None = None, axis_name=None, max_iter: int = 100,
                tol=1e-3, reg_covar=1e-6, prev_log_likelihood=-np.inf,
                nan_as_missing: bool = False, throw: bool = False
                ) -> FitResult:
  """EM on samples sharded over devices: local statistics, ``psum``, M-step.

  The whole loop of :func:`gmmjax.fit` runs in one compiled program under
  ``jax.shard_map``: each device computes the statistics of its rows, a
  ``lax.psum`` adds them (K x D x D numbers per iteration, whatever N), and
  every device makes the same M-step, so parameters stay replicated. The
  result equals :func:`gmmjax.fit` on one device up to summation order.

  ``params`` may carry a leading restart axis (as made by
  ``jax.vmap(gx.init_params)``): the restarts are vmapped inside every
  device's program, and each one's result equals its own sharded fit.

  With several processes (after ``jax.distributed.initialize``), pass the
  global arrays from :func:`global_data`; the program is the same.

  Args:
    X: ``(N, D)`` samples, ideally a ``jax.Array`` with a ``NamedSharding``
      along samples (its mesh and axis are used); other arrays are placed
      on ``mesh`` (default: all devices). Rows are padded with zero-weight
      copies if ``N`` is not a multiple of the number of shards.
    params: initial :class:`GMMParams`, optionally batched.
    sample_weight: optional ``(N,)`` weights, sharded like ``X``.
    mesh: the device mesh (default: that of ``X``, else :func:`data_mesh`).
    axis_name: mesh axis name(s) the samples are split over (default: ``X``'s
      sharding, else every mesh axis).
    max_iter, tol, reg_covar, prev_log_likelihood: as in :func:`gmmjax.fit`.
    nan_as_missing: NaN entries of ``X`` are missing values (EM over the
      observed coordinates, as :func:`gmmjax.fit` with ``observed=``).
    throw: raise a :class:`FitError` when the fit (any restart) failed, did not converge
      or has degenerate components, as :func:`gmmjax.fit`'s ``throw``.

  Returns:
    A :class:`FitResult`, replicated on the mesh (leading restart axis if
    ``params`` had one). Use :func:`local_copy` to read it on any process.

  Raises:
    ValueError: concrete ``X`` or ``sample_weight`` holding NaN or infinity
      (infinity only, with ``nan_as_missing``), or concrete ``params``
      whose factors do not match their covariances
      (:meth:`GMMParams.recompute_factors`).

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> X = np.random.default_rng(0).normal(size=(1000, 2)).astype("float32")
    >>> p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type="diag")
    >>> a, b = gx.fit_sharded(X, p0), gx.fit(X, p0)
    >>> bool(abs(a.log_likelihood - b.log_likelihood) < 1e-4)
    True
  """
  max_iter = engine.check_max_iter(max_iter)
  checks.check_finite(X, allow_nan=bool(nan_as_missing))
  checks.check_finite(sample_weight, "sample_weight")
  checks.check_factors(params)
  result = _fit_sharded(X, params, sample_weight, mesh, axis_name, max_iter,
                        tol, reg_covar, prev_log_likelihood, nan_as_missing)
  return error_if_bad(result, "gmmjax.fit_sharded") if throw else result


def _fit_sharded(X, params, sample_weight, mesh, axis_name, max_iter, tol,
                 reg_covar, prev_log_likelihood, nan_as_missing) -> FitResult:
  """:func:`fit_sharded` on inputs already checked (finite data, canonical
  params, a valid ``max_iter``)."""
  batched = params.means.ndim == 3
  ref = jax.tree.map(lambda a: a[0], params) if batched else params
  mesh, axes, X, w, dtype = sharded_operands(
      X, functools.partial(checks.check_params_data, ref), sample_weight,
      mesh, axis_name)
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  scalars = [np.asarray(v, dtype) for v in (tol, reg_covar,
                                            prev_log_likelihood)]
  if jax.process_count() > 1:
    # Across processes every input must be global: host values (the same on
    # every process) are taken as replicated.
    params = jax.tree.map(np.asarray, params)
  if nan_as_missing:
    missing.check_type(ref.covariance_type)
  fn = _sharded_fit_fn(mesh, axes, max_iter, w is not None, batched,
                       nan_as_missing=bool(nan_as_missing))
  return fn(X, w, params, *scalars, None)


def sharded_operands(X, check: Callable, sample_weight, mesh, axis_name):
  """``(mesh, axes, X, w, dtype)`` for a sharded loop: the data checked by
  ``check`` (called with its shape and floating dtype, raises), in that
  dtype, placed and padded with zero-weight rows to a multiple of the
  shards."""
  mesh, axes, n_shards = _data_axes(X, mesh, axis_name)
  if not isinstance(X, jax.Array):
    X = checks.as_data(np.asarray(X))
  elif X.ndim != 2:
    X = checks.as_data(X)  # raises the usual message
  dtype = checks.float_dtype(X) if not isinstance(X, jax.Array) else (
      X.dtype if jnp.issubdtype(X.dtype, jnp.floating)
      else jnp.result_type(float))
  check(jax.ShapeDtypeStruct((0, X.shape[1]), dtype))
  X = X.astype(dtype) if X.dtype != dtype else X
  sharding = NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))
  n = X.shape[0]
  w = sample_weight
  if w is not None:
    if tuple(w.shape) != (n,):
      raise ValueError(f"sample_weight should have shape ({n},), got "
                       f"{tuple(w.shape)}.")
    w = w.astype(dtype) if isinstance(w, jax.Array) else jnp.asarray(w, dtype)
  fill = (-n) % n_shards
  if fill:
    if w is None:
      w = jnp.ones((n,), dtype)
    X, w = _pad_rows(X, w, fill, sharding)
  return mesh, axes, X, w, dtype


def fit_restarts_sharded(key, X, n_components: int, *, n_init: int = 1,
                         covariance_type: str = "full", method: str = "k-means++",
                         sample_weight=None, mesh: Mesh | None = None,
                         axis_name=None, max_iter: int = 100, tol=1e-3,
                         reg_covar=1e-6, throw: bool = False
                         ) -> tuple[FitResult, FitResult]:
  """:func:`gmmjax.fit_restarts` on sharded data: restarts x shards.

  The ``n_init`` initialisations run vmapped on the global (sharded) array,
  as :func:`gmmjax.fit_restarts` draws them (same key, same inits), then
  :func:`fit_sharded` fits all of them in one program: restarts vmapped on
  every device, each device's rows reduced with one ``psum`` per iteration.

  Returns:
    ``(best, all_results)`` as :func:`gmmjax.fit_restarts`.
  """
  from gmmjax._src.restarts import best_restart, init_restarts

  checks.check_n_init(n_init)  # before the mesh is inspected
  max_iter = engine.check_max_iter(max_iter)
  checks.check_finite(X)  # before the initialisations compile
  checks.check_finite(sample_weight, "sample_weight")
  mesh, axes, _ = _data_axes(X, mesh, axis_name)
  # Initialisation is ordinary jit code: on an Explicit mesh it reads the
  # same shards through an Auto view of the mesh (checks.auto_view, which
  # init_restarts applies through checks.as_data).
  params0 = init_restarts(key, X, n_components, n_init=n_init,
                          covariance_type=covariance_type, method=method,
                          reg_covar=reg_covar, sample_weight=sample_weight)
  # Checked above, and params0 are gmmjax's own: no second pass over X.
  results = _fit_sharded(X, params0, sample_weight, mesh, axes, max_iter, tol,
                         reg_covar, -np.inf, False)
  best = best_restart(results)
  if throw:
    error_if_bad(best, "gmmjax.fit_restarts_sharded")
  return best, results
