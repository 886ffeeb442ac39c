"""Subprocess for tests/test_long_process.py: many compiles in one process.

Run as ``python _worker_long_process.py HEADROOM`` with no XLA flags (the
library's defaults, as users run it). It first takes all but ``HEADROOM``
of the kernel's memory mappings (``vm.max_map_count``) with one-page
mappings of its own, standing in for the hundreds of programs a long
notebook session compiles, then runs a sequence of fits of varied shapes,
dtypes, covariance types and ``max_iter``, with x64 on and off, as
scikit-learn's test file does. Each distinct program maps its kernels
(about 300 mappings for an EM fit), so without gmmjax freeing its programs
the sequence runs out of mappings and XLA's compiler crashes the process.
It prints ``DONE <maps> <limit>`` at the end.
"""

import ctypes
import mmap
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg  # noqa: F401 - jaxlib loads it for LAPACK: map it now

import gmmjax as gx
from gmmjax._src import memory_maps


def take_maps(headroom: int) -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  libc.mmap.restype = ctypes.c_void_p
  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_int, ctypes.c_int, ctypes.c_long]
  limit = memory_maps.map_limit()
  n = 0
  while memory_maps.count_maps() < limit - headroom:
    for _ in range(256):
      # Alternate protections so that neighbours cannot merge into one.
      prot = mmap.PROT_READ | (mmap.PROT_WRITE if n % 2 else 0)
      libc.mmap(None, mmap.PAGESIZE, prot,
                mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
      n += 1


def sequence(rng):
  """Fits as a user's session runs them: every one a new program."""
  for x64, types in ((False, ["full", "spherical"]), (True, ["diag"])):
    with jax.enable_x64(x64):
      for i, ctype in enumerate(types):
        X = rng.normal(size=(40 + 7 * i, 2 + i % 2))
        gm = gx.GaussianMixture(2, covariance_type=ctype, max_iter=20 + i,
                                random_state=0).fit(X)
        gm.score_samples(X[:5 + i])
        gm.sample(3 + i)
      gx.GaussianMixture(1, random_state=0).fit(rng.normal(size=(3, 2)))
      gx.GaussianMixture(3, n_init=2, max_iter=0, random_state=0).fit(
          rng.normal(size=(30, 2)))


def main():
  headroom = int(sys.argv[1])
  rng = np.random.default_rng(0)
  float(jnp.ones(3).sum())  # the CPU client's own mappings first
  if headroom:
    take_maps(headroom)
  start = memory_maps.count_maps()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sequence(rng)
  near = [w for w in caught if "vm.max_map_count" in str(w.message)]
  print(f"WARNED {len(near)}")
  print(f"USED {memory_maps.count_maps() - start}")
  print(f"DONE {memory_maps.count_maps()} {memory_maps.map_limit()}")


if __name__ == "__main__":
  main()
