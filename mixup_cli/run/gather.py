"""Rows read by index, as cheaply as the reader allows: a task's partner rows.

``take(reader, key, rows)`` returns the sorted, unique ``rows`` of ``key``,
exactly as ``reader.take`` does. Where the reader's ``take`` costs a call
per run of rows (HDF5: one ``pread`` per row or run, the rows of one chunk
at most), rows close together are read instead as one range with
``read_into`` (chunk-aligned, adjacent chunks in one call: a reader's
sequential path), in windows of at most ``WINDOW_BYTES``, and the wanted
rows picked from it; a row far from any other is still read alone by
``take``. So a small array (a label row of a few bytes) is read almost
sequentially, while a large row costs one read, as before. Only how rows
are read changes: the rows, and so the bytes, are those ``take`` returns.

The input's preparation (``prepare.PreparedReader``: conversion, label
encoding, the check for NaN) is applied to the rows picked, never to the
neighbours read with them. Memory, beside the rows returned: one window
(at most ``WINDOW_BYTES``) per call, reused for its runs, and the rows read
alone a piece (``PIECE_BYTES``) at a time.

A reader made of several inputs (a set's ``ConcatReader``) tells where each
starts by an ``input_offsets`` attribute (the first row of each input, then
the total rows; ``run/`` does not import ``sets/``, so it is looked up by
name): a range never crosses from one input into the next, so a take opens
and reads only the inputs holding the rows wanted, never the rows of inputs
between them.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.io.base import Reader
from mixup_cli.run.prepared import PreparedReader

# A read call costs about what copying this many bytes costs (a ``pread``
# of a cached page plus the Python around it, against a memory copy): a gap
# between two wanted rows shorter than this is read through rather than
# skipped with another call.
GAP_BYTES = 32 << 10
# The largest range read at once (the window buffer: memory, not rows of N).
WINDOW_BYTES = 4 << 20
# Formats whose ``read_into`` copies stored bytes (decoding nothing: reading
# a row it does not need costs only its bytes) and whose ``take`` makes a
# call per run of rows. Others (decoded images, Parquet batches, memory
# maps) gain nothing from reading neighbours: their ``take`` is used as is.
COALESCING_FORMATS = frozenset({"hdf5"})
# Rows read by ``take`` beside the ranges are read this many bytes at a time.
PIECE_BYTES = 4 << 20
# A run of fewer rows is left to ``take`` (which reads rows close together
# within one chunk in one call already): the range pays when it saves calls.
MIN_RUN_ROWS = 4


def take(reader, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of ``key``, as ``reader.take`` gives
    them; into ``out[:len(rows)]`` when ``out`` is given and holds such rows
    (a buffer reused from task to task: no block of rows allocated per task)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(reader, PreparedReader):
        inner = reader.inner.spec(key)
        direct = out if out is not None and _fits(out, inner.row_shape, inner.dtype) else None
        return _into(reader.prepare_rows(key, take(reader.inner, key, rows, direct), rows), out)
    if not coalesces(reader) or len(rows) < 2:
        return _into(reader.take(key, rows), out)
    spec = reader.spec(key)
    row_shape, dtype = tuple(spec.row_shape), np.dtype(spec.dtype)
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    runs = ranges(rows, row_bytes, getattr(reader, "input_offsets", None)) or []
    if not runs and out is None:
        return reader.take(key, rows)
    if out is not None and _fits(out, row_shape, dtype) and len(out) >= len(rows):
        result = out[: len(rows)]
    else:
        result = np.empty((len(rows),) + row_shape, dtype)
    alone = np.ones(len(rows), dtype=bool)  # rows not in any run: read by ``take``
    if runs:
        window = np.empty(max(int(rows[stop - 1] - rows[first]) + 1 for first, stop in runs) * row_bytes, np.uint8)
    for first, stop in runs:
        alone[first:stop] = False
        lo, hi = int(rows[first]), int(rows[stop - 1]) + 1
        buf = window[: (hi - lo) * row_bytes].view(dtype).reshape((hi - lo,) + row_shape)
        reader.read_into(key, lo, hi, buf)
        np.take(buf, rows[first:stop] - lo, axis=0, out=result[first:stop])
    # the rows far from others, by ``take``, a piece at a time: what it
    # returns beside the result stays small (never a second block of rows)
    at = np.flatnonzero(alone)
    piece = max(1, PIECE_BYTES // row_bytes)
    for lo in range(0, len(at), piece):
        part = at[lo : lo + piece]
        result[part] = reader.take(key, rows[part])
    return result


def _fits(out: np.ndarray, row_shape, dtype) -> bool:
    return out.dtype == np.dtype(dtype) and tuple(out.shape[1:]) == tuple(row_shape) and out.flags.c_contiguous


def _into(block: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``block`` in ``out``'s first rows when it fits there (copied unless it is already)."""
    if out is None or len(block) > len(out) or not _fits(out, block.shape[1:], block.dtype):
        return block
    target = out[: len(block)]
    if not np.may_share_memory(block, target):
        np.copyto(target, block)
    return target


def coalesces(reader) -> bool:
    """Whether ``take`` reads runs of ``reader``'s rows as ranges (see ``COALESCING_FORMATS``)."""
    return isinstance(reader, Reader) and reader.format_name in COALESCING_FORMATS


def ranges(rows: np.ndarray, row_bytes: int, bounds: np.ndarray | None = None) -> list[tuple[int, int]] | None:
    """The runs of ``MIN_RUN_ROWS`` rows or more in ``rows`` (sorted, unique), as
    positions ``[first, stop)``: consecutive rows join a run while the gap
    between them is under ``GAP_BYTES``, and a run's range stays within
    ``WINDOW_BYTES``. ``bounds``: the first row of each input of the reader
    (ascending; a reader's ``input_offsets``): a run never holds rows of two
    inputs. None when there is none (``take`` reads every row)."""
    join = (np.diff(rows) - 1) * row_bytes < GAP_BYTES
    if bounds is not None and len(rows) > 1:
        owner = np.searchsorted(np.asarray(bounds, dtype=np.int64), rows, side="right")
        join &= owner[1:] == owner[:-1]
    breaks = np.flatnonzero(~join) + 1
    firsts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(rows)]))
    several = stops - firsts >= MIN_RUN_ROWS
    window_rows = max(1, WINDOW_BYTES // row_bytes)
    runs: list[tuple[int, int]] = []
    for first, stop in zip(firsts[several].tolist(), stops[several].tolist()):
        while first < stop:  # a range longer than a window: cut where it would pass one
            end = first + int(np.searchsorted(rows[first:stop], rows[first] + window_rows))
            if end - first >= MIN_RUN_ROWS:
                runs.append((first, end))
            first = end
    return runs or None
