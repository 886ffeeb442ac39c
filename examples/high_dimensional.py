"""High dimensions: diagonal, full and low-rank-plus-diagonal covariances.

The 8 x 8 digits images (64 features, ``sklearn.datasets.load_digits``,
shipped with scikit-learn), dequantised with uniform noise so that they have
a density. A mixture of 10 components is fitted on 1,200 images with
``covariance_type="diag"``, ``"full"`` and ``"lowrank"`` (mixtures of factor
analysers, ``W W^T + diag(psi)``) at a few ranks ``q``; each is scored on the
597 held-out images, timed (the fastest of 3 fits after one that
compiles), and its BIC on the training images computed: the rank with the lowest BIC is the usual
choice of ``q``.

Run: ``python examples/high_dimensional.py [out.png]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gmmjax as gx

RANKS = (1, 2, 4, 8, 16)
K = 10


def load(seed=0):
  from sklearn.datasets import load_digits
  rng = np.random.default_rng(seed)
  X = load_digits().data + rng.uniform(size=(1797, 64))  # dequantised
  X = X[rng.permutation(len(X))]
  return X[:1200], X[1200:]


def fit_one(X, covariance_type, rank=None, repeats=3):
  """``(model, seconds)``: the fastest of ``repeats`` fits after a first
  one that compiles (the minimum: robust to a busy machine)."""
  kwargs = dict(covariance_type=covariance_type, random_state=0,
                reg_covar=1e-3, max_iter=200, n_init=2)
  if rank is not None:
    kwargs["rank"] = rank
  gx.GaussianMixture(K, **kwargs).fit(X)  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    gm = gx.GaussianMixture(K, **kwargs).fit(X)
    times.append(time.perf_counter() - start)
  return gm, min(times)


def run(out=None):
  """Fits every model; returns ``[(name, held-out ll, seconds, bic)]``."""
  train, test = load()
  rows = []
  for ctype, rank in ([("diag", None), ("full", None)]
                      + [("lowrank", q) for q in RANKS]):
    gm, seconds = fit_one(train, ctype, rank)
    name = ctype if rank is None else f"lowrank q={rank}"
    rows.append((name, gm.score(test), seconds, gm.bic(train)))
  for name, ll, seconds, bic in rows:
    print(f"{name:16s} held-out log-likelihood {ll:9.3f}   fit "
          f"{seconds:6.2f} s   BIC (train) {bic:12.1f}")
  if out:
    plot(rows, out)
  return rows


def plot(rows, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [r[0] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  for ax, col, title in zip(axes, (1, 2, 3), (
      "held-out log-likelihood per image (higher is better)",
      "fit time, s (2 restarts, 200 iterations at most)",
      "BIC on the training images (lower is better)"), strict=True):
    ax.bar(range(len(rows)), [r[col] for r in rows],
           color=["C0", "C1"] + ["C2"] * (len(rows) - 2))
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    ax.set_title(title, fontsize=9)
  fig.suptitle(f"digits (64 features), {K} components")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  print(f"plot saved to {out}")


if __name__ == "__main__":
  run(sys.argv[1] if len(sys.argv) > 1 else "high_dimensional.png")
