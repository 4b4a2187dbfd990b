"""One task's output rows, computed from the plan and the input alone.

A task (one block of one copy, see ``sampling.Task``) can run anywhere: the
Dask engine calls ``compute_task`` on its workers. It computes exactly what
the local engine's ``pipeline.run_plan`` streams for that task (same
``Mixer``, same partner rows), only a whole task at once instead of batch by
batch; tests compare the two engines byte for byte.
"""

from __future__ import annotations

import numpy as np

from mixup_cli import balance
from mixup_cli.mixing import Mixer
from mixup_cli.prepare import pair_keys
from mixup_cli.sampling import Plan, Task

Block = dict[str, np.ndarray]


def read_block(source, plan: Plan, block: int) -> Block:
    """Rows of one block of the (prepared) input, for each data key."""
    start, stop = plan.block_bounds(block)
    return {key: source.reader.read(key, start, stop) for key in source.specs}


def compute_task(source, plan: Plan, task: Task) -> Block:
    """All output rows of one task: data arrays (mixed, or pairs), then provenance."""
    source = balance.view(source, plan)  # a balanced plan's rows, read by index
    mixed_specs = {key: source.specs[key] for key in source.mixed_keys}
    mixer = Mixer(plan, {key: spec.row_shape for key, spec in mixed_specs.items()})
    own = read_block(source, plan, task.block)
    drawn = mixer.draw(task)
    if task.partner_block is None:  # class pairings: partners by index
        partners = {key: source.reader.take(key, drawn.partner) for key in source.specs}
        local = np.arange(len(drawn.partner))
    else:
        partners = own if task.partner_block == task.block else read_block(source, plan, task.partner_block)
        local = drawn.partner - plan.block_bounds(task.partner_block)[0]
    n = task.stop - task.start
    result: Block = {}
    for key in source.mixed_keys:
        if task.copy < 0:
            result[key] = own[key]
        else:
            result[key] = mixer.mix_gather(key, own[key], partners[key], local, drawn, 0, n)
    for key in source.paired_keys:
        key_a, key_b = pair_keys(key)
        result[key_a] = own[key]
        result[key_b] = partners[key][local]
    result.update(drawn.provenance())
    return result
