"""Opening single ``.npy`` arrays without loading them, and writing them
through memory maps: the shared piece of the ``.npy``-directory and ``.npz``
formats. Never unpickles."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from mixup_cli.errors import InputError
from mixup_cli.io.base import ArraySpec


def read_header(fh, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse the ``.npy`` header at the file's position: shape, fortran order, dtype, data offset."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{label}: not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise InputError(
            f"{label}: holds Python objects (pickled data), which are never loaded; "
            "save it as a numeric array"
        )
    return tuple(shape), fortran, dtype, fh.tell()


def memmap_npy(path: Path, offset: int = 0, label: str | None = None) -> np.ndarray:
    """Memory-map the ``.npy`` array that starts at ``offset`` in ``path``, read-only."""
    label = label or str(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            shape, fortran, dtype, data_offset = read_header(fh, label)
            fh.seek(0, 2)
            size = fh.tell()
    except PermissionError:
        raise InputError(f"{label}: permission denied; make the file readable") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if data_offset + expected > size:
        raise InputError(f"{label}: truncated: the header promises {expected} bytes of data")
    if expected == 0:
        return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran else "C")


def create_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new ``.npy`` file memory-mapped for writing, its disk space reserved.

    Reserving the space up front turns a full disk into an error here,
    instead of a crash (SIGBUS) on a later write through the map.
    """
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    if size and hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        finally:
            os.close(fd)
    return arr


def reopen_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Memory-map an existing ``.npy`` file for writing; ValueError if it is not as expected."""
    arr = np.lib.format.open_memmap(path, mode="r+")
    if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ValueError(f"{Path(path).name} has shape {arr.shape} and dtype {arr.dtype}")
    return arr


class NpyMaps:
    """Output arrays as ``KEY.npy`` files in one folder, written through
    writable memory maps: new ones, or (``reopen``) those a run left there,
    checked against ``specs`` (OSError or ValueError when they are not)."""

    def __init__(self, folder: Path, specs: dict[str, ArraySpec], reopen: bool = False):
        open_npy = reopen_npy if reopen else create_npy
        self._maps = {
            key: open_npy(Path(folder) / f"{key}.npy", spec.shape, spec.dtype) for key, spec in specs.items()
        }

    def __len__(self) -> int:
        return len(self._maps)

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        self._maps[key][start : start + len(data)] = data

    def flush(self) -> None:
        for arr in self._maps.values():
            if isinstance(arr, np.memmap):
                arr.flush()

    def close(self) -> None:
        """Flush and let go of the maps (closed once none refers to them)."""
        self.flush()
        self._maps.clear()
