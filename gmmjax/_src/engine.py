"""The EM driver: one loop, one set of books.

Every fit of gmmjax is this driver with three things chosen:

* the step: :class:`EMStep` (plain or MAP EM, optionally on masked component
  slots) or SQUAREM's (``accel.py``); a step maps its own state to the next
  and tells the driver, in a :class:`Report`, what the iteration was;
* how the E-step's sufficient statistics are summed: in memory, over shards
  (``EMStep(reduce=...)``, a ``lax.psum``), or over chunks and processes by
  :func:`host_fit`, the same step run from the host one pass at a time;
* the stopping rule: ``|change| < tol`` on the iterations the step marks as
  tested (scikit-learn's rule), ``max_iter``, or a non-finite step.

The bookkeeping every fit shares (iteration count, history, the largest
Cholesky jitter, the convergence and failure flags: :class:`Books`), its
update (:func:`record`) and the :class:`FitResult` (:func:`finish`) are
written here once. The compiled loop is :func:`batching.while_loop`, whose
``vmap`` iterates only the members still running.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmmjax._src import batching, checks, chunks
from gmmjax._src import covariance as cov_lib
from gmmjax._src import priors as priors_lib
from gmmjax._src import stats as stats_lib
from gmmjax._src.params import GMMParams, all_finite
from gmmjax._src.results import (
  FitResult,
  count_degenerate,
  history_length,
  n_positive_samples,
  progress_callback,
)


def check_max_iter(max_iter, name: str = "max_iter") -> int:
  """``max_iter`` as a non-negative Python int, or a ``ValueError``."""
  if isinstance(max_iter, jax.core.Tracer):
    raise ValueError(
        f"{name} is traced: it sets the length of the fit's history, so it "
        f"must be a concrete int. Mark it static (jax.jit(..., "
        f"static_argnames='{name}')) or close over it.")
  if (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
      or max_iter < 0):
    raise ValueError(f"{name} should be a non-negative int, got {max_iter!r}.")
  return int(max_iter)


def tree_where(pred, a, b):
  """``jnp.where(pred, a, b)`` leaf by leaf over two pytrees."""
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


# ---------------------------------------------------------------------------
# The books: what every loop records, and the stopping rule.


class Report(NamedTuple):
  """What one step tells the driver about the iteration it made."""
  counted: jax.Array  # bool, an iteration: n_iter += 1, history written
  objective: jax.Array  # the value recorded in the history
  tested: jax.Array  # bool, the convergence rule applies to it
  failed: jax.Array  # bool, the step went non-finite: the loop stops
  jitter: jax.Array  # the M-step's Cholesky jitter (0 where it does not count)


class Books(NamedTuple):
  """The bookkeeping every loop carries."""
  n_iter: jax.Array  # int32, iterations counted
  prev: jax.Array  # the last recorded objective (the change is from it)
  history: jax.Array
  converged: jax.Array
  failed: jax.Array
  jitter: jax.Array  # the largest jitter of a counted iteration
  started: jax.Array  # False only before the first step
  max_iter: jax.Array  # int32, read by the stopping rule (cond may not
  # close over traced values: batching.while_loop)


def init_books(dtype, prev_ll, max_iter, history_len: int,
               started: bool = False) -> Books:
  false = jnp.zeros((), bool)
  return Books(
      n_iter=jnp.zeros((), jnp.int32), prev=jnp.asarray(prev_ll, dtype),
      history=jnp.full((history_len,), jnp.nan, dtype), converged=false,
      failed=false, jitter=jnp.zeros((), dtype),
      started=jnp.asarray(started, bool),
      max_iter=jnp.minimum(jnp.asarray(max_iter, jnp.int32), history_len))


def running(b: Books):
  """The stopping rule: go on until converged, failed or ``max_iter``."""
  return ~b.started | ((b.n_iter < b.max_iter) & ~b.converged & ~b.failed)


def record(b: Books, r: Report, tol) -> Books:
  """The books after an iteration that ``r`` describes."""
  change = r.objective - b.prev
  return Books(
      n_iter=b.n_iter + r.counted.astype(jnp.int32),
      prev=jnp.where(r.counted, r.objective, b.prev),
      history=jnp.where(r.counted, b.history.at[b.n_iter].set(r.objective),
                        b.history),
      converged=r.tested & (jnp.abs(change) < tol),
      failed=r.failed,
      jitter=jnp.maximum(b.jitter, r.jitter),
      started=jnp.ones((), bool), max_iter=b.max_iter)


def finish(params: GMMParams, log_likelihood, b: Books, n_positive,
           reg_covar, mask=None) -> FitResult:
  """The :class:`FitResult` of a loop that stopped with books ``b``."""
  failed = b.failed | ~jnp.isfinite(log_likelihood)
  return FitResult(params=params, log_likelihood=log_likelihood,
                   n_iter=b.n_iter, converged=b.converged & ~failed,
                   history=b.history, failed=failed, jitter=b.jitter,
                   n_degenerate=count_degenerate(params, n_positive,
                                                 reg_covar=reg_covar,
                                                 mask=mask))


# ---------------------------------------------------------------------------
# The EM step, its statistics summed in memory or over shards.


class Problem(NamedTuple):
  """A loop's read-only operands (gathered per block by the vmapped loop)."""
  X: jax.Array | None  # None in the host loop, whose data are streamed
  sample_weight: jax.Array | None
  tol: jax.Array
  reg_covar: jax.Array
  prior: priors_lib.ConjugatePrior | None = None
  mask: jax.Array | None = None  # (K,) bools, the active component slots
  observed: jax.Array | None = None  # (N, D) bools, the observed entries
  # A traced type_switch.CODES value: the full type's program fitting that
  # covariance type (small problems share one program for the four).
  structure: jax.Array | None = None


