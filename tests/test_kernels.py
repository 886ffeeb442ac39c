"""E/M kernels (chunked, fused) against straightforward NumPy references.

Compile time is most of this file's time: the kernels' internal functions
(not jitted themselves) run under ``jax.jit`` here, as the fits run them,
instead of one small program per operation, and the guarded forms are set
once for the module, so that programs (and operations) compiled by one test
serve the next; tests that patch more than that drop the traces they made.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import force_small_chunks

import gmmjax as gx
from gmmjax._src import chunks, kernels, moments, packing
from gmmjax._src import covariance as cov_ops
from gmmjax._src import stats as stats_lib
from gmmjax._src.cov_matrix import expanded_full_maha

TYPES = ("full", "tied", "diag", "spherical")

N, D, K = 700, 3, 4  # 700 = 5 chunks of 128 + a remainder of 60


@pytest.fixture(scope="module", autouse=True)
def guarded_kernels_for_the_module():
  """Every test here checks the guarded GEMM forms (the data are small
  enough for the direct ones otherwise); test_direct_* check the direct
  path. conftest's ``guarded_kernels``, set once for the module: its traces
  are dropped when it starts and ends, not between tests."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(chunks, "DEFAULT_CHUNKS", dataclasses.replace(
        chunks.DEFAULT_CHUNKS, direct_max_entries=0))
    jax.clear_caches()
    yield
    jax.clear_caches()


# The internal functions tested here, each one program (as in a fit).
make_params = jax.jit(gx.make_params, static_argnames=("covariance_type",))
weighted_log_prob = jax.jit(stats_lib.weighted_log_prob,
                            static_argnames=("chunking",))
stats_from_resp = jax.jit(stats_lib.stats_from_resp,
                          static_argnames=("covariance_type",))


@functools.partial(jax.jit, static_argnames=("ctype",))
def fast_form(xc, mc, pc, ctype):
  """``(maha, fast_form_error, fast_form_bound)`` of centred operands."""
  forms = cov_ops.get(ctype)
  maha = kernels.mahalanobis_centred(xc, mc, pc, ctype)
  return (maha, forms.fast_form_error(xc, mc, pc, maha),
          forms.fast_form_bound(xc, mc, pc))


def _random_params(seed, ctype, scale=1.0, offset=0.0, K=K, D=D):
  """Random mixture parameters as float64 NumPy arrays."""
  rng = np.random.default_rng(seed)
  w = rng.uniform(0.5, 1.5, K)
  w /= w.sum()
  means = offset + scale * rng.normal(0, 3, (K, D))
  if ctype == "full":
    a = rng.normal(size=(K, D, D))
    cov = scale**2 * (a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(D))
  elif ctype == "tied":
    a = rng.normal(size=(D, D))
    cov = scale**2 * (a @ a.T + 0.5 * np.eye(D))
  elif ctype == "diag":
    cov = scale**2 * rng.uniform(0.3, 2.0, (K, D))
  else:
    cov = scale**2 * rng.uniform(0.3, 2.0, K)
  return w, means, cov


def _full_covs(cov, ctype, K=K, D=D):
  if ctype == "full":
    return cov
  if ctype == "tied":
    return np.broadcast_to(cov, (K, D, D))
  if ctype == "diag":
    return np.stack([np.diag(c) for c in cov])
  return np.stack([c * np.eye(D) for c in cov])


def _ref_log_gauss(X, means, covs):
  """log N(x | mu_k, Sigma_k) by solve and slogdet, (N, K)."""
  K, D = means.shape
  out = np.empty((X.shape[0], K))
  for k in range(K):
    diff = X - means[k]
    maha = np.einsum("nd,nd->n", diff, np.linalg.solve(covs[k], diff.T).T)
    _, logdet = np.linalg.slogdet(covs[k])
    out[:, k] = -0.5 * (D * np.log(2 * np.pi) + logdet + maha)
  return out


