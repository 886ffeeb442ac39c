"""Latency benchmark: import, compile and first-fit costs, against scikit-learn.

What is measured is what a user waits for before a first result: a Python
process starting, ``import gmmjax``, XLA compiling the fit's programs, and
the persistent compilation cache (empty or warm). Every figure about a
process is the median (and min/max) of ``--repeats`` FRESH Python
processes, each started as ``sys.executable -c <code>``; a child reads
``time.perf_counter`` on its very first line, and the parent also times the
whole process (interpreter start and exit included). scikit-learn's
equivalent runs in the same session, interleaved with gmmjax's repeats, and
the ratio of medians gmmjax/scikit-learn is reported. Results go to
``benchmarks/results/latency-<timestamp>.json`` and ``.md``.

Usage::

  python benchmarks/bench_latency.py                    # everything
  python benchmarks/bench_latency.py --quick            # 2 repeats, small sweeps
  python benchmarks/bench_latency.py --only import,grad # a selection

Figures: 1 ``import`` (``import gmmjax`` against ``import
sklearn.mixture``); 2 ``first_fit`` (import and a first
``GaussianMixture(5).fit`` of 1,000 x 2, with an empty and with a warm
compilation cache); 3 ``new_n`` (in one warm process, fits with sample
counts not seen before, and how many programs JAX compiled for them); 4
``sweep`` (K = 1..6 x four covariance types with ``.bic``, a fresh process,
empty and warm cache); 5 ``gridsearch`` (``GridSearchCV`` over the same
grid, cv=5); 6 ``grad`` (compiling ``jax.value_and_grad`` of a loss through
``gmmjax.fit``, as users write it and with ``gmmjax.compiler_options``
passed to their ``jit``, and ``value_and_grad`` called without any ``jit``,
its first call and later ones; no scikit-learn equivalent); 7 ``first_calls`` (the first
call of ``fit_restarts(n_init=3)``, ``select_n_components`` over K = 1..4
and ``BayesianGaussianMixture(4).fit`` on 300 x 2, each in a fresh process
with an empty cache, against scikit-learn's n_init=3 fit, a loop of fits
with ``bic`` and its Bayesian mixture); 8 ``bayes_sweep`` (figure 4's
sweep with ``BayesianGaussianMixture``, scored by ``score``).

Each child gets a fresh, empty cache folder of its own: ``GMMJAX_CACHE_DIR``,
the estimator's default cache (``GMMJAX_NO_CACHE`` and JAX's own cache
settings removed), and for figure 6 ``JAX_COMPILATION_CACHE_DIR`` (the
functional API turns no cache on); a warm-cache child reuses the folders of
the empty-cache child just before it.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATASETS_PATH = os.path.join(REPO, "gmmjax", "datasets.py")

FIGURES = ("import", "first_fit", "new_n", "sweep", "gridsearch", "grad",
           "first_calls", "bayes_sweep")
CTYPES = ("full", "tied", "diag", "spherical")


# ------------------------------------------------------------ child code
#
# A child is HEADER (the clock's first reading), the library's imports, the
# import time, then a body that fills the dict ``R``, printed as the last
# line of stdout. Parameters arrive as JSON in ``sys.argv[1]`` (``A``).

HEADER = "import time; T0 = time.perf_counter()\n"

IMPORTS = {
    "gmmjax": ("import gmmjax\n"
               "from gmmjax import datasets\n"
               "GaussianMixture = gmmjax.GaussianMixture\n"),
    "sklearn": "from sklearn.mixture import GaussianMixture\n",
}

AFTER_IMPORT = ("T1 = time.perf_counter()\n"
                "import json, sys\n"
                "A = json.loads(sys.argv[1])\n"
                "R = dict(import_s=T1 - T0)\n")

# scikit-learn's children read the same data as gmmjax's from gmmjax's
# datasets module (NumPy only), loaded by path so that JAX is not imported.
DATASETS_BY_PATH = """\
import importlib.util
_spec = importlib.util.spec_from_file_location("_gx_datasets",
                                               A["datasets_path"])
