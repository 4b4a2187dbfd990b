"""``--groups KEY``: every pair stays inside one group (patient, session, fold).

``KEY`` names an array (or a Parquet column) of the input with one group id
per row of x: integers, or strings. The pairing's documented law is then
restricted to the row's group:

* ``global``: the partner is uniform over the rows of the row's group;
* ``within-class``: uniform over the rows of the row's class AND group;
* ``between-class``: uniform over the rows of the row's group of any other class;
* ``knn`` / ``knn-within-class``: uniform over the K nearest other rows of the
  row's group (and class), found exactly as without groups (ties by index),
  by ``neighbours.build(cells=...)``; every other row of it when it holds at
  most K others (``short_rows`` counts those rows);
* ``label-kernel``: the Gaussian kernel of the label distance over the other
  rows of the row's group (``label_kernel.LabelKernel``, rows sorted by
  (group, label));
* ``batch``: per copy, the partners of the rows of one group inside one pair
  group of rows (a block, or the last two blocks when the last is shorter
  than half a block) are a random permutation of those rows.

A row whose pool is empty (a group of one row; for ``within-class`` and
``knn-within-class`` the only row of its class in its group; for
``between-class`` a group whose rows are all of one class; for ``batch`` the
only row of its group in its pair group) is paired with itself and left
unmixed: ``partner`` is the row, ``lam`` is 1.0, its output row equals its
input row. Their number per copy is recorded (``unpaired_rows``). The pool of
every row is fixed by the input (and for ``batch`` the block size), so that
number does not depend on the seed. With ``--balance`` the plan's rows are
the balanced rows (``balance.own_rows``, drawn per class as without groups),
and the pools hold them: a row drawn twice is in its pool twice.

``GroupIndex`` holds O(N) integers, like ``classes.ClassIndex``: one code per
row, and the rows ordered by (group, class) cells, each group's cells
contiguous. Each output row gets the id of its own row's group (``group``
array): the input's integer dtype, or for string ids the group's code (its
rank among the sorted unique ids, int64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.targets.classes import ClassIndex

# Pairings that --groups restricts; any other is refused with it.
GROUP_PAIRINGS = ("global", "batch", "within-class", "between-class", "knn", "knn-within-class", "label-kernel")
# The group ids are read in contiguous pieces of this many rows.
_READ_ROWS = 1 << 18


def check(pairing: str, group_key: str | None, x_key: str, y_key: str | None) -> None:
    """Refuse, before anything is read, what --groups cannot honour (exit 2)."""
    if group_key is None:
        return
    if not group_key:
        raise ParameterError("--groups needs the name of an array of group ids", "--groups")
    if pairing not in GROUP_PAIRINGS:
        raise ParameterError(
            f"--groups keeps pairs inside a group with --pairing {', '.join(GROUP_PAIRINGS)}, "
            f"not --pairing {pairing}; use one of those",
            "--groups",
        )
    if group_key in (x_key, y_key):
        raise ParameterError(f"--groups names '{group_key}', which is also x or y; name the group ids", "--groups")


def read_ids(reader, key: str, n_rows: int) -> np.ndarray:
    """The group id of every row: integers as stored, strings as text (one pass)."""
    label = f"{reader.path}: '{key}'"
    if key not in reader.keys():
        raise ParameterError(f"{reader.path} has no '{key}'; --groups names the array of group ids", "--groups")
    spec = reader.spec(key)
    kind = np.dtype(spec.dtype).kind
    if spec.row_shape not in ((), (1,)) or kind not in "iubUSO":
        raise InputError(
            f"{label} has {spec.dtype} rows of shape {spec.row_shape}; --groups needs one integer or "
            "string group id per row"
        )
    if spec.rows != n_rows:
        raise InputError(f"{label} has {spec.rows} rows but x has {n_rows}; --groups needs one group id per row")
    parts = []
    for start in range(0, n_rows, _READ_ROWS):
        stopping.check()
        block = np.asarray(reader.read(key, start, min(n_rows, start + _READ_ROWS)))
        block = block.reshape(len(block))
        if kind in "USO":
            from mixup_cli.targets.named import _as_text

            block = _as_text(block, label)
        parts.append(block)
    ids = np.concatenate(parts)
    return ids.astype(np.int64) if ids.dtype.kind == "b" else ids


@dataclass(frozen=True, eq=False)
class GroupIndex:
    """Rows by (group, class) cell; ``cells`` orders them, each group's cells contiguous."""

    key: str
    values: np.ndarray  # sorted unique group ids
    codes: np.ndarray  # group code of each row
    cells: ClassIndex  # rows by cell (group, or group and class)
    group_first: np.ndarray  # per cell: where its group's rows start in ``cells.order``
    group_size: np.ndarray  # per cell: its group's rows

    @classmethod
    def build(cls, key: str, ids: np.ndarray, classes: np.ndarray | None = None) -> GroupIndex:
        values, codes = np.unique(ids, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        if classes is None:
            cell_of = codes
            per_group = 1
        else:
            per_group = int(classes.max()) + 1 if len(classes) else 1
            cell_of = codes * per_group + np.asarray(classes, np.int64)
        cells = ClassIndex.from_labels(cell_of, key)
        group_of_cell = cells.values // per_group
        size = np.bincount(group_of_cell, weights=cells.counts, minlength=len(values)).astype(np.int64)
        first = np.concatenate(([0], np.cumsum(size)[:-1])).astype(np.int64)
        return cls(key, values, codes, cells, first[group_of_cell], size[group_of_cell])

    @property
    def n_rows(self) -> int:
        return len(self.codes)

    @property
    def n_groups(self) -> int:
        return len(self.values)

    @property
    def out_dtype(self) -> np.dtype:
        """The ``group`` array's dtype: the ids' own integers, int64 codes for strings."""
        return self.values.dtype if self.values.dtype.kind in "iu" else np.dtype(np.int64)

    def ids(self, start: int, stop: int) -> np.ndarray:
        """The ``group`` array of rows ``start:stop``."""
        codes = self.codes[start:stop]
        return self.values[codes] if self.values.dtype.kind in "iu" else codes.astype(np.int64)

    def pool(self, same: bool) -> np.ndarray:
        """Per cell: the rows a row of it draws from (``same``: its cell; else the other cells of its group)."""
        return self.cells.counts if same else self.group_size - self.cells.counts

    def unpaired_rows(self, same: bool) -> int:
        """Rows paired with themselves (their pool holds no other row), per copy."""
        pool = self.pool(same)
        alone = pool <= 1 if same else pool == 0
        return int(self.cells.counts[alone].sum())

    def draw_partners(
        self, rng: np.random.Generator, start: int, stop: int, same: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """For rows ``start:stop``: a partner drawn uniformly from the row's
        pool, and which rows are alone (paired with themselves)."""
        cell = self.cells.codes[start:stop]
        counts, offsets = self.cells.counts[cell], self.cells.offsets[cell]
        if same:
            picks = offsets + rng.integers(0, counts)
            alone = counts <= 1
        else:
            pool = self.group_size[cell] - counts
            alone = pool == 0
            # Number the group's rows of the other cells 0..pool-1 in cell order.
            at = self.group_first[cell] + rng.integers(0, np.maximum(pool, 1))
            picks = np.where(at < offsets, at, at + counts)
            picks = np.where(alone, offsets, picks)
        partner = self.cells.order[picks].astype(np.int64)
        partner[alone] = np.arange(start, stop, dtype=np.int64)[alone]
        return partner, alone
