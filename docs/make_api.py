"""Writes docs/api.md, the API reference, from the public names' docstrings.

Run ``python docs/make_api.py`` from the repository root after adding,
renaming or re-documenting a public name; ``tests/test_docs.py`` fails while
the page differs from what this script writes.

The public names are ``gmmjax.__all__`` and, for the public submodules
(:data:`SUBMODULES`), their ``__all__`` or, without one, the functions they
define whose names do not start with ``_``. Each entry gives the signature
(without annotations, which the docstring's Args section spells out), the
docstring's summary (its first paragraph) and ``help(...)``, which prints the
whole docstring.
"""

import argparse
import importlib
import inspect
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"

# Public submodules, with the alias the README imports them as.
SUBMODULES = {"gmmjax.plot": "plot", "gmmjax.datasets": "datasets"}

# Constants have no docstring of their own.
CONSTANT_SUMMARIES = {
    "COVARIANCE_TYPES": ("scikit-learn's `covariance_type` values; `\"lowrank\"` "
                         "(with `rank=q`) is accepted too."),
    "DIFFERENTIATION_MODES": "The accepted `differentiation` values of "
                             "`fit`.",
    "INIT_METHODS": "The accepted `init_params` values.",
}

HEADER = """\
# API reference

Every public name of gmmjax, with its signature and the summary line of its
docstring. The docstring itself (arguments with shapes, what is returned, a
runnable example) is one `help(...)` away, e.g. `help(gx.fit)` after
`import gmmjax as gx`. For how the pieces fit together, read the
[README](../README.md), [differentiation](differentiation.md),
[scale](scale.md) and [robustness](robustness.md).

This page is written by `python docs/make_api.py` from the docstrings; do
not edit it by hand (`tests/test_docs.py` fails when it is stale).
"""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MODULE = re.compile(r"<module '([\w.]+)'[^>]*>")  # its path is the machine's
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def _plain(text: str) -> str:
  """A repr without addresses or paths, so the page is the same everywhere."""
  return _MODULE.sub(r"\1", _ADDRESS.sub("", text))


def _markdown(text: str) -> str:
  """reST's ``code`` and :func:`name` as Markdown code."""
  return _ROLE.sub(r"`\1`", text).replace("``", "`")


def public_names(module) -> list[str]:
  """The names a module exports: its ``__all__``, else its public functions."""
  names = getattr(module, "__all__", None)
  if names is None:
    names = [name for name, obj in vars(module).items()
             if not name.startswith("_") and inspect.isfunction(obj)
             and obj.__module__ == module.__name__]
  return sorted(names, key=lambda n: (n.lower(), n))


def summary(obj, name: str) -> str:
  """The docstring's first paragraph on one line ('' when there is none)."""
  if name in CONSTANT_SUMMARIES:
    return CONSTANT_SUMMARIES[name]
  if not (inspect.isroutine(obj) or inspect.isclass(obj)
          or inspect.ismodule(obj) or hasattr(obj, "__wrapped__")):
    return ""  # an instance would give its type's docstring
  doc = inspect.getdoc(obj) or ""
  first = doc.strip().split("\n\n", 1)[0]
  return _markdown(" ".join(first.split()))


def signature(obj, qualname: str) -> str:
  """``qualname(a, b=1, *, c=None)``, wrapped at 79 columns."""
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError):
    return ""
  params = [p.replace(annotation=inspect.Parameter.empty)
            for p in sig.parameters.values()]
  if inspect.isclass(obj) and params and params[0].name == "self":
    params = params[1:]
  text = str(sig.replace(parameters=params,
                         return_annotation=inspect.Signature.empty))
  return _wrap(qualname, _plain(text))


def _wrap(qualname: str, text: str) -> str:
  line = qualname + text
  if len(line) <= 79:
    return line
  inner = text[1:-1]
  parts = _split_top_level(inner)
  indent = " " * (len(qualname) + 1)
  lines, current = [], qualname + "("
  for i, part in enumerate(parts):
    piece = part + ("," if i < len(parts) - 1 else ")")
    if len(current) + len(piece) + 1 > 79 and current.strip() not in (
        "", qualname + "("):
      lines.append(current.rstrip())
      current = indent
    elif not current.endswith("("):
      current += " "
    current += piece
  lines.append(current)
  return "\n".join(lines)


