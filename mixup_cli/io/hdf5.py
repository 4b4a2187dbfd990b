"""HDF5 datasets (``.h5``, ``.hdf5``) through h5py.

Output datasets are chunked along the sample axis with chunks that divide
the plan's block size, so every block the pipeline writes covers whole chunks.
"""

from __future__ import annotations

import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from mixup_cli.errors import InputError, OutputError
from mixup_cli.io import base
from mixup_cli.io.base import ArraySpec, WriteOptions

_LOCK_HINT = (
    "the file is locked by another process, or this filesystem does not support "
    "HDF5 file locking; if no other process writes it, set HDF5_USE_FILE_LOCKING=FALSE"
)


def _is_lock_error(exc: OSError) -> bool:
    # Word match: HDF5's messages also mention "sblock" (the superblock).
    return re.search(r"\bf?lock(s|ed|ing)?\b", str(exc).lower()) is not None


def _open_error(path: Path, exc: OSError) -> InputError:
    text = str(exc).lower()
    if _is_lock_error(exc):
        return InputError(f"{path}: cannot open HDF5 file: {_LOCK_HINT}")
    if "permission" in text or getattr(exc, "errno", None) == 13:
        return InputError(f"{path}: permission denied; make the file readable")
    if "truncated file" in text:
        return InputError(f"{path}: not a readable HDF5 file: it is truncated; copy or write it again completely")
    return InputError(f"{path}: not a readable HDF5 file (is it damaged, truncated or another format?)")


def open_reader(path: Path) -> "Reader":
    return Reader(path)


_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE

# Reader.take groups the rows it reads by chunk, or in contiguous storage by
# windows of about TAKE_WINDOW_BYTES; within a group, a raw read goes on
# through up to TAKE_GAP_BYTES of unwanted rows rather than start another
# (measured on 40 B, 1 KiB and 12 KiB rows with 0.2-30% of rows wanted:
# 64 KiB was never far from the fastest, whole chunks up to 2x slower).
TAKE_WINDOW_BYTES = 1 << 20
TAKE_GAP_BYTES = 64 << 10


