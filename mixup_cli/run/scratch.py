"""An uncompressed scratch copy of the input, for pairings read by index.

A task of the class, index and ``global`` pairings reads its partners from
anywhere in the input (see ``sampling``; ``Plan.by_index``). From compressed input (filtered HDF5, compressed Zarr) each
such read inflates every chunk it touches, and every block touches most
chunks: a run would inflate the whole input once per block, a cost that
grows with the square of the rows. So when there are more than a few
blocks, the input's data arrays are first copied once, as they are mixed
(prepared: targets encoded, x converted, checked), into an uncompressed
HDF5 file beside the output, and the run reads everything from there:
its own blocks in whole chunks and its partners as raw row ranges. The copy
costs one pass over the input and its uncompressed size on disk; it is
removed when the run ends, however it ends (an interrupted run's copy is
made again on resume).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.io import hdf5
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.mixing.sampling import Plan

# With this many blocks or fewer, inflating the input once per block costs
# no more than making the copy.
MIN_BLOCKS = 3


def wanted(source, plan: Plan) -> bool:
    """Whether partners read by index should come from a copy: the input's
    chunks would be inflated once per block, or (a set of more inputs than its
    reader keeps open) each output's partners would reopen inputs all over
    the set, O(inputs) opens an output."""
    if not plan.by_index or plan.own is not None:
        return False
    return source.reader.take_scatters() or (
        plan.n_blocks >= MIN_BLOCKS and any(source.reader.take_inflates(key) for key in source.specs)
    )


def scratch_bytes(source, plan: Plan) -> int:
    """Disk the copy takes (0 when the run reads the input itself)."""
    if not wanted(source, plan):
        return 0
    return sum(
        int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize for spec in source.specs.values()
    )


def _copy(source, plan: Plan, path: Path, fast: bool = True) -> hdf5.Reader:
    """The prepared data arrays, written block by block (memory: one block)."""
    specs = {key: ArraySpec(spec.shape, spec.dtype) for key, spec in source.specs.items()}
    writer = hdf5.Writer(path, specs, WriteOptions(compression="none", block_rows=plan.block_rows))
    try:
        rows = min(plan.block_rows, plan.n_rows)
        buffers = {key: np.empty((rows,) + spec.row_shape, spec.dtype) for key, spec in specs.items()}
        for block in range(plan.n_blocks):
            stopping.check()
            start, stop = plan.block_bounds(block)
            for key, buf in buffers.items():
                source.reader.read_into(key, start, stop, buf)
                writer.write(key, start, buf[: stop - start])
    finally:
        writer.close()
    return hdf5.Reader(path, fast=fast)


@contextmanager
def source_for_run(source, plan: Plan, path: Path, fast: bool = True):
    """The source a run reads: ``source`` itself, or (class pairings on
    compressed input, several blocks) the same arrays from a copy at
    ``path``, removed on the way out; the copy is read with the reader's
    fast paths only when ``fast`` (verify reads it through HDF5)."""
    if not wanted(source, plan):
        yield source
        return
    reader = None
    try:
        reader = _copy(source, plan, Path(path), fast)
        # A source of its own: rows already prepared, read as they are (the input's reader is not in it).
        yield dataclasses.replace(source, reader=reader, prepared=None, input_specs=None, path=Path(path))
    finally:
        if reader is not None:
            reader.close()
        Path(path).unlink(missing_ok=True)
