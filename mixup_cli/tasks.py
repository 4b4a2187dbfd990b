"""One task's output rows: the computation every engine runs.

A task (one block of one copy, see ``sampling.Task``) is computed from the
plan and the input alone, so it can run anywhere. Both engines go through
the two steps here:

``prepare_task``
    the task's own rows, its partner block's rows, and the task's ``lam`` and
    ``partner`` (keyed by the seed and the task's coordinates);
``mix_task``
    output rows ``s:e`` of the task: each data array mixed with ``mix_rows``,
    plus ``lam`` and ``partner``.

``compute_task`` does both for the whole task. The local engine calls the two
steps itself so that it can reuse blocks already in memory and mix a batch at
a time; results are the same bytes either way (``mix_rows`` is elementwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from mixup_cli.core import mix_rows
from mixup_cli.io.base import Reader
from mixup_cli.sampling import Plan, Task

Block = dict[str, np.ndarray]


@dataclass(frozen=True)
class PreparedTask:
    task: Task
    own: Block  # the task's own input rows, per data key
    partner_block: Block  # the rows of the block partners come from
    lam: np.ndarray  # float64, one per row of the task
    partner: np.ndarray  # int64 input row of each row's partner
    local: np.ndarray  # the same partners, as offsets into partner_block

    @property
    def rows(self) -> int:
        return self.task.stop - self.task.start


def read_block(reader: Reader, keys: Iterable[str], plan: Plan, block: int) -> Block:
    """Rows of one block of the input, for each data key."""
    start, stop = plan.block_bounds(block)
    return {key: reader.read(key, start, stop) for key in keys}


def prepare_task(plan: Plan, task: Task, blocks: Callable[[int], Block]) -> PreparedTask:
    """Everything ``mix_task`` needs; ``blocks(b)`` returns block ``b``'s rows."""
    lam, partner = plan.draw(task)
    own = blocks(task.block)
    partner_block = own if task.partner_block == task.block else blocks(task.partner_block)
    local = partner - plan.block_bounds(task.partner_block)[0]
    return PreparedTask(task, own, partner_block, lam, partner, local)


def mix_task(prepared: PreparedTask, s: int = 0, e: int | None = None, out: Block | None = None) -> Block:
    """Output rows ``s:e`` of the task (offsets within it): data keys, ``lam``, ``partner``.

    ``out`` may hold a buffer per data key with at least ``e - s`` rows.
    The original rows (copy -1) are returned as they are.
    """
    e = prepared.rows if e is None else e
    lam = prepared.lam[s:e]
    result: Block = {}
    for key, own in prepared.own.items():
        if prepared.task.copy < 0:
            result[key] = own[s:e]
        else:
            buf = None if out is None else out[key][: e - s]
            result[key] = mix_rows(own[s:e], prepared.partner_block[key][prepared.local[s:e]], lam, out=buf)
    result["lam"] = lam
    result["partner"] = prepared.partner[s:e]
    return result


def compute_task(reader: Reader, keys: Iterable[str], plan: Plan, task: Task) -> Block:
    """All output rows of one task, read from ``reader`` and mixed."""
    keys = list(keys)
    return mix_task(prepare_task(plan, task, lambda block: read_block(reader, keys, plan, block)))
