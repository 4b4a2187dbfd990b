"""Partners by label distance, for ``--pairing label-kernel`` (C-Mixup).

For dense float targets ``y``, row i's partner j != i is drawn with
probability proportional to ``exp(-|y_i - y_j|^2 / (2 S^2))``, S the
bandwidth, keyed by ``(seed, copy, block)`` like the other pairings and read
by index.

One-dimensional y (shape (N,) or (N, 1)): the rows are sorted by label once
(ties by row index); a row's candidates are the rows whose label is within
``4 S`` of its own, a contiguous window of the sorted order, weighted with
the exact kernel, and its partner is drawn by the inverse CDF over that
window. Rows farther than 4 S are left out: each of them would weigh less
than ``e^-8 = 3.4e-4`` of a row with the same label, so the truncation
moves a row's law by at most that factor times the share of rows beyond 4 S
over the window's total weight. Cost: the window's rows, per row drawn; a
bandwidth wide enough to take in most of the data makes it O(N^2) per copy.
A row with no other row in its window takes the row of nearest label (ties:
the lower row index).

Plan version 2 bounds what the window leaves out: a row whose left-out
mass may exceed ``MAX_LEFT_OUT`` (1e-3) of its window's (the rows outside,
counted, times e^-8 each) has its window widened, weights taken relative to
its nearest row's, doubling the exponent (radius^2 = d0^2 + 2 S^2 t, t = 16,
32, ...) until the rows outside weigh at most that share, or the window holds
every row (the exact law): its partner law is then within 1e-3 (total
variation) of the exact kernel's, an isolated label's included. Version 1
(``max_left_out=None``) keeps the plain 4 S window.

Multi-dimensional y (shape (N, d)): the law is exact, over every other row
(Euclidean distance of the target rows), which costs O(N^2 d) per copy; it is
accepted up to ``EXACT_MAX_ROWS`` rows and refused above.

Memory: the targets as float64 (N x d x 8 bytes) and, for 1-D y, the sorted
labels, the sort order and its inverse (N x 24 bytes more), for the length of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError

WINDOW = 4.0  # half-width of a row's window, in bandwidths
MAX_LEFT_OUT = 1e-3  # plan version 2: the window's left-out mass, at most this share of its own
EXACT_MAX_ROWS = 20_000
# Kernel weights computed at once (float64 each, a few arrays of them).
_CHUNK = 1 << 22
_READ_BYTES = 16 * 1024 * 1024
_KIND_WORDS = {"classes": "class", "binary": "binary (0/1)", "multilabel": "multi-label"}


def check_bandwidth(bandwidth) -> float:
    try:
        s = float(bandwidth)
    except (TypeError, ValueError):
        s = float("nan")
    if not (np.isfinite(s) and s > 0):
        raise ParameterError(f"--bandwidth must be a number > 0, got {bandwidth!r}", "--bandwidth")
    if not (np.isfinite(2 * s * s) and 2 * s * s >= np.finfo(np.float64).tiny):
        # The kernel divides by 2 S^2: it must be a finite, non-zero float.
        raise ParameterError(
            f"--bandwidth {bandwidth}: too {'large' if s > 1 else 'small'} to compute with "
            "(2 x S^2 must be a finite, non-zero number: S between about 1e-154 and 1e154); "
            "give it in the units of y",
            "--bandwidth",
        )
    return s


@dataclass(frozen=True, eq=False)
class LabelKernel:
    bandwidth: float
    y: np.ndarray  # (N,) for 1-D labels, else (N, d); float64
    order: np.ndarray | None = None  # 1-D: rows sorted by label (stable)
    rank: np.ndarray | None = None  # 1-D: position of each row in ``order``
    sorted_y: np.ndarray | None = None  # 1-D: the labels in ``order``
    max_left_out: float | None = None  # plan version 2: MAX_LEFT_OUT (None: the plain window of version 1)
    # --groups: the group code of each row; 1-D: ``order`` sorts by (group, label),
    # and each sorted position's group spans ``[seg_first, seg_stop)`` of it.
    codes: np.ndarray | None = None
    seg_first: np.ndarray | None = None
    seg_stop: np.ndarray | None = None

    @classmethod
    def from_targets(
        cls, y: np.ndarray, bandwidth: float, label: str = "y", max_left_out=None, groups=None
    ) -> LabelKernel:
        s = check_bandwidth(bandwidth)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim > 2:
            raise InputError(
                f"{label}: has shape {y.shape}; --pairing label-kernel needs targets of shape (N,) or (N, d)"
            )
        if not np.all(np.isfinite(y)):
            raise InputError(f"{label}: holds NaN or Inf; --pairing label-kernel needs finite targets")
        if len(y) < 2:
            raise InputError(f"{label}: has {len(y)} row; --pairing label-kernel needs at least two rows")
        if y.ndim == 1 and groups is not None:
            return cls._grouped(s, y, np.asarray(groups, np.int64), max_left_out)
        if y.ndim == 1:
            order = np.argsort(y, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(y))
            return cls(s, y, order, rank, y[order], max_left_out)
        if len(y) > EXACT_MAX_ROWS:
            raise ParameterError(
                f"--pairing label-kernel: {label} has {len(y)} rows of {y.shape[1]} values; the exact law over "
                f"multi-dimensional targets costs N^2 and is accepted up to {EXACT_MAX_ROWS} rows "
                "(one-dimensional targets have no such limit)",
                "--pairing",
            )
        return cls(s, y, codes=None if groups is None else np.asarray(groups, np.int64))

    @classmethod
    def _grouped(cls, s: float, y: np.ndarray, codes: np.ndarray, max_left_out) -> LabelKernel:
        """1-D labels with --groups: rows sorted by (group, label), ties by row."""
        order = np.lexsort((y, codes))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(y))
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        sizes = np.diff(np.r_[starts, len(y)])
        first = np.repeat(starts, sizes)
        return cls(s, y, order, rank, y[order], max_left_out, codes, first, first + np.repeat(sizes, sizes))

    def draw_in_groups(self, rng: np.random.Generator, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """--groups: partners by the kernel over the rows of the row's group, and
        which rows are alone in theirs (paired with themselves)."""
        rows = np.arange(start, stop)
        if self.seg_first is not None:
            at = self.rank[rows]
            alone = self.seg_stop[at] - self.seg_first[at] <= 1
        else:
            alone = np.bincount(self.codes)[self.codes[rows]] <= 1
        partner = self.draw_partners(rng, start, stop)
        partner[alone] = rows[alone]
        return partner, alone

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def draw_partners(self, rng: np.random.Generator, start: int, stop: int) -> np.ndarray:
        u = rng.random(stop - start)
        if self.y.ndim == 1:
            return self._draw_sorted(u, start, stop)
        return self._draw_exact(u, start, stop)

    def _draw_sorted(self, u: np.ndarray, start: int, stop: int) -> np.ndarray:
        ys = self.sorted_y
        rows = np.arange(start, stop)
        yi = self.y[rows]
        p = self.rank[rows]
        half = WINDOW * self.bandwidth
        lo = self._search(ys, yi - half, "left", p)
        hi = self._search(ys, yi + half, "right", p)
        pool = len(ys) if self.seg_first is None else self.seg_stop[p] - self.seg_first[p]
        out = np.empty(len(rows), dtype=np.int64)
        lengths = hi - lo
        s = 0
        while s < len(rows):  # pieces of at most _CHUNK weights (at least one row)
            ends = np.cumsum(lengths[s:])
            e = s + max(1, int(np.searchsorted(ends, _CHUNK, side="right")))
            out[s:e], total = self._window_pick(ys, u[s:e], yi[s:e], p[s:e], lo[s:e], lengths[s:e])
            if self.max_left_out is not None:
                # rows outside the window: each weighs under e^-8 (WINDOW = 4 bandwidths)
                outside = ((pool if np.isscalar(pool) else pool[s:e]) - lengths[s:e]) * np.exp(-(WINDOW**2) / 2)
                for i in np.flatnonzero(outside > self.max_left_out * total):
                    out[s + i] = self._widened_pick(ys, u[s + i], int(p[s + i]))
            s = e
        return out

    def _search(self, ys, values: np.ndarray, side: str, p: np.ndarray) -> np.ndarray:
        """Sorted positions where ``values`` go (``np.searchsorted``); with
        --groups, inside the group of the row at sorted position ``p``."""
        if self.seg_first is None:
            return np.searchsorted(ys, values, side=side)
        lo, hi = self.seg_first[p].copy(), self.seg_stop[p].copy()
        while True:  # binary search, every row at once, each in its own segment
            active = lo < hi
            if not active.any():
                return lo
            mid = (lo + hi) // 2
            at = ys[np.minimum(mid, len(ys) - 1)]
            right = active & ((at < values) if side == "left" else (at <= values))
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)

    def _widened_pick(self, ys, u: float, p: int) -> int:
        """The partner of the row at sorted position ``p``, from a window
        widened until the rows it leaves out weigh at most ``max_left_out`` of
        it (weights relative to the nearest other row's, so none underflows)."""
        yi, s2 = ys[p], self.bandwidth**2
        first, n = (0, len(ys)) if self.seg_first is None else (int(self.seg_first[p]), int(self.seg_stop[p]))
        d0 = abs(ys[self._nearest_sorted(ys, np.array([p]))[0]] - yi)
        t = 2 * WINDOW**2
        while True:
            radius = np.sqrt(d0**2 + 2 * s2 * t)
            lo = first + int(np.searchsorted(ys[first:n], yi - radius, side="left"))
            hi = first + int(np.searchsorted(ys[first:n], yi + radius, side="right"))
            with np.errstate(over="ignore"):  # the row itself may overflow: it weighs 0 anyway
                w = np.exp(-((ys[lo:hi] - yi) ** 2 - d0**2) / (2 * s2))
            w[p - lo] = 0.0  # never the row itself
            total = float(w.sum())
            if (lo == first and hi == n) or (n - first - (hi - lo)) * np.exp(-t) <= self.max_left_out * total:
                break
            t *= 2
        cs = np.cumsum(w)
        pick = min(int(np.searchsorted(cs, u * total, side="right")), len(w) - 1)
        while w[pick] == 0.0:  # never the row itself, nor a row of no weight
            pick -= 1 if pick > 0 else -1
        return int(self.order[lo + pick])

    def _window_pick(self, ys, u, yi, p, lo, lengths) -> np.ndarray:
        ends = np.cumsum(lengths)
        starts = ends - lengths
        owner = np.repeat(np.arange(len(lengths)), lengths)
        pos = lo[owner] + (np.arange(ends[-1]) - starts[owner])
        w = np.exp(-((ys[pos] - yi[owner]) ** 2) / (2 * self.bandwidth**2))
        w[pos == p[owner]] = 0.0  # never the row itself
        cs = np.cumsum(w)
        base = np.where(starts > 0, cs[starts - 1], 0.0)
        total = cs[ends - 1] - base
        pick = np.searchsorted(cs, base + u * total, side="right")
        pick = np.clip(pick, starts, ends - 1)
        chosen = pos[pick]
        alone = total <= 0
        if alone.any():
            chosen[alone] = self._nearest_sorted(ys, p[alone])
        return self.order[chosen].astype(np.int64), total

    def _nearest_sorted(self, ys, p) -> np.ndarray:
        """Sorted positions of the rows of nearest label (ties: lower row index)."""
        n = len(ys)
        first, last = (0, n - 1) if self.seg_first is None else (self.seg_first[p], self.seg_stop[p] - 1)
        left = np.clip(p - 1, 0, n - 1)
        right = np.clip(p + 1, 0, n - 1)
        dl = np.where(p > first, ys[p] - ys[left], np.inf)
        dr = np.where(p < last, ys[right] - ys[p], np.inf)
        take_left = (dl < dr) | ((dl == dr) & (self.order[left] < self.order[right]))
        return np.where(take_left, left, right)

    def _draw_exact(self, u: np.ndarray, start: int, stop: int) -> np.ndarray:
        n = self.n_rows
        out = np.empty(stop - start, dtype=np.int64)
        # Rows per step sized by the (rows x n x width) differences they take, not by rows alone.
        step = max(1, _CHUNK // (n * max(1, self.y[0].size)))
        for s in range(start, stop, step):
            e = min(stop, s + step)
            d2 = ((self.y[s:e, None, :] - self.y[None, :, :]) ** 2).sum(axis=2)
            d2[np.arange(e - s), np.arange(s, e)] = np.inf  # never the row itself
            if self.codes is not None:  # --groups: never a row of another group
                d2[self.codes[s:e, None] != self.codes[None, :]] = np.inf
            w = np.exp(-d2 / (2 * self.bandwidth**2))
            cs = np.cumsum(w, axis=1)
            total = cs[:, -1]
            pick = np.minimum((cs <= (u[s - start : e - start] * total)[:, None]).sum(axis=1), n - 1)
            alone = total <= 0
            if alone.any():
                pick[alone] = np.argmin(d2[alone], axis=1)  # the nearest label (argmin: lowest index on ties)
            out[s - start : e - start] = pick
        return out


def build(
    reader,
    y_key: str,
    bandwidth: float,
    kind: str | None,
    label: str | None = None,
    max_left_out=MAX_LEFT_OUT,
    groups: np.ndarray | None = None,
) -> LabelKernel:
    """Read the targets (one pass) and index them; refused for class targets.
    ``groups`` (--groups): each row's group code; the kernel over the row's group."""
    label = label or f"{reader.path}['{y_key}']"
    if kind is not None and kind != "dense":
        raise ParameterError(
            f"--pairing label-kernel is for float (regression) targets, but {label} holds {_KIND_WORDS.get(kind, kind)} targets; "
            "for class labels use --pairing within-class or between-class",
            "--pairing",
        )
    spec = reader.spec(y_key)
    y = np.empty(spec.shape, dtype=np.float64)
    step = max(1, _READ_BYTES // max(1, spec.row_bytes))
    for s in range(0, spec.rows, step):
        stopping.check()
        e = min(spec.rows, s + step)
        y[s:e] = reader.read(y_key, s, e)
    if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        raise ParameterError(
            f"--pairing label-kernel is for float (regression) targets, but every row of {label} is one-hot: "
            "class labels; for them use --pairing within-class or between-class",
            "--pairing",
        )
    return LabelKernel.from_targets(y, bandwidth, label, max_left_out, groups)
