"""A directory of ``.npy`` files, one array per file (``x.npy``, ``y.npy``...).

Inputs are memory-mapped; outputs are written through writable memory maps,
so neither side holds more than the rows being touched. A nested key such as
``train/images`` is the file ``train/images.npy`` inside the directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import base
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.io.npyfile import NpyMaps, member_path, memmap_npy

# Files that are inputs of their own: a folder of them holds a set's shards.
DATA_SUFFIXES = (".h5", ".hdf5", ".nc", ".nc4", ".h5ad", ".mat", ".npz", ".zarr")


def open_reader(path: Path) -> Reader:
    return Reader(path)


class Reader(base.Reader):
    format_name = "npydir"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            names = sorted(p for p in self.path.iterdir() if p.suffix == ".npy" and p.is_file())
        except PermissionError:
            raise InputError(f"{self.path}: permission denied; make the directory readable") from None
        self._files = {p.stem: p for p in names}
        self._nested: dict[str, Path] = {}  # nested keys opened (train/images -> train/images.npy)
        self._arrays: dict[str, np.ndarray] = {}

    def _file(self, key: str) -> Path | None:
        """The file of ``key``: top-level, or nested inside the directory."""
        if key in self._files:
            return self._files[key]
        if key in self._nested:
            return self._nested[key]
        if "/" not in key.strip("/"):
            return None
        try:
            path = self.path / member_path(key)
        except ParameterError:  # '..' and the like never leave the directory
            return None
        if not path.is_file():
            return None
        self._nested[key] = path
        return path

    def _array(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            self._arrays[key] = memmap_npy(self._file(key))
        return self._arrays[key]

    def keys(self) -> list[str]:
        nested = []
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                nested += sorted(
                    q.relative_to(self.path).with_suffix("").as_posix() for q in sub.rglob("*.npy") if q.is_file()
                )
            except OSError:
                continue
        return list(self._files) + nested

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        if self._file(key) is None:
            if not self._files:
                self._refuse_a_folder_of_other_files()
            present = ", ".join(f"{k}.npy" for k in self._files) or "no .npy files"
            raise InputError(f"{self.path}: no {key}.npy (present: {present}); choose one with {option}")
        return super().require(key, option, kinds)

    def _refuse_a_folder_of_other_files(self) -> None:
        """A folder of data files (shards of a set) is not a folder of arrays:
        say how to pass them, instead of asking for an x.npy it never had."""
        counts: dict[str, int] = {}
        try:
            for entry in self.path.iterdir():
                suffix = entry.suffix.lower()
                if suffix in DATA_SUFFIXES and not entry.name.startswith("."):
                    counts[suffix] = counts.get(suffix, 0) + 1
        except OSError:
            return
        if counts:
            suffix, n = max(counts.items(), key=lambda item: (item[1], item[0]))
            raise InputError(
                f"{self.path}: a folder of {n} {suffix} file(s), not of .npy arrays; to mix them as one set, "
                f"pass the files: mixup augment {self.path}/*{suffix} OUTDIR (or list them with --inputs-from)"
            )

    def spec(self, key: str) -> ArraySpec:
        arr = self._array(key)
        return ArraySpec(tuple(arr.shape), arr.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return np.array(self._array(key)[start:stop], order="C")

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._array(key)[rows])

    def files(self) -> list[Path]:
        return list(self._files.values()) + list(self._nested.values())

    def close(self) -> None:
        self._arrays.clear()


class Writer(base.Writer):
    format_name = "npydir"

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        for key in specs:
            member_path(key)  # refused before anything is made
        self.path.mkdir()
        self._maps = NpyMaps(self.path, specs)

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        if not beside.plain_tree(self.path):
            raise cls.damaged(self.path, "not a directory of regular files: mixup never makes links there")
        try:
            self._maps = NpyMaps(self.path, specs, reopen=True)
        except (OSError, ValueError) as exc:
            raise cls.damaged(self.path, str(exc)) from None
        return self

    def flush(self) -> None:
        self._maps.flush()

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return self._maps.read(key, start, stop)

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        self._maps.write(key, start, data)

    def close(self) -> None:
        self._maps.close()

    def files(self) -> list[Path]:
        return [Path(member_path(key)) for key in self.specs]
