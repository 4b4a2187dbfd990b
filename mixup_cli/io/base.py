"""The small interface every format's reader and writer implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError, OutputError, ParameterError

# gzip level of HDF5 and Zarr output: h5py's default for compression="gzip",
# so "gzip" costs the same in both formats.
GZIP_LEVEL = 4


@dataclass(frozen=True)
class ArraySpec:
    """Shape (rows first) and dtype of one array."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": np.dtype(self.dtype).str}


def refuse_unsupported_dtype(path: Path, key: str, dtype: np.dtype, kinds: str = "fiu") -> None:
    """Object, string, bool and complex arrays cannot be mixed: say so early.

    ``kinds`` are the numpy dtype kinds accepted ("b" admits bool, for targets).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in kinds:
        supported = "float16/32/64, integer and bool types" if "b" in kinds else "float16/32/64 and integer types"
        if dtype.names:  # a table of records: name its fields, not the whole type
            fields = ", ".join(dtype.names[:6]) + (", ..." if len(dtype.names) > 6 else "")
            raise InputError(
                f"{path}: array '{key}' is a table of records (fields {fields}), which cannot be mixed; "
                f"mixup mixes arrays of {supported}: store the columns to mix as one numeric array"
            )
        raise InputError(
            f"{path}: array '{key}' has dtype {dtype}, which cannot be mixed; supported dtypes are {supported}"
        )


class Reader(ABC):
    """Read-only access to the named arrays of one dataset, by row ranges."""

    format_name: str = ""

    def __init__(self, path: Path):
        self.path = Path(path)

    @abstractmethod
    def keys(self) -> list[str]:
        """Names of the arrays present."""

    @abstractmethod
    def spec(self, key: str) -> ArraySpec:
        """Shape and dtype of array ``key`` (which exists)."""

    @abstractmethod
    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``key`` as an in-memory array."""

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` of ``key`` into ``out[:stop-start]`` (a reused buffer)."""
        np.copyto(out[: stop - start], self.read(key, start, stop))

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows at the given indices, in that order (random access: slower)."""
        rows = np.asarray(rows)
        if len(rows) and np.all(rows[1:] > rows[:-1]):  # sorted and unique: as read
            return self._take_sorted_unique(key, rows)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unique, inverse = np.unique(sorted_rows, return_inverse=True)
        picked = self._take_sorted_unique(key, unique)[inverse]
        out = np.empty_like(picked)
        out[order] = picked
        return out

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.read(key, int(r), int(r) + 1)[0] for r in rows]) if len(rows) else (self.read(key, 0, 0))

    def describe(self, key: str) -> dict:
        """Storage details of ``key`` (chunking, compression) where the format has them."""
        return {}

    def take_inflates(self, key: str) -> bool:
        """Whether ``take`` decompresses whole chunks to return a few rows."""
        return False

    def take_scatters(self) -> bool:
        """Whether ``take`` of rows spread over the data opens more files than
        the reader keeps open (a set of many inputs), reopening some each time."""
        return False

    @abstractmethod
    def files(self) -> list[Path]:
        """The files on disk that make up this dataset (for hashing)."""

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        """The spec of ``key``, or an error naming the option and the keys present."""
        if key not in self.keys():
            present = ", ".join(sorted(self.keys())) or "none"
            raise InputError(f"{self.path}: no array '{key}' (arrays present: {present}); choose one with {option}")
        spec = self.spec(key)
        if len(spec.shape) == 0:
            raise InputError(f"{self.path}: array '{key}' is a scalar; it needs a first axis of samples")
        refuse_unsupported_dtype(self.path, key, spec.dtype, kinds)
        return spec

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Overlay:
    """A reader that reads some arrays of an inner reader differently
    (``changed``: key -> how, for the subclass) and is the inner reader for
    everything else. Subclasses give ``spec`` and ``read`` of the changed keys."""

    def __init__(self, inner, changed: dict):
        self._inner, self._changed = inner, changed
        self.path, self.format_name = inner.path, inner.format_name

    def __getattr__(self, name):  # everything not changed is the inner reader's
        return getattr(self._inner, name)

    def classes_present(self, key: str):
        """The inner reader's known class labels (``encoding.find_classes``) hold
        only for arrays shown as they are, never for a changed one."""
        if key in self._changed:
            return None
        found = getattr(self._inner, "classes_present", None)
        return found(key) if found is not None else None

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        self._inner.require(key, option, kinds)
        return self.spec(key)

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if key not in self._changed:
            return self._inner.read_into(key, start, stop, out)
        np.copyto(out[: stop - start], self.read(key, start, stop))


class DamagedPartial(OutputError):
    """A partial output that cannot be continued; starting over loses nothing
    that could be kept."""


@dataclass(frozen=True)
class WriteOptions:
    compression: str = "none"  # none | gzip | lzf
    chunk_bytes: int = 1024 * 1024  # HDF5 chunk size aimed at along the sample axis
    block_rows: int | None = None  # chunks divide this so blocks stay chunk-aligned
    chunk_rows: int | None = None  # --chunk-rows: rows per chunk asked for (must divide block_rows)
    shuffle: bool | None = None  # HDF5 byte-shuffle before compression; None: on for gzip
    zarr_format: int = 3  # --zarr-format: 2 for readers that only know Zarr v2
    image_format: str = "png"  # --image-format: how WebDataset output (.tar) stores images
    jpeg_quality: int | None = None  # --jpeg-quality: JPEG images' quality (1-95) [default: 90]


def layout_options(
    out_format: str,
    compression: str,
    block_rows: int | None,
    chunk_rows: int | None = None,
    byte_shuffle: bool | None = None,
    zarr_format: int | None = None,
    image_format: str | None = None,
    jpeg_quality: int | None = None,
) -> WriteOptions:
    """The WriteOptions of a run, refusing storage options OUT's format lacks."""
    check_image_options(out_format, image_format, jpeg_quality)
    if zarr_format is not None and out_format != "zarr":
        raise ParameterError(f"--zarr-format applies to Zarr output (.zarr), not {out_format}", "--zarr-format")
    if zarr_format not in (None, 2, 3):
        raise ParameterError(f"--zarr-format must be 2 or 3, got {zarr_format}", "--zarr-format")
    if byte_shuffle is not None and out_format != "hdf5":
        raise ParameterError(f"--byte-shuffle applies to HDF5 output, not {out_format}", "--byte-shuffle")
    if byte_shuffle and compression == "none":
        raise ParameterError("--byte-shuffle only helps compression: add --compression gzip or lzf", "--byte-shuffle")
    options = WriteOptions(
        compression=compression,
        block_rows=block_rows,
        chunk_rows=chunk_rows,
        shuffle=byte_shuffle,
        zarr_format=zarr_format or 3,
        image_format=image_format or "png",
        jpeg_quality=jpeg_quality,
    )
    check_chunk_rows(options, out_format)
    return options


def check_image_options(out_format: str, image_format: str | None, jpeg_quality: int | None) -> None:
    """``--image-format`` and ``--jpeg-quality`` fit WebDataset output (.tar) only."""
    if image_format is not None and out_format != "webdataset":
        raise ParameterError(f"--image-format applies to WebDataset output (.tar), not {out_format}", "--image-format")
    if image_format not in (None, "png", "jpeg"):
        raise ParameterError(f"--image-format must be png or jpeg, got {image_format!r}", "--image-format")
    if jpeg_quality is not None and image_format != "jpeg":
        raise ParameterError("--jpeg-quality applies to --image-format jpeg", "--jpeg-quality")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 95:
        raise ParameterError(f"--jpeg-quality must be 1 to 95, got {jpeg_quality}", "--jpeg-quality")


def check_chunk_rows(options: WriteOptions, out_format: str) -> None:
    """Refuse a ``--chunk-rows`` that chunked output cannot honour: chunks must
    divide the block rows, so that every block written covers whole chunks
    (a chunk shared by two blocks would be written twice, by two workers)."""
    n = options.chunk_rows
    if n is None:
        return
    if out_format not in ("hdf5", "zarr"):
        raise ParameterError(f"--chunk-rows applies to HDF5 and Zarr output, not {out_format}", "--chunk-rows")
    if n < 1:
        raise ParameterError(f"--chunk-rows must be an integer >= 1, got {n}", "--chunk-rows")
    if options.block_rows and options.block_rows % n:
        b = options.block_rows
        fits = {f for d in range(1, int(b**0.5) + 1) if b % d == 0 for f in (d, b // d)}
        near = sorted(fits, key=lambda d: abs(d - n))[:3]
        raise ParameterError(
            f"--chunk-rows {n} does not divide the block rows ({options.block_rows}): blocks must cover "
            f"whole chunks; choose a divisor such as {', '.join(map(str, sorted(near)))}, or set --block-rows",
            "--chunk-rows",
        )


class Writer(ABC):
    """Creates one dataset at ``path`` and accepts row ranges of each array."""

    format_name: str = ""
    compressions: tuple[str, ...] = ("none",)

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        self.path = Path(path)
        self.specs = specs
        self.options = options

    @abstractmethod
    def write(self, key: str, start: int, data: np.ndarray) -> None:
        """Store ``data`` as rows ``start:start+len(data)`` of ``key``."""

    def parallel_target(self):
        """A picklable object through which other processes can write rows
        into this output at once (``.write(key, start, rows)`` of whole
        chunks), or None when only this writer can write: then the rows of
        every task come back to it."""
        return None

    def set_attributes(self, attrs: dict) -> None:
        """Attach small metadata (tool version, run id) where the format can."""

    def flush(self) -> None:
        """Make every row written so far durable on disk (the resume journal relies on it)."""

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        """A writer on the partial output an interrupted run left at ``path``."""
        raise OutputError(f"{path}: {cls.format_name} output cannot be resumed; run without --resume")

    @abstractmethod
    def close(self) -> None:
        """Finish the file(s): after this the data is complete on disk."""

    @staticmethod
    def damaged(path: Path, reason: str) -> OutputError:
        """The error for a partial output that cannot be reopened (a kill
        mid-flush): ``--resume`` then starts over by itself."""
        return DamagedPartial(f"{path}: the partial output is damaged ({reason})")

    def read(self, key: str, start: int, stop: int) -> np.ndarray | None:
        """Rows already written, as the partial output holds them: ``--resume``
        checks every journaled block against the journal's digests before it
        keeps them (a kill never makes them differ; a partial damaged or
        changed otherwise does). None: this format cannot read them back."""
        return None

    def suspend(self) -> None:
        """Stop after an interruption, keeping the partial output for
        ``--resume``: release the files without packing or removing
        anything (the caller has flushed). Also called on a closed writer."""
        self.close()

    def abort(self) -> None:
        """Release handles after a failure; the caller removes the files."""
        try:
            self.close()
        except Exception:
            pass

    @abstractmethod
    def files(self) -> list[Path]:
        """Files written, relative to the final dataset path (for hashing)."""


def pread_pieces(fd: int, dest: memoryview, pieces, label: str) -> None:
    """Fill ``dest`` from the file: ``pieces`` are (file offset, first byte
    in ``dest``, byte count). A file that ends early is an InputError naming
    ``label`` (what was being read)."""
    for file_at, at, count in pieces:
        done = 0
        while done < count:
            got = os.preadv(fd, [dest[at + done : at + count]], file_at + done)
            if got <= 0:
                raise InputError(f"{label}: the file ended while reading it (truncated?)")
            done += got
