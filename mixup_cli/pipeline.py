"""Streams a dataset through mixup: read -> plan -> mix -> write -> sidecar.

Memory holds at most two input blocks (the block being mixed and its
partner block) and one batch of output rows, whatever the number of rows.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixup_cli import __version__, atomic, provenance
from mixup_cli.core import check_alpha, mix_gather
from mixup_cli.errors import InputError, OutputError, ParameterError
from mixup_cli.io import ArraySpec, Reader, WriteOptions, create_writer, format_of, open_reader
from mixup_cli.sampling import Plan, check_positive, default_block_rows, draw_seed

log = logging.getLogger("mixup_cli")

PROVENANCE_KEYS = ("lam", "partner")
# Default batch: rows of about this many bytes are mixed and written at once
# (at most a block). Large batches mean few, chunk-aligned HDF5 calls.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024


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
    """Input blocks in a few buffers reused for the whole run.

    Walking the pairing cycle, each block is needed as a partner and then
    again as the next task's own block, so it is read once. The arrays
    ``get`` returns are views of the buffers. A buffer can be *pinned* while
    the writer thread still reads it (rows mixed in place, or original rows)
    and *forgotten* once its rows are overwritten; ``get`` never reuses a
    pinned buffer, waiting for the writer if needed.
    """

    def __init__(self, source: Source, plan: Plan, slots: int = 2, check=None):
        self._source, self._plan = source, plan
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
                self._cond.wait(0.05)
            self._held[slot] = None

    def _victim(self, keep: int, block: int) -> int | None:
        free = [i for i in range(len(self._slots)) if self._pins[i] == 0 and self._held[i] not in (keep, block)]
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
                    self._cond.wait(0.05)
            if self._slots[slot] is None:
                self._slots[slot] = {
                    key: np.empty((self._rows,) + spec.row_shape, spec.dtype)
                    for key, spec in self._source.specs.items()
                }
            self._held[slot] = None  # a failed read leaves nothing stale behind
            for key, buf in self._slots[slot].items():
                self._source.reader.read_into(key, start, stop, buf)
            self._held[slot] = block
        return {key: buf[: stop - start] for key, buf in self._slots[slot].items()}


class _WriterThread:
    """Writes batches in order in a thread while the caller mixes the next.

    Each batch comes with a ``release`` callback, called once its rows are
    written (or dropped after an error) so the caller may reuse the memory.
    An error in the thread is re-raised in the caller by ``check`` (which
    the caller's waits call), and ``close`` always joins the thread, so no
    write is in flight when the caller cleans up.
    """

    def __init__(self, writer):
        self._writer = writer
        self._flusher = _Flusher(writer)
        self._todo: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mixup-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            at, arrays, release = item
            try:
                if self._error is None:
                    for key, arr in arrays.items():
                        self._writer.write(key, at, arr)
                        self._flusher.wrote(arr.nbytes)
            except BaseException as exc:  # handed to the caller
                self._error = exc
            finally:
                release()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, at: int, arrays: dict[str, np.ndarray], release) -> None:
        self.check()
        self._todo.put((at, arrays, release))

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join()
        self._flusher.close()
        self.check()


class _Flusher:
    """Starts the disk flush of the output while it is being written.

    Every ``every`` bytes written, a thread fdatasyncs the output files, so
    the final fsync before the rename finds little left to do. Only a
    speed-up: failures are ignored here (the final fsync reports them).
    """

    every = 64 * 1024 * 1024

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
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass
                finally:
                    os.close(fd)

    def close(self) -> None:
        self._done = True
        self._wake.set()
        self._thread.join()


class _InlineWriter:
    """The same interface, writing at once in the caller's thread."""

    def __init__(self, writer):
        self._writer = writer

    def check(self) -> None:
        pass

    def submit(self, at, arrays, release):
        try:
            for key, arr in arrays.items():
                self._writer.write(key, at, arr)
        finally:
            release()

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
                return self._free.get(timeout=0.05)
            except queue.Empty:
                continue

    def release(self, bufs) -> None:
        self._free.put(bufs)


def run_plan(source: Source, plan: Plan, writer, batch_rows: int, progress: Progress, *,
             threaded: bool = True) -> None:
    """Compute every task of the plan and hand the rows to ``writer``.

    Reading and mixing happen in the caller's thread, writing in another
    (``threaded=False`` writes inline: same bytes, slower). With global
    pairing over several blocks, a block is mixed in place (its own rows are
    not needed again: the cycle reads it afresh when it comes back as a
    partner), so memory holds three blocks, one being written, one being
    mixed, one its partner. Otherwise rows are mixed into two output
    batches. Either way, about three blocks, whatever the number of rows.
    """
    out = _WriterThread(writer) if threaded else _InlineWriter(writer)
    cache = BlockCache(source, plan, slots=3 if threaded else 2, check=out.check)
    in_place = plan.pairing == "global" and plan.n_blocks > 1
    rows = min(batch_rows, plan.block_rows, plan.n_rows)
    pool = _BufferPool(source.specs, rows, 2 if threaded else 1, out.check)
    try:
        for task in plan.tasks():
            own = cache.get(task.block, keep=task.partner_block)
            partner_rows = cache.get(task.partner_block, keep=task.block)
            slot = cache.slot_of(task.block)
            lam, partner = plan.draw(task)
            local = partner - plan.block_bounds(task.partner_block)[0]
            mixing_in_place = in_place and task.copy >= 0
            if mixing_in_place:
                cache.take_over(slot)  # its rows are about to become output rows
            n = task.stop - task.start
            for s in range(0, n, batch_rows):
                e = min(n, s + batch_rows)
                k = e - s
                if task.copy < 0 or mixing_in_place:
                    arrays = {key: own[key][s:e] for key in source.specs}
                    if mixing_in_place:
                        for key in source.specs:
                            mix_gather(own[key][s:e], partner_rows[key], local[s:e], lam[s:e], out=arrays[key])
                    cache.pin(slot)
                    release = (lambda i=slot: cache.unpin(i))
                else:
                    bufs = pool.acquire()
                    arrays = {key: bufs[key][:k] for key in source.specs}
                    for key in source.specs:
                        mix_gather(own[key][s:e], partner_rows[key], local[s:e], lam[s:e], out=arrays[key])
                    release = (lambda b=bufs: pool.release(b))
                arrays["lam"] = lam[s:e]
                arrays["partner"] = partner[s:e]
                out.submit(task.out_start + s, arrays, release)
                progress.update(k)
    except BaseException:
        try:
            out.close()
        except BaseException:
            pass  # the first error is the one to report
        raise
    out.close()


def _sync(path: Path) -> None:
    """fsync every file of an output (one file, or a directory of them)."""
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def augment(request: AugmentRequest, progress: Progress | None = None) -> AugmentResult:
    """Run ``mixup augment``: write OUT and its sidecar, or nothing at all."""
    started_at, t0 = provenance.utc_now(), time.perf_counter()
    progress = progress or Progress()
    check_alpha(request.alpha)
    check_positive(request.copies, "--copies")
    for value, option in ((request.batch_size, "--batch-size"), (request.block_rows, "--block-rows")):
        if value is not None:
            check_positive(value, option)
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
            run_plan(source, plan, writer, batch_rows, progress)
            writer.set_attributes({"mixup_cli_version": __version__, "run_id": run_id})
            writer.close()
            out_files = [tmp / rel if str(rel) != "." else tmp for rel in writer.files()]
            out_hashing = provenance.BackgroundHash(out_files)
            _sync(tmp)  # the disk flush overlaps the hashing; commit's own fsync is then quick
            out_hashes = out_hashing.result()
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
        execution={"engine": "local", "batch_size": batch_rows, "seconds": round(seconds, 3)},
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
