"""The default persistent compilation cache (gmmjax/_src/cache.py).

The suite configures a JAX cache of its own (conftest), which gmmjax then
leaves alone, so each case runs a fresh process with the user's view of
things: no JAX cache settings, HOME and XDG_CACHE_HOME under tmp_path. The
suite's XLA flags stay (compiles about 20% faster; they only enter JAX's
cache key). Each process is one small fit (3-5 s, mostly importing JAX and
compiling); one populated cache serves the cases that need one.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmmjax._src import cache, executables

# The fit's small programs are stored as executables on CPU only
# (compiling.pick); elsewhere JAX's own cache, in the same folder, holds them.
ON_CPU = jax.default_backend() == "cpu"

HERE = pathlib.Path(__file__).resolve().parent

# Compiles a program of its own before the first fit (gmmjax must still get
# its directory used), fits 200 x 2, K=2 (spherical) and reports, as one JSON line, what
# gmmjax chose, JAX's settings, the persistent-cache hits and the means.
WORKER = """
import json
import jax
import jax.monitoring
import numpy as np

hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event)
    if event == "/jax/compilation_cache/cache_hits" else None)
float(jax.jit(lambda x: x * 2.0 + 1.0)(1.0))

import gmmjax as gx
from gmmjax._src import cache, executables

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 2)) + np.repeat([[0.0, 0.0], [5.0, 5.0]], 100, 0)
# Spherical, drawn from the data: the program compiles in about half the
# time of full covariances from k-means (what is cached does not matter).
gm = gx.GaussianMixture(2, covariance_type="spherical",
                        init_params="random_from_data", random_state=0).fit(X)
print(json.dumps({
    "dir": cache.enable_default_cache(),
    "config_dir": jax.config.jax_compilation_cache_dir,
    "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
    "hits": len(hits),
    "executables": executables.stats,
    "labels": gm.predict(X).tolist(),
    "means": gm.means_.tolist()}))
"""

_JAX_SETTINGS = ("JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "GMMJAX_CACHE_DIR", "GMMJAX_NO_CACHE", "XDG_CACHE_HOME")


def run_fit(tmp_path, **env_vars):
  """Runs WORKER with a user's environment (plus ``env_vars``): its report."""
  env = {k: v for k, v in os.environ.items() if k not in _JAX_SETTINGS}
  env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(
                 [str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p]))
  env.update(env_vars)
  proc = subprocess.run([sys.executable, "-c", WORKER], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "persistent compilation cache" not in proc.stderr, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def entries(path):
  return sorted(p.name for p in pathlib.Path(path).iterdir())


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
  """``(tmp_path, report)`` of a first fit in a fresh home."""
  tmp_path = tmp_path_factory.mktemp("first")
  return tmp_path, run_fit(tmp_path)


def test_a_fit_fills_the_default_cache_and_the_next_process_loads_it(
    populated):
  tmp_path, first = populated
  where = str(tmp_path / "xdg" / "gmmjax")
  assert first["dir"] == first["config_dir"] == where
  assert first["min_time"] == cache.MIN_COMPILE_TIME_SECS
  names = entries(where)
  assert not [n for n in names if "probe" in n]
  assert first["hits"] == 0
  if not ON_CPU:
    # JAX's cache holds the fit's programs, and the next process loads them.
    assert [n for n in names if n.endswith("-cache")], names
    assert first["executables"]["written"] == 0, first["executables"]
    second = run_fit(tmp_path)
    assert second["dir"] == where and second["hits"] >= 1, second
    assert second["means"] == first["means"]
    return
  # The fit's programs are small: stored as executables, not in JAX's
  # cache too (a program compiled for the executables never is).
  assert not [n for n in names if n.endswith("-cache")], names
  # The fit's and predict's programs, stored as executables too.
  assert first["executables"]["written"] == 2, first["executables"]
  folder = pathlib.Path(where, executables.SUBDIR)
  assert folder.stat().st_mode & 0o777 == 0o700
  assert len(entries(folder)) == 2
  second = run_fit(tmp_path)
  assert second["dir"] == where
  # Loaded without tracing or compiling.
  assert second["executables"]["loaded"] == 2, second["executables"]
  assert second["executables"]["compiled"] == 0
  assert second["means"] == first["means"]
  assert second["labels"] == first["labels"]


def test_opting_out_leaves_no_directory_and_no_setting(tmp_path):
  report = run_fit(tmp_path, GMMJAX_NO_CACHE="1")
  assert report["dir"] is None and report["config_dir"] is None
  assert report["min_time"] == 1.0  # JAX's default
  assert not (tmp_path / "xdg").exists()


def test_a_cache_the_user_configured_is_left_alone(tmp_path):
  user = tmp_path / "mine"
  report = run_fit(tmp_path, JAX_COMPILATION_CACHE_DIR=str(user),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  assert report["dir"] is None
  assert report["config_dir"] == str(user) and report["min_time"] == 0.0
  assert any(n.endswith("-cache") for n in entries(user))
  assert not (tmp_path / "xdg").exists()


def test_an_unwritable_location_is_skipped(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  report = run_fit(tmp_path, GMMJAX_CACHE_DIR=str(blocker / "cache"))
  assert report["dir"] is None and report["config_dir"] is None
  assert np.isfinite(report["means"]).all()


def test_corrupted_entries_are_compiled_again_quietly(populated):
  # In place: JAX's key includes the folder's path (the GPU autotuning cache
  # it keeps inside it is a compile option), so a copy elsewhere would only
  # miss. Restored afterwards for the other cases.
  tmp_path, first = populated
  where = tmp_path / "xdg" / "gmmjax"
  stored = where / executables.SUBDIR
  saved = {p: p.read_bytes()
           for p in [*where.iterdir(),
                     *(stored.iterdir() if stored.exists() else [])]
           if p.is_file()}
  assert saved
  rng = np.random.default_rng(1)
  try:
    for entry, data in saved.items():
      entry.write_bytes(rng.bytes(max(len(data), 64)))
    # run_fit also checks that JAX's warnings about them stay quiet.
    report = run_fit(tmp_path)
  finally:
    for entry, data in saved.items():
      entry.write_bytes(data)
  assert report["dir"] == str(where) and report["hits"] == 0
  if ON_CPU:
    # Damaged executables are never loaded: compiled again and replaced.
    assert report["executables"]["loaded"] == 0, report["executables"]
    assert report["executables"]["written"] == 2
  assert report["means"] == first["means"]
  assert report["labels"] == first["labels"]


@pytest.mark.skipif(not ON_CPU, reason="executables are stored on CPU only")
def test_dropped_executables_are_compiled_afresh_and_stored_again(populated):
  # JAX's cache holds no copy of them (what it would serve could not be
  # stored: an executable JAX loaded serialises without its code).
  tmp_path, first = populated
  folder = tmp_path / "xdg" / "gmmjax" / executables.SUBDIR
  saved = {p: p.read_bytes() for p in folder.iterdir()}
  try:
    for entry in saved:
      entry.unlink()
    report = run_fit(tmp_path)
    done = report["executables"]
    assert done["compiled"] == done["written"] == 2, done
    assert done["from_jax_cache"] == 0 and report["hits"] == 0
    assert len(list(folder.iterdir())) == 2
  finally:
    for entry in folder.iterdir():
      entry.unlink()
    for entry, data in saved.items():
      entry.write_bytes(data)
  assert report["means"] == first["means"]
  assert report["labels"] == first["labels"]