def _split_top_level(text: str) -> list[str]:
  """Splits on the commas that are not inside brackets or quotes."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      if ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i].strip())
      start = i + 1
  parts.append(text[start:].strip())
  return [p for p in parts if p]


def _kind(obj) -> str:
  if inspect.ismodule(obj):
    return "Modules"
  if inspect.isclass(obj):
    if issubclass(obj, Warning | Exception):
      return "Exceptions and warnings"
    return "Classes"
  if callable(obj):
    return "Functions"
  return "Constants"


KINDS = ("Functions", "Classes", "Exceptions and warnings", "Constants",
         "Modules")


def _methods(cls) -> list[tuple[str, object]]:
  """Public methods and properties the class and its gmmjax bases define
  and document (not those scikit-learn's bases add, nor their stand-in
  without scikit-learn, sklearn_compat.FallbackBase: the same either way)."""
  if issubclass(cls, tuple):  # NamedTuples: the signature lists the fields
    return []
  out = {}
  for base in reversed(cls.__mro__):
    if (not base.__module__.startswith("gmmjax")
        or base.__name__ == "FallbackBase"):
      continue
    for name, obj in vars(base).items():
      if name.startswith("_"):
        continue
      if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
      if inspect.isfunction(obj) or isinstance(obj, property):
        out[name] = obj  # the subclass's own wins (later in this walk)
      else:  # a member a subclass removes (bayes_estimator._Absent)
        out.pop(name, None)
  return sorted(out.items())


def _method_signature(fn, name: str) -> str:
  """``name(a, b=1)``, without ``self``, on one line."""
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return name + "(...)"
  params = [p.replace(annotation=inspect.Parameter.empty)
            for p in sig.parameters.values()]
  if params and params[0].name in ("self", "cls"):
    params = params[1:]
  return name + _plain(str(sig.replace(
      parameters=params, return_annotation=inspect.Signature.empty)))


def _entry(alias: str, name: str, obj) -> list[str]:
  qualname = f"{alias}.{name}"
  lines = [f"#### {qualname}", ""]
  sig = signature(obj, qualname) if callable(obj) else ""
  if not (callable(obj) or inspect.ismodule(obj)):
    sig = f"{qualname} = {_plain(repr(obj))}"
  if sig:
    lines += ["```python", sig, "```", ""]
  text = summary(obj, name) or "(No docstring.)"
  if callable(obj) or inspect.ismodule(obj):
    text += f" `help({qualname})`"
  lines += [text, ""]
  if inspect.isclass(obj):
    for mname, member in _methods(obj):
      what = summary(member.fget if isinstance(member, property) else member,
                     mname)
      label = f"`{mname}`"
      if not isinstance(member, property):
        label = f"`{_method_signature(member, mname)}`"
      lines.append(f"- {label}: {what}" if what else f"- {label}")
    if lines[-1] != "":
      lines.append("")
  return lines


def _anchor(heading: str) -> str:
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _section(title: str, alias: str, module, names) -> list[str]:
  lines = [f"## {title}", ""]
  groups = {kind: [] for kind in KINDS}
  for name in names:
    obj = getattr(module, name)
    groups[_kind(obj)].append((name, obj))
  index = ["| name | summary |", "| --- | --- |"]
  body = []
  for kind in KINDS:
    if not groups[kind]:
      continue
    body += [f"### {kind}", ""]
    for name, obj in groups[kind]:
      qualname = f"{alias}.{name}"
      text = (summary(obj, name) or "(No docstring.)").replace("|", "\\|")
      index.append(f"| [{qualname}](#{_anchor(qualname)}) | {text} |")
      body += _entry(alias, name, obj)
  return lines + index + [""] + body


def render() -> str:
  """The text of docs/api.md for the gmmjax that Python imports."""
  gmmjax = importlib.import_module("gmmjax")
  lines = [HEADER]
  lines += _section("gmmjax (`import gmmjax as gx`)", "gx", gmmjax,
                    public_names(gmmjax))
  for modname, alias in SUBMODULES.items():
    module = importlib.import_module(modname)
    lines += _section(f"{modname} (`from gmmjax import {alias}`)", alias,
                      module, public_names(module))
  return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if docs/api.md is stale; write nothing")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    stale = not API_MD.exists() or API_MD.read_text(encoding="utf-8") != text
    if stale:
      print("docs/api.md is stale: run python docs/make_api.py",
            file=sys.stderr)
    return int(stale)
  API_MD.write_text(text, encoding="utf-8")
  print(f"wrote {API_MD.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))  # document this checkout's gmmjax
  sys.exit(main())
