"""Missing values (issue 22): the cost of an EM iteration, and the accuracy.

1. Cost: one EM iteration on 100,000 x 16, K=16 full, float32, with 10% of
   the entries missing completely at random, against the complete-data
   iteration of the same size (the target: at most 3x), and
   scikit-learn's complete-data iteration in the same run. Medians of
   ``--repeats`` runs, compile time apart.
2. Accuracy: 200,000 points from a known 3-component mixture in 4-D,
   20% of the entries missing completely at random, fitted in float64 from
   the same start by missing-value EM, by EM on the complete rows only, and
   by EM on mean-imputed data; the fit to the complete data (nothing
   removed) measures the sampling error itself.

Usage::

  python benchmarks/bench_missing.py [--repeats 3] [--n 100000] [--skip-cost]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import gmmjax as gx
from gmmjax._src import fit as fit_lib
from gmmjax._src import missing


def _median_time(fn, repeats):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times)), first


def cost(n=100_000, d=16, k=16, rate=0.1, repeats=3, seed=0):
  """Seconds per EM iteration: complete data, missing data, scikit-learn."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 4, (k, d))
  X = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(
      np.float32)
  obs = rng.random((n, d)) > rate
  obs[np.arange(n), rng.integers(0, d, n)] = True
  p = gx.init_params(jax.random.key(0), X, k, method="random_from_data",
                     reg_covar=1.0)
  Xc, Xm, om = (jax.device_put(a) for a in (X, np.where(obs, X, 0), obs))
  slots = missing.max_missing(obs)
  complete = jax.jit(lambda x, q: fit_lib.em_step_jitter(x, q))
  masked = jax.jit(lambda x, q, o: fit_lib.em_step_jitter(
      x, q, observed=o, slots=slots))
  t_complete, c_complete = _median_time(lambda: complete(Xc, p), repeats)
  t_missing, c_missing = _median_time(lambda: masked(Xm, p, om), repeats)
  row = dict(n=n, d=d, k=k, rate=rate, slots=slots,
             complete_s=t_complete, missing_s=t_missing,
             ratio=t_missing / t_complete, compile_complete_s=c_complete,
             compile_missing_s=c_missing)
  try:
    import warnings

    from sklearn.mixture import GaussianMixture
    def sk_fit(iters):
      # Random responsibilities: scikit-learn runs its init (k-means by
      # default) even when every *_init is given; the difference of two
      # iteration counts leaves the iterations alone.
      sk = GaussianMixture(k, covariance_type="full", max_iter=iters,
                           tol=0, init_params="random_from_data",
                           weights_init=np.asarray(p.weights),
                           means_init=np.asarray(p.means),
                           precisions_init=np.asarray(p.precisions))
      start = time.perf_counter()
      sk.fit(X)
      return time.perf_counter() - start

    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      times = [(sk_fit(3) - sk_fit(1)) / 2 for _ in range(repeats)]
    row["sklearn_complete_s"] = float(np.median(times))
  except ImportError:  # pragma: no cover
    row["sklearn_complete_s"] = None
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
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--n", type=int, default=100_000)
  parser.add_argument("--skip-cost", action="store_true")
  parser.add_argument("--skip-accuracy", action="store_true")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
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
