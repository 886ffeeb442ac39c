"""The tutorial examples run end to end and save their figures."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _assert_png(path):
  from matplotlib.image import imread
  assert path.stat().st_size > 20_000
  img = imread(path)
  assert img.std() > 0.05  # not blank


def test_tutorial_1d(tmp_path):
  out = tmp_path / "t1.png"
  result = _load("tutorial_1d").run(str(out))
  means = np.sort(np.asarray(result.params.means).ravel())
  np.testing.assert_allclose(means, [-15, 0, 15], atol=1.0)
  assert bool(result.converged)
  _assert_png(out)


@pytest.mark.slow
def test_tutorial_2d(tmp_path):
  out = tmp_path / "t2.png"
  fits = _load("tutorial_2d").run(str(out))
  for _, _, gm in fits:
    assert gm.converged_
    proba = gm.predict_proba(np.array([[0.5, 0.5]]))
    np.testing.assert_allclose(proba.sum(), 1.0, rtol=1e-5)
    # Every fitted component holds a real share of the points.
    assert np.all(gm.weights_ > 0.1)
  _assert_png(out)
