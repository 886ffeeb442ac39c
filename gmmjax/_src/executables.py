"""A cache of compiled executables that skips tracing and lowering.

JAX's persistent compilation cache (:mod:`gmmjax._src.cache`) saves XLA's
compile, but finds its entry by a hash of the lowered program: a process
still traces and lowers every program before it can load it, about 0.4 s
for a small fit's init-and-EM program on the project's 2-core machine
(benchmarks/README.md). For the small programs of :func:`compiling.pick`,
which dominate a script of small fits, this cache stores the executable
under a key computed without tracing, and a later process loads it at the
first call.

The key must cover everything a trace reads, or a stale program would run
silently. It hashes:

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

What the key cannot see is not cached: a call under a mesh context or
``jax.disable_jit``, a static argument passed by position, and every call
once one of gmmjax's module attributes differs from its value at the
first cached call (tests and benchmarks rebind tuning constants and
helpers, which the source hash cannot know).

Entries live in ``executables/`` of gmmjax's cache directory, which only
:func:`cache.enable_default_cache` turns on (the estimator and the command
line; never where the user opted out or configured JAX's cache). Each file
starts with a checksum of its contents, checked before anything in it is
loaded: a truncated or damaged entry is compiled again and replaced, never
run. Programs with host callbacks are not stored (a callback lives in one
process), nor are these programs written to JAX's cache as well: an
executable JAX loads from its cache serialises without its code. The folder is created private to the user: an executable is
machine code, and loading one runs it, as JAX's own cache does; the entry
format is JAX's (``jax.experimental.serialize_executable``, which pickles).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import pathlib
import pickle
import platform
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
from jax.experimental import serialize_executable

_MAGIC = b"gmmjax-executable-1\n"
SUBDIR = "executables"
# An entry larger than this is not written (a small program's is 0.1-1 MB).
MAX_ENTRY_BYTES = 64 << 20
# The folder is kept under this size: once a write takes it over, the
# entries used longest ago (by modification time, which a load refreshes)
# are removed until it holds 3/4 of it. New gmmjax or JAX versions key
# their programs anew, so without a bound old entries would pile up.
MAX_FOLDER_BYTES = 1 << 30

stats = {"loaded": 0, "written": 0, "compiled": 0, "uncacheable": 0,
         "rejected": 0, "from_jax_cache": 0, "stepped_aside": 0}
_lock = threading.Lock()


class _Loaded(dict):
  """This process's executables by key; ``memory_maps.release`` empties it
  (the instance, not the class, is marked)."""

  def cache_clear(self):
    self.clear()


_loaded = _Loaded()
_loaded.releases_programs = True


class Programs(tuple):
  """``(default, small, tiny)`` jitted programs of one function, with what
  this cache needs to key them: the function's name and static arguments."""

  def __new__(cls, programs, fun, jit_kwargs):
    self = super().__new__(cls, programs)
    names = jit_kwargs.get("static_argnames") or ()
    self.static_argnames = frozenset(
        (names,) if isinstance(names, str) else names)
    self.name = _name(fun, jit_kwargs)
    # A static argument passed by position would be keyed by its type only:
    # calls with that many positional arguments are not cached.
    try:
      params = list(inspect.signature(fun).parameters)
      self.max_positional = min(
          [params.index(n) for n in self.static_argnames if n in params]
          or [len(params)])
    except (TypeError, ValueError):
      self.name = None
    return self


def _name(fun, jit_kwargs) -> str | None:
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


def cached(program, programs: Programs, options: dict, directory: str, *,
           default, usable):
  """``program`` (one of ``programs``, compiled with ``options``) as a
  function that looks its executable up in ``directory`` before tracing.

  Before compiling, ``usable()`` says whether this backend takes
  ``options``; where it does not, ``default`` runs instead.
  """

  def call(*args, **kwargs):
    static = {k: v for k, v in kwargs.items() if k in programs.static_argnames}
    dynamic = {k: v for k, v in kwargs.items()
               if k not in programs.static_argnames}
    try:
      key = (None if programs.name is None
             or len(args) > programs.max_positional or not _untouched()
             else _key(programs.name, options, static, (args, dynamic)))
    except Exception:  # noqa: BLE001 - unkeyable: a plain jit call
      key = None
    if key is None:
      stats["uncacheable"] += 1
      return program(*args, **kwargs)
    compiled = _loaded.get(key)
    if compiled is not None:
      return compiled(*args, **dynamic)
    compiled = _read(directory, key)
    if compiled is not None:
      try:
        # Run to the end here: XLA reports a broken executable when it runs.
        out = jax.block_until_ready(compiled(*args, **dynamic))
      except jax.errors.JaxRuntimeError:  # a stored program that cannot run
        _remove(directory, key)
        stats["rejected"] += 1
        return program(*args, **kwargs)
      _loaded[key] = compiled
      return out
    if not usable():
      return default(*args, **kwargs)
    compiled = _compile_and_write(program, args, kwargs, directory, key)
    _loaded[key] = compiled
    return compiled(*args, **dynamic)

  return call


