"""``python -m gmmjax`` and the ``gmmjax`` entry point."""

import sys

from gmmjax.cli import main

if __name__ == "__main__":
  sys.exit(main())
