"""Cost of one implicit backward pass through ``gx.fit``, relative to the fit.

For each configuration: the forward fit (``loss(X) = fit(X, p0).log_likelihood
+ sum(means**2)``, compiled), the gradient by implicit differentiation
(``jax.grad`` of the same, compiled; it runs the fit and then the backward
pass), and, for comparison, the gradient of the unrolled fit (a ``lax.scan``
of the same number of iterations). Reported: median wall time of repeats
with compilation timed apart, the backward pass alone (grad - forward), and
its ratio to the forward fit. The fit runs with ``tol=1e-6`` from a k-means
initialisation.

Run: python benchmarks/bench_implicit.py [--repeats 7] [--x64]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import gmmjax as gx

CONFIGS = [  # (n_samples, n_features, n_components, covariance_type)
    (2000, 2, 3, "full"),
    (2000, 5, 4, "full"),
    (10000, 5, 8, "full"),
    (10000, 5, 8, "diag"),
    (5000, 8, 5, "full"),
]


def timeit(fn, args, repeats):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), compile_s


def bench(n, d, k, ctype, repeats, dtype):
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (k, d))
  X = jnp.asarray(centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)),
                  dtype)
  p0 = gx.init_params(jax.random.key(0), X, k, covariance_type=ctype,
                      method="kmeans")
  n_iter = int(gx.fit(X, p0, tol=1e-6, max_iter=500).n_iter)

  def loss(X, mode, max_iter=500):
    res = gx.fit(X, p0, tol=1e-6, max_iter=max_iter, differentiation=mode)
    return res.log_likelihood + jnp.sum(res.params.means ** 2)

  fwd, fwd_c = timeit(jax.jit(lambda X: loss(X, "none")), (X,), repeats)
  imp, imp_c = timeit(jax.jit(jax.grad(lambda X: loss(X, "implicit"))), (X,),
                      repeats)
  # The unrolled scan runs all max_iter steps (masked after the stop): give
  # it the iterations the fit needs, so it does the same work forward.
  unr, unr_c = timeit(jax.jit(jax.grad(
      lambda X: loss(X, "unrolled", max_iter=n_iter))), (X,), repeats)
  back = imp - fwd
  print(f"{n:6d} {d:3d} {k:3d} {ctype:9s} {n_iter:5d} | fwd {fwd * 1e3:8.2f}"
        f" ms | implicit grad {imp * 1e3:8.2f} ms, backward {back * 1e3:8.2f}"
        f" ms = {back / fwd:5.2f} x fwd | unrolled grad {unr * 1e3:8.2f} ms"
        f" ({(unr - fwd) / fwd:5.2f} x) | compile fwd/imp/unr "
        f"{fwd_c:.1f}/{imp_c:.1f}/{unr_c:.1f} s", flush=True)
  return dict(n=n, d=d, k=k, covariance_type=ctype, n_iter=n_iter,
              forward_s=fwd, implicit_grad_s=imp, unrolled_grad_s=unr,
              backward_ratio=back / fwd)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--x64", action="store_true")
  parser.add_argument("--quick", action="store_true",
                      help="only the first two configurations")
  args = parser.parse_args()
  if args.x64:
    jax.config.update("jax_enable_x64", True)
  dtype = jnp.float64 if args.x64 else jnp.float32
  print(f"device: {jax.devices()[0].device_kind}, dtype {jnp.dtype(dtype)}, "
        f"median of {args.repeats}")
  print("     N   D   K type       iters")
  configs = CONFIGS[:2] if args.quick else CONFIGS
  for n, d, k, ctype in configs:
    bench(n, d, k, ctype, args.repeats, dtype)


if __name__ == "__main__":
  main()
