"""Missing values: EM over observed coordinates, conditioning, imputation.

The reference is missing-data EM written here in NumPy/SciPy, sample by
sample and component by component (Ghahramani & Jordan, 1994): observed
marginals from ``scipy.stats.multivariate_normal``, conditional means and
covariances by ``np.linalg.solve`` on the observed block.

Within the suite's time budget (compiles dominate: few distinct programs,
one small data set): the statistical recovery check runs with
``GMMJAX_TEST_FULL=1`` (its 200,000-point version is
``benchmarks/bench_missing.py``'s accuracy part).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal as mvn

import gmmjax as gx
from gmmjax._src import chunks
from tests.conftest import numpy_covariances

TYPES = ["full", "tied", "diag", "spherical"]
N, D, K = 120, 4, 2
REG = 1e-6
FULL = os.environ.get("GMMJAX_TEST_FULL") == "1"


def _patterns():
  rng = np.random.default_rng(3)
  mcar = rng.random((N, D)) > 0.3
  mcar[np.arange(N), rng.integers(0, D, N)] = True  # no empty row
  blocks = np.ones((N, D), bool)
  blocks[:60, :2] = False
  blocks[60:90, 3] = False
  single = np.zeros((N, D), bool)
  single[np.arange(N), np.arange(N) % D] = True
  return {"mcar": mcar, "blocks": blocks, "single": single}


PATTERNS = _patterns()


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  X = rng.normal(size=(N, D)) @ (np.eye(D) + 0.5 * rng.normal(size=(D, D)))
  X[: N // 2] += 3.0
  return X


def dense_covariances(p):
  cov = np.asarray(p.covariances)
  k, d = np.asarray(p.means).shape
  if p.covariance_type == "full":
    return cov
  if p.covariance_type == "tied":
    return np.broadcast_to(cov, (k, d, d))
  if p.covariance_type == "diag":
    return np.stack([np.diag(c) for c in cov])
  return np.stack([c * np.eye(d) for c in cov])


def reference_terms(X, obs, p):
  """Per sample and component: log w_k N(x_O|k), completed x, cond. cov."""
  w, mu, cov = np.asarray(p.weights), np.asarray(p.means), dense_covariances(p)
  n, d = X.shape
  k = w.shape[0]
  logp, xhat, cond = np.zeros((n, k)), np.zeros((n, k, d)), np.zeros(
      (n, k, d, d))
  for i in range(n):
    o, m = obs[i], ~obs[i]
    for j in range(k):
      s_oo = cov[j][np.ix_(o, o)]
      logp[i, j] = np.log(w[j]) + mvn.logpdf(X[i, o], mu[j, o], s_oo)
      gain = np.linalg.solve(s_oo, cov[j][np.ix_(o, m)]).T  # S_MO S_OO^-1
      xhat[i, j] = np.where(o, X[i], 0.0)
      xhat[i, j, m] = mu[j, m] + gain @ (X[i, o] - mu[j, o])
      cond[i, j][np.ix_(m, m)] = cov[j][np.ix_(m, m)] - gain @ cov[j][
          np.ix_(o, m)]
  return logp, xhat, cond


def reference_em_step(X, obs, p, reg=REG):
  """One missing-data EM iteration: new (weights, means, covariances) and
  the mean observed-data log-likelihood of ``p``."""
  logp, xhat, cond = reference_terms(X, obs, p)
  ll = logsumexp(logp, axis=1)
  r = np.exp(logp - ll[:, None])
  nk = r.sum(0) + 10 * np.finfo(np.float64).eps
  means = np.einsum("nk,nkd->kd", r, xhat) / nk[:, None]
  z = xhat - means[None]
  full = (np.einsum("nk,nkd,nke->kde", r, z, z)
          + np.einsum("nk,nkde->kde", r, cond)) / nk[:, None, None]
  cov = numpy_covariances(full, nk, p.covariance_type, reg, X.shape[1])
  return (nk / nk.sum(), means, cov), ll.mean(), r


def start_params(X, ctype):
  """A fixed, non-trivial starting point (two k-means-like halves)."""
  resp = np.zeros((X.shape[0], K))
  resp[: N // 2, 0] = 1.0
  resp[N // 2:, 1] = 1.0
  resp = 0.8 * resp + 0.1
  return gx.m_step(X, jnp.log(resp), covariance_type=ctype, reg_covar=0.1)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("ctype", TYPES)
def test_em_step_matches_numpy_reference(data, ctype, pattern, x64):
  obs = PATTERNS[pattern]
  Xn = np.where(obs, data, np.nan)
  p = start_params(data, ctype)
  (w, mu, cov), ll, r = reference_em_step(data, obs, p)
  new, objective = gx.em_step(Xn, p, observed=obs, reg_covar=REG)
  np.testing.assert_allclose(float(objective), ll, rtol=1e-10)
  np.testing.assert_allclose(new.weights, w, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(new.means, mu, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(new.covariances, cov, rtol=1e-10, atol=1e-10)
  if ctype in ("tied", "spherical") and not FULL:
    return  # their separate steps: two more programs each, same code
  # The separate steps: e_step's responsibilities, m_step given them.
  log_resp, mean_ll = gx.e_step(p, Xn, observed=obs)
  np.testing.assert_allclose(np.exp(log_resp), r, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(float(mean_ll), ll, rtol=1e-10)
  stepped = gx.m_step(Xn, log_resp, covariance_type=ctype, reg_covar=REG,
                      observed=obs, params=p)
  np.testing.assert_allclose(stepped.covariances, cov, rtol=1e-10,
                             atol=1e-10)


# Tied and spherical densities are also checked against SciPy's through
# the E-step's log-likelihood in test_em_step_matches_numpy_reference.
@pytest.mark.parametrize("ctype", TYPES if FULL else ["full", "diag"])
def test_log_prob_is_the_scipy_marginal_density(data, ctype, x64):
  obs = PATTERNS["mcar"]
  p = start_params(data, ctype)
  logp, _, _ = reference_terms(data, obs, p)
  Xn = np.where(obs, data, np.nan)
  got = gx.log_prob(p, Xn, observed=obs)
  np.testing.assert_allclose(got, logsumexp(logp, axis=1), rtol=1e-10)
  # The marginal mixture over a subset of features scores the same.
  rows = np.flatnonzero((obs == [True, False, True, False]).all(axis=1))
  marg = gx.marginal(p, [0, 2])
  np.testing.assert_allclose(gx.log_prob(marg, data[rows][:, [0, 2]]),
                             np.asarray(got)[rows], rtol=1e-10)


@pytest.mark.parametrize("ctype", TYPES)
def test_impute_is_the_conditional_expectation(data, ctype, x64):
  obs = PATTERNS["mcar"]
  p = start_params(data, ctype)
  logp, xhat, _ = reference_terms(data, obs, p)
  r = np.exp(logp - logsumexp(logp, axis=1)[:, None])
  expected = np.einsum("nk,nkd->nd", r, xhat)
  got = np.asarray(gx.impute(p, np.where(obs, data, np.nan)))
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
  assert np.array_equal(got[obs], data[obs])
  if ctype == "full":
    draws = np.asarray(gx.impute_samples(jax.random.key(0), p,
                                         np.where(obs, data, np.nan)))
    assert np.array_equal(draws[obs], data[obs])
    assert np.all(np.isfinite(draws))


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_condition_is_bayes_rule(data, ctype, x64):
  """log p(x_R | x_F = v) = log p(x) - log p(x_F), at a few points; the
  conditional's moments by the closed form for one component."""
  p = start_params(data, ctype)
  feats, rest = [1, 3], [0, 2]
  for x in data[:3]:
    c = gx.condition(p, feats, x[feats])
    joint = float(gx.log_prob(p, x[None])[0])
    given = float(gx.log_prob(gx.marginal(p, feats), x[None, feats])[0])
    got = float(gx.log_prob(c, x[None, rest])[0])
    np.testing.assert_allclose(got, joint - given, rtol=1e-10)
  cov = dense_covariances(p)[0]
  mu = np.asarray(p.means)[0]
  x = data[0]
  gain = cov[np.ix_(rest, feats)] @ np.linalg.inv(cov[np.ix_(feats, feats)])
  c = gx.condition(p, feats, x[feats])
  np.testing.assert_allclose(c.means[0], mu[rest] + gain @ (x[feats]
                                                          - mu[feats]),
                             rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_fit_is_monotone_and_a_full_mask_changes_nothing(data, ctype, x64):
  obs = PATTERNS["mcar"]
  p = start_params(data, ctype)
  result = gx.fit(np.where(obs, data, np.nan), p, observed=obs, tol=1e-10,
                  max_iter=60)
  history = np.asarray(result.history)[: int(result.n_iter)]
  assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))
  assert np.isfinite(float(result.log_likelihood))
  # All observed: bit for bit the fit without a mask (a concrete mask is
  # dropped), and the E-step's traced masked program picks the same
  # complete-data block.
  full = np.ones_like(obs)
  plain = gx.fit(data, p, max_iter=5)
  masked = gx.fit(data, p, max_iter=5, observed=full)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(masked)):
    assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
  if ctype == "full":
    s0 = gx.e_step_stats(p, data)
    s1 = gx.e_step_stats(p, data, observed=full)
    for a, b in zip(s0, s1):
      assert np.array_equal(np.asarray(a), np.asarray(b))


