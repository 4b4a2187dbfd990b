"""Streams a dataset through mixup: read -> plan -> mix -> write -> sidecar.

Memory holds at most two input blocks (the block being mixed and its
partner block) and one batch of output rows, whatever the number of rows.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixup_cli import __version__, atomic, provenance
from mixup_cli.core import check_alpha
from mixup_cli.engines import check_engine_options
from mixup_cli.errors import InputError, OutputError, ParameterError
from mixup_cli.io import ArraySpec, Reader, WriteOptions, create_writer, format_of, open_reader
from mixup_cli.sampling import Plan, check_positive, default_block_rows, draw_seed
from mixup_cli.tasks import mix_task, prepare_task

log = logging.getLogger("mixup_cli")

PROVENANCE_KEYS = ("lam", "partner")
# Default batch: rows of about this many bytes are mixed and written at once.
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024


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


@dataclass
class AugmentResult:
    output: Path
    sidecar: Path
    rows: int
    seconds: float
    seed: int
    run_id: str
    record: dict

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
        }


class Progress:
    """Receives progress: ``start`` once with the output's row count, then ``update``."""

    def start(self, total: int) -> None:
        pass

    def update(self, rows: int) -> None:
        pass


@dataclass(frozen=True)
class Source:
    """An opened input with the arrays that take part, checked for consistency."""

    reader: Reader
    specs: dict[str, ArraySpec]  # data keys (x, then y if any), in that order

    @property
    def n_rows(self) -> int:
        return next(iter(self.specs.values())).rows

    @property
    def row_bytes(self) -> int:
        return sum(spec.row_bytes for spec in self.specs.values())


def open_source(path: Path, x_key: str, y_key: str | None) -> Source:
    """Open the input and check that x (and y) exist and have rows to mix."""
    reader = open_reader(path)
    try:
        specs = {x_key: reader.require(x_key, "--x-key")}
        if y_key is not None:
            if y_key == x_key:
                raise ParameterError(f"--y-key and --x-key both name '{x_key}'", "--y-key")
            specs[y_key] = reader.require(y_key, "--y-key")
            n_x, n_y = specs[x_key].rows, specs[y_key].rows
            if n_x != n_y:
                raise InputError(
                    f"{path}: '{x_key}' has {n_x} rows but '{y_key}' has {n_y}; "
                    "x and y need one row per sample"
                )
            if specs[y_key].dtype.kind != "f":
                raise InputError(
                    f"{path}: '{y_key}' has dtype {specs[y_key].dtype}; targets are mixed as "
                    "floating point, so one-hot encode integer class labels first"
                )
        if specs[x_key].rows == 0:
            raise InputError(f"{path}: '{x_key}' has zero rows; there is nothing to mix")
        for key in PROVENANCE_KEYS:
            if key in specs:
                raise ParameterError(f"'{key}' is reserved for provenance in the output; rename the array", "--x-key")
    except BaseException:
        reader.close()
        raise
    return Source(reader, specs)


def check_output_path(input_path: Path, output: Path, overwrite: bool) -> str:
    """Refuse outputs that cannot or must not be written; return the output format."""
    fmt = format_of(output, for_output=True)
    if output.resolve() == input_path.resolve() or (output.exists() and os.path.samefile(output, input_path)):
        raise ParameterError(f"{output}: is the input itself; choose another output path", "OUT")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{output}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: directory {parent} is not writable")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    return fmt


def resolve_plan(request: AugmentRequest, source: Source) -> Plan:
    block_rows = request.block_rows or default_block_rows(source.row_bytes)
    seed = draw_seed() if request.seed is None else request.seed
    return Plan(
        n_rows=source.n_rows,
        alpha=request.alpha,
        seed=seed,
        block_rows=block_rows,
        pairing=request.pairing,
        copies=request.copies,
        include_original=request.include_original,
    )


def default_batch_rows(row_bytes: int, block_rows: int) -> int:
    return min(block_rows, default_block_rows(row_bytes, DEFAULT_BATCH_BYTES))


def output_specs(source: Source, plan: Plan) -> dict[str, ArraySpec]:
    rows = plan.output_rows
    specs = {key: ArraySpec((rows,) + spec.row_shape, spec.dtype) for key, spec in source.specs.items()}
    specs["lam"] = ArraySpec((rows,), np.dtype(np.float64))
    specs["partner"] = ArraySpec((rows,), np.dtype(np.int64))
    return specs


class BlockCache:
    """Keeps the last two blocks read: walking the pairing cycle, each block
    is needed as a partner and then again as the next task's own block."""

    def __init__(self, source: Source, plan: Plan):
        self._source, self._plan = source, plan
        self._blocks: dict[int, dict[str, np.ndarray]] = {}

    def get(self, block: int, keep: int) -> dict[str, np.ndarray]:
        if block not in self._blocks:
            for old in [b for b in self._blocks if b != keep]:
                del self._blocks[old]
            start, stop = self._plan.block_bounds(block)
            self._blocks[block] = {
                key: self._source.reader.read(key, start, stop) for key in self._source.specs
            }
        return self._blocks[block]