datasets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(datasets)
"""

# Counts JAX's compile work (gmmjax children of figure 3): programs handed to
# XLA (in-memory cache misses; persistent-cache hits included, and counted
# apart), traces, and the "Compiling ..." records of ``jax_log_compiles``.
COMPILE_COUNTER = """\
import logging
import jax
jax.config.update("jax_log_compiles", True)
C = dict(backend_compile=0, persistent_cache_hit=0, trace=0, log_compiling=0)
def _on_duration(event, duration_secs, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration":
    C["backend_compile"] += 1
  elif event == "/jax/core/compile/jaxpr_trace_duration":
    C["trace"] += 1
def _on_event(event, **kwargs):
  if event == "/jax/compilation_cache/cache_hits":
    C["persistent_cache_hit"] += 1
jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)
class _CountCompiles(logging.Handler):
  def emit(self, record):
    if record.getMessage().startswith("Compiling "):
      C["log_compiling"] += 1
logging.getLogger("jax").addHandler(_CountCompiles())
"""

BODY_IMPORT = "R['total_s'] = R['import_s']\n"

BODY_FIRST_FIT = """\
X, _ = datasets.blobs(n_samples=1000, n_centers=5, seed=0)
T2 = time.perf_counter()
gm = GaussianMixture(5, random_state=0).fit(X)
T3 = time.perf_counter()
R.update(data_s=T2 - T1, fit_s=T3 - T2, total_s=T3 - T0,
         n_iter=int(gm.n_iter_), lower_bound=float(gm.lower_bound_),
         sklearn_imported="sklearn" in sys.modules)
"""

BODY_NEW_N = """\
def snap():
  return dict(C) if "C" in globals() else {}
X, _ = datasets.blobs(n_samples=1000, n_centers=5, seed=0)
T2 = time.perf_counter()
GaussianMixture(5, random_state=0).fit(X)
R.update(first_fit_s=time.perf_counter() - T2, compiles_first_fit=snap(),
         counts=A["counts"], fit_s=[], compiles=[], n_iter=[])
for n in A["counts"]:
  Xn, _ = datasets.blobs(n_samples=n, n_centers=5, seed=0)
  before = snap()
  t = time.perf_counter()
  gm = GaussianMixture(5, random_state=0).fit(Xn)
  R["fit_s"].append(time.perf_counter() - t)
  after = snap()
  R["compiles"].append({k: after[k] - before[k] for k in after})
  R["n_iter"].append(int(gm.n_iter_))
t = time.perf_counter()
GaussianMixture(5, random_state=0).fit(X)
R["same_n_fit_s"] = time.perf_counter() - t
import statistics
R["new_n_median_s"] = statistics.median(R["fit_s"])
R["new_n_compiles"] = {k: sum(c[k] for c in R["compiles"])
                       for k in snap()}
R["total_s"] = time.perf_counter() - T0
"""

BODY_SWEEP = """\
X, _ = datasets.four_components(n_samples=500, seed=0)
T2 = time.perf_counter()
bics = []
for covariance_type in A["ctypes"]:
  for n_components in range(1, A["kmax"] + 1):
    gm = GaussianMixture(n_components=n_components,
                         covariance_type=covariance_type,
                         random_state=0).fit(X)
    bics.append((gm.bic(X), covariance_type, n_components))
T3 = time.perf_counter()
best = min(bics)
R.update(data_s=T2 - T1, sweep_s=T3 - T2, total_s=T3 - T0,
         n_fits=len(bics), best_ctype=best[1], best_k=best[2],
         best_bic=float(best[0]))
"""

# Figure 8: the sweep of figure 4 with BayesianGaussianMixture (scored by
# its mean log-likelihood: it has no bic).
BODY_BAYES_SWEEP = (BODY_SWEEP.replace("GaussianMixture(", "BGM(")
                    .replace("gm.bic(X)", "-gm.score(X)")
                    .replace("best_bic=", "best_neg_score="))
assert "best_neg_score=" in BODY_BAYES_SWEEP
IMPORT_BAYES = {
    "gmmjax": "BGM = gmmjax.BayesianGaussianMixture\n",
    "sklearn": "from sklearn.mixture import BayesianGaussianMixture as BGM\n",
}

IMPORT_GRIDSEARCH = "from sklearn.model_selection import GridSearchCV\n"

BODY_GRIDSEARCH = """\
import math
X, _ = datasets.four_components(n_samples=500, seed=0)
T2 = time.perf_counter()
search = GridSearchCV(GaussianMixture(random_state=0),
                      {"n_components": range(1, A["kmax"] + 1),
                       "covariance_type": A["ctypes"]},
                      cv=A["cv"]).fit(X)
