"""The ``gmmjax`` command line."""

from __future__ import annotations

import argparse
import sys


def demo(args) -> int:
  """The README's main job: a fit on built-in data, a summary and a plot."""
  import numpy as np

  import gmmjax as gx
  from gmmjax import datasets

  X, _ = datasets.blobs(n_samples=1000, n_centers=5, seed=args.seed)
  gm = gx.GaussianMixture(5, n_init=4, random_state=args.seed, tol=1e-4,
                          max_iter=200)
  labels = gm.fit_predict(X)
  np.set_printoptions(precision=3, suppress=True)
  print("gmmjax demo: 1000 points, 5 stretched blobs, 5 full-covariance "
        "components, 4 restarts")
  print(f"converged:       {gm.converged_}")
  print(f"iterations:      {gm.n_iter_}")
  print(f"log-likelihood:  {gm.score(X):.5f} (mean per sample)")
  print(f"lower bound:     {gm.lower_bound_:.5f}")
  print(f"BIC:             {gm.bic(X):.2f}")
  print("weights:        ", gm.weights_)
  print("means:")
  print(gm.means_)
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot (pip install 'gmmjax[plot]')")
    return 0
  from gmmjax import plot
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
  plot.plot_ellipses(gm._params(), X, labels, ax=ax1)
  ax1.set_title("gmmjax: fitted components (1, 2, 3 sigma)")
  plot.plot_log_likelihood(gm.lower_bounds_, ax=ax2)
  ax2.set_title("EM convergence (best restart)")
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"plot saved to {args.out}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="gmmjax", description="Gaussian mixture models fitted by EM in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("demo", help="fit built-in data, print a summary, save a "
                     "plot")
  p.add_argument("--out", default="gmmjax_demo.png", help="PNG path")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=demo)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
