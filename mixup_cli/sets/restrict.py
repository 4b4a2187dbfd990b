"""One plan over the set's rows, cut into one output per input.

The single-file output of a plan is ``segments`` (the original rows with
``--include-original``, then copy 0, copy 1, ...), each ``n_rows`` rows in
row order: global row ``r`` of segment ``seg`` is output row ``seg*N + r``.
Output ``k`` of a set holds, for each segment, the rows of input ``k``:
its local row ``seg*n_k + (r - offset_k)``. So each segment's slices,
concatenated over k, are that segment of the single-file output (with
``--copies 1`` and no original, the outputs concatenated are it).

``restrict`` gives the tasks that write output ``k``: each plan task
whose block meets input k's rows, clipped to them, with ``out_start`` its
local output row. Its ``copy``, ``block`` and ``partner_block`` stay the
block's, so its rows are drawn from the same keyed generator as the
whole block; an engine computes the block's draw and keeps the task's
sub-range (``task_slice``).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator

from mixup_cli.core.errors import ParameterError
from mixup_cli.mixing.sampling import Plan, Task


def check_plan(plan: Plan, layout=None) -> None:
    """Refuse plans whose output rows are not rows of the inputs in order:
    ``--balance`` draws M rows per class from the whole set, so its rows
    belong to no one input's output. ``--exclude-rows`` (global rows of the
    set) is refused when it holds out every row of one input (``layout``)."""
    if plan.exclude is not None and not plan.balance:
        if layout is not None:
            _check_kept(plan, layout)
        return
    if plan.own is not None:
        raise ParameterError(
            "--balance cannot split its output by input (its rows are drawn per class from the whole set); "
            "run it on one file holding the set",
            "--balance",
        )


def _check_kept(plan: Plan, layout) -> None:
    bounds = plan_offsets(plan, layout.offsets)
    for k, shard in enumerate(layout.shards):
        if bounds[k + 1] == bounds[k]:
            raise ParameterError(
                f"{plan.exclude[0]}: holds out every row of input {shard.path} (set rows {shard.offset} to "
                f"{shard.offset + shard.rows - 1}), which would leave its output empty; leave that input out "
                "of the set",
                "--exclude-rows",
            )


def plan_offsets(plan: Plan, offsets) -> list[int]:
    """The plan's first row of each input, and its rows in all last: the
    inputs' ``offsets`` themselves, or with ``--exclude-rows`` (the plan's
    rows are the kept rows of the set, ``plan.own``, sorted) the kept rows
    before each input's first row. Output k holds plan rows
    ``[bounds[k], bounds[k + 1])`` of each segment."""
    if plan.exclude is None or plan.balance or plan.own is None:
        return [int(v) for v in offsets]
    import numpy as np

    return [int(v) for v in np.searchsorted(plan.own, np.asarray(offsets, np.int64))]


def segment(plan: Plan, task: Task) -> int:
    """The output segment of a task: 0 for the original rows when kept, then one per copy."""
    return task.copy + int(plan.include_original)


def restrict(tasks: Iterable[Task], plan: Plan, offset: int, n: int) -> Iterator[Task]:
    """The tasks for the output of input rows ``[offset, offset + n)``, in
    the plan's order, clipped to those rows, ``out_start`` local to that output."""
    end = offset + n
    for task in tasks:
        lo, hi = max(task.start, offset), min(task.stop, end)
        if lo < hi:
            yield dataclasses.replace(task, start=lo, stop=hi, out_start=segment(plan, task) * n + lo - offset)


def split(tasks: Iterable[Task], plan: Plan, offsets, outputs: range) -> dict[int, list[Task]]:
    """``restrict`` for each output in ``outputs`` (a part's), in one pass
    over the plan's tasks: O(tasks + outputs), where calling ``restrict``
    per output would walk every task S times. ``offsets``: the inputs'
    first rows and the total last (``SetLayout.offsets``)."""
    bounds = [int(v) for v in offsets]
    found: dict[int, list[Task]] = {k: [] for k in outputs}
    if not outputs:
        return found
    first, end = bounds[outputs.start], bounds[outputs.stop]
    for task in tasks:
        if task.stop <= first or task.start >= end:
            continue
        k = max(outputs.start, bisect.bisect_right(bounds, task.start) - 1)
        seg = segment(plan, task)
        while k < outputs.stop and bounds[k] < task.stop:
            offset, n = bounds[k], bounds[k + 1] - bounds[k]
            lo, hi = max(task.start, offset), min(task.stop, offset + n)
            found[k].append(dataclasses.replace(task, start=lo, stop=hi, out_start=seg * n + lo - offset))
            k += 1
    return found


def task_slice(plan: Plan, task: Task) -> slice:
    """Where a (clipped) task's rows lie within its whole block's rows."""
    block_start, _ = plan.block_bounds(task.block)
    return slice(task.start - block_start, task.stop - block_start)


def whole_task(plan: Plan, task: Task) -> Task:
    """The plan's task of the block a clipped task belongs to (the single-file task)."""
    start, stop = plan.block_bounds(task.block)
    return dataclasses.replace(task, start=start, stop=stop, out_start=plan.copy_offset(task.copy) + start)


def output_rows(plan: Plan, n: int) -> int:
    """Rows of the output of an input of ``n`` rows."""
    return n * (plan.copies + int(plan.include_original))


def to_single(plan: Plan, offset: int, n: int, local: int) -> int:
    """The single-file output row of row ``local`` of the output of input rows [offset, offset + n)."""
    seg, j = divmod(local, n)
    return seg * plan.n_rows + offset + j


def from_single(plan: Plan, offsets, row: int) -> tuple[int, int]:
    """(output k, its local row) of single-file output row ``row``; ``offsets``
    are the inputs' first global rows and the total last (``SetLayout.offsets``)."""
    import numpy as np

    seg, r = divmod(row, plan.n_rows)
    k = int(np.searchsorted(offsets, r, side="right")) - 1
    n = int(offsets[k + 1] - offsets[k])
    return k, seg * n + r - int(offsets[k])