T3 = time.perf_counter()
scores = search.cv_results_["mean_test_score"]
R.update(data_s=T2 - T1, search_s=T3 - T2, total_s=T3 - T0,
         n_candidates=len(scores),
         n_nan_scores=sum(1 for s in scores if not math.isfinite(s)),
         best_params={k: (v if isinstance(v, str) else int(v))
                      for k, v in search.best_params_.items()},
         best_score=float(search.best_score_))
"""

IMPORT_GRAD = "import jax\nimport jax.numpy as jnp\n"

BODY_GRAD = """\
X = jnp.asarray(datasets.blobs(n_samples=1000, n_centers=3, seed=0)[0],
                jnp.float32)
p0 = jax.block_until_ready(gmmjax.init_params(jax.random.key(0), X, 3))
T2 = time.perf_counter()
loss = lambda X: gmmjax.fit(X, p0, tol=1e-6).log_likelihood
def median_call(f):
  calls = []
  for _ in range(A.get("calls", 20)):
    T6 = time.perf_counter()
    jax.block_until_ready(f(X))
    calls.append(time.perf_counter() - T6)
  return sorted(calls)[len(calls) // 2]
if A.get("eager"):
  # No jit at all, as docs/differentiation.md first shows it: the first
  # call compiles what it runs.
  f = jax.value_and_grad(loss)
  value, grad = jax.block_until_ready(f(X))
  T3 = time.perf_counter()
  R.update(init_params_s=T2 - T1, eager_first_call_s=T3 - T2,
           call_median_s=median_call(f), total_s=T3 - T0)
else:
  # As users write it, or with the options gmmjax offers for a user's jit.
  options = gmmjax.compiler_options(X, 3) if A.get("options") else None
  f = jax.jit(jax.value_and_grad(loss), compiler_options=options)
  lowered = f.lower(X)
  T3 = time.perf_counter()
  compiled = lowered.compile()
  T4 = time.perf_counter()
  value, grad = jax.block_until_ready(compiled(X))
  T5 = time.perf_counter()
  R.update(init_params_s=T2 - T1, lower_s=T3 - T2, compile_s=T4 - T3,
           lower_compile_s=T4 - T2, first_call_s=T5 - T4,
           lower_compile_first_call_s=T5 - T2,
           call_median_s=median_call(compiled), options=options,
           total_s=T5 - T0)
R.update(value=float(value), grad_finite=bool(jnp.isfinite(grad).all()))
"""

# Figure 7: the first call of one function (A["what"]) in a fresh process,
# data made before the clock starts. gmmjax's functional calls against the
# scikit-learn code that does the same: restarts, a BIC sweep over K, a
# Bayesian mixture.
BODY_FIRST_CALLS_GMMJAX = """\
import jax
X, _ = datasets.blobs(n_samples=300, n_centers=3, seed=0)
key = jax.block_until_ready(jax.random.key(0))
T2 = time.perf_counter()
if A["what"] == "restarts":
  best, _ = gmmjax.fit_restarts(key, X, 3, n_init=3, method="kmeans")
  jax.block_until_ready(best)
elif A["what"] == "select":
  gmmjax.select_n_components(key, X, range(1, 5), n_init=1)
else:
  gmmjax.BayesianGaussianMixture(n_components=4, random_state=0).fit(X)
R.update(call_s=time.perf_counter() - T2, total_s=time.perf_counter() - T0,
         compiles=dict(C))
"""

BODY_FIRST_CALLS_SKLEARN = """\
from sklearn.mixture import BayesianGaussianMixture
X, _ = datasets.blobs(n_samples=300, n_centers=3, seed=0)
T2 = time.perf_counter()
if A["what"] == "restarts":
  GaussianMixture(3, n_init=3, init_params="kmeans", random_state=0).fit(X)
elif A["what"] == "select":
  [GaussianMixture(k, random_state=0).fit(X).bic(X) for k in range(1, 5)]
else:
  BayesianGaussianMixture(n_components=4, random_state=0).fit(X)
R.update(call_s=time.perf_counter() - T2, total_s=time.perf_counter() - T0)
"""

FIRST_CALLS = ("restarts", "select", "bayes")

# gmmjax's children also report what its cache of executables did (loaded,
# compiled, written), which tells a warm child's programs apart.
EPILOGUE = ("_ex = sys.modules.get('gmmjax._src.executables')\n"
            "if _ex is not None:\n"
            "  R['executables'] = dict(_ex.stats)\n"
            "print(json.dumps(R))\n")


# --tiny-max-entries: an A/B of compiling.TINY_MAX_ENTRIES (0 turns the
# tiny programs, LLVM optimisation level 1, off); None keeps the library's.
TINY_OVERRIDE = [None]


def child_code(lib, body, extra_imports="", count_compiles=False,
               imports=None):
  code = HEADER + (IMPORTS[lib] if imports is None else imports)
  if lib == "gmmjax" and TINY_OVERRIDE[0] is not None:
    code += ("from gmmjax._src import compiling as _c\n"
             f"_c.TINY_MAX_ENTRIES = {int(TINY_OVERRIDE[0])}\n")
  code += extra_imports + AFTER_IMPORT
  if lib == "sklearn" and imports is None:
    code += DATASETS_BY_PATH
  if count_compiles:
    code += COMPILE_COUNTER
  return code + body + EPILOGUE


# ---------------------------------------------------------------- running


class Session:
  """Fresh cache folders, the children's environment, and every run."""

  def __init__(self, root, timeout):
    self.root = root
    self.timeout = timeout
    self.n = 0
    self.runs = []  # every child's record, in order

  def fresh_caches(self):
    self.n += 1
    dirs = {k: os.path.join(self.root, f"{self.n:03d}-{k}")
            for k in ("jax", "gmmjax")}
    for d in dirs.values():
      os.makedirs(d)
    return dirs

  def env(self, caches, figure):
    env = dict(os.environ)
    for name in ("GMMJAX_NO_CACHE", "JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
      env.pop(name, None)
    # The estimator's default cache, as a user gets it. The functional API
    # (figure 6) turns no cache on: there the user configures JAX's own.
    env["GMMJAX_CACHE_DIR"] = caches["gmmjax"]
    if figure == "grad":
      env["JAX_COMPILATION_CACHE_DIR"] = caches["jax"]
    # This checkout's gmmjax, whatever the environment has installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env

  def run(self, figure, lib, mode, code, params=None, caches=None):
    """One fresh process; its record (``error`` set on any failure)."""
    caches = caches or self.fresh_caches()
    params = dict(params or {}, datasets_path=DATASETS_PATH)
    rec = dict(figure=figure, library=lib, mode=mode,
               cache_entries_before=cache_entries(caches))
    t0 = time.perf_counter()
    try:
      out = subprocess.run([sys.executable, "-c", code, json.dumps(params)],
                           capture_output=True, text=True, cwd=self.root,
                           env=self.env(caches, figure), timeout=self.timeout)
      rec["wall_s"] = time.perf_counter() - t0
      try:
        rec.update(json.loads(out.stdout.strip().splitlines()[-1]))
        if out.returncode:
          rec["error"] = f"exit status {out.returncode}: {out.stderr[-500:]}"
      except (IndexError, json.JSONDecodeError):
        rec["error"] = (f"exit status {out.returncode}: "
                        f"{(out.stderr or out.stdout)[-800:]}")
    except subprocess.TimeoutExpired:
      rec["wall_s"] = time.perf_counter() - t0
      rec["error"] = f"did not finish within {self.timeout} s"
    except OSError as e:
      rec["wall_s"] = time.perf_counter() - t0
      rec["error"] = repr(e)[:300]
    rec["cache_entries_after"] = cache_entries(caches)
    self.runs.append(rec)
    status = "FAILED " + rec["error"][:200] if "error" in rec else "ok"
    print(f"  [{figure}] {lib} {mode}: wall {rec['wall_s']:.2f} s, "
          f"{status}", flush=True)
    return rec, caches


def cache_entries(caches):
  """Files in each cache folder (how much a run left for the next)."""
  out = {}
  for k, d in caches.items():
    out[k] = sum(len(files) for _, _, files in os.walk(d))
  return out


# ----------------------------------------------------------------- figures


def fig_import(s, args):
  for _ in range(args.repeats):
    s.run("import", "gmmjax", "fresh",
          child_code("gmmjax", BODY_IMPORT, imports="import gmmjax\n"))
    s.run("import", "sklearn", "fresh",
          child_code("sklearn", BODY_IMPORT,
                     imports="import sklearn.mixture\n"))


def fig_first_fit(s, args):
  for _ in range(args.repeats):
    _, caches = s.run("first_fit", "gmmjax", "empty_cache",
                      child_code("gmmjax", BODY_FIRST_FIT))
    s.run("first_fit", "gmmjax", "warm_cache",
          child_code("gmmjax", BODY_FIRST_FIT), caches=caches)
    s.run("first_fit", "sklearn", "fresh",
          child_code("sklearn", BODY_FIRST_FIT))


def fig_new_n(s, args):
  counts = [999, 1003, 950] if args.quick else [999, 1003, 950, 1001, 1100]
  for _ in range(args.repeats):
    s.run("new_n", "gmmjax", "warm_process",
          child_code("gmmjax", BODY_NEW_N, count_compiles=True),
          dict(counts=counts))
    s.run("new_n", "sklearn", "warm_process",
          child_code("sklearn", BODY_NEW_N), dict(counts=counts))


def sweep_params(args):
  if args.quick:
    return dict(kmax=2, ctypes=["full", "diag"], cv=5)
  return dict(kmax=6, ctypes=list(CTYPES), cv=5)


def fig_sweep(s, args):
  p = sweep_params(args)
  for _ in range(args.repeats):
    _, caches = s.run("sweep", "gmmjax", "empty_cache",
                      child_code("gmmjax", BODY_SWEEP), p)
    s.run("sweep", "gmmjax", "warm_cache", child_code("gmmjax", BODY_SWEEP),
          p, caches=caches)
    s.run("sweep", "sklearn", "fresh", child_code("sklearn", BODY_SWEEP), p)


def fig_bayes_sweep(s, args):
  p = sweep_params(args)
  gx = child_code("gmmjax", BODY_BAYES_SWEEP, IMPORT_BAYES["gmmjax"])
  sk = child_code("sklearn", BODY_BAYES_SWEEP, IMPORT_BAYES["sklearn"])
  for _ in range(args.repeats):
    _, caches = s.run("bayes_sweep", "gmmjax", "empty_cache", gx, p)
    s.run("bayes_sweep", "gmmjax", "warm_cache", gx, p, caches=caches)
    s.run("bayes_sweep", "sklearn", "fresh", sk, p)


def fig_gridsearch(s, args):
  p = sweep_params(args)
  gx = child_code("gmmjax", BODY_GRIDSEARCH, IMPORT_GRIDSEARCH)
  sk = child_code("sklearn", BODY_GRIDSEARCH, IMPORT_GRIDSEARCH)
  for _ in range(args.repeats):
    _, caches = s.run("gridsearch", "gmmjax", "empty_cache", gx, p)
    s.run("gridsearch", "gmmjax", "warm_cache", gx, p, caches=caches)
    s.run("gridsearch", "sklearn", "fresh", sk, p)


def fig_grad(s, args):
  code = child_code("gmmjax", BODY_GRAD, IMPORT_GRAD)
  for _ in range(args.repeats):
    _, caches = s.run("grad", "gmmjax", "empty_cache", code)
    s.run("grad", "gmmjax", "warm_cache", code, caches=caches)
    s.run("grad", "gmmjax", "options", code, dict(options=True))
    s.run("grad", "gmmjax", "eager", code, dict(eager=True))


def fig_first_calls(s, args):
  gx = child_code("gmmjax", BODY_FIRST_CALLS_GMMJAX, count_compiles=True)
  sk = child_code("sklearn", BODY_FIRST_CALLS_SKLEARN)
  for _ in range(args.repeats):
    for what in FIRST_CALLS:
      s.run(f"first_calls_{what}", "gmmjax", "empty_cache", gx,
            dict(what=what))
      s.run(f"first_calls_{what}", "sklearn", "fresh", sk, dict(what=what))


RUNNERS = dict(import_=fig_import, first_fit=fig_first_fit, new_n=fig_new_n,
               sweep=fig_sweep, gridsearch=fig_gridsearch, grad=fig_grad,
               first_calls=fig_first_calls, bayes_sweep=fig_bayes_sweep)

# The table: (figure, row label, gmmjax mode, metric, scikit-learn mode or
# None). scikit-learn's row is its fresh process (no cache to warm).
ROWS = [
    ("import", "1 import: in child", "fresh", "import_s", "fresh"),
    ("import", "1 import: process wall", "fresh", "wall_s", "fresh"),
]
for _mode, _tag in (("empty_cache", "empty cache"),
                    ("warm_cache", "warm cache")):
  ROWS += [
      ("first_fit", f"2 import+first fit, {_tag}: in child", _mode,
       "total_s", "fresh"),
      ("first_fit", f"2 first fit alone, {_tag}", _mode, "fit_s", "fresh"),
      ("first_fit", f"2 import+first fit, {_tag}: process wall", _mode,
       "wall_s", "fresh"),
  ]
ROWS += [
    ("new_n", "3 fit, new sample count (median of counts)", "warm_process",
     "new_n_median_s", "warm_process"),
    ("new_n", "3 fit, same sample count again", "warm_process",
     "same_n_fit_s", "warm_process"),
    ("new_n", "3 first fit in that process", "warm_process", "first_fit_s",
     "warm_process"),
]
for _fig, _label, _metric in (("sweep", "4 BIC sweep", "sweep_s"),
                              ("gridsearch", "5 GridSearchCV", "search_s"),
                              ("bayes_sweep", "8 Bayesian sweep",
                               "sweep_s")):
  for _mode, _tag in (("empty_cache", "empty cache"),
                      ("warm_cache", "warm cache")):
    ROWS += [
        (_fig, f"{_label}, {_tag}: end to end in child", _mode, "total_s",
         "fresh"),
        (_fig, f"{_label}, {_tag}: fits alone", _mode, _metric, "fresh"),
        (_fig, f"{_label}, {_tag}: process wall", _mode, "wall_s", "fresh"),
    ]
for _mode, _tag in (("empty_cache", "empty cache"),
                    ("warm_cache", "warm cache"),
                    ("options", "gx.compiler_options, empty cache")):
  ROWS += [
      ("grad", f"6 value_and_grad lower+compile, {_tag}", _mode,
       "lower_compile_s", None),
      ("grad", f"6 value_and_grad compile alone, {_tag}", _mode,
       "compile_s", None),
      ("grad", f"6 value_and_grad first call, {_tag}", _mode,
       "first_call_s", None),
      ("grad", f"6 lower+compile+first call, {_tag}", _mode,
       "lower_compile_first_call_s", None),
      ("grad", f"6 value_and_grad call (median of 20), {_tag}", _mode,
       "call_median_s", None),
      ("grad", f"6 process wall, {_tag}", _mode, "wall_s", None),
  ]
ROWS += [
    ("grad", "6 eager value_and_grad (no jit), first call", "eager",
     "eager_first_call_s", None),
    ("grad", "6 eager value_and_grad (no jit), call (median of 20)",
     "eager", "call_median_s", None),
    ("grad", "6 process wall, eager", "eager", "wall_s", None),
]
for _what, _label in (("restarts", "fit_restarts, n_init=3"),
                      ("select", "select_n_components, K=1..4"),
                      ("bayes", "BayesianGaussianMixture(4).fit")):
  ROWS += [(f"first_calls_{_what}", f"7 first {_label}: the call",
            "empty_cache", "call_s", "fresh")]


def stats(values):
  if not values:
    return None
  return dict(median=statistics.median(values), min=min(values),
              max=max(values), n=len(values))


def summarise(runs):
  rows = []
  for fig, label, gx_mode, metric, sk_mode in ROWS:
    mine = [r for r in runs if r["figure"] == fig]
    if not mine:
      continue
    row = dict(figure=fig, name=label, metric=metric)
    for lib, mode in (("gmmjax", gx_mode), ("sklearn", sk_mode)):
      if mode is None:
        continue
      rs = [r for r in mine if r["library"] == lib and r["mode"] == mode]
      good = [r[metric] for r in rs if "error" not in r and metric in r]
      row[lib] = stats(good)
      row[lib + "_failed"] = len(rs) - len(good)
    if row.get("gmmjax") and row.get("sklearn"):
      row["ratio"] = row["gmmjax"]["median"] / row["sklearn"]["median"]
    rows.append(row)
  return rows


def compile_counts(runs):
  """Figure 3's compile counts, per gmmjax process."""
  out = []
  for r in runs:
    if r["figure"] == "new_n" and r["library"] == "gmmjax" and (
        "error" not in r):
      out.append(dict(counts=r["counts"], per_fit=r["compiles"],
                      total=r["new_n_compiles"],
                      first_fit=r["compiles_first_fit"]))
  return out


# ---------------------------------------------------------------- reporting


def _fmt(st, unit):
  if not st:
    return "-"
  f = (lambda v: f"{1e3 * v:.1f}") if unit == "ms" else (
      lambda v: f"{v:.3f}")
  return f"{f(st['median'])} [{f(st['min'])}-{f(st['max'])}] {unit}"


def _unit(row):
  meds = [row[lib]["median"] for lib in ("gmmjax", "sklearn")
          if row.get(lib)]
  return "ms" if meds and max(meds) < 1.0 else "s"


def table(rows):
  lines = ["| figure | gmmjax median [min-max] | scikit-learn median "
           "[min-max] | ratio gmmjax/sklearn | runs ok (failed) |",
           "|---|---|---|---|---|"]
  for r in rows:
    u = _unit(r)
    sk = _fmt(r.get("sklearn"), u) if "sklearn_failed" in r else "n/a"
    ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
    ok = f"{(r.get('gmmjax') or {}).get('n', 0)} ({r['gmmjax_failed']})"
    if "sklearn_failed" in r:
      ok += (f" / {(r.get('sklearn') or {}).get('n', 0)} "
             f"({r['sklearn_failed']})")
    lines.append(f"| {r['name']} | {_fmt(r.get('gmmjax'), u)} | {sk} | "
                 f"{ratio} | {ok} |")
  return lines


def compile_lines(counts):
  lines = []
  for i, c in enumerate(counts):
    per = ", ".join(f"n={n}: {d['backend_compile']} compiled"
                    f" ({d['persistent_cache_hit']} cache hits, "
                    f"{d['trace']} traces, {d['log_compiling']} logged)"
                    for n, d in zip(c["counts"], c["per_fit"]))
    t = c["total"]
    lines.append(f"- process {i + 1}: first fit {c['first_fit']}; fits with "
                 f"new sample counts: {t['backend_compile']} programs "
                 f"compiled in all ({t['persistent_cache_hit']} persistent-"
                 f"cache hits, {t['trace']} traces, {t['log_compiling']} "
                 f"'Compiling' log records); {per}")
  return lines


def other_lines(runs):
  """What the fits found, so that gmmjax and scikit-learn can be compared."""
  lines = []
  seen = set()
  for r in runs:
    if "error" in r:
      lines.append(f"- FAILED {r['figure']} {r['library']} {r['mode']}: "
                   f"{r['error'][:400]}")
      continue
    key = (r["figure"], r["library"], r["mode"])
    if key in seen:
      continue
    seen.add(key)
    keep = {k: r[k] for k in ("n_iter", "lower_bound", "best_ctype",
                              "best_k", "best_bic", "best_neg_score", "n_fits", "best_params",
                              "best_score", "n_candidates", "n_nan_scores",
                              "value", "grad_finite", "options",
                              "cache_entries_after")
            if k in r}
    if keep:
      lines.append(f"- {r['figure']} {r['library']} {r['mode']} (first "
                   f"run): {json.dumps(keep)}")
  return lines


def markdown(meta, rows, counts, runs):
  lines = [f"# Latency benchmark ({meta['date']})", "",
           f"CPU: {meta['cpu_model']}, {meta['cpus']} CPUs; Python "
           f"{meta['python']}; jax {meta['jax']}, jaxlib {meta['jaxlib']}, "
           f"scikit-learn {meta['sklearn']}, numpy {meta['numpy']}, ml_dtypes "
           f"{meta['ml_dtypes']}; gmmjax at {meta['commit']}"
           f"{' (bytecode compiled)' if meta.get('gmmjax_bytecode') else ''}. "
           f"Load (1 min) at start {meta['load_start']}, at end "
           f"{meta['load_end']}. {meta['repeats']} fresh processes per "
           f"figure{' (--quick)' if meta['quick'] else ''}.", ""]
  lines += table(rows)
  if counts:
    lines += ["", "## Compiles during fits with new sample counts "
              "(figure 3)", ""] + compile_lines(counts)
  lines += ["", "## Results and failures", ""] + other_lines(runs)
  return "\n".join(lines) + "\n"


def cpu_model():
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load1():
  try:
    return float(open("/proc/loadavg").read().split()[0])
  except OSError:
    return os.getloadavg()[0]


def version(dist):
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


def git_commit():
  try:
    out = subprocess.run(["git", "-C", REPO, "describe", "--always",
                          "--dirty"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip() or None
  except (OSError, subprocess.TimeoutExpired):
    return None


def write_report(meta, runs, out_dir, tag):
  rows = summarise(runs)
  counts = compile_counts(runs)
  os.makedirs(out_dir, exist_ok=True)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  base = os.path.join(out_dir, f"latency{tag}-{stamp}")
  with open(base + ".json", "w") as f:
    json.dump(dict(meta=meta, rows=rows, compiles_new_n=counts, runs=runs),
              f, indent=1, default=str)
  md = markdown(meta, rows, counts, runs)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print("wrote", base + ".json", base + ".md")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true",
                  help="2 repeats and smaller sweeps (a smoke run)")
  ap.add_argument("--repeats", type=int, default=None,
                  help="fresh processes per figure (default 5, 2 --quick)")
  ap.add_argument("--only", default=",".join(FIGURES),
                  help="comma-separated subset of " + ",".join(FIGURES)
                  + f" (or their numbers 1-{len(FIGURES)})")
  ap.add_argument("--timeout", type=float, default=600.0,
                  help="seconds one child process may take")
  ap.add_argument("--out", default=os.path.join(HERE, "results"))
  ap.add_argument("--tag", default="")
  ap.add_argument("--tiny-max-entries", type=int, default=None,
                  help="override compiling.TINY_MAX_ENTRIES in gmmjax's "
                  "children (0: no tiny programs), for an A/B")
  args = ap.parse_args(argv)
  TINY_OVERRIDE[0] = args.tiny_max_entries
  args.repeats = args.repeats or (2 if args.quick else 5)
  if args.repeats < 1:
    ap.error("--repeats must be at least 1")
  sel = []
  for name in filter(None, args.only.split(",")):
    if name.isdigit() and 1 <= int(name) <= len(FIGURES):
      name = FIGURES[int(name) - 1]
    if name not in FIGURES:
      ap.error(f"--only takes {','.join(FIGURES)} or 1-{len(FIGURES)}, "
               f"got {name!r}")
    sel.append(name)
  meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
              cpu_model=cpu_model(), cpus=os.cpu_count(),
              python=platform.python_version(), jax=version("jax"),
              jaxlib=version("jaxlib"), sklearn=version("scikit-learn"),
              numpy=version("numpy"), ml_dtypes=version("ml_dtypes"), commit=git_commit(),
              executable=sys.executable, load_start=load1(),
              quick=args.quick, repeats=args.repeats, only=sel,
              timeout_s=args.timeout, sweep=sweep_params(args),
              tiny_max_entries=args.tiny_max_entries,
              env={k: v for k, v in os.environ.items()
                   if k.startswith(("JAX_", "XLA_", "GMMJAX_"))})
  # gmmjax's bytecode, as `pip install` writes it (scikit-learn's is in
  # site-packages): with PYTHONDONTWRITEBYTECODE set, as on the project's
  # machines, a source checkout's children would otherwise compile every
  # gmmjax module at import (80-90 ms there, counted to gmmjax alone).
  meta["gmmjax_bytecode"] = bool(compileall.compile_dir(
      os.path.join(REPO, "gmmjax"), quiet=1))
  print(f"latency benchmark: {sel}, {args.repeats} repeats, load "
        f"{meta['load_start']}", flush=True)
  root = tempfile.mkdtemp(prefix="gmmjax-latency-")
  s = Session(root, args.timeout)
  try:
    for name in sel:
      t0 = time.perf_counter()
      RUNNERS["import_" if name == "import" else name](s, args)
      print(f"figure {name}: {time.perf_counter() - t0:.1f} s, load "
            f"{load1()}", flush=True)
      print("\n".join(table([r for r in summarise(s.runs)
                               if r["figure"] == name
                               or r["figure"].startswith(name + "_")])),
            flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  meta["load_end"] = load1()
  write_report(meta, s.runs, args.out, args.tag)


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
