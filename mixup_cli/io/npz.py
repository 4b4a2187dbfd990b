"""``.npz`` archives (``numpy.savez`` / ``savez_compressed``).

Stored (uncompressed) members are memory-mapped in place. Deflated members
cannot be read at random offsets, so each one used is first inflated, as a
stream, into a temporary ``.npy`` file and memory-mapped from there: disk,
not memory, holds it. Output members are staged as ``.npy`` memory maps
beside the target and packed into the archive when the run completes.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mixup_cli.errors import InputError
from mixup_cli.io import base
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.io.npyfile import NpyMaps, memmap_npy

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, 30 bytes


def open_reader(path: Path) -> "Reader":
    return Reader(path)


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the archive file."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


class Reader(base.Reader):
    format_name = "npz"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except PermissionError:
            raise InputError(f"{self.path}: permission denied; make the file readable") from None
        except (zipfile.BadZipFile, OSError, EOFError):
            raise InputError(f"{self.path}: not a readable .npz archive (damaged, truncated or another format?)") from None
        self._members = {
            info.filename[: -len(".npy")]: info for info in self._zip.infolist() if info.filename.endswith(".npy")
        }
        self._arrays: dict[str, np.ndarray] = {}
        self._spill: Path | None = None

    def _array(self, key: str) -> np.ndarray:
        if key in self._arrays:
            return self._arrays[key]
        info = self._members[key]
        label = f"{self.path}[{key}]"
        if info.compress_type == zipfile.ZIP_STORED:
            arr = memmap_npy(self.path, _data_offset(self.path, info), label)
        else:
            if self._spill is None:
                self._spill = Path(tempfile.mkdtemp(prefix="mixup-npz-"))
            target = self._spill / f"{len(self._arrays)}.npy"
            try:
                with self._zip.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InputError(f"{label}: cannot decompress ({exc})") from None
            arr = memmap_npy(target, 0, label)
        self._arrays[key] = arr
        return arr

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
        self._arrays.clear()
        self._zip.close()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None


class Writer(base.Writer):
    format_name = "npz"
    compressions = ("none", "gzip")

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        self._staging = self.path.with_name(self.path.name + ".staging")
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging.mkdir()
        self._maps: NpyMaps | None = NpyMaps(self._staging, specs)

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> "Writer":
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        self._staging = self.path.with_name(self.path.name + ".staging")
        if not self._staging.is_dir():
            # Killed after the archive was packed: it only waits to be renamed.
            try:
                with zipfile.ZipFile(self.path) as zf:
                    names = set(zf.namelist())
                    if zf.testzip() is not None or names != {f"{key}.npy" for key in specs}:
                        raise ValueError("the archive is incomplete")
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise cls.damaged(self.path, str(exc)) from None
            self._maps = None
            return self
        try:
            self._maps = NpyMaps(self._staging, specs, reopen=True)
        except (OSError, ValueError) as exc:
            raise cls.damaged(self.path, str(exc)) from None
        return self

    def flush(self) -> None:
        if self._maps:
            self._maps.flush()

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        self._maps.write(key, start, data)

    def close(self) -> None:
        if not self._maps:
            return
        self._maps.close()
        method = zipfile.ZIP_DEFLATED if self.options.compression == "gzip" else zipfile.ZIP_STORED
        with zipfile.ZipFile(self.path, "w", compression=method, allowZip64=True) as zf:
            for key in self.specs:
                zf.write(self._staging / f"{key}.npy", arcname=f"{key}.npy")
        # Out of reopen()'s sight in one rename, then removed: interrupted
        # half-way through removing it, --resume would find a staging half gone.
        done = self._staging.with_name(self._staging.name + ".done")
        shutil.rmtree(done, ignore_errors=True)
        os.rename(self._staging, done)
        shutil.rmtree(done)

    def suspend(self) -> None:
        if self._maps:  # the staged arrays stay, unpacked, for --resume
            self._maps.close()
        self._maps = None

    def abort(self) -> None:
        self._maps = None
        shutil.rmtree(self._staging, ignore_errors=True)

    def files(self) -> list[Path]:
        return [Path(".")]
