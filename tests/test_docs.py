"""The docstrings' examples run (doctest), and public functions have them.

Modules are collected from the files under ``gmmjax/`` when the tests are
collected (``gmmjax/_src`` is a namespace package, which ``pkgutil`` does not
walk), so modules added later are tested without editing this file.
"""

import doctest
import importlib
import importlib.util
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


# Examples here call their module's own functions unqualified, which a user
# copying them cannot: each should import gmmjax and call ``gx.<name>``.
NOT_SELF_CONTAINED = set()


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(
        strict=True, reason="examples use the module's globals"))
    if name in NOT_SELF_CONTAINED else name for name in MODULES])
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  failures = []
  # Each example sees only what it imports (not the module's globals, which
  # `pytest --doctest-modules` lends it): a user copies it alone. The finder
  # keeps only objects defined in this module (re-exports are tested in
  # their own module).
  for test in finder.find(module, name, globs={}):
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


def _make_api():
  path = README.parent / "docs" / "make_api.py"
  spec = importlib.util.spec_from_file_location("make_api", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_api_reference_lists_every_public_name():
  """docs/api.md has one entry per public name, and no other."""
  make_api = _make_api()
  text = make_api.API_MD.read_text(encoding="utf-8")
  listed = set(re.findall(r"^#### (\S+)$", text, flags=re.M))
  public = {f"gx.{name}" for name in gmmjax.__all__}
  for modname, alias in make_api.SUBMODULES.items():
    module = importlib.import_module(modname)
    public |= {f"{alias}.{name}" for name in make_api.public_names(module)}
  fix = "run python docs/make_api.py"
  assert not public - listed, (
      f"docs/api.md misses {sorted(public - listed)}: {fix}")
  assert not listed - public, (
      f"docs/api.md lists names that are not public "
      f"{sorted(listed - public)}: {fix}")


def test_api_reference_is_current():
  """docs/api.md is what docs/make_api.py writes from today's docstrings."""
  make_api = _make_api()
  assert make_api.API_MD.read_text(encoding="utf-8") == make_api.render(), (
      "docs/api.md is stale: run python docs/make_api.py")


def test_public_names_have_a_summary():
  make_api = _make_api()
  missing = [name for name in gmmjax.__all__
             if not make_api.summary(getattr(gmmjax, name), name)]
  assert not missing, (f"{missing} have no docstring summary (a constant: "
                       "add it to CONSTANT_SUMMARIES in docs/make_api.py)")
