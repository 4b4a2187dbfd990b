"""``augment()``: a request through the data flow of ARCHITECTURE.md.

check the request and OUT -> open the source -> plan -> open (or reopen)
the partial output and its journal -> run the tasks on the engine -> finish
the files -> the sidecar's record -> commit. Each step lives in a module of
its own (``preflight``, ``source``, ``planning``, ``resume``, ``engines``,
``sidecar``, ``atomic``); this module only puts them in order and cleans up
when a step fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from mixup_cli import engines
from mixup_cli._version import __version__
from mixup_cli.commands.request import AugmentRequest, AugmentResult, Progress
from mixup_cli.core import stopping
from mixup_cli.core.blend import check_alpha
from mixup_cli.core.errors import OutputError
from mixup_cli.engines import local
from mixup_cli.io import create_writer  # looked up here at run time: tests wrap it
from mixup_cli.io.base import WriteOptions, check_image_options, layout_options
from mixup_cli.mixing.sampling import CLASS_PAIRINGS, Plan, Task, check_positive
from mixup_cli.record import atomic, provenance
from mixup_cli.run import entries, preflight, resume, scratch
from mixup_cli.run.planner import build_plan, output_specs
from mixup_cli.run.source import Source, open_source
from mixup_cli.targets import named

log = logging.getLogger("mixup_cli")

__all__ = ["AugmentRequest", "AugmentResult", "OutputJob", "Progress", "augment", "open_source", "write_output"]


def augment(request: AugmentRequest, progress: Progress | None = None) -> AugmentResult:
    """Run ``mixup augment``: write OUT and its sidecar, or nothing at all.

    Everything is built under ``.OUT.mixup-partial`` names beside OUT; on any
    failure (interruption included) those are removed and an existing OUT is
    left as it was. After a kill they stay, and ``request.resume`` continues
    from the last task the journal records.
    """
    started_at, t0 = provenance.utc_now(), time.perf_counter()
    progress = progress or Progress()
    check_request(request)
    input_path, output = Path(request.input), Path(request.output)
    atomic.recover(output)  # a commit a killed run left half-done is finished or rolled back first
    maybe_done = preflight.maybe_finished(output, request.resume, request.overwrite)
    out_format = preflight.check_output_path(input_path, output, request.overwrite, exists_ok=maybe_done)
    y_for = f"--pairing {request.pairing}" if request.pairing in CLASS_PAIRINGS else None
    source = open_source(
        input_path,
        request.x_key,
        request.y_key,
        request.data_options(),
        request.require_y,
        y_for=y_for,
        scratch_prefix=atomic.partial_path(output),
    )
    try:
        _check_output_arrays(request, source, out_format)
    except BaseException:
        source.reader.close()
        raise
    lock = atomic.RunLock(output)
    try:
        lock.acquire()
        if maybe_done:
            return _already_done(request, source, output, out_format)
        journal = resume.open_journal(output, request.resume)
        if journal is not None and request.seed is None and journal.seed is not None:
            request = dataclasses.replace(request, seed=journal.seed)  # the interrupted run's seed
        plan = build_plan(source, **request.plan_parameters())
        job = OutputJob(
            output,
            out_format,
            plan.tasks,
            plan.output_rows,
            input_path,
            source.reader.format_name,
            source.input_specs or source.specs,
            source.reader.files,
            output_specs(source, plan),
        )
        partial, record = write_output(request, source, plan, job, journal, progress, started_at, t0)
    finally:
        lock.release()
        source.reader.close()
    return AugmentResult(
        output,
        partial.sidecar,
        plan.output_rows,
        partial.seconds,
        int(plan.seed),
        partial.journal.run_id,
        record,
    )


def _check_output_arrays(request: AugmentRequest, source: Source, out_format: str) -> None:
    """Before the plan (which may take long): options and arrays OUT's format
    cannot take. A WebDataset output (.tar) holds uint8 images only."""
    check_image_options(out_format, request.image_format, request.jpeg_quality)
    if out_format == "webdataset":
        from mixup_cli.io import wds_out

        options = WriteOptions(image_format=request.image_format or "png", jpeg_quality=request.jpeg_quality)
        wds_out.check_specs(request.output, source.specs, options)


@dataclasses.dataclass
class OutputJob:
    """One output and what is its own: a single-file run writes one, a set's
    part one per output (``sets.run``), both through ``write_output``."""

    output: Path
    out_format: str
    tasks: Callable[[], Iterable[Task]]  # the plan's tasks that write it, in the order the journal numbers
    rows: int
    input_path: Path  # the input its sidecar records (a set's output: its own input)
    input_format: str
    input_specs: dict
    input_files: Callable[[], list]  # hashed into that entry
    specs: dict  # its arrays
    shift: tuple[int, int] | None = None  # a set's output: (its input's rows, offset mod block rows), digests.Bounds
    input_record: dict | None = None  # what the journal's fingerprint records of the input (a set's inputs)
    set_section: dict | None = None  # the sidecar's ``set`` section
    run_source: Source | None = None  # what the local engine reads (a set's scratch copy, made once for all)
    row_offset: int = 0  # a set's output: the set row of its input's first row (WebDataset lineage)


def write_output(
    request, source: Source, plan: Plan, job: OutputJob, journal, progress: Progress, started_at: str, t0: float
):
    """The partial output (reopened from ``journal`` or fresh), its tasks on
    the engine, the record, the commit; on any failure what --resume needs is
    kept and the rest removed. The caller holds OUT's lock. Returns
    ``(partial, record)``."""
    stopping.check()  # asked to stop while the input was opened and planned: nothing written yet
    partial = start_output(request, source, plan, job, journal, started_at)
    try:
        progress.start(job.rows)
        engine_info = _run_tasks(request, source, plan, partial, progress)
        record = finish_output(request, source, plan, partial, engine_info, t0)
    except BaseException as exc:
        partial.fail(exc)
        raise
    return partial, record


def start_output(request, source: Source, plan: Plan, job: OutputJob, journal, started_at: str) -> _Partial:
    """The partial output, reopened from ``journal`` or made (its writer and
    journal), its input's files hashing in the background, and the digests
    of the blocks it already holds. Removes what it made if it fails."""
    partial = _Partial.open(request, source, plan, job, journal, started_at)
    partial.input_hashes = provenance.BackgroundHash(job.input_files())
    try:
        partial.create(request, source)
        partial.block_digests = resume.block_digests(plan, partial.specs, partial.journal, job.tasks(), job.shift)
        partial.resumed = len(partial.journal.done)
    except BaseException as exc:
        partial.fail(exc)
        raise
    return partial


def resumed_rows(partial: _Partial) -> int:
    """Rows of the tasks the journal had done when the run started."""
    done = partial.journal.done
    if not done:  # (work proportional to the tasks done, only when resuming)
        return 0
    return sum(t.stop - t.start for i, t in enumerate(partial.job.tasks()) if i in done)


def finish_output(request, source: Source, plan: Plan, partial: _Partial, engine_info: dict, t0: float) -> dict:
    """Once every task is written: the files finished, the record, the
    commit. Returns the record. (On failure the caller calls ``partial.fail``.)"""
    close_files(request, source, plan, partial)
    record = _record(request, source, plan, partial, engine_info, partial.input_hashes, time.perf_counter() - t0)
    _commit(request, partial.job.output, partial.job.out_format, partial, record)
    return record


def check_request(request: AugmentRequest) -> None:
    """Refuse, before anything is opened, options that cannot work (exit 2)."""
    check_alpha(request.alpha)
    check_positive(request.copies, "--copies")
    for value, option in ((request.batch_size, "--batch-size"), (request.block_rows, "--block-rows")):
        if value is not None:
            check_positive(value, option)
    engines.check_engine_options(request.engine, request.scheduler, request.workers)


def _already_done(request: AugmentRequest, source: Source, output: Path, out_format: str) -> AugmentResult:
    finished = entries.completed_run(
        source,
        output,
        out_format,
        input_path=request.input,
        plan_parameters=request.plan_parameters(),
        compression=request.compression,
    )
    if finished is None:
        raise OutputError(
            f"{output}: already exists, written by another command (its sidecar differs); "
            "pass --overwrite to replace it"
        )
    sidecar, record, rows, seed = finished
    return AugmentResult(output, sidecar, rows, 0.0, seed, str(record.get("run_id")), record, already_complete=True)


class _Partial:
    """The partial output of a run: its writer, journal and names beside OUT."""

    def __init__(self, job, plan, options, fingerprint, journal, writer, started_at):
        self.job = job
        self.output, self.out_format, self.plan, self.specs = job.output, job.out_format, plan, job.specs
        self.options, self.fingerprint, self.journal, self.writer = options, fingerprint, journal, writer
        self.started_at = started_at
        self.tmp = atomic.partial_path(self.output)
        self.sidecar, self.sidecar_tmp = atomic.sidecar_names(self.output)  # the staged one goes with the partial
        self.commit_started = False
        self.resumed = 0  # tasks the journal had when the run started
        self.seconds = 0.0
        self.block_digests = None
        self.input_hashes = None  # provenance.BackgroundHash of the input's files

    @classmethod
    def open(cls, request, source, plan, job: OutputJob, journal, started_at) -> _Partial:
        """Reopen what the journal describes (a refusal leaves it as it was),
        or prepare a fresh start."""
        options = layout_options(
            job.out_format,
            request.compression,
            plan.block_rows,
            request.chunk_rows,
            request.byte_shuffle,
            request.zarr_format,
            request.image_format,
            request.jpeg_quality,
        )
        fingerprint = resume.fingerprint(
            plan,
            source,
            job.out_format,
            job.specs,
            options=request.values(resume.FINGERPRINTED),
            input_path=request.input,
            input_record=job.input_record,
        )
        writer = None
        if journal is not None:
            writer = resume.reopen_partial(
                journal, fingerprint, job.output, job.out_format, job.specs, options, plan, job.tasks(), job.shift
            )
            journal = journal if writer is not None else None
        return cls(job, plan, options, fingerprint, journal, writer, started_at)

    def create(self, request, source: Source) -> None:
        """A fresh partial output and journal, once it is known to fit (unless reopened)."""
        if self.journal is None:
            by_output = request.engine == "local" and self.job.run_source is None  # else made once, or none
            scratch_needs = scratch.scratch_bytes(source, self.plan) if by_output else 0
            preflight.check_free_space(self.output, self.out_format, self.specs, request.compression, scratch_needs)
            self.writer = create_writer(self.tmp, self.out_format, self.specs, self.options)
            self.journal = resume.Journal(
                resume.journal_path(self.output), self.fingerprint, uuid.uuid4().hex, self.started_at
            )
            self.journal.save()

    def fail(self, exc: BaseException) -> None:
        """After ``exc``: keep what the next command needs, remove the rest."""
        if self.commit_started and atomic.commit_record_path(self.output).exists():
            return  # the new output is in place: its record lets the next command finish the commit
        if isinstance(exc, KeyboardInterrupt) and resume.keep_for_resume(self.writer, self.journal):
            return  # stopped at a checkpoint: --resume continues from the journal
        if self.writer is not None:
            self.writer.abort()
        atomic.remove_partials(self.output)
        if preflight.disk_full(exc):
            raise OutputError(
                f"{self.output}: disk full (no space left in {self.output.parent.resolve()}); "
                f"nothing of {self.output.name} was written: free some space or choose another output directory"
            ) from None


def _run_tasks(request, source: Source, plan: Plan, partial: _Partial, progress: Progress) -> dict:
    """Every task not yet written, on the request's engine."""
    journal, writer, job = partial.journal, partial.writer, partial.job
    if partial.resumed:
        progress.update(resumed_rows(partial))
    common = dict(
        skip=frozenset(journal.done),
        on_done=lambda index: journal.task_done(index, writer),
        block_digests=partial.block_digests,
    )
    if request.engine == "dask":  # workers open the input themselves, prepared as here
        from mixup_cli.engines import dask

        return dask.run(
            source, plan, writer, job.tasks(), progress, **common, scheduler=request.scheduler, workers=request.workers
        )
    if job.run_source is not None:
        return local.run(job.run_source, plan, writer, job.tasks(), progress, **common, batch_rows=request.batch_size)
    # Class pairings on compressed input: read from an uncompressed copy.
    with scratch.source_for_run(source, plan, partial.tmp.with_name(partial.tmp.name + ".scratch.h5")) as run_source:
        return local.run(run_source, plan, writer, job.tasks(), progress, **common, batch_rows=request.batch_size)


