"""Progress of long fits: tqdm's bar when tqdm is installed, else a text bar.

A fit reports progress through a host callback ``callback(n_iter,
log_likelihood, change)`` that its compiled loop calls after every EM
iteration (under ``vmap``, once per restart). The callback is a static
argument of the compiled program, so a new callable means a new compile.
:func:`progress_bar` therefore gives every bar one shared hook,
:func:`forward`, which calls the bar entered last (``with bar:``): fits with
``bar.callback`` reuse one program whatever bar is showing.

The command line shows ``progress_bar`` on a terminal; the estimator's
``fit(X, progress=True)`` shows one too. tqdm (``pip install
"gmmjax[progress]"``) draws a widget in Jupyter (``tqdm.auto``) and a bar on
terminals; without it, :class:`TextBar` draws one text line. The active
bar is process-wide: fits showing progress at the same time in two threads
feed the bar entered last.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time

_ACTIVE: list = []  # bars entered and not yet exited, innermost last


def forward(n_iter, log_likelihood, change):
  """The shared progress hook: passes one iteration to the active bar."""
  if _ACTIVE:
    _ACTIVE[-1](n_iter, log_likelihood, change)


@functools.cache
def printer(verbose: int, interval: int):
  """The estimator's ``verbose`` lines as a host callback; cached so that
  ``jit`` sees one object."""
  start = [time.perf_counter()]

  def callback(n_iter, log_likelihood, change):
    n_iter = int(n_iter)
    if n_iter == 1:
      start[0] = time.perf_counter()
    if n_iter % interval:
      return
    if verbose >= 2:
      lapse = time.perf_counter() - start[0]
      print(f"  Iteration {n_iter}\t time lapse {lapse:.5f}s\t "
            f"log-likelihood {float(log_likelihood):.5f}\t ll change "
            f"{float(change):.5f}", flush=True)
    else:
      print(f"  Iteration {n_iter}", flush=True)

  return callback


def chain(*hooks):
  """One host callback calling each hook that is not None in turn (None
  when there are none); cached, so that a fit repeated with the same hooks
  reuses its compiled program."""
  hooks = tuple(h for h in hooks if h is not None)
  if not hooks:
    return None
  return hooks[0] if len(hooks) == 1 else _chained(hooks)


@functools.lru_cache(maxsize=16)
def _chained(hooks):
  def callback(*values):
    for hook in hooks:
      hook(*values)

  return callback


class _Bar:
  """What both bars share: the furthest iteration, the shared hook and the
  context manager that makes the bar the one :func:`forward` feeds."""

  callback = staticmethod(forward)

  def __enter__(self):
    _ACTIVE.append(self)
    return self

  def __exit__(self, *exc):
    _ACTIVE.remove(self)
    self.close()
    return False


class TextBar(_Bar):
  """A one-line text bar over EM iterations, updated by the host callback.

  It redraws at most every ``min_interval`` seconds and shows the furthest
  iteration reached (under ``vmap``, of any restart), the latest
  log-likelihood and change.
  """

  def __init__(self, total: int, label: str = "EM", stream=None,
               width: int = 30, min_interval: float = 0.1):
    self.total = max(int(total), 1)
    self.label = label
    self.stream = sys.stderr if stream is None else stream
    self.width = width
    self.min_interval = min_interval
    self.n = 0
    self.last = None
    self.last_draw = 0.0
    self.drawn = False

  def __call__(self, n_iter, log_likelihood, change):
    self.n = max(self.n, int(n_iter))
    self.last = (float(log_likelihood), float(change))
    now = time.perf_counter()
    if now - self.last_draw < self.min_interval and self.n < self.total:
      return
    self.last_draw = now
    self._draw()

  def _draw(self):
    log_likelihood, change = self.last
    filled = int(self.width * min(self.n, self.total) / self.total)
    bar = "#" * filled + "-" * (self.width - filled)
    self.stream.write(f"\r{self.label} [{bar}] {self.n}/{self.total} iter  "
                      f"ll {log_likelihood:.5f}  change {change:.2e}   ")
    self.stream.flush()
    self.drawn = True

  def close(self):
    """Draws the final state and ends the line."""
    if self.last is not None:
      self._draw()
    if self.drawn:
      self.stream.write("\n")
      self.stream.flush()


class TqdmBar(_Bar):
  """The same bar drawn by ``tqdm.auto`` (a widget in Jupyter)."""

  def __init__(self, total: int, label: str = "EM", stream=None):
    from tqdm.auto import tqdm
    self.n = 0
    self.bar = tqdm(total=max(int(total), 1), desc=label, unit="iter",
                    file=stream, leave=True)

  def __call__(self, n_iter, log_likelihood, change):
    n = int(n_iter)
    if n > self.n:
      self.bar.set_postfix(ll=f"{float(log_likelihood):.5f}",
                           change=f"{float(change):.2e}", refresh=False)
      self.bar.update(n - self.n)
      self.n = n

  def close(self):
    self.bar.close()


def showing(enabled: bool, total: int, label: str):
  """A :func:`progress_bar` entered for the duration of a ``with`` block
  when ``enabled``, else nothing."""
  if not enabled:
    return contextlib.nullcontext()
  return progress_bar(total, label=label)


@functools.cache
def have_tqdm() -> bool:
  try:
    import tqdm.auto  # noqa: F401
  except ImportError:
    return False
  return True


def progress_bar(total: int, *, label: str = "EM", stream=None):
  """A progress bar over ``total`` EM iterations: tqdm's when installed.

  Use it as ``callback=bar.callback`` inside ``with bar:`` (fits share one
  compiled program) or call it directly as a callback.

  Args:
    total: iterations the bar spans (a fit's ``max_iter``).
    label: text before the bar.
    stream: where to draw (default ``sys.stderr``).

  Returns:
    A :class:`TqdmBar` or, without tqdm, a :class:`TextBar`.

  Example:
    >>> import io, numpy as np, gmmjax as gx
    >>> X = np.random.default_rng(0).normal(size=(50, 2))
    >>> with gx.progress_bar(100, stream=io.StringIO()) as bar:
    ...   gm = gx.GaussianMixture(2, random_state=0).fit(X, callback=bar.callback)
    >>> bar.n == gm.n_iter_
    True
  """
  if have_tqdm():
    return TqdmBar(total, label, stream)
  return TextBar(total, label, stream)
