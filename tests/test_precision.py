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
from gmmjax._src import matmul as mm
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
  """Large enough that the (n, K, D) products are matrix products (smaller
  ones are broadcast sums, exact float32 everywhere: matmul.SMALL_PRODUCT)."""
  rng = np.random.default_rng(0)
  X = jnp.asarray(rng.normal(size=(3000, 3)), jnp.float32)
  assert X.shape[0] * 3 * 3 > mm.SMALL_PRODUCT
  return X


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
      "sample": lambda X: gx.sample(key, p, X.shape[0])[0],
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


def test_small_products_are_the_products():
  """Below matmul.SMALL_PRODUCT multiply-adds a product is a broadcast sum:
  its values are numpy's (float64), for matmul's shapes (vectors,
  broadcast batches) and einsum's (two and three operands, transposed
  outputs), at the bound and one past it (a matrix product again)."""
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    for sa, sb in [((3,), (3,)), ((3,), (3, 4)), ((5, 3), (3,)),
                   ((5, 3), (3, 4)), ((2, 5, 3), (2, 3, 4)),
                   ((5, 3), (2, 3, 4)), ((2, 1, 5, 3), (4, 3, 2)),
                   ((64, 16), (16, 16)), ((64, 16), (16, 17))]:
      a, b = rng.normal(size=sa), rng.normal(size=sb)
      got = mm.matmul(jnp.asarray(a), jnp.asarray(b))
      assert got.shape == np.matmul(a, b).shape
      np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-12,
                                 atol=1e-12)
    for sub, shapes in [("nkd,nke->kde", [(7, 3, 2), (7, 3, 4)]),
                        ("k,kd,ke->de", [(3,), (3, 2), (3, 4)]),
                        ("nd,kd->nk", [(9, 2), (3, 2)]),
                        ("kij,kj->ki", [(3, 2, 2), (3, 2)]),
                        ("kde->ked", [(3, 2, 4)]),
                        ("nkd,nke->kde", [(512, 8, 2), (512, 8, 2)]),
                        ("nkd,nke->kde", [(513, 8, 2), (513, 8, 2)])]:
      ops = [rng.normal(size=s) for s in shapes]
      got = mm.einsum(sub, *map(jnp.asarray, ops))
      np.testing.assert_allclose(got, np.einsum(sub, *ops), rtol=1e-12,
                                 atol=1e-12)
    # The bound: 512 * 8 * 2 * 2 terms are within it, 513 * ... are not.
    small = jax.make_jaxpr(lambda a: mm.einsum("nkd,nke->kde", a, a))(
        jnp.ones((512, 8, 2)))
    large = jax.make_jaxpr(lambda a: mm.einsum("nkd,nke->kde", a, a))(
        jnp.ones((513, 8, 2)))
    small_mm = jax.make_jaxpr(mm.matmul)(jnp.ones((64, 16)),
                                         jnp.ones((16, 16)))
    large_mm = jax.make_jaxpr(mm.matmul)(jnp.ones((64, 16)),
                                         jnp.ones((16, 17)))
  assert 512 * 8 * 2 * 2 <= mm.SMALL_PRODUCT < 513 * 8 * 2 * 2
  assert 64 * 16 * 16 <= mm.SMALL_PRODUCT < 64 * 16 * 17
  assert not _dot_precisions(small) and not _dot_precisions(small_mm)
  assert _dot_precisions(large) == _dot_precisions(large_mm) == [HIGHEST]


def test_small_products_keep_what_jnp_refuses_or_types():
  """The small forms do not widen what jnp accepts (a contracted axis of
  size 1 against another size, an output letter no input has) nor change
  result dtypes (integer and boolean products are jnp's), and need no
  implicit rank promotion."""
  with pytest.raises(TypeError):
    mm.matmul(jnp.ones((3, 1)), jnp.ones((5, 6)))
  with pytest.raises(ValueError):
    mm.einsum("ij->ijk", jnp.ones((3, 4)))
  for dtype in (jnp.int32, jnp.bool_, jnp.float32):
    a, b = jnp.ones((3, 4), dtype), jnp.ones((4, 2), dtype)
    assert mm.matmul(a, b).dtype == jnp.matmul(a, b).dtype
    assert (mm.einsum("ij,jk->ik", a, b).dtype
            == jnp.einsum("ij,jk->ik", a, b).dtype)
  with jax.numpy_rank_promotion("raise"):
    np.testing.assert_allclose(
        mm.matmul(jnp.ones((2, 3, 4)), jnp.arange(4.0)), np.full((2, 3), 6.0))
    assert mm.matmul(jnp.ones((3, 4)), jnp.ones((2, 4, 5))).shape == (2, 3, 5)


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_a_small_problem_has_no_matrix_product(ctype):
  """A small fit's programs hold no dot_general: on CPU an unfused one is a
  library call whose first use in a process costs ~25 ms. (Larger ones
  keep products past the bound: a first fit of 1,000 x 2 in 8 slots has
  two second-moment products of 32,768 terms, which XLA's CPU backend
  fuses into YNNPACK calls, without that cost.)"""
  rng = np.random.default_rng(0)
  X = jnp.asarray(rng.normal(size=(300, 3)), jnp.float32)
  key = jax.random.key(0)
  p = gx.init_params(key, X, 3, covariance_type=ctype)
  for program in (
      lambda X: gx.init_params(key, X, 3, covariance_type=ctype),
      lambda X: gx.fit(X, p, max_iter=3),
      lambda X: select._sweep(
          key, X, None, jnp.asarray([1, 2]), jnp.asarray(1e-3, X.dtype),
          jnp.asarray(1e-6, X.dtype), n_slots=2, n_init=1,
          covariance_type=ctype, method="kmeans++", max_iter=3,
          callback=None),
      lambda X: gx.log_prob(p, X)):
    assert not _dot_precisions(jax.make_jaxpr(program)(X))
