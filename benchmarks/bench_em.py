"""EM benchmark: gmmjax against scikit-learn and gmmx, side by side.

Every workload runs all libraries in this one process, from the same initial
parameters, with ``block_until_ready`` before a clock is read, medians over
``--repeats`` runs, compile time reported apart, and the machine's measured
matrix-product rate in the same run. Results go to ``benchmarks/results/``
as JSON and markdown.

Usage::

  python benchmarks/bench_em.py                 # everything (~15-25 min, 2 cores)
  python benchmarks/bench_em.py --quick         # small shapes, a smoke run
  python benchmarks/bench_em.py --workloads 2,3 # a selection
  python benchmarks/bench_em.py --workloads acc # accelerated EM only
  python benchmarks/bench_em.py --workloads 2,3,bayes2,bayes3  # EM and VB

Workloads (issue 6): 1 tutorial 1,000 x 2 K=5 (cold/warm), 2 100,000 x 16
K=16 full, 3 65,536 x 32 K=64 full (f32 and f64), 4 200,000 x 64 K=64
diag/tied/spherical, 5 20,000 x 8 K=8 n_init=16, 6 1,000 problems 400 x 2
K=2, 7 4,000,000 x 32 K=64 full f32 (subprocess, peak memory), acc SQUAREM
against plain EM on overlapping clusters, missing 100,000 x 16 K=16 full
f32 with 10% of entries missing (issue 22, bench_missing.py); bayes2 and
bayes3 (not in the default) BayesianGaussianMixture per variational
iteration on workload 2's and 3's data.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gmmjax as gx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lowrank  # noqa: E402

try:
  import sklearn
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.mixture import GaussianMixture as SkGMM
except ImportError:  # pragma: no cover
  sklearn = None

try:
  import gmmx
  from gmmx import EMFitter, GaussianMixtureModelJax
except ImportError:  # pragma: no cover
  gmmx = None

HERE = os.path.dirname(os.path.abspath(__file__))
REG = 1e-6
# Seconds one scikit-learn measurement may take: a slow one gets fewer
# repeats (at least one), and the count is recorded with the result.
SK_BUDGET_S = 60.0


def budget_repeats(first_s, repeats, budget_s):
  return int(max(1, min(repeats, budget_s // max(first_s, 1e-3))))


def time_budgeted(fn, repeats, budget_s):
  """``(first output, wall times, repeats)``: ``fn`` timed once, then again
  as often as ``budget_s`` allows, up to ``repeats`` runs in all."""
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  reps = budget_repeats(first, repeats, budget_s)
  return out, [first] + time_runs(fn, reps - 1), reps


# ----------------------------------------------------------------- timing


def _block(x):
  return jax.block_until_ready(x)


def time_runs(fn, repeats):
  """Wall times of ``repeats`` calls of ``fn`` (which blocks on its result)."""
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def med(xs):
  return float(np.median(xs)) if xs else float("nan")


def matmul_rates(repeats=5, n=None):
  """Measured GFLOP/s of an ``n x n`` matrix product (JAX f32/f64, NumPy).

  ``jax_float32`` is at ``Precision.HIGHEST``, the precision gmmjax's
  products ask for (``gmmjax/_src/matmul.py``); ``jax_float32_default`` at
  JAX's default, which on GPUs and TPUs rounds the inputs (TF32/bfloat16)
  and is the faster rate there. On CPU the two are the same computation.
  ``n`` is 2048 on CPU and 8192 on accelerators (a 2048 product is too short
  there to time past its launch); NumPy's product is 2048 either way.
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  rates = {}
  for name, dtype, precision in (
      ("jax_float32", np.float32, "highest"),
      ("jax_float32_default", np.float32, None),
      ("jax_float64", np.float64, "highest")):
    with jax.enable_x64(dtype == np.float64):
      a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
      f = jax.jit(lambda a, p=precision: jnp.matmul(a, a, precision=p))
      _block(f(a))
      t = med(time_runs(lambda f=f, a=a: _block(f(a)), repeats))
    rates[name] = 2 * n**3 / t / 1e9
  a = np.random.default_rng(0).normal(size=(2048, 2048))
  t = med(time_runs(lambda: a @ a, repeats))
  rates["numpy_float64"] = 2 * 2048**3 / t / 1e9
  return rates


def load():
  try:
    return open("/proc/loadavg").read().split()[:3]
  except OSError:
    return os.getloadavg()


# ------------------------------------------------------------------ data