# -- the key --------------------------------------------------------------

_snapshot: list = []


def _untouched() -> bool:
  """Whether gmmjax's module attributes are still those of its source.

  The key hashes the source, so a value a trace reads from a module
  (``chunks.DEFAULT_CHUNKS``, ``cholesky.JITTER_STEPS``, a helper
  function) must be what the source says. Tests and benchmarks rebind
  some, then clear JAX's caches; once any attribute differs from its
  value at the first cached call, the cache steps aside for the rest of
  the process. About 0.1 ms per call (identity checks).
  """
  if not _snapshot:
    _snapshot.append([
        (vars(module), name, value)
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("gmmjax._src.") and module_name != __name__
        for name, value in vars(module).items()
        if not name.startswith("__")])
    _snapshot.append(True)
  if _snapshot[1]:
    for namespace, name, value in _snapshot[0]:
      if namespace.get(name) is not value:
        _snapshot[1] = False
        stats["stepped_aside"] += 1
        break
  return _snapshot[1]



def _key(name, options, static, dynamic) -> str | None:
  """The entry's name, or None when something the trace reads cannot be
  keyed reliably (then the program runs as a plain ``jax.jit``)."""
  parts = [name, repr(sorted(options.items()))]
  for k in sorted(static):
    value = _plain(static[k])
    if value is None:
      return None
    parts.append(f"{k}={value}")
  leaves, treedef = jax.tree.flatten(dynamic)
  tree = str(treedef)
  if " at 0x" in tree:  # an object's identity in the tree's data
    return None
  parts.append(tree)
  for leaf in leaves:
    signature = _signature(leaf)
    if signature is None:
      return None
    parts.append(signature)
  settings = _settings()
  if settings is None or not _no_mesh():
    return None
  parts.append(settings)
  parts.append(_environment())
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


def _signature(leaf) -> str | None:
  if isinstance(leaf, jax.Array):
    if isinstance(leaf, jax.core.Tracer):
      return None
    return (f"{leaf.shape}{_text(leaf.dtype)}"
            f"w{int(getattr(leaf, 'weak_type', 0))}{_text(leaf.sharding)}")
  if isinstance(leaf, (np.ndarray, np.generic)):
    return f"{np.shape(leaf)}{_text(leaf.dtype)}np"
  if isinstance(leaf, (bool, int, float, complex)):
    return f"py:{type(leaf).__name__}"
  return None


@functools.lru_cache(maxsize=256)
def _text(value) -> str:
  """``str`` of a dtype or a sharding (slow to format, hashable)."""
  return str(value)


def _settings() -> str | None:
  """JAX's settings as in effect here (``jax.config.values`` has
  thread-local overrides), or None when one cannot be written down (an
  object without a stable repr). Logging and caching settings do not
  change a program; others hold objects (``jax_default_device``: a
  device), written by their repr."""
  items = []
  for k, v in jax.config.values.items():
    if "cache" in k or "log" in k:
      continue
    if not (v is None or isinstance(v, (bool, int, float, str))):
      v = repr(v)
      if " at 0x" in v:
        return None
    items.append((k, v))
  return _settings_text(tuple(items))


@functools.lru_cache(maxsize=16)
def _settings_text(items) -> str:
  return ";".join(f"{k}={v!r}" for k, v in sorted(items))


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


# -- files ----------------------------------------------------------------


def _path(directory: str, key: str) -> str:
  return os.path.join(directory, SUBDIR, key + ".exe")


