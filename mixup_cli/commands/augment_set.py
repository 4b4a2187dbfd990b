"""``augment_set``: ``mixup augment IN1 IN2 ... OUTDIR``, a set mixed as the
concatenation of its inputs, one output per input (or a part's outputs).

check options -> inputs checked against each other (``inspect_inputs``) ->
one ``Source`` over their ``ConcatReader`` -> ONE plan over the whole set ->
``set_id``, OUTDIR's contents, the manifest -> for each output of the part:
``pipeline.write_output`` (the single-file run's partial file, journal,
lock, engine run, record and commit) with the plan's tasks restricted to
its input (``split``). Everything random is keyed by the set's blocks, so
the outputs are the single-file run's rows whatever the part or engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.commands import pipeline, set_outputs
from mixup_cli.commands.request import AugmentRequest, Progress
from mixup_cli.core.errors import MixupError, OutputError, ParameterError
from mixup_cli.io import ArraySpec, format_of
from mixup_cli.mixing.sampling import CLASS_PAIRINGS
from mixup_cli.record import atomic, provenance
from mixup_cli.run import entries, scratch
from mixup_cli.run.planner import build_plan, output_specs
from mixup_cli.run.source import open_source
from mixup_cli.sets import identity
from mixup_cli.sets.inputs import WHOLE, Part, check_part_seed
from mixup_cli.sets.layout import (
    SetLayout,
    check_outdir,
    check_storage_options,
    locate_rows,
    output_paths,
)
from mixup_cli.sets.layout_record import inspect_recorded
from mixup_cli.sets.reader import ConcatReader
from mixup_cli.sets.restrict import check_plan, output_rows, plan_offsets, split


@dataclass
class SetResult:
    outdir: Path
    set_id: str
    part: Part
    seed: int
    rows: int  # rows of this part's outputs (written now or before)
    seconds: float
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # --resume: already complete

    @property
    def already_complete(self) -> bool:
        return not self.written

    def summary(self) -> dict:
        """What ``--json`` prints for a set: one object."""
        return {
            "outdir": str(self.outdir),
            "set_id": self.set_id,
            "part": str(self.part),
            "seed": self.seed,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "outputs": [str(p) for p in self.written],
            "skipped": [str(p) for p in self.skipped],
        }


class _PartProgress(Progress):
    """One bar over the part's rows: each output's ``start`` is ignored."""

    def __init__(self, inner: Progress):
        self.inner = inner

    def update(self, rows: int) -> None:
        self.inner.update(rows)


def _refuse_image_outputs(request) -> None:
    """A set's WebDataset outputs (its inputs are .tar shards) hold PNG
    images: JPEG's stored digests are not cut at a set output's shifted
    block bounds, so its options are for one input's output."""
    if request.image_format is not None or request.jpeg_quality is not None:
        option = "--image-format" if request.image_format is not None else "--jpeg-quality"
        raise ParameterError(
            f"{option} applies to the WebDataset output of one input (mixup augment IN OUT.tar); "
            "a set's .tar outputs hold PNG images",
            option,
        )


def augment_set(
    request: AugmentRequest,
    inputs: Sequence[Path],
    outdir: Path,
    part: Part = WHOLE,
    progress: Progress | None = None,
    written: list | None = None,
) -> SetResult:
    """Write part ``part`` of the set's outputs into ``outdir`` (each with its
    sidecar), and OUTDIR's manifest. ``request.input``/``output`` are unused.
    A refusal leaves OUTDIR as it was; a stop leaves the outputs committed
    so far, and the current one resumable (``request.resume``); ``written``
    receives each output as it is committed (what a stop leaves)."""
    t0, started_at = time.perf_counter(), provenance.utc_now()
    progress = progress or Progress()
    outdir = Path(outdir)
    pipeline.check_request(request)
    if request.sample_axis is not None:
        raise ParameterError(
            "--sample-axis applies to one input file, not a set's inputs; mix each file on its own", "--sample-axis"
        )
    check_outdir(outdir)
    if request.seed is None and request.resume:  # the interrupted set's seed, as a single run takes its journal's
        recorded = (identity.read_manifest(outdir) or {}).get("parameters", {}).get("seed")
        request = _with(request, seed=recorded if isinstance(recorded, int) else None)
    check_part_seed(part, request.seed)
    layout = inspect_recorded(  # the layout a previous part recorded in OUTDIR, else inspect_inputs
        inputs,
        request.x_key,
        request.y_key,
        require_y=request.require_y,
        outdir=outdir,
        images=request.data_options().image_options(),
        groups=request.groups,
        y_kind=_classes_to_find(request),
    )
    outputs = output_paths(layout, outdir)
    _refuse_image_outputs(request)
    check_storage_options(
        outputs, request.compression, request.block_rows, request.chunk_rows, request.byte_shuffle, request.zarr_format
    )
    try:
        source, concat = _open_set(request, layout, outdir, part)  # may pass over y (names, classes)
    except MixupError as exc:
        raise locate_rows(exc, layout) from None  # a row of the set, told as its input's row
    try:
        plan = build_plan(source, **request.plan_parameters())
        check_plan(plan, layout)
        result = SetResult(outdir, "", part, int(plan.seed), 0, 0.0, written if written is not None else [])
        return _run_part(request, source, concat, plan, outputs, result, _PartProgress(progress), started_at, t0)
    except MixupError as exc:
        raise locate_rows(exc, layout) from None
    finally:
        source.reader.close()