def objective(params: GMMParams, stats: stats_lib.SuffStats, prior=None):
  """The mean log-likelihood, plus ``log_prior(params) / count`` (MAP)."""
  if prior is None:
    return stats.log_likelihood / stats.count
  return (stats.log_likelihood + priors_lib.log_prior(params, prior)
          ) / stats.count


def m_step_from_stats(params: GMMParams, stats, reg_covar, prior=None,
                      structure=None, mask=None):
  """The M-step from statistics of ``params`` (around its
  :func:`stats.component_shift`), plus the largest Cholesky jitter;
  ``structure``: see :class:`Problem` (not with a prior); ``mask``: the
  active component slots, the others factorised as the unit (a prior's
  M-step keeps its own estimate there; the step masks it afterwards)."""
  shift = stats_lib.component_shift(params)
  if prior is None:
    return stats_lib.params_and_jitter_from_stats(
        stats, shift, params.covariance_type, reg_covar, structure, mask)
  if structure is not None:
    raise ValueError("a structure code is not supported with a prior.")
  return priors_lib.map_params_and_jitter_from_stats(
      stats, shift, params.covariance_type, reg_covar, prior)


def placeholder_stats(params: GMMParams) -> stats_lib.SuffStats:
  """Statistics whose M-step gives ``params`` back (up to ``reg_covar``).

  The first pass's discarded M-step reads them: finite and positive definite
  whatever ``reg_covar`` is, so even its masked-out derivatives are finite.
  Their log-likelihood is NaN: a fit whose initial params cannot be
  evaluated reports a NaN log-likelihood, not a number it never computed.
  """
  k, d = params.means.shape
  dtype = params.means.dtype
  cov = lax.stop_gradient(params.covariances)
  sxx = cov_lib.get(params.covariance_type).placeholder_sxx(cov, k, d)
  return stats_lib.SuffStats(
      count=jnp.asarray(k, dtype), nk=jnp.ones((k,), dtype),
      sx=jnp.zeros((k, d), dtype), sxx=sxx,
      log_likelihood=jnp.full((), jnp.nan, dtype))


class EMState(NamedTuple):
  params: GMMParams  # the current iterate
  stats: stats_lib.SuffStats  # its E-step statistics
  objective: jax.Array  # its objective (mean log-likelihood, + prior)


