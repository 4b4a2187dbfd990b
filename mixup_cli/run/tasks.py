"""The one per-task computation: a task's output rows, from the plan and the
input alone, for every engine and for anything that recomputes an output.

A task (``sampling.Task``) names rows ``[start, stop)`` of one block of one
copy: the whole block, or a sub-range of it. What is random (``lam``,
partners, CutMix boxes) is drawn for the whole block, keyed by (seed, copy,
block), and sliced to the task's rows, so a task's rows are the same
whether its block runs as one task or as several. Engines differ only in
where blocks come from and where rows go:

* ``task_input(source, plan, mixer, task, block_rows)`` gathers what a task
  mixes (``block_rows(block, keep)`` gives a whole block's rows: the local
  engine's cache, or a plain read);
* ``output_rows(source, mixer, inputs, s, e, out)`` gives output rows
  ``s:e`` of the task (the local engine calls it per batch);
* ``compute_task(source, plan, task)`` gives them all at once (Dask workers).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from mixup_cli.mixing import balance
from mixup_cli.mixing.mixer import Drawn, Mixer
from mixup_cli.mixing.sampling import Plan, Task
from mixup_cli.run import gather
from mixup_cli.run.prepared import pair_keys

Block = dict[str, np.ndarray]


@dataclass(frozen=True)
class TaskInput:
    """What one task mixes; every array has one entry per row of the task."""

    task: Task
    drawn: Drawn  # provenance of the task's rows
    own: Block  # the task's own rows, per data key
    pool: Block  # partner rows, per data key ...
    index: np.ndarray  # ... and the row of ``pool`` of each task row


def whole_block(plan: Plan, task: Task) -> Task:
    """The task covering all of ``task``'s block (itself when it does)."""
    start, stop = plan.block_bounds(task.block)
    if (task.start, task.stop) == (start, stop):
        return task
    return Task(task.copy, task.block, task.partner_block, start, stop, task.out_start - (task.start - start))


def draw(plan: Plan, mixer: Mixer, task: Task) -> Drawn:
    """The task's provenance: drawn for its whole block, sliced to its rows."""
    block = whole_block(plan, task)
    drawn = mixer.draw(block)
    if block is task:
        return drawn
    return drawn.rows(task.start - block.start, task.stop - block.start)


@dataclass(frozen=True)
class Partners:
    """A task's draws and the partner rows it reads by index (``read_partners``)."""

    drawn: Drawn
    pool: Block  # partner rows, per data key (sorted, unique) ...
    index: np.ndarray  # ... and the row of ``pool`` of each task row


def reads_by_index(plan: Plan, task: Task) -> bool:
    """Whether ``task_input`` reads the task's partners by index rather than
    from a partner block: class, index and global pairings (no partner
    block), or a task that is part of its block with partners fewer than a
    quarter of the partner block's rows."""
    if task.partner_block is None:
        return True
    first, last = plan.block_bounds(task.block)
    if (task.start, task.stop) == (first, last):
        return False
    p_first, p_last = plan.block_bounds(task.partner_block)
    return 4 * (task.stop - task.start) < p_last - p_first


def read_partners(source, plan: Plan, mixer: Mixer, task: Task, lock=None, out: Block | None = None) -> Partners:
    """A task's draws and its partner rows read by index (sorted, unique
    reads, each partner row read once and gathered as it is mixed); the
    reads under ``lock`` when given (an engine reading ahead on a thread),
    into the buffers ``out`` when given (see ``partner_rows``)."""
    drawn = draw(plan, mixer, task)
    unique, index = np.unique(drawn.partner, return_inverse=True)
    with lock or nullcontext():
        pool = partner_rows(source, unique, out)
    return Partners(drawn, pool, index.reshape(-1))


