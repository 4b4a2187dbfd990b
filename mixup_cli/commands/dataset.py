"""Read a mixup output row by row, for training.

``MixupDataset(path)`` opens what ``mixup augment`` wrote (HDF5, Zarr,
``.npz`` or a directory of ``.npy`` files) and indexes it like a map-style
dataset: ``len(ds)``, ``ds[i]`` (one row) and ``ds[i:j]`` / ``ds[[i, j, ...]]``
(a batch), each a dict of numpy values under fixed names:

- ``x``: the inputs (stored under ``--x-key``);
- ``y`` (soft targets), or ``y_a`` and ``y_b`` (``--y-format pair``); none
  of them for an unlabelled (``--no-y``) output;
- ``lam`` and ``partner``, and any other per-row array (``box`` of CutMix)
  under its stored name.

The names come from the sidecar (``OUT.provenance.json``) when it is beside
the output; without it they are guessed from the arrays present.

A set's OUTDIR (``mixup augment IN1 IN2 ... OUTDIR``) is read as one
dataset: its outputs concatenated in the set's order (``mixup-set.json``),
``partner`` as recorded (a row of the set's concatenated inputs). A set with
an output missing is refused, naming it and the command that writes it.
At most 16 of its outputs are open at once in a process.

``image_format`` gives x as training loops take images: ``"float-nchw"``
(unsigned integer images as float32 in [0, 1], ``x.astype(float32) / 255``
for uint8, in (C, H, W) per row), ``"float-nhwc"`` (the same, (H, W, C)) or
``"nchw"`` (the layout only, dtype kept); see ``_Images``.

It imports neither torch nor click, and reads the formats directly (h5py,
zarr, numpy), not through the command's readers.

Processes. Nothing that cannot cross a process boundary is kept across one:
HDF5 files and Zarr groups are opened on first access in each process (a
handle inherited through ``fork`` is never used: ``os.getpid()`` is checked
on every access), and pickling drops open handles. So a dataset built in the
parent, even after reading from it, can be handed to PyTorch ``DataLoader``
workers or a ``multiprocessing`` pool with the ``fork`` or ``spawn`` start
method. Arrays held by numpy (memory maps, loaded ``.npz`` members) are
plain memory and are kept through ``fork``.

Formats:

- HDF5: rows read by index are read in increasing order, as runs of
  consecutive rows, and returned in the order asked.
- ``.npy`` directory: every file memory-mapped (``mmap_mode='r'``).
- ``.npz``: a stored (uncompressed) member is memory-mapped at its offset in
  the archive; a compressed member (``--compression gzip``) cannot be, so it
  is inflated and held in memory whole, once per process, on first use.
- Zarr: needs zarr-python (``pip install 'mixup-cli[zarr]'``), imported only
  when a Zarr output is opened.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io.base import pread_pieces
from mixup_cli.io.npyfile import read_header

__all__ = ["MixupDataset"]

_ZARR_EXTRA = "pip install 'mixup-cli[zarr]'"
_ARROW_EXTRA = "pip install 'mixup-cli[arrow]'"
_PROVENANCE = ("lam", "partner")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    if suffix == ".zarr":
        return "zarr"
    if suffix == ".npz":
        return "npz"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if path.is_dir():
        return "npydir"
    if suffix == ".tar":
        raise InputError(
            f"{path}: WebDataset output is read for training with the webdataset library "
            "(webdataset.WebDataset(path).decode('rgb8'): each sample's png and json); MixupDataset reads "
            ".h5, .hdf5, .zarr, .npz, .parquet or a directory of .npy files"
        )
    raise InputError(
        f"{path}: not a mixup output (expected .h5, .hdf5, .zarr, .npz, .parquet or a directory of .npy files)"
    )


def _sidecar_of(path: Path) -> Path:
    # "mixed/" and "mixed" have the same sidecar, mixed.provenance.json
    return path.parent / (path.name + ".provenance.json")


# ---------------------------------------------------------------- stores
#
# A store holds one open output in one process: ``arrays`` maps each stored
# key to something with ``shape``, ``dtype`` and ``read(index)``.


class _Hdf5Store:
    fork_safe = False

    def __init__(self, path: Path):
        import h5py

        self.path = path
        self._fd = None
        try:
            # A larger chunk cache than h5py's 1 MiB keeps more inflated
            # chunks of compressed output for rows read near each other.
            self.file = h5py.File(path, "r", rdcc_nbytes=32 * 2**20, rdcc_nslots=10007)
        except OSError as exc:
            raise InputError(f"{path}: cannot be opened as HDF5 ({exc})") from None
        try:
            plain_file = self.file.id.get_create_plist().get_userblock() == 0
        except Exception:
            plain_file = False
        from mixup_cli.io.hdf5 import own_paths

        plain_file = plain_file and "dataset-pread" in own_paths()
        self.arrays: dict[str, Any] = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                self.arrays[name] = _Hdf5Array(obj, self, plain_file)

        self.file.visititems(visit)

    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.file.close()


def _plain_layout(ds, plain_file):
    """``(row_bytes, chunk_rows or None, offset of contiguous data)`` when the
    rows of ``ds`` lie in the file as their own bytes (no filter, whole rows
    per chunk, or contiguous storage), so they can be read with ``pread``;
    else None (HDF5 reads them)."""
    try:
        if not (
            plain_file
            and ds.shape
            and ds.dtype.kind in "biufc"
            and ds.dtype.fields is None
            and not ds.is_virtual
            and ds.external is None
            and ds.id.get_create_plist().get_nfilters() == 0
        ):
            return None
        row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        if ds.chunks is None:
            offset = ds.id.get_offset()
            return None if offset is None else (row_bytes, None, offset)
        if tuple(ds.chunks[1:]) == tuple(ds.shape[1:]):
            return (row_bytes, ds.chunks[0], None)
    except Exception:  # an HDF5 build without chunk queries: HDF5 reads it
        pass
    return None


class _Hdf5Array:
    def __init__(self, ds, store, plain_file):
        self.ds = ds
        self.shape = ds.shape
        self.dtype = ds.dtype
        self._store = store
        self._layout = _plain_layout(ds, plain_file)
        self._chunk_at = None  # file offset of each chunk, read on first use

    def read(self, index):
        if isinstance(index, int):
            return self._read_runs([(index, 0, 1)], 1)[0]
        if isinstance(index, slice):
            return self._read_runs([(index.start, 0, index.stop - index.start)], index.stop - index.start)
        # Sorted, unique rows (the caller's contract), read as runs of
        # consecutive rows, never through h5py's point lists.
        if len(index) == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        stops = np.concatenate((breaks, [len(index)])).tolist()
        return self._read_runs([(int(index[a]), a, b - a) for a, b in zip(starts, stops)], len(index))

    def _read_runs(self, runs, n):
        """``runs``: (first row, position in the result, row count)."""
        out = np.empty((n,) + self.shape[1:], dtype=self.dtype)
        if n and self._layout is not None and self._pread(out, runs):
            return out
        for first, at, count in runs:
            out[at : at + count] = self.ds[first : first + count]
        return out

    def _chunk_offset(self, c):
        """File offset of the chunk starting at row ``c``; None: HDF5 reads
        (a chunk not allocated or not plain). The index is read once, in one
        pass: a lookup by coordinate costs more the further the chunk is."""
        if self._chunk_at is None:
            from mixup_cli.io.hdf5 import plain_chunk_offsets

            self._chunk_at = plain_chunk_offsets(self.ds, self._layout[1])
            if self._chunk_at is None:
                self._layout = None  # not every chunk is plain: HDF5 reads the rest
        return None if self._chunk_at is None else int(self._chunk_at[c // self._layout[1]])

    def _pread(self, out, runs) -> bool:
        # One pread per run (per chunk a run crosses): a fraction of the
        # cost of an HDF5 read call for a row. False: nothing read, use HDF5.
        row_bytes, chunk_rows, offset = self._layout
        pieces = []  # (file offset, first byte in out, bytes)
        for first, at, count in runs:
            if chunk_rows is None:
                pieces.append((offset + first * row_bytes, at * row_bytes, count * row_bytes))
                continue
            stop = first + count
            for c in range(first // chunk_rows * chunk_rows, stop, chunk_rows):
                base = self._chunk_offset(c)
                if base is None:
                    return False
                lo, hi = max(first, c), min(stop, c + chunk_rows)
                pieces.append((base + (lo - c) * row_bytes, (at + lo - first) * row_bytes, (hi - lo) * row_bytes))
        dest = memoryview(out.reshape(-1).view(np.uint8))
        pread_pieces(self._store.fd(), dest, pieces, f"{self._store.path}: {self.ds.name!r}")
        return True


class _ZarrStore:
    fork_safe = False

    def __init__(self, path: Path):
        try:
            import zarr
        except ImportError:
            raise InputError(f"{path}: reading Zarr output needs zarr-python: {_ZARR_EXTRA}") from None
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:  # zarr raises several types for "not a store"
            raise InputError(f"{path}: cannot be opened as a Zarr group ({type(exc).__name__}: {exc})") from None
        self.arrays = {}
        for name, obj in group.members(max_depth=None):
            if isinstance(obj, zarr.Array):
                self.arrays[name] = _ZarrArray(obj)

    def close(self):
        pass  # a local directory store holds no open files between reads


class _ZarrArray:
    def __init__(self, arr):
        self.arr = arr
        self.shape = tuple(arr.shape)
        self.dtype = np.dtype(arr.dtype)

    def read(self, index):
        if isinstance(index, (int, slice)):
            out = self.arr[index]
        else:
            out = self.arr.oindex[(np.asarray(index),)]
        out = np.asarray(out)
        return out[()] if out.ndim == 0 else out


class _NumpyArray:
    def __init__(self, load, shape, dtype):
        self._load = load  # () -> ndarray, called once, on first read
        self._array = None
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def read(self, index):
        if self._array is None:
            self._array = self._load()
        out = self._array[index]
        # A copy: plain ndarray (not np.memmap), independent of the file.
        return out.copy() if isinstance(out, np.ndarray) else out


def _checked_header(path, fh, what):
    """Shape, fortran order and dtype of the ``.npy`` header at ``fh``'s
    position (the writers' own parser: nothing is ever unpickled)."""
    shape, fortran, dtype, _ = read_header(fh, f"{path}: {what}")
    return shape, fortran, dtype


def _mmap(path, shape, fortran, dtype, offset):
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


class _NpyDirStore:
    fork_safe = True

    def __init__(self, path: Path):
        self.arrays = {}
        for file in sorted(path.rglob("*.npy")):
            key = file.relative_to(path).with_suffix("").as_posix()
            with open(file, "rb") as fh:
                shape, fortran, dtype = _checked_header(file, fh, "the file")
            self.arrays[key] = _NumpyArray(
                lambda file=file: np.load(file, mmap_mode="r", allow_pickle=False), shape, dtype
            )

    def close(self):
        self.arrays = {}  # memory maps close when no longer referenced


class _NpzStore:
    fork_safe = True

    def __init__(self, path: Path):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path}: cannot be opened as a .npz archive ({exc})") from None
        self.arrays = {}
        with open(path, "rb") as fh:
            for info in infos:
                key = info.filename[: -len(".npy")]
                what = f"member {info.filename!r}"
                if info.compress_type == zipfile.ZIP_STORED:
                    # The member's bytes are the .npy file itself: its data
                    # starts after the local header, the name and the extra field.
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise InputError(f"{path}: {what} has no local zip header")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    fh.seek(info.header_offset + 30 + name_len + extra_len)
                    shape, fortran, dtype = _checked_header(path, fh, what)
                    offset = fh.tell()
                    load = lambda s=shape, f=fortran, d=dtype, o=offset: _mmap(path, s, f, d, o)
                else:
                    with zipfile.ZipFile(path) as zf, zf.open(info) as member:
                        shape, fortran, dtype = _checked_header(path, member, what)
                    load = lambda key=key: _load_npz_member(path, key)
                self.arrays[key] = _NumpyArray(load, shape, dtype)

    def close(self):
        self.arrays = {}


