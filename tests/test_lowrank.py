"""Low-rank-plus-diagonal covariances (mixtures of factor analysers).

References are written here, independently of the library: SciPy's
multivariate normal on the dense ``W W^T + diag(psi)``, a NumPy transcription
of Ghahramani & Hinton's EM update (augmented loadings ``[W, mu]``, per-
component noise as in McLachlan & Peel), finite differences, and data drawn
in NumPy from a known mixture of factor analysers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import gmmjax as gx

K, D, Q = 3, 5, 2
N = 300
REG = 1e-3
MAX_ITER = 150  # one history length (one program) for every long fit


def _dense(W, psi):
  return np.einsum("kdq,keq->kde", W, W) + psi[:, :, None] * np.eye(
      W.shape[1])


def _random_params(seed=0, k=K, d=D, q=Q, spread=3.0, noise=(0.2, 1.5)):
  rng = np.random.default_rng(seed)
  W = rng.normal(size=(k, d, q))
  psi = rng.uniform(*noise, size=(k, d))
  means = spread * rng.normal(size=(k, d))
  weights = rng.dirichlet(np.ones(k) * 5)
  return weights, means, W, psi


def _truth():
  """A mixture of factor analysers with separated components."""
  weights, means, W, psi = _random_params(11, spread=8.0, noise=(0.05, 0.2))
  return np.full(K, 1.0 / K), means, 2.0 * W, psi


def _data(seed=1, n=N):
  rng = np.random.default_rng(seed)
  weights, means, W, psi = _truth()
  labels = rng.choice(K, size=n, p=weights)
  z = rng.normal(size=(n, Q))
  eps = rng.normal(size=(n, D)) * np.sqrt(psi[labels])
  return means[labels] + np.einsum("ndq,nq->nd", W[labels], z) + eps


def _reference_step(X, sw, weights, means, W, psi, reg):
  """One EM iteration of Ghahramani & Hinton (1996), per-component noise."""
  k, d, q = W.shape
  cov = _dense(W, psi)
  logp = np.stack([np.log(weights[j]) + multivariate_normal(
      means[j], cov[j]).logpdf(X) for j in range(k)], 1)
  ll = np.sum(sw * logsumexp(logp, 1)) / np.sum(sw)
  r = np.exp(logp - logsumexp(logp, 1, keepdims=True)) * sw[:, None]
  new_w, new_m = r.sum(0) / r.sum(), np.zeros_like(means)
  new_W, new_psi = np.zeros_like(W), np.zeros_like(psi)
  for j in range(k):
    beta = W[j].T @ np.linalg.inv(cov[j])  # E[z|x] = beta (x - mu)
    ez = np.hstack([(X - means[j]) @ beta.T, np.ones((len(X), 1))])
    ezz = np.einsum("n,ni,nj->ij", r[:, j], ez, ez)
    ezz[:q, :q] += r[:, j].sum() * (np.eye(q) - beta @ W[j])
    aug = np.einsum("n,nd,nj->dj", r[:, j], X, ez) @ np.linalg.inv(ezz)
    new_W[j], new_m[j] = aug[:, :q], aug[:, q]
    resid = np.einsum("n,nd,nd->d", r[:, j], X - ez @ aug.T, X)
    new_psi[j] = resid / r[:, j].sum() + reg
  return new_w, new_m, new_W, new_psi, ll


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def fitted(data):
  """150 iterations from the PCA initialisation (float64), and that init."""
  with jax.enable_x64(True):
    p0 = gx.init_params(jax.random.key(0), data, K,
                        covariance_type="lowrank", rank=Q, reg_covar=1e-6)
    return p0, jax.device_get(gx.fit(data, p0, max_iter=MAX_ITER, tol=0.0,
                                     reg_covar=1e-6))


def test_log_prob_and_dense_matrices_equal_scipy(x64):
  weights, means, W, psi = _random_params()
  p = gx.make_params(weights, means, (W, psi), covariance_type="lowrank")
  assert p.rank == Q and p.covariances.shape == (K, D, Q + 1)
  X = _data(2, 50)
  cov = _dense(W, psi)
  ref = logsumexp(np.stack([np.log(weights[j]) + multivariate_normal(
      means[j], cov[j]).logpdf(X) for j in range(K)], 1), 1)
  np.testing.assert_allclose(gx.log_prob(p, X), ref, rtol=1e-12)
  np.testing.assert_allclose(p.dense_covariances, cov, rtol=1e-13)
  np.testing.assert_allclose(p.precisions, np.linalg.inv(cov), atol=1e-12)
  np.testing.assert_allclose(p.loadings, W)
  np.testing.assert_allclose(p.noise, psi)


def test_one_iteration_equals_numpy_reference(x64, data):
  weights, means, W, psi = _random_params(3)
  p = gx.make_params(weights, means, (W, psi), covariance_type="lowrank")
  sw = np.random.default_rng(5).uniform(0.2, 2.0, N)
  ref_w, ref_m, ref_W, ref_psi, ref_ll = _reference_step(
      data, sw, weights, means, W, psi, REG)
  res = gx.fit(data, p, max_iter=1, tol=0.0, reg_covar=REG,
               sample_weight=sw)
  # Statistics around one point (the E-step's default shift) instead of the
  # fit's per-component means: the same update.
  stats = gx.e_step_stats(p, data, sample_weight=sw)
  other = gx.params_from_stats(stats, weights @ means,
                               covariance_type="lowrank", reg_covar=REG)
  for got in (res.params, other):
    np.testing.assert_allclose(got.weights, ref_w, rtol=1e-10)
    np.testing.assert_allclose(got.means, ref_m, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got.loadings, ref_W, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got.noise, ref_psi, rtol=1e-10)
  np.testing.assert_allclose(res.history[0], ref_ll, rtol=1e-12)


def test_log_likelihood_never_decreases(fitted):
  _, res = fitted
  h = np.asarray(res.history)[:int(res.n_iter)]
  assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:])), np.diff(h).min()
  assert h[-1] > h[0]


def test_rank_d_minus_1_approaches_the_full_gaussian(x64, data):
  # One component: full's maximum likelihood is the sample covariance, in
  # closed form; q = D - 1 loadings plus noise come within a hair of it.
  X = data[:100]
  mean = X.mean(0)
  best = multivariate_normal(mean, np.cov(X.T, bias=True)).logpdf(X).mean()
  p0 = gx.init_params(jax.random.key(0), X, 1, covariance_type="lowrank",
                      rank=D - 1)
  ll = float(gx.fit(X, p0, max_iter=MAX_ITER, tol=0.0,
                    reg_covar=0.0).log_likelihood)
  assert ll <= best + 1e-9
  assert best - ll < 1e-3, (best, ll)


def test_recovers_the_loadings_column_space(fitted):
  _, res = fitted
  _, means, W, psi = _truth()
  for j in range(K):
    f = int(np.argmin(np.sum((np.asarray(res.params.means) - means[j]) ** 2,
                             axis=1)))
    u_true = np.linalg.qr(W[j])[0]
    u_fit = np.linalg.qr(np.asarray(res.params.loadings[f]))[0]
    # sines of the principal angles between the two column spaces
    sines = np.linalg.svd(u_fit - u_true @ (u_true.T @ u_fit),
                          compute_uv=False)
    assert sines.max() < 0.1, sines


def _objective(X, w, reg, p0, a, b):
  res = gx.fit(X, p0, sample_weight=w, reg_covar=reg, tol=0.0, max_iter=4000)
  return (res.log_likelihood + jnp.sum(a * res.params.means)
          + jnp.sum(b * res.params.covariances))


def test_implicit_gradient_matches_finite_differences(x64):
  rng = np.random.default_rng(2)

  def cluster(centre):  # one strong factor: EM's slowest mode is fast
    w = 2.0 * rng.normal(size=(3, 1))
    return (rng.normal(size=(40, 1)) @ w.T + 0.3 * rng.normal(size=(40, 3))
            + centre)

  X = np.concatenate([cluster(0.0), cluster(8.0)])
  w = rng.uniform(0.5, 1.5, X.shape[0])
  p0 = gx.init_params(jax.random.key(0), X, 2, covariance_type="lowrank",
                      rank=1, method="kmeans", reg_covar=REG)
  a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3, 2))
  f = jax.jit(_objective)
  grads = jax.jit(jax.grad(_objective, argnums=(0, 1)))(X, w, REG, p0, a, b)
  vX, vw = rng.normal(size=X.shape), rng.normal(size=w.shape)
  h = 1e-5
  for g, (dX, dw) in zip(grads, [(vX, 0 * vw), (0 * vX, vw)], strict=True):
    ad = float(np.vdot(g, dX if dX.any() else dw))
    fd = (f(X + h * dX, w + h * dw, REG, p0, a, b)
          - f(X - h * dX, w - h * dw, REG, p0, a, b)) / (2 * h)
    assert abs(ad - float(fd)) <= 1e-4 * abs(float(fd)), (ad, float(fd))


def test_vmap_chunked_and_online_paths_share_the_update(x64, data, fitted):
  p0, ref = fitted  # the unbatched, unchunked fit
  other = p0.replace(means=p0.means + 0.3)
  batch = jax.tree.map(lambda *a: jnp.stack(a), p0, other)
  fits = jax.vmap(lambda p: gx.fit(data, p, max_iter=MAX_ITER, tol=0.0,
                                   reg_covar=1e-6))(batch)
  one = gx.fit(data, other, max_iter=MAX_ITER, tol=0.0, reg_covar=1e-6)
  for i, r in enumerate((ref, one)):
    np.testing.assert_allclose(fits.params.covariances[i],
                               r.params.covariances, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fits.log_likelihood[i], r.log_likelihood,
                               rtol=1e-12)
  chunked = gx.fit_chunked(data, p0, chunk_size=100, max_iter=MAX_ITER,
                           tol=0.0, reg_covar=1e-6)
  np.testing.assert_allclose(chunked.params.covariances,
                             ref.params.covariances, rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(chunked.log_likelihood, ref.log_likelihood,
                             rtol=1e-10)
  gm = gx.GaussianMixture(K, covariance_type="lowrank", rank=Q,
                          random_state=0)
  for part in np.split(data, 3):
    gm.partial_fit(part)
  assert gm.score(data) > float(ref.log_likelihood) - 1.0


def test_float32_far_from_the_origin_matches_float64(data, fitted):
  # Data and means moved 1e3 away: float32 keeps the update's digits
  # (shifted moments, Woodbury in whitened coordinates).
  p0, _ = fitted
  X = data + 1e3
  with jax.enable_x64(True):
    p64 = p0.replace(means=p0.means + 1e3)
    ref_ll = float(gx.fit(X, p64, max_iter=MAX_ITER, tol=0.0,
                          reg_covar=1e-6).log_likelihood)
    p32 = jax.tree.map(lambda a: np.asarray(a, np.float32), p64)
  res = gx.fit(X.astype(np.float32), p32, max_iter=MAX_ITER, tol=0.0,
               reg_covar=1e-6)
  assert res.params.means.dtype == np.float32 and not bool(res.failed)
  np.testing.assert_allclose(float(res.log_likelihood), ref_ll, rtol=2e-4)


def test_estimator_attributes_counts_and_files(x64, data, tmp_path):
  gm = gx.GaussianMixture(K, covariance_type="lowrank", rank=Q,
                          random_state=0, reg_covar=REG).fit(data)
  cov = _dense(gm.loadings_, gm.noise_)
  np.testing.assert_allclose(gm.covariances_, cov)
  np.testing.assert_allclose(gm.precisions_, np.linalg.inv(cov), atol=1e-10)
  pc = gm.precisions_cholesky_
  np.testing.assert_allclose(pc @ np.swapaxes(pc, -1, -2), gm.precisions_,
                             atol=1e-10)
  n_cov = K * (D * Q - Q * (Q - 1) // 2 + D)
  n_par = n_cov + K * D + K - 1
  total = gm.score(data) * N
  np.testing.assert_allclose(gm.bic(data), -2 * total + n_par * np.log(N))
  np.testing.assert_allclose(gm.aic(data), -2 * total + 2 * n_par)
  logp = gm.score_samples(data)
  for model in (gm, gm.params_):
    path = tmp_path / f"{type(model).__name__}.npz"
    gx.save(path, model)
    back = gx.load(path)
    if model is gm:
      assert back.rank == Q and back.covariance_type == "lowrank"
      np.testing.assert_array_equal(back.loadings_, gm.loadings_)
      np.testing.assert_array_equal(back.score_samples(data), logp)
    else:
      np.testing.assert_array_equal(back.covariances, model.covariances)
      np.testing.assert_array_equal(back.precisions_cholesky,
                                    model.precisions_cholesky)
  X, y = gm.sample(4)
  assert X.shape == (4, D) and y.shape == (4,)


def test_sampling_draws_the_low_rank_covariance(x64):
  weights, means, W, psi = _random_params(4)
  p = gx.make_params(weights, means, (W, psi), covariance_type="lowrank")
  X, y = gx.sample(jax.random.key(0), p, 60_000)
  X, y = np.asarray(X), np.asarray(y)
  cov = _dense(W, psi)
  for j in range(K):
    np.testing.assert_allclose(np.cov(X[y == j].T), cov[j],
                               atol=0.05 * np.abs(cov[j]).max())


@pytest.mark.parametrize("kwargs, match", [
    (dict(covariance_type="lowrank"), "needs rank"),
    (dict(covariance_type="lowrank", rank=D), "rank should satisfy"),
    (dict(covariance_type="lowrank", rank=0), "rank"),
    (dict(covariance_type="diag", rank=2), "only for covariance_type"),
    (dict(covariance_type="lowrank", rank=2,
          precisions_init=np.ones((K, D))), "precisions_init"),
])
def test_bad_options_are_clear_value_errors(data, kwargs, match):
  with pytest.raises(ValueError, match=match):
    gx.GaussianMixture(K, **kwargs).fit(data)


def test_functional_entries_refuse_what_cannot_apply(data):
  with pytest.raises(ValueError, match="needs its rank|rank"):
    gx.init_params(jax.random.key(0), data, K, covariance_type="lowrank")
  with pytest.raises(ValueError, match="only for"):
    gx.init_params(jax.random.key(0), data, K, covariance_type="full",
                   rank=2)
  with pytest.raises(ValueError, match="current loadings"):
    gx.m_step(data, np.log(np.full((N, K), 1.0 / K)),
              covariance_type="lowrank")
  with pytest.raises(ValueError, match="lowrank"):
    gx.select_n_components(jax.random.key(0), data, [1, 2],
                           covariance_type="lowrank")
