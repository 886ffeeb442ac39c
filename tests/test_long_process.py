"""A long session in one process must not crash (issue 18).

XLA's CPU compiler maps each compiled program's kernels into the process;
at the kernel's limit (``vm.max_map_count``) it dies with a segmentation
fault. The worker leaves only a little room below the limit and compiles a
varied sequence of fits with the library's default XLA settings (not the
suite's flags), in a subprocess so that a crash fails this test instead of
killing the run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gmmjax._src import memory_maps

HERE = Path(__file__).parent


@pytest.mark.skipif(memory_maps.map_limit() is None,
                    reason="needs /proc/sys/vm/max_map_count (Linux)")
def test_many_programs_in_one_process_near_the_map_limit():
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env["GMMJAX_NO_CACHE"] = "1"  # compile every program, write no home cache
  # 1,200 mappings: about 4 EM programs; the sequence maps about 1,900.
  proc = subprocess.run(
      [sys.executable, str(HERE / "_worker_long_process.py"), "1200"],
      env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
  done = [line.split() for line in proc.stdout.splitlines()
          if line.startswith("DONE")]
  assert done, proc.stdout
  _, maps, limit = done[0]
  assert int(maps) < int(limit)
  # The worker's own mappings keep the process near the limit after gmmjax
  # freed its programs: the user is told, once.
  assert "WARNED 1" in proc.stdout, proc.stdout
