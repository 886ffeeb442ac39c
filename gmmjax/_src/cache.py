"""A persistent compilation cache, on by default for the estimator and CLI.

A fresh process spends nearly all of a small fit's first call compiling.
JAX's persistent compilation cache makes later processes load the
programs instead (a fraction of the time: benchmarks/README.md, "Figures
behind the kernels' defaults"), but JAX leaves it off until a directory
is configured, so gmmjax configures one:
:func:`enable_default_cache`, called by the estimator's entry points and by
the command line.

The directory follows the platform's convention for caches (see
:func:`default_dir`). There is no subfolder per version: JAX's cache key
already hashes the program, the jaxlib version, the backend and its
version, the XLA flags and the compile options (``jax/_src/cache_key.py``),
so entries of other versions are never loaded, only left behind.

gmmjax stays out of the way where the user has decided: ``GMMJAX_NO_CACHE``
set (to anything but ``0``), a JAX cache directory configured
(``jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``), or JAX's
cache switched off (``jax_enable_compilation_cache=False``). Fitting never
depends on the cache: a directory that cannot be written to is skipped, and
JAX compiles again any entry it cannot read.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import warnings

import jax

ENV_DIR = "GMMJAX_CACHE_DIR"
ENV_OFF = "GMMJAX_NO_CACHE"

# JAX writes only programs that took at least this long to compile (its own
# default, 1 s, would skip all but the largest of gmmjax's). A small fit's
# programs (init and EM, sample, the evaluation programs) take longer, and
# one-operation programs (data staging, a user's eager jnp calls) shorter:
# loading those saves little against a file each. The figures are in
# benchmarks/README.md, "Figures behind the kernels' defaults".
MIN_COMPILE_TIME_SECS = 0.05

# JAX warns, per program, when an entry cannot be read (cut short by a full
# disk or a killed process, or garbage), and compiles it again: the result
# is right, and since JAX never overwrites an entry, every later process
# would repeat the warning. In gmmjax's own directory these are silenced;
# failed writes (a disk filling up) still warn.
_UNREADABLE = "Error reading persistent compilation cache entry"

_state = {"done": False, "dir": None}
_lock = threading.Lock()


def enable_default_cache() -> str | None:
  """Turns JAX's persistent compilation cache on in gmmjax's directory.

  Returns the directory, or None where the cache is left alone (opted out,
  the user's own JAX cache configured, or a directory that cannot be
  written to). Decided once per process; later calls cost a dict lookup.

  Process-wide: JAX has one cache, so every program compiled afterwards in
  this process (not only gmmjax's) that takes at least
  :data:`MIN_COMPILE_TIME_SECS` to compile is written there too; and once
  JAX has set its cache up, a directory configured later in the process is
  ignored unless ``jax.experimental.compilation_cache.compilation_cache
  .reset_cache()`` is called (JAX's rule).
  """
  if _state["done"]:
    return _state["dir"]
  with _lock:
    if not _state["done"]:
      try:
        _state["dir"] = _enable()
      except Exception:  # noqa: BLE001 - any failure means: no cache
        _state["dir"] = None
      _state["done"] = True
  return _state["dir"]


def active_dir() -> str | None:
  """The directory :func:`enable_default_cache` turned on in this process,
  or None (not called yet, or it left the cache alone)."""
  return _state["dir"]


def default_dir() -> str:
  """``$GMMJAX_CACHE_DIR``, else the platform's user cache folder + gmmjax.

  Linux and others: ``$XDG_CACHE_HOME/gmmjax`` (``~/.cache/gmmjax``; the XDG
  specification ignores a relative ``XDG_CACHE_HOME``), macOS
  ``~/Library/Caches/gmmjax``, Windows ``%LOCALAPPDATA%\\gmmjax\\Cache``.
  """
  override = os.environ.get(ENV_DIR)
  if override:
    return os.path.expanduser(override)
  home = os.path.expanduser("~")
  if sys.platform == "darwin":
    return os.path.join(home, "Library", "Caches", "gmmjax")
  if sys.platform == "win32":
    local = os.environ.get("LOCALAPPDATA") or os.path.join(
        home, "AppData", "Local")
    return os.path.join(local, "gmmjax", "Cache")
  xdg = os.environ.get("XDG_CACHE_HOME", "")
  base = xdg if os.path.isabs(xdg) else os.path.join(home, ".cache")
  return os.path.join(base, "gmmjax")


def _enable() -> str | None:
  """The once-per-process decision: the directory configured, or None."""
  if _opted_out() or _user_decided():
    return None
  path = default_dir()
  if not _writable(path):
    return None
  # No reset needed: JAX sets its cache up at the first compile that finds
  # a directory configured (compilation_cache._initialize_cache returns
  # without marking itself done while there is none), so a directory set
  # after earlier compiles, the user's own jit calls before the first fit,
  # is still used (JAX 0.6 to 0.10.2; tests/test_cache.py checks it).
  warnings.filterwarnings("ignore", message=_UNREADABLE,
                          module=r"jax\._src\.compiler")
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    MIN_COMPILE_TIME_SECS)
  jax.config.update("jax_compilation_cache_dir", path)  # last: the switch
  return path


def _opted_out() -> bool:
  return os.environ.get(ENV_OFF, "") not in ("", "0")


def _user_decided() -> bool:
  """The user configured JAX's cache, or switched it off: theirs to run."""
  return bool(jax.config.jax_compilation_cache_dir
              or os.environ.get("JAX_COMPILATION_CACHE_DIR")
              or not jax.config.jax_enable_compilation_cache)


def _writable(path: str) -> bool:
  """Whether ``path`` is (or can be made) a directory we can write files in.

  Checked once with a probe file, so that a read-only or full file system,
  or a path through a regular file, is skipped up front instead of failing
  (with a warning) at every program JAX tries to write.
  """
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".gmmjax-probe-", dir=path)
    try:
      os.write(fd, b"0")
    finally:
      os.close(fd)
      os.remove(probe)
  except OSError:
    return False
  return True
