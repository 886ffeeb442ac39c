"""Sample chunks: the memory budget and the loops over chunks.

The E-step and the kernels read samples in chunks so that no ``(N, K)`` or
``(N, K, D)`` intermediate is materialised. How large a chunk may be is a
:class:`ChunkOptions`, passed as an argument (a frozen, hashable value, so
that jitted functions take it as a static argument); ``DEFAULT_CHUNKS``
holds the measured defaults (benchmarks/README.md, "Chunk budgets").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import covariance as cov_lib


@dataclasses.dataclass(frozen=True)
class ChunkOptions:
  """Chunk sizes and memory budgets: the E-step's chunks of samples, and the
  blocks of members a vmapped batch of fits runs in.

  Pass one as ``chunking=`` to the functions that take it (``fit``,
  ``fit_restarts``, ...); results do not depend on it beyond the order of
  float sums, only time and memory do. ``None`` means these defaults.

  Attributes:
    cpu_bytes: budget, in bytes, of the largest per-chunk intermediate on CPU
      (the whitened differences ``(chunk, K, D)`` of full covariances, the
      ``(chunk, K)`` log-probabilities otherwise). Chunks this size stay in
      the CPU's caches, which made the fused E+M pass faster than one pass
      over all samples, and they bound memory on data sets far larger than
      the cache or the RAM headroom.
    accelerator_bytes: the budget on GPUs and TPUs, at most
      ``1 / accelerator_memory_share`` of the memory JAX may allocate on the
      device. There each kernel launches once per chunk and a scan step
      costs a round-trip, so cache-sized chunks leave the device idle. The
      budget is per fit: the members of a vmapped batch each hold their own
      chunk (``batching.py`` runs EM loops' members in blocks for that
      reason). The backend is JAX's default one.
    accelerator_memory_share: see ``accelerator_bytes``.
    whitened_factor: the whitened full-covariance path (float32) gets this
      many times the CPU budget: its per-sample work (one GEMM row of
      ``K * D``, a sum over ``D``, then the moment GEMM) gains more from
      longer GEMMs than it loses to cache misses. Diag and float64 full
      measured no gain (or a loss) and keep the base budget.
    direct_max_entries: chunks with at most this many ``(n, K, D)``
      difference entries skip the fast forms and their guard: the exact
      per-component forms cost no more at that size (a GEMM with inner
      dimension 2 or 3 gains nothing), and one branch compiles in about half
      the time of two (tutorial-sized fits, vmapped small problems).
    min_chunk: the fewest samples in a chunk, whatever the budget.
    block_bytes: on CPU, the bytes of per-member work (about one E-step's
      largest intermediate each) that one block of a vmapped batch of fits
      spans (``batching.while_loop``, which runs only the blocks of members
      still iterating): large enough to amortise the per-block gathers,
      small enough that the last, partly finished block wastes little
      (blocks of 20-40 members measured fastest on workload 6).
    min_block: the fewest members in a CPU block.
    min_blocks: batches of fewer than this many blocks keep the plain
      vmapped loop: when all members stop after about as many iterations
      (restarts of one problem), blocks only add their gathers.
    sequential_member_bytes: on CPU, members at least this large run one at
      a time: their own work fills the E-step's cache-sized chunks, so
      batching them gains nothing per iteration, and each stops at its own
      count.
    accelerator_block_chunks: on accelerators, members run together up to
      this many E-step chunks (:func:`chunk_bytes`) at a time; a plain
      vmapped loop holds one chunk per member and ran out of memory for 32
      restarts of a large problem on an H200.

  The measured figures behind each default are in ``benchmarks/README.md``
  ("Chunk budgets", "Figures behind the kernels' defaults").

  Example:
    >>> import jax, gmmjax as gx
    >>> X = jax.random.normal(jax.random.key(0), (300, 2))
    >>> p0 = gx.init_params(jax.random.key(1), X, 2)
    >>> small = gx.ChunkOptions(cpu_bytes=1, accelerator_bytes=1)  # 128 rows
    >>> a, b = gx.fit(X, p0), gx.fit(X, p0, chunking=small)
    >>> bool(abs(a.log_likelihood - b.log_likelihood) < 1e-5)
    True
  """

  cpu_bytes: int = 2 << 20
  accelerator_bytes: int = 1 << 30
  accelerator_memory_share: int = 32
  whitened_factor: int = 4
  direct_max_entries: int = 1 << 16
  min_chunk: int = 128
  block_bytes: int = 1 << 18
  min_block: int = 16
  min_blocks: int = 4
  sequential_member_bytes: int = 2 << 20
  accelerator_block_chunks: int = 2


DEFAULT_CHUNKS = ChunkOptions()


def resolve(options: ChunkOptions | None) -> ChunkOptions:
  """``options``, or the defaults where ``None``."""
  return DEFAULT_CHUNKS if options is None else options


def on_cpu() -> bool:
  """Whether JAX's default backend is the CPU."""
  return jax.default_backend() == "cpu"