def task_input(
    source,
    plan: Plan,
    mixer: Mixer,
    task: Task,
    block_rows: Callable[[int, int | None], Block],
    partners: Partners | None = None,
    lock=None,
) -> TaskInput:
    """Gather a task's rows and partners. ``source`` is the plan's view of the
    input (``balance.view``); ``block_rows(block, keep)`` returns a whole
    block's rows, keeping block ``keep`` if it holds it. ``partners``: the
    task's ``read_partners``, when the engine read them ahead; ``lock``: held
    around the reads made here apart from ``block_rows``.

    A task that is part of its block (a set's output holds only its input's
    rows) reads only its own rows, and its partners by index unless they are
    a large share of the partner block: reading whole blocks for each of a
    set's outputs read each block once per output it touches."""
    first, last = plan.block_bounds(task.block)
    whole = (task.start, task.stop) == (first, last)
    if whole:
        own = block_rows(task.block, task.partner_block)
    else:
        with lock or nullcontext():
            own = read_rows(source, task.start, task.stop)
    if not reads_by_index(plan, task):
        p_first = plan.block_bounds(task.partner_block)[0]
        drawn = draw(plan, mixer, task)
        return TaskInput(
            task, drawn, own, block_rows(task.partner_block, task.block if whole else None), drawn.partner - p_first
        )
    if partners is None:
        partners = read_partners(source, plan, mixer, task, lock)
    return TaskInput(task, partners.drawn, own, partners.pool, partners.index)


def partner_rows(source, rows: np.ndarray, out: Block | None = None) -> Block:
    """Rows ``rows`` (sorted, unique) of the (prepared) input, for each data
    key, read by index (``gather.take``: rows close together as one range);
    into ``out[key]`` (buffers of at least ``len(rows)`` rows) when given."""
    out = out or {}
    return {key: gather.take(source.reader, key, rows, out.get(key)) for key in source.specs}


def output_rows(source, mixer: Mixer, inputs: TaskInput, s: int, e: int, out: Block | None = None) -> Block:
    """Output rows ``s:e`` of the task, for every output array: data (mixed
    into ``out`` when given, or the original rows of copy -1; pairs as they
    are), then provenance."""
    task, own = inputs.task, inputs.own
    arrays: Block = {}
    for key in source.mixed_keys:
        if task.copy < 0:
            arrays[key] = own[key][s:e]
        else:
            target = None if out is None else out[key]
            arrays[key] = mixer.mix_gather(
                key, own[key][s:e], inputs.pool[key], inputs.index[s:e], inputs.drawn, s, e, out=target
            )
    for key in source.paired_keys:  # --y-format pair: both targets, unmixed (copies: buffers are reused)
        key_a, key_b = pair_keys(key)
        arrays[key_a] = own[key][s:e].copy()
        arrays[key_b] = inputs.pool[key][inputs.index[s:e]]
    arrays.update(inputs.drawn.provenance(s, e))
    return arrays


def read_rows(source, start: int, stop: int) -> Block:
    """Rows ``start:stop`` of the (prepared) input, for each data key, by
    ``read_into`` (the readers' fast paths, where they apply)."""
    rows: Block = {}
    for key, spec in source.specs.items():
        rows[key] = np.empty((stop - start,) + tuple(spec.row_shape), spec.dtype)
        source.reader.read_into(key, start, stop, rows[key])
    return rows


def read_block(source, plan: Plan, block: int) -> Block:
    """Rows of one block of the (prepared) input, for each data key."""
    return read_rows(source, *plan.block_bounds(block))


def compute_task(source, plan: Plan, task: Task) -> Block:
    """All output rows of one task, at once."""
    source = balance.view(source, plan)  # a balanced plan's rows, read by index
    mixed = {key: source.specs[key].row_shape for key in source.mixed_keys}
    mixer = Mixer(plan, mixed)
    read: dict[int, Block] = {}

    def block_rows(block: int, keep: int | None) -> Block:
        if block not in read:
            read[block] = read_block(source, plan, block)
        return read[block]

    inputs = task_input(source, plan, mixer, task, block_rows)
    return output_rows(source, mixer, inputs, 0, task.stop - task.start)
