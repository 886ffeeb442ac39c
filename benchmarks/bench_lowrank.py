"""Low-rank covariances (issue 23): one EM iteration against full's.

100,000 x 256, K=32, q=8, float32 by default: gmmjax's ``"lowrank"`` and
``"full"`` times of one EM iteration (E-step statistics and M-step, the body
of the fit loop, jitted; medians over ``repeats``), scikit-learn's
full covariance (float64, its own ``_e_step`` + ``_m_step``) on a
``--sk-rows`` subsample scaled linearly to all rows (said so in the row),
and the peak memory of a low-rank fit in a child process measured against
the data and the chunk budget. Also ``bench_em.py --workloads lowrank``.

Usage::

  python benchmarks/bench_lowrank.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gmmjax as gx

REG = 1e-6


def make_data(n, d, k, q, seed=0):
  """A mixture of factor analysers (float32)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(0.0, 3.0, (k, d))
  W = rng.normal(0.0, 1.0, (k, d, q))
  labels = rng.integers(0, k, n)
  X = rng.standard_normal((n, d), dtype=np.float32) * 0.5
  X += np.einsum("ndq,nq->nd", W[labels].astype(np.float32),
                 rng.standard_normal((n, q), dtype=np.float32))
  X += means[labels].astype(np.float32)
  return X


def _timed(fn, repeats):
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def gmmjax_per_iter(X, p0, repeats):
  """Seconds of one EM iteration (the E-step's statistics over all rows,
  then the M-step: the body of ``gx.fit``'s loop), median over
  ``repeats``, and the compile seconds."""
  Xj = jnp.asarray(X)
  ctype = p0.covariance_type

  @jax.jit
  def one(X, p):
    stats = gx.e_step_stats(p, X, shift=p.means)
    return gx.params_from_stats(stats, p.means, covariance_type=ctype,
                                reg_covar=REG)

  t0 = time.perf_counter()
  jax.block_until_ready(one(Xj, p0))
  compile_s = time.perf_counter() - t0
  return float(np.median(_timed(lambda: one(Xj, p0), repeats))), compile_s


def sklearn_per_iter(X, p_full, rows, repeats):
  """scikit-learn full, one ``_e_step`` + ``_m_step`` on ``rows`` rows."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.mixture import GaussianMixture
  Xs = np.asarray(X[:rows], np.float64)
  k = p_full.weights.shape[0]
  g = GaussianMixture(k, covariance_type="full", max_iter=1, reg_covar=REG,
                      weights_init=np.asarray(p_full.weights, np.float64),
                      means_init=np.asarray(p_full.means, np.float64),
                      precisions_init=np.asarray(p_full.precisions,
                                                 np.float64))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    g.fit(Xs)

  def one():
    _, log_resp = g._e_step(Xs)
    g._m_step(Xs, log_resp)

  return float(np.median(_timed(one, repeats)))


PEAK_SCRIPT = textwrap.dedent("""
  import json, sys, time
  import jax, jax.numpy as jnp, numpy as np
  sys.path.insert(0, sys.argv[1])
  import gmmjax as gx
  from gmmjax._src import chunks
  from bench_lowrank import make_data
  n, d, k, q = (int(a) for a in sys.argv[2:6])
  def status():
    return {l.split()[0][:-1]: int(l.split()[1]) * 1024
            for l in open("/proc/self/status")
            if l.startswith(("VmHWM", "VmRSS"))}
  X = jnp.asarray(make_data(n, d, k, q))
  p0 = gx.init_params(jax.random.key(0), X[:20000], k,
                      covariance_type="lowrank", rank=q, method="kmeans")
  f = jax.jit(lambda X, p: gx.fit(X, p, max_iter=3, tol=0.0))
  comp = f.lower(X, p0).compile()
  jax.block_until_ready(p0)
  before = status()
  open("/proc/self/clear_refs", "w").write("5")  # reset the peak
  jax.block_until_ready(comp(X, p0))
  after = status()
  print(json.dumps(dict(data_bytes=int(X.size * 4), rss_before=before["VmRSS"],
                        peak_during_fit=after["VmHWM"],
                        chunk_budget=chunks.chunk_bytes() * 4)))
""")


def peak_memory(n, d, k, q):
  here = __file__.rsplit("/", 1)[0]
  out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, here, str(n),
                        str(d), str(k), str(q)], capture_output=True,
                       text=True, timeout=1800)
  try:
    r = json.loads(out.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    return dict(error=out.stderr[-800:])
  r["fit_extra_bytes"] = r["peak_during_fit"] - r["rss_before"]
  return r


def run(n=100_000, d=256, k=32, q=8, repeats=3, sk_rows=10_000,
        memory=True, full_repeats=2):
  """One dict of measurements (also printed as JSON)."""
  X = make_data(n, d, k, q)
  rng = np.random.default_rng(1)
  means = X[rng.choice(n, k, replace=False)]
  W = 0.5 * rng.normal(size=(k, d, q)).astype(np.float32)
  p_low = gx.make_params(np.full(k, 1.0 / k, np.float32), means,
                         (W, np.full((k, d), 1.0, np.float32)),
                         covariance_type="lowrank")
  p_full = gx.make_params(np.full(k, 1.0 / k, np.float32), means,
                          np.asarray(p_low.dense_covariances),
                          covariance_type="full")
  out = dict(n=n, d=d, k=k, q=q, dtype="float32", repeats=repeats,
             load_start=open("/proc/loadavg").read().split()[:3])
  out["lowrank_per_iter_s"], out["lowrank_compile_s"] = gmmjax_per_iter(
      X, p_low, repeats)
  out["full_per_iter_s"], out["full_compile_s"] = gmmjax_per_iter(
      X, p_full, full_repeats)
  rows = min(n, sk_rows)
  out["sklearn_rows"] = rows
  out["sklearn_full_per_iter_s"] = (sklearn_per_iter(X, p_full, rows,
                                                     full_repeats) * n / rows)
  out["sklearn_scaled_linearly"] = rows < n
  out["speedup_vs_full"] = out["full_per_iter_s"] / out["lowrank_per_iter_s"]
  out["speedup_vs_sklearn_full"] = (out["sklearn_full_per_iter_s"]
                                    / out["lowrank_per_iter_s"])
  if memory:
    out["memory"] = peak_memory(n, d, k, q)
  out["load_end"] = open("/proc/loadavg").read().split()[:3]
  print(json.dumps(out), flush=True)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="10,000 rows")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--full-repeats", type=int, default=2,
                  help="repeats of the (slow) full-covariance iterations")
  ap.add_argument("--sk-rows", type=int, default=10_000)
  args = ap.parse_args(argv)
  run(n=10_000 if args.quick else 100_000, repeats=args.repeats,
      sk_rows=args.sk_rows, full_repeats=args.full_repeats)


if __name__ == "__main__":
  main()
