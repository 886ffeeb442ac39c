"""pytest plugin for gpu_run.sh: each failure's report, written as it happens.

A device run's pytest can be stopped by its time limit before it prints the
failures; this writes them to ``$OUT/failures.log`` at once.
"""

import os


def pytest_runtest_logreport(report):
  if report.failed:
    path = os.path.join(os.environ.get("OUT", "/tmp"), "failures.log")
    with open(path, "a") as f:
      f.write(f"==== {report.nodeid} ({report.when})\n"
              f"{report.longreprtext}\n\n")
