"""Opening single ``.npy`` arrays without loading them: the shared piece of
the ``.npy``-directory and ``.npz`` formats. Never unpickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixup_cli.errors import InputError


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
