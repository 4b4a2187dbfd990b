"""What ``augment`` is asked and what it answers: the request (built by the
command line, field by field), the result, and the progress interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.mixing.sampling import PLAN_VERSION
from mixup_cli.record import provenance
from mixup_cli.run.prepared import DataOptions


@dataclass
class AugmentRequest:
    input: Path
    output: Path
    alpha: float = 0.2
    seed: int | None = None
    x_key: str = "x"
    y_key: str | None = "y"
    pairing: str = "global"
    copies: int = 1
    include_original: bool = False
    batch_size: int | None = None
    block_rows: int | None = None
    compression: str = "none"
    overwrite: bool = False
    engine: str = "local"  # local | dask
    scheduler: str | None = None  # dask: address of an existing scheduler
    workers: int | None = None  # dask: processes of a local cluster started for the run
    command_line: list[str] = field(default_factory=provenance.command_line)
    # How x and y are read and mixed (see prepare.DataOptions and labels.py).
    x_dtype: str = "keep"
    y_format: str = "soft"
    y_kind: str = "auto"
    num_classes: int | None = None
    label_smoothing: float = 0.0
    allow_nonfinite: bool = False
    # A folder of images (io/images.py): size (width, height), resize, channels; None when not given.
    image_size: tuple[int, int] | None = None
    image_resize: str | None = None
    image_channels: str | None = None
    skip_bad_images: bool = False
    wds_label: str | None = None  # WebDataset shards: cls | json:FIELD
    sample_axis: int | str | None = None  # --sample-axis: x's axis of samples (io/axes.py)
    # False: a missing y_key means x alone (unlabelled data) instead of an error.
    require_y: bool = True
    # Also record each output file's SHA-256 (one more read of the whole output).
    hash_files: bool = False

    def data_options(self) -> DataOptions:
        return DataOptions(
            x_dtype=self.x_dtype,
            y_format=self.y_format,
            y_kind=self.y_kind,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            allow_nonfinite=self.allow_nonfinite,
            image_size=self.image_size,
            image_resize=self.image_resize,
            image_channels=self.image_channels,
            skip_bad_images=self.skip_bad_images,
            wds_label=self.wds_label,
            sample_axis=self.sample_axis,
        )

    resume: bool = False
    method: str = "mixup"
    layout: str | None = None  # cutmix: NHWC or NCHW; inferred when unambiguous
    # Storage layout of OUT (not its arrays' bytes): None = the format's default.
    chunk_rows: int | None = None
    byte_shuffle: bool | None = None
    zarr_format: int | None = None
    image_format: str | None = None  # WebDataset output (.tar): png | jpeg [default: png]
    jpeg_quality: int | None = None
    # --pairing knn / knn-within-class: neighbours per row, projection dimension.
    neighbors: int | None = None
    project: int | None = None
    # --neighbor-index: exact (None) or approximate lists (approximate.py).
    neighbor_index: str | None = None
    # --pairing label-kernel: the kernel's bandwidth.
    bandwidth: float | None = None
    # --balance / --balance-to M: M rows of every class per copy (see balance.py).
    balance: bool = False
    balance_to: int | None = None
    # --groups KEY: the input's array of group ids; every pair stays inside one group (groups.py).
    groups: str | None = None
    # --exclude-rows FILE: input rows never used, as own row or partner (exclude.py).
    exclude_rows: Path | None = None
    # The plan version computed (sampling.PLAN_VERSIONS): an earlier one writes
    # what that version wrote (checks of verify on such outputs); the command
    # line always asks for the current one.
    plan_version: int = PLAN_VERSION

    def values(self, names) -> dict:
        """The request's value of each field named, by name: what a lower module takes as plain parameters."""
        return {name: getattr(self, name) for name in names}

    def plan_parameters(self) -> dict:
        """The keyword arguments of ``planner.build_plan`` this request gives."""
        return dict(
            alpha=self.alpha,
            seed=self.seed,
            x_key=self.x_key,
            y_key=self.y_key,
            pairing=self.pairing,
            copies=self.copies,
            include_original=self.include_original,
            block_rows=self.block_rows,
            chunk_rows=self.chunk_rows,
            method=self.method,
            layout=self.layout,
            neighbors=self.neighbors,
            project=self.project,
            neighbor_index=self.neighbor_index,
            bandwidth=self.bandwidth,
            balance=self.balance,
            balance_to=self.balance_to,
            plan_version=self.plan_version,
            groups=self.groups,
            exclude_rows=self.exclude_rows,
        )


@dataclass
class AugmentResult:
    output: Path
    sidecar: Path
    rows: int
    seconds: float
    seed: int
    run_id: str
    record: dict
    already_complete: bool = False  # --resume found OUT finished by this same command

    def summary(self) -> dict:
        """What ``--json`` prints: enough for a script to find and check the output."""
        return {
            "output": str(self.output),
            "sidecar": str(self.sidecar),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds > 0 else None,
            "seed": self.seed,
            "run_id": self.run_id,
        } | self.group_summary()

    def group_summary(self) -> dict:
        """--groups: the groups found and the rows per copy left unmixed (no partner in their group)."""
        parameters = (self.record or {}).get("parameters") or {}
        if parameters.get("groups") is None:
            return {}
        summary = {key: parameters.get(key) for key in ("groups", "group_count", "unpaired_rows")}
        if parameters.get("short_rows") is not None:  # knn: rows whose group holds at most K others
            summary["short_rows"] = parameters["short_rows"]
        return summary


class Progress:
    """Receives progress: ``start`` once with the output's row count, then ``update``."""

    def start(self, total: int) -> None:
        pass

    def update(self, rows: int) -> None:
        pass