def test_chunks_give_the_same_statistics(data, x64):
  """Small chunks and sub-pieces sum to the one-chunk statistics."""
  obs = PATTERNS["mcar"]
  p = start_params(data, "full")
  tiny = chunks.ChunkOptions(cpu_bytes=1, accelerator_bytes=1, min_chunk=16)
  one = gx.e_step_stats(p, data, observed=obs)
  many = gx.e_step_stats(p, data, observed=obs, chunking=tiny)
  for a, b in zip(one, many):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_gradient_through_a_fit_matches_finite_differences(data, x64):
  """Implicit derivatives of a converged fit with missing entries (diag:
  the masked path's compile is the cheapest) w.r.t. the data; reverse
  mode transposes the same linear solve (tests/test_implicit.py). One
  compiled program: the finite differences read its primal outputs."""
  obs = PATTERNS["mcar"]
  p = start_params(data, "diag")
  loss = lambda X: gx.fit(X, p, observed=obs, tol=1e-12,  # noqa: E731
                          max_iter=300).log_likelihood
  jvp = jax.jit(lambda X, v: jax.jvp(loss, (X,), (v,)))
  X = jnp.asarray(np.where(obs, data, 0.0))
  # A direction over observed entries, and one over missing ones (no
  # effect).
  v = jnp.asarray(np.where(obs, np.random.default_rng(5).normal(
      size=data.shape), 0.0))
  _, dl = jvp(X, v)
  eps = 1e-5
  fd = (float(jvp(X + eps * v, v)[0]) - float(jvp(X - eps * v, v)[0])) / (
      2 * eps)
  np.testing.assert_allclose(float(dl), fd, rtol=1e-5)
  _, none = jvp(X, jnp.asarray(np.where(obs, 0.0, 1.0)))
  assert float(none) == 0.0