def close_files(request, source: Source, plan: Plan, partial: _Partial) -> None:
    """Every task written: the writer flushed, the journal saved (every task
    recorded before the file is finished), the attributes set, the files closed."""
    journal, writer, job = partial.journal, partial.writer, partial.job
    writer.flush()
    journal.save()
    writer.set_attributes(_attributes(request, source, plan, writer, journal.run_id))
    if hasattr(writer, "set_lineage"):  # WebDataset output names each row's input samples
        own_rows = job.shift[0] if job.shift is not None else plan.n_rows
        writer.set_lineage(_row_names(source.reader), own_rows, job.row_offset)
    writer.close()


def _row_names(reader):
    """The input's ``row_names(rows)`` (a folder of images, WebDataset shards),
    looked for through the readers that wrap it; None for other inputs."""
    for _ in range(8):
        if reader is None or hasattr(reader, "row_names"):
            break
        reader = getattr(reader, "inner", None) or getattr(reader, "_inner", None)
    return getattr(reader, "row_names", None)


def _decoded(source: Source) -> dict[str, str]:
    """How each input array was decoded on reading, where it was (``io.cf``)."""
    notes = {key: source.reader.describe(key).get("decoded") for key in source.specs}
    return {key: note for key, note in notes.items() if note}


def _attributes(request, source: Source, plan: Plan, writer, run_id: str) -> dict:
    """The small metadata the output carries: version, run id, class names;
    the input columns an array was gathered from (Parquet ``--x-key 'f*'``);
    the run's parameters where the format keeps them (Parquet's schema)."""
    attrs = {"mixup_cli_version": __version__, "run_id": run_id, **named.attributes(source.prepared)}
    attrs.update({f"{key}_decoded": note for key, note in _decoded(source).items()})  # netCDF packing undone
    gathered = {key: cols for key in source.specs if (cols := source.reader.describe(key).get("columns"))}
    if gathered:
        attrs["gathered_columns"] = json.dumps(gathered)
    tensors = {key: form for key in source.specs if (form := source.reader.describe(key).get("tensor"))}
    if tensors and getattr(writer, "keeps_tensor_columns", False):  # Parquet: x written back as it came
        attrs["tensor_columns"] = json.dumps(tensors)
    if getattr(writer, "records_parameters", False):
        attrs["parameters"] = json.dumps(_parameters(plan, request, source))
    return attrs