def _ref_stats(X, w, means, cov, ctype, sw, shift, temperature=None):
  K, D = means.shape
  wlp = _ref_log_gauss(X, means, _full_covs(cov, ctype, K, D)) + np.log(w)
  m = wlp.max(1, keepdims=True)
  log_norm = (m + np.log(np.exp(wlp - m).sum(1, keepdims=True)))[:, 0]
  z = wlp if temperature is None else wlp / temperature
  z = z - z.max(1, keepdims=True)
  resp = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  rw = resp * sw[:, None]
  xc = X[:, None, :] - np.broadcast_to(shift, (K, D))[None]  # (N, K, D)
  full = np.einsum("nk,nkd,nke->kde", rw, xc, xc)
  sxx = {"full": full, "tied": full.sum(0),
         "diag": np.einsum("kdd->kd", full),
         "spherical": np.einsum("kdd->k", full)}[ctype]
  return dict(count=sw.sum(), nk=rw.sum(0), sx=np.einsum("nk,nkd->kd", rw, xc),
              sxx=sxx,
              log_likelihood=(sw * log_norm).sum()), wlp


def _data(seed, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return offset + scale * rng.normal(0, 3, (N, D))


def _check_stats(got, ref, rtol):
  for name, value in ref.items():
    np.testing.assert_allclose(np.asarray(getattr(got, name)), value,
                               rtol=rtol, atol=rtol * 1e-3 * np.abs(
                                   value).max(), err_msg=name)


@pytest.mark.parametrize("ctype", TYPES)
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("per_component", [False, True])
def test_e_step_stats_matches_numpy(x64, request, ctype, chunked,
                                    per_component):
  if chunked:
    request.getfixturevalue("small_chunks")
  w, means, cov = _random_params(1, ctype)
  X = _data(2)
  sw = np.random.default_rng(3).uniform(0.0, 2.0, N)
  shift = np.array([0.3, -0.2, 0.1])
  if per_component:
    shift = means + 0.1
  params = make_params(w, means, cov, covariance_type=ctype)
  got = stats_lib.e_step_stats(params, jnp.asarray(X),
                               sample_weight=jnp.asarray(sw),
                               shift=jnp.asarray(shift))
  ref, wlp = _ref_stats(X, w, means, cov, ctype, sw, shift)
  _check_stats(got, ref, 1e-10)
  np.testing.assert_allclose(
      np.asarray(weighted_log_prob(params, jnp.asarray(X))), wlp, rtol=1e-10)


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_chunked_equals_unchunked_with_temperature(x64, retrace, ctype):
  w, means, cov = _random_params(4, ctype)
  params = make_params(w, means, cov, covariance_type=ctype)
  X = jnp.asarray(_data(5))
  whole = stats_lib.e_step_stats(params, X, temperature=2.0)
  force_small_chunks(retrace)
  assert "scan" in str(jax.make_jaxpr(stats_lib.e_step_stats)(
      params, X, temperature=2.0))
  chunked = stats_lib.e_step_stats(params, X, temperature=2.0)
  ref, _ = _ref_stats(np.asarray(X), w, means, cov, ctype, np.ones(N),
                      np.asarray(stats_lib.mixture_mean(params)), 2.0)
  _check_stats(whole, ref, 1e-10)
  _check_stats(chunked, ref, 1e-10)


@pytest.mark.parametrize("ctype", TYPES)
def test_second_moments_and_m_step_match_numpy(x64, ctype):
  rng = np.random.default_rng(6)
  X = _data(7)
  resp = rng.dirichlet(np.ones(K), N)
  sw = rng.uniform(0.5, 1.5, N)
  params = gx.m_step(jnp.asarray(X), jnp.log(jnp.asarray(resp)),
                     covariance_type=ctype, reg_covar=1e-3,
                     sample_weight=jnp.asarray(sw))
  rw = resp * sw[:, None]
  nk = rw.sum(0) + 10 * np.finfo(np.float64).eps
  mu = rw.T @ X / nk[:, None]
  full = np.stack([(rw[:, k, None] * (X - mu[k])).T @ (X - mu[k]) / nk[k]
                   for k in range(K)])
  cov = {"full": full + 1e-3 * np.eye(D),
         "tied": np.einsum("k,kde->de", nk, full) / nk.sum()
         + 1e-3 * np.eye(D),
         "diag": np.einsum("kdd->kd", full) + 1e-3,
         "spherical": np.einsum("kdd->k", full) / D + 1e-3}[ctype]
  np.testing.assert_allclose(np.asarray(params.means), mu, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(params.covariances), cov, rtol=1e-9)
  np.testing.assert_allclose(np.asarray(params.weights), nk / nk.sum(),
                             rtol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 5, 6])
