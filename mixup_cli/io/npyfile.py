"""Opening single ``.npy`` arrays without loading them, and writing them
through memory maps: the shared piece of the ``.npy``-directory and ``.npz``
formats. Never unpickles."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
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
            f"{label}: holds Python objects (pickled data), which are never loaded; save it as a numeric array"
        )
    return tuple(shape), fortran, dtype, fh.tell()


def memmap_npy(source, offset: int = 0, label: str | None = None, end: int | None = None) -> np.ndarray:
    """Memory-map the ``.npy`` array that starts at ``offset`` in ``source``
    (a path, or an open binary file), read-only.

    ``end``: where the array's bytes must end at the latest (the end of an
    archive member); by default the end of the file. A header promising more
    data than that, or a shape no array can have, is an InputError naming
    ``label``.
    """
    label = label or str(source)
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                shape, fortran, dtype, data_offset, size = _header_and_size(fh, offset, label)
        else:
            shape, fortran, dtype, data_offset, size = _header_and_size(source, offset, label)
    except PermissionError:
        raise InputError(f"{label}: permission denied; make the file readable") from None
    if any(d < 0 for d in shape):
        raise InputError(
            f"{label}: the .npy header gives an impossible shape {shape} (a negative length); the file is damaged"
        )
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    limit = size if end is None else min(size, end)
    if data_offset + expected > limit:
        have = max(0, limit - data_offset)
        if end is not None:
            raise InputError(
                f"{label}: member is shorter than its .npy header says (shape {shape}, dtype {dtype}: "
                f"{expected} bytes of data, but the member holds {have}); the archive is damaged"
            )
        raise InputError(
            f"{label}: truncated: the header promises {expected} bytes of data (shape {shape}, dtype {dtype}) "
            f"but the file holds {have}"
        )
    order = "F" if fortran else "C"
    try:
        if expected == 0:
            return np.empty(shape, dtype=dtype, order=order)
        return np.memmap(source, dtype=dtype, mode="r", offset=data_offset, shape=shape, order=order)
    except (ValueError, OverflowError, MemoryError) as exc:
        raise InputError(f"{label}: the .npy header gives shape {shape}, which no array can have ({exc})") from None


def _header_and_size(fh, offset: int, label: str):
    fh.seek(offset)
    shape, fortran, dtype, data_offset = read_header(fh, label)
    fh.seek(0, 2)
    return shape, fortran, dtype, data_offset, fh.tell()


def member_path(key: str) -> str:
    """The relative POSIX path ``KEY.npy`` an output array is stored under
    (in a ``.npy`` directory, or as an ``.npz`` member). Nested keys such as
    ``train/images`` become subfolders; a leading ``/`` is dropped. Names
    that could point outside the output (``..``, ``.``, empty parts,
    backslashes, NUL) are refused: ``check_output_key``."""
    check_output_key(key)
    return key.lstrip("/") + ".npy"


def check_output_key(key: str, option: str = "--x-key") -> None:
    """Refuse an array name that is not a plain (or nested plain) name."""
    parts = key.lstrip("/").split("/")
    if not key.lstrip("/") or any(part in ("", ".", "..") for part in parts) or "\\" in key or "\0" in key:
        raise ParameterError(
            f"{option} {key!r}: not usable as an output array name: arrays are written as files inside OUT, "
            "so names must be plain, or nested like 'train/images', without '..', '.', empty parts "
            "or backslashes; rename the array in the input",
            option,
        )


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
        self._maps = {}
        for key, spec in specs.items():
            path = Path(folder) / member_path(key)
            if not reopen:
                path.parent.mkdir(parents=True, exist_ok=True)  # nested keys: subfolders
            self._maps[key] = open_npy(path, spec.shape, spec.dtype)

    def __len__(self) -> int:
        return len(self._maps)

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        self._maps[key][start : start + len(data)] = data

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """A copy of rows already written (what the file holds: the map is the page cache)."""
        return np.array(self._maps[key][start:stop])

    def flush(self) -> None:
        for arr in self._maps.values():
            if isinstance(arr, np.memmap):
                arr.flush()

    def close(self) -> None:
        """Flush and let go of the maps (closed once none refers to them)."""
        self.flush()
        self._maps.clear()
