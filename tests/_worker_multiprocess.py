"""Subprocess for tests/test_scale.py: one of two JAX processes on localhost.

Run as ``python _worker_multiprocess.py PORT PROCESS_ID IN.npz OUT.npz``.
Each process holds only its own rows of the data (rows ``[0, split)`` or
``[split, N)``), joins the other with ``jax.distributed.initialize`` (CPU
collectives over gloo) and fits: ``fit_sharded`` on the global array from
``global_data``, and ``fit_chunked`` streaming its own rows with
``reduce=process_sum``. Process 0 writes the results.
"""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(port, process_id, src, dst):
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=process_id,
                             initialization_timeout=60)
  import gmmjax as gx

  data = dict(np.load(src))
  split = int(data["split"])
  X = data["X"]
  X_local = X[:split] if process_id == 0 else X[split:]
  kw = dict(tol=float(data["tol"]), max_iter=int(data["max_iter"]))
  out = {"process_count": np.asarray(jax.process_count()),
         "device_count": np.asarray(jax.device_count()),
         "local_rows": np.asarray(X_local.shape[0])}
  Xg, wg = gx.global_data(X_local)
  out["global_rows"] = np.asarray(Xg.shape[0])
  for ctype in ("full", "diag"):
    p0 = gx.make_params(data[f"p0_{ctype}/weights"],
                        data[f"p0_{ctype}/means"],
                        data[f"p0_{ctype}/covariances"], covariance_type=ctype)
    results = {
        "sharded": gx.fit_sharded(Xg, p0, sample_weight=wg, **kw),
        "chunked": gx.fit_chunked(X_local, p0, chunk_size=40,
                                     reduce=gx.process_sum, **kw)}
    for mode, result in results.items():
      result = gx.local_copy(result)
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
        out[f"{mode}/{ctype}/{name}"] = np.asarray(value)
  if process_id == 0:
    np.savez(dst, **out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
