"""Parquet files through pyarrow, an optional extra (``arrow``).

Arrays are columns. ``x`` is one tensor column (a fixed-size list, nested
fixed-size lists, Arrow's ``fixed_shape_tensor``, or variable-length lists
whose rows all have the same length: checked as each block is read), a plain
numeric column (shape ``(N,)``), or several numeric columns gathered into
``(N, k)``: a key with a comma or a glob character selects them
(``f0,f1,f2``, ``'f*'``, ``'pixel_[0-9]*'``; columns in the order named,
those a pattern matches in the file's order). ``y`` is a column of numbers,
of strings (named classes, as in ``names``), a dictionary column (pandas
``category``: shown as ``KEY/codes`` and ``KEY/categories``, which
``named.wrap`` reads as AnnData's categoricals) or fixed-size lists
(multi-label rows, dense targets). Missing values (nulls) are refused.

Rows are read one row group at a time: the row group last read is kept per
array, so memory is bounded by one row group of the columns read plus the
block, never the whole file.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import InputError, OutputError, ParameterError
from mixup_cli.io import base, npz
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.io.npyfile import member_path, memmap_npy

EXTRA = "pip install 'mixup-cli[arrow]'"
log = logging.getLogger("mixup_cli")
# Row groups of an array larger than this (uncompressed) are streamed in record batches of
# about STREAM_BATCH_BYTES (decoded) when read in order; smaller ones are decoded whole and kept.
STREAM_GROUP_BYTES = 64 * 2**20
STREAM_BATCH_BYTES = 4 * 2**20
# Row groups of an array larger than this (uncompressed) are warned of: a random read
# (partners by index, when no scratch copy is made) decodes one whole.
LARGE_ROW_GROUP_BYTES = 1024 * 2**20
# The schema metadata key of what a mixup output records (JSON).
METADATA_KEY = b"mixup"
_PATTERN = set(",*?[")


def import_pyarrow(path: Path | None = None, *, for_output: bool = False):
    """The pyarrow module (with ``parquet`` loaded), or a usage error (exit 2)
    naming the extra that provides it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        where = f"{path}: " if path is not None else ""
        raise ParameterError(
            f"{where}Parquet and Arrow support is an optional extra; install it with {EXTRA}",
            "OUT" if for_output else "IN",
        ) from None
    return pyarrow


def open_reader(path: Path) -> Reader:
    return Reader(path)


def _leaf_dtype(pa, typ, label: str) -> np.dtype:
    if pa.types.is_boolean(typ):
        return np.dtype(bool)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return np.dtype(typ.to_pandas_dtype())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return np.dtype(object)
    raise InputError(
        f"{label}: Arrow type {typ} cannot be mixed; supported columns hold numbers, strings, "
        "or (nested) lists of numbers"
    )


