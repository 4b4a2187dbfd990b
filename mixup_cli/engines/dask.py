"""The Dask engine: a plan's tasks run on a Dask cluster.

Each task is submitted as one future that computes ``tasks.compute_task`` on
a worker (the computation the local engine runs batch by batch). Workers open the input path themselves (shared storage), so no
dataset travels through the client; only the plan and the task's
coordinates do.

Output:

* Zarr: the workers write their rows straight into the partial store. Output
  chunks divide the block size, but a copy's blocks need not start on a
  chunk boundary (when the row count is not a multiple of it), so a worker
  writes only the chunks its task covers whole and returns the few rows at
  its edges; the client writes those, one at a time. No chunk is ever
  written by two processes at once.
* HDF5, ``.npz``, ``.npy``: every task's rows come back to the client, whose
  single writer writes them as they arrive.

At most ``2 x worker threads`` tasks are in flight, so the client holds a
bounded number of blocks whatever the dataset's size (ARCHITECTURE.md, "Memory"). A task that fails on a
worker ends the run with that worker's message; tasks still running are
waited for first, so none writes after the partial output is removed.
The client waits for results at most ``stopping.POLL_S`` at a time and
looks for a stop between two waits (``stopping``); tasks in flight are then
waited for the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, MixupError
from mixup_cli.engines import import_distributed
from mixup_cli.io import ArraySpec
from mixup_cli.mixing.sampling import Plan, Task
from mixup_cli.record import digests
from mixup_cli.run.prepared import DataOptions
from mixup_cli.run.source import open_source
from mixup_cli.run.tasks import compute_task

# How long to wait for an existing scheduler to answer, and for it to have a worker.
CONNECT_TIMEOUT_S = 20
WORKERS_TIMEOUT_S = 60
# Tasks in flight per worker thread: enough to keep workers busy while the
# client writes, few enough to bound the client's memory.
IN_FLIGHT_PER_THREAD = 2
# After a failure, how long to let tasks already running finish.
DRAIN_TIMEOUT_S = 120


@dataclass(frozen=True)
class Job:
    """What every task of one run needs on a worker (small and picklable)."""

    run: str  # names this run's tasks and the inputs workers keep open for it
    input: str  # absolute path, the same on every worker
    specs: dict[str, ArraySpec]  # the data arrays as mixed, as the client saw them
    x_key: str
    y_key: str | None
    options: DataOptions  # how the input is prepared (targets, dtypes, checks; the classes found by the client)
    plan: Plan
    target: object | None  # the writer's parallel_target(), or None
    layout: object | None = None  # a set's inputs (sets.SetLayout, absolute paths): read as their ConcatReader


Piece = tuple[str, int, np.ndarray]  # key, first output row, rows


# ---------------------------------------------------------------- on a worker

_READERS: dict[tuple, object] = {}  # (run, path, file identity) -> the input (a source.Source), open
_READERS_LOCK = threading.Lock()


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # not running inside a worker (tests call run_task directly)
        return "this process"


def _open_input(job: Job):
    """The input, opened once per worker process and run, and kept open for
    the run's next tasks (``close_inputs`` closes it when the run ends)."""
    try:
        st = os.stat(job.input)
    except OSError:
        raise InputError(f"{job.input}: no such file or directory") from None
    key = (job.run, job.input, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            concat = None
            if job.layout is not None:  # a set: its inputs as one reader, opened from the pickled layout
                from mixup_cli.sets import ConcatReader

                concat = ConcatReader(job.layout)
            reader = open_source(
                Path(job.input), job.x_key, job.y_key, job.options, require_y=False, reader=concat, layout=job.layout
            )
            try:
                for name, expected in job.specs.items():
                    found = reader.specs.get(name)
                    if found != expected:
                        what = "is missing" if found is None else f"is now {found.shape} {found.dtype}"
                        raise InputError(
                            f"{job.input}: changed since the run started ('{name}' {what}, "
                            f"expected {expected.shape} {expected.dtype}); run again"
                        )
            except BaseException:
                reader.reader.close()
                raise
            _READERS[key] = reader
        return reader


def close_inputs(run: str) -> None:
    """Close the inputs this worker process keeps open for ``run`` (called on
    every worker when the run ends: releases file handles and decompressed
    temporary copies; other runs sharing the cluster keep theirs)."""
    with _READERS_LOCK:
        for key in [k for k in _READERS if k[0] == run]:
            _READERS.pop(key).reader.close()


def _aligned(start: int, stop: int, chunk: int, end: int) -> tuple[int, int]:
    """The part of rows ``start:stop`` made of whole chunks (the array's last,
    shorter chunk counts as whole); empty (lo >= hi) when there is none."""
    lo = -(-start // chunk) * chunk
    hi = stop if stop == end else stop // chunk * chunk
    return lo, hi


def run_task(job: Job, task: Task) -> tuple[list[Piece], dict[str, str] | None]:
    """Compute one task on a worker; return the rows the client must write,
    and the digests of the task's block (``digests.of_rows``). A task that is
    part of a block returns all its rows and no digests: the client hashes
    them with the block's other parts (``_Parts``)."""
    try:
        rows = compute_task(_open_input(job), job.plan, task)
    except MixupError as exc:
        raise type(exc)(f"{exc} (on worker {_worker_name()})") from None
    except Exception as exc:
        if task.partner_block is None:
            partners = "partners read by index"
        else:
            partners = "partners from rows {}:{}".format(*job.plan.block_bounds(task.partner_block))
        raise MixupError(
            f"{job.input}: cannot read or mix input rows {task.start}:{task.stop} ({partners}) "
            f"on worker {_worker_name()}: {type(exc).__name__}: {exc}"
        ) from None
    if (task.start, task.stop) != job.plan.block_bounds(task.block):
        return [(key, task.out_start, data) for key, data in rows.items()], None
    found = digests.of_rows(rows)
    if job.target is None:
        return [(key, task.out_start, data) for key, data in rows.items()], found
    pieces: list[Piece] = []
    end = job.plan.output_rows
    for key, data in rows.items():
        start, stop = task.out_start, task.out_start + len(data)
        lo, hi = _aligned(start, stop, job.target.chunk_rows[key], end)
        if lo >= hi:
            pieces.append((key, start, data))
            continue
        try:
            job.target.write(key, lo, data[lo - start : hi - start])
        except Exception as exc:
            raise MixupError(
                f"{job.target.path}: worker {_worker_name()} cannot write '{key}' ({type(exc).__name__}: {exc}); "
                "Zarr output must be a directory the workers can write at the same path"
            ) from None
        if lo > start:
            pieces.append((key, start, data[: lo - start]))
        if hi < stop:
            pieces.append((key, hi, data[hi - start :]))
    return pieces, found


# ---------------------------------------------------------------- on the client


@contextmanager
def _quiet_distributed_logs():
    """Dask's own log lines (worker start and stop, ...) are not ours to show."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def connect(scheduler: str | None, workers: int | None):
    """A client of the cluster at ``scheduler``, or of a local cluster of
    ``workers`` processes started here and stopped on the way out."""
    distributed = import_distributed()
    cluster = None
    with _quiet_distributed_logs():
        if scheduler:
            try:
                client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise MixupError(
                    f"--scheduler {scheduler}: cannot connect to a Dask scheduler there ({exc}); "
                    "start one with `dask scheduler` and pass the address it prints"
                ) from None
        else:
            n = workers or os.cpu_count() or 1
            cluster = distributed.LocalCluster(
                n_workers=n,
                processes=True,
                threads_per_worker=1,
                dashboard_address=":0",
                silence_logs=logging.CRITICAL,
            )
            client = distributed.Client(cluster, set_as_default=False)
        try:
            try:
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except (TimeoutError, OSError):
                raise MixupError(
                    f"--scheduler {scheduler}: the scheduler has no workers; start some with `dask worker {scheduler}`"
                ) from None
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run(
    source,
    plan: Plan,
    writer,
    tasks,
    progress,
    *,
    skip=frozenset(),
    on_done=None,
    block_digests=None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> dict:
    """Compute ``tasks`` on Dask and hand their rows to ``writer``; return
    what the sidecar records of the engine. The protocol of
    ``engines.local.run``; each block's digests come from its worker.
    ``source`` is the client's opened input; workers open the same path,
    prepared with the same options (the classes found here included: no
    pass over y on the workers)."""
    distributed = import_distributed()
    run_id = uuid.uuid4().hex[:12]
    options = source.prepared.resolved_options() if source.prepared is not None else DataOptions()
    job = Job(
        run_id,
        str(Path(source.path).resolve()),
        dict(source.specs),
        next(iter(source.specs)),
        source.y_key,
        options,
        plan,
        writer.parallel_target(),
        _absolute(source.layout),
    )
    stop = stopping.current()
    stop.check()  # a stop asked for while the cluster started
    with connect(scheduler, workers) as client, _quiet_distributed_logs():
        nthreads = client.nthreads()
        limit = IN_FLIGHT_PER_THREAD * max(1, sum(nthreads.values()))
        todo = ((i, task) for i, task in enumerate(tasks) if i not in skip)
        pending: dict = {}
        arrived: queue.Queue = queue.Queue()
        parts = _Parts(plan, block_digests)

        def submit_next() -> None:
            for i, task in todo:
                future = client.submit(run_task, job, task, key=f"mixup-{run_id}-{i}", pure=False, retries=0)
                pending[future] = (i, task)
                future.add_done_callback(arrived.put)  # called in the client's thread, whatever the outcome
                return

        try:
            for _ in range(limit):
                submit_next()
            for future in _arrivals(arrived, pending, stop):
                index, task = pending.pop(future)
                pieces, found = _result(future, task)
                for key, start, rows in pieces:
                    writer.write(key, start, rows)
                if found is None:
                    parts.add(task, pieces)
                elif block_digests is not None:
                    block_digests.add(task.out_start, found)
                if on_done is not None:
                    on_done(index)
                future.release()
                progress.update(task.stop - task.start)
                submit_next()
        except BaseException:
            _drain(client, list(pending))
            raise
        finally:
            try:
                client.run(close_inputs, run_id)
            except Exception:  # a worker gone: nothing of ours left open there
                pass
    return {
        "engine": "dask",
        "workers": len(nthreads),
        "scheduler": scheduler or "local",
        "dask": distributed.__version__,
        "batch_size": plan.block_rows,  # a worker mixes a whole task at once
    }


def _arrivals(arrived: queue.Queue, pending: dict, stop):
    """The futures of ``pending`` as they finish (each put in ``arrived`` by
    its done callback), while ``pending`` is not empty; each wait lasts at
    most ``stopping.POLL_S``, and a stop asked for meanwhile is raised
    between two."""
    while pending:
        stop.check()
        try:
            yield arrived.get(timeout=stopping.POLL_S)
        except queue.Empty:
            continue


def _absolute(layout):
    """A set's layout with every input by its absolute path (workers may run elsewhere)."""
    if layout is None:
        return None
    return dataclasses.replace(
        layout, shards=tuple(dataclasses.replace(s, path=Path(s.path).resolve()) for s in layout.shards)
    )


class _Parts:
    """Digests of blocks run as several tasks: each part's rows wait until
    the rows before it in its block have come, then are hashed in order
    (a block's digest covers its rows in order; parts arrive in any)."""

    def __init__(self, plan: Plan, block_digests):
        self._plan = plan
        self._hasher = digests.BlockHasher(block_digests) if block_digests is not None else None
        self._waiting: dict[int, dict[str, np.ndarray]] = {}  # first output row of a part -> its rows
        self._next: dict[int, int] = {}  # block's first output row -> the next row to hash

    def add(self, task: Task, pieces: list[Piece]) -> None:
        if self._hasher is None:
            return
        block_start = self._hasher.block_start(task.out_start)  # the output's blocks (a set's are shifted)
        self._waiting[task.out_start] = {key: rows for key, _, rows in pieces}
        at = self._next.get(block_start, block_start)
        while at in self._waiting:
            rows = self._waiting.pop(at)
            self._hasher.update(at, rows)
            at += len(next(iter(rows.values())))
        self._next[block_start] = at


def _result(future, task: Task) -> tuple[list[Piece], dict[str, str]]:
    """The task's rows and digests, or its worker's error (a MixupError, with its message)."""
    try:
        return future.result()
    except MixupError:
        raise
    except Exception as exc:  # a worker died, the scheduler went away, ...
        raise MixupError(
            f"the Dask cluster failed on input rows {task.start}:{task.stop}: {type(exc).__name__}: {exc}"
        ) from None


def _drain(client, futures) -> None:
    """Let the tasks already submitted finish (they may be writing to the
    partial output, which is removed next), then drop them."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for future in futures:  # not stopped by a stop: the partial output must not be written once removed
        try:
            future.exception(timeout=max(0.1, deadline - time.monotonic()))  # waits; never raises its error
        except Exception:
            pass
    try:
        client.cancel(futures)
    except Exception:
        pass
