"""Every float32 matrix product in gmmjax asks for full float32 precision.

On GPUs (TensorFloat-32) and TPUs (bfloat16 passes) JAX's default float32
product rounds its inputs, which the fast forms' error guards do not allow
for. The products must carry ``Precision.HIGHEST`` unless the user chose a
default precision. Checked on the traced programs (jaxprs), so the test
means the same on a CPU-only machine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gmmjax as gx
from gmmjax._src import select, stats
from gmmjax._src.scale_online import online_init, online_update
from gmmjax._src.unconstrained import to_unconstrained

pytestmark = pytest.mark.usefixtures("guarded_kernels")  # the GEMM forms


def _dot_precisions(jaxpr):
  """``precision`` of every dot_general in a (closed) jaxpr, recursively."""
  found = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(eqn.params["precision"])
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          inner = getattr(sub, "jaxpr", None)
          if inner is not None:
            walk(inner if hasattr(inner, "eqns") else inner.jaxpr)
          elif hasattr(sub, "eqns"):
            walk(sub)

  walk(jaxpr.jaxpr)
  return found


HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)


def _data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(300, 3)), jnp.float32)


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_fit_init_and_gradient_products_are_full_float32(ctype):
  X = _data()
  key = jax.random.key(0)
  p = gx.init_params(key, X, 3, covariance_type=ctype)
  prior = gx.make_prior(X, 3)
  state = online_init(X, p)
  u = to_unconstrained(p)
  programs = {
      "init": lambda X: gx.init_params(key, X, 3, covariance_type=ctype),
      "implicit grad": jax.grad(
          lambda X: gx.fit(X, p, max_iter=3).log_likelihood),
      "MAP fit": lambda X: gx.fit(X, p, max_iter=3, prior=prior),
      "gradient fit": jax.grad(
          lambda u: gx.negative_log_likelihood(u, X)),
      "online": lambda X: online_update(X, state),
      "select": lambda X: select._sweep(
          key, X, None, jnp.asarray([1, 2]), jnp.asarray(1e-3, X.dtype),
          jnp.asarray(1e-6, X.dtype), n_slots=2, n_init=1,
          covariance_type=ctype, method="kmeans", max_iter=3, callback=None),
      "fit": lambda X: gx.fit(X, p, max_iter=3),
      "e_step_stats": lambda X: stats.e_step_stats(p, X),
      "log_prob": lambda X: gx.log_prob(p, X),
      "grad": jax.grad(lambda X: gx.log_likelihood(p, X)),
      "sample": lambda X: gx.sample(key, p, 10)[0],
  }
  if ctype != "full":  # the paths past the E-step/M-step kernels: once
    programs = {k: v for k, v in programs.items()
                if k in ("init", "fit", "grad", "sample")}
  for name, program in programs.items():
    arg = u if name == "gradient fit" else X
    precisions = _dot_precisions(jax.make_jaxpr(program)(arg))
    # Every program has products, but diag/spherical sampling (elementwise).
    assert precisions or (name == "sample" and ctype in ("diag", "spherical"))
    assert all(pr == HIGHEST for pr in precisions), (name, precisions)


def test_a_chosen_default_precision_is_respected():
  X = _data()
  p = gx.init_params(jax.random.key(0), X, 3)
  with jax.default_matmul_precision("tensorfloat32"):
    precisions = _dot_precisions(
        jax.make_jaxpr(lambda X: stats.e_step_stats(p, X))(X))
  assert precisions and all(pr != HIGHEST for pr in precisions)