class _Column:
    """One stored column as an array: its shape per row and how blocks convert."""

    def __init__(self, pa, name: str, typ, label: str, first_row=None):
        self.names = (name,)
        self.label = label
        self.tensor_shape = None
        self.tensor = None  # a fixed_shape_tensor column's form: {"dim_names": ...} or {}
        if getattr(typ, "extension_name", None) == "arrow.fixed_shape_tensor":
            if typ.permutation is not None and list(typ.permutation) != sorted(typ.permutation):
                raise InputError(
                    f"{label}: a fixed_shape_tensor with a permutation (physical order {list(typ.permutation)}) "
                    "is not supported; write the tensors in row-major order (numpy.ascontiguousarray) "
                    "without a permutation"
                )
            self.tensor_shape = tuple(int(d) for d in typ.shape)
            names = typ.dim_names
            self.tensor = {"dim_names": [str(n) for n in names]} if names else {}
            typ = typ.storage_type
        elif isinstance(typ, pa.BaseExtensionType):  # e.g. Hugging Face's Array2D: its storage
            typ = typ.storage_type
        self.type = typ
        dims: list[int | None] = []
        while pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
            dims.append(typ.list_size if pa.types.is_fixed_size_list(typ) else None)
            typ = typ.value_type
        self.variable = None in dims
        if self.variable:
            dims = self._lengths_of_first(first_row, len(dims))
        self.dims = tuple(dims)
        self.dtype = _leaf_dtype(pa, typ, label)
        if dims and self.dtype.kind == "O":
            raise InputError(
                f"{label}: lists of strings cannot be mixed; targets of named classes are one string a row"
            )

    def _lengths_of_first(self, first_row, depth: int) -> list[int]:
        dims = []
        value = first_row
        for _ in range(depth):
            if value is None:
                return [0] * depth if not dims else dims + [0] * (depth - len(dims))
            dims.append(len(value))
            value = value[0] if len(value) else None
        return dims

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.tensor_shape if self.tensor_shape is not None else self.dims

    def convert(self, pa, table, first: int) -> np.ndarray:
        """Rows of ``table`` (this column only) as numpy, ``first`` the row of its first for messages."""
        arr = table.column(self.names[0]).combine_chunks() if table.num_rows else None
        n = table.num_rows
        if arr is None:
            return np.empty((0,) + self.row_shape, dtype=self.dtype)
        if isinstance(arr, pa.ExtensionArray) or hasattr(arr, "storage"):
            arr = arr.storage
        _refuse_nulls(arr, self.label, first)
        values = arr
        for level, size in enumerate(self.dims):
            if pa.types.is_fixed_size_list(values.type):
                values = values.flatten()
            else:
                import pyarrow.compute as pc

                lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
                bad = np.flatnonzero(lengths != size)
                if len(bad):
                    raise InputError(
                        f"{self.label}: row {_row_of(bad[0], level, self.dims, first)} has a list of "
                        f"{int(lengths[bad[0]])} values where the first row has {size}; a tensor column "
                        "needs the same length in every row (pad the rows, or store them as fixed-size lists)"
                    )
                values = values.flatten()
            _refuse_nulls(values, self.label, first, level + 1, self.dims)
        if self.dtype.kind == "O":
            out = values.to_numpy(zero_copy_only=False)
        else:
            out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=self.dtype)
        return out.reshape((n,) + self.row_shape)


def _has_variable_list(pa, typ) -> bool:
    typ = getattr(typ, "storage_type", typ)
    while pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        if not pa.types.is_fixed_size_list(typ):
            return True
        typ = typ.value_type
    return False


def _row_of(i: int, level: int, dims, first) -> int:
    """The file's row of the i-th list at nesting ``level``; ``first``: the
    row of the block's first, or the rows of a block taken by index."""
    per_row = int(np.prod(dims[:level], dtype=np.int64)) if level else 1
    at = int(i) // per_row
    return int(first[at]) if isinstance(first, np.ndarray) else first + at


def _refuse_nulls(arr, label: str, first, level: int = 0, dims=()) -> None:
    if arr.null_count:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
        i = int(np.flatnonzero(~valid)[0])
        row = _row_of(i, level, dims, first)
        raise InputError(f"{label}: has missing values (null), the first in row {row}; fill or drop them before mixing")


