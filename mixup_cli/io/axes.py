"""Arrays whose samples are not on the first stored axis.

MATLAB v7.3 ``.mat`` files are HDF5 (a 512-byte user block starting
``MATLAB 7.3 MAT-file``) with column-major arrays: a MATLAB N x F matrix is
stored as an HDF5 dataset of shape (F, N). In such a file every array is
shown as MATLAB shows it, the stored axes reversed, and a MATLAB vector
(N x 1 or 1 x N) as N values; samples are then on MATLAB's first axis.

``--sample-axis A`` (``DataOptions.sample_axis``) names the axis of x that
holds the samples: a number (of the axes as shown: MATLAB's in a MATLAB
file) or, in a netCDF-4 file, a dimension name (then y's samples are on its
own dimension of that name too). ``Reoriented`` reads rows along that axis
through HDF5 (a hyperslab of a block of rows at a time, never the raw fast
paths) and moves it first (``np.moveaxis``).

``misplaced_samples`` finds, without the option, an x whose first axis is
not the samples' while another axis is: the refusal names the option and
the axis that would fit.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io.base import ArraySpec, Overlay

MATLAB_HEADER = b"MATLAB 7.3 MAT-file"


def is_matlab(path) -> bool:
    """Whether the file starts with MATLAB v7.3's user block text."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MATLAB_HEADER)) == MATLAB_HEADER
    except OSError:
        return False


