"""Fit a Gaussian mixture to a file-backed data set larger than a memory budget.

The data is written to a ``np.memmap`` file (batch by batch, so it is never
in memory at once), then fitted by exact EM over chunks
(``gmmjax``'s ``fit_chunked``): every iteration streams the file through one
compiled statistics kernel, a background thread reading the next chunks.
The chunk size is chosen so that the chunks in flight fit in ``--budget-mb``.
A progress bar shows each pass; throughput is printed at the end.

Run (the default takes well under a minute on a laptop CPU)::

  python examples/large_data.py
  python examples/large_data.py --big          # 20 million rows, ~1.3 GB
  python examples/large_data.py --n-samples 5000000 --budget-mb 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

import gmmjax as gx


def write_memmap(path, n_samples, n_features, n_components, seed, batch):
  """Writes samples of a random mixture to ``path``, batch by batch."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(0.0, 6.0, (n_components, n_features))
  scales = rng.uniform(0.5, 2.0, (n_components, n_features))
  weights = rng.dirichlet(np.full(n_components, 5.0))
  X = np.memmap(path, dtype=np.float32, mode="w+",
                shape=(n_samples, n_features))
  for start in range(0, n_samples, batch):
    stop = min(start + batch, n_samples)
    labels = rng.choice(n_components, size=stop - start, p=weights)
    X[start:stop] = centers[labels] + scales[labels] * rng.standard_normal(
        (stop - start, n_features))
  X.flush()
  del X
  return np.memmap(path, dtype=np.float32, mode="r",
                   shape=(n_samples, n_features))


class Progress:
  """A one-line text progress bar over the rows of each pass."""

  def __init__(self, total, width=30, stream=sys.stderr):
    self.total, self.width, self.stream = total, width, stream
    self.label, self.done = "", 0

  def start(self, label):
    self.label, self.done = label, 0
    self.draw()

  def advance(self, rows):
    self.done += rows
    self.draw()

  def draw(self):
    frac = min(self.done / self.total, 1.0)
    bar = "#" * int(frac * self.width)
    self.stream.write(f"\r{self.label:>12} [{bar:<{self.width}}] "
                      f"{100 * frac:5.1f}%")
    self.stream.flush()

  def finish(self, text=""):
    self.stream.write(f"\r{self.label:>12} [{'#' * self.width}] 100.0% "
                      f"{text}\n")
    self.stream.flush()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n-samples", type=int, default=4_000_000)
  parser.add_argument("--n-features", type=int, default=8)
  parser.add_argument("--n-components", type=int, default=6)
  parser.add_argument("--covariance-type", default="diag",
                      choices=gx.COVARIANCE_TYPES)
  parser.add_argument("--budget-mb", type=float, default=16.0,
                      help="memory for chunks in flight (the data file is "
                           "larger)")
  parser.add_argument("--max-iter", type=int, default=15)
  parser.add_argument("--tol", type=float, default=1e-4)
  parser.add_argument("--big", action="store_true",
                      help="20 million rows (about 1.3 GB of float32 data)")
  parser.add_argument("--dir", default=None,
                      help="where to write the data file (default: a "
                           "temporary directory, removed at the end)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  n = 20_000_000 if args.big else args.n_samples
  d, k = args.n_features, args.n_components

  prefetch = 2
  # Per row: the float32 sample and its weight in each chunk in flight, and
  # the kernel's (rows, K) / (rows, K, D) intermediates.
  per_row = 4 * ((d + 1) * (prefetch + 2) + 2 * k * (d + 2))
  chunk = max(1024, int(args.budget_mb * 2**20 / per_row))
  file_mb = n * d * 4 / 2**20

  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    path = os.path.join(tmp, "data.f32")
    t0 = time.perf_counter()
    X = write_memmap(path, n, d, k, args.seed, batch=chunk)
    print(f"wrote {n:,} x {d} float32 samples ({file_mb:,.0f} MB) to a "
          f"memmap in {time.perf_counter() - t0:.1f}s; memory budget "
          f"{args.budget_mb:g} MB -> chunks of {chunk:,} rows "
          f"({-(-n // chunk)} per pass)")

    # Initialise on a random subsample (k-means, in memory).
    rng = np.random.default_rng(args.seed + 1)
    idx = np.sort(rng.choice(n, size=min(n, 20_000), replace=False))
    params0 = gx.init_params(jax.random.key(args.seed), np.asarray(X[idx]), k,
                             covariance_type=args.covariance_type,
                             method="kmeans")

    bar = Progress(n)
    passes = [0]

    def chunks():
      # The source is re-read every iteration: a generator function over
      # the memmap that also advances the progress bar.
      passes[0] += 1
      bar.start(f"pass {passes[0] - 1}")  # pass 0: fit_chunked peeks
      for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yield X[start:stop]
        bar.advance(stop - start)

    times = []

    def on_iteration(n_iter, log_likelihood, change):
      times.append(time.perf_counter())
      bar.finish(f"iter {int(n_iter):3d}  log-likelihood "
                 f"{float(log_likelihood):.6f}  change {float(change):.2e}")

    t_start = time.perf_counter()
    result = gx.fit_chunked(chunks, params0, chunk_size=chunk,
                            max_iter=args.max_iter, tol=args.tol,
                            callback=on_iteration, prefetch=prefetch)
    jax.block_until_ready(result)
    bar.finish("final log-likelihood pass")
    total = time.perf_counter() - t_start

  n_iter = int(result.n_iter)
  # Iteration 1 includes compilation: throughput is measured after it.
  steady = times[-1] - times[0] if len(times) > 1 else float("nan")
  rate = n * (len(times) - 1) / steady if len(times) > 1 else float("nan")
  print(f"\n{n_iter} EM iterations, converged={bool(result.converged)}, "
        f"final mean log-likelihood {float(result.log_likelihood):.6f}")
  print(f"total {total:.1f}s (first iteration, with compilation, "
        f"{times[0] - t_start:.2f}s)")
  print(f"throughput {rate / 1e6:,.2f} million samples x iterations per "
        f"second ({rate * d * 4 / 2**20:,.0f} MB/s of data) on "
        f"{jax.devices()[0].platform}")
  print("weights:", np.round(np.sort(np.asarray(result.params.weights)), 3))


if __name__ == "__main__":
  main()
