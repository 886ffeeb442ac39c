"""Online (stepwise) EM: the update formula, a 1,000,000-point stream, partial_fit.

References: the stepwise-EM recursion written in NumPy/SciPy on raw
(unshifted) moments, batch EM on the same stream (``fit_chunked`` re-reading
a seeded generator, so the stream is never in memory at once), and the
known generating mixture.
"""

import warnings

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import gmmjax as gx
from gmmjax import fit_chunked
from gmmjax._src.scale_online import (
    fit_online,
    online_init,
    online_update,
)

TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])
TRUE_MEANS = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 4.0]])
TRUE_COVS = np.array([[[1.0, 0.5], [0.5, 1.0]],
                      [[2.0, -0.3], [-0.3, 0.5]],
                      [[0.7, 0.0], [0.0, 1.5]]])


def draw(seed, n, dtype=np.float32):
  """``n`` points of the known mixture, from their own seed."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(3, size=n, p=TRUE_WEIGHTS)
  chol = np.linalg.cholesky(TRUE_COVS)
  z = rng.standard_normal((n, 2))
  return (TRUE_MEANS[labels] + np.einsum("nde,ne->nd", chol[labels], z)
          ).astype(dtype)


def true_log_prob(X):
  dens = sum(w * multivariate_normal(m, c).pdf(X)
             for w, m, c in zip(TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS,
                                strict=True))
  return np.log(dens)


# -- the recursion, against NumPy -----------------------------------------


def np_stats(params, X):
  """Per-sample averages of raw moments under ``params`` (NumPy/SciPy)."""
  covs = np.asarray(params.covariances)
  if params.covariance_type == "diag":
    covs = np.stack([np.diag(c) for c in covs])
  logp = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(X)
                   for w, m, c in zip(np.asarray(params.weights),
                                      np.asarray(params.means), covs,
                                      strict=True)], axis=1)
  r = np.exp(logp - logp.max(axis=1, keepdims=True))
  r /= r.sum(axis=1, keepdims=True)
  n = X.shape[0]
  return (r.sum(0) / n, r.T @ X / n, np.einsum("nk,nd,ne->kde", r, X, X) / n)


def np_m_step(s, covariance_type, reg=1e-6):
  nk, sx, sxx = s
  means = sx / nk[:, None]
  covs = sxx / nk[:, None, None] - np.einsum("kd,ke->kde", means, means)
  covs += reg * np.eye(sx.shape[1])
  if covariance_type == "diag":
    covs = np.stack([np.diag(c) for c in covs])
  return nk / nk.sum(), means, covs


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_updates_follow_stepwise_em_recursion(x64, ctype):
  batches = [draw(i, 400, np.float64) for i in range(3)]
  p0 = gx.init_params(jax.random.key(0), batches[0], 3, covariance_type=ctype,
                      method="kmeans")
  alpha = 0.7
  state = online_init(batches[0], p0)
  s = np_stats(p0, batches[0])
  expected = [np_m_step(s, ctype)]
  got = [state.params]
  for t, X in enumerate(batches[1:]):
    current = gx.make_params(*expected[-1], covariance_type=ctype)
    gamma = (t + 2.0) ** -alpha
    s = tuple((1 - gamma) * a + gamma * b
              for a, b in zip(s, np_stats(current, X), strict=True))
    expected.append(np_m_step(s, ctype))
    state = online_update(X, state, alpha=alpha)
    got.append(state.params)
  assert int(state.step) == 2 and float(state.n_seen) == 1200.0
  for params, (weights, means, covs) in zip(got, expected, strict=True):
    np.testing.assert_allclose(params.weights, weights, rtol=1e-10)
    np.testing.assert_allclose(params.means, means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params.covariances, covs, rtol=1e-9,
                               atol=1e-12)


def test_bad_batch_is_skipped(x64):
  X = draw(0, 300, np.float64)
  state = online_init(X, gx.init_params(jax.random.key(0), X, 3))
  bad = X.copy()
  bad[0, 0] = np.nan
  new = online_update(bad, state)
  assert bool(new.failed) and int(new.step) == 0
  np.testing.assert_array_equal(new.params.means, state.params.means)


def test_alpha_and_init_are_checked():
  X = draw(0, 100)
  state = online_init(X, gx.init_params(jax.random.key(0), X, 2))
  for alpha in (0.5, 1.2):
    with pytest.raises(ValueError, match="alpha"):
      online_update(X, state, alpha=alpha)
  with pytest.raises(ValueError, match="params"):
    fit_online(None, [X], alpha=0.6)
  with pytest.raises(TypeError, match="batch first"):
    online_update(state, X)


# -- a 1,000,000-point stream ----------------------------------------------

N_STREAM = 1_000_000
BATCH = 50_000


def stream(seed=100):
  """The stream, generated batch by batch (never all in memory)."""
  for i in range(N_STREAM // BATCH):
    yield draw((seed, i), BATCH)


def test_million_point_stream_matches_batch_em():
  held_out = draw(7, 20_000)
  live_bytes = []

  def watch(state):
    del state
    live_bytes.append(sum(a.nbytes for a in jax.live_arrays()))

  # k-means++ puts each component on one sample of the first batch, with a
  # tiny covariance: a start far from any good fit, so EM has work to do.
  first = next(stream())
  p0 = gx.init_params(jax.random.key(0), first, 3, method="k-means++")
  state = fit_online(None, stream(), params=p0, alpha=0.6, callback=watch)
  assert float(state.n_seen) == N_STREAM
  assert int(state.step) == N_STREAM // BATCH - 1
  # Memory does not grow with the stream: device memory after the last
  # batch is what it was after the second.
  assert live_bytes[-1] <= live_bytes[1]

  # Batch EM on the same million points, re-read from the generator each
  # iteration, from the same initial params.
  batch = fit_chunked(lambda: stream(), p0, tol=1e-4, max_iter=50)
  assert bool(batch.converged)
  ll_online = float(gx.log_likelihood(state.params, held_out))
  ll_batch = float(gx.log_likelihood(batch.params, held_out))
  ll_init = float(gx.log_likelihood(p0, held_out))
  assert abs(ll_init - ll_batch) > 0.5 * abs(ll_batch)
  assert abs(ll_online - ll_batch) <= 0.01 * abs(ll_batch)
  # Both are close to the generating mixture's held-out log-likelihood.
  ll_true = float(np.mean(true_log_prob(held_out.astype(np.float64))))
  assert abs(ll_batch - ll_true) <= 0.01 * abs(ll_true)


# -- the estimator's partial_fit ------------------------------------------


def test_partial_fit_streams_to_the_batch_fit():
  gm = gx.GaussianMixture(3, random_state=0)
  for i in range(20):
    gm.partial_fit(draw((200, i), 5_000).astype(np.float64))
  assert gm.n_iter_ == 20 and gm.means_.shape == (3, 2)
  held_out = draw(8, 20_000).astype(np.float64)
  ll_true = float(np.mean(true_log_prob(held_out)))
  assert abs(gm.score(held_out) - ll_true) <= 0.01 * abs(ll_true)
  order = np.argsort(gm.means_[:, 0])
  np.testing.assert_allclose(gm.means_[order], TRUE_MEANS[[2, 0, 1]],
                             atol=0.1)
  with pytest.raises(ValueError, match="features"):
    gm.partial_fit(np.zeros((10, 3)))


def test_online_reports_the_cholesky_jitter(guarded_kernels):
  """float32 collinear features (x2 = x0 - 2 x1): the full covariances are
  singular but for reg_covar, far below float32's rounding of moments of
  O(1e3), so the null direction's variance comes out of either sign, and
  over six updates of two components some M-step needs a diagonal jitter
  whatever the compiler's rounding (checked with XLA's optimised and
  unoptimised CPU code); the state and ``partial_fit`` report it.
  Independent features need none."""
  rng = np.random.default_rng(7)
  base = rng.normal(0, 30, (600, 2)).astype(np.float32)
  collinear = np.concatenate(
      [base, (base[:, :1] - 2 * base[:, 1:])], axis=1).astype(np.float32)
  independent = rng.normal(0, 3, (600, 3)).astype(np.float32)
  state = online_init(collinear[:100],
                      gx.init_params(jax.random.key(0), collinear[:100], 2))
  for i in range(1, 6):
    state = online_update(collinear[100 * i:100 * (i + 1)], state)
  assert not bool(state.failed) and float(state.jitter) > 0
  for name, X in (("collinear", collinear), ("independent", independent)):
    gm = gx.GaussianMixture(2, random_state=0)
    w = np.full(600, 1e-3)
    w[::3] = 0.0  # 400 rows of positive weight, 0.4 in total
    growths, seen = 0, 0.0
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      for part in (slice(0, 300), slice(300, 600)):
        gm.partial_fit(X[part], sample_weight=w[part])
        growths += gm.jitter_ > seen
        seen = gm.jitter_
    assert gm.jitter_ == float(gm._online_state.jitter)
    # A ConvergenceWarning each time the stream's largest jitter grew.
    jitter_warnings = [c for c in caught if issubclass(
        c.category, gx.ConvergenceWarning) and "jitter" in str(c.message)]
    assert len(jitter_warnings) == growths
    if name == "independent":
      assert growths == 0
    # Empty components are counted against the rows of positive weight, as
    # fit does; against the total weight (0.4) every component would be.
    assert gm.n_degenerate_ == int(gx.count_degenerate(gm._online_state.params,
                                                       400,
                                                       reg_covar=gm.reg_covar))
    if name == "independent":
      assert gm.n_degenerate_ == 0 and gm.jitter_ == 0.0
  # Unweighted collinear batches need a jitter: partial_fit warns, as fit
  # does, each time the stream's largest jitter grows.
  gm = gx.GaussianMixture(2, random_state=0)
  growths, seen = 0, 0.0
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for i in range(6):
      part = slice(100 * i, 100 * (i + 1))
      gm.partial_fit(collinear[part])
      growths += gm.jitter_ > seen
      seen = gm.jitter_
  assert growths >= 1 and gm.jitter_ > 0
  assert len([c for c in caught if issubclass(c.category, gx.ConvergenceWarning)
              and "jitter" in str(c.message)]) == growths