class _View:
    """One array as shown: ``kept`` stored axes in shown order (the first
    holds the samples), ``dropped`` stored axes of length 1 read at 0."""

    def __init__(self, shape: tuple[int, ...], kept: list[int], dropped: list[int]):
        self.kept, self.dropped = kept, dropped
        self.shape = tuple(shape[a] for a in kept)
        self._order = [sorted(kept).index(a) for a in kept]  # read axes -> shown axes

    def moved(self, axis: int) -> _View:
        kept = [self.kept[axis]] + [a for i, a in enumerate(self.kept) if i != axis]
        return _View(self._stored_shape(), kept, self.dropped)

    def _stored_shape(self) -> tuple[int, ...]:
        shape = [1] * (len(self.kept) + len(self.dropped))
        for a, n in zip(self.kept, self.shape):
            shape[a] = n
        return tuple(shape)

    def is_stored(self) -> bool:
        return not self.dropped and self.kept == sorted(self.kept)

    def selection(self, rows) -> tuple:
        index: list = [slice(None)] * (len(self.kept) + len(self.dropped))
        for a in self.dropped:
            index[a] = 0
        index[self.kept[0]] = rows
        return tuple(index)

    def arrange(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(block.transpose(self._order))


def matlab_view(shape: tuple[int, ...]) -> _View:
    """A MATLAB array as MATLAB shows it: stored axes reversed, a vector as 1-D."""
    n = len(shape)
    kept = list(range(n - 1, -1, -1))
    if n == 2 and 1 in shape:
        along = 0 if shape[1] == 1 and shape[0] != 1 else 1  # the vector's length; a 1 x 1: MATLAB's first axis
        kept, dropped = [along], [1 - along]
        return _View(shape, kept, dropped)
    return _View(shape, kept, [])


class Reoriented(Overlay):
    """A reader whose arrays in ``views`` read as shown (see above); the
    others are the inner reader's."""

    def __init__(self, inner, views: dict[str, _View], sample_axes: dict[str, int | str]):
        super().__init__(inner, views)
        self._views, self.sample_axes = views, sample_axes

    def spec(self, key: str) -> ArraySpec:
        spec = self._inner.spec(key)
        view = self._views.get(key)
        return spec if view is None else ArraySpec(view.shape, spec.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        view = self._views.get(key)
        if view is None:
            return self._inner.read(key, start, stop)
        return view.arrange(self._inner.dataset(key)[view.selection(slice(start, stop))])

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        view = self._views.get(key)
        if view is None:
            return self._inner.take(key, rows)
        rows = np.asarray(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        if not len(unique):
            return self.read(key, 0, 0)
        block = view.arrange(self._inner.dataset(key)[view.selection(unique.tolist())])
        return block[inverse.reshape(-1)]

    def dimension_names(self, key: str) -> list[str | None] | None:
        names = self._inner.dimension_names(key)
        view = self._views.get(key)
        return names if names is None or view is None else [names[a] for a in view.kept]

    def take_inflates(self, key: str) -> bool:
        return key in self._views or self._inner.take_inflates(key)

    def describe(self, key: str) -> dict:
        info = dict(self._inner.describe(key))
        if key in self._views:
            info["stored_shape"] = list(self._inner.spec(key).shape)  # chunks are in this order
            if key in self.sample_axes:
                info["sample_axis"] = self.sample_axes[key]
        return info


def _axis_number(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _resolve(reader, key: str, view: _View, axis, option_given: bool) -> int | None:
    """The shown axis of ``key`` that ``axis`` (a number or a dimension name) names."""
    n = len(view.shape)
    number = _axis_number(axis)
    if number is not None:
        if not -n <= number < n:
            raise ParameterError(
                f"{reader.path}: --sample-axis {axis} is out of range for '{key}', which has {n} axes "
                f"(shape {view.shape}); give 0 to {n - 1}",
                "--sample-axis",
            )
        return number % n
    names = dimension_names(reader, key, view)
    if axis in names:
        return names.index(axis)
    if option_given:
        shown = ", ".join(str(x) for x in names if x) or "none"
        raise ParameterError(
            f"{reader.path}: '{key}' has no dimension named '{axis}' (its dimensions: {shown}); "
            "give --sample-axis a dimension name of the array or an axis number",
            "--sample-axis",
        )
    return None


def dimension_names(reader, key: str, view: _View | None = None) -> list[str | None]:
    """netCDF-4 dimension names of ``key``'s axes as shown (None where unnamed)."""
    names = reader.dimension_names(key) if hasattr(reader, "dimension_names") else None
    if not names:
        return [None] * (len(view.shape) if view is not None else 1)
    return names if view is None else [names[a] for a in view.kept]


def wrap(reader, keys, sample_axis, *, x_key: str):
    """``reader`` showing MATLAB arrays as MATLAB does and x (and, for a
    dimension name, y) with its samples first; ``reader`` itself when neither applies."""
    matlab = is_matlab(reader.path) and hasattr(reader, "matlab_class")
    if sample_axis is None and not matlab:
        return reader
    if not hasattr(reader, "dataset"):
        raise ParameterError(
            f"{reader.path}: --sample-axis applies to HDF5 input (.h5, netCDF-4, MATLAB v7.3 .mat), "
            f"not {reader.format_name}; save x with its samples on the first axis",
            "--sample-axis",
        )
    views, axes = {}, {}
    for key in keys:
        if key is None or key not in reader.keys():
            continue
        try:
            shape = reader.spec(key).shape
        except InputError:
            continue  # not readable as an array: its own check says why
        if not shape:
            continue
        if matlab and reader.matlab_class(key) is not None:
            view = matlab_view(shape)
        else:
            view = _View(shape, list(range(len(shape))), [])
        if sample_axis is not None and (key == x_key or _axis_number(sample_axis) is None):
            axis = _resolve(reader, key, view, sample_axis, key == x_key)
            if axis is not None:
                view = view.moved(axis)
                axes[key] = _axis_number(sample_axis) if _axis_number(sample_axis) is not None else sample_axis
        if not view.is_stored():
            views[key] = view
    return Reoriented(reader, views, axes) if views else reader


def as_matlab_shows(reader):
    """``reader`` with a MATLAB v7.3 file's arrays as MATLAB shows them (every
    input of a set, ``inspect``); ``reader`` itself for any other file."""
    if reader.format_name != "hdf5" or not is_matlab(reader.path):
        return reader
    return wrap(reader, reader.keys(), None, x_key="")


def misplaced_samples(reader, x_key: str, x_shape: tuple, y_key: str, y_rows: int) -> str | None:
    """Without --sample-axis: a one-line reason why x's samples seem not to
    be on its first axis (x's rows disagree with y's while another axis
    agrees, or x's first netCDF dimension is not y's), naming the option.
    ``reader`` gives the dimension names (netCDF-4)."""
    x_names = dimension_names(reader, x_key) if len(x_shape) > 1 else [None]
    y_names = dimension_names(reader, y_key) if x_names[0] is not None else [None]
    y_dim = y_names[0] if y_names else None
    if y_dim is not None and x_names[0] != y_dim and y_dim in x_names:
        axis = x_names.index(y_dim)
        return (
            f"{reader.path}: the first dimension of '{x_key}' is '{x_names[0]}' but '{y_key}' runs along "
            f"'{y_dim}', axis {axis} of '{x_key}'; pass --sample-axis {y_dim} (or --sample-axis {axis})"
        )
    if x_shape[0] == y_rows:
        return None
    fits = [a for a in range(1, len(x_shape)) if x_shape[a] == y_rows]
    if not fits:
        return None
    return (
        f"{reader.path}: '{x_key}' has {x_shape[0]} rows but '{y_key}' has {y_rows}, the length of axis "
        f"{fits[0]} of '{x_key}' (shape {tuple(x_shape)}); if the samples lie along it, pass --sample-axis {fits[0]}"
    )


def refuse_misplaced(reader, x_key: str, x_shape: tuple, y_key: str, y_rows: int) -> None:
    """Refuse (one line naming --sample-axis) an x whose samples seem to lie on another axis."""
    reason = misplaced_samples(reader, x_key, x_shape, y_key, y_rows)
    if reason is not None:
        raise InputError(reason)