class _MultiHot:
    """Lists of class indices (Hugging Face ``Sequence(ClassLabel)``) as
    multi-hot rows of 0/1 (uint8), one column per declared class."""

    def __init__(self, name: str, n_classes: int, label: str):
        self.names = (name,)
        self.label = label
        self.row_shape = (n_classes,)
        self.dtype = np.dtype(np.uint8)

    def convert(self, pa, table, first) -> np.ndarray:
        import pyarrow.compute as pc

        n, n_classes = table.num_rows, self.row_shape[0]
        out = np.zeros((n, n_classes), dtype=np.uint8)
        if not n:
            return out
        arr = table.column(self.names[0]).combine_chunks()
        arr = getattr(arr, "storage", arr)
        _refuse_nulls(arr, self.label, first)
        rows = np.repeat(np.arange(n), pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        values = arr.flatten()
        labels = np.asarray(values.to_numpy(zero_copy_only=False))
        bad = np.flatnonzero(~values.is_valid().to_numpy(zero_copy_only=False)) if values.null_count else []
        if not len(bad):
            labels = labels.astype(np.int64)
            bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if len(bad):
            at = int(rows[bad[0]])
            row = int(first[at]) if isinstance(first, np.ndarray) else first + at
            raise InputError(
                f"{self.label}: row {row} has label {labels[bad[0]]}, not one of the {n_classes} classes "
                "its ClassLabel names; every label must be a class index"
            )
        out[rows, labels] = 1
        return out


class _Gathered:
    """Several numeric columns as one (N, k) array."""

    def __init__(self, columns: list[_Column], label: str):
        self.names = tuple(c.names[0] for c in columns)
        self.columns = columns
        self.label = label
        for col in columns:
            if col.row_shape or col.dtype.kind not in "fiub":
                raise InputError(
                    f"{col.label}: only plain numeric columns can be gathered into x "
                    "(this one holds lists or strings); name a tensor column alone with --x-key"
                )
        self.dtype = np.result_type(*[c.dtype for c in columns])
        self.row_shape = (len(columns),)

    def convert(self, pa, table, first: int) -> np.ndarray:
        out = np.empty((table.num_rows, len(self.columns)), dtype=self.dtype)
        for j, col in enumerate(self.columns):
            out[:, j] = col.convert(pa, table.select([col.names[0]]), first)
        return out


class _Codes:
    """A dictionary column's indices into the union of its row groups' dictionaries."""

    def __init__(self, name: str, label: str):
        self.names = (name,)
        self.label = label
        self.row_shape = ()
        self.dtype = np.dtype(np.int64)
        self.categories: list | None = None  # filled by the reader's pass

    def positions(self, dictionary) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.categories)}
        return np.array([index[v] for v in dictionary.to_pylist()], dtype=np.int64)

    def convert(self, pa, table, first: int) -> np.ndarray:
        out = []
        for chunk in table.column(self.names[0]).chunks:
            codes = chunk.indices.to_numpy(zero_copy_only=False)
            codes = np.where(chunk.is_valid().to_numpy(zero_copy_only=False), codes, -1).astype(np.int64)
            pos = np.append(self.positions(chunk.dictionary), -1)
            out.append(pos[codes])
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class _Stream:
    """The record batches of one row group, read in order: ``start`` is the
    file row of the current batch's first (of the next one before any)."""

    def __init__(self, group: int, batches, start: int):
        self.group, self.batches, self.start, self.batch = group, batches, start, None

    def rows(self, start: int, stop: int, path) -> list:
        """Rows ``start:stop`` (``start`` not before the current batch) as batch slices."""
        pieces = []
        while start < stop:
            end = self.start + (self.batch.num_rows if self.batch is not None else 0)
            if start < end:
                upto = min(stop, end)
                pieces.append(self.batch.slice(start - self.start, upto - start))
                start = upto
                continue
            try:
                self.start, self.batch = end, next(self.batches)
            except StopIteration:
                raise InputError(
                    f"{path}: row group {self.group} ends before row {start}; the file is damaged"
                ) from None
            except OSError as exc:
                raise InputError(f"{path}: cannot read row group {self.group} ({exc}); the file is damaged") from None
        return pieces


