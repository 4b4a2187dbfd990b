"""The local engine: a plan's tasks in this process.

Reading and mixing happen in the caller's thread, writing in a second one
and hashing in a third (``_Stage``), through two sets of output buffers;
input blocks sit in a few buffers reused for the whole run (``BlockCache``).
With global pairing over several blocks, a block is mixed in place (its own
rows are not needed again: the cycle reads it afresh when it comes back as a
partner). Partners read by index (global, class and index pairings) are
read one task ahead on a thread of their own (``_ReadAhead``), while this
task mixes; the input is read by one thread at a time. The memory this takes: ARCHITECTURE.md, "Memory" (the one
statement of the bound). Each task's rows come from ``tasks.output_rows``, the
computation every engine shares.

A stop (``stopping``) is taken after each batch and in every wait of the
caller's thread, which wakes every ``stopping.POLL_S`` to look for one.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.io import ArraySpec
from mixup_cli.mixing import balance
from mixup_cli.mixing.mixer import Mixer
from mixup_cli.mixing.sampling import Plan
from mixup_cli.record import atomic, digests
from mixup_cli.run.planner import default_batch_rows
from mixup_cli.run.tasks import output_rows, read_partners, reads_by_index, task_input, whole_block


@dataclass
class Sink:
    """Where one output's rows go: its writer, the tasks its journal has
    done (``skip``: numbered in the order of its tasks), ``on_done(index)``
    once a task's rows are written, and its ``digests.BlockDigests``."""

    writer: object
    skip: frozenset = frozenset()
    on_done: Callable[[int], None] | None = None
    block_digests: object | None = None


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
    batch_rows: int | None = None,
    threaded: bool = True,
) -> dict:
    """Compute ``tasks`` (an iterable of the plan's tasks, whole blocks or
    parts of them) and hand their rows to ``writer``; return what the sidecar
    records of the engine.

    Tasks are numbered in the order of ``tasks``; those in ``skip`` are
    already in the output (resume). ``on_done(index)`` is called once all of
    a task's rows are written (and hashed). Each batch is hashed into
    ``block_digests`` (a ``digests.BlockDigests``), in a third thread.
    ``threaded=False`` writes and hashes inline: same bytes, slower.
    """
    sink = Sink(writer, frozenset(skip), on_done, block_digests)
    return run_outputs(source, plan, [(tasks, lambda: sink)], progress, batch_rows=batch_rows, threaded=threaded)


def run_outputs(
    source,
    plan: Plan,
    outputs: Sequence[tuple[Iterable, Callable[[], Sink]]],
    progress,
    *,
    finished: Callable[[int, dict], None] | None = None,
    batch_rows: int | None = None,
    threaded: bool = True,
) -> dict:
    """One pass over several outputs' tasks, in order, with one set of
    threads, buffers and read-ahead: a set's part writes all its outputs so,
    and the partners of an output's first task are read while the output
    before it is finished.

    ``outputs``: ``(tasks, open)`` for each output. ``open()`` is called in
    this thread when the pass reaches the output (once the output before it
    is finished) and returns its ``Sink``. ``finished(k, info)`` is called in
    this thread once every row of output ``k`` is written and hashed, before
    any row of the next output is mixed. Returns what the sidecar records of
    the engine (``info``).
    """
    batch_rows = batch_rows or default_batch_rows(source.row_bytes, plan.block_rows)
    info = {"engine": "local", "batch_size": batch_rows}
    state = _Run.start(balance.view(source, plan), plan, batch_rows, progress, threaded)
    ahead, stream = state.ahead, _Stream(outputs, threaded)
    try:
        following = stream.peek()
        pending = ahead.start(following.task) if ahead is not None and following is not None else None
        while (item := stream.pull()) is not None:
            state.stop.check()
            if item.task is None:
                # Finished before the next output's rows are mixed (its first
                # partners are being read): a stop then finds every output
                # before the current one complete, as with a run per output.
                state.wait_written()
                stream.close(item.output)
                if finished is not None:
                    finished(item.output, info)
                continue
            if pending is not None and (following.output, following.index) != (item.output, item.index):
                ahead.result(pending)  # read for a task the output's journal had done: dropped
                pending = None
            partners = ahead.result(pending) if pending is not None else None
            # the next task's partners are read while this one mixes (the next output's too)
            following = stream.peek()
            pending = ahead.start(following.task) if ahead is not None and following is not None else None
            state.run_task(item.task, partners, item.target)
            del partners
            if item.target.sink.on_done is not None:
                state.after(lambda i=item.index, done=item.target.sink.on_done: done(i))
    except BaseException:
        state.close(quietly=True)
        stream.close_all()
        raise
    state.close()
    return info


