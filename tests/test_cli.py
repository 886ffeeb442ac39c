"""The ``gmmjax`` command line on files we write.

Every subprocess pays the JAX import (and a compile for commands that fit):
the commands run as real subprocesses where the process is what is tested
(``fit`` with ``--verbose``, ``predict``, ``select`` with its progress bar,
the demo under XLA's default code generator, and one bad input's exit
status and single stderr line), the other runs call ``cli.main(argv)`` in this process, which is what the
entry point runs (``sys.exit(main())``): its return value is the exit
status, its output what the process would print.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from gmmjax import cli
from gmmjax._src import io


def gmmjax(*args, cwd, default_xla_flags=False):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("GMMJAX_DEBUG", None)
  if default_xla_flags:  # without the suite's compile-time flag (conftest)
    env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "gmmjax", *map(str, args)],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=300)


class InProcess:
  """``cli.main(argv)`` run here: ``returncode``, ``stdout``, ``stderr``."""

  def __init__(self, capsys, monkeypatch):
    self.capsys, self.monkeypatch = capsys, monkeypatch
    monkeypatch.delenv("GMMJAX_DEBUG", raising=False)

  def __call__(self, *args, cwd):
    self.monkeypatch.chdir(cwd)
    self.capsys.readouterr()  # drop anything printed before
    with np.printoptions():  # fit and the demo set NumPy's print options
      returncode = cli.main([str(a) for a in args])
    out, err = self.capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, out, err)


@pytest.fixture
def in_process(capsys, monkeypatch):
  return InProcess(capsys, monkeypatch)


def three_blobs(seed=0, n_per=80):
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.normal(c, [0.6, 1.0], (n_per, 2))
                         for c in ([-5.0, 0.0], [0.0, 5.0], [5.0, 0.0])])


def mixture_logpdf(model, X):
  """Independent reference: log of sum_k w_k N(x | mu_k, Sigma_k) by SciPy."""
  dens = sum(w * multivariate_normal(m, c).pdf(X) for w, m, c in
             zip(model.weights_, model.means_, model.covariances_,
                 strict=True))
  return np.log(dens)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  X = three_blobs()
  np.savetxt(d / "train.csv", X, delimiter=",", header="x,y", comments="")
  np.save(d / "test.npy", X[::3])
  np.savez(d / "test.npz", X=X[::5])
  return d, X


@pytest.fixture(scope="module")
def fitted(workdir):
  d, X = workdir
  r = gmmjax("fit", "train.csv", "--n-components", 3, "--seed", 1,
             "--n-init", 2, "--tol", 1e-5, "--verbose", "--verbose-interval",
             1, "--out", "model.npz", cwd=d)
  assert r.returncode == 0, r.stderr
  return d, X, r


def test_fit_reads_csv_with_header_and_saves_model(fitted):
  d, X, r = fitted
  model = io.load(d / "model.npz")
  assert model.n_components == 3 and model.n_features_in_ == 2
  assert model.converged_
  np.testing.assert_allclose(np.sort(model.means_[:, 0]), [-5, 0, 5],
                             atol=0.3)
  # --verbose prints iteration, log-likelihood and change while it runs.
  iters = [ln for ln in r.stdout.splitlines() if ln.startswith("  Iteration")]
  assert iters and all("log-likelihood" in ln and "ll change" in ln
                       for ln in iters)
  assert "converged:      True" in r.stdout
  assert "model saved to model.npz" in r.stdout
  # The summary's log-likelihood is the data's mean log density (SciPy).
  line = next(ln for ln in r.stdout.splitlines()
              if ln.startswith("log-likelihood:"))
  np.testing.assert_allclose(float(line.split()[1]),
                             mixture_logpdf(model, X).mean(), atol=1e-4)


def test_fit_progress_bar_through_the_fit_callback(workdir, tmp_path,
                                                  in_process):
  d, X = workdir
  r = in_process("fit", d / "train.csv", "-k", 3, "--max-iter", 40,
                 "--progress", "--out", "m.npz", cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  # The bar redraws with "\r" (splitlines splits there too).
  bar = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
  assert bar.startswith("EM [") and "/40 iter" in bar and "ll -" in bar
  model = io.load(tmp_path / "m.npz")
  assert type(model).__name__ == "GaussianMixture"
  assert f" {model.n_iter_}/40 iter" in bar


def test_predict_score_sample(fitted, in_process):
  d, X, _ = fitted
  model = io.load(d / "model.npz")
  Xt = X[::3]

  r = gmmjax("predict", "model.npz", "test.npy", "--proba", "--out",
             "proba.csv", cwd=d)
  assert r.returncode == 0, r.stderr
  proba = np.loadtxt(d / "proba.csv", delimiter=",")
  # Reference responsibilities: w_k N_k(x) / p(x) by SciPy.
  comp = np.stack([w * multivariate_normal(m, c).pdf(Xt) for w, m, c in
                   zip(model.weights_, model.means_, model.covariances_,
                       strict=True)], axis=1)
  np.testing.assert_allclose(proba, comp / comp.sum(1, keepdims=True),
                             atol=1e-5)

  # The other commands in this process (predict --proba ran as one).
  r = in_process("predict", "model.npz", "test.npy", cwd=d)  # to stdout
  assert r.returncode == 0, r.stderr
  labels = np.array([int(v) for v in r.stdout.split()])
  np.testing.assert_array_equal(labels, comp.argmax(1))

  r = in_process("score", "model.npz", "test.npz", cwd=d)
  assert r.returncode == 0, r.stderr
  score = float(r.stdout.split()[1])
  np.testing.assert_allclose(score, mixture_logpdf(model, X[::5]).mean(),
                             atol=1e-4)

  r = in_process("sample", "model.npz", "-n", 3000, "--seed", 3, "--out",
                 "draws.npy", "--labels", "draws_labels.csv", cwd=d)
  assert r.returncode == 0, r.stderr
  draws = np.load(d / "draws.npy")
  y = np.loadtxt(d / "draws_labels.csv", dtype=int)
  assert draws.shape == (3000, 2) and y.shape == (3000,)
  # Draws follow the model: label frequencies ~ weights, means ~ means.
  np.testing.assert_allclose(np.bincount(y, minlength=3) / 3000,
                             model.weights_, atol=0.04)
  for k in range(3):
    np.testing.assert_allclose(draws[y == k].mean(0), model.means_[k],
                               atol=0.2)


def test_select_prints_table_plots_and_saves(tmp_path):
  X = three_blobs(seed=5, n_per=60)
  np.save(tmp_path / "x.npy", X)
  r = gmmjax("select", "x.npy", "--k-min", 1, "--k-max", 5,
             "--covariance-type", "diag", "--progress", "--plot", "sel.png",
             "--out", "best.npz", cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  header = next(i for i, ln in enumerate(lines) if ln.split()[:2] ==
                ["k", "bic"])
  rows = [ln.split() for ln in lines[header + 1:header + 6]]
  assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5]
  bics = [float(row[1]) for row in rows]
  assert int(np.argmin(bics)) == 2 and rows[2][-1] == "*"
  assert "best k by BIC: 3" in r.stdout
  assert "EM over k=1..5 [" in r.stderr and "/100 iter" in r.stderr
  best = io.load(tmp_path / "best.npz")
  assert best.weights.shape == (3,) and best.covariance_type == "diag"
  png = (tmp_path / "sel.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_demo(tmp_path):
  # The main job as users run it: XLA's default code generator.
  r = gmmjax("demo", "--out", "demo.png", cwd=tmp_path,
             default_xla_flags=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("gmmjax demo: 1000 points, 5 stretched blobs")
  assert "converged:       True" in r.stdout
  # The data are 5 blobs of 200 points: the fit finds each (weights 0.2),
  # not a merged pair and a split blob (0.4, 0.1, 0.1: a local optimum).
  line = next(s for s in r.stdout.splitlines() if s.startswith("weights:"))
  weights = np.array(line.split("[")[1].split("]")[0].split(), float)
  np.testing.assert_allclose(np.sort(weights), 0.2, atol=0.01)
  assert "plot saved to demo.png" in r.stdout
  assert (tmp_path / "demo.png").stat().st_size > 20_000


@pytest.fixture(scope="module")
def bad_files(workdir):
  d, X = workdir
  Xn = X[:20].copy()
  Xn[7, 1] = np.nan
  np.savetxt(d / "nan.csv", Xn, delimiter=",")
  np.save(d / "three.npy", np.ones((10, 3)))
  np.savetxt(d / "data.txt", X[:10])
  (d / "fake_model.npz").write_bytes(b"PK\x03\x04 not really a zip")
  return d


PYARROW = importlib.util.find_spec("pyarrow") is not None

BAD = [
    (("fit", "missing.csv", "-k", 2, "--out", "m.npz"),
     "data file 'missing.csv' does not exist"),
    (("fit", "data.txt", "-k", 2, "--out", "m.npz"),
     "unsupported data format '.txt'"),
    (("fit", "nan.csv", "-k", 2, "--out", "m.npz"),
     "nan.csv contains NaN (missing values) in 1 row(s), the first at "
     "row index 7 (0-based)"),
    (("predict", "missing_model.npz", "test.npy"),
     "model file 'missing_model.npz' does not exist"),
    (("predict", "fake_model.npz", "test.npy"),
     "not a valid gmmjax model file"),
    (("score", "model.npz", "three.npy"),
     "the model has 2 feature(s) but three.npy has 3 column(s)"),
    (("select", "three.npy", "--k-max", 11),
     "--k-max 11 exceeds the 10 samples"),
]


# The case also run as a real process: its exit status, and nothing else
# (a traceback, a warning at import) on its stderr.
IN_A_PROCESS = 4


@pytest.mark.parametrize("case", range(len(BAD)), ids=[
    f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_is_one_clear_line(fitted, bad_files, in_process, case):
  args, message = BAD[case]
  run = gmmjax if case == IN_A_PROCESS else in_process
  r = run(*args, cwd=bad_files)
  assert r.returncode == 1
  assert "Traceback" not in r.stderr
  assert r.stderr.startswith("gmmjax: error: ")
  assert message in r.stderr, r.stderr
  assert r.stderr.count("\n") == 1


def test_parquet(fitted, bad_files, in_process):
  d = bad_files
  path = d / "x.parquet"
  if PYARROW:  # pragma: no cover - pyarrow is optional
    import pyarrow as pa
    import pyarrow.parquet as pq
    X = three_blobs()[:60]
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1]}), path)
    r = in_process("score", "model.npz", "x.parquet", cwd=d)
    assert r.returncode == 0, r.stderr
  else:
    path.write_bytes(b"PAR1")
    r = in_process("score", "model.npz", "x.parquet", cwd=d)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "needs pyarrow: pip install pyarrow" in r.stderr
