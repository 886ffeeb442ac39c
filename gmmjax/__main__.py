"""``python -m gmmjax`` and the ``gmmjax`` entry point."""

import sys


def run() -> int:
  from gmmjax.cli import main  # noqa: PLC0415
  return main()


if __name__ == "__main__":
  sys.exit(run())
