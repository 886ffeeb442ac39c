"""``python -m gmmjax`` and the ``gmmjax`` entry point.

The command line's estimators need nothing of scikit-learn, whose import
would add 1.5-2 s to every command: its process takes the fallback base
(``GMMJAX_NO_SKLEARN``, gmmjax/_src/sklearn_compat.py) unless the user set
the variable. Code calling ``gmmjax.cli.main`` itself keeps its own choice.
"""

import os
import sys


def run() -> int:
  os.environ.setdefault("GMMJAX_NO_SKLEARN", "1")
  # The estimators (and sklearn_compat, which reads the setting) load on
  # first use, after this: `import gmmjax` does not load them.
  from gmmjax.cli import main  # noqa: PLC0415
  return main()


if __name__ == "__main__":
  sys.exit(run())