@dataclass
class _Item:
    """Task ``index`` of output ``output`` (``task`` None: the output's end)."""

    output: int
    index: int
    task: object | None
    target: _Target | None


class _Target:
    """An open output of the pass: its sink, the write and hash calls the
    stages make for it, and its disk flusher."""

    def __init__(self, sink: Sink, threaded: bool):
        self.sink = sink
        writer = sink.writer
        self.flusher = _Flusher(writer) if threaded else None
        hasher = digests.BlockHasher(sink.block_digests) if sink.block_digests is not None else None
        self.hash = hasher.update if hasher is not None else None

        def write(at, arrays):
            for key, arr in arrays.items():
                writer.write(key, at, arr)
                if self.flusher is not None:
                    self.flusher.wrote(arr.nbytes)

        self.write = write

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
            self.flusher = None


class _Stream:
    """The pass's tasks in order. An output is opened when its first item is
    pulled (after the output before it is finished), and the tasks its
    journal has done are left out; after its tasks, an item marks its end."""

    def __init__(self, outputs, threaded: bool):
        self._tasks = [list(tasks) for tasks, _ in outputs]
        self._openers = [opener for _, opener in outputs]
        self._threaded = threaded
        self._k, self._i = 0, 0  # the output of the next item, and its next task's position
        self._open: dict[int, _Target] = {}

    def _next_position(self, k: int, i: int) -> int:
        skip = self._open[k].sink.skip if k in self._open else ()
        while i < len(self._tasks[k]) and i in skip:
            i += 1
        return i

    def _open_current(self) -> _Target:
        k = self._k
        if k not in self._open:  # the output before it is finished
            self._open[k] = _Target(self._openers[k](), self._threaded)
        return self._open[k]

    def peek(self) -> _Item | None:
        """The next task to run, as far as is known: in an output after the
        current one (not opened yet), its first task, which its journal may
        have done (``pull`` tells)."""
        if self._k < len(self._tasks):
            self._open_current()
        k, i = self._k, self._i
        while k < len(self._tasks):
            i = self._next_position(k, i)
            if i < len(self._tasks[k]):
                return _Item(k, i, self._tasks[k][i], None)
            k, i = k + 1, 0
        return None

    def pull(self) -> _Item | None:
        k = self._k
        if k >= len(self._tasks):
            return None
        target = self._open_current()
        i = self._i = self._next_position(k, self._i)
        if i < len(self._tasks[k]):
            self._i += 1
            return _Item(k, i, self._tasks[k][i], target)
        self._k, self._i = k + 1, 0
        return _Item(k, -1, None, target)

    def close(self, k: int) -> None:
        target = self._open.pop(k, None)
        if target is not None:
            target.close()

    def close_all(self) -> None:
        for k in list(self._open):
            self.close(k)


