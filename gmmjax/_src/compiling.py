"""Compile options by problem size: small programs compile faster.

XLA's CPU code generator has two paths for loops and fusions: the default
"fusion emitters" and the older loop emitters. For the small programs of a
tutorial-sized fit, the older ones compile about a third faster and run as
fast (benchmarks/README.md, "Compile options by size"), and compile time is
most of such a fit's first call. Large problems keep XLA's defaults, which
are what the benchmarks measure.

:func:`jit_by_size` makes both programs of a function; the caller picks one
by the problem's size (:func:`pick`). Inside a user's ``jit`` the default
is inlined into the user's program.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.extend import core as jax_core

from gmmjax._src import chunks

SMALL_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def ladder_size(n: int, minimum: int = 16) -> int:
  """The smallest size of the ladder ``m * 2**e`` (``m`` in 8..15) >= ``n``.

  Sizes a program is compiled for: a count of samples (or draws) rounded up
  to it wastes at most 1/8 of the work, and all counts between two rungs
  share one program (every count from 1 to ``minimum`` shares the first).
  """
  n = max(int(n), int(minimum))
  shift = max(n.bit_length() - 4, 0)
  return -(-n // (1 << shift)) << shift


def pick(programs, n_samples: int, n_components: int, n_features: int):
  """The small program for problems of one exact-form chunk
  (``chunks.use_direct``) called outside any trace, else the default.

  JAX takes compile options on top-level programs only: under a user's
  ``jit``, ``vmap`` or ``grad`` the default one is inlined.
  """
  default, small = programs
  if (chunks.use_direct(n_samples, n_components, n_features)
      and _outside_traces() and _small_options_work()):
    return small
  return default


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
  """Whether this backend's compiler takes :data:`SMALL_OPTIONS`.

  CPU only, and checked once by compiling a one-line program: an XLA that
  dropped the option must not break fitting.
  """
  if jax.default_backend() != "cpu":
    return False
  try:
    jax.jit(lambda x: x + 1, compiler_options=SMALL_OPTIONS).lower(
        np.float32(0)).compile()
  except Exception:  # noqa: BLE001 - any failure means: use the defaults
    return False
  return True


def jit_by_size(fun=None, **jit_kwargs):
  """``(default, small)``: ``jax.jit(fun)`` without and with small options."""
  if fun is None:
    return functools.partial(jit_by_size, **jit_kwargs)
  return (jax.jit(fun, **jit_kwargs),
          jax.jit(fun, compiler_options=SMALL_OPTIONS, **jit_kwargs))
