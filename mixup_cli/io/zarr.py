"""Zarr directory stores (``*.zarr``) through zarr-python 3, an optional extra
(``zarr``, also brought by ``dask``). Output is Zarr v3, or v2
(``--zarr-format 2``: ``.zgroup``/``.zarray`` metadata and numcodecs
compressors, which zarr-python 2 opens).

Arrays are chunked along the sample axis with chunks that divide the plan's
block size, so a block written by one worker covers whole chunks: many
processes can write one store at once as long as no two touch a chunk
(``ParallelTarget`` writes only the chunks a task covers whole; the rows at
its edges go through the single ``Writer``). Keys may be nested group paths
(``train/images``), as in HDF5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError, OutputError, ParameterError
from mixup_cli.io import base
from mixup_cli.io.base import GZIP_LEVEL, ArraySpec, WriteOptions
from mixup_cli.io.hdf5 import chunk_rows_for
from mixup_cli.record import atomic

EXTRA = "pip install 'mixup-cli[zarr]'"
# File times come from a coarse clock: files changed just before the last
# flush may carry an older time, so flush looks back this much further.
_MTIME_SLACK_NS = 1_000_000_000


def import_zarr(path: Path | None = None, *, for_output: bool = False):
    """The zarr module, or a usage error (exit 2) naming the extra that provides it."""
    try:
        import zarr
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise ParameterError(
            f"{where}Zarr support is an optional extra; install it with {EXTRA}", "OUT" if for_output else "IN"
        ) from None
    return zarr


def open_reader(path: Path) -> Reader:
    return Reader(path)


def _compressors(name: str, zarr_format: int = 3):
    zarr = import_zarr()
    if zarr_format == 2:  # v2 metadata names numcodecs codecs, as zarr-python 2 reads them
        import numcodecs

        return {"gzip": [numcodecs.GZip(level=GZIP_LEVEL)], "zstd": [numcodecs.Zstd()]}.get(name)
    if name == "gzip":
        return [zarr.codecs.GzipCodec(level=GZIP_LEVEL)]
    if name == "zstd":
        return [zarr.codecs.ZstdCodec()]
    return None


def _store_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def _wait_for_zarr_writes(timeout: float = 60.0) -> None:
    """Wait until zarr's event loop has no task in flight (writes of the
    other chunks of a failed assignment), and mark their errors as seen:
    otherwise they go on writing after the partial store is removed, and
    asyncio prints their tracebacks at exit."""
    import asyncio

    try:
        from zarr.core import sync as zsync
    except ImportError:
        return
    loop = zsync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def drain():
        me = asyncio.current_task()
        while True:
            others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not others:
                return
            await asyncio.wait(others)
            for task in others:
                if task.done() and not task.cancelled():
                    task.exception()

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)
    except Exception:
        pass


class Reader(base.Reader):
    format_name = "zarr"

    def __init__(self, path: Path):
        super().__init__(path)
        zarr = import_zarr(self.path)
        try:
            group = zarr.open_group(store=str(self.path), mode="r")
            self._arrays = {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}
        except PermissionError:
            raise InputError(f"{self.path}: permission denied; make the store readable") from None
        except Exception as exc:  # zarr raises several kinds for a damaged or foreign store
            raise InputError(
                f"{self.path}: not a readable Zarr group ({type(exc).__name__}: {exc}); "
                "a .zarr input must be a directory store holding a group of arrays"
            ) from None

    def keys(self) -> list[str]:
        return list(self._arrays)

    def spec(self, key: str) -> ArraySpec:
        arr = self._arrays[key]
        return ArraySpec(tuple(arr.shape), np.dtype(arr.dtype))

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        arr = self._arrays[key]
        return np.ascontiguousarray(arr[start:stop], dtype=np.dtype(arr.dtype))

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return self.read(key, 0, 0)
        return np.asarray(self._arrays[key].get_orthogonal_selection((rows,)))

    def take_inflates(self, key: str) -> bool:
        return bool(self._arrays[key].compressors)

    def describe(self, key: str) -> dict:
        arr = self._arrays[key]
        names = [type(c).__name__.removesuffix("Codec").lower() for c in arr.compressors]
        return {"chunks": list(arr.chunks), "compression": "+".join(names) or "none"}

    def attributes(self) -> dict:
        zarr = import_zarr(self.path)
        return dict(zarr.open_group(store=str(self.path), mode="r").attrs)

    def files(self) -> list[Path]:
        return _store_files(self.path)


def chunk_shape(spec: ArraySpec, options: WriteOptions) -> tuple[int, ...]:
    # Each chunk is a file: compressed output keeps chunk_bytes (no smaller default).
    rows = chunk_rows_for(spec, options, compressed=False) if spec.rows else 1
    return (max(1, rows),) + tuple(max(1, d) for d in spec.row_shape)


@dataclass(frozen=True)
class ParallelTarget:
    """What a worker process needs to write rows into the store (picklable)."""

    path: str
    chunk_rows: dict[str, int]

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        """Write whole chunks of ``key``; the caller keeps every write chunk-aligned."""
        zarr = import_zarr()
        arr = zarr.open_array(store=self.path, path=key, mode="r+")
        arr[start : start + len(data)] = data


class Writer(base.Writer):
    format_name = "zarr"
    compressions = ("none", "gzip", "zstd")

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        super().__init__(path, specs, options)
        zarr = import_zarr(self.path, for_output=True)
        try:
            beside.create_dir(self.path)  # the store's own new folder: never through a link at its name
            self._group = zarr.open_group(store=str(self.path), mode="w-", zarr_format=options.zarr_format)
        except (OSError, FileExistsError) as exc:
            raise OutputError(f"{self.path}: cannot create Zarr store: {exc}") from None
        compressors = _compressors(options.compression, options.zarr_format)
        self._arrays = {
            key: self._group.create_array(
                key,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=chunk_shape(spec, options),
                compressors=compressors,
                fill_value=0,
            )
            for key, spec in specs.items()
        }
        self._files: list[Path] | None = None
        self._flushed_at = 0

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        self = cls.__new__(cls)
        base.Writer.__init__(self, path, specs, options)
        zarr = import_zarr(self.path, for_output=True)
        if not beside.plain_tree(self.path):
            raise cls.damaged(self.path, "not a directory of regular files: mixup never makes links there")
        try:
            self._group = zarr.open_group(store=str(self.path), mode="r+")
            self._arrays = {key: self._group[key] for key in specs}
        except Exception as exc:  # zarr raises many kinds for a broken store
            raise cls.damaged(self.path, f"{type(exc).__name__}: {exc}") from None
        for key, spec in specs.items():
            arr = self._arrays[key]
            if tuple(arr.shape) != spec.shape or np.dtype(arr.dtype) != np.dtype(spec.dtype):
                raise cls.damaged(
                    self.path,
                    f"'{key}' has shape {arr.shape} and dtype {arr.dtype}, not {spec.shape} {np.dtype(spec.dtype)}",
                )
        self._files = None
        self._flushed_at = 0
        return self

    def flush(self) -> None:
        """fsync what changed in the store since the last flush: chunk files
        (written here or by Dask workers) and the directories holding them."""
        since, self._flushed_at = self._flushed_at, time.time_ns()
        atomic.sync(self.path, changed_since_ns=since - _MTIME_SLACK_NS)

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        if len(data):
            try:
                self._arrays[key][start : start + len(data)] = data
            except BaseException:
                # One chunk's write failed (disk full): its siblings are still
                # running in zarr's event loop; they must end before cleanup.
                _wait_for_zarr_writes()
                raise

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._arrays[key][start:stop])

    def parallel_target(self) -> ParallelTarget:
        return ParallelTarget(str(self.path.resolve()), {key: arr.chunks[0] for key, arr in self._arrays.items()})

    def set_attributes(self, attrs: dict) -> None:
        self._group.attrs.update(attrs)

    def close(self) -> None:
        if self._files is None:
            self._files = [p.relative_to(self.path) for p in _store_files(self.path)]

    def abort(self) -> None:
        _wait_for_zarr_writes()
        self._files = []

    def files(self) -> list[Path]:
        return list(self._files or [])