def test_gradient_of_the_observed_density_full(data, x64):
  """Derivatives of the masked Cholesky forms (full): the observed-data
  log-likelihood w.r.t. the data and the means, by finite differences."""
  obs = PATTERNS["mcar"]
  p = start_params(data, "full")
  X = jnp.asarray(np.where(obs, data, 0.0))

  def loss(X, means):
    return gx.log_likelihood(p.replace(means=means), X, observed=obs)

  gx_, gm = jax.grad(loss, argnums=(0, 1))(X, p.means)
  assert np.all(np.asarray(gx_)[~obs] == 0.0)
  eps = 1e-6
  for i, j in [(1, 1), (50, 2)]:
    e = np.zeros(X.shape)
    e[i, j] = eps
    fd = (float(loss(X + e, p.means)) - float(loss(X - e, p.means))) / (2 * eps)
    np.testing.assert_allclose(gx_[i, j], fd, rtol=1e-6, atol=1e-10)
  e = np.zeros(p.means.shape)
  e[1, 3] = eps
  fd = (float(loss(X, p.means + e)) - float(loss(X, p.means - e))) / (2 * eps)
  np.testing.assert_allclose(gm[1, 3], fd, rtol=1e-6, atol=1e-10)


def test_marginalize_reads_frames_and_object_arrays():
  """NaN, None and pandas' NA are missing entries whatever the container:
  a DataFrame with a bool column, a nullable Float64 one, an object array
  (they used to be refused with the policy's own error)."""
  import pandas as pd  # noqa: PLC0415 (a test extra; this test alone)

  from gmmjax._src import nan_policy
  frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0],
                        "b": [True, False, True, False],
                        "c": pd.array([0.5, 1.5, None, 2.5], dtype="Float64")})
  expected_obs = np.array([[1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
  filled, obs = nan_policy.split_missing(frame, "marginalize")
  np.testing.assert_array_equal(obs, expected_obs)
  np.testing.assert_allclose(filled, [[1, 1, 0.5], [8 / 3, 0, 1.5],
                                      [3, 1, 1.5], [4, 0, 2.5]])
  objects = np.array([[1.0, None], [2, 3.0], [None, 4]], dtype=object)
  filled, obs = nan_policy.split_missing(objects, "marginalize")
  np.testing.assert_array_equal(obs, [[1, 0], [1, 1], [0, 1]])
  np.testing.assert_allclose(filled, [[1, 3.5], [2, 3], [1.5, 4]])


def test_estimator_marginalize(data, x64):
  obs = PATTERNS["mcar"]
  Xn = np.where(obs, data, np.nan)
  with pytest.raises(ValueError, match="NaN"):
    gx.GaussianMixture(2).fit(Xn)
  with pytest.raises(ValueError, match="nan_policy"):
    gx.GaussianMixture(2, nan_policy="drop").fit(data)
  gm = gx.GaussianMixture(2, covariance_type="diag", nan_policy="marginalize",
                          n_init=2, random_state=0, tol=1e-8).fit(Xn)
  assert gm.converged_
  expected = gx.log_prob(gm.params_, Xn, observed=obs)
  np.testing.assert_allclose(gm.score_samples(Xn), expected, rtol=1e-10)
  np.testing.assert_allclose(gm.score(Xn), float(np.mean(expected)),
                             rtol=1e-10)
  np.testing.assert_allclose(gm.predict_proba(Xn),
                             gx.predict_proba(gm.params_, Xn, observed=obs),
                             rtol=1e-10, atol=1e-14)
  assert gm.predict(Xn).shape == (N,)
  assert np.isfinite(gm.bic(Xn)) and np.isfinite(gm.aic(Xn))
  filled = gm.impute(Xn)
  np.testing.assert_allclose(filled, gx.impute(gm.params_, Xn), rtol=1e-10)
  assert not np.isnan(filled).any()
  # A DataFrame with holes: the same fit (one program), and its names kept
  # although the filled data the fit sees are an array.
  import pandas as pd  # noqa: PLC0415 (a test extra; this test alone)
  frame = pd.DataFrame(Xn, columns=[f"f{j}" for j in range(Xn.shape[1])])
  gf = type(gm)(**gm.get_params()).fit(frame)
  assert gf.feature_names_in_.tolist() == list(frame.columns)
  np.testing.assert_allclose(gf.score_samples(frame), gm.score_samples(Xn),
                             rtol=1e-10)
  with pytest.raises(ValueError, match="same order"):
    gf.predict(frame[frame.columns[::-1]])
  bad = Xn.copy()
  bad[5] = np.nan
  with pytest.raises(ValueError, match="observed entry"):
    gm.score_samples(bad)
  with pytest.raises(ValueError, match="observed entry"):
    gx.GaussianMixture(2, nan_policy="marginalize").fit(bad)


@pytest.mark.skipif(not FULL, reason="statistical check: GMMJAX_TEST_FULL=1 "
                    "(benchmarks/bench_missing.py has a 200,000-point one)")
def test_missing_data_em_recovers_the_truth(x64):
  """Fast version of the 200,000-point check (examples/missing_values.py,
  benchmarks/bench_missing.py): 20% of entries missing completely at
  random from a known two-component mixture; missing-value EM lands near
  the true parameters, mean imputation visibly off."""
  rng = np.random.default_rng(1)
  n = 3000
  means = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0]])
  cov = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.4], [0.3, 0.4, 1.0]])
  labels = rng.random(n) < 0.4
  X = rng.multivariate_normal(np.zeros(3), cov, n) + means[labels.astype(int)]
  obs = rng.random(X.shape) > 0.2
  obs[np.arange(n), rng.integers(0, 3, n)] = True
  p0 = gx.make_params(np.array([0.5, 0.5]), means + 0.5, np.stack([np.eye(3)] * 2))
  fit = gx.fit(np.where(obs, X, np.nan), p0, observed=obs, tol=1e-9,
               max_iter=500)
  order = np.argsort(np.asarray(fit.params.means)[:, 0])
  err_em = np.abs(np.asarray(fit.params.covariances)[order] - cov).max()
  np.testing.assert_allclose(np.asarray(fit.params.means)[order], means,
                             atol=0.12)
  np.testing.assert_allclose(np.asarray(fit.params.weights)[order],
                             [0.6, 0.4], atol=0.03)
  col_means = np.nanmean(np.where(obs, X, np.nan), axis=0)
  imputed = gx.fit(np.where(obs, X, col_means), p0, tol=1e-9, max_iter=500)
  order = np.argsort(np.asarray(imputed.params.means)[:, 0])
  err_mean = np.abs(np.asarray(imputed.params.covariances)[order] - cov).max()
  assert err_em < 0.12 and err_mean > 2 * err_em


