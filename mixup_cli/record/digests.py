"""SHA-256 of the output arrays, computed while their rows are written.

A file's SHA-256 can only be computed once the file is complete (HDF5
rewrites its headers when it closes), which costs one more read of the whole
output at the end of every run. The output's *data* is hashed instead, as it
streams to the writer, block by block:

* the output's rows are cut into blocks: each copy (and the original, with
  ``--include-original``) of the input's ``segment_rows`` rows is cut into
  pieces of ``block_rows`` rows, the last one shorter;
* each block of an array is hashed (SHA-256 of its rows' bytes, C order);
* the array's digest is the SHA-256 of its blocks' 32-byte digests, in row
  order.

A set's output ``k`` (``mixup_cli/sets``) holds rows ``offset_k ..`` of the
set in each segment: its blocks are the set's blocks clipped to them, the
boundaries shifted by ``block_offset = offset_k mod block_rows`` (the first
block shorter), so a sidecar's scheme (``block_rows``, ``segment_rows``,
``block_offset``) lets the digests be recomputed from the file alone.

Blocks are the plan's units of work, so each is written (or computed on a
Dask worker) whole, in any order, and a resumed run keeps the digests of
the blocks already written. The result depends only on the array's values,
dtype and the two block sizes: the same data written as HDF5, ``.npz``,
``.npy`` or Zarr has the same digests.
"""

from __future__ import annotations

import bisect
import hashlib

import numpy as np

SCHEME = "sha256 of the sha256 of each block of rows"


def block_bounds(segment_rows: int, block_rows: int, segments: int, block_offset: int = 0) -> Bounds:
    """``(start, stop)`` output rows of every block, in row order."""
    return Bounds(segment_rows, block_rows, segments, block_offset)


class Bounds:
    """The blocks of ``segments`` segments of ``segment_rows`` rows, computed
    on demand: memory does not grow with the number of blocks (``--copies``).
    ``block_offset``: each segment's block boundaries fall ``block_rows -
    block_offset`` rows after its start, then every ``block_rows`` (a set's output)."""

    def __init__(self, segment_rows: int, block_rows: int, segments: int, block_offset: int = 0):
        self.segment_rows, self.block_rows, self.segments = segment_rows, block_rows, segments
        self.block_offset = block_offset % block_rows
        self._per = -(-(segment_rows + self.block_offset) // block_rows)

    def __len__(self) -> int:
        return self._per * self.segments

    def __getitem__(self, i: int) -> tuple[int, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        s, b = divmod(i, self._per)
        base, off = s * self.segment_rows, self.block_offset
        return (
            base + max(0, b * self.block_rows - off),
            base + min((b + 1) * self.block_rows - off, self.segment_rows),
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def index_of(self, row: int) -> int:
        """The block holding output row ``row``."""
        s, r = divmod(row, self.segment_rows)
        return s * self._per + (r + self.block_offset) // self.block_rows


def _update(digest, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows)
    little = rows.dtype.newbyteorder("<")
    if rows.dtype != little:  # the digest is of little-endian bytes, wherever it runs
        rows = rows.astype(little)
    digest.update(memoryview(rows.reshape(-1)).cast("B"))


def of_rows(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """The digests of one whole block (each array's rows of that block)."""
    out = {}
    for key, rows in arrays.items():
        digest = hashlib.sha256()
        _update(digest, rows)
        out[key] = digest.hexdigest()
    return out


def combine(blocks: list[str]) -> str:
    """An array's digest from its blocks' digests (hex, in row order)."""
    digest = hashlib.sha256()
    for hex_digest in blocks:
        digest.update(bytes.fromhex(hex_digest))
    return digest.hexdigest()


class BlockDigests:
    """The digests of an output's blocks, as they are finished.

    ``done`` maps a block's first row to ``{array: hex digest}``. It may be
    a resume journal's own dict, shared, so that the journal saves the
    digests of the blocks it records as written.
    """

    def __init__(self, bounds, keys, done: dict[int, dict[str, str]] | None = None):
        self.bounds = bounds if isinstance(bounds, Bounds) else list(bounds)
        self.keys = list(keys)
        self.done: dict[int, dict[str, str]] = {} if done is None else done

    @classmethod
    def for_plan(
        cls,
        plan,
        keys,
        done: dict[int, dict[str, str]] | None = None,
        *,
        segment_rows: int | None = None,
        block_offset: int = 0,
    ) -> BlockDigests:
        """The blocks of ``plan``'s output (a ``sampling.Plan``: its tasks' rows);
        a set's output: ``segment_rows`` its input's rows, ``block_offset`` its offset."""
        segment = plan.n_rows if segment_rows is None else segment_rows
        bounds = block_bounds(segment, plan.block_rows, plan.output_rows // plan.n_rows, block_offset)
        return cls(bounds, keys, done)

    def add(self, start: int, digests: dict[str, str]) -> None:
        self.done[start] = dict(digests)

    def missing(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self.bounds if a not in self.done]

    def arrays(self) -> dict[str, str]:
        """Every array's digest; raises if a block was never finished."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"no digest for output rows {missing[0][0]}:{missing[0][1]} ({len(missing)} blocks)")
        return {key: combine([self.done[a][key] for a, _ in self.bounds]) for key in self.keys}


class BlockHasher:
    """Hashes each block's rows as the engine produces them.

    ``update(start, arrays)`` takes rows of every output array beginning at
    output row ``start``. Rows must not cross a block boundary (the engine
    works within one task, which is one block) and come in row order within
    a block; a block whose rows come again (a resumed run) is hashed afresh.
    A block is added to ``digests`` once all its rows of every array came.
    """

    def __init__(self, digests: BlockDigests):
        self.digests = digests
        bounds = digests.bounds
        if isinstance(bounds, Bounds):
            self._index = bounds.index_of
        else:
            starts = [a for a, _ in bounds]
            self._index = lambda row: bisect.bisect_right(starts, row) - 1
        self._open: dict[tuple[str, int], tuple] = {}  # (key, block start) -> (hash, next row)
        self._finished: dict[int, dict[str, str]] = {}  # blocks with some arrays finished

    def block_start(self, row: int) -> int:
        """The first output row of the block holding ``row``."""
        return self.digests.bounds[self._index(row)][0]

    def update(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        for key, data in arrays.items():
            self._update(key, start, data)

    def _update(self, key: str, start: int, data: np.ndarray) -> None:
        n = len(data)
        if n == 0:
            return
        i = self._index(start)
        block_start, block_stop = self.digests.bounds[i]
        if start + n > block_stop:
            raise ValueError(f"rows {start}:{start + n} cross the block {block_start}:{block_stop}")
        digest, expected = self._open.get((key, block_start)) or (hashlib.sha256(), block_start)
        if start != expected:
            raise ValueError(f"rows of block {block_start}:{block_stop} of '{key}' came out of order")
        _update(digest, data)
        if start + n < block_stop:
            self._open[(key, block_start)] = (digest, start + n)
            return
        self._open.pop((key, block_start), None)
        finished = self._finished.setdefault(block_start, {})
        finished[key] = digest.hexdigest()
        if len(finished) == len(self.digests.keys):  # every array of the block: the block is done
            self.digests.add(block_start, self._finished.pop(block_start))
