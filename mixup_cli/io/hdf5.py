"""HDF5 datasets (``.h5``, ``.hdf5``) through h5py.

Output datasets are chunked along the sample axis with chunks that divide
the plan's block size, so every block the pipeline writes covers whole chunks.
"""

from __future__ import annotations

import os
import re
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


class Reader(base.Reader):
    format_name = "hdf5"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        self._datasets: dict[str, h5py.Dataset] = {}

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

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        return self._datasets[key][rows.tolist()] if len(rows) else self.read(key, 0, 0)

    def chunk_rows(self, key: str) -> int | None:
        chunks = self._datasets[key].chunks
        return chunks[0] if chunks else None

    def describe(self, key: str) -> dict:
        ds = self._datasets[key]
        return {"chunks": list(ds.chunks) if ds.chunks else None, "compression": ds.compression or "none"}

    def attributes(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._file.attrs.items()}

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self._file.close()


def chunk_rows_for(spec: ArraySpec, options: WriteOptions) -> int:
    """Rows per chunk: about ``chunk_bytes``, dividing the block size, at most the rows."""
    limit = max(1, options.chunk_bytes // max(1, spec.row_bytes))
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


class Writer(base.Writer):
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
        self._datasets = {}
        for key, spec in specs.items():
            chunks = None
            if spec.rows and all(spec.row_shape):
                chunks = (chunk_rows_for(spec, options),) + spec.row_shape
            self._datasets[key] = self._file.create_dataset(
                key, shape=spec.shape, dtype=spec.dtype, chunks=chunks, compression=compression
            )

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        if len(data):
            self._datasets[key].write_direct(np.ascontiguousarray(data), dest_sel=np.s_[start : start + len(data)])

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
        return self

    def close(self) -> None:
        if self._file.id.valid:
            self._file.flush()
            self._file.close()

    def files(self) -> list[Path]:
        return [Path(".")]