def test_command_line_reads_empty_csv_fields(data, tmp_path, x64, capsys):
  from gmmjax import cli
  obs = PATTERNS["mcar"]
  lines = [",".join(repr(float(v)) if o else "" for v, o in zip(r, ob))
           for r, ob in zip(data, obs)]
  csv = tmp_path / "x.csv"
  csv.write_text("a,b,c,d\n" + "\n".join(lines) + "\n")
  loaded = cli.read_data(str(csv), allow_nan=True)
  assert np.array_equal(loaded, np.where(obs, data, np.nan), equal_nan=True)
  model = str(tmp_path / "m.npz")
  fit = ["fit", str(csv), "-k", "2", "--covariance-type", "diag",
         "--n-init", "2", "--tol", "1e-8", "--no-progress", "--out", model]
  assert cli.main(fit) == 1
  assert "--nan-policy marginalize" in capsys.readouterr().err
  assert cli.main(fit + ["--nan-policy", "marginalize"]) == 0
  capsys.readouterr()
  assert cli.main(["score", model, str(csv)]) == 0  # the model's policy
  gm = gx.load(model)
  expected = gm.score(np.where(obs, data, np.nan))
  assert f"{expected:.6f}" in capsys.readouterr().out
  assert cli.main(["score", model, str(csv), "--nan-policy", "raise"]) == 1


