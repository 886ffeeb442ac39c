"""A ``while_loop`` whose ``vmap`` iterates only the members still running.

``jax.vmap`` of ``lax.while_loop`` runs the body on every member of the
batch until the slowest one stops, masking the finished ones out: its cost
is the batch size times the largest iteration count. Many small EM problems
fitted at once (workload 6 of ``benchmarks/bench_em.py``: 1,000 problems of
400 x 2, K=2) stop after a median of 4 and a mean of 7 iterations, the
slowest after 37, so five sixths of that work is discarded.

:func:`while_loop` is ``lax.while_loop`` with a batching rule that, at each
step, sorts the members still running to the front and runs the body on
blocks of them only, skipping the blocks of finished members. Each member
goes through exactly the steps of its own loop, so results match the plain
vmapped loop (and separate runs) member by member.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from gmmjax._src import chunks


def block_size(batch: int, member_bytes: int,
               options: chunks.ChunkOptions | None = None) -> int:
  """Members per block for a batch of ``batch`` (``batch``: no compaction),
  from ``options``' block budgets (:class:`chunks.ChunkOptions`)."""
  o = chunks.resolve(options)
  if not chunks.on_cpu():
    # Accelerators want the widest batch that fits: whole unless the
    # members' chunks together pass accelerator_block_chunks chunks.
    chunk = chunks.chunk_bytes(o)
    per_member = max(1, min(int(member_bytes), chunk))
    block = max(1, o.accelerator_block_chunks * chunk // per_member)
    return int(min(batch, block))
  if member_bytes >= o.sequential_member_bytes:
    return 1
  block = max(o.min_block, o.block_bytes // max(int(member_bytes), 1))
  return int(batch if batch < o.min_blocks * block else block)


def map_members(fn: Callable, xs, *, member_bytes: int,
                options: chunks.ChunkOptions | None = None):
  """``jax.vmap(fn)(xs)`` in :func:`block_size` blocks of members.

  For work outside the EM loop that holds about ``member_bytes`` per member
  (restart initialisations: ``(N, K)`` responsibilities and k-means
  distances): one vmap when the batch fits a block, else ``lax.map`` over
  blocks (one member at a time, unbatched, for blocks of one).
  """
  batch = jax.tree.leaves(xs)[0].shape[0]
  block = block_size(batch, member_bytes, options)
  if block >= batch:
    return jax.vmap(fn)(xs)
  if block == 1:
    return lax.map(fn, xs)
  return lax.map(fn, xs, batch_size=block)


def while_loop(cond_fun: Callable, body_fun: Callable, init, operands, *,
               member_bytes: int, options: chunks.ChunkOptions | None = None):
  """``lax.while_loop(cond_fun, lambda c: body_fun(c, operands, None), init)``.

  Under ``jax.vmap``, members that have stopped cost nothing: each step
  runs ``body_fun`` on blocks of the running members only (see the module
  docstring). ``operands`` are the loop's read-only inputs (data, settings),
  passed explicitly so that the batching rule can gather a block's share of
  them; ``cond_fun`` and ``body_fun`` must not close over traced values.
  ``body_fun(carry, operands, active)``'s result is kept only for running
  members; side effects (progress callbacks) should be masked by
  ``active``: a bool that is false for the filler slots of a block, or
  ``None`` where the body also runs for stopped members (plain loop or
  plain ``vmap``), in which case ``cond_fun(carry)`` tells. ``member_bytes``
  and ``options`` size the blocks (:func:`block_size`). Not for reverse-mode
  differentiation (no ``while_loop`` is).
  """

  def plain(carry, ops):
    return lax.while_loop(cond_fun, lambda c: body_fun(c, ops, None), carry)

  loop = jax.custom_batching.custom_vmap(plain)

  @loop.def_vmap
  def _rule(axis_size, in_batched, carry, ops):
    carry_batched, ops_batched = in_batched
    carry = jax.tree.map(
        lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape),
        carry, carry_batched)
    ops_def = jax.tree.structure(ops)
    ops_mapped = ops_def.flatten_up_to(ops_batched)
    ops_axes = ops_def.unflatten([0 if b else None for b in ops_mapped])
    block = block_size(axis_size, member_bytes, options)
    if block >= axis_size:
      out = jax.vmap(plain, in_axes=(0, ops_axes))(carry, ops)
    else:
      out = _compacted(cond_fun, body_fun, carry, ops, ops_axes, ops_mapped,
                       block, axis_size)
    return out, jax.tree.map(lambda _: True, out)

  return loop(init, operands)


def _compacted(cond_fun, body_fun, carry, ops, ops_axes, ops_mapped,
               block: int, size: int):
  """The batched loop over blocks of running members (``size`` > ``block``)."""
  vcond = jax.vmap(cond_fun)
  padded = -(-size // block) * block
  ops_leaves, ops_def = jax.tree.flatten(ops)
  if block == 1:
    # One member per block runs the unbatched body: a batch axis of size 1
    # would still give XLA batched products (slower kernels on CPU).
    def vbody(c, ops_blk, valid):
      leaves = [x[0] if mapped else x for x, mapped in
                zip(jax.tree.leaves(ops_blk), ops_mapped)]
      one = body_fun(jax.tree.map(lambda x: x[0], c),
                     ops_def.unflatten(leaves), valid[0])
      return jax.tree.map(lambda x: x[None], one)
  else:
    vbody = jax.vmap(body_fun, in_axes=(0, ops_axes, 0))

  def run_block(j, c, order, n_running):
    start = j * block
    idx = lax.dynamic_slice_in_dim(order, start, block)
    c_blk = jax.tree.map(lambda x: x[idx], c)
    ops_blk = ops_def.unflatten([x[idx] if mapped else x
                                 for x, mapped in zip(ops_leaves, ops_mapped)])
    # Positions past the running members (the last block's tail: stopped
    # members, or padding that repeats member 0) are not valid: they write
    # nothing (their index points past the batch and the scatter drops it).
    valid = start + jnp.arange(block) < n_running
    new = vbody(c_blk, ops_blk, valid)
    dst = jnp.where(valid, idx, size)
    return jax.tree.map(lambda x, v: x.at[dst].set(v, mode="drop"), c, new)

  def step(c):
    running = vcond(c)
    order = jnp.argsort(~running, stable=True)  # running members first
    order = jnp.pad(order, (0, padded - size))
    n_running = jnp.sum(running, dtype=jnp.int32)
    n_blocks = (n_running + block - 1) // block

    def blocks_body(s):
      j, c = s
      return j + 1, run_block(j, c, order, n_running)

    _, c = lax.while_loop(lambda s: s[0] < n_blocks, blocks_body,
                          (jnp.zeros((), jnp.int32), c))
    return c

  return lax.while_loop(lambda c: jnp.any(vcond(c)), step, carry)
