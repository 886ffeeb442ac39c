"""Keeps a long-running process clear of the kernel's limit on memory maps.

XLA's CPU compiler maps every compiled program's kernels into the process
as memory mappings of their own: about 9 for a one-line function, 60-70 for
:func:`gmmjax.sample`, about 300 for an estimator's EM fit. They stay until
the executable is freed, and a jitted function keeps every executable it
compiled for as long as the function lives. Linux allows a process
``vm.max_map_count`` mappings (65,530 by default), so a process that
compiles a few hundred distinct programs (a notebook kernel sweeping
shapes, a test file run in one process) reaches it, and then XLA dies with
a segmentation fault or ``std::bad_alloc`` inside ``backend_compile``
(docs/robustness.md has a reproduction that needs no gmmjax).

:func:`guard`, called by every public entry point (through
``checks.as_data``), counts the maps once a few programs have been compiled
since it last looked; past half the limit it frees the programs gmmjax's own
jitted functions hold (the next call recompiles, or loads from the
persistent cache), and if the process is still near the limit, where the
maps belong to other programs, it warns once. Where the limit cannot be
read (not Linux), it does nothing.
"""

from __future__ import annotations

import gc
import sys
import warnings

import jax.monitoring

RELEASE_FRACTION = 0.5  # of the limit: free gmmjax's programs past this
WARN_FRACTION = 0.75  # still past this after freeing them: warn once
_CHECK_EVERY = 8  # compiles between counts while below a quarter
_MAPS = "/proc/self/maps"
_LIMIT = "/proc/sys/vm/max_map_count"

# The first call counts (a process may already be near the limit).
_state = {"compiles": 0, "checked": -_CHECK_EVERY, "every": _CHECK_EVERY,
          "limit": None, "warned": False}


def _count_compile(event: str, duration: float, **_) -> None:
  del duration
  # Compiles and persistent-cache loads both map a program's kernels.
  if event.endswith(("backend_compile_duration", "cache_retrieval_time_sec")):
    _state["compiles"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def count_maps() -> int | None:
  """The process's memory mappings now, or None where that is unknown."""
  try:
    with open(_MAPS, "rb") as f:
      return f.read().count(b"\n")
  except OSError:
    return None


def map_limit() -> int | None:
  """``vm.max_map_count``, or None where the kernel does not say."""
  if _state["limit"] is None:
    try:
      with open(_LIMIT, encoding="ascii") as f:
        _state["limit"] = int(f.read().strip())
    except (OSError, ValueError):
      _state["limit"] = 0
  return _state["limit"] or None


def guard() -> None:
  """Frees gmmjax's compiled programs when the process nears the limit.

  Costs one comparison unless programs were compiled since the last count.
  """
  if _state["compiles"] - _state["checked"] < _state["every"]:
    return
  _state["checked"] = _state["compiles"]
  limit = map_limit()
  used = count_maps() if limit else None
  if used is None:
    _state["every"] = sys.maxsize  # nothing to measure here
    return
  # Near the limit, look after every compile: an EM program is ~0.5%.
  _state["every"] = 1 if used > limit // 4 else _CHECK_EVERY
  if used < RELEASE_FRACTION * limit:
    return
  release()
  used = count_maps()
  if used is not None and used >= WARN_FRACTION * limit and not (
      _state["warned"]):
    _state["warned"] = True
    warnings.warn(
        f"This process holds {used} memory mappings of the kernel's limit "
        f"of {limit} (vm.max_map_count), mostly compiled JAX programs that "
        "are not gmmjax's (gmmjax has freed its own). Compiling more may "
        "crash the process: call jax.clear_caches(), or raise the limit "
        "(sysctl vm.max_map_count).", RuntimeWarning, stacklevel=3)


def release() -> None:
  """Drops the executables of every jitted function in gmmjax's modules.

  Their next call compiles again (or loads from the persistent cache).
  Factories that build jitted functions on demand mark themselves with
  ``releases_programs = True`` and are emptied too.
  """
  for name, module in list(sys.modules.items()):
    if not (name == "gmmjax" or name.startswith("gmmjax.")):
      continue
    for value in list(vars(module).values()):
      for obj in value if isinstance(value, tuple) else (value,):
        if getattr(obj, "releases_programs", False):
          obj.cache_clear()
        elif hasattr(obj, "lower") and callable(
            getattr(obj, "clear_cache", None)):
          obj.clear_cache()
  gc.collect()
