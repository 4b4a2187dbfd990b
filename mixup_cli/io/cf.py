"""netCDF variables as the CF conventions define their values.

A netCDF-4 file is HDF5, and h5py reads its variables as stored. Under the
CF conventions (which netCDF4-python and xarray apply when they read) a
variable with ``scale_factor``/``add_offset`` is *packed*: its value is
``stored * scale_factor + add_offset``, in the type of those attributes;
and a stored value equal to ``_FillValue`` or ``missing_value`` is missing
data, not a number. ``CFDecoded`` shows such variables decoded: packed ones
as floats, missing values as NaN (which the NaN check then refuses, or
``--allow-nonfinite`` keeps). An integer variable that is not packed keeps
its type, and a row holding its fill value is refused: there is no number
to mix it as. ``valid_range``/``valid_min``/``valid_max`` are not applied.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.core.errors import InputError
from mixup_cli.io.base import ArraySpec, Overlay

MISSING_ATTRIBUTES = ("_FillValue", "missing_value")


def _scalar(value) -> float:
    return np.asarray(value).reshape(-1)[0].item()


class _Variable:
    """How one variable is decoded."""

    def __init__(self, attrs: dict, stored: np.dtype):
        self.scale = _scalar(attrs["scale_factor"]) if "scale_factor" in attrs else None
        self.offset = _scalar(attrs["add_offset"]) if "add_offset" in attrs else None
        self.missing = {name: np.asarray(attrs[name]).reshape(-1) for name in MISSING_ATTRIBUTES if name in attrs}
        packing = [np.asarray(attrs[n]).dtype for n in ("scale_factor", "add_offset") if n in attrs]
        if packing:
            found = np.result_type(*packing)
            self.dtype = found if found.kind == "f" else np.dtype(np.float64)
        else:
            self.dtype = np.dtype(stored)

    def describe(self) -> str:
        parts = []
        if self.scale is not None or self.offset is not None:
            parts.append(f"unpacked: stored * {self.scale or 1:g} + {self.offset or 0:g} as {self.dtype}")
        for name, values in self.missing.items():
            parts.append(f"{name} {', '.join(f'{v:g}' for v in values.tolist())} is missing data")
        return "; ".join(parts)

    def decode(self, block: np.ndarray, first, label: str) -> np.ndarray:
        raw = np.asarray(block)
        missing = np.zeros(raw.shape, bool)
        for values in self.missing.values():
            for value in values:
                missing |= np.isnan(raw) if np.isnan(value) else raw == value
        if self.dtype.kind != "f":
            if missing.any():
                i = int(np.flatnonzero(missing.reshape(len(raw), -1).any(axis=1))[0])
                row = int(first[i]) if isinstance(first, np.ndarray) else int(first) + i
                raise InputError(
                    f"{label} row {row} holds its fill value (missing data under the netCDF conventions); "
                    "fill or drop those rows first"
                )
            return raw
        out = raw.astype(self.dtype)
        if self.scale is not None:
            out *= self.dtype.type(self.scale)
        if self.offset is not None:
            out += self.dtype.type(self.offset)
        out[missing] = np.nan
        return out


class CFDecoded(Overlay):
    """A reader whose CF-encoded variables read as their values (see above)."""

    def __init__(self, inner, variables: dict[str, _Variable]):
        super().__init__(inner, variables)
        self._variables = variables

    def _label(self, key: str) -> str:
        return f"{self.path}: '{key}'"

    def spec(self, key: str) -> ArraySpec:
        spec = self._inner.spec(key)
        found = self._variables.get(key)
        return spec if found is None else ArraySpec(spec.shape, found.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        block = self._inner.read(key, start, stop)
        found = self._variables.get(key)
        return block if found is None else found.decode(block, start, self._label(key))

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        block = self._inner.take(key, rows)
        found = self._variables.get(key)
        return block if found is None else found.decode(block, np.asarray(rows), self._label(key))

    def describe(self, key: str) -> dict:
        info = dict(self._inner.describe(key))
        if key in self._variables:
            info["decoded"] = self._variables[key].describe()
        return info


def wrap(reader, keys):
    """``reader`` with the CF-encoded variables among ``keys`` decoded;
    ``reader`` itself when none is (or the format has no such attributes)."""
    attributes = getattr(reader, "cf_attributes", None)
    if attributes is None:
        return reader
    variables = {}
    for key in keys:
        if key is not None and key in reader.keys():
            try:
                attrs = attributes(key)
            except InputError:
                continue  # not an array: its own check says so, naming the option
            if attrs:
                variables[key] = _Variable(attrs, reader.spec(key).dtype)
    return CFDecoded(reader, variables) if variables else reader
