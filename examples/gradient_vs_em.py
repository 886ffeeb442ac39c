"""EM vs Adam vs L-BFGS vs a hybrid on the same data and initialisation.

Four full-covariance components in 3-D, fitted from the same k-means
initialisation by EM (``gx.fit``), by gradient descent on the unconstrained
parameters with Adam and with L-BFGS (``fit_gradient``), and by a hybrid:
a few EM iterations, then L-BFGS. Each method runs once compiled; its
iterations are placed on the wall-clock axis at (run time / iterations)
apiece, compilation excluded. One plot: mean log-likelihood against time.

Run: python examples/gradient_vs_em.py [--out gradient_vs_em.png]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gmmjax as gx

K = 4


def make_data(seed=0, n_per=400):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0.0, 2.5, (K, 3))
  parts = []
  for c in centres:
    a = rng.normal(size=(3, 3)) * 0.6
    parts.append(rng.normal(size=(n_per, 3)) @ a + c)
  return np.concatenate(parts).astype(np.float32)


def timed(fn, repeats=3):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return out, float(np.median(times))


def run(out="gradient_vs_em.png", show_plot=True):
  X = jnp.asarray(make_data())
  p0 = gx.init_params(jax.random.key(0), X, K, method="kmeans")
  ll0 = float(gx.log_likelihood(p0, X))
  curves = {}

  em, t = timed(lambda: gx.fit(X, p0, tol=1e-6, max_iter=500))
  n = int(em.n_iter)
  curves["EM"] = (np.arange(n + 1) * t / n,
                  np.r_[ll0, np.asarray(em.history)[1:n], em.log_likelihood])

  for name, opt, steps in [("Adam (lr 0.05)", optax.adam(0.05), 2000),
                           ("L-BFGS", optax.lbfgs(), 500)]:
    res, t = timed(lambda opt=opt, steps=steps: gx.fit_gradient(
        X, p0, opt, max_iter=steps, tol=1e-8))
    n = int(res.n_iter)
    lls = np.r_[-np.asarray(res.history)[:n], res.log_likelihood]
    curves[name] = (np.arange(n + 1) * t / n, lls)

  em_iters = 5
  lbfgs = optax.lbfgs()

  def hybrid():
    first = gx.fit(X, p0, tol=0.0, max_iter=em_iters)
    return first, gx.fit_gradient(X, first.params, lbfgs, max_iter=500,
                                  tol=1e-8)

  (first, second), t = timed(hybrid)
  n = em_iters + int(second.n_iter)
  lls = np.r_[ll0, np.asarray(first.history)[1:em_iters],
              -np.asarray(second.history)[: int(second.n_iter)],
              second.log_likelihood]
  curves[f"hybrid: {em_iters} EM + L-BFGS"] = (np.arange(n + 1) * t / n, lls)

  for name, (ts, lls) in curves.items():
    print(f"{name:26s} final mean log-likelihood {lls[-1]:.5f} after "
          f"{len(lls) - 1:4d} iterations, {ts[-1] * 1e3:8.1f} ms")
  if show_plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    best = max(c[1][-1] for c in curves.values())
    for name, (ts, lls) in curves.items():
      ax.plot(np.maximum(ts, 1e-5), lls, label=name, marker=".",
              markersize=3)
    ax.set_xscale("log")
    ax.set_ylim(best - 1.5, best + 0.1)
    ax.set_xlabel("wall time (s, compiled, CPU)")
    ax.set_ylabel("mean log-likelihood")
    ax.set_title(f"{X.shape[0]} points, {K} full-covariance components")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"saved {out}")
  return {name: float(c[1][-1]) for name, c in curves.items()}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="gradient_vs_em.png")
  args = parser.parse_args()
  run(args.out)
