"""What the documented law of a run implies for its output's own provenance
arrays, tested from those arrays alone: ``mixup verify``'s ``law`` check.

The recomputation proves the output is what the plan computes; this proves
the plan computes what the README says, by a path that shares nothing with
the planner: the rows are fed in output order (``Law.add``: each mixed row's
own input row, partner and lam) and ``Law.result`` tests, at a false-alarm
rate of ``FALSE_ALARM`` (1e-6) under the law:

* ``global`` (plan version 2): partners i.i.d. uniform over the N rows.
  (a) partner counts over up to 4,096 bins of consecutive rows against the
  bins' shares (Pearson chi-square, two-sided: too even fails too, at least
  10 expected per bin); (b) the table of own-row group against partner-row
  group (up to 16 groups, at least 5 expected per cell) against independence;
  (c) the share of partners in the row's own block against the blocks'
  sizes, by Bernstein's inequality (exact for any sum of independent
  indicators, no approximation).
* ``batch``: each group's partners, per copy, are its own rows, each once
  (a permutation of the group): checked exactly. A group is a block, or
  (plan version 2) the last two blocks when the last is shorter than half a
  block. With ``--groups`` the same check, and ``GroupLaw``'s (every partner
  in its row's group) make it a permutation of each (block, group) cell.
* ``within-class`` / ``between-class``: every partner's class is (is not) its
  row's, exactly, from the input's labels (``classes``).
* lam (``--method mixup``): Beta(alpha, alpha), chi-square over 20 bins of
  equal probability under it (at least 100 rows).

Memory: the bins, the table and, for class pairings, the labels (O(N)
integers, as the class pairings' own index). Plan version 1's ``global``
(the block cycle) is not tested: its law is the one that version documented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FALSE_ALARM = 1e-6
MAX_BINS = 4096
MAX_GROUPS = 16
LAM_BINS = 20


# The lower tail ("too even") is tested from this many degrees of freedom on.
# Counts are discrete: with few cells, equal or nearly equal counts are far
# likelier than the continuous chi-square law says (2 cells of 10 expected
# rows: counts 10 and 10 have probability 0.18, where the law gives 0; 10
# cells: 1e-8 for all equal, about 2e-6 for one pair off by one, both read
# as p ~ 0). From 19 (20 cells of 5 or more rows) the exact probability of all
# equal counts is below 1e-13, and at p = 1e-3, 1e-4 and 1e-5 simulated rates
# of the lower tail match the law within 1.5x.
LOWER_TAIL_MIN_DF = 19


def chi2_two_sided(observed, expected, df: int) -> float:
    """P-value of Pearson's chi-square: two-sided (upper tail: too far;
    lower: too even) from ``LOWER_TAIL_MIN_DF`` degrees of freedom, else the
    upper tail alone."""
    from scipy.special import gammainc, gammaincc

    observed, expected = np.asarray(observed, float).ravel(), np.asarray(expected, float).ravel()
    stat = float(np.sum((observed - expected) ** 2 / expected))
    upper = float(gammaincc(df / 2, stat / 2))
    if df < LOWER_TAIL_MIN_DF:
        return upper
    return 2 * min(upper, float(gammainc(df / 2, stat / 2)))


def bernstein_bound(variance: float, alpha: float = FALSE_ALARM) -> float:
    """t with P(|S - E S| >= t) <= alpha for S a sum of independent indicators
    of total variance ``variance`` (Bernstein: 2 exp(-t^2 / (2 v + 2 t / 3)))."""
    log = math.log(2 / alpha)
    return log / 3 + math.sqrt((log / 3) ** 2 + 2 * variance * log)


@dataclass
class Law:
    """The law's tests, fed the output's mixed rows in order."""

    pairing: str
    n_rows: int  # N: the rows partners are drawn from
    block_rows: int
    alpha: float
    mixed_rows: int  # rows that will be fed (copies x N)
    lam_is_beta: bool = True  # CutMix corrects lam to its box: not Beta
    classes: np.ndarray | None = None  # class of every input row (class pairings)
    # False: the partners are drawn over rows other than the input's (--balance), not tested but by class
    partner_law: bool = True
    version: int = 2  # the plan version (1: batch groups are the blocks, tail included)
    problems: list[str] = field(default_factory=list)
    # batch on a set's output: the rows [lo, hi) of the pair groups that lie whole in it (None: every row)
    batch_window: tuple[int, int] | None = None

    def __post_init__(self):
        n, m = self.n_rows, self.mixed_rows
        self.bins = min(n, MAX_BINS, m // 10) if self.pairing == "global" and self.partner_law else 0
        self.partner_bins = np.zeros(max(self.bins, 1), np.int64)
        groups = min(MAX_GROUPS, n, int(math.sqrt(m / 10))) if self.pairing == "global" and self.partner_law else 0
        self.groups = groups if groups >= 2 else 0
        self.table = np.zeros((max(self.groups, 1),) * 2, np.int64)
        self.own_block = [0, 0.0, 0.0]  # hits, expected, variance
        self.lam_counts = np.zeros(LAM_BINS, np.int64)
        self.lam_rows = 0
        self.batch_bad: tuple[int, int] | None = None
        self._pending: tuple[np.ndarray, np.ndarray, int] | None = None  # rows of a group not complete yet
        self.class_bad: int | None = None
        self.rows_seen = 0

    def add(self, own: np.ndarray, partner: np.ndarray, lam: np.ndarray, at: int, mixed=None) -> None:
        """Mixed rows: each one's own input row, partner and lam; ``at`` is the
        first one's output row (for messages); ``mixed``: which rows' lam is
        Beta (``batch`` with --groups: rows alone in their cell have lam 1)."""
        own, partner = np.asarray(own, np.int64), np.asarray(partner, np.int64)
        if self.lam_is_beta:
            lam = np.asarray(lam, np.float64)
            self._lam(lam if mixed is None else lam[mixed])
        if self.pairing == "global" and self.partner_law:
            self._global(own, partner)
        elif self.pairing == "batch" and self.partner_law:
            self._batch(own, partner, at)
        elif self.classes is not None and self.class_bad is None:
            same = self.classes[partner] == self.classes[own]
            bad = np.flatnonzero(~same if self.pairing == "within-class" else same)
            if len(bad):
                self.class_bad = at + int(bad[0])
        self.rows_seen += len(own)

    def _lam(self, lam: np.ndarray) -> None:
        from scipy.special import betaincinv

        if not hasattr(self, "_edges"):
            q = np.arange(1, LAM_BINS) / LAM_BINS
            self._edges = betaincinv(self.alpha, self.alpha, q)
        self.lam_counts += np.bincount(np.searchsorted(self._edges, lam, side="right"), minlength=LAM_BINS)
        self.lam_rows += len(lam)

    def _global(self, own: np.ndarray, partner: np.ndarray) -> None:
        n = self.n_rows
        if self.bins:
            self.partner_bins += np.bincount(partner * self.bins // n, minlength=self.bins)
        if self.groups:
            g = self.groups
            np.add.at(self.table, (own * g // n, partner * g // n), 1)
        b = self.block_rows
        if n > b:
            size = np.minimum((own // b + 1) * b, n) - own // b * b
            p = size / n
            self.own_block[0] += int(np.sum(own // b == partner // b))
            self.own_block[1] += float(p.sum())
            self.own_block[2] += float(np.sum(p * (1 - p)))

    def group_stop(self, row: int) -> int:
        """The end of the batch pairing group that starts at ``row``."""
        n, b = self.n_rows, self.block_rows
        stop = min(n, row + b)
        if self.version >= 2 and stop < n and 2 * (n - stop) < b:
            return n  # a short last block goes with the one before it
        return stop

    def _batch(self, own: np.ndarray, partner: np.ndarray, at: int) -> None:
        """Rows fed in order, groups whole or continued by the next call: each
        group's partners are its rows, once."""
        if self.batch_window is not None:  # a set's output: the groups that lie whole in it
            inside = np.flatnonzero((own >= self.batch_window[0]) & (own < self.batch_window[1]))
            if not len(inside):
                return
            own, partner, at = own[inside[0] : inside[-1] + 1], partner[inside[0] : inside[-1] + 1], at + int(inside[0])
        if self._pending is not None:
            p_own, p_partner, at = self._pending
            own, partner = np.concatenate([p_own, own]), np.concatenate([p_partner, partner])
            self._pending = None
        s = 0
        while s < len(own) and self.batch_bad is None:
            first = int(own[s])
            e = s + self.group_stop(first) - first
            if e > len(own):  # the rest of the group comes with the next rows
                self._pending = (own[s:], partner[s:], at + s)
                return
            if not np.array_equal(np.sort(partner[s:e]), np.arange(first, first + e - s)):
                self.batch_bad = (at + s, first // self.block_rows)
            s = e

    def result(self) -> tuple[bool, str]:
        """Whether the rows fed are plausible under the law, and a line saying what was tested."""
        tested = self._tests()
        if self.problems:
            return False, "; ".join(self.problems) + f" (p < {FALSE_ALARM:g} under the documented law)"
        if not tested:
            return True, f"{self.rows_seen} rows: too few to test the law of --pairing {self.pairing}"
        return (
            True,
            f"{self.rows_seen} mixed rows plausible under --pairing {self.pairing} (tested: {', '.join(tested)})",
        )

    def _tests(self) -> list[str]:
        tested: list[str] = []
        if self.lam_is_beta and self.lam_rows >= 5 * LAM_BINS:
            expected = np.full(LAM_BINS, self.lam_rows / LAM_BINS)
            if chi2_two_sided(self.lam_counts, expected, LAM_BINS - 1) < FALSE_ALARM:
                self.problems.append(f"lam does not follow Beta({self.alpha:g}, {self.alpha:g})")
            tested.append("lam")
        if self.pairing == "global" and self.partner_law:
            tested += self._global_result()
        elif self.pairing == "batch" and self.partner_law:
            if self.batch_bad is not None:
                row, block = self.batch_bad
                self.problems.append(
                    f"output rows from {row}: the partners of the rows of block {block} (and the short last "
                    "block, when it goes with it) are not a permutation of those rows"
                )
            tested.append("partners within their group of rows, each row once")
        elif self.classes is not None:
            if self.class_bad is not None:
                what = "another class" if self.pairing == "within-class" else "its own class"
                self.problems.append(f"output row {self.class_bad}: its partner is of {what}")
            tested.append("partner classes")
        return tested

    def _global_result(self) -> list[str]:
        tested, n = [], self.n_rows
        if self.bins >= 2:
            sizes = np.bincount(np.arange(n) * self.bins // n, minlength=self.bins)
            expected = self.rows_seen * sizes / n
            if chi2_two_sided(self.partner_bins, expected, self.bins - 1) < FALSE_ALARM:
                spread = float(np.sum((self.partner_bins - expected) ** 2 / expected))
                top = int(np.argmax(self.partner_bins / expected))
                if spread < self.bins - 1:  # the lower tail
                    self.problems.append(
                        "partner counts are more even than independent uniform draws give (each row about "
                        "equally often: a permutation?)"
                    )
                else:
                    self.problems.append(
                        f"partner counts are not those of rows drawn uniformly: rows {top * n // self.bins}-"
                        f"{(top + 1) * n // self.bins - 1} are partners {self.partner_bins[top]} times where "
                        f"{expected[top]:.1f} are expected"
                    )
            tested.append("partner counts")
        if self.groups:
            g = self.groups
            sizes = np.bincount(np.arange(n) * g // n, minlength=g)
            expected = self.table.sum(axis=1, keepdims=True) * sizes[None, :] / n
            keep = expected.sum(axis=1) > 0
            if chi2_two_sided(self.table[keep], expected[keep], int(keep.sum()) * (g - 1)) < FALSE_ALARM:
                self.problems.append("a row's partner depends on where the row is (own and partner row groups)")
            tested.append("partner independent of the row")
        hits, mean, variance = self.own_block
        if mean > 0:
            if abs(hits - mean) >= bernstein_bound(variance):
                self.problems.append(
                    f"{hits / self.rows_seen:.3f} of partners are in their row's own block where uniform "
                    f"pairing gives {mean / self.rows_seen:.3f}"
                )
            tested.append("own-block share")
        return tested


@dataclass
class GroupLaw:
    """``--groups``: the constraint and the law inside the group, from the
    input's group ids (and classes) alone, none of ``groups.GroupIndex``.

    Every output row's ``group`` is its own row's id; a mixed row's partner
    is in its row's group (and of its class / of another class); a row whose
    pool is empty (no other row of its group; of its class and group for
    ``within-class``; of its group and another class for ``between-class``)
    is paired with itself with lam 1; the partner's rank in the row's pool,
    in 20 bins of the pool, against uniform draws from the pool (Pearson's
    chi-square, upper tail: rows with pools of unequal sizes make the counts
    less spread than a multinomial's, so the upper tail stays conservative).
    """

    pairing: str
    ids: np.ndarray  # the input's group id of every row
    classes: np.ndarray | None = None  # class of every input row (class pairings; None: not known)
    excluded: np.ndarray | None = None  # rows held out (--exclude-rows): in no row's pool
    problems: list[str] = field(default_factory=list)
    # --balance: how many times each input row is among the rows partners are
    # drawn from (the balanced rows of a copy, OUT's 'own'); None: each row once
    weights: np.ndarray | None = None

    def __post_init__(self):
        if self.weights is not None:
            self._index_slots()
            return
        values, self.code = np.unique(self.ids, return_inverse=True)
        self.code = self.code.reshape(-1)
        self.written = self.ids if values.dtype.kind in "iu" else self.code  # what 'group' holds
        if self.excluded is not None and len(self.excluded):  # each a group of its own: no pool holds them
            held = self.excluded[self.excluded < len(self.code)]
            self.code = self.code.copy()
            self.code[held] = len(values) + np.arange(len(held))
            self.code = np.unique(self.code, return_inverse=True)[1].reshape(-1)  # dense again
        n = len(self.code)
        cls = np.zeros(n, np.int64) if self.classes is None else np.asarray(self.classes, np.int64)
        self.cls = cls
        order = np.lexsort((np.arange(n), cls, self.code))
        self.pos = np.empty(n, np.int64)
        self.pos[order] = np.arange(n)
        _, group_first, group_count = np.unique(self.code[order], return_index=True, return_counts=True)
        cell = self.code[order] * (int(cls.max()) + 1 if n else 1) + cls[order]
        _, cell_inverse, cell_count = np.unique(cell, return_inverse=True, return_counts=True)
        cell_first = np.concatenate(([0], np.cumsum(cell_count)[:-1]))
        self.cell_first = np.empty(n, np.int64)
        self.cell_first[order] = cell_first[cell_inverse.reshape(-1)]
        self.cell_count = np.empty(n, np.int64)
        self.cell_count[order] = cell_count[cell_inverse.reshape(-1)]
        self.group_first = group_first[self.code]
        self.group_count = group_count[self.code]
        by_cell = self.pairing == "within-class" and self.classes is not None
        self.same = self.pairing != "between-class"
        self.pools_known = self.pairing == "global" or self.classes is not None
        if self.same and not by_cell:  # global (or classes unknown): the group is the pool
            self.cell_first, self.cell_count = self.group_first, self.group_count
        self.bins = np.zeros(LAM_BINS, np.int64)
        self.expected = np.zeros(LAM_BINS)
        self.bad: dict[str, int] = {}

    def _index_slots(self) -> None:
        """--balance: the pools are the balanced rows, a row as many times as it
        was drawn (its slots, contiguous). ``pos`` is the place of a row's first
        slot in the (group, class, row) order; a partner's rank in its pool is
        that of its first slot, and ``_slot_law`` gives the law of that rank."""
        values, code = np.unique(self.ids, return_inverse=True)
        self.code = code.reshape(-1)
        self.written = self.ids if values.dtype.kind in "iu" else self.code
        n = len(self.code)
        cls = np.zeros(n, np.int64) if self.classes is None else np.asarray(self.classes, np.int64)
        self.cls = cls
        weights = np.zeros(n, np.int64)
        weights[: len(self.weights)] = np.asarray(self.weights, np.int64)[:n]
        rows = np.repeat(np.arange(n), weights)
        order = rows[np.lexsort((rows, cls[rows], self.code[rows]))]  # the slots, in pool order
        self.slot_rows = order
        self.pos = np.full(n, -1, np.int64)
        self.pos[order[::-1]] = np.arange(len(order))[::-1]  # each row's first slot
        code_of, cell_of = self.code[order], self.code[order] * (int(cls.max()) + 1 if n else 1) + cls[order]
        self.group_first, self.group_count = self._runs(code_of, order, n)
        self.cell_first, self.cell_count = self._runs(cell_of, order, n)
        self.same = self.pairing != "between-class"
        by_cell = self.pairing == "within-class" and self.classes is not None
        self.pools_known = self.pairing == "global" or self.classes is not None
        if self.same and not by_cell:
            self.cell_first, self.cell_count = self.group_first, self.group_count
        self.bins, self.expected, self.bad, self._laws = np.zeros(LAM_BINS, np.int64), np.zeros(LAM_BINS), {}, {}

    @staticmethod
    def _runs(keys: np.ndarray, order: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per input row: where the run of slots of its key starts, and its length (0 for rows without slots)."""
        first, count = np.zeros(n, np.int64), np.zeros(n, np.int64)
        if len(keys):
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            lengths = np.diff(np.r_[starts, len(keys)])
            run = np.repeat(np.arange(len(starts)), lengths)
            first[order], count[order] = starts[run], lengths[run]
        return first, count

    def _slot_law(self, own: int) -> np.ndarray:
        """--balance: the law of the binned rank of a partner drawn uniformly
        from the slots of ``own``'s pool (the rank of the drawn row's first slot)."""
        start, count = int(self.cell_first[own]), int(self.cell_count[own])
        if self.same:
            pool = self.slot_rows[start : start + count]
        else:
            g = int(self.group_first[own])
            group = self.slot_rows[g : g + int(self.group_count[own])]
            pool = np.concatenate([group[: start - g], group[start - g + count :]])
        first = np.flatnonzero(np.r_[True, pool[1:] != pool[:-1]]) if len(pool) else np.zeros(0, np.int64)
        rank = np.repeat(first, np.diff(np.r_[first, len(pool)]))
        return np.bincount(rank * LAM_BINS // max(len(pool), 1), minlength=LAM_BINS) / max(len(pool), 1)

    def reset(self) -> None:
        """Forget the rows fed (the index over the input is kept): the next output's check."""
        self.bins, self.expected, self.bad = np.zeros(LAM_BINS, np.int64), np.zeros(LAM_BINS), {}

    def _flag(self, what: str, rows: np.ndarray, at: int) -> None:
        if len(rows) and what not in self.bad:
            self.bad[what] = at + int(rows[0])

    def check_groups(self, own: np.ndarray, group: np.ndarray, at: int) -> None:
        """Output rows ``at...``: their ``group`` is their own row's id."""
        self._flag("its 'group' is not its own row's group id", np.flatnonzero(self.written[own] != group), at)

    def add(self, own: np.ndarray, partner: np.ndarray, lam: np.ndarray, at: int) -> np.ndarray:
        """Mixed rows; returns which of them drew a partner (the others are alone)."""
        own, partner = np.asarray(own, np.int64), np.asarray(partner, np.int64)
        outside = (partner < 0) | (partner >= len(self.code))
        self._flag("its partner is no row of the input", np.flatnonzero(outside), at)
        partner = np.where(outside, own, partner)
        self._flag("its partner is in another group", np.flatnonzero(self.code[partner] != self.code[own]), at)
        if not self.pools_known:  # class pairings on classes not read (names), knn, label-kernel, batch
            if self.pairing in ("knn", "label-kernel"):  # the pool is the group: alone when it holds one row
                lone = self.group_count[own] <= 1
                wrong = (lone & ((partner != own) | (np.asarray(lam) != 1.0))) | (~lone & (partner == own))
                self._flag(
                    "it is paired with itself though not alone in its group, or alone but not left unmixed",
                    np.flatnonzero(wrong),
                    at,
                )
            return ~((partner == own) & (np.asarray(lam) == 1.0))
        pool = self.cell_count[own] if self.same else self.group_count[own] - self.cell_count[own]
        alone = pool <= 1 if self.same else pool == 0
        wrong = alone & ((partner != own) | (np.asarray(lam) != 1.0))
        self._flag("it has no partner in its group but is not paired with itself with lam 1", np.flatnonzero(wrong), at)
        drew = ~alone & (self.code[partner] == self.code[own])
        if self.weights is not None:  # --balance: partners are balanced rows
            unbalanced = drew & (self.pos[partner] < 0)
            self._flag("its partner is none of the balanced rows ('own')", np.flatnonzero(unbalanced), at)
            drew &= ~unbalanced
        if self.classes is not None and self.pairing != "global":
            same = self.cls[partner] == self.cls[own]
            off = drew & (~same if self.same else same)
            self._flag(f"its partner is of {'another' if self.same else 'its own'} class", np.flatnonzero(off), at)
            drew &= ~off
        if self.same:
            rank = self.pos[partner] - self.cell_first[own]
        else:
            later = self.cls[partner] > self.cls[own]
            rank = self.pos[partner] - self.group_first[own] - np.where(later, self.cell_count[own], 0)
        rank, pool = rank[drew], pool[drew]
        self.bins += np.bincount(rank * LAM_BINS // pool, minlength=LAM_BINS)
        if self.weights is not None:  # --balance: each pool's own law of the rank
            cells, first, rows = np.unique(self.cell_first[own[drew]], return_index=True, return_counts=True)
            for cell, i, k in zip(cells.tolist(), first.tolist(), rows.tolist()):
                if cell not in self._laws:
                    self._laws[cell] = self._slot_law(int(own[drew][i]))
                self.expected += k * self._laws[cell]
            return ~alone
        sizes, rows = np.unique(pool, return_counts=True)
        for m, k in zip(sizes.tolist(), rows.tolist()):
            self.expected += k * np.bincount(np.arange(m) * LAM_BINS // m, minlength=LAM_BINS) / m
        return ~alone

    def result(self) -> tuple[list[str], list[str]]:
        """The problems found, and what was tested."""
        problems = [f"output row {row}: {what}" for what, row in self.bad.items()]
        tested = ["partners inside their group"]
        if not self.pools_known:
            return problems, tested
        observed, expected = _merged(self.bins, self.expected, 10)
        if len(expected) >= 2:
            from scipy.special import gammaincc

            stat = float(np.sum((observed - expected) ** 2 / expected))
            if float(gammaincc((len(expected) - 1) / 2, stat / 2)) < FALSE_ALARM:
                problems.append(
                    f"partners are not drawn uniformly from the row's group (p < {FALSE_ALARM:g} under the documented law)"
                )
            tested.append("partner uniform in the group")
        return problems, tested


def _merged(observed: np.ndarray, expected: np.ndarray, least: float) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent bins merged, left to right, until each expects at least ``least`` (a short rest joins the last)."""
    cuts, total = [], 0.0
    for i, e in enumerate(expected):
        total += e
        if total >= least:
            cuts.append(i + 1)
            total = 0.0
    if not cuts:
        return observed[:0], expected[:0]
    cuts[-1] = len(expected)
    starts = [0] + cuts[:-1]
    return (
        np.array([observed[a:b].sum() for a, b in zip(starts, cuts)]),
        np.array([expected[a:b].sum() for a, b in zip(starts, cuts)]),
    )


class Excluded:
    """``--exclude-rows``: no output row's own row or partner is a row the file lists (exact)."""

    def __init__(self, rows: np.ndarray | None, problem: str | None = None):
        self.rows, self.problem, self.seen = rows, problem, 0

    def add(self, own: np.ndarray, partner: np.ndarray, at: int) -> None:
        if self.rows is None or self.problem is not None:
            return
        for what, rows in (("its own row", own), ("its partner", partner)):
            hit = np.flatnonzero(np.isin(np.asarray(rows, np.int64), self.rows))
            if len(hit) and self.problem is None:
                row = int(np.asarray(rows)[hit[0]])
                self.problem = (
                    f"output row {at + int(hit[0])}: {what} is input row {row}, which --exclude-rows holds out"
                )
        self.seen += len(own)

    def result(self) -> tuple[str | None, str]:
        count = 0 if self.rows is None else len(self.rows)
        return self.problem, f"--exclude-rows: none of the {count} rows held out used"
