"""The cache of executables keyed without tracing (gmmjax/_src/executables.py,
executable_key.py).

In process, on a one-line program: what the key must tell apart, what it
must refuse to key, and that an entry is loaded only when whole. The
estimator's use of it across fresh processes is in tests/test_cache.py.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmmjax._src import chunks, compiling, executable_key, executables

# The store serves compiling.pick's small programs, which exist on CPU only
# (their compile options are the CPU compiler's; a GPU's refuses them).
pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="the executables store is used on CPU only (compiling.pick)")


def _affine(x, a, power, shift=None):
  y = x * a ** power
  if shift is None:
    return y
  return y + (shift() if callable(shift) else shift)


PROGRAMS = compiling.jit_by_size(_affine, static_argnames=("power", "shift"))
# Only gmmjax's own functions are named (their source is what the key
# hashes); this test's function is named by hand.
assert PROGRAMS.name is None
PROGRAMS.name = f"{__name__}._affine"


def key(*args, options=compiling.TINY_OPTIONS, **static):
  """The entry's name, as executables.cached computes it; None where it
  would not cache the call (an unhashable static: a TypeError there)."""
  try:
    signature = executable_key.call_signature(PROGRAMS.name, options, static,
                                              (args, {}))
  except TypeError:
    return None
  return None if signature is None else executable_key.key(signature)


@pytest.fixture
def store(tmp_path, monkeypatch):
  """A fresh folder and empty counters; this process's executables forgotten
  before and after."""
  monkeypatch.setattr(executables, "stats", dict.fromkeys(executables.stats, 0))
  # gmmjax's module values as they are now (another test's patches undone).
  monkeypatch.setattr(executable_key, "_snapshot", [])
  executables._loaded.cache_clear()
  yield str(tmp_path)
  executables._loaded.cache_clear()


def cached(directory):
  return executables.cached(PROGRAMS[2], PROGRAMS, compiling.TINY_OPTIONS,
                            directory, default=PROGRAMS[0],
                            usable=lambda: True)


def expected(x, a, power):
  return np.asarray(x, np.float64) * float(a) ** power


X = np.arange(6, dtype=np.float32).reshape(3, 2)


def test_the_key_tells_apart_what_changes_the_program():
  base = key(X, np.float32(2), power=2)
  assert base == key(X.copy(), np.float32(3), power=2)  # values do not count
  different = [
      key(X, np.float32(2), power=3),                     # a static value
      key(X, np.float32(2), power=2, shift=1.0),          # another static
      key(X, np.float32(2), power=2.0),                   # its type
      key(X[:2], np.float32(2), power=2),                 # a shape
      key(X.astype(np.float16), np.float32(2), power=2),  # a dtype
      key(X, 2.0, power=2),                               # a Python float
      key(X, jnp.asarray(2.0), power=2),                  # a weak type
      key(X, jnp.float32(2), power=2),                    # a strong one
      key(jnp.asarray(X), np.float32(2), power=2),        # a device array
      key((X,), np.float32(2), power=2),                  # the tree
      key(X, np.float32(2), power=2,                    # an option
          options=dict(compiling.TINY_OPTIONS,
                       xla_backend_optimization_level=3)),
      key(X, np.float32(2), power=2, options={}),         # none
  ]
  with jax.numpy_rank_promotion("raise"):                 # a JAX setting
    different.append(key(X, np.float32(2), power=2))
  with jax.default_device(jax.devices()[0]):              # set to a device
    different.append(key(X, np.float32(2), power=2))
  assert None not in different
  assert len({base, *different}) == len(different) + 1


def test_the_key_covers_the_source_and_the_environment(monkeypatch):
  base = key(X, np.float32(2), power=2)
  executable_key._environment.cache_clear()
  try:
    monkeypatch.setattr(executable_key, "_source_hash", lambda: "edited")
    assert key(X, np.float32(2), power=2) != base
    monkeypatch.undo()
    executable_key._environment.cache_clear()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert key(X, np.float32(2), power=2) != base
  finally:
    monkeypatch.undo()
    executable_key._environment.cache_clear()
  assert key(X, np.float32(2), power=2) == base


def test_a_program_named_by_more_than_its_source_is_not_cached():
  def factory(k):
    return lambda x: x * k

  def local(x):
    return x

  assert executable_key.program_name(compiling.pick, {}) is not None
  assert executable_key.program_name(factory(2), {}) is None       # a closure
  assert executable_key.program_name(local, {}) is None            # a local function
  assert executable_key.program_name(np.sum, {}) is None           # outside gmmjax
  assert executable_key.program_name(compiling.pick, {"donate_argnums": 0}) is None


def test_what_cannot_be_keyed_is_not_cached(store):
  @dataclasses.dataclass
  class Mutable:
    n: int = 1

  assert key(X, np.float32(2), power=lambda: 2) is None   # a user function
  assert key(X, np.float32(2), power=Mutable()) is None   # mutable options
  assert key(X, "text", power=2) is None                  # not an array
  # Frozen options and gmmjax's own functions are keyed by value and name.
  assert key(X, np.float32(2), power=chunks.ChunkOptions()) is not None
  assert key(X, np.float32(2), power=chunks.ChunkOptions()) != key(
      X, np.float32(2), power=chunks.ChunkOptions(cpu_bytes=1 << 20))
  assert key(X, np.float32(2), power=compiling.pick) is not None
  # Run as a plain jitted program, nothing stored.
  out = cached(store)(X, np.float32(2), power=2, shift=lambda: 1.0)
  np.testing.assert_allclose(out, expected(X, 2, 2) + 1.0)
  out = cached(store)(X, np.float32(2), 2)  # the static one by position
  np.testing.assert_allclose(out, expected(X, 2, 2))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("i",))
  with jax.set_mesh(mesh):  # a trace may place arrays by it
    out = cached(store)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert executables.stats["uncacheable"] == 3
  assert not os.path.exists(os.path.join(store, executables.SUBDIR))


def entry(store):
  folder = os.path.join(store, executables.SUBDIR)
  (name,) = os.listdir(folder)
  return os.path.join(folder, name)


def test_an_entry_is_written_once_and_loaded_by_a_later_process(store):
  first = cached(store)(X, np.float32(2), power=2)
  np.testing.assert_allclose(first, expected(X, 2, 2))
  assert executables.stats["compiled"] == executables.stats["written"] == 1
  cached(store)(X, np.float32(5), power=2)  # this process: from memory
  assert executables.stats["compiled"] == 1
  assert executables.stats["loaded"] == 0
  executables._loaded.cache_clear()  # as a new process
  again = cached(store)(X, np.float32(2), power=2)
  assert executables.stats["loaded"] == 1
  assert executables.stats["compiled"] == 1
  np.testing.assert_array_equal(again, first)
  # Stored without op names or source locations (they only weigh on a load).
  (entry,) = os.listdir(os.path.join(store, executables.SUBDIR))
  text = executables._read(store, entry.removesuffix(".exe")).as_text()
  assert "multiply" in text and "op_name" not in text
  assert "test_executables.py" not in text
  # (what a program compiled outside the store has)
  assert 'op_name="jit(_affine)' in PROGRAMS[2].lower(
      X[:2], np.float32(2), power=2).compile().as_text()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other key"])
def test_a_damaged_entry_is_compiled_again_not_loaded(store, damage):
  cached(store)(X, np.float32(2), power=2)
  path = entry(store)
  with open(path, "rb") as f:
    data = f.read()
  if damage == "truncated":
    data = data[:len(data) // 2]
  elif damage == "flipped":
    data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
  else:  # whole and checksummed, but stored under another program's key
    os.rename(path, path.replace(".exe", "x.exe"))
    path = os.path.join(os.path.dirname(path),
                        key(X, np.float32(2), power=3) + ".exe")
  with open(path, "wb") as f:
    f.write(data)
  executables._loaded.cache_clear()
  out = cached(store)(X, np.float32(2), power=3 if damage == "other key" else 2)
  power = 3 if damage == "other key" else 2
  np.testing.assert_allclose(out, expected(X, 2, power))
  assert executables.stats["loaded"] == 0
  assert executables.stats["compiled"] == 2


def test_a_stored_program_that_fails_to_run_is_dropped(store, monkeypatch):
  cached(store)(X, np.float32(2), power=2)
  executables._loaded.cache_clear()

  def broken(*_):
    # What XLA raised for an executable stored without its code.
    raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion.4 not found")

  monkeypatch.setattr(executables, "_read", lambda *_: broken)
  out = cached(store)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert executables.stats["rejected"] == 1
  assert not os.listdir(os.path.join(store, executables.SUBDIR))


def test_options_a_backend_refuses_run_the_default_program(store):
  """A compile that fails with the small options asks ``usable()`` (only
  then): where the backend refuses them the default program runs, nothing
  is stored; where it takes them the error is the program's, raised."""
  asked = []
  refused = jax.jit(_affine, static_argnames=("power", "shift"),
                    compiler_options={"xla_no_such_option": True})
  programs = executables.Programs((PROGRAMS[0], refused, refused), _affine,
                                  {"static_argnames": ("power", "shift")})
  programs.name = PROGRAMS.name + ":refused"

  def call(usable):
    return executables.cached(
        refused, programs, {"xla_no_such_option": True}, store,
        default=PROGRAMS[0], usable=lambda: asked.append(1) or usable)

  out = call(False)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert asked == [1] and executables.stats["written"] == 0
  with pytest.raises(Exception, match="xla_no_such_option"):
    call(True)(X, np.float32(2), power=2)
  works = executables.cached(
      PROGRAMS[2], PROGRAMS, compiling.TINY_OPTIONS, store,
      default=PROGRAMS[0], usable=lambda: asked.append(1) or True)
  np.testing.assert_allclose(works(X, np.float32(2), power=2),
                             expected(X, 2, 2))
  # Not asked for a compile that worked.
  assert asked == [1, 1] and executables.stats["written"] == 1