def test_low_rank_and_bayesian_mixtures_refuse_missing_values(data):
  """Low-rank covariances and BayesianGaussianMixture have no missing-value
  EM: clear errors before anything compiles."""
  obs = PATTERNS["mcar"]
  Xn = np.where(obs, data, np.nan)
  with pytest.raises(ValueError, match="lowrank"):
    gx.GaussianMixture(2, covariance_type="lowrank", rank=1,
                       nan_policy="marginalize").fit(data)
  rng = np.random.default_rng(0)
  p = gx.make_params(np.array([0.5, 0.5]), data[:2],
                     (rng.normal(size=(2, D, 1)), np.ones((2, D))),
                     covariance_type="lowrank")
  for call in (lambda: gx.fit(Xn, p, observed=obs),
               lambda: gx.e_step(p, Xn, observed=obs),
               lambda: gx.log_prob(p, Xn, observed=obs),
               lambda: gx.impute(p, Xn)):
    with pytest.raises(ValueError, match="lowrank"):
      call()
  bgm = gx.BayesianGaussianMixture(n_components=2)
  assert "nan_policy" not in bgm.get_params()
  with pytest.raises(ValueError, match="NaN"):
    bgm.fit(Xn)
  with pytest.raises(ValueError, match="nan_policy"):
    bgm.set_params(nan_policy="marginalize")
  assert not hasattr(bgm, "impute")


