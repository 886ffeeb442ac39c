"""Compile options by problem size: small programs compile faster.

Compile time is most of a small fit's first call. XLA's CPU code generator
has two paths for loops and fusions: the default "fusion emitters" and the
older loop emitters, which compile about a third faster and run as fast on
problems of one exact-form chunk. For tutorial-sized problems (the
scikit-learn examples, at most a few thousand ``(n, K, D)`` entries) LLVM's
optimisation level 1 compiles faster than XLA's default level and runs
about as fast (measured against level 2);
level 0 would compile a first fit's program about 0.17 s (17%) faster but
run it 5x slower, which the executables store (compiled once, loaded by
every later process) and scripts of many fits (a ``GridSearchCV``) pay
over and over. The figures are in benchmarks/README.md ("Figures behind
the kernels' defaults"). Large problems keep XLA's defaults, which are what
the benchmarks measure.

:func:`jit_by_size` makes the three programs of a function; the caller
picks one by the problem's size (:func:`pick`). Inside a user's ``jit`` the
default is inlined into the user's program.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.extend import core as jax_core

from gmmjax._src import cache, chunks, executables

SMALL_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# LLVM's level 1, unless XLA_FLAGS sets a level: that is the user's choice
# (the test suite's level 0, a debugging session's), not overridden here.
TINY_OPTIONS = ({**SMALL_OPTIONS} if "--xla_backend_optimization_level"
                in os.environ.get("XLA_FLAGS", "")
                else {**SMALL_OPTIONS, "xla_backend_optimization_level": 1})
# Problems with at most this many (n, K, D) entries get TINY_OPTIONS: the
# measured break-even of compile time saved against slower iterations
# (benchmarks/README.md, "Figures behind the kernels' defaults").
TINY_MAX_ENTRIES = 1 << 14


def ladder_size(n: int, minimum: int = 16, bits: int = 4) -> int:
  """The smallest size of the ladder ``m * 2**e`` (``m`` in 8..15) >= ``n``.

  Sizes a program is compiled for: a count of samples (or draws) rounded up
  to it wastes at most 1/8 of the work, and all counts between two rungs
  share one program (every count from 1 to ``minimum`` shares the first).
  ``bits`` sets the rungs' resolution: ``m`` has that many bits (4: 8..15;
  7: 64..127, at most 1/64 of the work wasted, 64 rungs per doubling).
  Every power of two is a rung whatever ``bits``.
  """
  n = max(int(n), int(minimum))
  shift = max(n.bit_length() - bits, 0)
  return -(-n // (1 << shift)) << shift


def pick(programs, n_samples: int, n_components: int, n_features: int, *,
         batch: int = 1):
  """The program for a problem's size, called outside any trace.

  The tiny program for at most :data:`TINY_MAX_ENTRIES` ``(n, K, D)``
  entries over all ``batch`` problems (restarts) of one call, the small one
  for problems of one exact-form chunk (``chunks.use_direct``), else the
  default. JAX takes compile options on top-level programs only: under a
  user's ``jit``, ``vmap`` or ``grad`` the default one is inlined.
  """
  default, small, tiny = programs
  options = _options_for_size(n_samples, n_components, n_features, batch)
  if options is None or not _outside_traces():
    return default
  program = tiny if options is TINY_OPTIONS else small
  directory = cache.active_dir()
  if (directory is not None and isinstance(programs, executables.Programs)
      and not jax.config.jax_disable_jit):
    # A stored executable proves the options work; the probe runs only
    # after a compile with them failed.
    return executables.cached(program, programs, options, directory,
                              default=default, usable=_small_options_work)
  return program if _small_options_work() else default


def _options_for_size(n_samples: int, n_components: int, n_features: int,
                      batch: int = 1):
  """:data:`TINY_OPTIONS`, :data:`SMALL_OPTIONS` or ``None`` (XLA's
  defaults) for a problem of this size on the default backend."""
  if not (jax.default_backend() == "cpu"
          and chunks.use_direct(n_samples, n_components, n_features)):
    return None
  if batch * n_samples * n_components * n_features <= TINY_MAX_ENTRIES:
    return TINY_OPTIONS
  return SMALL_OPTIONS


def compiler_options(X, n_components: int, *, batch: int = 1) -> dict:
  """Compile options for your own ``jax.jit`` around gmmjax calls.

  JAX takes compile options on top-level programs only, so inside a user's
  ``jit`` (a loss through :func:`fit` under ``jax.value_and_grad``, say)
  gmmjax's code is compiled with XLA's defaults, not with the faster
  compiling options its own small programs use. Passing this function's
  result to that ``jit`` gives the user's program the options gmmjax
  would pick for a problem of this size:

  >>> import jax, jax.numpy as jnp, gmmjax as gx
  >>> X = jnp.linspace(-1.0, 1.0, 40).reshape(20, 2)
  >>> p0 = gx.init_params(jax.random.key(0), X, 2)
  >>> loss = lambda X: gx.fit(X, p0, tol=1e-6).log_likelihood
  >>> f = jax.jit(jax.value_and_grad(loss),
  ...             compiler_options=gx.compiler_options(X, 2))
  >>> value, grad = f(X)
  >>> grad.shape
  (20, 2)

  On CPU, for problems of one exact-form chunk (``n * K * D`` up to about
  a hundred thousand entries), XLA's older loop code generator, and for
  the smallest (up to :data:`TINY_MAX_ENTRIES` entries over ``batch``
  problems) LLVM's optimisation level 1 as well (unless ``XLA_FLAGS``
  sets a level): compiling a gradient through a fit of 1,000 x 2 points,
  K=3, took less than half the time with them (0.65-0.70 s against
  1.5-1.8 s on a 2-core CPU) and its calls ran as fast
  (benchmarks/README.md). An empty
  dict (XLA's defaults) for larger problems, on other backends, and where
  this XLA refuses the options. It is an explicit choice, not made for
  you: the options apply to everything in your ``jit``, so if the rest of
  your program is large, measure it with and without.

  Args:
    X: the ``(n_samples, n_features)`` data (an array, anything with its
      ``shape``, e.g. a ``jax.ShapeDtypeStruct``), or that shape as a
      tuple of ints.
    n_components: the number of components ``K``.
    batch: how many problems of this size one program fits (restarts or
      problems under ``vmap``).

  Returns:
    A new dict of XLA option names to values, for ``jax.jit``'s
    ``compiler_options`` (or ``Lowered.compile``'s).
  """
  if isinstance(X, (tuple, list)) and all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in X):
    shape = tuple(int(v) for v in X)  # a shape, not data
  else:
    shape = tuple(np.shape(X))
  if len(shape) != 2 or min(shape) < 1:
    raise ValueError("compiler_options takes the (n_samples, n_features) "
                     "data or its shape, at least one sample and one "
                     f"feature; got shape {shape}.")
  for name, value in (("n_components", n_components), ("batch", batch)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < 1):
      raise ValueError(f"{name} should be a positive int, got {value!r}.")
  options = _options_for_size(shape[0], int(n_components), shape[1],
                              int(batch))
  if options is None or not _small_options_work():
    return {}
  return dict(options)


def _outside_traces() -> bool:
  """No trace is active (``jit``, ``vmap``, ``scan`` bodies, ...).

  The arguments do not tell (concrete arrays captured by a user's ``jit``
  are not tracers); the current trace does: outside every transformation it
  is JAX's evaluating one. Where this JAX has no such query
  (``jax.extend.core``), the default program, valid everywhere, is used.
  """
  try:
    with jax_core.take_current_trace() as trace:
      return type(trace).__name__ == "EvalTrace"
  except Exception:  # noqa: BLE001 - unknown: the program valid everywhere
    return False


@functools.cache
def _small_options_work() -> bool:
  """Whether this backend's compiler takes :data:`TINY_OPTIONS` (which
  include :data:`SMALL_OPTIONS`).

  CPU only, and checked once by compiling a one-line program: an XLA that
  dropped the option must not break fitting.
  """
  if jax.default_backend() != "cpu":
    return False
  try:
    jax.jit(lambda x: x + 1, compiler_options=TINY_OPTIONS).lower(
        np.float32(0)).compile()
  except Exception:  # noqa: BLE001 - any failure means: use the defaults
    return False
  return True


def jit_sized(size, **jit_kwargs):
  """A decorator: ``fun`` jitted with XLA's default options,
  :data:`SMALL_OPTIONS` and :data:`TINY_OPTIONS`, each call running the one
  :func:`pick` chooses for ``size(*args, **kwargs) -> (n, K, D)`` (the
  default one where ``size`` fails: the default program reports bad input
  as before). For gmmjax's small eager functions (``e_step``,
  ``log_likelihood``, ...): their first calls compile in about half the
  time. They stay outside the executables store, whose key would cost
  more per call than these programs run. ``.programs`` holds the three;
  ``lower``, ``trace`` and ``eval_shape`` are the default program's,
  ``clear_cache`` empties all three.
  """

  def wrap(fun):
    programs = (jax.jit(fun, **jit_kwargs),
                jax.jit(fun, compiler_options=SMALL_OPTIONS, **jit_kwargs),
                jax.jit(fun, compiler_options=TINY_OPTIONS, **jit_kwargs))

    @functools.wraps(fun)
    def call(*args, **kwargs):
      try:
        n, k, d = size(*args, **kwargs)
        program = pick(programs, int(n), int(k), int(d))
      except Exception:  # noqa: BLE001 - the default program reports it
        program = programs[0]
      return program(*args, **kwargs)

    # What a jax.jit object offers (memory_maps.release, users' .lower):
    # the default program's, and the cache of all three.
    call.programs = programs
    call.lower = programs[0].lower
    call.trace = programs[0].trace
    call.eval_shape = programs[0].eval_shape
    def clear_cache():
      for program in programs:
        program.clear_cache()

    call.clear_cache = clear_cache
    return call

  return wrap


def size_of(params, X, *args, **kwargs):
  """``(n, K, D)`` of a ``(params, X, ...)`` call, for :func:`jit_sized`."""
  del args, kwargs
  return np.shape(X)[-2], params.means.shape[-2], params.means.shape[-1]


def pick_for(programs, X, params):
  """:func:`pick` for a fit of ``params`` (or a posterior) to ``X``."""
  return pick(programs, *size_of(params, X))


def call_for_size(programs):
  """``f(X, params, *args, **kwargs)``: the program of ``programs`` that
  :func:`pick_for` chooses for ``X`` and ``params``, called."""

  def call(X, params, *args, **kwargs):
    return pick_for(programs, X, params)(X, params, *args, **kwargs)

  return call


def jit_by_size(fun=None, **jit_kwargs):
  """``(default, small, tiny)``: ``jax.jit(fun)`` with XLA's default
  options, :data:`SMALL_OPTIONS` and :data:`TINY_OPTIONS` (an
  ``executables.Programs``: where gmmjax's cache is on, :func:`pick`'s
  small and tiny programs load their executables without tracing)."""
  if fun is None:
    return functools.partial(jit_by_size, **jit_kwargs)
  return executables.Programs(
      (jax.jit(fun, **jit_kwargs),
       jax.jit(fun, compiler_options=SMALL_OPTIONS, **jit_kwargs),
       jax.jit(fun, compiler_options=TINY_OPTIONS, **jit_kwargs)),
      fun, jit_kwargs)
