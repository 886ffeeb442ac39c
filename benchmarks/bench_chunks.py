"""E-step chunk budget sweep: EM time per iteration against the chunk size.

The E-step and M-step stream the samples through ``lax.scan`` in chunks
whose largest intermediate is bounded by a byte budget
(``ChunkOptions.cpu_bytes`` on CPU, ``ChunkOptions.accelerator_bytes``
on GPUs and TPUs). This script times fixed-iteration fits (``tol=0``) of
full-covariance workloads at several budgets, in one process, and reports
ms per iteration, GFLOP/s (``4 N K D^2`` per iteration) and the share of
the measured float32 matrix-product rate (at ``Precision.HIGHEST``, the
precision gmmjax asks for). Medians over ``--repeats``; compile time apart.

Usage::

  python benchmarks/bench_chunks.py                   # the default backend
  python benchmarks/bench_chunks.py --quick           # small shapes (smoke)
  python benchmarks/bench_chunks.py --budgets-mib 8,64,256,1024
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_em as b  # noqa: E402

from gmmjax._src import chunks  # noqa: E402

WORKLOADS = {  # name: (n, d, k)
    "gpu": (1_000_000, 64, 64),
    "3": (65_536, 32, 64),
    "2": (100_000, 16, 16),
}


def set_budget(nbytes):
  """Makes ``nbytes`` the default chunk budget on this backend."""
  if jax.default_backend() == "cpu":
    options = dict(cpu_bytes=nbytes, whitened_factor=1)
  else:
    options = dict(accelerator_bytes=nbytes)
  # The fits below read the defaults (they take no chunking= argument).
  chunks.DEFAULT_CHUNKS = dataclasses.replace(chunks.DEFAULT_CHUNKS,
                                              **options)
  jax.clear_caches()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workloads", default="gpu,3,2")
  ap.add_argument("--budgets-mib", default=None,
                  help="comma-separated budgets in MiB (default: by backend)")
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--out", default=None, help="JSON file for the rows")
  args = ap.parse_args(argv)
  on_cpu = jax.default_backend() == "cpu"
  budgets = ([float(v) for v in args.budgets_mib.split(",")]
             if args.budgets_mib else
             ([2, 8, 32] if on_cpu else [8, 32, 128, 256, 1024]))
  rates = b.matmul_rates()
  peak = rates["jax_float32"]
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"jax {jax.__version__}; matmul GFLOP/s {rates}", flush=True)
  rows = []
  for name in args.workloads.split(","):
    n, d, k = WORKLOADS[name]
    if args.quick:
      n //= 10
    X = b.make_blobs(n, d, k, seed=0)
    init = b.initial_params(X, k, "full")
    for mib in budgets:
      set_budget(int(mib * 2**20))
      chunk = chunks.chunk_size(n, k, d, "full", jnp.float32)
      t0 = time.perf_counter()
      (r,) = b.fixed_iterations(name, X, init, "full", np.float32, args.iters,
                                args.repeats, libs=set())
      gf = r["flops_per_iter"] / r["per_iter_s"] / 1e9
      row = dict(workload=name, n=n, d=d, k=k, budget_mib=mib, chunk=chunk,
                 n_chunks=-(-n // chunk), compile_s=r["compile_s"],
                 per_iter_ms=1e3 * r["per_iter_s"], gflops=gf,
                 pct_matmul=100 * gf / peak, ll=r["ll_fixed"],
                 wall_s=time.perf_counter() - t0)
      rows.append(row)
      print(json.dumps(row), flush=True)
  print("\n| wl | budget MiB | rows/chunk | chunks | compile s | ms/iter "
        "| GFLOP/s | % of f32 matmul (HIGHEST) | LL |\n|---|---|---|---|---|"
        "---|---|---|---|")
  for r in rows:
    print(f"| {r['workload']} | {r['budget_mib']:g} | {r['chunk']} | "
          f"{r['n_chunks']} | {r['compile_s']:.2f} | {r['per_iter_ms']:.2f} "
          f"| {r['gflops']:.0f} | {r['pct_matmul']:.0f}% | {r['ll']:.6f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(backend=jax.default_backend(),
                     device=jax.devices()[0].device_kind, jax=jax.__version__,
                     matmul=rates, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
