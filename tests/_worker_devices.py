"""Subprocess for tests/test_scale.py: sharded fits on 4 forced CPU devices.

Run as ``python _worker_devices.py IN.npz OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in the environment
(set by the test, so the parent process keeps its single device). It writes
every fit's results; the parent compares them to single-device fits.
"""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gmmjax as gx  # noqa: E402


def flat(prefix, result, out):
  p = result.params
  for name, value in [("weights", p.weights), ("means", p.means),
                      ("covariances", p.covariances),
                      ("log_likelihood", result.log_likelihood),
                      ("n_iter", result.n_iter),
                      ("converged", result.converged),
                      ("history", result.history),
                      ("failed", result.failed),
                      ("jitter", result.jitter),
                      ("n_degenerate", result.n_degenerate)]:
    out[f"{prefix}/{name}"] = np.asarray(value)


def params_from(data, ctype):
  return gx.make_params(data[f"p0_{ctype}/weights"], data[f"p0_{ctype}/means"],
                        data[f"p0_{ctype}/covariances"], covariance_type=ctype)


def main(src, dst):
  data = dict(np.load(src))
  X, X_odd, w = data["X"], data["X_odd"], data["w"]
  kw = dict(tol=float(data["tol"]), max_iter=int(data["max_iter"]))
  out = {"n_devices": np.asarray(jax.device_count())}
  auto = gx.data_mesh("data")
  explicit = jax.make_mesh((4,), ("data",),
                           axis_types=(jax.sharding.AxisType.Explicit,))
  out["explicit_mesh"] = np.asarray(
      explicit.axis_types[0] == jax.sharding.AxisType.Explicit)
  X_auto = jax.device_put(X, NamedSharding(auto, P("data")))
  X_explicit = jax.device_put(X, NamedSharding(explicit, P("data")))
  out["shards"] = np.asarray(len(X_auto.addressable_shards))
  for ctype in ("full", "diag"):
    p0 = params_from(data, ctype)
    # Plain gx.fit on a sharded array: XLA partitions the sums (Auto mesh).
    flat(f"plain/{ctype}", gx.fit(X_auto, p0, **kw), out)
    flat(f"sharded/{ctype}", gx.fit_sharded(X_auto, p0, **kw), out)
  p0 = params_from(data, "full")
  # Plain gx.fit on an Explicit mesh: viewed through an Auto one.
  flat("plain_explicit/full", gx.fit(X_explicit, p0, **kw), out)
  w_explicit = jax.device_put(w, NamedSharding(explicit, P("data")))
  flat("plain_explicit_weighted/full",
       gx.fit(X_explicit, p0, sample_weight=w_explicit, **kw), out)
  flat("explicit/full", gx.fit_sharded(X_explicit, p0, **kw), out)
  flat("weighted/full", gx.fit_sharded(X_auto, p0, sample_weight=w, **kw),
       out)
  # N not divisible by 4: padded with zero-weight rows.
  flat("odd/diag", gx.fit_sharded(X_odd, params_from(data, "diag"), **kw),
       out)
  best, runs = gx.fit_restarts_sharded(
      jax.random.key(int(data["seed"])), X_explicit, 3, n_init=2,
      covariance_type="full", method="kmeans", **kw)
  flat("restarts_best", best, out)
  flat("restarts_all", runs, out)
  best, runs = gx.fit_restarts(
      jax.random.key(int(data["seed"])), X_explicit, 3, n_init=2,
      covariance_type="full", method="kmeans", **kw)
  flat("plain_restarts_best", best, out)
  # Variational EM: the same sharded loop with the variational step, on
  # 302 rows (padded with zero-weight rows) with weights.
  prior, post0 = bayes_start(X_odd, data["resp_odd"])
  w_odd = np.concatenate([w, [1.5, 0.5]])
  result = gx.fit_bayes_sharded(X_odd, post0, prior, sample_weight=w_odd,
                                **kw)
  for name in BAYES_LEAVES:
    out[f"bayes/{name}"] = np.asarray(getattr(result.params, name))
  for name in ("log_likelihood", "n_iter", "converged", "history"):
    out[f"bayes/{name}"] = np.asarray(getattr(result, name))
  np.savez(dst, **out)


BAYES_LEAVES = ("weight_concentration", "mean_precision", "means",
                "degrees_of_freedom", "covariances", "precisions_cholesky")


def bayes_start(X, resp):
  """The prior and initial posterior (as test_scale's reference makes them)."""
  prior = gx.make_bayes_prior(X, resp.shape[1], covariance_type="full")
  return prior, gx.posterior_from_resp(X, resp, prior,
                                       covariance_type="full")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
