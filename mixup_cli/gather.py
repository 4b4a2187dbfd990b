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
neighbours read with them. Memory: one window (at most ``WINDOW_BYTES``)
per call, reused for its runs.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.io.base import Reader
from mixup_cli.prepare import PreparedReader

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
# A run of fewer rows is left to ``take`` (which reads rows close together
# within one chunk in one call already): the range pays when it saves calls.
MIN_RUN_ROWS = 4


def take(reader, key: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of ``key``, as ``reader.take`` gives them."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(reader, PreparedReader):
        return reader.prepare_rows(key, take(reader.inner, key, rows), rows)
    if not coalesces(reader) or len(rows) < 2:
        return reader.take(key, rows)
    spec = reader.spec(key)
    row_shape, dtype = tuple(spec.row_shape), np.dtype(spec.dtype)
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    runs = ranges(rows, row_bytes)
    if runs is None:
        return reader.take(key, rows)
    out = np.empty((len(rows),) + row_shape, dtype)
    alone = np.ones(len(rows), dtype=bool)  # rows not in any run: read by ``take``
    window = np.empty(max(int(rows[stop - 1] - rows[first]) + 1 for first, stop in runs) * row_bytes, np.uint8)
    for first, stop in runs:
        alone[first:stop] = False
        lo, hi = int(rows[first]), int(rows[stop - 1]) + 1
        buf = window[: (hi - lo) * row_bytes].view(dtype).reshape((hi - lo,) + row_shape)
        reader.read_into(key, lo, hi, buf)
        np.take(buf, rows[first:stop] - lo, axis=0, out=out[first:stop])
    if alone.any():
        out[alone] = reader.take(key, rows[alone])
    return out


def coalesces(reader) -> bool:
    """Whether ``take`` reads runs of ``reader``'s rows as ranges (see ``COALESCING_FORMATS``)."""
    return isinstance(reader, Reader) and reader.format_name in COALESCING_FORMATS


def ranges(rows: np.ndarray, row_bytes: int) -> list[tuple[int, int]] | None:
    """The runs of ``MIN_RUN_ROWS`` rows or more in ``rows`` (sorted, unique), as
    positions ``[first, stop)``: consecutive rows join a run while the gap
    between them is under ``GAP_BYTES``, and a run's range stays within
    ``WINDOW_BYTES``. None when there is none
    (``take`` reads every row)."""
    join = (np.diff(rows) - 1) * row_bytes < GAP_BYTES
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