def test_packed_moment_features_match_numpy(x64, d):
  """The wrapped-diagonal packing, odd and even D (duplicated last diagonal).

  ``rw^T @ moment_features`` unpacks to ``sum r x`` and ``sum r x x^T``; the
  expanded quadratic form on the same features gives the distances.
  """
  rng = np.random.default_rng(d)
  x = rng.normal(size=(40, d))
  r = rng.uniform(size=(40, 3))
  a = rng.normal(size=(3, d, d))
  prec_chol = np.tril(a) + 2 * np.eye(d)
  means = rng.normal(size=(3, d))

  @jax.jit
  def packed(x, r, means, prec_chol):
    feats = packing.packed_features(x)
    return (feats, *packing.split_packed(r.T @ feats, d),
            moments.second_moments(x, r, "full"),
            expanded_full_maha(feats, means, prec_chol))

  feats, sx, sxx, second, got = packed(*map(jnp.asarray,
                                            (x, r, means, prec_chol)))
  assert feats.shape == (40, packing.n_moment_features(d))
  np.testing.assert_allclose(sx, r.T @ x, rtol=1e-12)
  np.testing.assert_allclose(sxx, np.einsum("nk,nd,ne->kde", r, x, x),
                             rtol=1e-12)
  np.testing.assert_allclose(second, np.einsum("nk,nd,ne->kde", r, x, x),
                             rtol=1e-12)
  y = np.einsum("nkd,kde->nke", x[:, None, :] - means[None], prec_chol)
  np.testing.assert_allclose(got, np.sum(y * y, -1), rtol=1e-9, atol=1e-9)


def test_chunk_size_respects_budget():
  for ctype in TYPES:
    for n, k, d in [(10**6, 64, 32), (10**5, 16, 16), (4 * 10**6, 64, 64)]:
      c = chunks.chunk_size(n, k, d, ctype, jnp.float32, budget=8 << 20)
      assert 128 <= c <= n
      widest = k * d if ctype == "full" else max(3 * k, 2 * d + 1)
      assert c * widest * 4 <= 8 << 20 or c == 128
  # The exact fallbacks' (n, K, D) pieces stay within the default budget.
  f = chunks.fallback_chunk(10**6, 64, 64, jnp.float32)
  assert f * 64 * 64 * 4 <= chunks.chunk_bytes() and f >= 128
  assert chunks.chunk_size(50, 4, 2, "full", jnp.float32) == 50