def _parameters(plan: Plan, request: AugmentRequest, source: Source) -> dict:
    """The sidecar's ``parameters`` of this run."""
    return entries.run_parameters(plan, source, x_key=request.x_key, compression=request.compression)


def _record(
    request, source: Source, plan: Plan, partial: _Partial, engine_info: dict, input_hashes, seconds: float
) -> dict:
    """The sidecar's record, once the output's files are closed (and synced)."""
    writer, output, tmp = partial.writer, partial.output, partial.tmp
    out_files = [tmp / rel if str(rel) != "." else tmp for rel in writer.files()]
    out_hashing = provenance.BackgroundHash(out_files if request.hash_files else [])
    atomic.sync(tmp)  # the disk flush overlaps the hashing; commit's own fsync is then quick
    out_hashes, in_hashes = out_hashing.result(), input_hashes.result()
    job = partial.job
    input_entry = entries.dataset_entry(job.input_path, job.input_format, job.input_specs, in_hashes)
    for key, note in _decoded(source).items():  # values read other than as stored (netCDF packing)
        input_entry["arrays"][key]["decoded"] = note
    final = {str(output / rel if str(rel) != "." else output): f for rel, f in zip(writer.files(), out_files)}
    output_entry = entries.output_entry(
        output, partial.out_format, partial.specs, final, out_hashes, plan, partial.block_digests, job.shift
    )
    stored = getattr(writer, "stored_digests", None)  # lossy storage (JPEG): the rows as the file holds them
    for key, (digest, note) in (stored() if stored is not None else {}).items():
        output_entry["arrays"][key].update(sha256=digest, stored=note)
    partial.seconds = seconds
    execution = dict(engine_info, seconds=round(seconds, 3))
    if partial.resumed:
        execution["resumed_tasks"] = partial.resumed
    return provenance.build(
        run_id=partial.journal.run_id,
        command_line=request.command_line,
        parameters=_parameters(plan, request, source),
        execution=execution,
        input_entry=input_entry,
        output_entry=output_entry,
        started_at=partial.journal.started_at,
        finished_at=provenance.utc_now(),
        set_section=job.set_section,
    )


def _commit(request, output: Path, out_format: str, partial: _Partial, record: dict) -> None:
    """Stage the sidecar and put OUT and it in place."""
    atomic.stage_text(partial.sidecar_tmp, provenance.to_json(record))
    atomic.test_pause("staged")
    # The point of no return: a stop asked for until now is raised here,
    # before anything is replaced; from here on the run finishes the commit
    # whatever arrives, and a request meanwhile is only listed as too late
    # (``StopToken.late``), never taken as a stop.
    stopping.current().begin_commit()
    partial.commit_started = True
    directory = out_format in preflight.DIRECTORY_FORMATS
    atomic.commit_output(
        partial.tmp,
        output,
        partial.sidecar_tmp,
        partial.sidecar,
        request.overwrite,
        check=lambda: atomic.check_replaceable(output, partial.sidecar, directory),
    )
    atomic.test_pause("committed")
