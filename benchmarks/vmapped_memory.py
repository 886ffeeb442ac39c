"""Peak device memory of vmapped restarts: blocks of members against all at once.

On an accelerator each EM fit's E-step chunk is up to 1 GiB
(``chunks.chunk_bytes``). A vmapped loop over restarts holds one chunk
per member at a time unless ``batching.block_size`` runs the members in
blocks of at most ``ChunkOptions.accelerator_block_chunks`` chunks. This
script fits ``--n-init`` restarts of one problem (``gx.fit_restarts``, init
included, a fixed number of iterations) and prints the device's peak memory,
the time and the best log-likelihood; ``--unbounded`` lifts the block bound
(every member at once, as before the bound) and ``--block-chunks N`` sets
it (``benchmarks/README.md`` reports 4 and the default 2). Run each
setting in its own process so that the peak is its own, e.g. under a
memory fraction:

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.12 python benchmarks/vmapped_memory.py
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.12 python benchmarks/vmapped_memory.py \\
      --unbounded
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import gmmjax as gx
from gmmjax._src import batching, chunks


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=1_000_000)
  ap.add_argument("--d", type=int, default=64)
  ap.add_argument("--k", type=int, default=64)
  ap.add_argument("--n-init", type=int, default=32)
  ap.add_argument("--max-iter", type=int, default=3)
  ap.add_argument("--block-chunks", type=int, default=None,
                  help="ChunkOptions.accelerator_block_chunks for this run")
  ap.add_argument("--unbounded", action="store_true",
                  help="run every member at once (no block bound)")
  args = ap.parse_args(argv)
  if args.unbounded and args.block_chunks is not None:
    ap.error("--unbounded and --block-chunks exclude each other")
  options = gx.ChunkOptions()
  if args.block_chunks is not None:
    options = gx.ChunkOptions(accelerator_block_chunks=args.block_chunks)
  if args.unbounded:
    options = gx.ChunkOptions(accelerator_block_chunks=1 << 40)
  dev = jax.devices()[0]
  stats0 = dev.memory_stats() or {}
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (args.k, args.d)).astype(np.float32)
  labels = rng.integers(0, args.k, args.n)
  X = jax.device_put(centres[labels] + rng.normal(
      size=(args.n, args.d)).astype(np.float32))
  member = args.n * args.k * args.d * 4
  row = {
      "device": str(dev), "backend": jax.default_backend(),
      "shape": [args.n, args.d, args.k], "n_init": args.n_init,
      "unbounded": args.unbounded,
      "block_chunks": options.accelerator_block_chunks,
      "bytes_limit": stats0.get("bytes_limit"),
      "chunk_bytes": chunks.chunk_bytes(),
      "block": batching.block_size(args.n_init, member, options),
  }
  t0 = time.perf_counter()
  try:
    best, runs = gx.fit_restarts(
        jax.random.key(0), X, args.k, n_init=args.n_init,
        method="random_from_data", max_iter=args.max_iter, tol=0.0,
        chunking=options)
    jax.block_until_ready(runs)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["best_log_likelihood"] = float(best.log_likelihood)
    row["n_iter"] = np.asarray(runs.n_iter).tolist()
    row["failed"] = int(np.sum(np.asarray(runs.failed)))
  except Exception as e:  # noqa: BLE001 - out of memory is the result
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
  stats = dev.memory_stats() or {}
  row["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  print(json.dumps(row))
  return row


if __name__ == "__main__":
  main()