def run_plan(source: Source, plan: Plan, writer, batch_rows: int, progress: Progress) -> None:
    """The local engine: compute every task of the plan and hand the rows to ``writer``."""
    cache = BlockCache(source, plan)
    buffers = {
        key: np.empty((min(batch_rows, plan.block_rows),) + spec.row_shape, spec.dtype)
        for key, spec in source.specs.items()
    }
    for task in plan.tasks():
        others = {task.block: task.partner_block, task.partner_block: task.block}
        prepared = prepare_task(plan, task, lambda block: cache.get(block, keep=others[block]))
        for s in range(0, prepared.rows, batch_rows):
            e = min(prepared.rows, s + batch_rows)
            for key, rows in mix_task(prepared, s, e, out=buffers).items():
                writer.write(key, task.out_start + s, rows)
            progress.update(e - s)


def augment(request: AugmentRequest, progress: Progress | None = None) -> AugmentResult:
    """Run ``mixup augment``: write OUT and its sidecar, or nothing at all."""
    started_at, t0 = provenance.utc_now(), time.perf_counter()
    progress = progress or Progress()
    check_alpha(request.alpha)
    check_positive(request.copies, "--copies")
    for value, option in ((request.batch_size, "--batch-size"), (request.block_rows, "--block-rows")):
        if value is not None:
            check_positive(value, option)
    check_engine_options(request.engine, request.scheduler, request.workers)
    input_path, output = Path(request.input), Path(request.output)
    out_format = check_output_path(input_path, output, request.overwrite)

    source = open_source(input_path, request.x_key, request.y_key)
    try:
        plan = resolve_plan(request, source)
        batch_rows = request.batch_size or default_batch_rows(source.row_bytes, plan.block_rows)
        input_hashes = provenance.BackgroundHash(source.reader.files())
        run_id = uuid.uuid4().hex
        specs = output_specs(source, plan)
        tmp = atomic.partial_path(output)
        if tmp.exists():
            log.warning("removing %s left by an interrupted run", tmp)
            atomic.remove(tmp)
        options = WriteOptions(compression=request.compression, block_rows=plan.block_rows)
        writer = create_writer(tmp, out_format, specs, options)
        try:
            progress.start(plan.output_rows)
            if request.engine == "dask":
                from mixup_cli.engines import dask_engine

                execution = dask_engine.run_plan(
                    input_path, source.specs, plan, writer, progress,
                    scheduler=request.scheduler, workers=request.workers,
                )
                batch_rows = plan.block_rows  # a worker mixes a whole block at once
            else:
                run_plan(source, plan, writer, batch_rows, progress)
                execution = {"engine": "local"}
            writer.set_attributes({"mixup_cli_version": __version__, "run_id": run_id})
            writer.close()
            out_files = [tmp / rel if str(rel) != "." else tmp for rel in writer.files()]
            out_hashes = provenance.BackgroundHash(out_files).result()
            in_hashes = input_hashes.result()
        except BaseException:
            writer.abort()
            atomic.remove(tmp)
            raise
        input_entry = dataset_entry(input_path, source.reader.format_name, source.specs, in_hashes)
        try:
            atomic.commit(tmp, output, request.overwrite)
        except BaseException:
            atomic.remove(tmp)
            raise
        final_hashes = {
            str(output / rel if str(rel) != "." else output): out_hashes[str(f)]
            for rel, f in zip(writer.files(), out_files)
        }
        output_entry = dataset_entry(output, out_format, specs, final_hashes)
    finally:
        source.reader.close()

    parameters = dict(plan.to_dict(), x_key=request.x_key, y_key=request.y_key, compression=request.compression)
    seconds = time.perf_counter() - t0
    record = provenance.build(
        run_id=run_id,
        command_line=request.command_line,
        parameters=parameters,
        execution=dict(execution, batch_size=batch_rows, seconds=round(seconds, 3)),
        input_entry=input_entry,
        output_entry=output_entry,
        started_at=started_at,
        finished_at=provenance.utc_now(),
    )
    sidecar = provenance.sidecar_path(output)
    provenance.write(sidecar, record)
    return AugmentResult(output, sidecar, plan.output_rows, seconds, int(plan.seed), run_id, record)


def dataset_entry(path: Path, fmt: str, specs: dict[str, ArraySpec], hashes: dict[str, str]) -> dict:
    """A dataset as the sidecar records it: where, what arrays, which files with their hashes."""
    return {
        "path": str(Path(path).resolve()),
        "format": fmt,
        "arrays": {key: spec.to_dict() for key, spec in specs.items()},
        "files": [
            {"path": str(Path(p).resolve()), "size": Path(p).stat().st_size, "sha256": digest} for p, digest in hashes.items()
        ],
    }