def _load_npz_member(path, key):
    with np.load(path, allow_pickle=False) as z:
        return z[key]


class _ParquetStore:
    """A Parquet output, read with pyarrow a row group at a time (the one
    last read kept per array): each array is a column (nested fixed-size
    lists for more than one axis) or, as the schema's ``mixup`` metadata
    records, several columns gathered."""

    fork_safe = False

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{path}: reading Parquet output needs pyarrow: {_ARROW_EXTRA}") from None
        try:
            self.file = pq.ParquetFile(str(path))
            record = json.loads((self.file.schema_arrow.metadata or {}).get(b"mixup", b"{}"))
        except Exception as exc:  # pyarrow raises several types for "not Parquet"
            raise InputError(f"{path}: cannot be opened as a Parquet file ({type(exc).__name__}: {exc})") from None
        meta = self.file.metadata
        self.starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        names = self.file.schema_arrow.names
        arrays = record.get("arrays") or {name: {} for name in names}
        self.arrays = {}
        for key, info in arrays.items():
            columns = info.get("columns") or [key]
            if all(c in names for c in columns):
                self.arrays[key] = _ParquetArray(self, columns, "columns" in info)

    def close(self):
        self.file.close()


class _ParquetArray:
    def __init__(self, store: _ParquetStore, columns: list[str], gathered: bool):
        self.store, self.columns, self.gathered = store, columns, gathered
        self.rows = int(store.starts[-1])
        self._cached: tuple[int, Any] | None = None
        first = self._convert(self._group(0).slice(0, 1)) if self.rows else None
        self.dtype = first.dtype if first is not None else np.dtype(np.float64)
        self.shape = (self.rows,) + (first.shape[1:] if first is not None else ())

    def _group(self, i: int):
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self.store.file.read_row_group(i, columns=self.columns))
        return self._cached[1]

    def _convert(self, table) -> np.ndarray:
        if self.gathered:
            return np.stack([table.column(c).to_numpy() for c in self.columns], axis=1)
        values = table.column(self.columns[0]).combine_chunks()
        if getattr(values.type, "extension_name", None) == "arrow.fixed_shape_tensor":
            shape = [int(d) for d in values.type.shape]  # row-major: the writer writes no permutation
            flat = values.storage.flatten().to_numpy(zero_copy_only=False)
            return np.asarray(flat).reshape([table.num_rows] + shape)
        shape = []
        while hasattr(values.type, "list_size"):
            shape.append(values.type.list_size)
            values = values.flatten()
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape([table.num_rows] + shape)

    def read(self, index):
        rows = np.arange(self.rows)[index]
        flat = np.atleast_1d(rows)
        groups = np.searchsorted(self.store.starts, flat, side="right") - 1
        out = np.empty((len(flat),) + self.shape[1:], dtype=self.dtype)
        for i in np.unique(groups):
            at = np.flatnonzero(groups == i)
            local = flat[at] - self.store.starts[i]
            import pyarrow as pa

            out[at] = self._convert(self._group(int(i)).take(pa.array(local)))
        if np.ndim(rows) == 0:
            row = out[0]
            return row[()] if row.ndim == 0 else row
        return out