@functools.cache
def device_memory() -> int | None:
  """Bytes the default device may allocate, where its backend says."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 - no statistics on this backend
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def chunk_bytes(options: ChunkOptions | None = None) -> int:
  """The chunk budget of the default backend.

  ``cpu_bytes`` on CPU; on accelerators ``accelerator_bytes``, at most
  ``1 / accelerator_memory_share`` of the memory JAX may allocate there
  where the device reports it (a 16 GB GPU, 12 GB allocatable: 384 MB
  chunks).
  """
  options = resolve(options)
  if on_cpu():
    return options.cpu_bytes
  mem = device_memory()
  if mem is None:
    return options.accelerator_bytes
  return min(options.accelerator_bytes,
             mem // options.accelerator_memory_share)


def chunk_size(n_samples: int, n_components: int, n_features: int,
               covariance_type: str, dtype, budget: int | None = None,
               options: ChunkOptions | None = None) -> int:
  """Samples per chunk so that no per-chunk intermediate exceeds ``budget``.

  The widest intermediate of the fast (GEMM) forms per sample is the
  type's ``chunk_width``: ``K * D`` values for full covariances in float32
  (whitened differences), the ``D (D // 2 + 2)`` packed moment features in
  float64, and about ``max(3 K, 2 D + 1)`` otherwise. The default budget is
  :func:`chunk_bytes` (``whitened_factor`` times that on CPU for the
  whitened form); the result is at least ``min_chunk`` and at most
  ``n_samples`` (a single chunk). The exact moment fallback, whose ``(n, K,
  D)`` differences are wider, cuts a chunk into :func:`fallback_chunk`
  pieces of its own; the exact distances are recomputed one component at a
  time (``(n, D)``).
  """
  options = resolve(options)
  width, whitened = cov_lib.get(covariance_type).chunk_width(
      n_components, n_features, dtype)
  if whitened and budget is None and on_cpu():
    budget = options.whitened_factor * options.cpu_bytes
  return _rows_within(n_samples, width, dtype, budget, options)


def fallback_chunk(n_samples: int, n_components: int, n_features: int,
                   dtype, options: ChunkOptions | None = None) -> int:
  """Samples per piece of the exact ``(n, K, D)`` fallbacks (same budget)."""
  return _rows_within(n_samples, n_components * n_features, dtype, None,
                      resolve(options))


def _rows_within(n_samples: int, width: int, dtype, budget,
                 options: ChunkOptions) -> int:
  """Rows of ``width`` values within ``budget`` bytes, clipped to the data."""
  budget = chunk_bytes(options) if budget is None else budget
  per = budget // (width * jnp.dtype(dtype).itemsize)
  return int(min(n_samples, max(options.min_chunk, per)))


def use_direct(n: int, n_components: int, n_features: int,
               options: ChunkOptions | None = None) -> bool:
  """Whether an ``(n, D)`` chunk is small enough for the exact forms alone."""
  return n * n_components * n_features <= resolve(options).direct_max_entries

def sum_chunks(fn, n_samples: int, chunk: int, *arrays):
  """``sum`` of ``fn(*blocks)`` (a pytree) over consecutive row chunks.

  The reduction counterpart of :func:`map_chunks`: ``lax.scan`` over
  ``dynamic_slice`` windows, the remainder one more call; ``jax.checkpoint``
  keeps the backward pass chunked too.
  """
  if n_samples <= chunk:
    return fn(*arrays)
  n_full = n_samples // chunk
  block = jax.checkpoint(fn)

  def body(acc, i):
    blocks = [lax.dynamic_slice_in_dim(a, i * chunk, chunk) for a in arrays]
    return jax.tree.map(jnp.add, acc, block(*blocks)), None

  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
      fn, *[a[:chunk] for a in arrays]))
  acc, _ = lax.scan(body, zeros, jnp.arange(n_full))
  if n_full * chunk < n_samples:
    acc = jax.tree.map(jnp.add, acc,
                       fn(*[a[n_full * chunk:] for a in arrays]))
  return acc


def map_chunks(fn, n_samples: int, chunk: int, *arrays):
  """``fn`` applied to consecutive sample chunks of ``arrays``, concatenated.

  ``fn(*blocks)`` maps row blocks of the ``(N, ...)`` arrays to an
  ``(n, ...)`` array. Chunks are read with ``dynamic_slice`` inside
  ``lax.map`` (no padded copy of the data); the remainder is one more call.
  Differentiable (``jax.checkpoint`` keeps the backward pass chunked too).
  """
  if n_samples <= chunk:
    return fn(*arrays)
  n_full = n_samples // chunk
  body = jax.checkpoint(fn)

  def one(i):
    start = i * chunk
    return body(*[lax.dynamic_slice_in_dim(a, start, chunk) for a in arrays])

  out = lax.map(one, jnp.arange(n_full))
  out = out.reshape((n_full * chunk,) + out.shape[2:])
  if n_full * chunk < n_samples:
    rest = fn(*[a[n_full * chunk:] for a in arrays])
    out = jnp.concatenate([out, rest], axis=0)
  return out
