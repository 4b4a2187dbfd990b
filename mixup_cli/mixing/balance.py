"""Class balance: ``--balance`` and ``--balance-to M``.

A balanced run mixes, per copy, the same number M of rows of every class
(M: the largest class's count, or ``--balance-to``). Its *own rows* are
drawn once per run, keyed by the seed: class c's M rows are concatenated
random permutations of its rows, so each of its rows is used
``floor(M / n_c)`` or ``ceil(M / n_c)`` times (a random subset of them, without
repetition, when M < n_c). They are sorted by input row, so that the
``C x M`` rows of a copy come in input order and each block of them lies in
a short range of the input.

The plan then runs on these rows as if they were the dataset (its ``n_rows``
is ``C x M``): ``view`` gives a source whose row ``v`` is input row
``own[v]``, read by index; blocks, pairings, copies and digests work on it
unchanged. The provenance maps back to input rows: ``partner`` is the input
row of the partner, and a third array ``own`` records each output row's own
input row, since it is no longer ``i % N``. The same own rows serve every
copy (each copy draws its own ``lam`` and partners).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mixup_cli.core.errors import ParameterError
from mixup_cli.io.base import ArraySpec
from mixup_cli.targets.classes import ClassIndex

_BALANCE = 3  # key purpose of the own rows' draw (sampling uses 0-2)
# The own rows are held in memory (8 bytes each): at most this many (1 GiB), whatever --balance-to asks.
MAX_ROWS = 2**27


def own_rows(classes: ClassIndex, seed: int, per_class: int | None = None) -> np.ndarray:
    """The input row of every balanced row, sorted (int64)."""
    from mixup_cli.mixing.sampling import keyed_rng

    m = int(classes.counts.max()) if per_class is None else int(per_class)
    _check_rows(classes.n_classes, m, per_class is not None)
    parts = []
    for c in range(classes.n_classes):
        start, count = int(classes.offsets[c]), int(classes.counts[c])
        rows = np.sort(classes.order[start : start + count]).astype(np.int64)
        rng = keyed_rng(seed, _BALANCE, c)
        picks = np.concatenate([rng.permutation(count) for _ in range(-(-m // count))])[:m]
        parts.append(rows[picks])
    return np.sort(np.concatenate(parts))


def _check_rows(n_classes: int, m: int, given: bool) -> None:
    if n_classes * m > MAX_ROWS:
        what = f"--balance-to {m}" if given else f"--balance (the largest class's {m:,} rows)"
        raise ParameterError(
            f"{what} makes {n_classes} x {m:,} = {n_classes * m:,} balanced rows, more than the "
            f"{MAX_ROWS:,} a run holds (8 bytes each in memory); lower --balance-to, and use --copies "
            "for more output rows",
            "--balance-to" if given else "--balance",
        )


def check(pairing: str, balance: bool, balance_to: int | None, y_key: str | None) -> bool:
    """Whether the run is balanced; refuses what cannot be."""
    if balance_to is not None and int(balance_to) < 1:
        raise ParameterError(f"--balance-to must be an integer >= 1, got {balance_to!r}", "--balance-to")
    if balance_to is not None:
        _check_rows(1, int(balance_to), True)  # before the pass over y: one class is enough to refuse it
    if not (balance or balance_to is not None):
        return False
    from mixup_cli.mixing.sampling import INDEX_PAIRINGS

    if pairing in INDEX_PAIRINGS:
        raise ParameterError(
            f"--balance repeats rows of the smaller classes, which --pairing {pairing} would pair with their "
            "own copies; use --pairing global, batch, within-class or between-class with --balance",
            "--balance",
        )
    if y_key is None:
        raise ParameterError("--balance needs class labels; name them with --y-key", "--balance")
    return True


class BalancedReader:
    """Row ``v`` of every array is row ``own[v]`` of ``inner`` (read by index)."""

    def __init__(self, inner, own: np.ndarray):
        self._inner, self._own = inner, own
        self.path = inner.path
        self.format_name = inner.format_name

    def keys(self):
        return self._inner.keys()

    def spec(self, key: str) -> ArraySpec:
        spec = self._inner.spec(key)
        return ArraySpec((len(self._own),) + spec.row_shape, spec.dtype)

    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        return self._inner.take(key, self._own[start:stop])

    def read_into(self, key: str, start: int, stop: int, out: np.ndarray) -> None:
        np.copyto(out[: stop - start], self.read(key, start, stop))

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        return self._inner.take(key, self._own[np.asarray(rows)])

    def describe(self, key: str) -> dict:
        return self._inner.describe(key)

    def take_inflates(self, key: str) -> bool:
        return self._inner.take_inflates(key)

    def files(self):
        return self._inner.files()

    def close(self) -> None:
        self._inner.close()


def view(source, plan):
    """``source`` as the plan sees it: itself, or (balanced plan) its own rows."""
    return rows_view(source, getattr(plan, "own", None))


def rows_view(source, own: np.ndarray | None):
    """``source`` whose row ``v`` is its row ``own[v]`` (itself when ``own`` is None)."""
    if own is None or isinstance(source.reader, BalancedReader):
        return source
    specs = {key: ArraySpec((len(own),) + spec.row_shape, spec.dtype) for key, spec in source.specs.items()}
    return dataclasses.replace(source, reader=BalancedReader(source.reader, own), specs=specs)
