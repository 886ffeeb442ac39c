"""The classic GMM tutorial in 1-D: three clusters, EM from poor starts.

Points spread around -15, 0 and +15; EM starts from deliberately poor
Gaussians (all inside the middle cluster, narrow, lopsided weights) and finds the three clusters. The
figure shows the fitted densities over the data, the points coloured by
their responsibilities, and the log-likelihood per iteration.

Run: python examples/tutorial_1d.py [--out tutorial_1d.png]
"""

import argparse

import jax.numpy as jnp
import numpy as np

import gmmjax as gx
from gmmjax import datasets


def run(out="tutorial_1d.png", show_plot=True):
  X, _ = datasets.tutorial_1d(n_per_cluster=100, seed=0)
  # Deliberately poor starting Gaussians: bunched in the middle cluster,
  # narrow, and with lopsided weights.
  params0 = gx.make_params(
      weights=jnp.array([0.6, 0.3, 0.1]),
      means=jnp.array([[-2.0], [0.5], [3.0]]),
      covariances=jnp.array([1.0, 1.0, 1.0]),
      covariance_type="spherical")
  result = gx.fit(X, params0, max_iter=200, tol=1e-6)
  p = result.params
  print(f"converged={bool(result.converged)} after {int(result.n_iter)} "
        f"iterations, mean log-likelihood {float(result.log_likelihood):.4f}")
  order = np.argsort(np.asarray(p.means).ravel())
  for k in order:
    print(f"  component: weight {float(p.weights[k]):.3f}  mean "
          f"{float(p.means[k, 0]):7.3f}  std "
          f"{float(jnp.sqrt(p.covariances[k])):.3f}")
  if show_plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gmmjax import plot

    resp = np.asarray(gx.predict_proba(p, X))[:, order]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    plot.plot_density_1d(p, X, ax=ax1)
    ax1.scatter(X[:, 0], np.full(len(X), -0.002), c=resp, s=12,
                marker="|")  # RGB = responsibilities
    ax1.set_title("Fitted mixture; points coloured by responsibility")
    plot.plot_log_likelihood(result, ax=ax2)
    ax2.set_title("Log-likelihood per EM iteration")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"figure saved to {out}")
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default="tutorial_1d.png")
  run(parser.parse_args().out)
