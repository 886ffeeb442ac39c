"""The key of a stored executable, computed without tracing.

:mod:`gmmjax._src.executables` stores compiled programs under this key;
it must cover everything a trace of the program reads, or a stale program
would run silently. It hashes:

- the program (a gmmjax module-level function's name and first line, not
  a closure; the compile options) and every static argument's value (only
  plain values: numbers, strings, ``None``, tuples and frozen dataclasses
  of them, and gmmjax's own module-level functions; anything else, a
  user's callback for one, is not cached);
- the arguments' tree and, per leaf, shape, dtype, weak type and placement;
- gmmjax's source (every ``.py`` file of the package) and version, the
  versions of Python, JAX, jaxlib, NumPy and ml_dtypes, every JAX setting
  in effect at the call (``jax_enable_x64`` and the others, thread-local
  overrides included), the ``JAX_*``, ``XLA_*`` and ``LIBTPU_*``
  environment, the backend and its devices, and the host CPU (its model and
  instruction-set flags: an executable built for one CPU must not run on
  another that shares the home directory).

What the key cannot see makes a call uncacheable (``None``): a mesh
context, a setting without a stable repr, an argument that is not an
array or a number; and :func:`untouched` tells when one of gmmjax's module
attributes differs from its value at the first cached call (tests and
benchmarks rebind tuning constants and helpers, which the source hash
cannot know).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import os
import pathlib
import platform
import subprocess
import sys
import types

import jax
import numpy as np


def program_name(fun, jit_kwargs) -> str | None:
  """A gmmjax module-level function's name and first line (two lambdas of
  one module differ), or None where the name does not tell the program:
  a closure (its captured values are not keyed), a function outside
  gmmjax (its source is not hashed), or jit options besides
  ``static_argnames``."""
  code = getattr(fun, "__code__", None)
  module = getattr(fun, "__module__", None) or ""
  if (code is None or getattr(fun, "__closure__", None)
      or "<locals>" in fun.__qualname__ or not module.startswith("gmmjax")
      or set(jit_kwargs) - {"static_argnames", "compiler_options"}):
    return None
  return f"{module}.{fun.__qualname__}:{code.co_firstlineno}"


_snapshot: list = []


def untouched() -> bool:
  """Whether gmmjax's module attributes are still those of its source.

  The key hashes the source, so a value a trace reads from a module
  (``chunks.DEFAULT_CHUNKS``, ``cholesky.JITTER_STEPS``, a helper
  function) must be what the source says. Tests and benchmarks rebind
  some, then clear JAX's caches; once any attribute differs from its
  value at the first cached call, the cache steps aside for the rest of
  the process. Functions and values are watched, not the modules and
  classes a module imports (about 700 identity checks, 0.07 ms per call).
  """
  if not _snapshot:
    own = (__name__, "gmmjax._src.executables")
    watched = [
        (vars(module), name, value)
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("gmmjax._src.") and module_name not in own
        for name, value in vars(module).items()
        if not (name.startswith("__") or isinstance(value, (type,
                                                            types.ModuleType)))]
    _snapshot[:] = [watched, True]  # one step: threads see it whole
  if _snapshot[1]:
    for namespace, name, value in _snapshot[0]:
      if namespace.get(name) is not value:
        _snapshot[1] = False
        break
  return _snapshot[1]


def call_signature(name, options, static, dynamic):
  """What tells calls apart in this process: hashable, and the input of
  :func:`key` (the environment does not change within a process); None
  where a leaf is not an array or a number. Raises TypeError for
  unhashable statics."""
  leaves, treedef = jax.tree.flatten(dynamic)
  signature = []
  for leaf in leaves:
    if isinstance(leaf, jax.Array):
      if isinstance(leaf, jax.core.Tracer):
        return None
      signature.append((leaf.shape, leaf.dtype,
                        getattr(leaf, "weak_type", False), leaf.sharding))
    elif isinstance(leaf, (np.ndarray, np.generic)):
      signature.append((leaf.shape, leaf.dtype))
    elif isinstance(leaf, (bool, int, float, complex)):
      signature.append(type(leaf))
    else:
      return None
  out = (name, tuple(sorted(options.items())),
         tuple((k, type(v), v) for k, v in sorted(static.items())),
         treedef, tuple(signature), tuple(jax.config.values.items()),
         _no_mesh())
  hash(out)
  return out


def key(signature) -> str | None:
  """The stored entry's name for a :func:`call_signature`, or None when
  something the trace reads cannot be written down reliably (then the
  program runs as a plain ``jax.jit``)."""
  name, options, static, treedef, leaves, settings, no_mesh = signature
  tree = str(treedef)
  if not no_mesh or " at 0x" in tree:  # an object's identity in the tree
    return None
  parts = [name, repr(options), tree]
  for k, _, value in static:
    text = _plain(value)
    if text is None:
      return None
    parts.append(f"{k}={text}")
  parts += [_leaf_text(leaf) for leaf in leaves]
  settings = _settings_text(settings)
  if settings is None:
    return None
  parts += [settings, _environment()]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def _no_mesh() -> bool:
  """No mesh context is set (``jax.set_mesh``,
  ``jax.sharding.use_abstract_mesh``):
  a trace under one may place arrays differently."""
  return (jax.sharding.get_abstract_mesh().empty
          and jax.sharding.get_mesh().empty)


def _plain(value) -> str | None:
  """A static argument's value as text, or None when it is not plain."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return f"{type(value).__name__}:{value!r}"
  if isinstance(value, tuple):
    items = [_plain(v) for v in value]
    return (None if None in items
            else f"{type(value).__qualname__}({', '.join(items)})")
  if dataclasses.is_dataclass(value) and not isinstance(value, type) and (
      type(value).__dataclass_params__.frozen):
    fields = [_plain(getattr(value, f.name))
              for f in dataclasses.fields(value)]
    if None in fields:
      return None
    return f"{type(value).__module__}.{type(value).__qualname__}{fields}"
  if callable(value) and getattr(value, "__module__", "").startswith(
      "gmmjax") and _module_level(value):
    return f"fn:{value.__module__}.{value.__qualname__}"
  return None