class TableReader(base.Reader):
    """Arrays of an Arrow table stored in pieces (Parquet row groups, Arrow
    record batches): ``_starts`` (first row of each piece, then the row
    count), ``_schema`` and ``_read_piece(i, columns)`` come from the format."""

    def _setup(self, schema, piece_rows: list[int]) -> None:
        pa = self._pa
        self._starts = np.cumsum([0] + list(piece_rows))
        self._rows = int(self._starts[-1])
        self._schema = schema
        self._fields = {f.name: f for f in schema}
        self._arrays: dict[str, object] = {}
        self._dictionary = [n for n, f in self._fields.items() if pa.types.is_dictionary(f.type)]
        self._cache: dict[str, tuple[int, object]] = {}
        self._lock = threading.RLock()
        self._gathered = self._recorded_columns()
        self._class_names = hf_class_names(schema.metadata)

    def _read_piece(self, i: int, columns: list[str]):
        raise NotImplementedError

    def declared_class_names(self, key: str) -> list[str] | None:
        """The class names a Hugging Face ``ClassLabel`` column (or a list of
        them: multi-hot rows) declares, in its order (label k is the k-th), or None."""
        return self._class_names[key][0] if key in self._class_names and key in self._fields else None

    def _recorded_columns(self) -> dict[str, list[str]]:
        """Arrays a mixup output wrote as several columns (its metadata says which)."""
        try:
            record = json.loads((self._schema.metadata or {}).get(METADATA_KEY, b"{}"))
            found = {key: list(info["columns"]) for key, info in record["arrays"].items() if "columns" in info}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}
        return {key: cols for key, cols in found.items() if cols and all(c in self._fields for c in cols)}

    # ------------------------------------------------------------ keys
    def keys(self) -> list[str]:
        members = {c for cols in self._gathered.values() for c in cols}
        keys = [n for n in self._fields if n not in self._dictionary and n not in members] + list(self._gathered)
        for name in self._dictionary:
            keys += [f"{name}/codes", f"{name}/categories"]
        return keys + [k for k in self._arrays if k not in keys and not k.endswith("/categories")]

    def _label(self, key: str) -> str:
        return f"{self.path}: column '{key}'"

    def _resolve(self, key: str):
        """The array of ``key``: a column, a dictionary column's codes or
        categories, or columns gathered by a list or pattern; None if absent."""
        if key in self._arrays:
            return self._arrays[key]
        found = None
        if key in self._gathered:
            found = _Gathered([self._column(n) for n in self._gathered[key]], self._label(key))
        elif key in self._fields and key not in self._dictionary:
            found = self._column(key)
        elif key.endswith(("/codes", "/categories")) and key.rsplit("/", 1)[0] in self._dictionary:
            name, part = key.rsplit("/", 1)
            codes = self._arrays.get(f"{name}/codes") or _Codes(name, self._label(name))
            if codes.categories is None:
                codes.categories = self._categories(name)
            self._arrays[f"{name}/codes"] = codes
            found = codes if part == "codes" else ("categories", codes)
        elif _PATTERN & set(key):
            found = _Gathered([self._column(n) for n in self._select(key)], self._label(key))
        if found is not None:
            self._arrays[key] = found
        return found

    def _column(self, name: str) -> _Column:
        typ = self._fields[name].type
        if name in self._class_names and self._class_names[name][1] and _has_variable_list(self._pa, typ):
            return _MultiHot(name, len(self._class_names[name][0]), self._label(name))
        first = None
        if self._rows and _has_variable_list(self._pa, typ):
            column = self._first_row(name).column(name).combine_chunks()
            first = getattr(column, "storage", column)[0].as_py()  # an extension type's own values
        return _Column(self._pa, name, typ, self._label(name), first)

    def _select(self, key: str) -> list[str]:
        chosen: list[str] = []
        for part in (p.strip() for p in key.split(",")):
            if not part:
                raise ParameterError(f"--x-key '{key}': an empty column name in the list", "--x-key")
            if part in self._fields:
                matched = [part]
            else:
                matched = [n for n in self._fields if fnmatch.fnmatchcase(n, part)]
            if not matched:
                raise InputError(
                    f"{self.path}: no column matches '{part}' (columns: {', '.join(self._fields)}); "
                    "choose them with --x-key"
                )
            for name in matched:
                if name in chosen:
                    raise ParameterError(f"--x-key '{key}' names column '{name}' twice", "--x-key")
                chosen.append(name)
        return chosen

    def _categories(self, name: str) -> list:
        """The union of the dictionaries of a dictionary column, in order of
        first appearance (one pass over the column, a row group at a time)."""
        seen: dict = {}
        for i in range(len(self._starts) - 1):
            for chunk in self._group(name, i, [name]).column(name).chunks:
                for value in chunk.dictionary.to_pylist():
                    seen.setdefault(value, None)
        if any(not isinstance(v, str) for v in seen):
            raise InputError(
                f"{self._label(name)}: a dictionary (categorical) column of non-string values; "
                "store the categories as strings or the column as plain integers"
            )
        return list(seen)

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        if self._resolve(key) is None:
            raise InputError(
                f"{self.path}: no column '{key}' (columns: {', '.join(self._fields) or 'none'}); choose one with "
                f"{option}"
                + (" (several numeric columns: a list 'a,b,c' or a pattern 'f*')" if option == "--x-key" else "")
            )
        return super().require(key, option, kinds)

    def _array(self, key: str):
        arr = self._resolve(key)
        if arr is None:
            raise KeyError(key)
        return arr

    def spec(self, key: str) -> ArraySpec:
        arr = self._array(key)
        if isinstance(arr, tuple):
            return ArraySpec((len(arr[1].categories),), np.dtype(object))
        return ArraySpec((self._rows,) + tuple(arr.row_shape), arr.dtype)

    # ------------------------------------------------------------ reading
    def _group_of(self, row: int) -> int:
        return int(np.searchsorted(self._starts, row, side="right")) - 1

    def _group(self, key: str, i: int, columns) -> object:
        """Piece ``i`` of ``columns``, the last one read kept per ``key``."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == i:
                return hit[1]
            table = self._read_piece(i, list(columns))
            self._cache[key] = (i, table)
            return table

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        arr = self._array(key)
        if isinstance(arr, tuple):
            return np.array(arr[1].categories[start:stop], dtype=object)
        start, stop = max(0, start), min(stop, self._rows)
        if stop <= start:
            return np.empty((0,) + tuple(arr.row_shape), dtype=arr.dtype)
        pieces = []
        at = start
        while at < stop:
            i = self._group_of(at)
            end = min(stop, int(self._starts[i + 1]))
            pieces.append(arr.convert(self._pa, self._piece_rows(key, arr, i, at, end), at))
            at = end
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _piece_rows(self, key: str, arr, i: int, start: int, stop: int):
        """Rows ``start:stop`` (of the file; all in piece ``i``) of ``arr``'s columns, as a table."""
        first = int(self._starts[i])
        return self._group(key, i, arr.names).slice(start - first, stop - start)

    def _first_row(self, name: str):
        """The first row of column ``name``, as a one-row table."""
        return self._group(name, self._group_of(0), [name]).slice(0, 1)

    def _take_sorted_unique(self, key: str, rows: np.ndarray) -> np.ndarray:
        arr = self._array(key)
        if not len(rows):
            return self.read(key, 0, 0)
        groups = np.searchsorted(self._starts, rows, side="right") - 1
        pieces = []
        for i in np.unique(groups):
            local = rows[groups == i] - self._starts[i]
            table = self._group(key, int(i), arr.names).take(self._pa.array(local))
            pieces.append(arr.convert(self._pa, table, rows[groups == i]))
        return np.concatenate(pieces)

    def take_inflates(self, key: str) -> bool:
        return True  # a piece is decoded whole to give a few of its rows

    def describe(self, key: str) -> dict:
        arr = self._resolve(key)
        if isinstance(arr, _Gathered):
            return {"columns": list(arr.names)}
        if isinstance(arr, _Column) and arr.tensor is not None:
            return {"tensor": dict(arr.tensor, type="fixed_shape_tensor")}
        if isinstance(arr, tuple) or (isinstance(arr, _Column) and arr.dtype.kind == "O"):
            return {"type": "string"}
        return {}

    def files(self) -> list[Path]:
        return [self.path]

    def close(self) -> None:
        self._cache.clear()