class EMStep(NamedTuple):
  """EM (MAP-EM with a prior; masked component slots with a mask).

  Each pass is M-step then E-step: the E-step that gives iteration i's
  objective also gives the statistics of iteration i + 1's M-step, and after
  the loop the returned params' log-likelihood is already known. The first
  pass discards its M-step (of placeholder statistics) and only evaluates
  the initial params: one E-step in the compiled program; with
  ``steps_first`` it starts from an initialisation's statistics and keeps
  that M-step, which makes the initial params.
  """
  reduce: Callable | None = None  # adds statistics over shards (lax.psum)
  slots: int | None = None  # missing-entry slots per row (stats.e_step_stats)
  chunking: chunks.ChunkOptions | None = None  # the E-step's chunk budgets
  # The first pass keeps its M-step: the loop starts from statistics (an
  # initialisation's responsibilities, init.init_stats), whose M-step is
  # the initial params, so the program holds one M-step, not two.
  steps_first: bool = False
  evaluates_first = True  # the first pass is not an iteration

  def init(self, params: GMMParams, problem: Problem) -> EMState:
    del problem
    return EMState(params, placeholder_stats(params),
                   jnp.zeros((), params.means.dtype))

  def advance(self, state: EMState, problem: Problem, started):
    """The M-step (the initial params on the first pass), and its jitter."""
    stepped, jitter = m_step_from_stats(state.params, state.stats,
                                        problem.reg_covar, problem.prior,
                                        problem.structure, problem.mask)
    if problem.mask is not None:  # component slots beyond k stay empty
      stepped = stats_lib.mask_components(stepped, state.stats.nk,
                                          problem.mask)
    if self.steps_first:
      return stepped, jitter
    return tree_where(started, stepped, state.params), jitter

  def evaluate(self, params: GMMParams, problem: Problem):
    """The E-step's statistics of ``params`` over all the data."""
    shift = stats_lib.component_shift(params)
    stats = stats_lib.e_step_stats(params, problem.X,
                                   sample_weight=problem.sample_weight,
                                   shift=shift, observed=problem.observed,
                                   slots=self.slots, chunking=self.chunking)
    return stats if self.reduce is None else self.reduce(stats)

  def conclude(self, state: EMState, started, new, jitter, stats,
               problem: Problem):
    """The next state from the new params and their statistics."""
    value = objective(new, stats, problem.prior)
    ok = all_finite(new) & jnp.isfinite(value)
    # Iteration n_iter + 1 as scikit-learn counts it: its objective is the
    # current params' (before the M-step), its result the new params.
    counted = started & ok
    report = Report(counted=counted, objective=state.objective,
                    tested=counted, failed=~ok,
                    jitter=jnp.where(counted, jitter, 0))
    kept = state.params
    if self.steps_first:  # a first pass that fails returns the initial
      kept = tree_where(started, kept, new)  # params, not the placeholder
    return EMState(params=tree_where(ok, new, kept),
                   stats=tree_where(ok, stats, state.stats),
                   objective=jnp.where(ok, value, state.objective)), report

  def evaluated(self, params: GMMParams, problem: Problem) -> GMMParams:
    """The mixture whose E-step statistics the step reads (``host_fit``'s
    ``stats_pass`` sums them): EM's own iterate."""
    del problem
    return params

  def step(self, state: EMState, problem: Problem, started):
    new, jitter = self.advance(state, problem, started)
    return self.conclude(state, started, new, jitter,
                         self.evaluate(new, problem), problem)

  def result(self, state: EMState, problem: Problem):
    """The returned params and their mean log-likelihood."""
    del problem
    return state.params, state.stats.log_likelihood / state.stats.count

  def n_positive(self, problem: Problem):
    n = n_positive_samples(problem.X, problem.sample_weight)
    if self.reduce is None:
      return n
    return self.reduce(jnp.asarray(n, problem.X.dtype))


# ---------------------------------------------------------------------------
# The drivers: compiled, and on the host.


class Carry(NamedTuple):
  state: object  # the step's own state
  books: Books


