"""Readers and writers, one module per format, chosen by the path.

Formats are imported only when used, so that ``mixup --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
from pathlib import Path

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io.base import ArraySpec, Reader, WriteOptions, Writer

log = logging.getLogger("mixup_cli")

__all__ = [
    "ArraySpec",
    "Reader",
    "Writer",
    "WriteOptions",
    "format_of",
    "open_reader",
    "create_writer",
    "reopen_writer",
    "writer_compressions",
]

# suffix -> (format name, module)
_SUFFIXES = {
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".npz": "npz",
    ".zarr": "zarr",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_MODULES = {
    "hdf5": "mixup_cli.io.hdf5",
    "npz": "mixup_cli.io.npz",
    "npydir": "mixup_cli.io.npydir",
    "zarr": "mixup_cli.io.zarr",
    "parquet": "mixup_cli.io.parquet",
    "arrow": "mixup_cli.io.arrow",
    "images": "mixup_cli.io.images",
    "webdataset": "mixup_cli.io.webdataset",
}
# Formats whose writer lives apart from their reader of inputs.
_WRITER_MODULES = {"webdataset": "mixup_cli.io.wds_out"}
# The metadata file at the top of a Zarr store (v3, v2 group, v2 array).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
SUPPORTED = ".h5, .hdf5, .npz, .zarr, .parquet, or a directory of .npy files (a path without extension)"
# Parquet files start and end with these four bytes.
PARQUET_MAGIC = b"PAR1"
# Inputs only: a folder of images (IN/<class>/*.jpg), WebDataset shards (.tar, or a folder of them).

# An HDF5 file starts with this signature at byte 0, 512, 1024, 2048, ...
# (after a user block); .h5ad, .nc, .nc4, .he5, .hdf files are HDF5 too.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    """Whether the regular file at ``path`` carries the HDF5 signature."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            at = 0
            while at + len(HDF5_SIGNATURE) <= size:
                fh.seek(at)
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                at = 512 if at == 0 else at * 2
    except OSError:
        return False
    return False


def is_parquet(path: Path) -> bool:
    """Whether the regular file at ``path`` starts and ends with Parquet's magic bytes."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != PARQUET_MAGIC:
                return False
            fh.seek(-4, os.SEEK_END)
            return fh.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def format_of(path: Path, *, for_output: bool = False) -> str:
    """The format a path is in (input) or will be written in (output)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        fmt = _SUFFIXES[suffix]
        if fmt == "zarr":  # an optional extra: say so before any work is done
            _module(fmt).import_zarr(path, for_output=for_output)
        if fmt == "parquet":
            _module(fmt).import_pyarrow(path, for_output=for_output)
        return fmt
    if not for_output and path.is_dir() and any((path / name).is_file() for name in _ZARR_MARKERS):
        _module("zarr").import_zarr(path)  # a Zarr store named without .zarr: known by its metadata file
        return "zarr"
    if not for_output and path.is_dir() and _module("arrow").is_datasets_folder(path):
        _module("arrow").import_pyarrow(path)
        return "arrow"
    if suffix == ".tar":
        return "webdataset"  # one WebDataset shard (output: images and their json, io/wds_out.py)
    if not for_output and path.name.lower().endswith((".tar.gz", ".tgz")) and _regular_file(path):
        raise _module("webdataset").compressed_shard(path)  # read by offset: gzip does not allow it
    if not for_output and path.is_dir() and _module("webdataset").looks_like_shards(path):
        return "webdataset"  # a folder of shards
    if not for_output and path.is_dir() and _module("images").looks_like_images(path):
        return "images"  # input only: a folder of images (class folders, or images alone)
    if path.is_dir() or (for_output and suffix == "" and not path.exists()):
        return "npydir"
    if not for_output and _regular_file(path) and is_hdf5(path):
        return "hdf5"
    if not for_output and _regular_file(path) and is_parquet(path):
        _module("parquet").import_pyarrow(path)
        return "parquet"
    if not for_output and _regular_file(path) and suffix in (".nc", ".cdf"):
        raise InputError(
            f"{path}: a netCDF file in the classic (netCDF-3) format, not HDF5; convert it to netCDF-4 "
            "first (for example `nccopy -k nc4 IN OUT.nc`, or xarray's to_netcdf(engine='h5netcdf'))"
        )
    if not for_output and _regular_file(path) and suffix == ".mat":
        raise InputError(
            f"{path}: a MATLAB file saved before v7.3 (not HDF5); save it again with "
            "save(FILE, ..., '-v7.3'), or load it with scipy.io.loadmat and write the arrays with numpy.savez"
        )
    if suffix == ".npy":
        hint = "put x.npy and y.npy in one directory and pass the directory"
    else:
        hint = f"use {SUPPORTED}"
    role = "output" if for_output else "input"
    # A usage error (exit 2) either way: the path given chooses the format.
    raise ParameterError(
        f"{path}: unknown {role} format '{suffix or path.name}'; {hint}", "OUT" if for_output else "IN"
    )


