"""Keyed randomness and pairing plans.

The input's rows are cut into *blocks* of ``block_rows`` consecutive rows.
Everything random about a block (its rows' lam and partners) comes from a
generator keyed by ``(seed, purpose, copy, block)``, never from a shared
stream, so any block can be computed alone, in any order, on any machine,
and the result does not depend on how many rows are read or written at once.

Pairing modes:

``global``
    Each output row's partner is uniform over all the plan's rows,
    independently of every other row's (i.i.d., with replacement), whatever
    the block layout, the input's order, the batch size or the engine. A
    block's partners are drawn by its own keyed generator, so a block is
    still computed alone; they lie anywhere in the input and are read by
    index (sorted, unique), as the class pairings' are. With one block they
    come from the block itself, in memory.

    Plan version 1 (before ``PLAN_VERSION`` 2) put the blocks in a
    random cycle per copy and took each block's partners from a random
    permutation of the next block's rows: never from a row's own block, and
    a short last block's few rows were the partners of a whole block. That
    law is still computed for sidecars of version 1 (``Plan.version``), so
    their outputs verify.
``batch``
    The reference behaviour: a row's partners, per copy, are a random
    permutation of its block's rows. Plan version 2: a last block shorter
    than half a block is paired together with the block before it (one
    permutation of both: ``pair_group``), so no group of rows is smaller
    than half a block (version 1 left it alone: a one-row tail was its own
    partner).
``within-class`` / ``between-class``
    A row's partner is drawn uniformly from the rows of the same / of any
    other class in the whole dataset (``mixup_cli.targets.classes``), keyed per copy
    and block like the rest. Partners are then read by index (their tasks
    have no partner block).
``knn`` / ``knn-within-class``
    A row's partner is drawn uniformly from its K nearest rows in feature
    space (of the same class), from a ``neighbours.NeighbourIndex``.
``label-kernel``
    C-Mixup: a partner drawn with probability proportional to the Gaussian
    kernel of the label distance (``label_kernel.LabelKernel``).
    These too read their partners by index.

``--groups KEY``: the pairing's law restricted to the row's group
(``groups.GroupIndex``), drawn from the block's same keyed generator after
lam; a row with no partner in its group is paired with itself with lam 1.
``knn`` / ``knn-within-class``: the K nearest rows of the row's group (and
class), all of them where it holds at most K others (``NeighbourIndex.counts``).
``label-kernel``: the kernel over the rows of the row's group. ``batch``: a
random permutation of the rows of each group inside the block's pair group.
Plans without it draw as before.
``--exclude-rows FILE``: the plan runs on the kept rows (``Plan.own``), as a
balanced plan runs on its drawn rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mixup_cli.core.blend import check_alpha, sample_lam
from mixup_cli.core.errors import ParameterError
from mixup_cli.mixing import cutmix
from mixup_cli.targets.classes import ClassIndex

PAIRINGS = ("global", "batch", "within-class", "between-class", "knn", "knn-within-class", "label-kernel")
CLASS_PAIRINGS = ("within-class", "between-class")
KNN_PAIRINGS = ("knn", "knn-within-class")
# Pairings whose partners come from an index over the whole dataset
# (``Plan.partners``), read by index.
INDEX_PAIRINGS = KNN_PAIRINGS + ("label-kernel",)
DEFAULT_NEIGHBORS = 5  # --neighbors when not given
BY_INDEX_PAIRINGS = CLASS_PAIRINGS + INDEX_PAIRINGS
METHODS = ("mixup", "cutmix")

# Bumped whenever the mapping from (seed, parameters) to output changes, so
# that an old sidecar is never silently checked against a new plan.
# 2: ``global`` partners i.i.d. uniform over all rows (1: the block cycle).
# 3: ``--project`` fitted by randomized PCA on a seeded sample (2: IncrementalPCA
# over every row), so knn partners with --project differ; nothing else does.
PLAN_VERSION = 3
# The versions this code computes (a sidecar of any of them verifies).
PLAN_VERSIONS = (1, 2, 3)

# Key "purposes": each use of randomness has its own stream.
_CYCLE = 0
_ROWS = 1
_BOXES = 2
# (3: balance's own rows) 4: the permutation of a batch pairing group of two blocks
_GROUP = 4
# At most this many tasks (blocks x copies) in one run: the resume journal
# and the sidecar's digests keep an entry per block, and a run must not spend
# its first minutes on a plan that would never finish (--copies 1000000000).
MAX_TASKS = 1_000_000
# Blocks aim at this many bytes of x+y rows when --block-rows is not given.
DEFAULT_BLOCK_BYTES = 16 * 1024 * 1024


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the integers in ``key``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def draw_seed() -> int:
    """A fresh seed for runs without --seed (recorded, so they can be repeated)."""
    return int(np.random.SeedSequence().entropy % (2**63))


def default_block_rows(row_bytes: int, target_bytes: int = DEFAULT_BLOCK_BYTES, chunk_rows: int | None = None) -> int:
    """The largest power of two of rows whose bytes stay within ``target_bytes``;
    with ``chunk_rows`` (``--chunk-rows`` without ``--block-rows``), the largest
    multiple of it not above that, and at least one chunk, so chunks divide blocks."""
    rows = max(1, target_bytes // max(1, row_bytes))
    rows = 1 << (int(rows).bit_length() - 1)
    if chunk_rows:
        chunk_rows = int(chunk_rows)
        rows = max(chunk_rows, rows // chunk_rows * chunk_rows)
    return rows


def check_positive(value: int, option: str) -> int:
    if value is None or int(value) < 1:
        raise ParameterError(f"{option} must be an integer >= 1, got {value!r}", option)
    return int(value)


def _cover(rng: np.random.Generator, pool: int, n: int) -> np.ndarray:
    """``n`` offsets into a pool of ``pool`` rows: concatenated random permutations."""
    parts, have = [], 0
    while have < n:
        parts.append(rng.permutation(pool))
        have += pool
    return np.concatenate(parts)[:n] if len(parts) > 1 else parts[0][:n]


@dataclass(frozen=True)
class Task:
    """One unit of work: mix block ``block`` of copy ``copy`` into the output."""

    copy: int  # -1 for the untouched original rows
    block: int
    partner_block: int | None  # None: partners are read by index (class pairings)
    start: int  # first input row of the block
    stop: int
    out_start: int  # first output row it is written to


@dataclass(frozen=True)
class Plan:
    """Everything that decides the output, and nothing that does not."""

    n_rows: int
    alpha: float
    seed: int
    block_rows: int
    pairing: str = "global"
    copies: int = 1
    include_original: bool = False
    # Class of every row, for the class pairings (derived from the input, so
    # not a parameter of its own).
    classes: ClassIndex | None = field(default=None, compare=False, repr=False)
    method: str = "mixup"
    layout: str | None = None  # cutmix only: NHWC, NCHW or NHW (grayscale)
    # knn pairings: neighbours per row, and the projection's dimension (None: none).
    neighbors: int | None = None
    project: int | None = None
    # knn pairings: "approximate" (--neighbor-index approximate: an inverted-file
    # index, approximate.py); None: the exact lists.
    neighbor_index: str | None = None
    # label-kernel: the kernel's bandwidth, in units of y.
    bandwidth: float | None = None
    # The index the INDEX_PAIRINGS draw from (derived from the input), with
    # ``draw_partners(rng, start, stop)``.
    partners: object | None = field(default=None, compare=False, repr=False)
    # --balance: the input row of each of the plan's rows (``balance.own_rows``);
    # the plan's rows are then these, ``n_rows = len(own)``. None: the input's rows.
    balance_to: int | None = None  # rows per class (None: the largest class's count)
    # --balance with --exclude-rows: ``own`` holds the balanced rows drawn among the kept ones
    balance: bool = False
    own: np.ndarray | None = field(default=None, compare=False, repr=False)
    # --exclude-rows FILE: (path, sha256, rows excluded); ``own`` then holds the
    # kept input rows, the plan's rows (``exclude.py``).
    exclude: tuple | None = None
    # --groups KEY: every pair inside one group (``groups.GroupIndex``, derived
    # from the input's KEY array); None: no groups.
    group_key: str | None = None
    groups: object | None = field(default=None, compare=False, repr=False)
    # The plan version computed (``PLAN_VERSIONS``); a sidecar's own for verify and resume.
    version: int = PLAN_VERSION

    def __post_init__(self):
        check_alpha(self.alpha)
        if self.version not in PLAN_VERSIONS:
            raise ValueError(f"plan_version {self.version!r}, this code computes {', '.join(map(str, PLAN_VERSIONS))}")
        if self.method not in METHODS:
            raise ParameterError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}", "--method")
        if self.method != "cutmix":
            object.__setattr__(self, "layout", None)
        elif self.layout not in cutmix.LAYOUTS + (cutmix.GRAYSCALE,):
            raise ParameterError(
                f"--layout must be one of {', '.join(cutmix.LAYOUTS)}, got {self.layout!r}", "--layout"
            )
        if self.pairing not in PAIRINGS:
            raise ParameterError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}", "--pairing")
        check_positive(self.block_rows, "--block-rows")
        check_positive(self.copies, "--copies")
        if self.n_rows < 1:
            raise ValueError("a plan needs at least one row")
        if not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise ParameterError(f"--seed must be an integer >= 0, got {self.seed!r}", "--seed")
        if self.n_tasks > MAX_TASKS:
            raise ParameterError(
                f"--copies {self.copies} of {self.n_blocks} block(s) of {self.block_rows} rows make "
                f"{self.n_tasks:,} tasks, more than the {MAX_TASKS:,} one run can record (one resume "
                "and digest entry each); lower --copies or raise --block-rows",
                "--copies",
            )
        if self.pairing in KNN_PAIRINGS:
            check_positive(self.neighbors, "--neighbors")
            if self.project is not None:
                check_positive(self.project, "--project")
            if self.neighbor_index not in (None, "approximate"):
                raise ParameterError(
                    f"--neighbor-index must be exact or approximate, got {self.neighbor_index!r}", "--neighbor-index"
                )
        elif self.neighbors is not None or self.project is not None or self.neighbor_index is not None:
            option = (
                "--neighbors"
                if self.neighbors is not None
                else "--project"
                if self.project is not None
                else "--neighbor-index"
            )
            raise ParameterError(f"{option} goes with --pairing knn or knn-within-class", option)
        if self.pairing == "label-kernel":
            if not (self.bandwidth is not None and np.isfinite(self.bandwidth) and self.bandwidth > 0):
                raise ParameterError(
                    f"--pairing label-kernel needs --bandwidth S > 0 (in units of y), got {self.bandwidth!r}",
                    "--bandwidth",
                )
        elif self.bandwidth is not None:
            raise ParameterError("--bandwidth goes with --pairing label-kernel", "--bandwidth")
        if self.own is not None and len(self.own) != self.n_rows:
            raise ValueError(f"balanced plan has {len(self.own)} own rows, n_rows {self.n_rows}")
        if self.partners is not None and self.partners.n_rows != self.n_rows:
            raise ValueError(f"partner index has {self.partners.n_rows} rows, the plan {self.n_rows}")
        self._check_groups()
        if self.classes is not None:
            if self.classes.n_rows != self.n_rows:
                raise ValueError(f"class index has {self.classes.n_rows} rows, the plan {self.n_rows}")
            if self.pairing == "between-class":
                self.classes.check_between()

    def _check_groups(self) -> None:
        if self.group_key is None:
            return
        from mixup_cli.mixing import groups

        groups.check(self.pairing, self.group_key, None, None)
        if self.groups is not None and self.groups.n_rows != self.n_rows:
            raise ValueError(f"group index has {self.groups.n_rows} rows, the plan {self.n_rows}")

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_rows)

    @property
    def n_tasks(self) -> int:
        return self.n_blocks * (self.copies + int(self.include_original))

    @property
    def output_rows(self) -> int:
        return self.n_rows * (self.copies + int(self.include_original))

    def block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(self.n_rows, start + self.block_rows)

    def copy_offset(self, copy: int) -> int:
        """First output row of ``copy`` (-1 is the original, written first)."""
        return (copy + int(self.include_original)) * self.n_rows

    @property
    def by_index(self) -> bool:
        """Whether the plan's partners are read by index (not from a partner block)."""
        if self.pairing == "global":
            return self.version >= 2 and self.n_blocks > 1
        return self.pairing in BY_INDEX_PAIRINGS

    def pair_group(self, block: int) -> tuple[int, int]:
        """The rows ``batch`` pairing draws ``block``'s partners from: the
        block, or (plan version 2, a last block shorter than half a block)
        the last two blocks together."""
        start, stop = self.block_bounds(block)
        k = self.n_blocks
        if self.pairing != "batch" or self.version < 2 or k < 2 or block < k - 2:
            return start, stop
        if 2 * (self.n_rows - (k - 1) * self.block_rows) >= self.block_rows:
            return start, stop
        return (k - 2) * self.block_rows, self.n_rows

    def block_order(self, copy: int) -> np.ndarray:
        """The order blocks are visited in; for global pairing of plan version 1, the cycle."""
        if self.pairing == "global" and self.version == 1 and self.n_blocks > 1:
            return keyed_rng(self.seed, _CYCLE, copy).permutation(self.n_blocks)
        return np.arange(self.n_blocks)

    def tasks(self) -> Iterator[Task]:
        """All tasks, ordered so that consecutive tasks share a block."""
        if self.include_original:
            for b in range(self.n_blocks):
                yield self._task(-1, b, b)
        for copy in range(self.copies):
            order = self.block_order(copy)
            for t, b in enumerate(order):
                if self.by_index:
                    yield self._task(copy, int(b), None)
                    continue
                partner = order[(t + 1) % len(order)] if self.pairing == "global" and self.version == 1 else b
                if self.pair_group(int(b)) != self.block_bounds(int(b)):
                    partner = None  # a group of two blocks: partners read by index
                yield self._task(copy, int(b), None if partner is None else int(partner))

    def _task(self, copy: int, block: int, partner_block: int | None) -> Task:
        start, stop = self.block_bounds(block)
        return Task(copy, block, partner_block, start, stop, self.copy_offset(copy) + start)

    def draw(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """lam (float64) and partner (int64 input row) for every row of the task."""
        n = task.stop - task.start
        if task.copy < 0:
            return np.ones(n), np.arange(task.start, task.stop, dtype=np.int64)
        rng = keyed_rng(self.seed, _ROWS, task.copy, task.block)
        lam = sample_lam(rng, self.alpha, n)
        if self.group_key is not None:
            if self.groups is None:
                raise ValueError("--groups needs the group index of the rows")
            partner, alone = self._draw_in_groups(rng, task)
            lam[alone] = 1.0  # paired with itself: left unmixed
            return lam, partner
        if self.pairing == "global" and self.version >= 2:
            # i.i.d. uniform over every row of the plan (one block: its own rows)
            return lam, rng.integers(0, self.n_rows, n, dtype=np.int64)
        if task.partner_block is None and self.pairing in INDEX_PAIRINGS:
            if self.partners is None:
                raise ValueError(f"--pairing {self.pairing} needs the partner index of the rows")
            return lam, self.partners.draw_partners(rng, task.start, task.stop)
        if task.partner_block is None and self.pairing in CLASS_PAIRINGS:
            if self.classes is None:
                raise ValueError(f"--pairing {self.pairing} needs the class index of the rows")
            same = self.pairing == "within-class"
            return lam, self.classes.draw_partners(rng, task.start, task.stop, same)
        if task.partner_block is None:  # batch: a group of two blocks, one permutation of it
            g_start, g_stop = self.pair_group(task.block)
            group = keyed_rng(self.seed, _GROUP, task.copy, g_start // self.block_rows).permutation(g_stop - g_start)
            return lam, group[task.start - g_start : task.stop - g_start].astype(np.int64) + g_start
        p_start, p_stop = self.block_bounds(task.partner_block)
        partner = _cover(rng, p_stop - p_start, n).astype(np.int64) + p_start
        return lam, partner

    def _draw_in_groups(self, rng: np.random.Generator, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """--groups: the partners of the task's rows inside their groups, and which rows are alone."""
        if self.pairing in KNN_PAIRINGS:
            if self.partners is None:
                raise ValueError(f"--pairing {self.pairing} needs the partner index of the rows")
            return self.partners.draw_in_cells(rng, task.start, task.stop)
        if self.pairing == "batch":
            return self._permute_in_groups(task)
        if self.pairing == "label-kernel":
            if self.partners is None:
                raise ValueError("--pairing label-kernel needs the partner index of the rows")
            return self.partners.draw_in_groups(rng, task.start, task.stop)
        return self.groups.draw_partners(rng, task.start, task.stop, self.pairing != "between-class")

    def _permute_in_groups(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """--groups, ``batch``: the partners of the rows of a (pair group, group)
        cell are a random permutation of its rows, keyed by the pair group (so
        the two blocks of one share it); a row alone in its cell is alone."""
        g_start, g_stop = self.pair_group(task.block)
        codes = self.groups.codes[g_start:g_stop]
        perm = keyed_rng(self.seed, _GROUP, task.copy, g_start // self.block_rows).permutation(g_stop - g_start)
        partner = np.empty(len(codes), dtype=np.int64)
        # each group's rows in row order, given its rows in the permutation's order
        partner[np.argsort(codes, kind="stable")] = perm[np.argsort(codes[perm], kind="stable")]
        _, cell, counts = np.unique(codes, return_inverse=True, return_counts=True)
        alone = counts[cell.reshape(-1)] <= 1
        part = slice(task.start - g_start, task.stop - g_start)
        return partner[part] + g_start, alone[part]

    def batch_unpaired_rows(self) -> int:
        """--groups, ``batch``: rows alone in their (pair group, group) cell, per copy."""
        first = np.arange(self.n_rows) // self.block_rows
        if self.n_blocks >= 2 and self.pair_group(self.n_blocks - 1)[0] != self.block_bounds(self.n_blocks - 1)[0]:
            first[first == self.n_blocks - 1] = self.n_blocks - 2  # the short last block goes with the one before
        _, counts = np.unique(first * self.groups.n_groups + self.groups.codes, return_counts=True)
        return int(np.sum(counts == 1))

    def draw_boxes(self, task: Task, lam: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """CutMix: a box (y0, x0, y1, x1) per row of the task, and lam corrected to it.

        Keyed by ``(seed, copy, block)`` like ``draw``, from a stream of its own,
        so lam's draw and the partners are the same as mixup's for the same seed.
        """
        n = task.stop - task.start
        if task.copy < 0:
            return np.zeros((n, 4), dtype=np.int64), lam
        rng = keyed_rng(self.seed, _BOXES, task.copy, task.block)
        return cutmix.draw_boxes(rng, lam, height, width)

    @classmethod
    def from_dict(cls, record: dict, n_rows: int, *, classes=None, partners=None, own=None, groups=None) -> Plan:
        """The plan ``to_dict`` recorded, over ``n_rows`` input rows (a balanced
        plan's ``rows_per_copy`` instead). What is derived from the input
        (``classes``, ``partners``, ``own``) is not recorded: a pairing that
        needs it takes it here (``planner.plan_from_sidecar`` builds it)."""
        if record.get("plan_version") not in PLAN_VERSIONS:
            raise ValueError(f"plan_version {record.get('plan_version')!r}, this code computes {PLAN_VERSIONS}")
        optional = ("layout", "neighbors", "project", "neighbor_index", "bandwidth", "balance_to")
        fields = {key: record[key] for key in ("alpha", "seed", "block_rows", "pairing", "copies", "include_original")}
        fields.update({key: record.get(key) for key in optional}, method=record.get("method", "mixup"))
        if record.get("balance") or record.get("exclude_rows"):
            n_rows = int(record["rows_per_copy"])
        if not record.get("balance"):
            fields["balance_to"] = None
        if record.get("exclude_rows"):
            fields["exclude"] = tuple(record["exclude_rows"][k] for k in ("path", "sha256", "rows"))
            fields["balance"] = bool(record.get("balance"))
        fields["version"] = record["plan_version"]
        fields["group_key"] = record.get("groups")
        return cls(n_rows=n_rows, classes=classes, partners=partners, own=own, groups=groups, **fields)

    def to_dict(self) -> dict:
        extra = {}  # only for the pairings that have them: other sidecars stay as they were
        if self.pairing in KNN_PAIRINGS:
            extra = {
                "neighbors": self.neighbors,
                "project": self.project,
                "project_batch_rows": getattr(self.partners, "project_batch_rows", None),
            }
            if self.version >= 3 and self.project is not None:  # the sample and the variance kept
                projection = getattr(self.partners, "projection", None) or {}
                extra.update({k: v for k, v in projection.items() if k != "project_batch_rows"})
            if self.neighbor_index is not None:  # exact runs' sidecars stay as they were
                extra.update(neighbor_index=self.neighbor_index, **(getattr(self.partners, "approximate", None) or {}))
        elif self.pairing == "label-kernel":
            extra = {"bandwidth": self.bandwidth}
        if self.exclude is not None:
            path, sha256, rows = self.exclude
            extra.update(exclude_rows={"path": path, "sha256": sha256, "rows": rows}, rows_per_copy=self.n_rows)
        if self.own is not None and (self.exclude is None or self.balance):
            extra.update(balance=True, balance_to=self.balance_to, rows_per_copy=self.n_rows)
        if self.group_key is not None:
            extra.update(groups=self.group_key)
            if self.groups is not None:  # what the input's ids gave (the same for every seed)
                same = self.pairing != "between-class"
                unpaired = self.batch_unpaired_rows() if self.pairing == "batch" else self.groups.unpaired_rows(same)
                extra.update(group_count=self.groups.n_groups, unpaired_rows=unpaired)
                if self.pairing in KNN_PAIRINGS and self.partners is not None:  # lists of all their cell's rows
                    extra.update(short_rows=self.partners.short_rows)
        return extra | {
            "alpha": self.alpha,
            "seed": int(self.seed),
            "block_rows": self.block_rows,
            "pairing": self.pairing,
            "copies": self.copies,
            "include_original": self.include_original,
            "method": self.method,
            "layout": self.layout,
            "plan_version": self.version,
        }
