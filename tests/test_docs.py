"""The docstrings' examples run (doctest), and public functions have them.

Modules are collected from the files under ``gmmjax/`` when the tests are
collected (``gmmjax/_src`` is a namespace package, which ``pkgutil`` does not
walk), so modules added later are tested without editing this file.
"""

import doctest
import importlib
import inspect
import pathlib
import re

import matplotlib
import pytest

import gmmjax

matplotlib.use("Agg")


def _module_names():
  root = pathlib.Path(gmmjax.__file__).parent
  names = []
  for path in root.rglob("*.py"):
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__main__" or any(p.startswith(".") for p in parts):
      continue
    if parts[-1] == "__init__":
      parts = parts[:-1]
    names.append(".".join(parts))
  return sorted(names)


MODULES = _module_names()


def test_modules_found():
  assert {"gmmjax._src.io", "gmmjax._src.select", "gmmjax.plot", "gmmjax.cli",
          "gmmjax._src.fit", "gmmjax._src.estimator"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  failures = []
  # Examples see the module's globals, as `pytest --doctest-modules` does;
  # the finder keeps only objects defined in this module (re-exports are
  # tested in their own module).
  for test in finder.find(module, name):
    runner.run(test, out=failures.append, clear_globs=True)
  import matplotlib.pyplot as plt
  plt.close("all")
  assert runner.failures == 0, "".join(failures)


# Public functions of the user-facing modules this file guards; each needs a
# docstring with an ``Example:`` section that doctest runs.
DOCUMENTED = {
    "gmmjax._src.io": ["save", "load", "read_metadata"],
    "gmmjax._src.select": ["select_n_components", "format_table"],
    "gmmjax.plot": ["plot_ellipses", "plot_pairs", "plot_density_1d",
                    "plot_log_likelihood", "plot_criterion"],
    "gmmjax.datasets": ["tutorial_1d", "blobs", "four_components"],
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_public_functions_have_examples(name):
  module = importlib.import_module(name)
  for fn_name in DOCUMENTED[name]:
    fn = getattr(module, fn_name)
    doc = inspect.getdoc(fn) or ""
    assert "Example:" in doc and ">>>" in doc, f"{name}.{fn_name}"
    assert "Args:" in doc or not inspect.signature(fn).parameters, (
        f"{name}.{fn_name} documents no arguments")


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples(tmp_path, monkeypatch, capsys):
  """The README's ```python blocks run, in order, in one namespace."""
  text = README.read_text(encoding="utf-8")
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 8
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "readme"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception as e:  # pragma: no cover - the failure message
      raise AssertionError(f"README python block {i} failed: {e!r}\n"
                           f"{block}") from e
  # What the README's comments claim.
  assert namespace["sel"].best_k == 4
  assert namespace["search"].best_params_ == {"n_components": 3}
  assert namespace["result"].params.means.shape == (3, 2)
  import matplotlib.pyplot as plt
  plt.close("all")
