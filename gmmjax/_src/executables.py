"""A cache of compiled executables that skips tracing and lowering.

JAX's persistent compilation cache (:mod:`gmmjax._src.cache`) saves XLA's
compile, but finds its entry by a hash of the lowered program: a process
still traces and lowers every program before it can load it, about 0.4 s
for a small fit's init-and-EM program on the project's 2-core machine
(benchmarks/README.md). For the small programs of :func:`compiling.pick`,
which dominate a script of small fits, this cache stores the executable
under a key computed without tracing, and a later process loads it at the
first call.

The key (:mod:`gmmjax._src.executable_key`) covers everything a trace of
the program reads; what it cannot see (a mesh context, a static argument
passed by position, a changed module attribute) and calls under
``jax.disable_jit`` run as plain ``jax.jit`` programs.

Entries live in ``executables/`` of gmmjax's cache directory, which only
:func:`cache.enable_default_cache` turns on (the estimator and the command
line; never where the user opted out or configured JAX's cache). Each file
starts with a checksum of its contents, checked before anything in it is
loaded: a truncated or damaged entry is compiled again and replaced, never
run. Programs with host callbacks are not stored (a callback lives in one
process), nor are these programs written to JAX's cache as well: an
executable JAX loads from its cache serialises without its code. The
folder is created private to the user: an executable is machine code, and
loading one runs it, as JAX's own cache does; the entry format is JAX's
(``jax.experimental.serialize_executable``, which pickles).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import tempfile
import threading
import time

import jax
from jax.experimental import serialize_executable

from gmmjax._src import executable_key

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
    self.name = executable_key.program_name(fun, jit_kwargs)
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


def cached(program, programs: Programs, options: dict, directory: str, *,
           default, usable):
  """``program`` (one of ``programs``, compiled with ``options``) as a
  function that looks its executable up in ``directory`` before tracing.

  Where compiling with ``options`` fails, ``usable()`` says whether this
  backend takes them: where it does not, ``default`` runs instead (asked
  only then: the probe is a compile of its own, about 37 ms of a first
  call).
  """

  def call(*args, **kwargs):
    static = {k: v for k, v in kwargs.items() if k in programs.static_argnames}
    dynamic = {k: v for k, v in kwargs.items()
               if k not in programs.static_argnames}
    fast = key = compiled = None
    try:
      if programs.name is None or len(args) > programs.max_positional:
        pass
      elif not executable_key.untouched():
        stats["stepped_aside"] += 1
      else:
        # This process's programs by a cheaper summary of the call; the
        # entry's name only when it is not loaded yet.
        fast = executable_key.call_signature(programs.name, options, static,
                                             (args, dynamic))
        compiled = _loaded.get(fast)
        if compiled is None and fast is not None:
          key = executable_key.key(fast)
    except Exception:  # noqa: BLE001 - unkeyable: a plain jit call
      fast = key = compiled = None
    if compiled is not None:
      return compiled(*args, **dynamic)
    if key is None:
      stats["uncacheable"] += 1
      return program(*args, **kwargs)
    compiled = _read(directory, key)
    if compiled is not None:
      try:
        # Run to the end here: XLA reports a broken executable when it runs.
        out = jax.block_until_ready(compiled(*args, **dynamic))
      except jax.errors.JaxRuntimeError:  # a stored program that cannot run
        _remove(directory, key)
        stats["rejected"] += 1
        return program(*args, **kwargs)
      _loaded[fast] = compiled
      return out
    try:
      compiled = _compile_and_write(program, args, kwargs, directory, key)
    except Exception:
      if usable():  # the options work here: the failure is the program's
        raise
      return default(*args, **kwargs)
    _loaded[fast] = compiled
    return compiled(*args, **dynamic)

  return call


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


def _strip_locations(lowered) -> None:
  """Drops source locations and operation names from ``lowered`` before it
  is compiled for this cache.

  A stored executable carries its optimised HLO, which a later process
  parses when it loads the entry: a fifth of the first fit's program was
  op names ("jit(_init_and_fit)/while/body/..."). Without them its entry
  went from 543 to 421 kB and its load from 50 to 42 ms (2-core machine).
  They serve debugging and profiles, not the fit. The module is changed in
  place: JAX keeps it for this process's later lowerings of the same
  function and shapes, which then lack the names too (the sibling
  programs of ``compiling.jit_by_size`` included). Called under ``_lock``,
  so no other compile for this store reads it meanwhile; a plain ``jit``
  compile of the same program in another thread at that moment is not
  excluded. Best effort: where it cannot be changed, it compiles as it
  is.
  """
  try:
    from jax.extend.mlir import passmanager  # noqa: PLC0415 - compiles only

    module = lowered.compiler_ir("stablehlo")
    with module.context:
      passmanager.PassManager.parse(
          "builtin.module(strip-debuginfo)").run(module.operation)
  except Exception:  # noqa: BLE001 - the locations are only weight
    pass


def _compile_and_write(program, args, kwargs, directory: str, key: str):
  """Compiles ``program`` for these arguments and stores its executable
  (best effort: any failure to store leaves the compiled program usable)."""
  traced = program.trace(*args, **kwargs)
  lowered = traced.lower()
  callback = _has_callback(traced.jaxpr)
  hits = _jax_cache_hits()
  with _lock:
    if not callback:
      _strip_locations(lowered)
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
    if callback:
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