def run(step, params: GMMParams, problem: Problem, *, prev_ll, max_iter,
        history_len: int, callback: Callable | None = None,
        unrolled_steps: int | None = None, compact: bool = True,
        chunking: chunks.ChunkOptions | None = None, state=None):
  """Iterates ``step`` from ``params`` until the stopping rule holds.

  ``state``: the step's initial state, if not ``step.init(params,
  problem)`` (an :class:`EMState` holding an initialisation's statistics,
  with :class:`EMStep`'s ``steps_first``).

  Returns the :class:`FitResult` and the step's final state.

  The loop is :func:`batching.while_loop` (vmapped, members that have
  stopped skip the remaining iterations); with ``compact=False`` a plain
  ``lax.while_loop`` (e.g. inside ``shard_map``, whose collectives every
  device must reach); with ``unrolled_steps``, a ``lax.scan`` of that many
  steps (those after the stop masked out) that reverse mode can
  differentiate, its memory growing with the length. ``chunking`` sizes the
  vmapped loop's blocks (the step's E-step reads its own).
  """
  X = problem.X

  def cond(c: Carry):
    return running(c.books)

  def body(c: Carry, problem: Problem, active=None):
    state, report = step.step(c.state, problem, c.books.started)
    if callback is not None:
      # The body may also run for members that have stopped (vmapped, or a
      # block's filler; the results are discarded): only running ones report.
      shown = report.counted & (cond(c) if active is None else active)
      progress_callback(callback, c.books.n_iter + 1, report.objective,
                        report.objective - c.books.prev, active=shown)
    return Carry(state, record(c.books, report, problem.tol))

  init = Carry(step.init(params, problem) if state is None else state,
               init_books(X.dtype, prev_ll, max_iter, history_len,
                          started=not step.evaluates_first))
  if unrolled_steps is not None:
    def scan_step(c, _):
      active = cond(c)
      return tree_where(active, body(c, problem, active), c), None
    out, _ = lax.scan(scan_step, init, None, length=unrolled_steps)
  elif compact:
    k, d = params.means.shape
    out = batching.while_loop(
        cond, body, init, problem,
        member_bytes=X.shape[0] * k * d * X.dtype.itemsize, options=chunking)
  else:
    out = lax.while_loop(cond, lambda c: body(c, problem), init)
  fitted, ll = step.result(out.state, problem)
  return finish(fitted, ll, out.books, step.n_positive(problem),
                problem.reg_covar, problem.mask), out.state


@functools.partial(jax.jit, static_argnames=("step",))
def _host_advance(state, problem: Problem, started, step):
  new, jitter = step.advance(state, problem, started)
  return new, jitter, step.evaluated(new, problem)


@functools.partial(jax.jit, static_argnames=("step",))
def _host_conclude(state, books: Books, new, jitter, stats,
                   problem: Problem, step):
  state, report = step.conclude(state, books.started, new, jitter, stats,
                                problem)
  books = record(books, report, problem.tol)
  return state, books, report, running(books)


@functools.partial(jax.jit, static_argnames=("step",))
def _host_result(state, problem: Problem, step):
  return step.result(state, problem)


def host_fit(params, problem: Problem, stats_pass: Callable, *,
             prev_ll, max_iter: int, callback: Callable | None = None,
             step=None) -> FitResult:
  """:func:`run` of ``step`` (:class:`EMStep` by default) with the loop on
  the host.

  For data that no program holds at once: ``stats_pass(mixture)`` returns
  the statistics of ``mixture`` (``step.evaluated`` of the new iterate:
  EM's params themselves) over all the data (around
  :func:`stats.component_shift` of it, summed however the caller likes)
  and the number of rows with a positive weight. ``problem.X`` is
  ``None``. ``callback`` is called on the host after every iteration.
  """
  step = EMStep() if step is None else step
  state, books = _host_start(params, problem, checks.as_scalar(
      prev_ll, params.means.dtype), checks.as_scalar(max_iter, np.int32),
      history_len=history_length(max_iter),
      started=not step.evaluates_first, step=step)
  going = True
  while going:
    new, jitter, evaluated = _host_advance(state, problem, books.started,
                                           step=step)
    stats, n_positive = stats_pass(evaluated)
    before = books
    state, books, report, going = _host_conclude(
        state, books, new, jitter, stats, problem, step=step)
    if callback is not None and bool(report.counted):
      value = np.asarray(report.objective)
      callback(int(before.n_iter) + 1, value, value - np.asarray(before.prev))
    going = bool(going)
  fitted, ll = _host_result(state, problem, step=step)
  return _host_finish(fitted, ll, books, n_positive, problem.reg_covar)


# The host loop's set-up and end as programs: run eagerly, the books'
# initial values and count_degenerate's factorisation were about 30 small
# programs to compile on a first call.
@functools.partial(jax.jit, static_argnames=("history_len", "started",
                                             "step"))
def _host_start(params, problem, prev_ll, max_iter, *, history_len: int,
                started: bool, step):
  return (step.init(params, problem),
          init_books(params.means.dtype, prev_ll, max_iter, history_len,
                     started=started))


_host_finish = jax.jit(finish)