_STORES = {
    "hdf5": _Hdf5Store,
    "zarr": _ZarrStore,
    "npz": _NpzStore,
    "npydir": _NpyDirStore,
    "parquet": _ParquetStore,
}


# ---------------------------------------------------------------- names


def _names(path: Path, keys: dict[str, tuple], params: dict | None) -> dict[str, str]:
    """Name in the rows (x, y, y_a, y_b, lam, ...) -> stored key."""
    missing = [k for k in _PROVENANCE if k not in keys]
    if missing:
        found = ", ".join(sorted(keys)) or "no arrays"
        raise InputError(
            f"{path}: not a mixup output: no {' or '.join(repr(k) for k in missing)} array (found: {found})"
        )
    names = {"lam": "lam", "partner": "partner"}
    if params:
        x_key = params.get("x_key") or "x"
        y_key = params.get("y_key")
        wanted = {"x": x_key}
        if y_key:
            if params.get("y_format") == "pair":
                wanted.update(y_a=f"{y_key}_a", y_b=f"{y_key}_b")
            else:
                wanted["y"] = y_key
        for name, key in wanted.items():
            if key not in keys:
                raise InputError(f"{path}: the sidecar names {key!r} as {name}, but the output has no such array")
        names.update(wanted)
    else:
        rest = [k for k in keys if k not in names.values() and k != "box"]
        for name in ("x", "y", "y_a", "y_b"):
            if name in keys:
                names[name] = name
        if "x" not in names:
            # Nested keys (train/images): the pair form is K_a beside K_b,
            # and x what remains when it is alone.
            pairs = [k[:-2] for k in rest if k.endswith("_a") and k[:-2] + "_b" in rest]
            if "y_a" not in names and len(pairs) == 1:
                names.update(y_a=pairs[0] + "_a", y_b=pairs[0] + "_b")
            left = [k for k in rest if k not in names.values()]
            if len(left) == 1:
                names["x"] = left[0]
            elif len(left) == 2 and "y" not in names and "y_a" not in names:
                # x has the most values per row; y (targets) the fewest.
                per_row = sorted(left, key=lambda k: int(np.prod(keys[k][0][1:])))
                names.update(y=per_row[0], x=per_row[1])
    # Every other array with one value per row keeps its stored name.
    n = keys["lam"][0][0]
    for key, (shape, _) in keys.items():
        if key not in names.values() and key not in names and len(shape) and shape[0] == n:
            names[key] = key
    order = ["x", "y", "y_a", "y_b", "lam", "partner"]
    return dict(sorted(names.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


# ---------------------------------------------------------------- sets

_MAX_OPEN = 16  # a set's outputs open at once in one process (as its inputs are when it is written)


def _is_set_dir(path: Path) -> bool:
    from mixup_cli.sets.status import is_set_dir

    return is_set_dir(path)


def _set_outputs(outdir: Path) -> tuple[list[Path], dict]:
    """The outputs of the set in OUTDIR in the set's order, and its parameters;
    an incomplete set is refused, naming its first missing output and what writes it."""
    from mixup_cli.sets.status import read_set

    view = read_set(outdir)
    if not view.outputs:
        raise InputError(f"{outdir}: its set has no outputs; write the set again")
    if view.missing:
        k = view.missing[0]
        more = f" ({len(view.missing)} of {view.outputs} outputs missing)" if len(view.missing) > 1 else ""
        raise InputError(f"{outdir}: an incomplete set{more}: {view.missing_problem(k)}")
    return [view.present[k] for k in range(view.outputs)], dict(view.parameters or {})


def _row_shapes(ds) -> dict:
    return {name: shape[1:] for name, shape in ds.shapes.items()}


# ---------------------------------------------------------------- images

IMAGE_FORMATS = ("float-nchw", "float-nhwc", "nchw")


class _Images:
    """``image_format``: x as a training loop takes images. Rows of x are
    images (H, W, C), or (H, W) for one channel, stored NHWC (or NCHW when the
    sidecar records ``layout`` NCHW, as CutMix may); the result is in the
    layout the name says ((C, H, W) or (H, W, C) per row, a channel axis of 1
    added to (H, W)), and, for ``float-*``, unsigned integers become float32
    ``x.astype(float32) / max`` (uint8: / 255, uint16: / 65535, so in [0, 1])
    while floating x keeps its dtype and values."""

    def __init__(self, name: str, shape, dtype, parameters: dict, path: Path):
        if name not in IMAGE_FORMATS:
            raise ParameterError(
                f"image_format must be one of {', '.join(map(repr, IMAGE_FORMATS))}, got {name!r}", "image_format"
            )
        if shape is None or len(shape) not in (3, 4):
            what = "no x" if shape is None else f"x of shape {tuple(shape)}"
            raise ParameterError(
                f"{path}: image_format={name!r} needs x of images, (N, H, W, C) or (N, H, W); the output has {what}",
                "image_format",
            )
        self.scale = None
        if name.startswith("float") and dtype.kind == "u":
            self.scale = np.float32(np.iinfo(dtype).max)
        elif name.startswith("float") and dtype.kind != "f":
            raise ParameterError(
                f"{path}: image_format={name!r} scales unsigned integer images (uint8, uint16) or keeps "
                f"floating ones; x is {dtype}: read it as stored (no image_format) and convert it",
                "image_format",
            )
        stored_first = len(shape) == 4 and str((parameters or {}).get("layout") or "").upper() == "NCHW"
        self.add_channel = len(shape) == 3
        want_first = name.endswith("nchw")
        self.move = None if stored_first == want_first else ("last_to_first" if want_first else "first_to_last")
        row = tuple(shape[1:]) + ((1,) if self.add_channel and not want_first else ())
        if self.add_channel and want_first:
            row = (1,) + row
        elif self.move == "last_to_first":
            row = (row[2], row[0], row[1])
        elif self.move == "first_to_last":
            row = (row[1], row[2], row[0])
        self.shape = (shape[0],) + row
        self.dtype = np.dtype(np.float32) if self.scale is not None else np.dtype(dtype)
        self.channels_first = want_first

    def __call__(self, x: np.ndarray, one_row: bool) -> np.ndarray:
        lead = 0 if one_row else 1  # axes before the image's own
        if self.add_channel:
            x = np.expand_dims(x, lead if self.channels_first else x.ndim)
        elif self.move == "last_to_first":
            x = np.moveaxis(x, -1, lead)
        elif self.move == "first_to_last":
            x = np.moveaxis(x, lead, -1)
        if self.scale is None:
            return np.ascontiguousarray(x)
        out = np.empty(x.shape, dtype=np.float32)
        np.divide(x, self.scale, out=out, dtype=np.float32)
        return out


# ---------------------------------------------------------------- dataset


class MixupDataset:
    """The rows of a mixup output, read lazily in each process.

    ``MixupDataset(path)`` checks that ``path`` is a mixup output (arrays
    ``lam`` and ``partner``, every named array with one row per output row)
    and raises ``InputError`` with a one-line message otherwise.

    ``path`` may also be a set's OUTDIR: its outputs, all present, as one
    dataset in the set's order (row ``i`` of their concatenation);
    ``outputs`` lists them. An incomplete set is an ``InputError`` naming
    the first output missing and the command that writes it.

    ``names`` restricts what a row holds (for instance ``("x", "y")`` to skip
    reading ``partner``); by default every per-row array is returned.

    ``image_format`` (default None: x as stored) converts x, rows of images
    stored (H, W, C) (or (H, W), one channel), as it is read:
    ``"float-nchw"``: (C, H, W) rows, uint8/uint16 as float32
    ``x.astype(float32) / 255`` (``/ 65535``), so in [0, 1], floating x
    keeping its dtype and values; ``"float-nhwc"``: the same, (H, W, C)
    rows; ``"nchw"``: (C, H, W) rows, dtype and values kept. A sidecar
    recording ``layout`` NCHW (CutMix) means x is stored (C, H, W). x of
    another rank, or of signed integers for ``float-*``, is a
    ``ParameterError``. ``shapes`` and ``dtypes`` say what rows hold.

    ``ds[i]`` -> dict of one row (numpy arrays, numpy scalars for 1-D
    arrays); ``ds[i:j]``, ``ds[index_array]`` -> dict of batches, rows in
    the order asked. ``__getitems__`` (used by PyTorch's DataLoader for a
    batch) reads a batch at once and returns it as a list of rows.
    """

    def __init__(self, path, names: Iterable[str] | None = None, *, image_format: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file or directory")
        self._store = None
        self._pid = None
        self._parts: list[MixupDataset] | None = None  # a set's outputs, in the set's order
        self._images = None
        if _is_set_dir(self.path):
            self._init_set(names)
        else:
            self._init_output(names)
        if image_format is not None:
            self._images = _Images(image_format, self.shapes.get("x"), self.dtypes.get("x"), self.parameters, self.path)
            self.shapes["x"], self.dtypes["x"] = self._images.shape, self._images.dtype

    def _init_output(self, names) -> None:
        self.format = _format_of(self.path)
        self.outputs = [self.path]
        self.parameters = self._read_sidecar()
        store = self._opened()
        keys = {k: (a.shape, a.dtype) for k, a in store.arrays.items()}
        all_names = _names(self.path, keys, self.parameters or None)
        n = keys["lam"][0][0]
        for key in all_names.values():
            shape = keys[key][0]
            if not shape or shape[0] != n:
                raise InputError(
                    f"{self.path}: array {key!r} has {shape[0] if shape else 0} rows, 'lam' has {n}; "
                    "the output is damaged or incomplete"
                )
        if names is not None:
            names = list(names)
            unknown = [nm for nm in names if nm not in all_names]
            if unknown:
                raise InputError(f"{self.path}: no array named {unknown[0]!r} (available: {', '.join(all_names)})")
            all_names = {nm: all_names[nm] for nm in names}
        self.keys: dict[str, str] = all_names
        self.shapes = {nm: tuple(keys[k][0]) for nm, k in all_names.items()}
        self.dtypes = {nm: np.dtype(keys[k][1]) for nm, k in all_names.items()}
        self._n = int(n)

    def _init_set(self, names) -> None:
        """A set's OUTDIR: its outputs (all present) as one dataset, in the set's order."""
        self.format = "set"
        self.outputs, self.parameters = _set_outputs(self.path)
        self._parts = []
        first = None
        for output in self.outputs:
            part = MixupDataset(output, names)
            part.close()  # reopened on use; at most _MAX_OPEN at once (``_part``)
            if first is None:
                first = part
            elif (part.keys, part.dtypes, _row_shapes(part)) != (first.keys, first.dtypes, _row_shapes(first)):
                raise InputError(
                    f"{output}: its arrays differ from those of {first.path} ({_row_shapes(part)} vs "
                    f"{_row_shapes(first)}); a set's outputs come from one run: write the set again"
                )
            self._parts.append(part)
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
        self._n = int(self._offsets[-1])
        self.keys = dict(first.keys)
        self.dtypes = dict(first.dtypes)
        self.shapes = {nm: (self._n,) + shape[1:] for nm, shape in first.shapes.items()}
        self._recent: OrderedDict[int, None] = OrderedDict()  # parts read lately, in this process

    def _read_sidecar(self) -> dict:
        sidecar = _sidecar_of(self.path)
        if not sidecar.is_file():
            return {}
        try:
            params = json.loads(sidecar.read_text()).get("parameters")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(
                f"{sidecar}: unreadable provenance sidecar ({exc}); move it away to read the output without it"
            ) from None
        return params if isinstance(params, dict) else {}

    def _opened(self):
        pid = os.getpid()
        if self._store is None or (self._pid != pid and not self._store.fork_safe):
            # A handle inherited through fork is dropped, never closed here:
            # it belongs to the parent's library state.
            self._store = _STORES[self.format](self.path)
            self._pid = pid
        return self._store

    # -- the dataset protocol

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if i < 0:
                i += self._n
            if not 0 <= i < self._n:
                raise IndexError(f"row {index} out of range for {self._n} rows")
            return self._read(i)
        if isinstance(index, slice):
            start, stop, step = index.indices(self._n)
            if step == 1:
                return self._read(slice(start, max(start, stop)))
            return self._batch(np.arange(start, stop, step))
        return self._batch(index)

    def __getitems__(self, indices) -> list[dict]:
        batch = self._batch(indices)
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def __iter__(self):
        for i in range(self._n):
            yield self._read(i)

    def _batch(self, index) -> dict:
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self._n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {self._n} rows")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError("index with an integer, a slice, or a 1-D array of integers")
        idx = idx.astype(np.int64)
        idx = np.where(idx < 0, idx + self._n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"row index out of range for {self._n} rows")
        # Read each row once, in increasing order; then put them in the order asked.
        rows, inverse = np.unique(idx, return_inverse=True)
        read = self._read(rows)
        if rows.size == idx.size and np.array_equal(rows, idx):
            return read
        return {k: v[inverse] for k, v in read.items()}

    def _read(self, index) -> dict:
        """Rows ``index`` (an int, a slice of step 1, or sorted unique integers), as returned."""
        rows = self._read_stored(index) if self._parts is None else self._read_set(index)
        if self._images is not None:
            rows["x"] = self._images(rows["x"], one_row=isinstance(index, (int, np.integer)))
        return rows

    def _read_stored(self, index) -> dict:
        arrays = self._opened().arrays
        return {name: arrays[key].read(index) for name, key in self.keys.items()}

    def _read_set(self, index) -> dict:
        """Rows of the concatenation of the set's outputs, each read by its own output."""
        if isinstance(index, (int, np.integer)):
            k = int(np.searchsorted(self._offsets, index, side="right")) - 1
            return self._part(k)._read_stored(int(index) - int(self._offsets[k]))
        if isinstance(index, slice):
            index = np.arange(index.start, index.stop, dtype=np.int64)
        index = np.asarray(index, dtype=np.int64)
        ks = np.searchsorted(self._offsets, index, side="right") - 1
        pieces = []
        for k in np.unique(ks).tolist():
            local = index[ks == k] - self._offsets[k]
            whole = local.size and local[-1] - local[0] + 1 == local.size  # consecutive rows: one slice
            pieces.append(self._part(k)._read_stored(slice(int(local[0]), int(local[-1]) + 1) if whole else local))
        if not pieces:
            return self._part(0)._read_stored(np.empty(0, dtype=np.int64))
        return {name: np.concatenate([p[name] for p in pieces]) for name in self.keys}

    def _part(self, k: int) -> MixupDataset:
        """Output ``k`` of the set, with at most ``_MAX_OPEN`` of them open in this process."""
        if self._recent and self._pid != os.getpid():
            self._recent.clear()  # what the parent opened is not ours to close
        self._pid = os.getpid()
        self._recent[k] = None
        self._recent.move_to_end(k)
        while len(self._recent) > _MAX_OPEN:
            self._parts[self._recent.popitem(last=False)[0]].close()
        return self._parts[k]

    # -- lifetime

    def close(self) -> None:
        """Close the files this process opened (the dataset reopens on next use)."""
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        for part in self._parts or ():
            part.close()
        if self._parts is not None:
            self._recent.clear()
        self._store = None
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None
        state["_pid"] = None
        if self._parts is not None:
            state["_recent"] = OrderedDict()
        return state

    def __repr__(self):
        outputs = f", outputs={len(self._parts)}" if self._parts is not None else ""
        return f"MixupDataset({str(self.path)!r}, rows={self._n}{outputs}, arrays={list(self.keys)})"
