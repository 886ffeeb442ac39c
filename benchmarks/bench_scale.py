"""Scale benchmark: chunked EM throughput as N grows, and chunking overhead.

For each N (default 1e5, 1e6, 1e7; ``--quick``: 1e5, 3e5) and each mode,
a fresh subprocess fits ``--iters`` EM iterations (``tol=-1`` forces all of
them) of a ``K``-component mixture to ``N x D`` float32 data and reports

* ``file``: :func:`fit_chunked` reading a raw float32 file chunk by chunk
  (``np.fromfile``: no mapping, so the peak RSS measures the process, not
  the page cache) - time should grow linearly in N, memory stay flat;
* ``array``: :func:`fit_chunked` over the same data as an in-memory NumPy
  array - the cost of chunking itself (host loop, transfers);
* ``inmem``: :func:`gmmjax.fit` on the whole array on the device.

Throughput is samples x iterations per second, from the median of
``--repeats`` timed runs after a first (compiling) run, whose extra time is
reported as compile time. Every fit ends with one more pass (the final
log-likelihood) in every mode alike.

Usage::

  python benchmarks/bench_scale.py            # 1e5, 1e6, 1e7 (a few minutes)
  python benchmarks/bench_scale.py --quick    # smoke run (~1 minute)
  python benchmarks/bench_scale.py --sizes 100000,2000000 --modes file,inmem
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def write_data(path, n, d, k, seed=0, batch=1 << 18):
  import numpy as np
  rng = np.random.default_rng(seed)
  centers = rng.normal(0.0, 5.0, (k, d))
  with open(path, "wb") as f:
    for start in range(0, n, batch):
      m = min(batch, n - start)
      labels = rng.integers(0, k, m)
      (centers[labels] + rng.standard_normal((m, d))).astype(
          np.float32).tofile(f)


def child(args):
  """One (N, mode) measurement; prints a JSON line."""
  import jax
  import numpy as np

  import gmmjax as gx
  from gmmjax import fit_chunked

  n, d, k, mode = args.n, args.d, args.k, args.mode
  rows = args.chunk_size

  def file_chunks():
    with open(args.path, "rb") as f:
      for start in range(0, n, rows):
        m = min(rows, n - start)
        yield np.fromfile(f, np.float32, count=m * d).reshape(m, d)

  head = next(file_chunks())
  params0 = gx.init_params(jax.random.key(0), head[:20000], k,
                           covariance_type=args.covariance_type,
                           method="k-means++")
  kw = dict(max_iter=args.iters, tol=-1.0)
  if mode == "file":
    def run():
      return fit_chunked(file_chunks, params0, chunk_size=rows, **kw)
  else:
    X = np.fromfile(args.path, np.float32).reshape(n, d)
    if mode == "array":
      def run():
        return fit_chunked(X, params0, chunk_size=rows, **kw)
    else:
      Xd = jax.device_put(X)
      del X

      def run():
        return gx.fit(Xd, params0, **kw)

  times = []
  for _ in range(args.repeats + 1):
    t0 = time.perf_counter()
    result = run()
    jax.block_until_ready(result)
    times.append(time.perf_counter() - t0)
    assert int(result.n_iter) == args.iters
  med = statistics.median(times[1:])
  print(json.dumps(dict(
      n=n, mode=mode, seconds=med, first=times[0],
      compile=max(times[0] - med, 0.0),
      throughput=n * args.iters / med,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      log_likelihood=float(result.log_likelihood))), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--sizes", default=None)
  parser.add_argument("--modes", default="file,array,inmem")
  parser.add_argument("--d", type=int, default=8)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--covariance-type", default="diag")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--chunk-size", type=int, default=65536)
  parser.add_argument("--json", default=None, help="write results here")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--mode", help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  sizes = ([int(float(s)) for s in args.sizes.split(",")] if args.sizes else
           [100_000, 300_000] if args.quick else
           [100_000, 1_000_000, 10_000_000])
  if args.quick:
    args.repeats = min(args.repeats, 2)
    args.iters = min(args.iters, 3)
  modes = args.modes.split(",")
  print(f"N x {args.d} float32, K={args.k} {args.covariance_type}, "
        f"{args.iters} iterations, chunks of {args.chunk_size:,} rows, "
        f"medians of {args.repeats}; each (N, mode) in a fresh process")
  print(f"{'N':>11} {'mode':>6} {'s/fit':>8} {'compile s':>9} "
        f"{'Msamples*it/s':>14} {'peak RSS MB':>11} {'vs inmem':>9}")
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in sizes:
      path = os.path.join(tmp, f"x{n}.f32")
      write_data(path, n, args.d, args.k)
      row = {}
      for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--child",
               f"--n={n}", f"--mode={mode}", f"--path={path}",
               f"--d={args.d}", f"--k={args.k}",
               f"--covariance-type={args.covariance_type}",
               f"--iters={args.iters}", f"--repeats={args.repeats}",
               f"--chunk-size={args.chunk_size}"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
          print(f"{n:>11,} {mode:>6} failed: {out.stderr[-500:]}")
          continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        row[mode] = r
        results.append(r)
      for mode, r in row.items():
        ref = row.get("inmem")
        overhead = (f"{r['seconds'] / ref['seconds'] - 1:+.0%}" if ref
                    and mode != "inmem" else "")
        print(f"{n:>11,} {mode:>6} {r['seconds']:8.3f} {r['compile']:9.2f} "
              f"{r['throughput'] / 1e6:14.2f} {r['peak_rss_mb']:11.0f} "
              f"{overhead:>9}", flush=True)
      os.remove(path)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(config=vars(args), results=results), f, indent=1)


if __name__ == "__main__":
  main()