def _module_level(fn) -> bool:
  """``fn`` is what its module holds under its name (not a closure)."""
  obj = sys.modules.get(fn.__module__)
  for part in fn.__qualname__.split("."):
    obj = getattr(obj, part, None)
  return obj is fn


def _leaf_text(leaf) -> str:
  """One entry of a :func:`call_signature`'s leaves as text."""
  if isinstance(leaf, type):
    return f"py:{leaf.__name__}"
  if len(leaf) == 2:
    return f"{leaf[0]}{_text(leaf[1])}np"
  shape, dtype, weak, sharding = leaf
  return f"{shape}{_text(dtype)}w{int(weak)}{_text(sharding)}"


@functools.lru_cache(maxsize=256)
def _text(value) -> str:
  """``str`` of a dtype or a sharding (slow to format, hashable)."""
  return str(value)


@functools.lru_cache(maxsize=16)
def _settings_text(items) -> str | None:
  """JAX's settings (``jax.config.values``, which has thread-local
  overrides) as text, or None when one cannot be written down (an object
  without a stable repr). Logging and caching settings do not change a
  program; others hold objects (``jax_default_device``: a device),
  written by their repr."""
  kept = []
  for k, v in sorted(items):
    if "cache" in k or "log" in k:
      continue
    text = repr(v)
    if " at 0x" in text:
      return None
    kept.append(f"{k}={text}")
  return ";".join(kept)


@functools.cache
def _environment() -> str:
  """What a process cannot change under a program: code, versions, the
  machine and the environment JAX and XLA read."""
  versions = [sys.version, jax.__version__, np.__version__,
              getattr(sys.modules.get("gmmjax"), "__version__", None)]
  for module in ("jaxlib.version", "ml_dtypes"):
    try:
      versions.append(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - absent: its absence is the key
      versions.append(f"no {module}")
  env = sorted((k, v) for k, v in os.environ.items()
               if k.startswith(("JAX_", "XLA_", "LIBTPU_"))
               and "CACHE" not in k)
  devices = jax.devices()
  backend = (jax.default_backend(), devices[0].client.platform_version,
             [d.device_kind for d in devices], jax.process_count())
  return repr((_source_hash(), versions, env, backend, _cpu()))


def _source_hash() -> str:
  """A hash of every Python file of the gmmjax package (an install without
  them, a zip or compiled files only, raises: nothing is cached)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  digest = hashlib.sha256()
  paths = sorted(root.rglob("*.py"))
  if not any(p.name == "executables.py" for p in paths):
    raise FileNotFoundError("gmmjax's source files are not readable")
  for path in paths:
    digest.update(str(path.relative_to(root)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _cpu() -> str:
  """The host CPU: model and instruction-set flags where the system says."""
  text = platform.machine() + platform.processor()
  if not sys.platform.startswith("linux"):
    text += platform.platform()
  if sys.platform == "darwin":  # the chip's name: M1 and M3 differ
    try:
      text += subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
      pass
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith(("model name", "flags", "Features")):
          text += line
        elif not line.strip() and "flags" in text:
          break  # the first processor is enough
  except OSError:
    pass
  return hashlib.sha256(text.encode()).hexdigest()