def test_many_slots_match_the_reference(x64):
  """The block-step factorisation (three slots and more: the large data's
  ladder goes to 6, 8, ...) and the fast moments, on rows missing up to
  six of eight features: densities, completed rows and moments against
  the NumPy reference and the exact per-component moments."""
  from gmmjax._src import missing_slots
  rng = np.random.default_rng(2)
  n, d = 40, 8
  X = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)))
  obs = np.ones((n, d), bool)
  for i in range(n):
    obs[i, rng.permutation(d)[:i % 7]] = False
  a = rng.normal(size=(K, d, d))
  p = gx.make_params(np.array([0.4, 0.6]), rng.normal(size=(K, d)),
                     a @ np.swapaxes(a, 1, 2) + np.eye(d))
  logp, xhat, _ = reference_terms(X, obs, p)
  centre = jnp.mean(p.means, axis=0)
  ob = jnp.asarray(obs)
  xb = jnp.where(ob, X, 0.0)

  @jax.jit
  def terms_and_moments(xb, ob, rw):
    st = missing_slots.terms(p, xb, ob, missing_slots.slot_indices(ob, 6),
                             centre)
    a = jnp.where(ob, xb - centre, 0.0)
    fast = missing_slots.slot_centred_moments(p, rw, a, st, centre)
    exact = missing_slots.slot_moments(p, rw, xb, ob, st, centre)
    return st.log_gauss, missing_slots.slot_completed(p, xb, ob, st), fast, exact

  rw = jnp.asarray(rng.random((n, K)))
  log_gauss, completed, fast, exact = terms_and_moments(xb, ob, rw)
  np.testing.assert_allclose(log_gauss + np.log(np.asarray(p.weights)), logp,
                             rtol=1e-10)
  np.testing.assert_allclose(np.swapaxes(completed, 0, 1), xhat, rtol=1e-10,
                             atol=1e-10)
  for f, e in zip(fast, exact):
    np.testing.assert_allclose(f, e, rtol=1e-10, atol=1e-10)


def test_chunked_sharded_and_online_paths(data, x64):
  """fit_chunked and fit_sharded (nan_as_missing=True) are the in-memory
  fit with observed=;
  online_init on a batch with missing entries is one EM iteration on it
  (diag: the cheapest programs)."""
  obs = PATTERNS["mcar"]
  Xn = np.where(obs, data, np.nan)
  p = start_params(data, "diag")
  kw = dict(max_iter=4, tol=0.0, reg_covar=REG)
  memory = gx.fit(Xn, p, observed=obs, **kw)
  chunked = gx.fit_chunked(Xn, p, chunk_size=50, nan_as_missing=True,
                           prefetch=0, **kw)
  sharded = gx.fit_sharded(Xn, p, nan_as_missing=True, **kw)
  for other in (chunked, sharded):
    assert int(other.n_iter) == int(memory.n_iter) == 4
    for a, b in zip(jax.tree.leaves(other.params),
                    jax.tree.leaves(memory.params)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  state = gx.online_init(Xn, p, observed=obs, reg_covar=REG)
  stepped, _ = gx.em_step(Xn, p, observed=obs, reg_covar=REG)
  np.testing.assert_allclose(state.params.covariances, stepped.covariances,
                             rtol=1e-9)
