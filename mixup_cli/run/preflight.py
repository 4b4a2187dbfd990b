"""Checks before anything is written: where the output goes (format, not the
input, a writable directory, what ``--overwrite`` may replace) and whether
it fits on its disk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError, OutputError, ParameterError
from mixup_cli.io import ArraySpec, format_of
from mixup_cli.record import atomic, provenance

# Output formats that are directories (committed by swapping directories).
DIRECTORY_FORMATS = ("npydir", "zarr")


def _symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_output_path(input_path: Path, output: Path, overwrite: bool, exists_ok: bool = False) -> str:
    """Refuse outputs that cannot or must not be written; return the output format.

    ``exists_ok``: an existing OUT is let through to be compared with the
    command (``--resume`` on a finished run), not to be replaced."""
    if _symlink_loop(input_path):
        raise InputError(f"{input_path}: is a symbolic link that loops back on itself; fix the link or pass the file")
    for path in (output.parent, output):
        if _symlink_loop(path):
            raise OutputError(
                f"{output}: {'is' if path == output else 'is in'} a symbolic link that loops back on itself; "
                "fix or remove the link, or choose another output path"
            )
    fmt = format_of(output, for_output=True)
    try:
        out_real, in_real = output.resolve(), input_path.resolve()
    except (RuntimeError, OSError) as exc:  # a loop further up either path
        raise OutputError(
            f"{output}: cannot resolve {output} or {input_path} ({exc}); fix the symbolic links"
        ) from None
    if out_real == in_real or (output.exists() and input_path.exists() and os.path.samefile(output, input_path)):
        raise ParameterError(f"{output}: is the input itself; choose another output path", "OUT")
    if output.is_dir() and in_real.is_relative_to(out_real):
        raise ParameterError(f"{output}: contains the input {input_path}; choose another output path", "OUT")
    # The partial output is created beside OUT, in the directory as spelled.
    parent = output.parent
    if not parent.exists():
        raise OutputError(f"{output}: directory {parent.resolve()} does not exist; create it first")
    if not parent.is_dir():
        raise OutputError(f"{output}: {parent.resolve()} is not a directory; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"{output}: directory {parent.resolve()} is not writable; "
            "fix its permissions or choose another output directory"
        )
    if (output.exists() or output.is_symlink()) and not (overwrite or exists_ok):
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    _check_sidecar_name(output)
    if overwrite:
        atomic.check_replaceable(output, provenance.sidecar_path(output), fmt in DIRECTORY_FORMATS)
    return fmt


def _check_sidecar_name(output: Path) -> None:
    """The sidecar is renamed into place last, over what is at its name: a
    directory or special file there would fail that rename after OUT is in
    place, so it is refused before anything is written (a file or a link is
    replaced, never followed)."""
    sidecar = provenance.sidecar_path(output)
    st = beside.lstat(sidecar)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OutputError(
            f"{sidecar}: is {beside.kind(st.st_mode)}, where mixup puts the sidecar of {output.name}; "
            "move it away or choose another output path"
        )


def disk_full(exc: BaseException) -> bool:
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "errno = 28" in text or "quota exceeded" in text


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_free_space(
    output: Path, out_format: str, specs: dict[str, ArraySpec], compression: str, extra: int = 0
) -> None:
    """Refuse up front an output that cannot fit on its disk.

    The uncompressed bytes are a lower bound of what the output takes (a
    stored ``.npz`` and Parquet need them twice: staging, then the archive). Compressed
    HDF5 output has no such bound and counts for nothing. ``extra``: the
    bytes of a scratch copy of the input made beside the output (``scratch``).
    """
    need = 0
    if not (out_format == "hdf5" and compression != "none"):
        need = sum(int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize for spec in specs.values())
        if (out_format == "npz" and compression == "none") or out_format in ("parquet", "webdataset"):
            need *= 2  # staged, then packed (compressed Parquet: at most as much again)
    need += extra
    if not need:
        return
    try:
        st = os.statvfs(output.parent)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        what = (
            "the output and an uncompressed copy of the input (for the class pairing) need"
            if extra
            else "the output needs"
        )
        raise OutputError(
            f"{output}: disk full: {what} about {_mib(need)} but {_mib(free)} is free in "
            f"{output.parent.resolve()}; free some space or choose another output directory"
        )


def maybe_finished(output: Path, resume: bool, overwrite: bool) -> bool:
    """``--resume`` on an OUT that looks finished (its sidecar beside it, no
    partial files): let it through, to be compared with the command."""
    return (
        resume
        and not overwrite
        and output.exists()
        and provenance.sidecar_path(output).is_file()
        and not atomic.partials(output, with_lock=False)
    )