def test_an_unwritable_folder_only_skips_storing(store):
  blocker = os.path.join(store, "a-file")
  with open(blocker, "w") as f:
    f.write("not a directory")
  out = cached(blocker)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert executables.stats["compiled"] == 1
  assert executables.stats["written"] == 0


def test_what_jax_loaded_from_its_cache_is_not_stored(store, monkeypatch):
  # Such an executable serialises without its code (tests/test_cache.py has
  # the case across processes).
  seen = iter(range(100))
  monkeypatch.setattr(executables, "_jax_cache_hits", lambda: next(seen))
  out = cached(store)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert executables.stats["compiled"] == 1
  assert executables.stats["written"] == 0
  assert executables.stats["from_jax_cache"] == 1


def test_the_folder_is_trimmed_to_its_bound_oldest_first(store, monkeypatch):
  for power in (1, 2, 3):
    cached(store)(X, np.float32(2), power=power)
  folder = os.path.join(store, executables.SUBDIR)
  names = {power: key(X, np.float32(2), power=power) + ".exe"
           for power in (1, 2, 3)}
  for age, power in enumerate((2, 1, 3)):  # power=2 used longest ago
    os.utime(os.path.join(folder, names[power]), (1e9 + age, 1e9 + age))
  size = os.path.getsize(os.path.join(folder, names[1]))
  # Room for about three entries: the fourth write drops the two oldest.
  monkeypatch.setattr(executables, "MAX_FOLDER_BYTES", int(3.5 * size))
  cached(store)(X, np.float32(2), power=4)
  assert sorted(os.listdir(folder)) == sorted(
      [names[3], key(X, np.float32(2), power=4) + ".exe"])