def make_blobs(n, d, k, seed=0, sep=3.0, dtype=np.float32):
  """Gaussian clusters with random centres and per-cluster anisotropic scale."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(0.0, sep, (k, d))
  scales = rng.uniform(0.5, 1.5, (k, d))
  labels = rng.integers(0, k, n)
  X = rng.standard_normal((n, d), dtype=np.float32)
  X *= scales[labels].astype(np.float32)
  X += centers[labels].astype(np.float32)
  return X.astype(dtype, copy=False)


def initial_params(X, k, ctype, seed=1):
  """Same initial mixture for every library: k data points as means, the
  data's covariance (in the type's form) for every component, equal weights.
  Returned as float64 NumPy arrays."""
  rng = np.random.default_rng(seed)
  idx = rng.choice(X.shape[0], k, replace=False)
  means = X[idx].astype(np.float64)
  sub = X[rng.choice(X.shape[0], min(X.shape[0], 20000), replace=False)]
  cov = np.cov(sub.astype(np.float64).T).reshape(X.shape[1], X.shape[1])
  d = X.shape[1]
  covs = {"full": np.broadcast_to(cov, (k, d, d)).copy(), "tied": cov,
          "diag": np.broadcast_to(np.diag(cov), (k, d)).copy(),
          "spherical": np.full(k, np.trace(cov) / d)}[ctype]
  return np.full(k, 1.0 / k), means, covs


def precisions(covs, ctype):
  if ctype in ("full", "tied"):
    return np.linalg.inv(covs)
  return 1.0 / covs


def gx_params(init, ctype, dtype):
  w, m, c = init
  return gx.make_params(jnp.asarray(w, dtype), jnp.asarray(m, dtype),
                        jnp.asarray(c, dtype), covariance_type=ctype)


# -------------------------------------------------------------- runners


def sk_model(init, ctype, max_iter, tol):
  w, m, c = init
  return SkGMM(len(w), covariance_type=ctype, max_iter=max_iter, tol=tol,
               reg_covar=REG, init_params="random_from_data", random_state=0,
               weights_init=w / w.sum(), means_init=m,
               precisions_init=precisions(c, ctype))


def run_sklearn(X, init, ctype, max_iter, tol):
  X64 = np.asarray(X, np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    g = sk_model(init, ctype, max_iter, tol).fit(X64)
  return dict(n_iter=int(g.n_iter_), ll=float(g.lower_bound_),
              final_ll=float(g.score(X64)) if X.shape[0] <= 300000 else None)


def gx_fit_fn(ctype, max_iter, tol):
  return jax.jit(lambda X, p: gx.fit(X, p, max_iter=max_iter, tol=tol,
                                     reg_covar=REG))


def compile_time(jitted, *args):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def gmmx_model(init, ctype, dtype):
  w, m, c = init
  return GaussianMixtureModelJax.from_squeezed(
      means=jnp.asarray(m, dtype), covariances=jnp.asarray(c, dtype),
      weights=jnp.asarray(w, dtype), covariance_type=ctype)


GMMX_CHILD = None  # (n, d, k, seed) of the current standard workload
GMMX_TIMEOUT_S = 240


def gmmx_child(spec, ctype, iters, repeats, name, flops):
  n, d, k, seed = spec
  code = (f"import sys; sys.path.insert(0, {HERE!r}); import bench_em as b; "
          f"b.gmmx_measure({n}, {d}, {k}, {seed}, {ctype!r}, {iters}, "
          f"{repeats})")
  row = dict(workload=name, library="gmmx", dtype="float32", ctype=ctype,
             flops_per_iter=flops)
  try:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=GMMX_TIMEOUT_S)
    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
  except subprocess.TimeoutExpired:
    row["error"] = f"did not finish within {GMMX_TIMEOUT_S} s"
  except (IndexError, json.JSONDecodeError):
    row["error"] = out.stderr[-300:]
  return row


def gmmx_measure(n, d, k, seed, ctype, iters, repeats):
  """Child-process side of :func:`gmmx_child`: prints one JSON row."""
  X = make_blobs(n, d, k, seed=seed)
  init = initial_params(X, k, ctype)
  Xj = jnp.asarray(X, np.float32)
  g0 = gmmx_model(init, ctype, np.float32)
  f_s = EMFitter(max_iter=1, tol=0.0, reg_covar=REG)
  f_l = EMFitter(max_iter=1 + iters, tol=0.0, reg_covar=REG)
  t0 = time.perf_counter()
  _block(f_l.fit(Xj, g0))
  first = time.perf_counter() - t0
  _block(f_s.fit(Xj, g0))
  ts = time_runs(lambda: _block(f_s.fit(Xj, g0)), repeats)
  tl = time_runs(lambda: _block(f_l.fit(Xj, g0)), repeats)
  res = f_l.fit(Xj, g0)
  ll = float(res.log_likelihood)
  print(json.dumps(dict(compile_s=max(first - med(tl), 0.0),
                        per_iter_s=per_iteration(ts, tl, iters),
                        fit_fixed_s=med(tl), fixed_iters=1 + iters,
                        ll_fixed=ll, finite=bool(np.isfinite(ll)))))


def per_iteration(times_short, times_long, extra_iters):
  """Per-iteration time from the difference of two fixed-iteration fits
  (removes per-fit overheads such as initial/final E-steps)."""
  return max((med(times_long) - med(times_short)) / extra_iters, 1e-9)


def fixed_iterations(name, X, init, ctype, dtypes, iters, repeats, libs):
  """Per-iteration time of each library at tol=0 (1 and 1 + iters iters).

  Every library and dtype is prepared (compiled, warmed) first; then the
  repeats are interleaved, one run of each in turn, so that all see the
  same machine: on a shared machine a burst of load that fell on one
  library's block of repeats would otherwise move the ratios by a third.
  """
  n, d = X.shape
  k = len(init[0])
  flops = 4.0 * n * k * d * d if ctype == "full" else None
  entries = []  # (row, [timed callables], per-iteration from their times)
  for dtype in dtypes:
    x64 = dtype == np.float64
    with jax.enable_x64(x64):
      Xj = jnp.asarray(X, dtype)
      p0 = gx_params(init, ctype, dtype)
      short, c_short = compile_time(gx_fit_fn(ctype, 1, 0.0), Xj, p0)
      long, c_long = compile_time(gx_fit_fn(ctype, 1 + iters, 0.0), Xj, p0)
      _block(short(Xj, p0))
      res = _block(long(Xj, p0))
      ll = float(res.history[iters])  # E-step of iteration 1 + iters

    def call(fn, x64=x64, Xj=Xj, p0=p0):
      def run():
        with jax.enable_x64(x64):
          _block(fn(Xj, p0))
      return run

    row = dict(workload=name, library="gmmjax", dtype=np.dtype(dtype).name,
               ctype=ctype, compile_s=c_long, fixed_iters=1 + iters,
               ll_fixed=ll, finite=bool(np.isfinite(ll)),
               flops_per_iter=flops, repeats=repeats)
    entries.append((row, [call(short), call(long)],
                    lambda t: dict(per_iter_s=per_iteration(t[0], t[1],
                                                            iters),
                                   fit_fixed_s=med(t[1]))))
  # scikit-learn (float64 only): one EM iteration is its own `_e_step`
  # then `_m_step`, exactly the body of its fit loop, timed directly.
  if ("sklearn" in libs and sklearn is not None
      and any(t == np.float64 for t in dtypes)):
    X64 = np.asarray(X, np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)
      g = sk_model(init, ctype, 1, 0.0).fit(X64)

    def one_iter():
      _, log_resp = g._e_step(X64)
      g._m_step(X64, log_resp)

    t0 = time.perf_counter()
    one_iter()
    first = time.perf_counter() - t0
    reps = budget_repeats(first, repeats, SK_BUDGET_S)
    ll = None
    if first * (iters + 3) < SK_BUDGET_S:
      ll = run_sklearn(X, init, ctype, 1 + iters, 0.0)["ll"]
    row = dict(workload=name, library="sklearn", dtype="float64",
               ctype=ctype, compile_s=0.0, repeats=reps,
               fixed_iters=1 + iters, ll_fixed=ll, finite=True,
               flops_per_iter=flops)
    entries.append((row, [one_iter],
                    lambda t: dict(per_iter_s=med(t[0]))))
  # Interleaved repeats: run r of every entry, then run r + 1.
  times = [[[] for _ in fns] for _, fns, _ in entries]
  for r in range(max(row["repeats"] for row, _, _ in entries)):
    for (row, fns, _), ts in zip(entries, times):
      if r < row["repeats"]:
        for fn, t in zip(fns, ts):
          t.extend(time_runs(fn, 1))
  rows = []
  for (row, _, summary), ts in zip(entries, times):
    rows.append(dict(row, **summary(ts)))
  # gmmx (full and diag only; it refuses float64 input). It runs in a child
  # process with a time limit: on 65,536 x 32, K=64 it did not finish an
  # iteration within minutes here, and a JAX computation cannot be
  # interrupted in-process. (Its repeats are not interleaved.)
  if ("gmmx" in libs and gmmx is not None and ctype in ("full", "diag")
      and any(t == np.float32 for t in dtypes) and GMMX_CHILD is not None):
    rows.append(gmmx_child(GMMX_CHILD, ctype, iters, repeats, name, flops))
  return rows


def to_convergence(name, X, init, ctype, dtype, repeats, libs, tol=1e-3,
                   max_iter=100, sk_per_iter=None):
  """Time to convergence (scikit-learn's rule) from the same init."""
  rows = []
  x64 = dtype == np.float64
  with jax.enable_x64(x64):
    Xj = jnp.asarray(X, dtype)
    p0 = gx_params(init, ctype, dtype)
    f, c = compile_time(gx_fit_fn(ctype, max_iter, tol), Xj, p0)
    res = _block(f(Xj, p0))
    t = time_runs(lambda: _block(f(Xj, p0)), repeats)
    rows.append(dict(workload=name, library="gmmjax", dtype=np.dtype(
        dtype).name, ctype=ctype, mode="converge", compile_s=c,
        time_s=med(t), n_iter=int(res.n_iter),
        converged=bool(res.converged), ll=float(res.log_likelihood),
        repeats=repeats))
  if "sklearn" in libs and sklearn is not None and dtype == np.float64:
    if sk_per_iter is not None and sk_per_iter * max_iter > SK_BUDGET_S:
      # Too slow to run here: its iterations cost what the fixed-iteration
      # run measured, and from the same init it takes about as many as
      # gmmjax float64 (checked where it is cheap enough to run).
      rows.append(dict(workload=name, library="sklearn", dtype="float64",
                       ctype=ctype, mode="converge_estimated",
                       time_s=sk_per_iter * rows[0]["n_iter"],
                       n_iter=rows[0]["n_iter"], repeats=0))
      return rows
    t0 = time.perf_counter()
    r = run_sklearn(X, init, ctype, max_iter, tol)
    first = time.perf_counter() - t0
    reps = budget_repeats(first, repeats, SK_BUDGET_S)
    t = [first] + time_runs(lambda: run_sklearn(X, init, ctype, max_iter, tol),
                            reps - 1)
    rows.append(dict(workload=name, library="sklearn", dtype="float64",
                     ctype=ctype, mode="converge", time_s=med(t),
                     n_iter=r["n_iter"], ll=r["final_ll"], repeats=reps))
  return rows


def estimator_end_to_end(name, X, init, ctype, iters, repeats, libs):
  """Each library's estimator fit as a user times it: ``fit(X)`` from the
  given ``weights_init``/``means_init``/``precisions_init`` with ``tol=0``
  and ``max_iter=iters``, end to end (validation, conversions, the initial
  and final passes, the fitted attributes), divided by ``iters``. gmmjax in
  its default float32, scikit-learn in its float64. What a fit pays beyond
  its iterations shows as the gap to the loop's per-iteration rows."""
  w, m, c = init
  kw = dict(covariance_type=ctype, max_iter=iters, tol=0.0, reg_covar=REG,
            weights_init=w / w.sum(), means_init=m,
            precisions_init=precisions(c, ctype))
  X32, X64 = np.asarray(X, np.float32), np.asarray(X, np.float64)
  fits = {"gmmjax": lambda: gx.GaussianMixture(len(w), **kw).fit(X32)}
  if "sklearn" in libs and sklearn is not None:
    fits["sklearn"] = lambda: SkGMM(len(w), **kw).fit(X64)
  times = {lib: [] for lib in fits}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    fits["gmmjax"]()  # compiles; timed apart
    first = time.perf_counter() - t0
    for _ in range(repeats):  # interleaved, as in fixed_iterations
      for lib, fn in fits.items():
        t0 = time.perf_counter()
        fn()
        times[lib].append(time.perf_counter() - t0)
  rows = [dict(workload=name, library=lib, mode="estimator_fit", ctype=ctype,
               dtype="float32" if lib == "gmmjax" else "float64",
               iters=iters, repeats=repeats, fit_s=med(t),
               per_iter_s=med(t) / iters) for lib, t in times.items()]
  rows[0]["first_fit_s"] = first
  if len(rows) == 2:
    rows[0]["speedup_vs_sklearn"] = rows[1]["fit_s"] / rows[0]["fit_s"]
  return rows


# -------------------------------------------------------------- workloads


def wl_standard(name, n, d, k, ctypes, dtypes, args, libs):
  global GMMX_CHILD
  seed = int(name) * 7 + 1 if name.isdigit() else 99
  X = make_blobs(n, d, k, seed=seed)
  GMMX_CHILD = (n, d, k, seed)
  rows = []
  for ctype in ctypes:
    init = initial_params(X, k, ctype)
    fixed = fixed_iterations(
        name, X, init, ctype,
        sorted(dtypes, key=lambda t: np.dtype(t).itemsize, reverse=True),
        args.iters, args.repeats, libs)
    rows += fixed
    sk = [r["per_iter_s"] for r in fixed if r["library"] == "sklearn"]
    if args.converge:
      for dtype in dtypes:
        rows += to_convergence(name, X, init, ctype, dtype, args.repeats,
                               libs, sk_per_iter=sk[0] if sk else None)
    if name in ESTIMATOR_ITERS:
      rows += estimator_end_to_end(name, X, init, ctype, ESTIMATOR_ITERS[name],
                                   args.repeats, libs)
  return rows


def _bayes_resp(X, init):
  """Hard responsibilities of the nearest initial mean (the same start for
  both libraries)."""
  m = init[1].astype(np.float32)
  d2 = (np.sum(X * X, 1)[:, None] - 2 * X @ m.T + np.sum(m * m, 1)[None])
  return np.eye(len(m))[np.argmin(d2, axis=1)]


def _run_block(fn, *args):
  return _block(fn(*args))


def wl_bayes(name, n, d, k, args, libs):
  """Per variational iteration of BayesianGaussianMixture (issue 21), on
  workload 2's or 3's data, full covariances, Dirichlet-process prior:
  gmmjax's ``fit_bayes`` at tol=0 (1 and 1 + iters iterations, the
  difference) against scikit-learn's loop body (``_e_step``, ``_m_step``,
  ``_compute_lower_bound``) from the same initial responsibilities."""
  seed = int(name[-1]) * 7 + 1
  X = make_blobs(n, d, k, seed=seed)
  resp = _bayes_resp(X, initial_params(X, k, "full"))
  iters, rows = args.iters, []
  for dtype in (np.float64, np.float32):
    with jax.enable_x64(dtype == np.float64):
      Xj = jnp.asarray(X, dtype)
      prior = gx.make_bayes_prior(Xj, k)
      post0 = gx.posterior_from_resp(Xj, jnp.asarray(resp, dtype), prior)

      def fit_fn(m):
        return jax.jit(lambda x, p, pr: gx.fit_bayes(x, p, pr, max_iter=m,
                                                     tol=0.0))
      short, _ = compile_time(fit_fn(1), Xj, post0, prior)
      long, c_long = compile_time(fit_fn(1 + iters), Xj, post0, prior)
      ts, tl = [], []
      for _ in range(args.repeats):  # interleaved
        ts += time_runs(functools.partial(_run_block, short, Xj, post0,
                                          prior), 1)
        tl += time_runs(functools.partial(_run_block, long, Xj, post0,
                                          prior), 1)
      bound = float(long(Xj, post0, prior).history[iters])
    rows.append(dict(workload=name, library="gmmjax",
                     dtype=np.dtype(dtype).name, ctype="full",
                     compile_s=c_long, fixed_iters=1 + iters,
                     ll_fixed=bound, finite=bool(np.isfinite(bound)),
                     repeats=args.repeats,
                     per_iter_s=per_iteration(ts, tl, iters),
                     fit_fixed_s=med(tl)))
  if "sklearn" in libs and sklearn is not None:
    from sklearn.mixture import BayesianGaussianMixture as SkBGMM

    class Injected(SkBGMM):
      def _initialize_parameters(self, X, random_state, xp=None):
        self._initialize(X, resp)

    X64 = np.asarray(X, np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)
      g = Injected(n_components=k, max_iter=1, tol=0.0,
                   reg_covar=REG).fit(X64)

    def one_iter():
      log_prob_norm, log_resp = g._e_step(X64)
      g._m_step(X64, log_resp)
      g._compute_lower_bound(log_resp, log_prob_norm)

    t0 = time.perf_counter()
    one_iter()
    reps = budget_repeats(time.perf_counter() - t0, args.repeats,
                          SK_BUDGET_S)
    rows.append(dict(workload=name, library="sklearn", dtype="float64",
                     ctype="full", compile_s=0.0, repeats=reps,
                     fixed_iters=1 + iters, ll_fixed=None, finite=True,
                     per_iter_s=med(time_runs(one_iter, reps))))
  return rows


# Iterations of the end-to-end estimator rows (issue 19): workload 2 for 20,
# workload 3 for 5, as a user would time a short fit.
ESTIMATOR_ITERS = {"2": 20, "3": 5}


COLD_SCRIPT = textwrap.dedent("""
  import time, sys, json
  t0 = time.perf_counter()
  import jax
  jax.config.update("jax_compilation_cache_dir", sys.argv[1])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  import numpy as np
  import gmmjax as gx
  t1 = time.perf_counter()
  rng = np.random.default_rng(0)
  X = np.concatenate([rng.normal(c, 1.0, (200, 2)) for c in
                      [[0, 0], [5, 5], [-5, 5], [5, -5], [-5, -5]]])
  t2 = time.perf_counter()
  g = gx.GaussianMixture(5, covariance_type="full", random_state=0).fit(X)
  t3 = time.perf_counter()
  g2 = gx.GaussianMixture(5, covariance_type="full", random_state=1).fit(X)
  t4 = time.perf_counter()
  print(json.dumps(dict(import_s=t1 - t0, first_fit_s=t3 - t2,
                        second_fit_s=t4 - t3, total_s=t3 - t0,
                        n_iter=int(g.n_iter_))))
""")


def wl1(args, libs):
  rows = []
  X = np.concatenate([np.random.default_rng(0).normal(c, 1.0, (200, 2))
                      for c in [[0, 0], [5, 5], [-5, 5], [5, -5], [-5, -5]]])
  # Cold start: fresh processes, each with an empty persistent cache of its
  # own, then as many reusing the first one's; medians (a process start
  # varies more than a fit), each run's first fit listed.
  def cold_child(cache):
    out = subprocess.run([sys.executable, "-c", COLD_SCRIPT, cache],
                         capture_output=True, text=True, timeout=600)
    try:
      return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
      return dict(error=out.stderr[-500:])

  with tempfile.TemporaryDirectory() as root:
    caches = [os.path.join(root, f"cache{i}") for i in range(args.repeats)]
    for cache in caches:
      os.makedirs(cache)
    runs = {"cold_empty_cache": [cold_child(c) for c in caches],
            "cold_reused_cache": [cold_child(caches[0]) for _ in caches]}
  for label, rs in runs.items():
    good = [r for r in rs if "error" not in r]
    row = dict(workload="1", library="gmmjax", mode=label, repeats=len(good))
    if good:
      row.update({key: med([r[key] for r in good]) for key in good[0]})
      row["first_fit_runs_s"] = [round(r["first_fit_s"], 3) for r in good]
    if len(good) < len(rs):
      row["error"] = next(r["error"] for r in rs if "error" in r)
    rows.append(row)
  # Warm: the estimators (each with its own k-means init) ...
  warm = {}
  try:
    g = gx.GaussianMixture(5, covariance_type="full", random_state=0)
    g.fit(X)
    t = time_runs(lambda: g.fit(X), args.repeats)
    warm["gmmjax"] = (med(t), int(g.n_iter_))
  except Exception as e:  # noqa: BLE001
    rows.append(dict(workload="1", library="gmmjax", mode="warm_estimator",
                     error=repr(e)[:300]))
  if sklearn is not None:
    s = SkGMM(5, covariance_type="full", random_state=0)
    t = time_runs(lambda: s.fit(X), args.repeats)
    warm["sklearn"] = (med(t), int(s.n_iter_))
  for lib, (t, it) in warm.items():
    rows.append(dict(workload="1", library=lib, mode="warm_estimator",
                     time_s=t, n_iter=it, repeats=args.repeats))
  # ... and the EM loop alone from the same init.
  init = initial_params(X, 5, "full")
  rows += to_convergence("1", X, init, "full", np.float64, args.repeats,
                         libs)
  rows += to_convergence("1", X, init, "full", np.float32, args.repeats,
                         libs)
  return rows


def wl5(args, libs):
  n = 2000 if args.quick else 20000
  X = make_blobs(n, 8, 8, seed=5)
  n_init = 16
  inits = [initial_params(X, 8, "full", seed=100 + i) for i in range(n_init)]
  rows = []
  # Same 16 inits: one vmapped program vs scikit-learn's sequential fits.
  with jax.enable_x64(False):
    Xj = jnp.asarray(X)
    ps = jax.tree.map(lambda *a: jnp.stack(a),
                      *[gx_params(i, "full", np.float32) for i in inits])

    def one(p):
      return gx.fit(Xj, p, max_iter=100, tol=1e-3, reg_covar=REG)

    # Vmapped, and one restart after another in one program (what
    # fit_restarts does on CPU at this size: each stops at its own count).
    for mode, batched in (("same_inits_vmap", jax.vmap(one)),
                          ("same_inits_map", lambda ps: jax.lax.map(one, ps))):
      f, c = compile_time(jax.jit(batched), ps)
      res = _block(f(ps))
      t = time_runs(lambda f=f: _block(f(ps)), args.repeats)
      rows.append(dict(workload="5", library="gmmjax", mode=mode,
                       dtype="float32", compile_s=c, time_s=med(t),
                       n_iter_max=int(res.n_iter.max()),
                       n_iter_sum=int(res.n_iter.sum()),
                       best_ll=float(res.log_likelihood.max())))
  if sklearn is not None:
    out, t, reps = time_budgeted(
        lambda: [run_sklearn(X, i, "full", 100, 1e-3) for i in inits],
        args.repeats, 2 * SK_BUDGET_S)
    rows.append(dict(workload="5", library="sklearn", mode="same_inits_loop",
                     repeats=reps,
                     dtype="float64", time_s=med(t),
                     n_iter_max=max(o["n_iter"] for o in out),
                     n_iter_sum=sum(o["n_iter"] for o in out),
                     best_ll=max(o["final_ll"] for o in out)))
  # Library level: k-means init included, n_init=16 each.
  try:
    with jax.enable_x64(False):
      best, _ = gx.fit_restarts(jax.random.key(0), jnp.asarray(X), 8,
                                n_init=n_init, covariance_type="full",
                                method="kmeans", reg_covar=REG)
      _block(best)
      t = time_runs(lambda: _block(gx.fit_restarts(
          jax.random.key(0), jnp.asarray(X), 8, n_init=n_init,
          covariance_type="full", method="kmeans", reg_covar=REG)),
                     args.repeats)
      rows.append(dict(workload="5", library="gmmjax",
                       mode="fit_restarts_kmeans", dtype="float32",
                       time_s=med(t), best_ll=float(best.log_likelihood)))
  except Exception as e:  # noqa: BLE001
    rows.append(dict(workload="5", library="gmmjax",
                     mode="fit_restarts_kmeans", error=repr(e)[:300]))
  if sklearn is not None:
    X64 = X.astype(np.float64)
    s = SkGMM(8, covariance_type="full", n_init=n_init, random_state=0)
    t = time_runs(lambda: s.fit(X64), max(1, args.repeats // 2))
    rows.append(dict(workload="5", library="sklearn", mode="n_init_kmeans",
                     dtype="float64", time_s=med(t),
                     best_ll=float(s.score(X64)),
                     repeats=max(1, args.repeats // 2)))
  return rows


def wl6(args, libs):
  b = 100 if args.quick else 1000
  rng = np.random.default_rng(6)
  Xs = []
  for _ in range(b):
    c = rng.normal(0, 2.0, (2, 2))
    Xs.append(np.concatenate([rng.normal(c[0], 1.0, (200, 2)),
                              rng.normal(c[1], 1.0, (200, 2))]))
  Xs = np.stack(Xs).astype(np.float32)
  inits = [initial_params(x, 2, "full", seed=i) for i, x in enumerate(Xs)]
  rows = []
  with jax.enable_x64(False):
    Xj = jnp.asarray(Xs)
    ps = jax.tree.map(lambda *a: jnp.stack(a),
                      *[gx_params(i, "full", np.float32) for i in inits])
    f = jax.jit(jax.vmap(lambda x, p: gx.fit(x, p, max_iter=100, tol=1e-3,
                                             reg_covar=REG)))
    f, c = compile_time(f, Xj, ps)
    res = _block(f(Xj, ps))
    t = time_runs(lambda: _block(f(Xj, ps)), args.repeats)
    rows.append(dict(workload="6", library="gmmjax", mode="vmap_problems",
                     dtype="float32", compile_s=c, time_s=med(t),
                     n_problems=b, n_iter_max=int(res.n_iter.max()),
                     mean_ll=float(res.log_likelihood.mean())))
  if sklearn is not None:
    out, t, reps = time_budgeted(
        lambda: [run_sklearn(x, i, "full", 100, 1e-3)
                 for x, i in zip(Xs, inits)],
        args.repeats, 2 * SK_BUDGET_S)
    rows.append(dict(workload="6", library="sklearn", mode="python_loop",
                     dtype="float64", time_s=med(t), n_problems=b,
                     n_iter_max=max(o["n_iter"] for o in out),
                     mean_ll=float(np.mean([o["final_ll"] for o in out])),
                     repeats=reps))
  return rows


W7_SCRIPT = textwrap.dedent("""
  import json, resource, sys, time
  import jax, jax.numpy as jnp
  import gmmjax as gx
  n, d, k, iters = (int(a) for a in sys.argv[1:5])
  def hwm():
    for line in open("/proc/self/status"):
      if line.startswith(("VmHWM", "VmRSS")):
        yield line.split()[0][:-1], int(line.split()[1]) * 1024
  rows = 250000 if n >= 250000 else n
  @jax.jit
  def centres():
    return 3.0 * jax.random.normal(jax.random.key(0), (k, d))
  c = centres()
  from functools import partial
  @partial(jax.jit, donate_argnums=0)
  def fill(X, i):
    key = jax.random.fold_in(jax.random.key(1), i)
    lab = jax.random.randint(key, (rows,), 0, k)
    z = jax.random.normal(jax.random.fold_in(key, 1), (rows, d))
    return jax.lax.dynamic_update_slice_in_dim(X, c[lab] + z, i * rows, 0)
  X = jnp.zeros((n, d), jnp.float32)
  for i in range(n // rows):
    X = fill(X, i)
  X.block_until_ready()
  data_bytes = X.size * X.dtype.itemsize
  before = dict(hwm())
  open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
  p0 = gx.make_params(jnp.full((k,), 1.0 / k), X[:k * 997:997],
                      jnp.broadcast_to(jnp.eye(d) * 10.0, (k, d, d)))
  f = jax.jit(lambda X, p: gx.fit(X, p, max_iter=iters, tol=0.0))
  t0 = time.perf_counter()
  comp = f.lower(X, p0).compile()
  t1 = time.perf_counter()
  r = comp(X, p0)
  r.params.means.block_until_ready()
  t2 = time.perf_counter()
  after = dict(hwm())
  print(json.dumps(dict(
      n=n, d=d, k=k, iters=iters, data_bytes=data_bytes,
      compile_s=t1 - t0, fit_s=t2 - t1, per_iter_s=(t2 - t1) / (iters + 0.5),
      rss_before_fit=before["VmRSS"], peak_rss_fit=after["VmHWM"],
      peak_rss_process=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      * 1024, ll=float(r.log_likelihood), finite=bool(
          jnp.isfinite(r.log_likelihood)))))
""")


def wl7(args, libs):
  n = 400000 if args.quick else 4000000
  iters = 2 if args.quick else 3
  out = subprocess.run([sys.executable, "-c", W7_SCRIPT, str(n), "32", "64",
                        str(iters)], capture_output=True, text=True,
                       timeout=3000)
  try:
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["peak_over_data_process"] = r["peak_rss_process"] / r["data_bytes"]
    r["peak_over_data_fit"] = r["peak_rss_fit"] / r["data_bytes"]
    r["gflops"] = 4 * n * 64 * 32 * 32 / r["per_iter_s"] / 1e9
  except (IndexError, json.JSONDecodeError, KeyError):
    r = dict(error=out.stderr[-1000:])
  return [dict(workload="7", library="gmmjax", dtype="float32", **r)]


def _acc_one(X, ctype, args):
  from gmmjax import fit_accelerated_with_info
  with jax.enable_x64(True):
    Xj = jnp.asarray(X)
    p0 = gx.init_params(jax.random.key(0), Xj, 4, covariance_type=ctype,
                        method="kmeans")
    kw = dict(max_iter=3000, tol=1e-9, reg_covar=REG)
    f_em = jax.jit(lambda X, p: gx.fit(X, p, **kw))
    f_acc = jax.jit(lambda X, p: fit_accelerated_with_info(X, p, **kw))
    em = _block(f_em(Xj, p0))
    acc, info = _block(f_acc(Xj, p0))
    t_em = med(time_runs(lambda: _block(f_em(Xj, p0)), args.repeats))
    t_acc = med(time_runs(lambda: _block(f_acc(Xj, p0)), args.repeats))
  best = max(float(em.log_likelihood), float(acc.log_likelihood))

  def steps_to(h, target):
    hit = np.nonzero(np.asarray(h) >= target)[0]
    return int(hit[0]) + 1 if hit.size else None

  n_em = steps_to(em.history, best - 1e-6)
  n_acc = steps_to(acc.history, best - 1e-6)
  h = np.asarray(acc.history)[:int(acc.n_iter)]
  return dict(
      workload="acc", ctype=ctype, n=X.shape[0], d=X.shape[1], k=4,
      em_n_iter=int(em.n_iter), acc_n_iter=int(acc.n_iter),
      em_steps_to_best_1e6=n_em, acc_steps_to_best_1e6=n_acc,
      reduction=(1 - n_acc / n_em) if n_em and n_acc else None,
      em_time_s=t_em, acc_time_s=t_acc, em_ll=float(em.log_likelihood),
      acc_ll=float(acc.log_likelihood), accepted=int(info.n_accepted),
      rejected=int(info.n_rejected),
      acc_monotone=bool(np.all(np.diff(h) >= -1e-12)))


def wl_acc(args, libs):
  """SQUAREM vs plain EM on strongly overlapping clusters (float64)."""
  rows = []
  rng = np.random.default_rng(7)
  n_per = 1000 if args.quick else 5000
  centers = np.array([[0.0, 0.0, 0.0, 0.0], [1.2, 0.6, 0.0, 0.3],
                      [0.4, 1.5, 0.5, 0.0], [0.8, 0.8, 1.2, 0.6]])
  X = np.concatenate([rng.normal(c, 1.0, (n_per, 4)) for c in centers])
  for ctype in ("full", "diag"):
    rows.append(_acc_one(X, ctype, args))
  return rows


def wl_missing(args, libs):
  """Issue 22: one EM iteration on 100,000 x 16, K=16 full, float32, with
  10% of the entries missing at random, against the complete-data one
  (target: at most 3x) and scikit-learn's (bench_missing.cost)."""
  sys.path.insert(0, HERE)
  from bench_missing import cost
  s = 10 if args.quick else 1
  row = cost(n=100000 // s, repeats=args.repeats)
  if "sklearn" not in libs:
    row.pop("sklearn_complete_s", None)
  return [dict(workload="missing", ctype="full", dtype="float32", **row)]


# -------------------------------------------------------------- reporting


def ratios(rows):
  """Adds speed-ups against scikit-learn (and gmmx) within each workload."""
  by = {}
  for r in rows:
    if "fixed_iters" in r and "mode" not in r and "ctype" in r:
      by.setdefault((r["workload"], r["ctype"]), []).append(r)
  for group in by.values():
    sk = [r for r in group if r["library"] == "sklearn"]
    gm = [r for r in group if r["library"] == "gmmx"]
    for r in group:
      if sk:
        r["speedup_vs_sklearn"] = sk[0]["per_iter_s"] / r["per_iter_s"]
      same = [g for g in gm if g.get("dtype") == r.get("dtype")
              and "per_iter_s" in g]
      if same:
        r["speedup_vs_gmmx"] = same[0]["per_iter_s"] / r["per_iter_s"]
    mine = {r["dtype"]: r for r in group if r["library"] == "gmmjax"}
    if "float32" in mine and "float64" in mine:
      a, b = mine["float32"]["ll_fixed"], mine["float64"]["ll_fixed"]
      mine["float32"]["ll_rel_f32_f64"] = abs(a - b) / abs(b)
  return rows


def _fmt(v, kind="f"):
  if v is None:
    return "-"
  return f"{v:.2e}" if kind == "e" else f"{v:.6f}"


def markdown(meta, rows):
  lines = [f"# EM benchmark ({meta['date']})", "",
           f"Machine: {meta['machine']}, {meta['cpus']} CPUs, JAX backend "
           f"{meta.get('backend', 'cpu')} ({meta.get('device', '-')}); jax "
           f"{meta['jax']}, scikit-learn {meta['sklearn']}, gmmx "
           f"{meta['gmmx']}. Load (1/5/15 min) at start {meta['load_start']},"
           f" at end {meta['load_end']}.", "",
           "Matrix-product rate measured in this run (n x n; 2048 on CPU, 8192 on "
           "accelerators): " + ", ".join(
               f"{k} {v:.1f} GFLOP/s" for k, v in meta["matmul"].items()),
           "", "## Fixed iterations (tol=0), per iteration", "",
           "| wl | type | dtype | library | compile s | ms/iter | x sklearn "
           "| x gmmx | GFLOP/s (4NKD^2) | % of matmul | LL after iters "
           "| rel. LL diff f32 vs f64 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "fixed_iters" not in r or "mode" in r or "per_iter_s" not in r:
      continue
    peak = meta["matmul"]["jax_" + r["dtype"]]
    gf = (r["flops_per_iter"] / r["per_iter_s"] / 1e9
          if r.get("flops_per_iter") else None)
    lines.append(
        f"| {r['workload']} | {r['ctype']} | {r['dtype']} | {r['library']} | "
        f"{r.get('compile_s', 0):.2f} | {1e3 * r['per_iter_s']:.1f} | "
        f"{r.get('speedup_vs_sklearn', float('nan')):.2f} | "
        f"{r.get('speedup_vs_gmmx', float('nan')):.2f} | "
        + (f"{gf:.1f} | {100 * gf / peak:.0f}%" if gf else "- | -")
        + f" | {_fmt(r.get('ll_fixed'))} | {_fmt(r.get('ll_rel_f32_f64'), 'e')}"
        " |")
  lines += ["", "## Other modes", "", "| wl | library | mode | numbers |",
            "|---|---|---|---|"]
  for r in rows:
    if "fixed_iters" in r and "mode" not in r and "per_iter_s" in r:
      continue
    rest = {k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in r.items() if k not in ("workload", "library", "mode")}
    lines.append(f"| {r['workload']} | {r.get('library', '')} | "
                 f"{r.get('mode', '')} | {json.dumps(rest)} |")
  return "\n".join(lines) + "\n"


def write_report(meta, rows, out_dir, tag):
  rows = ratios(rows)
  os.makedirs(out_dir, exist_ok=True)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  base = os.path.join(out_dir, f"bench{tag}-{stamp}")
  with open(base + ".json", "w") as f:
    json.dump(dict(meta=meta, rows=rows), f, indent=1, default=str)
  md = markdown(meta, rows)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print("wrote", base + ".json", base + ".md")


def report_from_log(path, out_dir, tag):
  """JSON/markdown from the rows a run printed (``   {...}`` lines)."""
  rows, meta = [], dict(date="from log " + path, machine=platform.machine(),
                        cpus=os.cpu_count(), jax=jax.__version__,
                        sklearn=getattr(sklearn, "__version__", None),
                        gmmx="installed" if gmmx else None,
                        load_start=None, load_end=None, matmul={})
  for line in open(path):
    if line.startswith("matmul "):
      head, _, load_part = line.partition(" load ")
      meta["matmul"] = eval(head[len("matmul "):])  # noqa: S307 - own log
      meta["load_start"] = load_part.strip()
    elif line.startswith("workload "):
      meta["load_end"] = line.split("load ", 1)[-1].strip()
    elif line.startswith("   {"):
      rows.append(json.loads(line))
  write_report(meta, rows, out_dir, tag)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="small shapes and 3 repeats (smoke run)")
  ap.add_argument("--workloads", default="1,2,3,4,5,6,7,acc,missing",
                  help="comma-separated subset of 1,2,3,4,5,6,7,acc,missing,"
                  "gpu,lowrank (gpu: 1,000,000 x 64, K=64, and lowrank: "
                  "100,000 x 256, K=32, q=8 against full, not in the default)")
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--iters", type=int, default=None,
                  help="extra fixed iterations for the per-iteration slope")
  ap.add_argument("--no-converge", dest="converge", action="store_false")
  ap.add_argument("--libs", default="sklearn,gmmx",
                  help="reference libraries to run beside gmmjax")
  ap.add_argument("--out", default=os.path.join(HERE, "results"))
  ap.add_argument("--tag", default="")
  ap.add_argument("--from-log", default=None,
                  help="rebuild JSON/markdown from a run's printed rows")
  args = ap.parse_args(argv)
  if args.from_log:
    return report_from_log(args.from_log, args.out, args.tag)
  args.repeats = args.repeats or (3 if args.quick else 5)
  args.iters = args.iters or (2 if args.quick else 3)
  libs = set(filter(None, args.libs.split(",")))
  unknown = libs - {"sklearn", "gmmx"}
  if unknown:
    ap.error(f"--libs takes sklearn and gmmx, got {sorted(unknown)}")
  sel = args.workloads.split(",")
  s = 10 if args.quick else 1
  meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
              machine=platform.processor() or platform.machine(),
              cpus=os.cpu_count(), jax=jax.__version__,
              backend=jax.default_backend(),
              device=str(jax.devices()[0].device_kind),
              sklearn=getattr(sklearn, "__version__", None),
              gmmx=getattr(gmmx, "__version__", "installed" if gmmx else None),
              load_start=load(), quick=args.quick, repeats=args.repeats,
              iters=args.iters, argv=sys.argv[1:])
  meta["matmul"] = matmul_rates()
  print("matmul", meta["matmul"], "load", meta["load_start"], flush=True)
  rows = []
  plan = {
      "1": lambda: wl1(args, libs),
      "2": lambda: wl_standard("2", 100000 // s, 16, 16, ["full"],
                               [np.float32, np.float64], args, libs),
      "3": lambda: wl_standard("3", 65536 // s, 32, 64, ["full"],
                               [np.float32, np.float64], args, libs),
      "4": lambda: wl_standard("4", 200000 // s, 64, 64,
                               ["diag", "tied", "spherical"],
                               [np.float32, np.float64], args, libs),
      "5": lambda: wl5(args, libs),
      "6": lambda: wl6(args, libs),
      "7": lambda: wl7(args, libs),
      # BayesianGaussianMixture per variational iteration on workloads 2
      # and 3 (issue 21); not in the default run.
      "bayes2": lambda: wl_bayes("bayes2", 100000 // s, 16, 16, args, libs),
      "bayes3": lambda: wl_bayes("bayes3", 65536 // s, 32, 64, args, libs),
      "acc": lambda: wl_acc(args, libs),
      "missing": lambda: wl_missing(args, libs),
      # Issue 23: lowrank q=8 against full, 100,000 x 256, K=32 (not in the
      # default: the full-covariance iterations take minutes).
      "lowrank": lambda: [dict(
          workload="lowrank", library="gmmjax", mode="one iteration",
          **bench_lowrank.run(n=100000 // s, repeats=args.repeats))],
      # The accelerator target: 1,000,000 x 64, K=64 full, float32,
      # against the measured float32 product rate. scikit-learn is left out
      # (minutes per iteration on a CPU); meant for a GPU, where it is run
      # as `--workloads gpu --no-converge`.
      "gpu": lambda: wl_standard("gpu", 1000000 // s, 64, 64, ["full"],
                                 [np.float32], args, libs - {"sklearn"}),
  }
  for w in sel:
    t0 = time.perf_counter()
    new = plan[w]()
    rows += new
    print(f"workload {w}: {time.perf_counter() - t0:.1f}s, load {load()}",
          flush=True)
    for r in new:
      print("  ", json.dumps(r), flush=True)
  meta["load_end"] = load()
  write_report(meta, rows, args.out, args.tag)


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
