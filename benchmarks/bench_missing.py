"""Missing values (issue 22): the cost of an EM iteration, and the accuracy.

1. Cost: one EM iteration on 100,000 x 16, K=16 full, float32, with 10% of
   the entries missing completely at random, against the complete-data
   iteration of the same size (the target: at most 3x), and
   scikit-learn's complete-data iteration in the same run. The missing-data
   iteration runs on the rows as ``gx.fit`` holds them (sorted once by
   their number of missing entries). Medians of ``--repeats`` runs, wall
   clock and process CPU time (the machine is shared: CPU time is the
   steadier figure), the first call's compile time apart, the compiled
   programs' temporary buffers (XLA's memory analysis: the chunk budget at
   work) and each mode's peak resident memory, measured in a fresh
   process of its own, with the load average.
2. Accuracy: 200,000 points from a known 3-component mixture in 4-D,
   20% of the entries missing completely at random, fitted in float64 from
   the same start by missing-value EM, by EM on the complete rows only, and
   by EM on mean-imputed data; the fit to the complete data (nothing
   removed) measures the sampling error itself. (This is the statistical
   check that used to be a slow test.)

Usage::

  python benchmarks/bench_missing.py [--repeats 5] [--n 100000] [--skip-cost]
      [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

import gmmjax as gx
from gmmjax._src import fit as fit_lib
from gmmjax._src import missing


def _median_time(fn, repeats):
  """``(wall, cpu, first)``: medians of ``repeats`` calls after a first."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
  return float(np.median(walls)), float(np.median(cpus)), first


def _problem(n, d, k, rate, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 4, (k, d))
  X = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(
      np.float32)
  obs = rng.random((n, d)) > rate
  obs[np.arange(n), rng.integers(0, d, n)] = True
  p = gx.init_params(jax.random.key(0), X, k, method="random_from_data",
                     reg_covar=1.0)
  return X, obs, p


def _mode(mode, n, d, k, rate, repeats, seed):
  """One mode's seconds per iteration, compile, temporaries (a worker)."""
  X, obs, p = _problem(n, d, k, rate, seed)
  if mode == "complete":
    args = (jax.device_put(X), p)
    step = jax.jit(lambda x, q: fit_lib.em_step_jitter(x, q))
  else:
    slots = missing.max_missing(obs)
    # The rows as gx.fit holds them: sorted, padded to whole pieces.
    Xs, ws, os_ = missing.sorted_rows(np.where(obs, X, 0), None, obs, k)
    args = (jax.device_put(Xs), p, jax.device_put(os_), ws)
    step = jax.jit(lambda x, q, o, w: fit_lib.em_step_jitter(
        x, q, observed=o, sample_weight=w, slots=slots))
  wall, cpu, first = _median_time(lambda: step(*args), repeats)
  temp = step.lower(*args).compile().memory_analysis()
  return dict(wall_s=wall, cpu_s=cpu, first_call_s=first,
              temp_bytes=getattr(temp, "temp_size_in_bytes", None),
              peak_rss_bytes=resource.getrusage(
                  resource.RUSAGE_SELF).ru_maxrss * 1024)


