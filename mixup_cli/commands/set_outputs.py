"""A part's outputs written: each through the single-file run's machinery
(its lock, journal, partial file, record and commit), in one pass of the
local engine or one engine run each (Dask).

One pass (``write_in_one_pass``): every output's tasks go through one
``engines.local.run_outputs``, with one set of threads, buffers and
read-ahead. The pass opens an output (lock, journal, partial file) when it
reaches it, and commits it as soon as its rows are written and hashed,
before the next output's rows are mixed (the next output's first partners
are read meanwhile), so one output has files open at a time. Each commit is
the single-file run's, so a kill or a stop leaves what one run leaves (the
outputs before the current one committed, the current one resumable or
removed).

A run per output (``write_each``): the same steps, one output after the
other (the Dask engine runs a task graph per output).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial as bind
from pathlib import Path

from mixup_cli.commands import pipeline
from mixup_cli.commands.request import Progress
from mixup_cli.core import stopping
from mixup_cli.engines import local
from mixup_cli.record import atomic
from mixup_cli.run import preflight, resume


def _claim(request, job: pipeline.OutputJob):
    """Output ``job.output`` taken for this part: a commit a killed part left
    half-done finished or rolled back, its path checked, its lock held, its
    journal opened (``--resume``). Returns ``(lock, journal)``; the caller
    releases the lock."""
    output = job.output
    atomic.recover(output)
    preflight.check_output_path(job.input_path, output, request.overwrite, exists_ok=True)
    lock = atomic.RunLock(output)
    lock.acquire()
    try:
        # --resume of a set: outputs not started yet simply start (no warning for each).
        journal = resume.open_journal(output, request.resume and bool(atomic.partials(output, with_lock=False)))
    except BaseException:
        lock.release()
        raise
    return lock, journal


def write_each(request, source, plan, jobs: Sequence[pipeline.OutputJob], progress, started_at, t0, written) -> None:
    """Each output in a run of its own (``pipeline.write_output``), in turn;
    ``written`` receives each output as it is committed."""
    for n, job in enumerate(jobs):
        lock, journal = _claim(request, job)
        try:
            pipeline.write_output(request, source, plan, job, journal, progress, started_at, t0)
        finally:
            lock.release()
        written.append(job.output)
        if n + 1 < len(jobs):
            # Another output follows: a stop asked for during this commit is taken now.
            stopping.current().end_commit()


def write_in_one_pass(
    request,
    source,
    run_source,
    plan,
    jobs: Sequence[pipeline.OutputJob],
    progress: Progress,
    started_at: str,
    t0: float,
    written: list[Path],
) -> None:
    """Every output of ``jobs`` in one pass of the local engine over
    ``run_source`` (see the module's text); ``written`` receives each output
    as it is committed. On any failure the outputs still open are left as a
    single run leaves its output (kept for --resume at a checkpoint, else
    removed), and their locks released."""
    opened: dict[int, tuple[atomic.RunLock, pipeline._Partial]] = {}

    def open_output(k: int) -> local.Sink:
        stopping.check()  # a stop asked for before this output began: nothing of it is made
        lock, journal = _claim(request, jobs[k])
        try:
            partial = pipeline.start_output(request, source, plan, jobs[k], journal, started_at)
        except BaseException:
            lock.release()
            raise
        opened[k] = (lock, partial)
        if partial.resumed:
            progress.update(pipeline.resumed_rows(partial))
        journal, writer = partial.journal, partial.writer
        return local.Sink(
            writer, frozenset(journal.done), bind(journal.task_done, writer=writer), partial.block_digests
        )

    def finished(k: int, engine_info: dict) -> None:
        lock, partial = opened.pop(k)
        try:
            pipeline.finish_output(request, source, plan, partial, engine_info, t0)
        except BaseException as exc:
            partial.fail(exc)
            raise
        finally:
            lock.release()
        written.append(jobs[k].output)
        if k + 1 < len(jobs):
            # Another output follows: a stop asked for during this commit is taken now.
            stopping.current().end_commit()

    outputs = [(job.tasks(), bind(open_output, k)) for k, job in enumerate(jobs)]
    try:
        local.run_outputs(run_source, plan, outputs, progress, finished=finished, batch_rows=request.batch_size)
    except BaseException as exc:
        told = None  # what ``fail`` says instead (a full disk, in words)
        for lock, partial in opened.values():  # written to, not committed: as one run leaves its output
            try:
                partial.fail(exc)
            except BaseException as said:
                told = told or said
            finally:
                lock.release()
        if told is not None:
            raise told from None
        raise