class _Run:
    """One run's parts (threads, buffers, read-ahead), and how a task goes through them."""

    @classmethod
    def start(cls, source, plan: Plan, batch_rows: int, progress, threaded: bool) -> _Run:
        """The parts of a run over ``source`` (the plan's view of the input)."""
        self = cls()
        self.source, self.plan, self.batch_rows, self.progress = source, plan, batch_rows, progress
        self.out = _Stage("mixup-writer") if threaded else _Inline()
        # Output hashes in a thread of their own: the work spreads over the cores.
        self.hashing = _Stage("mixup-hash") if threaded else None
        self.stages = [st for st in (self.hashing, self.out) if st is not None]  # closed in this order
        self.stop = stopping.current()
        rows = min(batch_rows, plan.block_rows, plan.n_rows)
        mixed_specs = {key: source.specs[key] for key in source.mixed_keys}
        self.mixer = Mixer(plan, {key: spec.row_shape for key, spec in mixed_specs.items()})
        # One thread reads the input at a time: the caller's (own blocks) or the read-ahead's (partners).
        self.reading = threading.Lock() if threaded else None
        self.ahead = _ReadAhead(source, plan, self.mixer, self.reading, self.check) if threaded else None
        # global pairing reads its partners by index (a block's worth, beside
        # the cache): two slots, so that three blocks are in memory at most, as before
        slots = 3 if threaded and not (plan.pairing == "global" and plan.by_index) else 2
        self.cache = BlockCache(source, plan, slots=slots, check=self.check, lock=self.reading)
        self.pool = _BufferPool(mixed_specs, rows, 2 if threaded else 1, self.check)
        self.in_place = plan.pairing == "global" and plan.n_blocks > 1
        return self

    def check(self) -> None:
        """In every wait: a stage's error first, then a stop asked for."""
        for stage in self.stages:
            stage.check()
        self.stop.check()

    def wait_written(self) -> None:
        """Until everything submitted so far is hashed and written."""
        written = threading.Event()
        self.after(written.set)
        while not written.wait(stopping.POLL_S):
            self.check()
        self.check()

    def close(self, quietly: bool = False) -> None:
        """The read-ahead and the stages stopped (``quietly``: after an
        error, which is the one to report, not theirs)."""
        if self.ahead is not None:
            self.ahead.close()
        for stage in self.stages:
            try:
                stage.close()
            except BaseException:
                if not quietly:
                    raise

    def run_task(self, task, partners, target: _Target) -> None:
        """Mix and hand over one task to ``target`` (``partners``: its ``read_partners``, read ahead)."""
        cache = self.cache
        inputs = task_input(self.source, self.plan, self.mixer, task, cache.get, partners, self.reading)
        # Part of a block: its rows were read apart from the cache (tasks.task_input).
        whole = whole_block(self.plan, task) is task
        slot = cache.slot_of(task.block) if whole else None
        mixing_in_place = self.in_place and task.copy >= 0 and whole
        if mixing_in_place:
            cache.take_over(slot)  # its rows are about to become output rows
        n = task.stop - task.start
        for s in range(0, n, self.batch_rows):
            e = min(n, s + self.batch_rows)
            if task.copy < 0 and not whole:  # original rows read for this task alone
                arrays = output_rows(self.source, self.mixer, inputs, s, e)
                release = lambda: None
            elif task.copy < 0 or mixing_in_place:
                # Rows of the cached block itself: pinned until written.
                into = {key: inputs.own[key][s:e] for key in self.source.mixed_keys} if mixing_in_place else None
                arrays = output_rows(self.source, self.mixer, inputs, s, e, into)
                cache.pin(slot)
                release = lambda i=slot: cache.unpin(i)
            else:
                bufs = self.pool.acquire()
                arrays = output_rows(
                    self.source, self.mixer, inputs, s, e, {key: b[: e - s] for key, b in bufs.items()}
                )
                release = lambda b=bufs: self.pool.release(b)
            self.submit(target, task.out_start + s, arrays, release)
            self.progress.update(e - s)
            self.stop.check()  # between two batches: what was submitted is written before the stop is taken

    def submit(self, target: _Target, at: int, arrays, release) -> None:
        if target.hash is not None:
            if self.hashing is not None:
                release = _released_after(2, release)
                self.hashing.submit(target.hash, at, arrays, release)
            else:
                target.hash(at, arrays)
        self.out.submit(target.write, at, arrays, release)

    def after(self, callback) -> None:
        """``callback`` once everything submitted so far is hashed, then written."""
        if self.hashing is not None:  # the journal keeps the digests of what is written
            self.hashing.after(lambda: self.out.after(callback))
        else:
            self.out.after(callback)