def test_accelerator_chunk_budget(monkeypatch):
  """Off CPU: ChunkOptions.accelerator_bytes, at most 1/32 of what the device
  may allocate, no whitened-form factor; without memory statistics the
  constant. (The backend is patched: this machine has no accelerator.)"""
  monkeypatch.setattr(chunks, "on_cpu", lambda: False)
  for mem, want in ((None, 1 << 30), (128 << 30, 1 << 30),
                    (12 << 30, (12 << 30) // 32)):
    monkeypatch.setattr(chunks, "device_memory", lambda mem=mem: mem)
    assert chunks.chunk_bytes() == want
    n, k, d = 10**7, 64, 64
    c = chunks.chunk_size(n, k, d, "full", jnp.float32)
    assert c == want // (k * d * 4)
    c = chunks.chunk_size(n, k, d, "diag", jnp.float32)
    assert c == want // (3 * k * 4)
  monkeypatch.setattr(chunks, "on_cpu", lambda: True)
  c = chunks.chunk_size(10**7, 64, 64, "full", jnp.float32)
  assert c == (chunks.DEFAULT_CHUNKS.whitened_factor
               * chunks.DEFAULT_CHUNKS.cpu_bytes
               // (64 * 64 * 4))


def test_accelerator_blocks_bound_vmapped_memory(monkeypatch):
  """Off CPU, a vmapped EM loop runs at most
  ``ChunkOptions.accelerator_block_chunks`` (2) members' chunks at a time: 100 restarts of 1,000,000 x 64, K=64 (each
  capped at a 1 GiB chunk) in pairs; members smaller than a chunk together
  up to the same bytes; small problems all at once."""
  from gmmjax._src import batching
  monkeypatch.setattr(chunks, "on_cpu", lambda: False)
  monkeypatch.setattr(chunks, "device_memory", lambda: 96 << 30)
  gib = 1 << 30
  assert chunks.DEFAULT_CHUNKS.accelerator_block_chunks == 2
  assert batching.block_size(100, 10**6 * 64 * 64 * 4) == 2
  assert batching.block_size(100, gib // 2) == 4
  assert batching.block_size(100, gib // 64) == 100
  assert batching.block_size(2, 10**6 * 64 * 64 * 4) == 2
  # A 12 GB device: 384 MB chunks, blocks of 2 of them.
  monkeypatch.setattr(chunks, "device_memory", lambda: 12 << 30)
  assert batching.block_size(100, 10**6 * 64 * 64 * 4) == 2
  assert batching.block_size(100, (12 << 30) // 64) == 4


@pytest.mark.parametrize("ctype", ["full"])
def test_gradients_chunked_match_unchunked(x64, retrace, ctype):
  w, means, cov = _random_params(8, ctype)
  params = make_params(w, means, cov, covariance_type=ctype)
  X = jnp.asarray(_data(9)[:260])
  sw = jnp.asarray(np.random.default_rng(10).uniform(0.5, 1.5, 260))

  def objective(X, sw, means):
    s = stats_lib.e_step_stats(params.replace(means=means), X, sample_weight=sw)
    return (s.log_likelihood + jnp.sum(jnp.sin(s.sx)) + jnp.sum(s.sxx ** 2)
            * 1e-4 + jnp.sum(jnp.cos(s.nk)))

  g = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))
  whole = g(X, sw, params.means)
  force_small_chunks(retrace)
  g = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))  # retrace: chunked
  chunked = g(X, sw, params.means)
  for a, b in zip(whole, chunked):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                               atol=1e-12)
  # Central finite difference along a random direction of X.
  v = jnp.asarray(np.random.default_rng(11).normal(size=X.shape))
  eps = 1e-6
  f = jax.jit(objective)
  fd = (f(X + eps * v, sw, params.means)
        - f(X - eps * v, sw, params.means)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.sum(chunked[0] * v)), float(fd),
                             rtol=1e-6)
  # Forward mode agrees with reverse mode through the scan.
  _, tangent = jax.jit(lambda X, v: jax.jvp(
      lambda X: objective(X, sw, params.means), (X,), (v,)))(X, v)
  np.testing.assert_allclose(float(tangent), float(fd), rtol=1e-6)


def _blobs(seed, n_per=250):
  rng = np.random.default_rng(seed)
  centers = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, -2.0], [-4.0, 4.0, 1.0],
                      [1.0, -5.0, 3.0]])
  parts = [rng.normal(c, [1.0, 0.6, 1.4], (n_per, D)) for c in centers]
  return np.concatenate(parts)


