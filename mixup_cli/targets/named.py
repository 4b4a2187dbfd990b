"""String and categorical class labels.

Accepted for ``y``: strings (HDF5 fixed- or variable-length strings, numpy
``U``/``S`` arrays in ``.npy``/``.npz``), AnnData categoricals (an HDF5
group ``obs/<name>`` holding ``codes`` and ``categories``) and HDF5 enums
(their members' names; a stored value no member has is refused). Their class
names are the sorted unique values (the order of scikit-learn's
``LabelEncoder``/``OneHotEncoder``: ``numpy.unique``, by code point), found by
one streaming pass over the labels (for AnnData, the categories alone);
column k of the one-hot targets is the k-th name. Integer labels whose
reader declares names (Hugging Face ``ClassLabel`` features in Parquet and
``datasets`` folders) keep them in the declared order: label k is the k-th
name. ``NamedLabels`` then shows
``y`` to the rest of the pipeline as integer class codes (int64), so class
encoding, the class pairings and ``--balance`` work on them unchanged.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError
from mixup_cli.io.base import ArraySpec

_SCAN_ROWS = 1 << 18
STRING_KINDS = "USO"


def _as_text(block: np.ndarray, label: str) -> np.ndarray:
    """A block of labels as a numpy unicode array."""
    block = np.asarray(block)
    if block.ndim == 2 and block.shape[1] == 1:
        block = block[:, 0]
    if block.dtype.kind == "U":
        return block
    if block.dtype.kind == "S":
        return np.char.decode(block, "utf-8")
    out = []
    for value in block.reshape(-1):
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif not isinstance(value, str):
            raise InputError(
                f"{label}: holds {type(value).__name__} values among its strings; labels must all be strings"
            )
        out.append(value)
    return np.array(out, dtype=str) if out else np.empty(0, dtype="U1")


class NamedLabels:
    """A reader whose ``key`` is shown as int64 class codes into ``names``."""

    def __init__(self, inner, key: str, names: np.ndarray, source_key: str | None = None, codes=None):
        self._inner, self._key = inner, key
        self._source_key = source_key or key  # AnnData: KEY/codes
        # AnnData codes, or an HDF5 enum's values: (the stored values, sorted;
        # the position of each one's name in names).
        self._stored_codes = codes
        self.class_names = [str(n) for n in names]
        self._names = np.asarray(names, dtype=str)
        self.path = inner.path
        self.format_name = inner.format_name

    def keys(self):
        return list(self._inner.keys()) + ([self._key] if self._key not in self._inner.keys() else [])

    def spec(self, key: str) -> ArraySpec:
        if key != self._key:
            return self._inner.spec(key)
        return ArraySpec((self._inner.spec(self._source_key).rows,), np.dtype(np.int64))

    def _codes(self, block: np.ndarray, first) -> np.ndarray:
        if self._stored_codes is not None:
            values, positions = self._stored_codes
            codes = np.asarray(block).reshape(-1).astype(np.int64)
            at = np.minimum(np.searchsorted(values, codes), len(values) - 1)
            bad = values[at] != codes
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                row = int(first[i]) if isinstance(first, np.ndarray) else int(first) + i
                raise InputError(
                    f"{self.path}: '{self._key}' row {row} has code {int(codes[i])}, which names no class "
                    "(a missing category); every row needs a class"
                )
            return positions[at]
        text = _as_text(block, f"{self.path}: '{self._key}'")
        return np.searchsorted(self._names, text).astype(np.int64)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        if key != self._key:
            return self._inner.read(key, start, stop)
        return self._codes(self._inner.read(self._source_key, start, stop), start)

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        if key != self._key:
            return self._inner.read_into(key, start, stop, out)
        np.copyto(out[: stop - start], self.read(key, start, stop))

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        if key != self._key:
            return self._inner.take(key, rows)
        return self._codes(self._inner.take(self._source_key, rows), np.asarray(rows))

    def stored_spec(self) -> ArraySpec:
        """The labels as the input stores them (strings, or AnnData's codes)."""
        return self._inner.spec(self._source_key)

    def describe(self, key: str) -> dict:
        return self._inner.describe(self._source_key if key == self._key else key)

    def take_inflates(self, key: str) -> bool:
        return self._inner.take_inflates(self._source_key if key == self._key else key)

    def take_scatters(self) -> bool:
        return self._inner.take_scatters()

    def files(self):
        return self._inner.files()

    def require(self, key: str, option: str, kinds: str = "fiu"):
        if key == self._key:
            return self.spec(key)
        return self._inner.require(key, option, kinds)

    def close(self) -> None:
        self._inner.close()


class WithClassNames:
    """A reader whose targets are multi-hot rows of named classes (column k
    is the k-th name): the reader itself, with ``class_names``."""

    def __init__(self, inner, names):
        self._inner = inner
        self.class_names = [str(n) for n in names]
        self.path = inner.path
        self.format_name = inner.format_name

    def __getattr__(self, name):
        return getattr(self._inner, name)


def wrap(reader, y_key: str | None):
    """``reader`` with string or categorical ``y_key`` shown as class codes;
    ``reader`` itself when ``y_key`` holds numbers (or is absent)."""
    if y_key is None:
        return reader
    keys = set(reader.keys())
    label = f"{reader.path}: '{y_key}'"
    if y_key not in keys and {f"{y_key}/codes", f"{y_key}/categories"} <= keys:
        cats_key = f"{y_key}/categories"
        n = reader.spec(cats_key).rows
        categories = _as_text(reader.read(cats_key, 0, n), label)
        names = np.unique(categories)
        if len(names) != len(categories):
            raise InputError(f"{label}: its categories repeat a name; each category must be unique")
        codes = (np.arange(len(categories)), np.searchsorted(names, categories))
        return NamedLabels(reader, y_key, names, f"{y_key}/codes", codes)
    if y_key not in keys:
        return reader
    declared = getattr(reader, "declared_class_names", None)
    found_names = declared(y_key) if declared is not None else None
    if found_names and reader.spec(y_key).row_shape:  # multi-hot rows of declared classes: column k, name k
        return WithClassNames(reader, found_names)
    if found_names:  # integer labels with names declared (Hugging Face ClassLabel): label k is the k-th name
        every = np.arange(len(found_names))
        return NamedLabels(reader, y_key, np.array(found_names, dtype=str), codes=(every, every))
    members = getattr(reader, "enum_members", lambda key: None)(y_key)
    if members:  # an HDF5 enum: its members are the classes, by name
        names = np.array(sorted(members), dtype=str)
        values = np.array([members[n] for n in names], dtype=np.int64)
        order = np.argsort(values, kind="stable")
        return NamedLabels(reader, y_key, names, codes=(values[order], order))
    spec = reader.spec(y_key)
    if np.dtype(spec.dtype).kind not in STRING_KINDS or spec.row_shape not in ((), (1,)):
        return reader
    found: set[str] = set()
    for start in range(0, spec.rows, _SCAN_ROWS):
        stopping.check()
        found.update(np.unique(_as_text(reader.read(y_key, start, min(spec.rows, start + _SCAN_ROWS)), label)).tolist())
    if not found:
        raise InputError(f"{label} has no rows; there are no classes to encode")
    return NamedLabels(reader, y_key, np.array(sorted(found), dtype=str))


def attributes(prepared) -> dict:
    """What an HDF5 or Zarr output carries of the class names: a JSON list
    under ``class_names`` (column k of y is the k-th), when y had names."""
    found = getattr(prepared, "class_names", None)
    if not found:
        return {}
    import json

    return {"class_names": json.dumps(found)}


def stored_specs(reader, specs: dict) -> dict:
    """``specs`` with the labels' entry as the input stores them (for the sidecar)."""
    if not isinstance(reader, NamedLabels) or reader._key not in specs:
        return specs
    return dict(specs, **{reader._key: reader.stored_spec()})