def _runs(rows: np.ndarray, group: int, gap: int):
    """``(first, stop)`` index pairs cutting sorted unique ``rows`` into runs
    read at once: never across a multiple of ``group`` rows, nor across more
    than ``gap`` unwanted rows."""
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (rows[1:] // group != rows[:-1] // group) | (np.diff(rows) > gap + 1)
    starts = np.flatnonzero(new)
    return zip(starts.tolist(), np.append(starts[1:], len(rows)).tolist())


class Reader(base.Reader):
    format_name = "hdf5"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._raw: dict[str, tuple | None] = {}
        self._fd: int | None = None
        self._deflate: dict[str, tuple[int, bool] | None] = {}
        self._pool: ThreadPoolExecutor | None = None  # inflates gzip chunks
        self._scratch: np.ndarray | None = None

        def collect(name, obj):
            if isinstance(obj, h5py.Dataset):
                self._datasets[name] = obj

        self._file.visititems(collect)

    def keys(self) -> list[str]:
        return list(self._datasets)

    def spec(self, key: str) -> ArraySpec:
        ds = self._datasets[key]
        return ArraySpec(tuple(ds.shape), ds.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        ds = self._datasets[key]
        out = np.empty((stop - start,) + ds.shape[1:], dtype=ds.dtype)
        if stop > start:
            ds.read_direct(out, np.s_[start:stop])
        return out

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if stop <= start:
            return
        if self._raw_read(key, start, stop, out):
            return
        if self._inflate_read(key, start, stop, out):
            return
        self._datasets[key].read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])

    def _deflated(self, key: str) -> tuple[int, bool] | None:
        """``(rows per chunk, shuffled)`` when ``key`` is stored as chunks of
        whole rows compressed with deflate (gzip), after HDF5's byte shuffle
        or not, in native byte order; else None."""
        if key not in self._deflate:
            ds, layout = self._datasets[key], None
            try:
                dcpl = ds.id.get_create_plist()
                filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
                if (ds.chunks and tuple(ds.chunks[1:]) == tuple(ds.shape[1:]) and ds.dtype.isnative
                        and ds.dtype.kind in "fiub" and not ds.is_virtual
                        and filters in ([_DEFLATE], [_SHUFFLE, _DEFLATE])):
                    layout = (ds.chunks[0], filters[0] == _SHUFFLE)
            except Exception:
                layout = None
            self._deflate[key] = layout
        return self._deflate[key]

    def _inflate_read(self, key: str, start: int, stop: int, out: np.ndarray) -> bool:
        """Read gzip chunks as stored and inflate (and unshuffle) them on every
        core (zlib releases the GIL; HDF5 would do them one by one under its lock).
        False (nothing read) when the layout does not allow it."""
        layout = self._deflated(key)
        ds = self._datasets[key]
        if layout is None or not out.flags.c_contiguous or out.dtype != ds.dtype:
            return False
        chunk_rows, shuffled = layout
        deflate_bit = 2 if shuffled else 1  # a set bit of the filter mask: that filter was skipped
        tail = (0,) * (ds.ndim - 1)
        first = (start // chunk_rows) * chunk_rows
        coords = [(c,) + tail for c in range(first, stop, chunk_rows)]
        if any(ds.id.get_chunk_info_by_coord(c).byte_offset is None for c in coords):
            return False  # a chunk never written (fill value): let HDF5 do it
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
        chunk_shape = (chunk_rows,) + ds.shape[1:]

        def inflate(stored: bytes, mask: int, c: int) -> None:
            try:
                data = stored if mask & deflate_bit else zlib.decompress(stored)
                if shuffled and not mask & 1:  # byte k of every element was stored together
                    data = np.frombuffer(data, np.uint8).reshape(ds.dtype.itemsize, -1).T.copy()
                rows = np.frombuffer(data, dtype=ds.dtype).reshape(chunk_shape)
            except (zlib.error, ValueError) as exc:
                raise InputError(
                    f"{self.path}: the compressed chunk of '{key}' rows {c}:{c + chunk_rows} is damaged "
                    f"({exc}); copy or write the file again"
                ) from None
            lo, hi = max(start, c), min(stop, c + chunk_rows)
            out[lo - start : hi - start] = rows[lo - c : hi - c]

        jobs = []
        try:
            for coord in coords:
                mask, stored = ds.id.read_direct_chunk(coord)
                jobs.append(self._pool.submit(inflate, stored, mask, coord[0]))
        finally:
            errors = [job.exception() for job in jobs]  # all finished: none writes into out later
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed
        return True

    def _raw_layout(self, key: str):
        """``(row_bytes, chunk_rows or None, contiguous offset)`` when the rows
        of ``key`` lie in the file as plain bytes (no filter, native byte
        order, chunks holding whole rows, or contiguous storage); else None."""
        if key in self._raw:
            return self._raw[key]
        layout = None
        ds = self._datasets[key]
        try:
            if (ds.dtype.isnative and ds.dtype.kind in "fiu" and ds.shape and ds.shape[0]
                    and self._file.id.get_create_plist().get_userblock() == 0
                    and ds.id.get_create_plist().get_nfilters() == 0 and not ds.is_virtual
                    and ds.external is None):
                row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
                if ds.chunks is None:
                    offset = ds.id.get_offset()
                    if offset is not None:
                        layout = (row_bytes, None, offset)
                elif tuple(ds.chunks[1:]) == tuple(ds.shape[1:]):
                    layout = (row_bytes, ds.chunks[0], None)
        except Exception:
            layout = None
        self._raw[key] = layout
        return layout

    def _raw_read(self, key: str, start: int, stop: int, out: np.ndarray, chunks: dict | None = None) -> bool:
        """Read rows with ``os.preadv`` straight into ``out``: outside h5py's
        global lock, so reading overlaps the writer thread's HDF5 calls.
        False (and nothing read) when the layout does not allow it.
        ``chunks`` keeps the storage info of chunks already looked up."""
        layout = self._raw_layout(key)
        if layout is None or not out.flags.c_contiguous or out.dtype != self._datasets[key].dtype:
            return False
        row_bytes, chunk_rows, offset = layout
        dest = memoryview(out[: stop - start]).cast("B")
        pieces = []  # (file offset, first byte in dest, byte count)
        if chunk_rows is None:
            pieces.append((offset + start * row_bytes, 0, (stop - start) * row_bytes))
        else:
            ds = self._datasets[key]
            tail = (0,) * (len(ds.shape) - 1)
            chunks = {} if chunks is None else chunks
            first = (start // chunk_rows) * chunk_rows
            for c in range(first, stop, chunk_rows):
                info = chunks.get(c)
                if info is None:
                    info = chunks[c] = ds.id.get_chunk_info_by_coord((c,) + tail)
                if info.byte_offset is None or info.filter_mask or info.size < chunk_rows * row_bytes:
                    return False  # unallocated (fill value) or unusual chunk: let HDF5 do it
                lo, hi = max(start, c), min(stop, c + chunk_rows)
                pieces.append((info.byte_offset + (lo - c) * row_bytes, (lo - start) * row_bytes, (hi - lo) * row_bytes))
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        for file_at, at, count in pieces:
            done = 0
            while done < count:
                got = os.preadv(self._fd, [dest[at + done : at + count]], file_at + done)
                if got <= 0:
                    raise InputError(f"{self.path}: file ended while reading '{key}' (truncated?)")
                done += got
        return True

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        """The rows, read chunk by chunk (h5py's list indexing of chunked
        storage is many times slower): the rows wanted from one chunk (one
        window of contiguous storage) are read as a few row ranges, into the
        result when a range is all wanted rows, else into a reused buffer
        they are copied from."""
        ds = self._datasets[key]
        raw = self._raw_layout(key) is not None
        if ds.chunks is None and not raw:
            # Contiguous or compact, read through HDF5: its point selections are fast there.
            return ds[rows.tolist()] if len(rows) else self.read(key, 0, 0)
        out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
        if not out.size:
            return out
        if rows[0] < 0 or rows[-1] >= ds.shape[0]:
            raise IndexError(f"{self.path}: rows of '{key}' out of range 0..{ds.shape[0] - 1}")
        row_bytes = out.nbytes // len(rows)
        group = ds.chunks[0] if ds.chunks else max(1, TAKE_WINDOW_BYTES // row_bytes)
        # A raw read costs little more than the bytes it copies: long gaps are
        # skipped. An HDF5 read of a chunk costs about the whole chunk: one each.
        gap = TAKE_GAP_BYTES // row_bytes if raw else group
        chunks: dict = {}
        for first, stop in _runs(rows, group, gap):
            lo, hi = int(rows[first]), int(rows[stop - 1]) + 1
            whole = hi - lo == stop - first  # every row of the range is wanted
            dest = out[first:stop] if whole else self._buffer(out, hi - lo)
            if not self._raw_read(key, lo, hi, dest, chunks):
                ds.read_direct(dest, np.s_[lo:hi], np.s_[0 : hi - lo])
            if not whole:
                np.take(dest, rows[first:stop] - lo, axis=0, out=out[first:stop], mode="clip")
        return out

    def _buffer(self, like: np.ndarray, rows: int) -> np.ndarray:
        """A C-contiguous array of ``rows`` rows shaped like ``like``'s, in
        memory kept for the next call (at most one chunk's or window's bytes)."""
        nbytes = rows * (like.nbytes // len(like))
        if self._scratch is None or self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes].view(like.dtype).reshape((rows,) + like.shape[1:])

    def chunk_rows(self, key: str) -> int | None:
        chunks = self._datasets[key].chunks
        return chunks[0] if chunks else None

    def take_inflates(self, key: str) -> bool:
        return self._datasets[key].id.get_create_plist().get_nfilters() > 0

    def describe(self, key: str) -> dict:
        ds = self._datasets[key]
        return {"chunks": list(ds.chunks) if ds.chunks else None, "compression": ds.compression or "none"}

    def attributes(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._file.close()


# Chunk size aimed at for compressed HDF5 output: reading one row inflates its
# whole chunk, so random row access (a shuffled DataLoader) wants small ones.
# bench/bench_chunking.py (12 KiB rows, README Performance): 64 KiB chunks
# (gzip with shuffle) read random rows 20-25x faster than 1 MiB chunks
# without shuffle, at 0.7-1.3x uncompressed output's rate, in less CPU time.
COMPRESSED_CHUNK_BYTES = {"gzip": 64 << 10, "lzf": 64 << 10}


def chunk_rows_for(spec: ArraySpec, options: WriteOptions, *, compressed: bool = True) -> int:
    """Rows per chunk: ``--chunk-rows`` when given (``base.check_chunk_rows``
    saw it divide the block rows), else about ``chunk_bytes`` (at most
    ``COMPRESSED_CHUNK_BYTES`` for compressed output, unless not
    ``compressed``); always dividing the block size and at most the rows."""
    target = options.chunk_bytes
    if compressed and options.compression in COMPRESSED_CHUNK_BYTES:
        target = min(target, COMPRESSED_CHUNK_BYTES[options.compression])
    limit = max(1, target // max(1, spec.row_bytes))
    if options.chunk_rows:
        limit = options.chunk_rows
    limit = min(limit, spec.rows)
    if options.block_rows:
        divisors = [d for d in range(1, min(limit, options.block_rows) + 1) if options.block_rows % d == 0]
        return divisors[-1]
    return max(1, limit)


def _writer_cache(options: WriteOptions) -> dict:
    """Uncompressed output goes straight to the file, without HDF5's chunk
    cache: rows are written in whole runs anyway, and after a failed write
    (disk full) a file with dirty cached chunks crashes HDF5 when closed."""
    return {"rdcc_nbytes": 0} if options.compression == "none" else {}
# gzip level of HDF5 output (h5py's default for compression="gzip").
GZIP_LEVEL = 4


def shuffle_for(options: WriteOptions) -> bool:
    """Whether HDF5's byte-shuffle filter runs before compression: on for
    gzip unless turned off (it groups the like bytes of numbers, so deflate
    finds more to share), off without compression (it would do nothing)."""
    if options.compression == "none":
        return False
    return options.compression == "gzip" if options.shuffle is None else bool(options.shuffle)


def _shuffled_deflate(piece: np.ndarray, itemsize: int) -> bytes:
    """What HDF5's shuffle then deflate filters store for one chunk: byte k
    of every element together, for k = 0..itemsize-1, then zlib at GZIP_LEVEL.
    (A chunk holds whole elements, so there is no tail of loose bytes.)"""
    if itemsize > 1:
        piece = np.frombuffer(piece, np.uint8).reshape(-1, itemsize).T.copy()
    return zlib.compress(piece, GZIP_LEVEL)


class Writer(base.Writer):
    """Chunked HDF5 output.

    Writes that cover whole chunks skip HDF5's chunk cache and filter
    pipeline: each chunk goes to the file with ``write_direct_chunk``, and
    for gzip it is deflated first by a small pool of threads (zlib releases
    the GIL), so compression uses every core. The bytes stored are what the
    deflate filter stores, so any HDF5 reader decodes them. Other writes
    (edges of a chunk, lzf) go through HDF5 as usual.
    """

    format_name = "hdf5"
    compressions = ("none", "gzip", "lzf")

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        try:
            self._file = h5py.File(self.path, "w", **_writer_cache(options))
        except OSError as exc:
            if _is_lock_error(exc):
                raise OutputError(f"{self.path}: cannot create HDF5 file: {_LOCK_HINT}") from None
            raise OutputError(f"{self.path}: cannot create HDF5 file: {exc}") from None
        compression = None if options.compression == "none" else options.compression
        opts = GZIP_LEVEL if options.compression == "gzip" else None
        shuffle = shuffle_for(options)
        self._datasets = {}
        self._chunk_rows: dict[str, int] = {}
        for key, spec in specs.items():
            chunks = None
            if spec.rows and all(spec.row_shape):
                chunks = (chunk_rows_for(spec, options),) + spec.row_shape
                self._chunk_rows[key] = chunks[0]
            self._datasets[key] = self._file.create_dataset(
                key, shape=spec.shape, dtype=spec.dtype, chunks=chunks, compression=compression,
                compression_opts=opts, shuffle=shuffle,
            )
        self._start_direct_writes()

    def _start_direct_writes(self) -> None:
        self._direct = self.options.compression in ("none", "gzip")
        self._pool = None
        if self.options.compression == "gzip":
            self._pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        n = len(data)
        if not n:
            return
        ds = self._datasets[key]
        data = np.ascontiguousarray(data, dtype=ds.dtype)
        c = self._chunk_rows.get(key)
        if not self._direct or c is None:
            ds.write_direct(data, dest_sel=np.s_[start : start + n])
            return
        # Rows [first, last) form whole chunks; the edges go through HDF5.
        first = -(-start // c) * c
        last = max(first, ((start + n) // c) * c)
        if first > start:
            ds.write_direct(data[: min(n, first - start)], dest_sel=np.s_[start : min(start + n, first)])
        if last > first:
            self._write_chunks(ds, first, data[first - start : last - start], c)
        if start + n > last >= first:
            ds.write_direct(data[last - start :], dest_sel=np.s_[last : start + n])

    def _write_chunks(self, ds, first: int, rows: np.ndarray, c: int) -> None:
        tail = (0,) * (rows.ndim - 1)
        pieces = [rows[i : i + c] for i in range(0, len(rows), c)]
        if self._pool is None:
            for i, piece in enumerate(pieces):
                ds.id.write_direct_chunk((first + i * c,) + tail, piece)
            return
        # Deflate a few chunks ahead of the one being written: bounded memory.
        window = 2 * self._pool._max_workers
        if ds.shuffle:  # the dataset's filters say so (also on a reopened file)
            compress, arg = _shuffled_deflate, ds.dtype.itemsize
        else:
            compress, arg = zlib.compress, GZIP_LEVEL
        futures = [self._pool.submit(compress, piece, arg) for piece in pieces[:window]]
        for i in range(len(pieces)):
            if i + window < len(pieces):
                futures.append(self._pool.submit(compress, pieces[i + window], arg))
            ds.id.write_direct_chunk((first + i * c,) + tail, futures[i].result())
            futures[i] = None

    def set_attributes(self, attrs: dict) -> None:
        for name, value in attrs.items():
            self._file.attrs[name] = value

    def flush(self) -> None:
        self._file.flush()
        try:
            os.fsync(self._file.id.get_vfd_handle())
        except (OSError, TypeError, ValueError):
            pass

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> "Writer":
        # HDF5 is not crash-safe: after a kill the file may not open at all.
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        try:
            self._file = h5py.File(self.path, "r+", **_writer_cache(options))
        except OSError as exc:
            reason = "locked by another process" if _is_lock_error(exc) else "HDF5 cannot open it"
            raise cls.damaged(self.path, reason) from None
        try:
            self._datasets = {key: self._file[key] for key in specs}
            for key, spec in specs.items():
                ds = self._datasets[key]
                if tuple(ds.shape) != tuple(spec.shape) or ds.dtype != spec.dtype:
                    raise ValueError(f"array '{key}' has the wrong shape or dtype")
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            self._file.close()
            raise cls.damaged(self.path, str(exc) or "arrays missing") from None
        self._chunk_rows = {key: ds.chunks[0] for key, ds in self._datasets.items() if ds.chunks}
        self._start_direct_writes()
        return self

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._file.id.valid:
            self._file.flush()
            self._file.close()

    def files(self) -> list[Path]:
        return [Path(".")]