class BlockCache:
    """Input blocks in a few buffers reused for the whole run.

    Walking the pairing cycle, each block is needed as a partner and then
    again as the next task's own block, so it is read once. The arrays
    ``get`` returns are views of the buffers. A buffer can be *pinned* while
    the writer thread still reads it (rows mixed in place, or original rows)
    and *forgotten* once its rows are overwritten; ``get`` never reuses a
    pinned buffer, waiting for the writer if needed.
    """

    def __init__(self, source, plan: Plan, slots: int = 2, check=None, lock=None):
        self._source, self._plan = source, plan
        self._lock = lock  # held while reading (another thread may read the input too)
        self._rows = min(plan.block_rows, plan.n_rows)
        self._slots: list[dict[str, np.ndarray] | None] = [None] * max(2, slots)
        self._held: list[int | None] = [None] * len(self._slots)  # block held by each buffer
        self._pins = [0] * len(self._slots)
        self._cond = threading.Condition()
        self._check = check or (lambda: None)

    def slot_of(self, block: int) -> int:
        return self._held.index(block)

    def pin(self, slot: int) -> None:
        with self._cond:
            self._pins[slot] += 1

    def unpin(self, slot: int) -> None:
        with self._cond:
            self._pins[slot] -= 1
            self._cond.notify_all()

    def take_over(self, slot: int) -> None:
        """The caller is about to overwrite the buffer's rows (mixing in
        place): wait until the writer has none of them in flight, and forget
        which block it held."""
        with self._cond:
            while self._pins[slot]:
                self._check()
                self._cond.wait(stopping.POLL_S)
            self._held[slot] = None

    def _victim(self, keep: int, block: int) -> int | None:
        wanted = {b for b in (keep, block) if b is not None}  # keep is None for partners read by index
        free = [i for i in range(len(self._slots)) if self._pins[i] == 0 and self._held[i] not in wanted]
        used = [i for i in free if self._slots[i] is not None]  # reuse touched memory first
        return (used or free or [None])[0]

    def get(self, block: int, keep: int) -> dict[str, np.ndarray]:
        start, stop = self._plan.block_bounds(block)
        if block in self._held:
            slot = self._held.index(block)
        else:
            with self._cond:
                while (slot := self._victim(keep, block)) is None:
                    self._check()
                    self._cond.wait(stopping.POLL_S)
            if self._slots[slot] is None:
                self._slots[slot] = {
                    key: np.empty((self._rows,) + spec.row_shape, spec.dtype)
                    for key, spec in self._source.specs.items()
                }
            self._held[slot] = None  # a failed read leaves nothing stale behind
            with self._lock or nullcontext():
                for key, buf in self._slots[slot].items():
                    self._source.reader.read_into(key, start, stop, buf)
            self._held[slot] = block
        return {key: buf[: stop - start] for key, buf in self._slots[slot].items()}


