"""The per-task computation of a plan, for every method: what ``augment``
writes, and what anything that recomputes an output (a preview, a check of
an existing output) must compute in the same way.

``Mixer(plan, row_shapes).draw(task)`` gives a task's provenance (``lam``,
``partner``, and for CutMix ``box``, with ``lam`` corrected to the box);
``Mixer.mix(key, own, partner_rows, drawn, s, e)`` gives output rows ``s:e``
of one data array of the task. Everything random is drawn per task (keyed by
seed, copy and block), and mixing is row by row, so results do not depend on
how a task's rows are cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core.blend import mix_gather, mix_rows
from mixup_cli.core.errors import ParameterError
from mixup_cli.mixing import cutmix
from mixup_cli.mixing.sampling import Plan, Task

# Per-row provenance arrays each method adds to the output: name -> (row shape, dtype).
PROVENANCE = {
    "mixup": {"lam": ((), np.float64), "partner": ((), np.int64)},
    "cutmix": {"lam": ((), np.float64), "partner": ((), np.int64), "box": ((4,), np.int64)},
}


@dataclass(frozen=True)
class Drawn:
    """A task's provenance: one entry per row of the task."""

    lam: np.ndarray  # float64; for CutMix corrected to the box's area
    partner: np.ndarray  # int64 input row
    box: np.ndarray | None = None  # CutMix: int64 (rows, 4) as y0, x0, y1, x1
    # Balanced plans: ``partner`` is a row of the plan's rows; these are the
    # input rows of the partner and of the row itself (``own``).
    partner_input: np.ndarray | None = None
    own: np.ndarray | None = None
    group: np.ndarray | None = None  # --groups: the group id of each row (``groups.GroupIndex.ids``)

    def rows(self, s: int, e: int) -> Drawn:
        """Rows ``s:e`` only (a task that is part of a block)."""
        cut = lambda a: None if a is None else a[s:e]
        return Drawn(
            self.lam[s:e], self.partner[s:e], cut(self.box), cut(self.partner_input), cut(self.own), cut(self.group)
        )

    def provenance(self, s: int = 0, e: int | None = None) -> dict[str, np.ndarray]:
        """Rows ``s:e`` of each provenance array, by output name."""
        partner = self.partner if self.partner_input is None else self.partner_input
        arrays = {"lam": self.lam[s:e], "partner": partner[s:e]}
        if self.box is not None:
            arrays["box"] = self.box[s:e]
        if self.own is not None:
            arrays["own"] = self.own[s:e]
        if self.group is not None:
            arrays["group"] = self.group[s:e]
        return arrays


class Mixer:
    """Mixes a plan's tasks; ``row_shapes`` maps data keys to row shapes, x first."""

    def __init__(self, plan: Plan, row_shapes: dict[str, tuple[int, ...]]):
        self.plan = plan
        self.row_shapes = {key: tuple(shape) for key, shape in row_shapes.items()}
        self.paste_axes: dict[str, tuple[int, int] | None] = {key: None for key in self.row_shapes}
        self.image_size: tuple[int, int] | None = None
        if plan.own is not None and "own" in self.row_shapes:
            option = "--balance" if plan.exclude is None else "--exclude-rows"
            raise ParameterError(f"'own' is reserved for provenance in output with {option}; rename the array", option)
        if plan.group_key is not None and "group" in self.row_shapes:
            raise ParameterError(
                "'group' is reserved for provenance in output with --groups; rename the array", "--groups"
            )
        if plan.method == "cutmix":
            reserved = [key for key in self.row_shapes if key in PROVENANCE["cutmix"]]
            if reserved:
                raise ParameterError(
                    f"'{reserved[0]}' is reserved for provenance in CutMix output; rename the array", "--method"
                )
            x_key = next(iter(self.row_shapes))
            x_shape = self.row_shapes[x_key]
            self.image_size = cutmix.image_size(x_shape, plan.layout)
            for key, shape in self.row_shapes.items():
                self.paste_axes[key] = cutmix.spatial_axes(shape, plan.layout, self.image_size)
            self.paste_axes[x_key] = cutmix.image_axes(plan.layout)

    @staticmethod
    def provenance_specs(plan: Plan) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Row shape and dtype of each provenance array the plan's output holds."""
        specs = {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in PROVENANCE[plan.method].items()}
        if plan.own is not None:  # --balance, --exclude-rows: each output row's own input row
            specs["own"] = ((), np.dtype(np.int64))
        if plan.groups is not None:  # --groups: each output row's group id
            specs["group"] = ((), np.dtype(plan.groups.out_dtype))
        return specs

    def draw(self, task: Task) -> Drawn:
        lam, partner = self.plan.draw(task)
        box = None
        if self.plan.method == "cutmix":
            box, lam = self.plan.draw_boxes(task, lam, *self.image_size)
        group = None if self.plan.groups is None else self.plan.groups.ids(task.start, task.stop)
        if self.plan.own is None:
            return Drawn(lam, partner, box, group=group)
        own = self.plan.own
        return Drawn(lam, partner, box, partner_input=own[partner], own=own[task.start : task.stop], group=group)

    def mix(
        self,
        key: str,
        own: np.ndarray,
        partner_rows: np.ndarray,
        drawn: Drawn,
        s: int,
        e: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Output rows ``s:e`` of array ``key`` for a task that is not an original copy.

        ``own`` and ``partner_rows`` are that array's rows ``s:e`` of the task
        and of their partners.
        """
        axes = self.paste_axes[key]
        if axes is not None:
            return cutmix.paste(own, partner_rows, drawn.box[s:e], axes, out=out)
        return mix_rows(own, partner_rows, drawn.lam[s:e], out=out)

    def mix_gather(
        self,
        key: str,
        own: np.ndarray,
        pool: np.ndarray,
        index: np.ndarray,
        drawn: Drawn,
        s: int,
        e: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """``mix`` with partner rows ``pool[index]``, gathered without a full copy for mixup."""
        if self.paste_axes[key] is not None:
            return self.mix(key, own, pool[index], drawn, s, e, out=out)
        return mix_gather(own, pool, index, drawn.lam[s:e], out=out)
