"""Sample counts padded to a ladder with rows of weight 0 (issue 19).

Padding is exact: every init method draws the same for the real rows, and
zero-weight rows change no statistic, so a padded fit is the unpadded one
up to the order of float sums. The estimator pads, so nearby sample counts
(cross-validation folds, train/test splits) run the same compiled programs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmmjax as gx
from gmmjax import ConvergenceWarning
from gmmjax._src import compiling, covariance
from tests.conftest import make_blobs

METHODS = ["kmeans", "k-means++", "random", "random_from_data"]


@pytest.fixture(scope="module")
def X():
  return make_blobs(5, 70, [[0, 0], [4, 1], [1, 5]])  # 210 x 2


def test_ladder_sizes():
  sizes = [compiling.ladder_size(n) for n in range(1, 5000)]
  assert all(s >= n for n, s in zip(range(1, 5000), sizes))
  assert all(s <= max(16, n * 9 / 8) for n, s in zip(range(1, 5000), sizes))
  # Few rungs: at most 8 per doubling above the first (16).
  assert len(set(sizes)) <= 8 * np.ceil(np.log2(4999 / 16)) + 1
  assert compiling.ladder_size(1000) == compiling.ladder_size(999) == 1024
  # The fine ladder: at most 1/64 padding, 64 rungs per doubling, and the
  # powers of two are rungs of both.
  fine = [compiling.ladder_size(n, 16, 7) for n in range(1, 5000)]
  assert all(n <= s <= max(16, n * 65 / 64)
             for n, s in zip(range(1, 5000), fine))
  assert len(set(fine)) <= 64 * np.ceil(np.log2(4999 / 16)) + 1
  assert all(compiling.ladder_size(1 << e, 16, 7) == 1 << e
             == compiling.ladder_size(1 << e) for e in range(4, 20))


def test_estimator_rows_power_of_two_for_small_data():
  """Small data pad to a power of two (cross-validation folds and the
  refit share a program), larger data to the ladder; the padded size is
  never below the count and never decreases with it."""
  from gmmjax._src import padding
  assert padding.padded_rows(400, 2) == padding.padded_rows(500, 2) == 512
  assert padding.padded_rows(4096, 2) == 4096
  assert padding.padded_rows(4097, 2) == compiling.ladder_size(4097) == 4608
  assert padding.padded_rows(1, 3) == 16
  # Larger data pad to the fine ladder, at most 1/64 of the rows: 100,000
  # x 16 to 100,352 rows, not the coarse ladder's 106,496 (6.5% more work
  # per iteration); from the first power of two past 2**18 entries on.
  assert padding.padded_rows(100_000, 16) == 100_352
  assert padding.padded_rows(16_384, 16) == 16_384  # coarse: a rung
  assert padding.padded_rows(16_385, 16) == 16_640  # fine: 16,384 + 256
  for n, d in ((100_000, 16), (300_001, 2), (20_000, 30)):
    assert n <= padding.padded_rows(n, d) <= n * 65 / 64
  # Never decreasing, across the switch to the fine ladder too.
  sizes = [padding.padded_rows(n, 16) for n in range(15_000, 18_000)]
  assert all(b >= a for a, b in zip(sizes, sizes[1:]))
  assert all(s >= n for n, s in zip(range(15_000, 18_000), sizes))
  for d in (1, 2, 3, 5, 30):
    sizes = [padding.padded_rows(n, d) for n in range(1, 9000)]
    assert all(s >= n for n, s in zip(range(1, 9000), sizes))
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))
    assert all(s <= max(16, 2 * n) for n, s in zip(range(1, 9000), sizes))


def test_folds_and_refit_share_the_fit_program(X, compiles):
  """As GridSearchCV runs it: fits on 4/5 of the rows, then the refit on
  all of them, compile one fit program."""
  Xf = np.concatenate([X, X[::-1] + 0.1])  # 420 rows
  gx.GaussianMixture(3, covariance_type="tied", random_state=0).fit(
      Xf[:336])
  del compiles[:]
  gm = gx.GaussianMixture(3, covariance_type="tied", random_state=0)
  gm.fit(Xf)
  assert compiles == [] and gm.means_.shape == (3, 2)


def test_pad_samples_shapes_and_weights(X):
  Xp, wp = gx.pad_samples(X)
  assert isinstance(Xp, np.ndarray) and Xp.shape == (224, 2)
  np.testing.assert_array_equal(Xp[:210], X)
  np.testing.assert_array_equal(Xp[210:], np.broadcast_to(X[0], (14, 2)))
  np.testing.assert_array_equal(wp, np.r_[np.ones(210), np.zeros(14)])
  w = np.linspace(0.5, 2.0, 210)
  Xj, wj = gx.pad_samples(jnp.asarray(X), sample_weight=w, n_rows=256)
  assert isinstance(Xj, jax.Array) and Xj.shape == (256, 2)
  np.testing.assert_allclose(np.asarray(wj)[:210], w, rtol=1e-6)
  with pytest.raises(ValueError, match="below"):
    gx.pad_samples(X, n_rows=100)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("weighted", [False, True])
def test_padded_fit_equals_unpadded_float64(X, method, weighted, x64):
  w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
  Xp, wp = gx.pad_samples(X, sample_weight=w)
  key = jax.random.key(4)
  p0 = gx.init_params(key, X, 3, method=method, sample_weight=w)
  p0p = gx.init_params(key, Xp, 3, method=method, sample_weight=wp)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p0p)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10,
                               atol=1e-12)
  r = gx.fit(X, p0, sample_weight=w, tol=1e-8)
  rp = gx.fit(Xp, p0p, sample_weight=wp, tol=1e-8)
  assert int(r.n_iter) == int(rp.n_iter)
  np.testing.assert_allclose(float(r.log_likelihood),
                             float(rp.log_likelihood), rtol=1e-12)
  for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(rp.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9,
                               atol=1e-12)
  assert int(r.n_degenerate) == int(rp.n_degenerate)
  # Per-sample outputs: the padding rows are dropped.
  np.testing.assert_allclose(np.asarray(gx.log_prob(rp.params, Xp))[:len(X)],
                             np.asarray(gx.log_prob(r.params, X)),
                             rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_padded_fit_equals_unpadded_float32(X, weighted):
  # Two programs (two shapes) round differently: 20 iterations with tol=0
  # (no stopping decision), held to float32's precision.
  X32 = X.astype(np.float32)
  w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
  Xp, wp = gx.pad_samples(X32, sample_weight=w)
  p0 = gx.init_params(jax.random.key(4), X32, 3, sample_weight=w)
  r = gx.fit(X32, p0, sample_weight=w, tol=0.0, max_iter=20)
  rp = gx.fit(Xp, p0, sample_weight=wp, tol=0.0, max_iter=20)
  assert rp.params.means.dtype == jnp.float32
  np.testing.assert_allclose(float(r.log_likelihood),
                             float(rp.log_likelihood), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(r.params.means),
                             np.asarray(rp.params.means), atol=1e-3)


def test_estimator_reuses_programs_within_a_rung(X, compiles):
  """A fit and the predict family on a new sample count of the same rung
  compile nothing; max_iter (any up to 128: the max_iter=1 of warm-start
  loops too), tol and reg_covar change no program."""
  Xf = np.concatenate([X, X[::-1] + 0.1])  # 420 rows: padded to 512
  gm = gx.GaussianMixture(3, covariance_type="diag", random_state=0).fit(Xf)
  gm.predict(Xf), gm.score(Xf), gm.predict_proba(Xf), gm.sample(5)
  del compiles[:]
  other = gx.GaussianMixture(3, covariance_type="diag", random_state=0,
                             max_iter=90, tol=1e-4, reg_covar=1e-5)
  other.fit(Xf[:430])  # 430 rows: 512 too
  other.predict(Xf[:441]), other.score(Xf[:420]), other.predict_proba(Xf)
  other.bic(Xf), other.sample(99)
  gx.GaussianMixture(3, covariance_type="diag", random_state=0,
                     reg_covar=0.0).fit(Xf).score(Xf)
  with pytest.warns(ConvergenceWarning):  # one iteration: not converged
    gx.GaussianMixture(3, covariance_type="diag", max_iter=1,
                       random_state=0).fit(Xf)
  assert compiles == []


def test_estimator_fit_is_one_program(X, compiles):
  """Initialisation (k-means) and the EM loop compile as one program.

  Other tests in this process may have compiled it already: JAX's caches
  are dropped first (a persistent-cache hit is counted too)."""
  jax.clear_caches()
  gm = gx.GaussianMixture(4, covariance_type="spherical", random_state=0)
  gm.fit(X)
  assert len(compiles) == 1, compiles


@pytest.mark.parametrize("method", METHODS)
def test_an_init_in_slots_draws_what_the_exact_init_draws(X, method, x64):
  """The first k of 8 masked slots are init_params' k components, for
  every method: k-means++ seeds each centre among k's candidates (not 8's),
  from uniforms keyed by centre and candidate, so the draw does not depend
  on whether a problem is small enough for slots."""
  from gmmjax._src import init as init_lib
  w = np.random.default_rng(2).uniform(0.5, 1.5, len(X))
  for k in (2, 5):
    key = jax.random.key(10 + k)
    exact = gx.init_params(key, X, k, method=method, sample_weight=w)
    slotted = init_lib.init_masked(key, jnp.asarray(X), jnp.asarray(w),
                                   jnp.asarray(1e-6), 8, jnp.arange(8) < k,
                                   "full", method)
    assert np.all(np.asarray(slotted.weights)[k:] == 0)
    for f in ("weights", "means", "covariances"):
      np.testing.assert_allclose(np.asarray(getattr(slotted, f))[:k],
                                 np.asarray(getattr(exact, f)),
                                 rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["kmeans", "k-means++"])
def test_estimator_in_slots_equals_it_without_slots(X, method, x64,
                                                    monkeypatch):
  """GaussianMixture with its default init (k-means, or k-means++): the
  fit in 8 slots is the fit without slots, to rounding, restarts
  included."""
  from gmmjax._src import padding

  def fitted():
    gm = gx.GaussianMixture(3, covariance_type="full", init_params=method,
                            n_init=2, tol=1e-8, random_state=0).fit(X)
    return (gm.weights_, gm.means_, gm.covariances_, gm.lower_bound_,
            gm.n_iter_, gm.predict_proba(X))

  assert padding.component_slots(3, 224, 2, "full") == 8
  slotted = fitted()
  monkeypatch.setattr(padding, "SLOTS_MAX_ENTRIES", 0)
  assert padding.component_slots(3, 224, 2, "full") is None
  for got, want in zip(slotted, fitted(), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reg_covar", [1e-6, 0.0])
@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_estimator_fit_in_slots_equals_the_exact_fit(X, ctype, reg_covar,
                                                     x64):
  """The estimator fits 3 components in 8 slots of padded data (one
  program for every n_components up to 8): from the same initial params
  it is gx.fit's 3-component fit of the unpadded data. With reg_covar=0
  too: the empty slots are factorised as the unit, so they need (and
  report) no Cholesky jitter."""
  from gmmjax._src import padding
  assert padding.component_slots(3, 224, 2, ctype) == 8
  p0 = gx.init_params(jax.random.key(2), X, 3, covariance_type=ctype)
  prec = np.asarray(p0.precisions_cholesky)
  prec = prec @ np.swapaxes(prec, -1, -2) if ctype in ("full", "tied") else (
      prec * prec)
  gm = gx.GaussianMixture(3, covariance_type=ctype, tol=1e-8,
                          reg_covar=reg_covar,
                          weights_init=np.asarray(p0.weights),
                          means_init=np.asarray(p0.means),
                          precisions_init=prec).fit(X)
  r = gx.fit(X, p0, tol=1e-8, reg_covar=reg_covar)
  assert gm.n_iter_ == int(r.n_iter) and gm.weights_.shape == (3,)
  assert gm.jitter_ == float(r.jitter) == 0.0
  for got, want in [(gm.weights_, r.params.weights),
                    (gm.means_, r.params.means),
                    (gm.covariances_, r.params.covariances)]:
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(gm.score(X), float(r.log_likelihood),
                             rtol=1e-12)
  np.testing.assert_allclose(gm.predict_proba(X),
                             np.exp(np.asarray(gx.e_step(r.params, X)[0])),
                             rtol=1e-9, atol=1e-12)
  assert gm.n_degenerate_ == int(r.n_degenerate)


@pytest.mark.parametrize("ctype", ["full", "diag"])
def test_empty_slots_are_factorised_as_the_unit(ctype, x64):
  """With reg_covar=0 an empty slot's estimate is the zero matrix, whose
  factorisation is not finite; the M-step's mask puts the unit there
  first: finite factors, no jitter, the active slot untouched."""
  from gmmjax._src import stats
  sxx = np.stack([np.diag([4.0, 9.0]), np.zeros((2, 2))]) * 10
  st = stats.SuffStats(
      count=jnp.float64(10.0), nk=jnp.array([10.0, 0.0]),
      sx=jnp.zeros((2, 2)),
      sxx=jnp.asarray(sxx if ctype == "full" else np.diagonal(sxx, 0, 1, 2)),
      log_likelihood=jnp.float64(0.0))
  unmasked, _ = stats.params_and_jitter_from_stats(st, jnp.zeros(2), ctype,
                                                   0.0)
  assert not np.all(np.isfinite(np.asarray(unmasked.precisions_cholesky)))
  p, jitter = stats.params_and_jitter_from_stats(
      st, jnp.zeros(2), ctype, 0.0, mask=jnp.array([True, False]))
  want = np.stack([np.diag([4.0, 9.0]), np.eye(2)])
  want_pc = np.stack([np.diag([1 / 2, 1 / 3]), np.eye(2)])
  if ctype == "diag":
    want, want_pc = np.diagonal(want, 0, 1, 2), np.diagonal(want_pc, 0, 1, 2)
  np.testing.assert_allclose(np.asarray(p.covariances), want, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(p.precisions_cholesky), want_pc,
                             rtol=1e-12)
  assert float(jitter) == 0.0


def test_n_components_of_one_slot_rung_share_programs(X, compiles):
  """n_components 2..8 of one covariance type: one fit, one score and one
  predict_proba program (padding.component_slots)."""
  first = gx.GaussianMixture(2, covariance_type="diag", random_state=0)
  first.fit(X).score(X), first.predict_proba(X)
  del compiles[:]
  for k in (3, 5, 8):
    gm = gx.GaussianMixture(k, covariance_type="diag", random_state=0).fit(X)
    assert gm.means_.shape == (k, 2) and gm.predict_proba(X).shape == (210, k)
    gm.score(X)
  assert compiles == []


_BAYES_CASES = [("full", "dirichlet_process"),
                ("tied", "dirichlet_distribution"),
                ("diag", "dirichlet_distribution"),
                ("spherical", "dirichlet_process")]


def _bayes_posteriors(X, w, ctype, prior_type, method, tol=1e-8,
                      key=None):
  """A 3-component variational fit: exact, in 8 slots, and in 8 slots of
  the program the four types share (as full matrices, converted back);
  the last two cut to 3 components, on the host."""
  from gmmjax._src import bayes_fit, bayes_params, padding, type_switch
  key = jax.random.key(3) if key is None else key
  prior = bayes_params.make_bayes_prior(X, 3, covariance_type=ctype,
                                        sample_weight=w)
  kw = dict(n_init=1, prior_type=prior_type, method=method, max_iter=300,
            tol=tol, reg_covar=1e-6, sample_weight=w, callback=None)
  exact = bayes_fit.bayes_restart_results(key, X, 3, covariance_type=ctype,
                                          prior=prior, **kw)
  slotted = bayes_fit.bayes_restart_results(key, X, 8, n_active=3,
                                            covariance_type=ctype,
                                            prior=prior, **kw)
  full_prior = prior._replace(covariance_prior=jnp.asarray(
      type_switch.prior_to_full(prior.covariance_prior, ctype, X.shape[1])))
  shared = bayes_fit.bayes_restart_results(
      key, X, 8, n_active=3, covariance_type="full", prior=full_prior,
      structure=type_switch.CODES[ctype], **kw)
  shared = jax.device_get(shared)
  shared = shared._replace(params=type_switch.params_from_full(
      padding.unpad_components(shared.params, 3), ctype))
  return exact, slotted._replace(
      params=padding.unpad_components(slotted.params, 3)), shared


@pytest.mark.parametrize(("ctype", "prior_type"), _BAYES_CASES)
def test_bayesian_fit_in_slots_equals_the_exact_fit(X, ctype, prior_type,
                                                     x64, monkeypatch):
  """A Bayesian mixture of 3 components fitted in 8 slots (the masked
  Dirichlet sums, stick breaks and bound terms, a tied scale averaged over
  the active slots), and in the program the four types share (full
  matrices, each type's Wishart posterior picked by a traced code), is the
  3-component fit, with sample weights, for both weight priors and the
  four types; so are the estimator's fitted posterior, predict_proba and
  score_samples, which run in the shared programs."""
  from gmmjax._src import padding
  w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, X.shape[0]))
  exact, *others = _bayes_posteriors(jnp.asarray(X), w, ctype, prior_type,
                                     "random_from_data")
  for other in others:  # in slots; in the four types' shared program
    assert int(exact.n_iter) == int(other.n_iter) > 2
    assert int(exact.n_degenerate) == int(other.n_degenerate)
    np.testing.assert_allclose(float(other.log_likelihood),
                               float(exact.log_likelihood), rtol=1e-12)
    assert other.params.covariance_type == ctype
    for got, want in zip(jax.tree.leaves(other.params),
                         jax.tree.leaves(exact.params), strict=True):
      assert np.shape(got) == np.shape(want)
      np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  # The estimator (3 components in 8 slots, evaluated in GaussianMixture's
  # programs of 8 slots, its default k-means init in 8 masked slots)
  # against itself with slots turned off.
  def fitted():
    bgm = gx.BayesianGaussianMixture(
        n_components=3, covariance_type=ctype,
        weight_concentration_prior_type=prior_type, tol=1e-8, max_iter=300,
        random_state=0).fit(X)
    return (bgm.weights_, bgm.means_, bgm.covariances_,
            bgm.degrees_of_freedom_, bgm.lower_bound_, bgm.n_iter_,
            bgm.score_samples(X), bgm.predict_proba(X))

  slotted = fitted()
  monkeypatch.setattr(padding, "SLOTS_MAX_ENTRIES", 0)  # exactly 3
  assert padding.component_slots(3, 256, 2, ctype) is None
  for got, want in zip(slotted, fitted(), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_bayesian_fit_in_slots_float32(X):
  """The same in float32: the slotted fit is the exact one to rounding."""
  w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, X.shape[0]),
                  jnp.float32)
  for ctype, prior_type in _BAYES_CASES[:2]:
    exact, *others = _bayes_posteriors(jnp.asarray(X, jnp.float32), w,
                                       ctype, prior_type, "random_from_data",
                                       tol=1e-2)
    for other in others:
      assert int(exact.n_iter) == int(other.n_iter)
      for got, want in zip(jax.tree.leaves(other.params),
                           jax.tree.leaves(exact.params), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_bayesian_host_loop_in_slots_equals_the_exact_one(X, x64):
  """The host loop (fit_bayes_chunked's) on a posterior in 8 slots, 3
  active: the mixture whose statistics each pass sums has weight 0 in the
  inactive slots (VariationalStep.evaluated reads the mask), so the fit is
  the 3-component one."""
  from gmmjax._src import (
    bayes_params,
    engine,
    padding,
    scale_chunked,
    variational,
  )
  Xj = jnp.asarray(X)
  prior = gx.make_bayes_prior(Xj, 3, covariance_type="full")
  resp = jax.nn.softmax(jax.random.normal(jax.random.key(5), (len(X), 3),
                                          Xj.dtype))
  p0 = gx.posterior_from_resp(Xj, resp, prior, covariance_type="full")
  exact = gx.fit_bayes_chunked(np.asarray(X), p0, prior, chunk_size=64,
                               tol=1e-8, max_iter=300)
  mask = jnp.arange(8) < 3
  post = jax.tree.map(jnp.asarray, padding.pad_posterior(
      jax.device_get(p0), 8))
  _, stats_pass, _ = scale_chunked.chunked_stats_pass(
      np.asarray(X), bayes_params.variational_mixture(post, mask=mask),
      chunk_size=64)
  problem = engine.Problem(None, None, jnp.asarray(1e-8),
                           jnp.asarray(1e-6), prior, mask)
  slotted = engine.host_fit(post, problem, stats_pass, prev_ll=-np.inf,
                            max_iter=300, step=variational.VariationalStep())
  assert int(slotted.n_iter) == int(exact.n_iter) > 2
  np.testing.assert_allclose(float(slotted.log_likelihood),
                             float(exact.log_likelihood), rtol=1e-12)
  cut = padding.unpad_components(jax.device_get(slotted.params), 3)
  for got, want in zip(jax.tree.leaves(cut), jax.tree.leaves(exact.params),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_bayesian_slots_with_a_singular_prior_or_empty_components(
    X, monkeypatch, x64):
  """The estimator in slots against its exact fit (slots turned off):

  - a duplicated feature: the default covariance prior (the data's
    covariance) is singular, the fitted scales are not (reg_covar); the
    empty slots' scale is the unit, not the prior, so the slotted fit needs
    no jitter either;
  - a Dirichlet process that empties components: the same degenerate
    count (the active slots' posterior weights), weights and bound.
  """
  from gmmjax._src import padding
  Xd = np.column_stack([X[:, 0], X[:, 0], X[:, 1]])
  cases = [(Xd, dict(n_components=3)),
           (X, dict(n_components=6, weight_concentration_prior=1e-3))]

  def fitted():
    return [gx.BayesianGaussianMixture(init_params="random_from_data",
                                       random_state=0, **kw).fit(data)
            for data, kw in cases]

  slotted = fitted()
  monkeypatch.setattr(padding, "SLOTS_MAX_ENTRIES", 0)
  exact = fitted()
  assert slotted[0].jitter_ == exact[0].jitter_ == 0.0
  assert slotted[1].n_degenerate_ == exact[1].n_degenerate_ > 0
  for a, b in zip(slotted, exact, strict=True):
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.lower_bound_, b.lower_bound_, rtol=1e-10)
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-10)


def test_bayesian_n_components_of_one_slot_rung_share_programs(X, compiles):
  """BayesianGaussianMixture with n_components 2..8 of the four types: one
  fit program, and predict_proba and score_samples in GaussianMixture's
  evaluation programs of the same slots (the four types' shared ones):
  after a first full one, the other types compile nothing either."""
  gm = gx.GaussianMixture(2, covariance_type="tied", random_state=0).fit(X)
  gm.score_samples(X), gm.predict_proba(X)
  first = gx.BayesianGaussianMixture(n_components=2, random_state=0).fit(X)
  first.score_samples(X), first.predict_proba(X)
  del compiles[:]
  for k, ctype in [(3, "tied"), (5, "full"), (8, "spherical"), (4, "diag")]:
    bgm = gx.BayesianGaussianMixture(n_components=k, covariance_type=ctype,
                                     random_state=0).fit(X)
    assert bgm.means_.shape == (k, 2) and bgm.weights_.shape == (k,)
    assert bgm.covariances_.shape == covariance.covariance_shape(ctype, k, 2)
    assert bgm.predict_proba(X).shape == (210, k)
    bgm.score_samples(X)
  assert compiles == []