def _trim(folder: str) -> None:
  """Removes the least recently used entries while the folder holds more
  than :data:`MAX_FOLDER_BYTES`."""
  entries = []
  with os.scandir(folder) as it:
    for e in it:
      try:
        st = e.stat()
        if e.name.startswith(".tmp-") and st.st_mtime < time.time() - 3600:
          os.remove(e.path)  # left by a process killed while writing
        elif e.name.endswith(".exe"):
          entries.append((st.st_mtime, st.st_size, e.path))
      except OSError:  # removed meanwhile by another process
        continue
  total = sum(size for _, size, _ in entries)
  if total <= MAX_FOLDER_BYTES:
    return
  for _, size, path in sorted(entries):
    if total <= MAX_FOLDER_BYTES * 3 // 4:
      break
    try:
      os.remove(path)
    except OSError:
      pass
    total -= size


def _remove(directory: str, key: str) -> None:
  try:
    os.remove(_path(directory, key))
  except OSError:
    pass


def _read(directory: str, key: str):
  """The executable stored under ``key``, or None (absent, damaged, or not
  loadable here: it is then compiled again and replaced)."""
  try:
    with open(_path(directory, key), "rb") as f:
      data = f.read()
  except OSError:
    return None
  head = len(_MAGIC) + 32
  if (len(data) <= head or not data.startswith(_MAGIC)
      or hashlib.sha256(data[head:]).digest() != data[len(_MAGIC):head]):
    return None
  try:
    # JAX's format for executables (pickle): checksummed, in a private folder.
    payload = pickle.loads(data[head:])  # noqa: S301
    if payload[0] != key:
      return None
    compiled = serialize_executable.deserialize_and_load(*payload[1:])
  except Exception:  # noqa: BLE001 - any failure: compile instead
    return None
  stats["loaded"] += 1
  try:
    os.utime(_path(directory, key))  # recently used: kept by _trim
  except OSError:
    pass
  return compiled


# A GPU setting at its default, which CPU compiles ignore: this cache's
# compiles get a JAX cache key of their own. An executable JAX loaded from
# its cache serialises without its code (XLA CPU, jaxlib 0.10: a later
# process fails with "Function ... not found"), so it must be compiled here.
_OWN_JAX_KEY = {"xla_gpu_autotune_level": 4}
_hits = {"n": 0, "listening": False}


def _jax_cache_hits() -> int:
  """How many programs JAX has loaded from its persistent cache so far."""
  if not _hits["listening"]:
    with _lock:
      if not _hits["listening"]:
        jax.monitoring.register_event_listener(_count_hit)
        _hits["listening"] = True
  return _hits["n"]


def _count_hit(event, **_):
  if event == "/jax/compilation_cache/cache_hits":
    _hits["n"] += 1


def _has_callback(jaxpr) -> bool:
  """Whether ``jaxpr`` (a closed or open jaxpr), or one nested in it (loop
  bodies, branches, nested jits), calls back into Python."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    if "callback" in eqn.primitive.name:
      return True
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None),
                                             "eqns"):
          if _has_callback(sub):
            return True
  return False


def _compile_and_write(program, args, kwargs, directory: str, key: str):
  """Compiles ``program`` for these arguments and stores its executable
  (best effort: any failure to store leaves the compiled program usable)."""
  traced = program.trace(*args, **kwargs)
  lowered = traced.lower()
  hits = _jax_cache_hits()
  with _lock:
    # Not written to JAX's cache too (it would be stored twice, and after
    # this cache dropped an entry JAX would serve it, unstorably).
    least = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    try:
      compiled = lowered.compile(_OWN_JAX_KEY)
    except Exception:  # noqa: BLE001 - an XLA without the setting
      compiled = lowered.compile()
      hits = -1
    finally:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", least)
  stats["compiled"] += 1
  try:
    if hits != _jax_cache_hits():
      stats["from_jax_cache"] += 1
      return compiled  # JAX loaded it from its cache: not storable
    if _has_callback(traced.jaxpr):
      return compiled  # a host callback belongs to this process
    payload = pickle.dumps((key, *serialize_executable.serialize(compiled)))
    if len(payload) > MAX_ENTRY_BYTES:
      return compiled
    folder = os.path.join(directory, SUBDIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
      os.replace(tmp, _path(directory, key))  # whole, or not at all
    except BaseException:
      os.remove(tmp)
      raise
    stats["written"] += 1
    _trim(folder)
  except Exception:  # noqa: BLE001 - the cache is never needed to fit
    pass
  return compiled
