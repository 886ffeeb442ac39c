"""Progress bars (gmmjax._src.progress): tqdm's when installed, else the
text bar; the estimator's ``fit(progress=True)`` and the shared hook.

Both estimator fits below have one data shape and the same compiled hook
(``progress.forward``), so they share one program.
"""

import io
import sys

import numpy as np
import pytest

import gmmjax as gx
from gmmjax._src import progress


@pytest.fixture
def without_tqdm(monkeypatch):
  """tqdm made unimportable (``import tqdm.auto`` raises ImportError)."""
  monkeypatch.setitem(sys.modules, "tqdm.auto", None)
  progress.have_tqdm.cache_clear()
  yield
  progress.have_tqdm.cache_clear()


@pytest.fixture(scope="module")
def X():
  rng = np.random.default_rng(1)
  return np.concatenate([rng.normal(-4, 1, (40, 2)), rng.normal(4, 1, (40, 2))])


def test_text_bar_draws_furthest_iteration():
  out = io.StringIO()
  bar = progress.TextBar(10, label="EM", stream=out, width=10,
                         min_interval=0.0)
  bar(3, -1.5, 0.25)
  bar(2, -1.6, 0.5)  # another restart behind: the bar keeps the furthest
  bar.close()
  last = out.getvalue().split("\r")[-1]
  assert last == "EM [###-------] 3/10 iter  ll -1.60000  change 5.00e-01   \n"


def test_progress_bar_is_tqdm_when_installed():
  pytest.importorskip("tqdm")
  out = io.StringIO()
  with progress.progress_bar(10, label="EM", stream=out) as bar:
    assert isinstance(bar, progress.TqdmBar)
    progress.forward(4, -2.0, 0.125)  # the shared hook feeds the active bar
  assert bar.n == 4
  text = out.getvalue()
  assert "EM:" in text and "4/10" in text and "ll=-2.00000" in text


def test_progress_bar_falls_back_to_text(without_tqdm):
  out = io.StringIO()
  with progress.progress_bar(10, stream=out) as bar:
    assert isinstance(bar, progress.TextBar)
    progress.forward(10, -2.0, 0.0)
  assert "EM [" in out.getvalue() and "10/10 iter" in out.getvalue()


def test_forward_feeds_the_innermost_bar_only():
  outer = progress.TextBar(5, stream=io.StringIO())
  inner = progress.TextBar(5, stream=io.StringIO())
  progress.forward(1, 0.0, 0.0)  # no bar: nothing happens
  with outer:
    with inner:
      progress.forward(2, 0.0, 0.0)
    progress.forward(1, 0.0, 0.0)
  assert (outer.n, inner.n) == (1, 2)
  assert not progress._ACTIVE


def test_progress_hook_is_one_object():
  # The compiled loop keys on its callback: every progress fit (with the
  # same verbose and callback) gets the same one, so it compiles once.
  gm = gx.GaussianMixture(2)
  assert gm._progress_callback(None, True) is progress.forward
  assert gm._progress_callback(None, False) is None
  hook = print
  assert gm._progress_callback(hook, True) is gm._progress_callback(hook, True)


@pytest.mark.parametrize("tqdm", [True, False])
def test_estimator_fit_shows_progress(X, capsys, request, tqdm):
  if tqdm:
    pytest.importorskip("tqdm")
  else:
    request.getfixturevalue("without_tqdm")
  gm = gx.GaussianMixture(2, random_state=0).fit(X, progress=True)
  err = capsys.readouterr().err
  last = err.replace("\r", "\n").strip().splitlines()[-1]
  if tqdm:
    assert last.startswith("EM:") and f"| {gm.n_iter_}/100 [" in last
  else:
    assert last.startswith("EM [") and f" {gm.n_iter_}/100 iter" in last
  assert not progress._ACTIVE
  labels = gm.fit_predict(X, progress=False)
  assert capsys.readouterr().err == ""  # no bar unless asked
  assert labels.shape == (80,)