# Formats stored as a directory rather than one file.
DIRECTORY_FORMATS = ("npydir", "zarr", "arrow", "images", "webdataset")


def _module(fmt: str):
    return importlib.import_module(_MODULES[fmt])


def open_reader(path: Path, scratch_prefix: Path | None = None, fast: bool = True, images=None) -> Reader:
    """A reader of the dataset at ``path``. ``scratch_prefix``: where a
    reader may put scratch files (the output's partial name; compressed
    ``.npz`` members are inflated there). ``fast=False`` turns off the
    readers' shortcuts around their libraries' decoding (HDF5: raw and
    inflated reads), for checks that must not share them. ``images``: how
    a folder of images is decoded (``images.ImageOptions``); other
    formats refuse options that are not the defaults.

    Each reader opened is logged at DEBUG level on the ``mixup_cli`` logger
    (``PATH: opened (FORMAT)``): how often a run opens its inputs can be counted."""
    path = Path(path)
    reader = _open(path, scratch_prefix, fast, images)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: opened (%s)", path, reader.format_name)
    return reader


def _open(path: Path, scratch_prefix: Path | None, fast: bool, images) -> Reader:
    if _tar_pattern(path):  # shard-{000..009}.tar: the shards it names, read as one input
        return _module("webdataset").open_reader(path, images, fast=fast)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory; check the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # Opening a FIFO would wait for a writer forever; datasets are files.
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise InputError(f"{path}: is {kind}, not a dataset file; write the data to a file and pass that")
    fmt = format_of(path)
    if fmt not in DIRECTORY_FORMATS and path.is_dir():
        raise InputError(
            f"{path}: is a directory, not a {fmt} file; pass the file itself "
            "(a directory is read as .npy files only when its name has no extension)"
        )
    if fmt in ("images", "webdataset"):
        if images is not None and images.label is not None and fmt == "images":
            raise ParameterError(f"{path}: --wds-label applies to WebDataset shards (.tar)", "--wds-label")
        return _module(fmt).open_reader(path, images, fast=fast)
    if images is not None and not images.is_default():
        raise ParameterError(
            f"{path}: --image-size, --image-resize, --image-channels, --skip-bad-images and --wds-label apply to "
            f"a folder of images or WebDataset shards, not {fmt} input",
            "--image-size",
        )
    if fmt == "npz":
        return _module(fmt).open_reader(path, scratch_prefix)
    if fmt == "hdf5":
        return _module(fmt).open_reader(path, fast=fast)
    return _module(fmt).open_reader(path)


def _writer_module(fmt: str):
    return importlib.import_module(_WRITER_MODULES[fmt]) if fmt in _WRITER_MODULES else _module(fmt)


def writer_compressions(fmt: str) -> tuple[str, ...]:
    """The ``--compression`` values ``fmt`` output takes."""
    return tuple(_writer_module(fmt).Writer.compressions)


def _tar_pattern(path: Path) -> bool:
    """A brace pattern naming WebDataset shards (``.tar`` names only)."""
    from mixup_cli.io import braces

    if not braces.is_pattern(path):
        return False
    try:
        names = braces.braces(str(path), limit=100_000)
    except ParameterError:
        return False
    return all(name.lower().endswith(".tar") for name in names)


def create_writer(path: Path, fmt: str, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
    module = _writer_module(fmt)
    if options.compression not in module.Writer.compressions:
        raise ParameterError(
            f"--compression {options.compression} is not available for {fmt} output "
            f"(choose from {', '.join(module.Writer.compressions)})",
            "--compression",
        )
    return module.Writer(path, specs, options)


def reopen_writer(path: Path, fmt: str, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
    """A writer on the partial output of an interrupted run (``--resume``)."""
    return _writer_module(fmt).Writer.reopen(path, specs, options)