@pytest.mark.parametrize("ctype", TYPES)
def test_float32_agrees_with_float64(retrace, ctype):
  """Offset or scaled data: float32 EM stays finite and matches float64.

  The offsets are 1e4 times the clusters' spread: float32 data carry about
  7 digits, so a larger ratio quantises the data themselves (and means
  stored in float32) beyond a 1e-4 agreement, whatever the kernels do.
  The three cases differ in values only: one test runs them, on the same
  programs.
  """
  force_small_chunks(retrace)
  for scale, offset in [(100.0, 1e6), (1e-6, 0.0), (1e6, 0.0)]:
    case = f"scale={scale}, offset={offset}"
    X32 = (offset + scale * _blobs(12)).astype(np.float32)
    # Soft responsibilities around the true labels: EM then converges to
    # one optimum, instead of amplifying round-off while breaking symmetry.
    rng = np.random.default_rng(13)
    labels = np.repeat(np.arange(K), X32.shape[0] // K)
    resp = 0.7 * np.eye(K)[labels] + 0.3 * rng.dirichlet(np.ones(K),
                                                           X32.shape[0])
    reg = 1e-6 * scale**2

    def run(dtype, X32=X32, resp=resp, reg=reg):
      X = jnp.asarray(X32.astype(dtype))
      p = gx.m_step(X, jnp.log(jnp.asarray(resp, dtype)),
                    covariance_type=ctype, reg_covar=reg)
      return gx.fit(X, p, max_iter=10, tol=0.0, reg_covar=reg)

    r32 = run(np.float32)
    with jax.enable_x64(True):
      r64 = run(np.float64)
    assert not bool(r32.failed), case
    assert np.all(np.isfinite(np.asarray(r32.history)[:10])), case
    # The log-density of data scaled by s shifts by -D log s; compare the
    # scale-free part.
    base = D * np.log(scale)
    np.testing.assert_allclose(float(r32.log_likelihood) + base,
                               float(r64.log_likelihood) + base, rtol=1e-4,
                               atol=1e-4, err_msg=case)
    np.testing.assert_allclose(
        (np.asarray(r32.params.means) - offset) / scale,
        (np.asarray(r64.params.means) - offset) / scale, rtol=1e-3,
        atol=1e-3, err_msg=case)


@pytest.mark.parametrize("ctype", TYPES)
@pytest.mark.parametrize("k,d", [(3, 2), (10, 6)])
def test_direct_e_step_stats_match_numpy(x64, ctype, k, d):
  """The direct path small problems take (no GEMM forms, no guard).

  (3, 2) takes the unrolled tiny-D, tiny-K code; (10, 6) the einsum one.
  """
  direct = chunks.ChunkOptions(direct_max_entries=1 << 30)
  w, means, cov = _random_params(30 + d, ctype, K=k, D=d)
  rng = np.random.default_rng(31)
  X = jnp.asarray(rng.normal(0, 3, (200, d)))
  sw = rng.uniform(0.0, 2.0, 200)
  params = make_params(w, means, cov, covariance_type=ctype)
  shift = means + 0.1
  args = (params, X, jnp.asarray(sw), jnp.asarray(shift))

  def e_step_stats(p, X, w, shift):
    return stats_lib.e_step_stats(p, X, sample_weight=w, shift=shift,
                                  chunking=direct)

  # No guard: its batch-wide predicate (any_in_batch) is absent.
  assert "custom_vmap" not in str(jax.make_jaxpr(e_step_stats)(*args))
  got = e_step_stats(*args)
  ref, wlp = _ref_stats(np.asarray(X), w, means, cov, ctype, sw, shift)
  _check_stats(got, ref, 1e-10)
  np.testing.assert_allclose(
      np.asarray(weighted_log_prob(params, X, chunking=direct)), wlp,
      rtol=1e-10)


@pytest.mark.parametrize("ctype", TYPES)
def test_exact_fallbacks_in_pieces_match_numpy(x64, retrace, ctype):
  """The exact per-component paths, forced on (moments cut in 64 rows).

  With both tolerances 0 every chunk takes the fallbacks: every
  component's distances recomputed from differences, one component at a
  time, and the moments from ``(n, K, D)`` differences as a scan over
  pieces of one 700-row chunk; they must give the reference statistics.
  """
  retrace(kernels.FAST_FORM_TOL, "float64", 0.0)
  retrace(kernels.MOMENT_TOL, "float64", 0.0)
  retrace(chunks, "fallback_chunk", lambda *a: 64)
  w, means, cov = _random_params(1, ctype)
  X = _data(2, offset=50.0)
  sw = np.random.default_rng(3).uniform(0.0, 2.0, N)
  params = make_params(w, means + 50.0, cov, covariance_type=ctype)
  shift = np.asarray(params.means) + 0.1
  args = (params, jnp.asarray(X), jnp.asarray(sw), jnp.asarray(shift))

  def e_step_stats(p, X, w, shift):
    return stats_lib.e_step_stats(p, X, sample_weight=w, shift=shift)

  jaxpr = str(jax.make_jaxpr(e_step_stats)(*args))
  assert jaxpr.count("scan") >= 2  # both fallbacks loop
  got = e_step_stats(*args)
  ref, _ = _ref_stats(X, w, means + 50.0, cov, ctype, sw, shift)
  _check_stats(got, ref, 1e-10)


def test_float32_collapsed_component_recomputes_only_its_column():
  """A collapsed component (variance 1e-6) far from the others, float32.

  Its fast whitened distances lose digits (|P| ~ 1e3 times |x - c| ~ 30),
  so the guard must flag that component alone and recompute its column
  from differences: the column matches float64, the other columns are the
  fast form's values unchanged.
  """
  rng = np.random.default_rng(31)
  d, k = 8, 4
  means = np.concatenate([rng.normal(0, 2, (k - 1, d)),
                          np.full((1, d), 30.0)])
  a = rng.normal(size=(k, d, d))
  cov = a @ np.swapaxes(a, 1, 2) / d + 0.5 * np.eye(d)
  cov[-1] = 1e-6 * np.eye(d)
  X = np.concatenate([rng.normal(0, 3, (690, d)),
                      30.0 + 1e-3 * rng.normal(size=(10, d))])
  prec_chol = np.linalg.cholesky(np.linalg.inv(cov)).swapaxes(1, 2)
  X32, m32, p32 = (jnp.asarray(v, jnp.float32) for v in (X, means, prec_chol))
  centre = jnp.mean(m32, axis=0)

  got = np.asarray(jax.jit(lambda x, m, p: kernels.guarded_mahalanobis(
      x, centre, m, p, "full"))(X32, m32, p32))
  fast = jax.jit(lambda x, m, p: kernels.mahalanobis_centred(
      x - centre, m - centre, p, "full"))(X32, m32, p32)
  err = jax.jit(cov_ops.get("full").fast_form_error)(
      X32 - centre, m32 - centre, p32, fast)
  off = np.asarray(err) > kernels.fast_form_tol(jnp.float32) * np.maximum(
      np.asarray(fast), np.float32(1.0))
  assert off[:, -1].any() and not off[:, :-1].any()  # the case is exercised

  # Reference in float64 on the float32-rounded inputs.
  x64, m64, p64 = (np.asarray(v, np.float64) for v in (X32, m32, p32))
  y = np.einsum("nkd,kde->nke", x64[:, None, :] - m64[None], p64)
  ref = np.sum(y * y, axis=-1)
  np.testing.assert_allclose(got[:, -1], ref[:, -1], rtol=1e-5)
  # The other columns are the fast form's: equal up to how two programs
  # round (XLA may contract or fuse them differently), 8 float32 eps.
  np.testing.assert_allclose(got[:, :-1], np.asarray(fast)[:, :-1],
                             rtol=1e-6, atol=0)
  np.testing.assert_allclose(got[:, :-1], ref[:, :-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ctype", TYPES)
def test_fast_form_bound_bounds_every_entry(x64, ctype, dtype):
  """The chunk-wide bound is at least every entry's error / max(maha, 1).

  The entries' estimate (``fast_form_error``) is what the guard compares
  with the tolerance; the bound decides when that comparison is skipped,
  so it must never be below it. The data mix samples near the means (maha
  around 1, where ``sqrt(maha) / max(maha, 1)`` peaks), a far outlier
  (the chunk's largest norm) and narrow, anisotropic components.
  """
  rng = np.random.default_rng(41)
  d, k = 6, 5
  w, means, cov = _random_params(42, ctype, K=k, D=d)
  if ctype != "tied":
    cov[0] = cov[0] * 1e-4  # a narrow component
  params = make_params(w, means, cov, covariance_type=ctype)
  near = means[rng.integers(0, k, 300)] + rng.normal(0, 0.3, (300, d))
  X = np.concatenate([near, [np.full(d, 40.0)], rng.normal(0, 5, (99, d))])
  xc = jnp.asarray(X - means.mean(0), dtype)
  mc = jnp.asarray(means - means.mean(0), dtype)
  pc = jnp.asarray(params.precisions_cholesky, dtype)
  maha, err, bound = map(np.asarray, fast_form(xc, mc, pc, ctype))
  ratio = np.max(err / np.maximum(maha, maha.dtype.type(1.0)), axis=0)
  assert bound.shape == (k,)
  assert np.all(bound >= ratio * (1 - 1e-5)), (bound, ratio)
  # Tight where it can be: a one-sample chunk at whitened distance 1 from a
  # component's mean (maha = 1, where both sqrt(maha) / max(maha, 1) and
  # maha / max(maha, 1) peak) has the bound itself as its ratio (tied
  # bounds |x P| by |x| |P|_F, so only soundness is checked there).
  covs = _full_covs(np.asarray(params.covariances, np.float64), ctype, k, d)
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  for j in range(k):
    x1 = means[j] + np.linalg.cholesky(covs[j]) @ u
    x1c = jnp.asarray((x1 - means.mean(0))[None, :], dtype)
    m1, e1, b1 = map(np.asarray, fast_form(x1c, mc, pc, ctype))
    r1 = (e1 / np.maximum(m1, m1.dtype.type(1.0)))[0, j]
    b1 = float(b1[j])
    assert b1 >= r1 * (1 - 1e-4), (j, b1, r1)
    if ctype != "tied":
      assert b1 <= r1 * 1.05, (j, b1, r1)  # float32 maha rounds off by ~1%
  # (Loose by design where the largest norm is far in whitened units, as
  # above: the entries are then estimated.)


@pytest.mark.parametrize("ctype", TYPES)
def test_guard_shortcut_changes_no_distance(monkeypatch, ctype):
  """Skipping the per-entry estimate where the bound allows it leaves the
  guarded distances bit for bit as with the estimate always computed, on
  ordinary float32 data (the shortcut taken) and on data with a narrow
  component far from the others (the estimate computed, a column redone).
  """
  d, k = 8, 4
  w, means, cov = _random_params(51, ctype, K=k, D=d)
  rng = np.random.default_rng(52)
  ordinary = means[rng.integers(0, k, 600)] + rng.normal(0, 1, (600, d))
  narrow_means = means.copy()
  narrow_means[-1] = 30.0
  narrow_cov = np.array(cov, copy=True)
  if ctype != "tied":
    narrow_cov[-1] = narrow_cov[-1] * 1e-6
  cases = {"ordinary": (ordinary, means, cov),
           "narrow": (np.concatenate([ordinary, 30.0 + 1e-3 * rng.normal(
               size=(10, d))]), narrow_means, narrow_cov)}
  for label, (X, mu, c) in cases.items():
    p = make_params(jnp.asarray(w, jnp.float32),
                       jnp.asarray(mu, jnp.float32),
                       jnp.asarray(c, jnp.float32), covariance_type=ctype)
    X32 = jnp.asarray(X, jnp.float32)
    centre = jnp.mean(p.means, axis=0)

    def run(X32=X32, p=p, centre=centre):
      return np.asarray(jax.jit(lambda x, m, pc: kernels.guarded_mahalanobis(
          x, centre, m, pc, ctype))(X32, p.means, p.precisions_cholesky))

    _, _, bound = fast_form(X32 - centre, p.means - centre,
                            p.precisions_cholesky, ctype)
    shortcut = bool(jnp.all(bound <= kernels.fast_form_tol(jnp.float32)))
    if label == "ordinary" and ctype == "full":
      assert shortcut  # whitened float32 distances of ordinary data
    if label == "narrow":
      assert not shortcut
    got = run()
    with monkeypatch.context() as mp:
      mp.setattr(cov_ops.get(ctype), "fast_form_bound",
                 lambda *a: jnp.full((k,), jnp.inf, jnp.float32))
      always = run()
    # One program with the shortcut, one without: the same distances up to
    # the two programs' rounding (8 float32 eps).
    np.testing.assert_allclose(got, always, rtol=1e-6, atol=0, err_msg=label)


@pytest.mark.parametrize("ctype,d", [  # D <= 4: the unrolled direct forms
    ("full", 3), ("full", 6), ("tied", 6), ("diag", 6), ("spherical", 3)])
def test_exact_columns_differentiate_and_vmap_like_direct(x64, retrace, ctype,
                                                           d):
  """With tolerance 0 every component's column takes the exact per-column
  recompute; gradients (reverse and forward) and a vmap over two parameter
  sets must equal the direct form's, which has no guard at all."""
  retrace(kernels.FAST_FORM_TOL, "float64", 0.0)
  w, means, cov = _random_params(40 + d, ctype, D=d)
  prec = make_params(w, means, cov, covariance_type=ctype)
  X = jnp.asarray(np.random.default_rng(d).normal(0, 3, (200, d)))
  centre = jnp.mean(prec.means, axis=0)

  def value(fn, means, pc):
    out = fn(X, means, pc)
    return jnp.sum(jnp.sin(out / 10.0))

  guarded = functools.partial(kernels.guarded_mahalanobis, centre=centre,
                              covariance_type=ctype)
  direct = functools.partial(kernels.direct_mahalanobis,
                             covariance_type=ctype)
  fns = {"guarded": lambda x, m, p: guarded(x, means=m, prec_chol=p),
         "direct": lambda x, m, p: direct(x, m, p)}
  args = (prec.means, prec.precisions_cholesky)
  grads = {k: jax.jit(jax.grad(functools.partial(value, f), argnums=(0, 1)))(
      *args) for k, f in fns.items()}
  for a, b in zip(grads["guarded"], grads["direct"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                               atol=1e-12)
  tangents = (jnp.ones_like(args[0]), 0.1 * jnp.ones_like(args[1]))
  jvps = {k: jax.jit(lambda a, t, f=f: jax.jvp(
      functools.partial(value, f), a, t)[1])(args, tangents)
          for k, f in fns.items()}
  np.testing.assert_allclose(float(jvps["guarded"]), float(jvps["direct"]),
                             rtol=1e-9)
  batched = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a]), args)
  outs = {k: jax.jit(jax.vmap(lambda m, p, f=f: f(X, m, p)))(*batched)
          for k, f in fns.items()}
  np.testing.assert_allclose(np.asarray(outs["guarded"]),
                             np.asarray(outs["direct"]), rtol=1e-10)


def test_vmap_over_params_matches_loop(x64):
  X = jnp.asarray(_data(14))
  batch = [make_params(*_random_params(s, "full")) for s in (15, 16)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *batch)
  out = jax.vmap(lambda p: stats_lib.e_step_stats(p, X))(stacked)
  for i, p in enumerate(batch):
    one = stats_lib.e_step_stats(p, X)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(out)):
      np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a), rtol=1e-10)