class _ReadAhead:
    """The partner rows of the next task, read on a thread while this task mixes.

    Only tasks whose partners are read by index (``tasks.reads_by_index``)
    are read ahead: at most one at a time, so the rows in memory are this
    task's partners and the next one's (see ARCHITECTURE.md, "Memory").
    Reads hold ``lock``, which the caller's thread holds for its own reads;
    the draws and the rows are those ``task_input`` would read itself.
    """

    def __init__(self, source, plan: Plan, mixer: Mixer, lock, check):
        self._source, self._plan, self._mixer, self._lock, self._check = source, plan, mixer, lock, check
        self._pool: ThreadPoolExecutor | None = None
        # Two sets of partner buffers, used in turn: a task's partners are read
        # into the set the task before the last one used, whose run is over.
        self._buffers: list[dict[str, np.ndarray] | None] = [None, None]
        self._turn = 0

    def start(self, task):
        """Start reading ``task``'s partners; a future, or None when it reads none by index.
        Called once the task before the last one started has run."""
        if not reads_by_index(self._plan, task):
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixup-partners")
        self._turn ^= 1
        if self._buffers[self._turn] is None:
            rows = min(self._plan.block_rows, self._plan.n_rows)  # partners of a task: at most a block's rows
            self._buffers[self._turn] = {
                key: np.empty((rows,) + spec.row_shape, spec.dtype) for key, spec in self._source.specs.items()
            }
        context = contextvars.copy_context()  # the call's stop token, as in the caller's thread
        return self._pool.submit(
            context.run,
            read_partners,
            self._source,
            self._plan,
            self._mixer,
            task,
            self._lock,
            self._buffers[self._turn],
        )

    def result(self, future):
        """The partners read by ``future``, waiting as every wait of the caller does."""
        while True:
            self._check()
            try:
                return future.result(timeout=stopping.POLL_S)
            except FutureTimeout:
                continue

    def close(self) -> None:
        """Wait for a read in flight (nothing reads the input after the run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class _Stage:
    """A thread that handles batches in order while the caller mixes the next.

    Each batch comes with the call that handles it (``handle(at, arrays)``,
    made in the thread: an output's write, or its hashing) and a ``release``
    callback, called once it is handled (or dropped after an error) so the
    caller may reuse the memory. An error in the thread is re-raised in the
    caller by ``check`` (which the caller's waits call), and ``close`` always
    joins the thread, so nothing is in flight when the caller cleans up.
    """

    def __init__(self, name: str):
        self._todo: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            if callable(item):  # a marker: everything submitted before it is handled
                if self._error is None:
                    try:
                        item()
                    except BaseException as exc:
                        self._error = exc
                continue
            handle, at, arrays, release = item
            try:
                if self._error is None:
                    handle(at, arrays)
            except BaseException as exc:  # handed to the caller
                self._error = exc
            finally:
                release()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, handle, at: int, arrays: dict[str, np.ndarray], release) -> None:
        self.check()
        self._todo.put((handle, at, arrays, release))

    def after(self, callback) -> None:
        """Call ``callback`` in the stage's thread once all batches submitted so far are handled."""
        self.check()
        self._todo.put(callback)

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join()
        self.check()


def _released_after(count: int, release):
    """A callback that calls ``release`` on its ``count``-th call (a batch
    handed to several stages is free once all of them are done with it)."""
    lock = threading.Lock()
    left = [count]

    def done():
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            release()

    return done


class _Flusher:
    """Starts the disk flush of the output while it is being written.

    Every ``every`` bytes written, a thread fdatasyncs the output files, so
    the final fsync before the rename finds little left to do (8 MiB: each
    output of a set is often smaller than 64 MiB, and then waited for its
    whole flush at the end). Only a speed-up: failures are ignored here
    (the final fsync reports them).
    """

    every = 8 * 1024 * 1024

    def __init__(self, writer):
        base = Path(getattr(writer, "path", ""))
        try:
            rels = writer.files()
        except Exception:
            rels = []
        self._paths = [base / rel if str(rel) != "." else base for rel in rels] if str(base) else []
        self._pending = 0
        self._wake = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="mixup-flush", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.every:
            self._pending = 0
            self._wake.set()

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done:
                return
            for p in self._paths:
                atomic.sync_quietly(p, data_only=True)

    def close(self) -> None:
        self._done = True
        self._wake.set()
        self._thread.join()


class _Inline:
    """The same interface, handling each batch at once in the caller's thread."""

    def check(self) -> None:
        pass

    def submit(self, handle, at, arrays, release):
        try:
            handle(at, arrays)
        finally:
            release()

    def after(self, callback):
        callback()

    def close(self):
        pass


class _BufferPool:
    """Output buffers for mixing out of place, handed back by the writer."""

    def __init__(self, specs: dict[str, ArraySpec], rows: int, count: int, check):
        self._specs, self._rows, self._left, self._check = specs, rows, count, check
        self._free: queue.Queue = queue.Queue()

    def acquire(self) -> dict[str, np.ndarray]:
        if self._free.empty() and self._left > 0:  # allocated on first need
            self._left -= 1
            return {key: np.empty((self._rows,) + spec.row_shape, spec.dtype) for key, spec in self._specs.items()}
        while True:
            self._check()
            try:
                return self._free.get(timeout=stopping.POLL_S)
            except queue.Empty:
                continue

    def release(self, bufs) -> None:
        self._free.put(bufs)