def _classes_to_find(request: AugmentRequest) -> str | None:
    """``--y-kind`` when the plan finds y's classes in the data (no
    ``--num-classes``, soft targets): ``inspect_inputs`` then reads the labels
    while each input is open, and the label pass reopens none."""
    if request.y_key is None or request.y_format != "soft" or request.num_classes is not None:
        return None
    return request.y_kind if request.y_kind in ("auto", "classes") else None


def _with(request: AugmentRequest, **changes) -> AugmentRequest:
    import dataclasses

    return dataclasses.replace(request, **changes)


def _open_set(request: AugmentRequest, layout: SetLayout, outdir: Path, part: Part):
    y_for = f"--pairing {request.pairing}" if request.pairing in CLASS_PAIRINGS else None
    # Inflated .npz members go to unlinked files in OUTDIR (or beside it, before it exists).
    base = outdir if outdir.is_dir() else outdir.resolve().parent
    reader = ConcatReader(layout, scratch_prefix=base / f"{identity.SET_PREFIX}{part.index}-{part.count}")
    source = open_source(
        layout.shards[0].path,
        request.x_key,
        request.y_key,
        request.data_options(),
        request.require_y,
        y_for=y_for,
        reader=reader,
        layout=layout,
    )
    return source, reader


def _run_part(
    request, source, concat: ConcatReader, plan, outputs, result: SetResult, progress, started_at, t0
) -> SetResult:
    layout, outdir, part = concat.layout, result.outdir, result.part
    parameters = entries.run_parameters(plan, source, x_key=request.x_key, compression=request.compression)
    sid = identity.set_id(layout, parameters)
    mine = part.outputs(len(outputs))
    for k in mine:  # a commit a killed part left half-done is finished or rolled back before it counts as done
        atomic.recover(outputs[k])
    done = identity.check_outdir_contents(outdir, outputs, sid, request.overwrite) & set(mine)
    if done and not (request.resume or request.overwrite):
        first = outputs[min(done)]
        raise OutputError(
            f"{first}: already exists (an output of this set); pass --resume to continue the set, "
            "or --overwrite to write it again"
        )
    result.set_id = sid
    fresh = (not outdir.exists(), not (outdir / identity.MANIFEST).exists())
    outdir.mkdir(exist_ok=True)
    identity.write_manifest(outdir, identity.manifest(layout, sid, parameters, outputs))
    try:
        return _write_part(request, source, concat, plan, outputs, result, progress, started_at, t0, done)
    except BaseException:
        _tidy(outdir, *fresh)
        raise


def _tidy(outdir: Path, made_dir: bool, made_manifest: bool) -> None:
    """After a failure: a manifest (and OUTDIR) this part made is removed when
    nothing else is there (no output, nothing kept for --resume)."""
    try:
        left = [p for p in outdir.iterdir() if p.name != identity.MANIFEST]
        if made_manifest and not left:
            (outdir / identity.MANIFEST).unlink(missing_ok=True)
            if made_dir:
                outdir.rmdir()
    except OSError:
        pass