class Reader(TableReader):
    format_name = "parquet"

    def __init__(self, path: Path):
        super().__init__(path)
        self._pa = pa = import_pyarrow(self.path)
        import pyarrow.parquet as pq

        try:
            # Column chunks read through a buffer, not loaded whole: streamed row groups stay small.
            self._file = pq.ParquetFile(str(self.path), buffer_size=1 << 20, pre_buffer=False)
        except PermissionError:
            raise InputError(f"{self.path}: permission denied; make the file readable") from None
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: not a readable Parquet file ({exc})") from None
        meta = self._file.metadata
        self._setup(self._file.schema_arrow, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        self._streams: dict[str, _Stream] = {}
        self._group_bytes: dict[tuple[str, ...], list[int]] = {}

    def _sizes(self, names: tuple[str, ...]) -> list[int]:
        """Uncompressed bytes of ``names``' columns in each row group."""
        if names not in self._group_bytes:
            meta, wanted = self._file.metadata, set(names)
            self._group_bytes[names] = [
                sum(
                    group.column(j).total_uncompressed_size
                    for j in range(group.num_columns)
                    if group.column(j).path_in_schema.split(".")[0] in wanted
                )
                for group in (meta.row_group(i) for i in range(meta.num_row_groups))
            ]
        return self._group_bytes[names]

    def _piece_rows(self, key: str, arr, i: int, start: int, stop: int):
        """Small row groups: decoded whole and kept (``TableReader``). Large
        ones: streamed in batches of a few MiB, in order, the current batch
        kept; reading rows before it starts the row group again."""
        if self._sizes(tuple(arr.names))[i] <= STREAM_GROUP_BYTES:
            return super()._piece_rows(key, arr, i, start, stop)
        with self._lock:
            stream = self._streams.get(key)
            if stream is None or stream.group != i or start < stream.start:
                row_bytes = max(1, int(np.prod(arr.row_shape, dtype=np.int64)) * max(8, arr.dtype.itemsize))
                batch = int(np.clip(STREAM_BATCH_BYTES // row_bytes, 16, 65536))
                batches = self._file.iter_batches(batch, row_groups=[i], columns=list(arr.names), use_threads=False)
                stream = self._streams[key] = _Stream(i, batches, int(self._starts[i]))
            return self._pa.Table.from_batches(stream.rows(start, stop, self.path))

    def _first_row(self, name: str):
        try:
            batch = next(self._file.iter_batches(1, row_groups=[self._group_of(0)], columns=[name]))
        except (StopIteration, self._pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: cannot read column '{name}' ({exc}); the file is damaged") from None
        return self._pa.Table.from_batches([batch])

    def _read_piece(self, i: int, columns: list[str]):
        # Through iter_batches: pyarrow 14's read_row_group(columns=) allocates as if it read every column.
        rows = int(self._starts[i + 1] - self._starts[i])
        try:
            batches = list(self._file.iter_batches(max(1, rows), row_groups=[i], columns=columns, use_threads=False))
            if not batches:
                return self._file.read_row_group(i, columns=columns)
            return self._pa.Table.from_batches(batches)
        except (self._pa.ArrowException, OSError) as exc:
            raise InputError(f"{self.path}: cannot read row group {i} ({exc}); the file is damaged") from None

    def require(self, key: str, option: str, kinds: str = "fiu") -> ArraySpec:
        spec = super().require(key, option, kinds)
        self._warn_of_large_groups(key)
        return spec

    def _warn_of_large_groups(self, key: str) -> None:
        """Rows read by index decode their row group whole: say so when one of ``key``'s is large."""
        arr = self._resolve(key)
        names = set(arr.names) if arr is not None and not isinstance(arr, tuple) else set()
        meta = self._file.metadata
        largest = 0
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            size = sum(
                group.column(j).total_uncompressed_size
                for j in range(group.num_columns)
                if group.column(j).path_in_schema.split(".")[0] in names
            )
            largest = max(largest, size)
        if largest > LARGE_ROW_GROUP_BYTES:
            log.warning(
                "%s: '%s' has row groups of up to %d MiB; rows read by index (--balance, or partners without a "
                "scratch copy) decode a row group whole, which takes a few times that: write the file with smaller "
                "row groups (pyarrow.parquet.write_table(..., row_group_size=N))",
                self.path,
                key,
                largest // 2**20,
            )

    def describe(self, key: str) -> dict:
        meta = self._file.metadata
        info = {"row_groups": meta.num_row_groups, **super().describe(key)}
        arr = self._resolve(key)
        if arr is not None and not isinstance(arr, tuple) and meta.num_row_groups:
            group = meta.row_group(0)
            names = {group.column(j).path_in_schema.split(".")[0]: j for j in range(group.num_columns)}
            j = names.get(arr.names[0])
            if j is not None:
                info["compression"] = group.column(j).compression.lower()
        return info

    def close(self) -> None:
        super().close()
        try:
            self._file.close()
        except Exception:
            pass


def hf_class_names(metadata) -> dict[str, list[str]]:
    """``ClassLabel`` names by column, from the features Hugging Face
    ``datasets`` puts in a Parquet schema's metadata (``huggingface``)."""
    try:
        info = json.loads((metadata or {}).get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return class_label_names(features)


def class_label_names(features) -> dict[str, tuple[list[str], bool]]:
    """Column -> (names, multi) of each top-level ``ClassLabel`` feature
    (multi False) and of each list of them without a fixed length
    (``Sequence(ClassLabel)``: multi-label rows, multi True)."""
    if not isinstance(features, dict):
        return {}
    found = {}
    for name, feature in features.items():
        if not isinstance(feature, dict):
            continue
        multi = feature.get("_type") in ("Sequence", "List", "LargeList") and feature.get("length", -1) in (-1, None)
        label = feature.get("feature") if multi else feature
        if isinstance(label, dict) and label.get("_type") == "ClassLabel":
            names = label.get("names")
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                found[name] = (names, multi)
    return found


# The schema metadata key where Hugging Face ``datasets`` keeps a table's features (JSON).
HF_METADATA_KEY = b"huggingface"


def _hf_feature(pa, typ) -> dict:
    """The ``datasets`` feature (its ``to_dict`` form) of an output column's Arrow type: a
    number is a ``Value``, nested fixed-size lists (and a ``fixed_shape_tensor``) fixed-length
    ``Sequence``s, one per axis, the form ``datasets`` 2.15 and later read (newer releases
    call it ``List``, and read this one)."""
    if getattr(typ, "extension_name", None) == "arrow.fixed_shape_tensor":
        feature = _hf_feature(pa, typ.value_type)
        for size in reversed(list(typ.shape)):
            feature = {"feature": feature, "length": int(size), "_type": "Sequence"}
        return feature
    if pa.types.is_fixed_size_list(typ):
        return {"feature": _hf_feature(pa, typ.value_type), "length": typ.list_size, "_type": "Sequence"}
    return {"dtype": np.dtype(typ.to_pandas_dtype()).name, "_type": "Value"}


def hf_features(fields) -> bytes:
    """The ``huggingface`` schema metadata of an output: ``{"info": {"features": ...}}``, as
    ``datasets`` writes it, so ``load_dataset("parquet", ...)`` shows each column's shape and dtype."""
    pa = import_pyarrow()
    features = {field.name: _hf_feature(pa, field.type) for field in fields}
    return json.dumps({"info": {"features": features}}).encode()


# Rows per row group when the run gives no block size.
DEFAULT_GROUP_ROWS = 65536


def _column_type(pa, dtype: np.dtype, row_shape: tuple[int, ...]):
    typ = pa.from_numpy_dtype(np.dtype(dtype))
    for size in reversed(row_shape):
        typ = pa.list_(typ, int(size))
    return typ


def _tensor_type(pa, dtype: np.dtype, row_shape: tuple[int, ...], form: dict):
    """Arrow's ``fixed_shape_tensor`` of the row shape (row-major, no permutation), with
    the input column's dimension names where it had them and they still fit."""
    names = form.get("dim_names")
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == len(row_shape) else None
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(row_shape), dim_names=names)


def _column_array(pa, data: np.ndarray):
    arr = pa.array(np.ascontiguousarray(data).reshape(-1))
    for size in reversed(data.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
    return arr


class Writer(npz.ReadBackWriter):
    """Parquet output: arrays staged as ``.npy`` memory maps beside OUT (rows
    arrive in any order, ``--resume`` reopens them, as ``.npz`` output does),
    then written as one row group per block when the run completes: arrays of
    more than one axis as nested fixed-size lists, x gathered from several
    input columns back into those columns; what the run records (the
    version, run id, class names, each array's shape and columns) in the
    schema's metadata under ``mixup``."""

    format_name = "parquet"
    compressions = ("none", "gzip", "zstd")
    records_parameters = True
    keeps_tensor_columns = True

    def __init__(self, path: Path, specs: dict[str, ArraySpec], options: WriteOptions):
        import_pyarrow(path, for_output=True)
        super().__init__(path, specs, options)
        self._attrs: dict = {}

    @classmethod
    def reopen(cls, path: Path, specs: dict[str, ArraySpec], options: WriteOptions) -> Writer:
        import_pyarrow(path, for_output=True)
        self = super().reopen(path, specs, options)
        self._attrs = {}
        return self

    @staticmethod
    def packed_reader(path: Path) -> Reader:
        return Reader(path)

    def set_attributes(self, attrs: dict) -> None:
        self._attrs.update(attrs)

    def _columns(self) -> dict[str, list[str]]:
        """The input columns x was gathered from (``x_columns``), by key."""
        found = json.loads(self._attrs.get("gathered_columns", "{}"))
        return {
            key: names
            for key, names in found.items()
            if key in self.specs and self.specs[key].row_shape == (len(names),)
        }

    def _tensors(self) -> dict[str, dict]:
        """Arrays whose input column was a ``fixed_shape_tensor`` (``tensor_columns``), by key."""
        found = json.loads(self._attrs.get("tensor_columns", "{}"))
        return {key: form for key, form in found.items() if key in self.specs and self.specs[key].row_shape}

    def _metadata(self, columns: dict[str, list[str]], tensors: dict[str, dict]) -> bytes:
        hidden = ("class_names", "gathered_columns", "tensor_columns", "parameters")
        record = {k: v for k, v in self._attrs.items() if k not in hidden}
        for key in ("class_names", "parameters"):
            if key in self._attrs:
                record[key] = json.loads(self._attrs[key])
        record["arrays"] = {
            key: {"shape": list(spec.row_shape), "dtype": np.dtype(spec.dtype).str}
            | ({"columns": columns[key]} if key in columns else {})
            | ({"column": "fixed_shape_tensor"} if key in tensors else {})
            for key, spec in self.specs.items()
        }
        return json.dumps(record, sort_keys=True).encode()

    def _pack(self) -> None:
        pa = import_pyarrow(self.path, for_output=True)
        import pyarrow.parquet as pq

        columns, tensors = self._columns(), self._tensors()
        fields, arrays = [], {}
        for key, spec in self.specs.items():
            arrays[key] = memmap_npy(self._staging / member_path(key))
            if key in columns:
                fields += [pa.field(name, pa.from_numpy_dtype(np.dtype(spec.dtype)), False) for name in columns[key]]
            elif key in tensors:
                fields.append(pa.field(key, _tensor_type(pa, spec.dtype, spec.row_shape, tensors[key]), False))
            else:
                fields.append(pa.field(key, _column_type(pa, spec.dtype, spec.row_shape), False))
        taken = [f.name for f in fields]
        if len(set(taken)) != len(taken):
            dup = sorted({n for n in taken if taken.count(n) > 1})
            raise OutputError(f"{self.path}: two output arrays would both be column(s) {', '.join(dup)}")
        metadata = {METADATA_KEY: self._metadata(columns, tensors), HF_METADATA_KEY: hf_features(fields)}
        schema = pa.schema(fields, metadata=metadata)
        rows = next(iter(self.specs.values())).rows
        step = self.options.block_rows or DEFAULT_GROUP_ROWS
        compression = {"none": "NONE", "gzip": "GZIP", "zstd": "ZSTD"}[self.options.compression]
        # A new file where nothing is, never through a link planted at the name.
        with os.fdopen(beside.create_file(self.path), "w+b") as fh:
            with pq.ParquetWriter(fh, schema, compression=compression, write_statistics=False) as out:
                for start in range(0, rows, step):
                    stop = min(rows, start + step)
                    out.write_table(self._group(pa, schema, arrays, columns, start, stop), row_group_size=step)
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def _group(pa, schema, arrays, columns, start, stop):
        data = []
        for key, arr in arrays.items():
            block = np.asarray(arr[start:stop])
            if key in columns:
                data += [pa.array(np.ascontiguousarray(block[:, j])) for j in range(block.shape[1])]
            elif isinstance(schema.field(key).type, pa.BaseExtensionType):
                flat = pa.array(np.ascontiguousarray(block).reshape(-1))
                storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(block.shape[1:], dtype=np.int64)))
                data.append(pa.ExtensionArray.from_storage(schema.field(key).type, storage))
            else:
                data.append(_column_array(pa, block))
        return pa.Table.from_arrays(data, schema=schema)