def test_host_callbacks_are_found_wherever_they_are_nested():
  def report(x):
    jax.debug.callback(print, x)
    return x

  def nested(x):
    return jax.lax.cond(x.sum() > 0, lambda y: jax.jit(report)(y) + 1,
                        lambda y: y, x)

  def in_loop(x):
    return jax.lax.fori_loop(0, 2, lambda i, y: nested(y), x)

  ones = jnp.ones(2)
  for fn in (report, nested, in_loop):
    assert executables._has_callback(jax.jit(fn).trace(ones).jaxpr)
  assert not executables._has_callback(
      jax.jit(lambda x: jax.lax.fori_loop(0, 2, lambda i, y: y * 2, x))
      .trace(ones).jaxpr)


def test_a_changed_module_value_makes_the_cache_step_aside(store, monkeypatch):
  cached(store)(X, np.float32(2), power=2)
  assert executable_key.untouched()
  original = chunks.DEFAULT_CHUNKS
  monkeypatch.setattr(chunks, "DEFAULT_CHUNKS",
                      chunks.ChunkOptions(cpu_bytes=1 << 16))
  out = cached(store)(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert executables.stats["stepped_aside"] == 1
  assert executables.stats["uncacheable"] == 1
  cached(store)(X, np.float32(2), power=2)  # for the rest of the process
  assert executables.stats["uncacheable"] == 2
  assert executables.stats["compiled"] == 1
  # Restored, and a new process's view of the source: cached again.
  monkeypatch.setattr(chunks, "DEFAULT_CHUNKS", original)
  monkeypatch.setattr(executable_key, "_snapshot", [])
  cached(store)(X, np.float32(2), power=2)
  assert executables.stats["uncacheable"] == 2


def test_under_disable_jit_pick_hands_out_the_plain_program(store,
                                                           monkeypatch):
  # A compiled executable refuses to run under disable_jit (the estimator
  # raised "Disable jit is not supported in the AOT path").
  from gmmjax._src import cache

  monkeypatch.setitem(cache._state, "dir", store)
  monkeypatch.setitem(cache._state, "done", True)
  assert compiling.pick(PROGRAMS, 3, 1, 2) not in PROGRAMS  # the cache's
  with jax.disable_jit():
    program = compiling.pick(PROGRAMS, 3, 1, 2)
    assert program is PROGRAMS[2]
    out = program(X, np.float32(2), power=2)
  np.testing.assert_allclose(out, expected(X, 2, 2))
  assert not os.path.exists(os.path.join(store, executables.SUBDIR))


def test_this_processs_table_tells_settings_and_statics_apart(store):
  # The in-process lookup (executable_key.call_signature) must not hand
  # out a program compiled under another setting or static value.
  cached(store)(X, np.float32(2), power=2)
  with jax.numpy_rank_promotion("raise"):
    cached(store)(X, np.float32(2), power=2)
  cached(store)(X, np.float32(2), power=2.0)
  cached(store)(X, np.float32(2), power=True)
  assert executables.stats["compiled"] == 4
  assert executables.stats["written"] == 4
  out = cached(store)(X, np.float32(3), power=2)  # from the table
  np.testing.assert_allclose(out, expected(X, 3, 2))
  assert executables.stats["compiled"] == 4
  assert executables.stats["loaded"] == 0
