"""``.npz`` archives (``numpy.savez`` / ``savez_compressed``).

Stored (uncompressed) members are memory-mapped in place, after checking
that the member holds all the bytes its ``.npy`` header promises. Deflated
members cannot be read at random offsets, so each one used is first
inflated, as a stream, into a scratch file and memory-mapped from there:
disk, not memory, holds it. The scratch file is made beside the output
(``scratch_prefix``: the output's partial name, so cleanup rules for partial
files cover it) or, without an output, in the temporary directory; it is
unlinked as soon as it is made (``O_TMPFILE`` where the filesystem has it),
so nothing is left behind even by SIGKILL. Inflation writes no more than the
``.npy`` header declares, and that size is checked against the free space
first: a zip bomb is refused, not inflated. Output members are staged as
``.npy`` memory maps beside the target and packed into the archive when the
run completes; nested keys (``train/images``) become members
``train/images.npy``.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from itertools import count
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError
from mixup_cli.io import base
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.io.npyfile import NpyMaps, member_path, memmap_npy, read_header

_PACKED_AT = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes


def open_reader(path: Path, scratch_prefix: Path | None = None) -> Reader:
    return Reader(path, scratch_prefix)


_scratch_names = count()


def _scratch_file(prefix: Path | None):
    """An open, already unlinked file to inflate a member into: beside the
    output under its partial name (``prefix``), else in the temporary
    directory. Only a kill in the instant between creating and unlinking a
    named file (where O_TMPFILE is missing) can leave it behind, under the
    partial prefix that the next run on that output removes."""
    folder = Path(prefix).parent if prefix is not None else Path(tempfile.gettempdir())
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.fdopen(os.open(folder, tmpfile | os.O_RDWR, 0o600), "w+b")
        except OSError:
            pass  # the filesystem lacks it: a named file, unlinked at once
    stem = Path(prefix).name if prefix is not None else "mixup-npz"
    path = folder / f"{stem}.inflate-{os.getpid()}-{next(_scratch_names)}.npy"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return os.fdopen(fd, "w+b")


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the archive file."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


class Reader(base.Reader):
    format_name = "npz"

    def __init__(self, path: Path, scratch_prefix: Path | None = None):
        super().__init__(path)
        self._scratch_prefix = scratch_prefix
        try:
            self._zip = zipfile.ZipFile(self.path)
        except PermissionError:
            raise InputError(f"{self.path}: permission denied; make the file readable") from None
        except (zipfile.BadZipFile, OSError, EOFError):
            raise InputError(
                f"{self.path}: not a readable .npz archive (damaged, truncated or another format?)"
            ) from None
        self._members = {
            info.filename[: -len(".npy")]: info for info in self._zip.infolist() if info.filename.endswith(".npy")
        }
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, key: str) -> np.ndarray:
        if key in self._arrays:
            return self._arrays[key]
        info = self._members[key]
        label = f"{self.path}[{key}]"
        if info.compress_type == zipfile.ZIP_STORED:
            start = _data_offset(self.path, info)
            arr = memmap_npy(self.path, start, label, end=start + info.compress_size)
        else:
            arr = self._inflate(info, label)
        self._arrays[key] = arr
        return arr

    def _inflate(self, info: zipfile.ZipInfo, label: str) -> np.ndarray:
        """Inflate a deflated member into an unlinked scratch file, no more
        than its header declares, after checking that much is free."""
        try:
            with self._zip.open(info) as src:
                shape, _, dtype, header_bytes = read_header(src, label)
                if any(d < 0 for d in shape):
                    raise InputError(
                        f"{label}: the .npy header gives an impossible shape {shape} "
                        "(a negative length); the archive is damaged"
                    )
                need = header_bytes + int(np.prod(shape, dtype=object)) * dtype.itemsize
                if need > info.file_size:
                    raise InputError(
                        f"{label}: member is shorter than its .npy header says (shape {shape}, dtype {dtype}: "
                        f"{need} bytes, but the archive declares {info.file_size}); the archive is damaged"
                    )
                folder = (
                    Path(self._scratch_prefix).parent
                    if self._scratch_prefix is not None
                    else Path(tempfile.gettempdir())
                )
                free = _free_bytes(folder)
                if free is not None and need > free:
                    raise InputError(
                        f"{label}: inflating this compressed member needs {need / 2**20:.1f} MiB "
                        f"(shape {shape}, dtype {dtype}) but {free / 2**20:.1f} MiB is free in {folder.resolve()}; "
                        "free some space, or store the archive uncompressed (numpy.savez)"
                    )
                dst = _scratch_file(self._scratch_prefix)
                try:
                    with self._zip.open(info) as again:
                        left = need
                        while left:
                            piece = again.read(min(left, 4 * 1024 * 1024))
                            if not piece:
                                raise InputError(
                                    f"{label}: member ends before the {need} bytes its header declares; "
                                    "the archive is damaged"
                                )
                            dst.write(piece)
                            left -= len(piece)
                    dst.flush()
                    return memmap_npy(dst, 0, label)
                finally:
                    dst.close()  # the map keeps the data; the file has no name
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == 28:
                raise InputError(f"{label}: disk full while inflating the member; free some space") from None
            raise InputError(f"{label}: cannot decompress ({exc})") from None

    def keys(self) -> list[str]:
        return list(self._members)

    def spec(self, key: str) -> ArraySpec:
        arr = self._array(key)
        return ArraySpec(tuple(arr.shape), arr.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return np.array(self._array(key)[start:stop], order="C")

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._array(key)[rows])

    def describe(self, key: str) -> dict:
        info = self._members[key]
        return {"compression": "none" if info.compress_type == zipfile.ZIP_STORED else "deflate"}

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self._arrays.clear()  # scratch files go with their last map
        self._zip.close()


class Writer(base.Writer):
    format_name = "npz"
    compressions = ("none", "gzip")

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        for key in specs:
            member_path(key)  # refused before anything is made
        self._staging = self.path.with_name(self.path.name + ".staging")
        beside.create_dir(self._staging)  # what was there removed, a link itself, never followed
        self._maps: NpyMaps | None = NpyMaps(self._staging, specs)

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        self._staging = self.path.with_name(self.path.name + ".staging")
        if beside.lstat(self._staging) is None:
            # Killed after the archive was packed: it only waits to be renamed.
            if not beside.plain_file(self.path):
                raise cls.damaged(self.path, "not a regular file")
            cls._check_packed(self.path, specs)
            self._maps = None
            return self
        if not beside.plain_tree(self._staging):
            raise cls.damaged(self._staging, "holds links or special files, which mixup never makes")
        try:
            self._maps = NpyMaps(self._staging, specs, reopen=True)
        except (OSError, ValueError) as exc:
            raise cls.damaged(self.path, str(exc)) from None
        return self

    @classmethod
    def _check_packed(cls, path: Path, specs: dict[str, ArraySpec]) -> None:
        """Refuse (``damaged``) a packed file that is not whole."""
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if zf.testzip() is not None or names != {member_path(key) for key in specs}:
                    raise ValueError("the archive is incomplete")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise cls.damaged(path, str(exc)) from None

    def flush(self) -> None:
        if self._maps:
            self._maps.flush()

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        self._maps.write(key, start, data)

    def close(self) -> None:
        if getattr(self, "_packed", None) is not None:
            self._packed.close()
            self._packed = None
        if not self._maps:
            return
        self._maps.close()
        self._pack()
        # Out of reopen()'s sight in one rename, then removed: interrupted
        # half-way through removing it, --resume would find a staging half gone.
        done = self._staging.with_name(self._staging.name + ".done")
        beside.clear(done)
        os.rename(self._staging, done)
        beside.clear(done)

    def _pack(self) -> None:
        """The staged arrays into the archive at ``path``."""
        method = zipfile.ZIP_DEFLATED if self.options.compression == "gzip" else zipfile.ZIP_STORED
        # A new file where nothing is, never through a link planted at the name.
        with (
            os.fdopen(beside.create_file(self.path), "w+b") as fh,
            zipfile.ZipFile(fh, "w", compression=method, allowZip64=True) as zf,
        ):
            for key in self.specs:
                name = member_path(key)
                info = zipfile.ZipInfo.from_file(self._staging / name, arcname=name)
                # A fixed timestamp: the same data gives the same archive, byte for byte,
                # whenever it is packed (the staged files' mtimes would differ).
                info.date_time = _PACKED_AT
                info.compress_type = method
                with open(self._staging / name, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 4 * 1024 * 1024)

    def suspend(self) -> None:
        if self._maps:  # the staged arrays stay, unpacked, for --resume
            self._maps.close()
        self._maps = None

    def abort(self) -> None:
        if getattr(self, "_packed", None) is not None:
            self._packed.close()
            self._packed = None
        self._maps = None
        beside.clear(self._staging)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows already written: from the staged arrays, or the packed archive."""
        if self._maps:
            return self._maps.read(key, start, stop)
        if getattr(self, "_packed", None) is None:
            self._packed = self._open_packed()
        return np.array(self._packed.read(key, start, stop))

    def _open_packed(self):
        return Reader(self.path)

    def files(self) -> list[Path]:
        return [Path(".")]


class ReadBackWriter(Writer):
    """Rows staged as ``.npy`` beside OUT, packed at the commit into a container
    another module reads (Parquet, WebDataset): a packed file is checked, and
    read for ``--resume``, through that module's ``Reader`` (``packed_reader``)."""

    @staticmethod
    def packed_reader(path: Path) -> base.Reader:
        raise NotImplementedError

    @classmethod
    def _check_packed(cls, path: Path, specs: dict[str, ArraySpec]) -> None:
        try:
            with cls.packed_reader(path) as reader:
                for key, spec in specs.items():
                    if reader.spec(key).shape != spec.shape:
                        raise ValueError(f"'{key}' is incomplete")
        except (InputError, ValueError, KeyError, AttributeError) as exc:
            raise cls.damaged(path, str(exc)) from None

    def _open_packed(self):
        return self.packed_reader(self.path)