def _in_process(mode, **kw):
  """:func:`_mode` in a fresh Python process (its own peak memory)."""
  out = subprocess.run(
      [sys.executable, __file__, "--worker", mode, "--worker-args",
       json.dumps(kw)], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _sklearn_iteration(X, p, k, repeats):
  """scikit-learn's seconds per complete-data iteration (median)."""
  import warnings

  from sklearn.mixture import GaussianMixture

  def sk_fit(iters):
    # Random responsibilities: scikit-learn runs its init (k-means by
    # default) even when every *_init is given; the difference of two
    # iteration counts leaves the iterations alone.
    sk = GaussianMixture(k, covariance_type="full", max_iter=iters, tol=0,
                         init_params="random_from_data",
                         weights_init=np.asarray(p.weights),
                         means_init=np.asarray(p.means),
                         precisions_init=np.asarray(p.precisions))
    start = time.perf_counter()
    sk.fit(X)
    return time.perf_counter() - start

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return float(np.median([(sk_fit(3) - sk_fit(1)) / 2
                            for _ in range(repeats)]))


def cost(n=100_000, d=16, k=16, rate=0.1, repeats=5, seed=0):
  """Seconds per EM iteration: complete data, missing data, scikit-learn
  (each gmmjax mode in a fresh process, one after the other)."""
  kw = dict(n=n, d=d, k=k, rate=rate, repeats=repeats, seed=seed)
  load = os.getloadavg()
  modes = {mode: _in_process(mode, **kw) for mode in ("complete", "missing")}
  row = dict(n=n, d=d, k=k, rate=rate,
             slots=missing.max_missing(_problem(n, d, k, rate, seed)[1]))
  for mode, r in modes.items():
    row.update({f"{mode}_{key}": value for key, value in r.items()})
  row["ratio_wall"] = modes["missing"]["wall_s"] / modes["complete"]["wall_s"]
  row["ratio_cpu"] = modes["missing"]["cpu_s"] / modes["complete"]["cpu_s"]
  try:
    X, _, p = _problem(n, d, k, rate, seed)
    row["sklearn_complete_s"] = _sklearn_iteration(X, p, k, repeats)
  except ImportError:  # pragma: no cover
    row["sklearn_complete_s"] = None
  row["load_before"] = load[0]
  row["load_after"] = os.getloadavg()[0]
  return row


def _truth(d=4):
  weights = np.array([0.5, 0.3, 0.2])
  means = np.array([[0.0] * d, [3.0] + [1.0] * (d - 1),
                    [-2.0, 3.0] + [0.0] * (d - 2)])
  rng = np.random.default_rng(7)
  covs = []
  for _ in range(3):
    a = rng.normal(size=(d, d)) * 0.5
    covs.append(a @ a.T + 0.5 * np.eye(d))
  return weights, means, np.stack(covs)


def _errors(params, truth):
  """Largest absolute errors of weights, means, covariances (components
  matched to the truth by their nearest mean)."""
  w, mu, cov = truth
  got_mu = np.asarray(params.means)
  order = [int(np.argmin(((got_mu - m) ** 2).sum(1))) for m in mu]
  return dict(
      weights=float(np.abs(np.asarray(params.weights)[order] - w).max()),
      means=float(np.abs(got_mu[order] - mu).max()),
      covariances=float(np.abs(np.asarray(params.covariances)[order]
                               - cov).max()))


def accuracy(n=200_000, rate=0.2, seed=0):
  """Parameter errors of the four fits (see the module docstring)."""
  truth = _truth()
  w, mu, cov = truth
  rng = np.random.default_rng(seed)
  X = _sample_mixture(rng, n, truth)
  obs = rng.random(X.shape) > rate
  obs[np.arange(n), rng.integers(0, X.shape[1], n)] = True
  p0 = gx.make_params(np.full(3, 1 / 3), mu + 0.7,
                      np.stack([np.eye(X.shape[1])] * 3))
  kw = dict(tol=1e-9, max_iter=1000)
  fits = {
      "complete data (sampling error)": gx.fit(X, p0, **kw),
      "missing-value EM": gx.fit(np.where(obs, X, np.nan), p0, observed=obs,
                                 **kw),
      "drop incomplete rows": gx.fit(X[obs.all(1)], p0, **kw),
      "mean imputation": gx.fit(
          np.where(obs, X, np.nanmean(np.where(obs, X, np.nan), 0)), p0,
          **kw),
  }
  rows = {name: _errors(r.params, truth) for name, r in fits.items()}
  rows["drop incomplete rows"]["rows_kept"] = int(obs.all(1).sum())
  return rows


def _sample_mixture(rng, n, truth):
  w, mu, cov = truth
  labels = rng.choice(len(w), n, p=w)
  chol = np.linalg.cholesky(cov)
  z = rng.normal(size=(n, mu.shape[1]))
  return mu[labels] + np.einsum("nde,ne->nd", chol[labels], z)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--skip-cost", action="store_true")
  parser.add_argument("--skip-accuracy", action="store_true")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--worker-args", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_mode(args.worker, **json.loads(args.worker_args))))
    return
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs")
  if not args.skip_cost:
    row = cost(n=args.n, repeats=args.repeats)
    print("cost of one EM iteration (float32, full, 10% missing):")
    for key, value in row.items():
      print(f"  {key}: {value:.4g}" if isinstance(value, float)
            else f"  {key}: {value}")
  if not args.skip_accuracy:
    with jax.enable_x64(True):
      rows = accuracy()
    print("largest absolute parameter errors, 200,000 points, 20% missing:")
    for name, errs in rows.items():
      print(f"  {name:32s} " + "  ".join(f"{k} {v:.4g}" if isinstance(
          v, float) else f"{k} {v}" for k, v in errs.items()))


if __name__ == "__main__":
  main()
