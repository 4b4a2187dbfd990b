"""Class labels of rows, for the ``within-class`` and ``between-class`` pairings.

The class of a row is the argmax of its one-hot or soft target row, or the
value itself for integer labels of shape ``(N,)`` (or ``(N, 1)``). The index
is built with one streaming pass over the targets and holds O(N) integers:
a class code per row and the rows ordered by class (4 bytes each below 2**31
rows, 8 above), so it costs about 8 bytes per row while a run lasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError

# Targets are read in contiguous pieces of about this many bytes.
_READ_BYTES = 16 * 1024 * 1024


def labels_of(rows: np.ndarray, label: str = "y", one_hot: bool = False) -> np.ndarray:
    """The class (int64) of each row of a block of targets. ``one_hot``: the
    rows are class labels encoded as one-hot rows, so even one column is a
    class index (column 0 is class 0), not a label value."""
    rows = np.asarray(rows)
    if one_hot and rows.ndim == 2 and rows.shape[1]:
        return np.argmax(rows, axis=1).astype(np.int64)
    if rows.ndim == 2 and rows.shape[1] == 1:
        rows = rows[:, 0]
    if rows.ndim == 1:
        if rows.dtype.kind in "iu":
            return rows.astype(np.int64)
        if rows.dtype.kind == "f" and np.all(np.isfinite(rows)) and np.all(rows == np.round(rows)):
            return rows.astype(np.int64)
        raise InputError(
            f"{label}: holds non-integer values of shape (N,); class pairing needs integer "
            "class labels or one-hot (or soft) label rows"
        )
    if rows.ndim == 2:
        if rows.shape[1] == 0:
            raise InputError(f"{label}: label rows are empty; class pairing needs at least one class column")
        return np.argmax(rows, axis=1).astype(np.int64)
    raise InputError(
        f"{label}: has shape (N, {', '.join(map(str, rows.shape[1:]))}); class pairing needs "
        "integer labels of shape (N,) or label rows of shape (N, classes)"
    )


@dataclass(frozen=True, eq=False)
class ClassIndex:
    """Rows grouped by class: ``order[offsets[c] : offsets[c] + counts[c]]`` are class ``c``'s rows."""

    values: np.ndarray  # the label of each class code, sorted
    codes: np.ndarray  # class code of each row
    order: np.ndarray  # row indices sorted by class code (stable)
    counts: np.ndarray  # rows per class code
    offsets: np.ndarray  # where each class starts in ``order``
    label: str = "y"  # names the targets in messages

    @classmethod
    def from_labels(cls, labels: np.ndarray, label: str = "y") -> ClassIndex:
        labels = np.asarray(labels)
        values, codes = np.unique(labels, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int32 if len(values) < 2**31 else np.int64)
        index_dtype = np.int32 if len(labels) < 2**31 else np.int64
        order = np.argsort(codes, kind="stable").astype(index_dtype)
        counts = np.bincount(codes, minlength=len(values)).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(values, codes, order, counts, offsets, label)

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    @property
    def n_classes(self) -> int:
        return len(self.values)

    def draw_partners(self, rng: np.random.Generator, start: int, stop: int, same: bool) -> np.ndarray:
        """For rows ``start:stop``, a uniformly drawn row of the same class
        (``same``) or of any other class, from the whole dataset."""
        codes = self.codes[start:stop]
        counts = self.counts[codes]
        offsets = self.offsets[codes]
        if same:
            picks = offsets + rng.integers(0, counts)
        else:
            # Number the rows of the other classes 0..N-count-1 in class order,
            # skipping the row's own class.
            u = rng.integers(0, self.n_rows - counts)
            picks = np.where(u < offsets, u, u + counts)
        return self.order[picks].astype(np.int64)

    def check_between(self) -> None:
        if self.n_classes < 2:
            raise ParameterError(
                f"--pairing between-class needs rows of at least two classes, but every row of "
                f"{self.label} is class {self.values[0]}; use --pairing within-class or global",
                "--pairing",
            )


def class_index(reader, key: str, label: str | None = None, one_hot: bool = False) -> ClassIndex:
    """Build the index with one pass over ``key``, read in contiguous pieces
    (``one_hot``: as ``labels_of``)."""
    spec = reader.spec(key)
    label = label or f"{reader.path}['{key}']"
    labels = np.empty(spec.rows, dtype=np.int64)
    step = max(1, _READ_BYTES // max(1, spec.row_bytes))
    for start in range(0, spec.rows, step):
        stopping.check()
        stop = min(spec.rows, start + step)
        labels[start:stop] = labels_of(reader.read(key, start, stop), label, one_hot)
    return ClassIndex.from_labels(labels, label)