def _write_part(
    request, source, concat, plan, outputs, result: SetResult, progress, started_at, t0, done: set[int]
) -> SetResult:
    layout, outdir, part = concat.layout, result.outdir, result.part
    mine = part.outputs(len(outputs))
    bounds = plan_offsets(plan, layout.offsets)  # the plan's rows of each input (--exclude-rows: the kept ones)
    result.rows = sum(output_rows(plan, bounds[k + 1] - bounds[k]) for k in mine)
    progress.inner.start(result.rows)
    todo = [k for k in mine if not (request.resume and k in done)]
    for k in mine:
        if k not in todo:
            _drop_stale_lock(outputs[k])
            result.skipped.append(outputs[k])
            progress.update(output_rows(plan, bounds[k + 1] - bounds[k]))
    if todo:
        tasks = split(plan.tasks(), plan, bounds, range(min(todo), max(todo) + 1))
        state = identity.inputs_state(layout, _state_files(concat))  # once, for every output's journal
        with _run_source(request, source, plan, outdir, part) as run_source:
            jobs = [
                _job(source, concat, plan, outputs, k, tasks.pop(k), result.set_id, part, state, run_source)
                for k in todo
            ]
            try:
                if run_source is not None:  # the local engine: every output in one pass
                    set_outputs.write_in_one_pass(
                        request, source, run_source, plan, jobs, progress, started_at, t0, result.written
                    )
                else:
                    set_outputs.write_each(request, source, plan, jobs, progress, started_at, t0, result.written)
            except MixupError as exc:
                _say_written(exc, result.written)
                raise
    result.seconds = time.perf_counter() - t0
    return result


def _state_files(concat: ConcatReader) -> list[list[Path]] | None:
    """The files whose size and mtime stand for each input in the resume
    journals: the input itself, but every image of a folder of images (an
    image changed inside a class folder leaves the folder's own mtime as it
    was). None when no input is a folder of images."""
    shards = concat.layout.shards
    if all(s.format != "images" for s in shards):
        return None
    return [concat.input_files(k) if s.format == "images" else [s.path] for k, s in enumerate(shards)]


def _say_written(exc: MixupError, written: list[Path]) -> None:
    """An output of the part failed after others were committed: its message
    says which are written (they stay; --resume skips them)."""
    if not written:
        return
    names = ", ".join(p.name for p in written[:5]) + (f" and {len(written) - 5} more" if len(written) > 5 else "")
    exc.args = (
        f"{exc}; {len(written)} output(s) of this part were written before it and stay: {names} "
        "(--resume writes the rest)",
        *exc.args[1:],
    )


def _drop_stale_lock(output: Path) -> None:
    """An output skipped as complete: the lock file a run killed after its
    commit (before releasing the lock) left goes, as it does when a
    single-file --resume finds its output complete."""
    lock = atomic.RunLock(output)
    try:
        lock.acquire()
    except OutputError:
        return  # a live run holds it, and removes it itself
    lock.release()


def _run_source(request, source, plan, outdir: Path, part: Part):
    """The local engine's source for every output of the part: class
    pairings on compressed inputs read one uncompressed copy of the whole
    set, made once (``scratch``), not once per output."""
    if request.engine != "local":
        from contextlib import nullcontext

        return nullcontext(None)
    # Named with this process's host and pid: the next part removes it if a kill left it (identity.remove_stale).
    name = identity.own_name(f"{part.index}-{part.count}.", identity.SCRATCH_SUFFIX)
    return scratch.source_for_run(source, plan, outdir / name)


def _job(
    source, concat: ConcatReader, plan, outputs, k: int, tasks, sid: str, part: Part, state: str, run_source
) -> pipeline.OutputJob:
    """Output ``k``: its rows and arrays, its own input for the sidecar, the
    set for the journal, its digests' blocks shifted by its offset."""
    layout = concat.layout
    shard, output = layout.shards[k], outputs[k]
    first, stop = plan_offsets(plan, layout.offsets[k : k + 2])  # its input's rows the plan mixes
    rows = output_rows(plan, stop - first)
    specs = {key: ArraySpec((rows,) + spec.row_shape, spec.dtype) for key, spec in output_specs(source, plan).items()}
    input_record = {
        "set_id": sid,
        "path": str(shard.path.resolve()),
        "format": shard.format,
        "inputs_state": state,
        "arrays": {key: spec.to_dict() for key, spec in source.specs.items()},
    }
    return pipeline.OutputJob(
        output,
        format_of(output, for_output=True),
        lambda: tasks,
        rows,
        shard.path,
        shard.format,
        shard.specs,
        lambda: concat.input_files(k),
        specs,
        shift=(stop - first, first % plan.block_rows),
        input_record=input_record,
        set_section=identity.section(layout, k, part, sid, output.name),
        run_source=run_source,
        row_offset=shard.offset,
    )