@pytest.mark.parametrize("ctype", TYPES)
def test_params_from_stats_with_component_shift(x64, ctype):
  """M-step from per-component statistics equals scikit-learn's formulas."""
  rng = np.random.default_rng(20)
  X = _data(21)
  resp = rng.dirichlet(np.ones(K), N)
  shift = rng.normal(size=(K, D))
  stats = stats_from_resp(jnp.asarray(X), jnp.asarray(resp),
                          sample_weight=None, shift=jnp.asarray(shift),
                          covariance_type=ctype)
  p = stats_lib.params_from_stats(stats, jnp.asarray(shift),
                                  covariance_type=ctype, reg_covar=1e-3)
  ref = gx.m_step(jnp.asarray(X), jnp.log(jnp.asarray(resp)),
                  covariance_type=ctype, reg_covar=1e-3)
  np.testing.assert_allclose(np.asarray(p.means), np.asarray(ref.means),
                             rtol=1e-10)
  np.testing.assert_allclose(np.asarray(p.covariances),
                             np.asarray(ref.covariances), rtol=1e-9)


def test_float32_nearly_singular_component_with_component_shift():
  """A component of 20 points in 32 dimensions, far from the mixture mean.

  Its covariance is singular but for reg_covar. Around one global shift
  float32 loses ~eps * |mu - c|^2 >> reg_covar; around the component's
  own mean the M-step must stay positive definite and match float64.
  """
  rng = np.random.default_rng(22)
  d = 32
  big = rng.normal(0, 1, (600, d))
  small = 16.0 + 0.3 * rng.normal(0, 1, (20, d))
  X = np.concatenate([big, small]).astype(np.float32)
  resp = np.zeros((620, 2))
  resp[:600, 0] = 1.0
  resp[600:, 1] = 1.0

  @jax.jit
  def m_step_jit(Xj, r):
    # Shifts: the responsibility-weighted means, rounded to the dtype.
    shift = (r.T @ Xj) / jnp.sum(r, axis=0)[:, None]
    s = stats_lib.stats_from_resp(Xj, r, sample_weight=None, shift=shift,
                                  covariance_type="full")
    return stats_lib.params_from_stats(s, shift, covariance_type="full",
                                       reg_covar=1e-6)

  def m_step(dtype):
    return m_step_jit(jnp.asarray(X.astype(dtype)), jnp.asarray(resp, dtype))

  p32 = m_step(np.float32)
  with jax.enable_x64(True):
    p64 = m_step(np.float64)
  assert np.all(np.isfinite(np.asarray(p32.precisions_cholesky)))
  ev32 = np.linalg.eigvalsh(np.asarray(p32.covariances, np.float64))
  assert ev32.min() > 0
  np.testing.assert_allclose(np.asarray(p32.covariances),
                             np.asarray(p64.covariances), rtol=0, atol=2e-5)
