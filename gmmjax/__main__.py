"""``python -m gmmjax`` and the ``gmmjax`` entry point (``run``)."""

import sys

from gmmjax.cli import main as run

if __name__ == "__main__":
  sys.exit(run())
