"""Chunked EM: the host loop over chunks of data too large for one program.

:func:`fit_chunked` streams chunks of a NumPy array, a ``np.memmap`` or any
re-iterable source through one compiled statistics kernel and adds the
statistics on the device; the EM loop (``engine.host_fit``) runs on the
host, one pass over the data per iteration. Within an iteration, the
statistics of every chunk are computed around one shift (the mixture mean
of the current parameters), so they add exactly; the result equals
:func:`gmmjax.fit`'s up to the order of the floating-point sums. With
``reduce=scale.process_sum``, each process streams its own chunks and the
fit is one EM over their union.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import checks, engine, missing
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams
from gmmjax._src.results import FitResult, error_if_bad
from gmmjax._src.stats import SuffStats

DEFAULT_CHUNK_SIZE = 65536

# ---------------------------------------------------------------------------
# Chunked EM.


def _is_array_like(data) -> bool:
  return (hasattr(data, "shape") and hasattr(data, "dtype")
          and hasattr(data, "__getitem__") and len(data.shape) == 2)


def _as_pair(item):
  if isinstance(item, tuple):
    if len(item) != 2:
      raise ValueError("A chunk should be an (n, n_features) array or a pair "
                       f"(X_chunk, sample_weight_chunk); got {len(item)} items.")
    return item
  return item, None


def _balanced_rows(n: int, chunk_size: int | None) -> int:
  """Rows per chunk: at most ``chunk_size``, as even as possible.

  ``N`` rows in ``ceil(N / chunk_size)`` equal chunks leave less than one
  row per chunk of padding, instead of up to a whole chunk.
  """
  size = int(chunk_size or DEFAULT_CHUNK_SIZE)
  if size < 1:
    raise ValueError(f"chunk_size should be a positive int, got {size}.")
  n_chunks = max(-(-n // size), 1)
  return max(-(-n // n_chunks), 1)


def chunk_source(data, *, sample_weight=None, chunk_size: int | None = None
                 ) -> Callable[[], Iterator[tuple[Any, Any]]]:
  """A function that returns a fresh iterator of ``(X_chunk, w_chunk)``.

  Exact EM reads the data once per iteration, so the source must be
  re-readable:

  * a 2-D array-like with ``shape``, ``dtype`` and slicing (``np.ndarray``,
    ``np.memmap``, ``jax.Array``, an HDF5 or zarr dataset) is cut into
    ``chunk_size`` rows, with ``sample_weight`` ``(N,)`` cut alongside;
  * a function of no arguments returning an iterable of chunks;
  * a re-iterable object (a list of arrays, or a class whose ``__iter__``
    starts over).

  A chunk is an ``(n, D)`` array or a pair ``(X_chunk, w_chunk)``. A one-shot
  iterator (a generator object) is refused: wrap the generator function
  instead (``lambda: gen()``), or use :func:`fit_online`.

  Example:
    >>> import numpy as np, gmmjax as gx
    >>> source = gx.chunk_source(np.zeros((10, 2)), chunk_size=4)
    >>> [x.shape[0] for x, _ in source()]
    [4, 4, 2]
  """
  if _is_array_like(data):
    n = data.shape[0]
    size = _balanced_rows(n, chunk_size)
    if sample_weight is not None and np.shape(sample_weight) != (n,):
      raise ValueError(f"sample_weight should have shape ({n},), got "
                       f"{np.shape(sample_weight)}.")

    def array_chunks():
      for start in range(0, n, size):
        stop = min(start + size, n)
        yield (data[start:stop],
               None if sample_weight is None else sample_weight[start:stop])
    return array_chunks

  if sample_weight is not None:
    raise ValueError("sample_weight goes with array data; a chunk source "
                     "yields (X_chunk, w_chunk) pairs instead.")
  if callable(data):
    return lambda: (_as_pair(item) for item in data())
  if isinstance(data, Iterator):
    raise TypeError(
        "Exact EM reads the data once per iteration, but a one-shot iterator "
        "(e.g. a generator object) can be read only once. Pass a function "
        "that returns a new iterator (e.g. `lambda: my_generator()`), a "
        "re-iterable object, or an array; for a stream seen once, use online "
        "EM (fit_online).")
  if isinstance(data, Iterable):
    return lambda: (_as_pair(item) for item in data)
  raise TypeError(f"Cannot read chunks from {type(data).__name__}: pass an "
                  "array, a np.memmap, a re-iterable of chunks or a function "
                  "returning an iterator of chunks.")


class _Pad:
  """Host-side chunk preparation: dtype, padding to one static shape, and
  (``sort_missing``) rows sorted by their number of NaN entries, so that
  most pieces of a chunk take a small missing-value kernel (a chunk's
  statistics are sums over its rows)."""

  def __init__(self, rows: int, n_features: int, dtype,
               sort_missing: bool = False):
    self.rows, self.n_features, self.dtype = rows, n_features, np.dtype(dtype)
    self.sort_missing = sort_missing
    self.checked = False  # set after the first pass: the data are checked

  def __call__(self, X, w):
    # Copying here reads a memmap inside the prefetch thread (not lazily
    # during the compiled kernel) and gives the device a buffer of its own.
    X = np.array(X, dtype=self.dtype, copy=True)
    if X.ndim != 2 or X.shape[1] != self.n_features:
      raise ValueError(f"Every chunk should have shape (n, "
                       f"{self.n_features}); got {X.shape}.")
    n = X.shape[0]
    w = (np.ones(n, self.dtype) if w is None
         else np.asarray(w, self.dtype).reshape(n))
    if not self.checked:
      # On the host, as each chunk is first read (every pass reads the same
      # data): one sum per chunk when all is well (NaN entries are missing
      # values with sort_missing).
      checks.check_finite(X, "A chunk of X", allow_nan=self.sort_missing)
      checks.check_finite(w, "A chunk of sample_weight")
    for start in range(0, max(n, 1), self.rows):
      part, wpart = X[start:start + self.rows], w[start:start + self.rows]
      m = part.shape[0]
      if m == 0:
        continue
      if self.sort_missing:
        order = np.argsort(np.isnan(part).sum(axis=1), kind="stable")
        part, wpart = part[order], wpart[order]
      if m < self.rows:
        # Zero-weight copies of a real row: same compiled shape, no effect on
        # any sum, and finite log-densities (0 * -inf would be NaN).
        fill = self.rows - m
        part = np.concatenate([part, np.broadcast_to(part[-1:], (fill,
                                                                 part.shape[1]))])
        wpart = np.concatenate([wpart, np.zeros(fill, self.dtype)])
      yield part, wpart


_END = object()


class _Failure:
  def __init__(self, error):
    self.error = error


def _prefetch(make_iter: Callable[[], Iterator], depth: int, device):
  """Iterates ``make_iter()`` on the device, reading ``depth`` chunks ahead.

  A background thread reads the source (disk, decoding, padding) while the
  device computes; ``device_put`` starts the host-to-device copy without
  waiting for it. The transfer is made on the calling thread because JAX's
  configuration contexts (``jax.enable_x64``) are thread-local.
  """
  if depth <= 0:
    for X, w in make_iter():
      yield jax.device_put(X, device), jax.device_put(w, device)
    return
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def worker():
    try:
      for item in make_iter():
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      put(_Failure(e))

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        break
      if isinstance(item, _Failure):
        raise item.error
      X, w = item
      yield jax.device_put(X, device), jax.device_put(w, device)
  finally:
    stop.set()
    thread.join()


@functools.partial(jax.jit, static_argnames=("nan_as_missing",))
def _accumulate(acc, params: GMMParams, X, w, shift,
                nan_as_missing: bool = False):
  """Adds a chunk's statistics and its count of positive-weight rows
  (``nan_as_missing``: NaN entries are missing values)."""
  stats, n_positive = acc
  observed = None
  if nan_as_missing:
    observed = ~jnp.isnan(X)
    X = missing.fill(X, observed)
  return (stats_lib.add_stats(stats,
                              stats_lib.e_step_stats(params, X, sample_weight=w,
                                                     shift=shift,
                                                     observed=observed)),
          n_positive + jnp.sum(w > 0).astype(n_positive.dtype))


def _zero_stats(params: GMMParams, rows: int, dtype):
  """Zero statistics and a zero count of positive-weight rows.

  Positive rows are counted in float (exact up to 2**24 per chunk in
  float32, 2**53 in float64); only the degenerate-component count uses it.
  """
  shapes = jax.eval_shape(
      lambda p, X, w, shift: stats_lib.e_step_stats(
          p, X, sample_weight=w, shift=shift), params,
      jax.ShapeDtypeStruct((rows, params.n_features), dtype),
      jax.ShapeDtypeStruct((rows,), dtype),
      jax.ShapeDtypeStruct((params.n_features,), dtype))
  # NumPy zeros (the caller puts them): jnp.zeros compiles a program each.
  stats = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return stats, np.zeros((), dtype)


def _stream(pad: _Pad, source, prefetch, device, max_in_flight, step, acc):
  """Folds ``step`` over all chunks, bounding the work queued on the device.

  JAX dispatches asynchronously: without a bound, the host would enqueue
  every chunk (and hold every chunk's buffer) before the device finished the
  first. Waiting on the result ``max_in_flight`` chunks back keeps memory
  flat and the device busy.
  """
  def chunks():
    for X, w in source():
      yield from pad(X, w)

  pending = []
  for X, w in _prefetch(chunks, prefetch, device):
    acc = step(acc, X, w)
    pending.append(acc)
    if len(pending) > max_in_flight:
      jax.block_until_ready(pending.pop(0))
  return acc


def _peek(source):
  """The first chunk's row count and an empty array of its dtype and width."""
  for X, _ in source():
    X = np.asarray(X)
    return X.shape[0], X[:0]
  raise ValueError("The chunk source is empty.")


def fit_chunked(data, params: GMMParams, *, sample_weight=None,
                chunk_size: int | None = None, max_iter: int = 100, tol=1e-3,
                reg_covar=1e-6, prev_log_likelihood=-np.inf,
                callback: Callable | None = None,
                reduce: Callable[[SuffStats], SuffStats] | None = None,
                prefetch: int = 2, device=None,
                nan_as_missing: bool = False, throw: bool = False
                ) -> FitResult:
  """Exact EM over data streamed in chunks; the same result as :func:`fit`.

  Every EM iteration streams all chunks through one compiled kernel that adds
  each chunk's sufficient statistics (computed around the mixture mean of the
  current parameters) to a running sum on the device; the M-step then reads
  the sum. Only ``prefetch + 2`` chunks are in memory at a time, so the data
  may be far larger than host or device memory (a ``np.memmap``). Reading
  the next chunks and their host-to-device copies run in a background thread
  while the device computes.

  Semantics are those of :func:`gmmjax.fit`: scikit-learn's convergence rule
  (``|change| < tol`` of the mean log-likelihood), ``n_iter`` iterations from
  ``params``, ``history``, ``failed``, and ``log_likelihood`` of the returned
  params (from the pass over the data that gave their statistics). The
  loop is :func:`gmmjax.fit`'s EM step, run from the host
  (:func:`engine.host_fit`).

  Every chunk is padded to one static shape (zero-weight rows), so the kernel
  compiles once. The compute dtype follows the data (float64 only with JAX's
  x64 mode on); chunks are cast on the host, before the transfer.

  Args:
    data: a 2-D array (``np.ndarray``, ``np.memmap``, ...), a re-iterable
      of chunks or a function returning an iterator of chunks; see
      :func:`chunk_source`.
    params: initial :class:`GMMParams`.
    sample_weight: optional ``(N,)`` weights for array ``data``.
    chunk_size: at most this many rows per chunk for array data (default
      65536; the chunks are made even); for other sources, the row count of
      the compiled kernel (default: the first chunk's), larger chunks being
      split and smaller ones padded.
    max_iter, tol, reg_covar, prev_log_likelihood, callback: as in
      :func:`gmmjax.fit` (``callback(n_iter, log_likelihood, change)`` runs
      on the host after every iteration).
    reduce: optional function of a pytree applied to each pass's sums (the
      :class:`SuffStats` and the count of rows with a positive weight),
      e.g. :func:`process_sum` to add every process's.
    prefetch: chunks read and transferred ahead (0: no background thread).
    device: device to compute on (default: this process's first device).
    throw: raise a :class:`FitError` when the fit failed, did not converge
      or has degenerate components, as :func:`gmmjax.fit`'s ``throw``.
    nan_as_missing: NaN entries of the chunks are missing values (EM over
      the observed coordinates, as :func:`gmmjax.fit` with ``observed=``);
      otherwise a chunk holding NaN is refused, as :func:`gmmjax.fit`
      refuses such data.

  Returns:
    A :class:`FitResult` (parameters on ``device``).

  Raises:
    ValueError: a chunk (or its weights) holding NaN or infinity, checked
      on the host as it is read; ``params`` whose factors do not match
      their covariances (:meth:`GMMParams.recompute_factors`).
    TypeError: under ``jax.jit``, ``jax.grad`` or ``jax.vmap``: call
      :func:`gmmjax.fit` or :func:`gmmjax.fit_sharded` there.

  Example:
    >>> import jax, numpy as np, gmmjax as gx
    >>> X = np.random.default_rng(0).normal(size=(1000, 2)).astype("float32")
    >>> p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type="diag")
    >>> a = gx.fit_chunked(X, p0, chunk_size=256)
    >>> b = gx.fit(X, p0)
    >>> bool(abs(a.log_likelihood - b.log_likelihood) < 1e-4), int(a.n_iter) == int(b.n_iter)
    (True, True)
  """
  _refuse_tracers(data, params, sample_weight, tol, reg_covar,
                  prev_log_likelihood)
  max_iter = engine.check_max_iter(max_iter)
  checks.check_factors(params)
  params, stats_pass, dtype = chunked_stats_pass(
      data, params, sample_weight=sample_weight, chunk_size=chunk_size,
      reduce=reduce, prefetch=prefetch, device=device,
      nan_as_missing=nan_as_missing)
  problem = engine.Problem(None, None, jnp.asarray(tol, dtype),
                           jnp.asarray(reg_covar, dtype))
  result = engine.host_fit(params, problem, stats_pass,
                           prev_ll=jnp.asarray(prev_log_likelihood, dtype),
                           max_iter=max_iter, callback=callback)
  return error_if_bad(result, "gmmjax.fit_chunked") if throw else result


def chunked_stats_pass(data, params: GMMParams, *, sample_weight=None,
                       chunk_size=None, reduce=None, prefetch: int = 2,
                       device=None, nan_as_missing: bool = False):
  """``(params, stats_pass, dtype)`` for :func:`engine.host_fit` over
  chunks: ``params`` (any mixture of the problem's shape; only its shapes
  matter here) checked and on ``device``, and ``stats_pass(mixture)``, one
  pass of E-step statistics of ``mixture`` over all the chunks (see
  :func:`fit_chunked`, whose arguments these are)."""
  if nan_as_missing:
    missing.check_type(params.covariance_type)
  source = chunk_source(data, sample_weight=sample_weight,
                        chunk_size=chunk_size)
  if _is_array_like(data):
    sample = np.zeros((0, data.shape[1]), data.dtype)
    rows = _balanced_rows(data.shape[0], chunk_size)
  else:
    first_rows, sample = _peek(source)
    rows = int(chunk_size or max(first_rows, 1))
  if sample.ndim != 2:
    raise ValueError(f"Chunks should be 2-D (n, n_features), got shape "
                     f"{sample.shape}.")
  dtype = checks.float_dtype(sample[:0])
  checks.check_params_data(params, np.zeros((0, sample.shape[1]), dtype))
  device = device or jax.local_devices()[0]
  params = jax.device_put(checks.as_params(params, dtype), device)
  pad = _Pad(rows, sample.shape[1], dtype, sort_missing=bool(nan_as_missing))
  in_flight = max(int(prefetch), 1)
  zero = jax.device_put(_zero_stats(params, rows, dtype), device)

  def stats_pass(p):
    shift = stats_lib.component_shift(p)
    acc = _stream(pad, source, prefetch, device, in_flight,
                  lambda a, X, w: _accumulate(a, p, X, w, shift,
                                              bool(nan_as_missing)), zero)
    pad.checked = True
    return acc if reduce is None else reduce(acc)

  return params, stats_pass, dtype


def _refuse_tracers(data, *args):
  """The host loop reads values: under ``jit``/``grad``/``vmap`` it cannot."""
  # A chunk source (a generator function, an iterable) is not a pytree:
  # flattening a generator warns (JAX 0.10) and will be an error.
  chunks = (jax.tree.leaves(data) if isinstance(data, (list, tuple))
            else [data])
  traced = [c for c in chunks if isinstance(c, jax.core.Tracer)]
  checks.refuse_tracers(
      "fit_chunked", "runs its EM loop on the host, one pass over the "
      "chunks per iteration",
      "gmmjax.fit (data in memory) or gmmjax.fit_sharded (data sharded "
      "over devices)", traced, args)
