"""Streams a dataset through mixup: read -> plan -> mix -> write -> sidecar.

Memory holds at most two input blocks (the block being mixed and its
partner block) and one batch of output rows, whatever the number of rows.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixup_cli import __version__, atomic, cutmix, digests, provenance, resume, scratch
from mixup_cli.core import check_alpha
from mixup_cli.engines import check_engine_options
from mixup_cli.errors import InputError, OutputError, ParameterError
from mixup_cli.io import ArraySpec, Reader, WriteOptions, create_writer, format_of, open_reader, reopen_writer
from mixup_cli.io.base import DamagedPartial
from mixup_cli.io.base import layout_options
from mixup_cli.mixing import Mixer
from mixup_cli import balance, names
from mixup_cli.classes import ClassIndex, class_index
from mixup_cli.prepare import DataOptions, Prepared, pair_keys, prepare
from mixup_cli.sampling import (
    CLASS_PAIRINGS, DEFAULT_NEIGHBORS, INDEX_PAIRINGS, KNN_PAIRINGS, Plan, check_positive, default_block_rows, draw_seed,
)

log = logging.getLogger("mixup_cli")

PROVENANCE_KEYS = ("lam", "partner")
# Targets may also be bool (binary and multi-label 0/1); x may not.
TARGET_DTYPE_KINDS = "fiub"
# Default batch: rows of about this many bytes are mixed and written at once
# (at most a block). Large batches mean few, chunk-aligned HDF5 calls.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
# Output formats that are directories (committed by swapping directories).
DIRECTORY_FORMATS = ("npydir", "zarr")


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
    # False: a missing y_key means x alone (unlabelled data) instead of an error.
    require_y: bool = True
    # Also record each output file's SHA-256 (one more read of the whole output).
    hash_files: bool = False

    def data_options(self) -> DataOptions:
        return DataOptions(
            x_dtype=self.x_dtype, y_format=self.y_format, y_kind=self.y_kind, num_classes=self.num_classes,
            label_smoothing=self.label_smoothing, allow_nonfinite=self.allow_nonfinite,
        )
    resume: bool = False
    method: str = "mixup"
    layout: str | None = None  # cutmix: NHWC or NCHW; inferred when unambiguous
    # Storage layout of OUT (not its arrays' bytes): None = the format's default.
    chunk_rows: int | None = None
    byte_shuffle: bool | None = None
    zarr_format: int | None = None
    # --pairing knn / knn-within-class: neighbours per row, projection dimension.
    neighbors: int | None = None
    project: int | None = None
    # --pairing label-kernel: the kernel's bandwidth.
    bandwidth: float | None = None
    # --balance / --balance-to M: M rows of every class per copy (see balance.py).
    balance: bool = False
    balance_to: int | None = None


@dataclass
class AugmentResult:
    output: Path
    sidecar: Path
    rows: int
    seconds: float
    seed: int
    run_id: str
    record: dict
    late_signals: tuple[int, ...] = ()  # SIGINT/SIGTERM held back during the commit: too late to stop it
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
        }


class Progress:
    """Receives progress: ``start`` once with the output's row count, then ``update``."""

    def start(self, total: int) -> None:
        pass

    def update(self, rows: int) -> None:
        pass

    def committing(self) -> None:
        """Called once the output is complete, right before it is put in
        place; from then on the run cannot be stopped (it may still raise)."""


@dataclass(frozen=True)
class Source:
    """An opened input with the arrays that take part, checked for consistency."""

    reader: Reader  # reads rows as they are mixed (prepare.PreparedReader)
    specs: dict[str, ArraySpec]  # data keys (x, then y if any) as mixed: --x-dtype, y encoded
    input_specs: dict[str, ArraySpec] | None = None  # the same keys as stored in the input
    prepared: Prepared | None = None

    @property
    def y_key(self) -> str | None:
        return next(iter(list(self.specs)[1:]), None)

    @property
    def paired_keys(self) -> tuple[str, ...]:
        """Data keys written as KEY_a / KEY_b (``--y-format pair``) instead of mixed."""
        return self.prepared.paired if self.prepared is not None else ()

    @property
    def mixed_keys(self) -> list[str]:
        return [key for key in self.specs if key not in self.paired_keys]

    def output_keys(self, key: str) -> tuple[str, ...]:
        return pair_keys(key) if key in self.paired_keys else (key,)

    @property
    def n_rows(self) -> int:
        return next(iter(self.specs.values())).rows

    @property
    def row_bytes(self) -> int:
        return sum(spec.row_bytes for spec in self.specs.values())


def open_source(
    path: Path, x_key: str, y_key: str | None, options: DataOptions | None = None, require_y: bool = True,
    scratch_prefix: Path | None = None, fast: bool = True, y_for: str | None = None,
) -> Source:
    """Open the input and check that x (and y) exist and have rows to mix.

    ``options`` decide how rows are prepared (x dtype, target encoding,
    NaN checks); the classes of integer labels may be found here by one
    streaming pass over y. Without ``require_y`` a missing y means x alone.
    ``scratch_prefix``: the output's partial name, beside which the reader may
    put scratch files (inflated ``.npz`` members); else the temporary directory.
    ``fast=False`` reads through the format library's own decoding (verify).
    """
    reader = open_reader(path, scratch_prefix, fast=fast)
    try:
        specs = {x_key: reader.require(x_key, "--x-key")}
        reader = names.wrap(reader, y_key)  # string or categorical class labels, shown as class codes
        if y_key is not None and not require_y and y_key not in reader.keys():
            if y_for is not None:  # e.g. --pairing within-class: the labels are not optional
                raise ParameterError(
                    f"{path} has no '{y_key}': {y_for} needs class labels; name them with --y-key", "--y-key"
                )
            log.warning("%s has no '%s': mixing '%s' alone (--no-y says so; --y-key names targets)", path, y_key, x_key)
            y_key = None
        if y_key is not None:
            if y_key == x_key:
                raise ParameterError(f"--y-key and --x-key both name '{x_key}'", "--y-key")
            specs[y_key] = reader.require(y_key, "--y-key", kinds=TARGET_DTYPE_KINDS)
            n_x, n_y = specs[x_key].rows, specs[y_key].rows
            if n_x != n_y:
                raise InputError(
                    f"{path}: '{x_key}' has {n_x} rows but '{y_key}' has {n_y}; "
                    "x and y need one row per sample"
                )
        if specs[x_key].rows == 0:
            raise InputError(f"{path}: '{x_key}' has zero rows; there is nothing to mix")
        for key in PROVENANCE_KEYS:
            if key in specs:
                raise ParameterError(f"'{key}' is reserved for provenance in the output; rename the array", "--x-key")
        prepared = prepare(reader, x_key, specs[x_key], y_key, specs.get(y_key), options or DataOptions())
        check_output_keys(prepared, x_key)
    except BaseException:
        reader.close()
        raise
    return Source(prepared.reader, prepared.specs, names.stored_specs(reader, specs), prepared)


def check_output_keys(prepared: Prepared, x_key: str) -> None:
    """Pair outputs (y_a, y_b) must not collide with x or the provenance arrays."""
    for key in prepared.paired:
        for name in pair_keys(key):
            if name == x_key or name in PROVENANCE_KEYS:
                raise ParameterError(
                    f"--y-format pair would write '{name}', which is also '{x_key}' or a provenance array; "
                    "rename the array", "--y-format"
                )


def _symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_output_path(input_path: Path, output: Path, overwrite: bool, exists_ok: bool = False) -> str:
    """Refuse outputs that cannot or must not be written; return the output format.

    ``exists_ok``: an existing OUT is let through to be compared with the
    command (``--resume`` on a finished run), not to be replaced."""
    if _symlink_loop(input_path):
        raise InputError(f"{input_path}: is a symbolic link that loops back on itself; fix the link or pass the file")
    for path in (output.parent, output):
        if _symlink_loop(path):
            raise OutputError(
                f"{output}: {'is' if path == output else 'is in'} a symbolic link that loops back on itself; "
                "fix or remove the link, or choose another output path"
            )
    fmt = format_of(output, for_output=True)
    try:
        out_real, in_real = output.resolve(), input_path.resolve()
    except (RuntimeError, OSError) as exc:  # a loop further up either path
        raise OutputError(f"{output}: cannot resolve {output} or {input_path} ({exc}); fix the symbolic links") from None
    if out_real == in_real or (
        output.exists() and input_path.exists() and os.path.samefile(output, input_path)
    ):
        raise ParameterError(f"{output}: is the input itself; choose another output path", "OUT")
    if output.is_dir() and in_real.is_relative_to(out_real):
        raise ParameterError(f"{output}: contains the input {input_path}; choose another output path", "OUT")
    # The partial output is created beside OUT, in the directory as spelled.
    parent = output.parent
    if not parent.exists():
        raise OutputError(f"{output}: directory {parent.resolve()} does not exist; create it first")
    if not parent.is_dir():
        raise OutputError(f"{output}: {parent.resolve()} is not a directory; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"{output}: directory {parent.resolve()} is not writable; "
            "fix its permissions or choose another output directory"
        )
    if (output.exists() or output.is_symlink()) and not (overwrite or exists_ok):
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    if overwrite:
        atomic.check_replaceable(output, provenance.sidecar_path(output), fmt in DIRECTORY_FORMATS)
    return fmt


def _class_index(source: Source) -> ClassIndex:
    """The classes of the source's y, in one pass (one-hot encoded labels are
    read by column, so a single class is still class 0)."""
    targets = source.prepared.targets if source.prepared is not None else None
    return class_index(source.reader, source.y_key, one_hot=targets is not None and targets.kind == "classes")


def resolve_plan(request: AugmentRequest, source: Source) -> Plan:
    block_rows = request.block_rows or default_block_rows(source.row_bytes)
    seed = draw_seed() if request.seed is None else request.seed
    if request.pairing in KNN_PAIRINGS and request.neighbors is None:
        request = dataclasses.replace(request, neighbors=DEFAULT_NEIGHBORS)
    if request.pairing in CLASS_PAIRINGS and source.y_key is None:
        # The source's y: a y_key the input lacks (and was not asked for) is dropped there.
        where = f"{source.reader.path} has no '{request.y_key}': " if request.y_key else ""
        raise ParameterError(
            f"{where}--pairing {request.pairing} needs class labels; name them with --y-key", "--pairing"
        )
    classes = own = None
    if balance.check(request.pairing, request.balance, request.balance_to, source.y_key):
        # One pass over y: the own rows, and the classes of the plan's rows from them.
        input_classes = _class_index(source)
        own = balance.own_rows(input_classes, seed, request.balance_to)
        if request.pairing in CLASS_PAIRINGS:
            classes = ClassIndex.from_labels(input_classes.values[input_classes.codes[own]], input_classes.label)
    elif request.pairing in CLASS_PAIRINGS:
        classes = _class_index(source)
    partners = _partner_index(request, source, block_rows, classes)
    layout = None
    if request.method == "cutmix":
        x_spec = source.specs[request.x_key]
        layout = cutmix.resolve_layout(x_spec.row_shape, request.layout, f"{source.reader.path}: '{request.x_key}'")
    return Plan(
        n_rows=source.n_rows if own is None else len(own),
        alpha=request.alpha,
        seed=seed,
        block_rows=block_rows,
        pairing=request.pairing,
        copies=request.copies,
        include_original=request.include_original,
        classes=classes,
        method=request.method,
        layout=layout,
        neighbors=request.neighbors,
        project=request.project,
        bandwidth=request.bandwidth,
        partners=partners,
        balance_to=request.balance_to if own is not None else None,
        own=own,
    )


def _partner_index(request: AugmentRequest, source: Source, block_rows: int, classes):
    """The index the knn and label-kernel pairings draw partners from (one or
    two passes over x, or one over y), built once the options are checked."""
    if request.pairing not in INDEX_PAIRINGS:
        return None
    # Check the options (a Plan without the index) before reading anything.
    Plan(n_rows=source.n_rows, alpha=request.alpha, seed=0, block_rows=block_rows, pairing=request.pairing,
         neighbors=request.neighbors, project=request.project, bandwidth=request.bandwidth)
    if request.pairing == "label-kernel":
        from mixup_cli import label_kernel

        if request.y_key is None:
            raise ParameterError("--pairing label-kernel needs targets; name them with --y-key", "--pairing")
        kind = source.prepared.target_kind if source.prepared is not None else None
        return label_kernel.build(source.reader, request.y_key, request.bandwidth, kind)
    from mixup_cli import neighbours

    within = None
    if request.pairing == "knn-within-class":
        if request.y_key is None:
            raise ParameterError("--pairing knn-within-class needs class labels; name them with --y-key", "--pairing")
        within = class_index(source.reader, request.y_key)
    return neighbours.build(source.reader, request.x_key, request.neighbors, request.project, within,
                            f"{source.reader.path}['{request.x_key}']")


def default_batch_rows(row_bytes: int, block_rows: int) -> int:
    return min(block_rows, default_block_rows(row_bytes, DEFAULT_BATCH_BYTES))


def output_specs(source: Source, plan: Plan) -> dict[str, ArraySpec]:
    rows = plan.output_rows
    specs = {
        out_key: ArraySpec((rows,) + spec.row_shape, spec.dtype)
        for key, spec in source.specs.items()
        for out_key in source.output_keys(key)
    }
    for name, (row_shape, dtype) in Mixer.provenance_specs(plan).items():
        specs[name] = ArraySpec((rows,) + row_shape, dtype)
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


def _disk_full(exc: BaseException) -> bool:
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "errno = 28" in text or "quota exceeded" in text


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_free_space(output: Path, out_format: str, specs: dict[str, ArraySpec], compression: str,
                     extra: int = 0) -> None:
    """Refuse up front an output that cannot fit on its disk.

    The uncompressed bytes are a lower bound of what the output takes (a
    stored ``.npz`` needs them twice: staging, then the archive). Compressed
    HDF5 output has no such bound and counts for nothing. ``extra``: the
    bytes of a scratch copy of the input made beside the output (``scratch``).
    """
    need = 0
    if not (out_format == "hdf5" and compression != "none"):
        need = sum(int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize for spec in specs.values())
        if out_format == "npz" and compression == "none":
            need *= 2
    need += extra
    if not need:
        return
    try:
        st = os.statvfs(output.parent)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        what = "the output and an uncompressed copy of the input (for the class pairing) need" if extra else "the output needs"
        raise OutputError(
            f"{output}: disk full: {what} about {_mib(need)} but {_mib(free)} is free in "
            f"{output.parent.resolve()}; free some space or choose another output directory"
        )


def _open_journal(request: AugmentRequest, output: Path) -> resume.Journal | None:
    """The journal of the interrupted run to continue, or None to start afresh.

    Without --resume, leftovers of an interrupted run are removed (with a
    warning): a retried job then simply starts over.
    """
    left = atomic.partials(output, with_lock=False)
    if request.resume and left:
        try:
            return resume.Journal.load(resume.journal_path(output), output)
        except resume.NothingToResume as exc:
            # Nothing journaled, nothing lost: a retried job needs no human.
            log.warning("%s; starting from the beginning", exc)
            _discard(left)
            return None
    if request.resume:
        log.warning("%s: no interrupted run to resume; starting from the beginning", output)
    elif left:
        log.warning(
            "removing %s left by an interrupted run (pass --resume to continue such a run instead)",
            ", ".join(p.name for p in left),
        )
    _discard(left)
    return None


def _discard(paths) -> None:
    for path in paths:
        atomic.remove(path)


def _keep_verified(journal: resume.Journal, plan: Plan, writer) -> bool:
    """Whether the blocks the journal records as written read back with
    their recorded digests (formats whose writer can read its partial).
    A kill can never make them differ; a partial damaged otherwise does."""
    if not journal.done:
        return True
    for index, task in enumerate(plan.tasks()):
        if index not in journal.done:
            continue
        want = journal.digests.get(task.out_start)
        if want is None:
            return False
        try:
            rows = {key: writer.read(key, task.out_start, task.out_start + task.stop - task.start) for key in want}
        except Exception:
            return False
        if any(v is None for v in rows.values()):
            return True  # this format cannot read its partial output back
        if digests.of_rows(rows) != want:
            return False
    return True


def _completed_run(request: AugmentRequest, source: Source, output: Path, out_format: str) -> AugmentResult | None:
    """With --resume, an OUT whose sidecar records this very command: the
    result of that run (nothing to do), else None."""
    sidecar = provenance.sidecar_path(output)
    try:
        record = provenance.read(sidecar)
        params = record["parameters"]
        seed = request.seed if request.seed is not None else params.get("seed")
        if not isinstance(seed, int):
            return None
        plan = resolve_plan(dataclasses.replace(request, seed=seed), source)
        expected = dict(plan.to_dict(), x_key=request.x_key, y_key=source.y_key, compression=request.compression)
        expected.update(source.prepared.parameters())
        if resume._plain(expected) != resume._plain(params):
            return None
        inp, out = record["input"], record["output"]
        if inp["path"] != str(Path(request.input).resolve()) or out["format"] != out_format:
            return None
        done_at = sidecar.stat().st_mtime_ns
        recorded = {f["path"]: f["size"] for f in inp["files"]}
        for path in source.reader.files():
            st = Path(path).stat()
            if recorded.get(str(Path(path).resolve())) != st.st_size or st.st_mtime_ns > done_at:
                return None  # the input changed since
        arrays = {key: spec.to_dict() for key, spec in output_specs(source, plan).items()}
        if resume._plain(arrays) != resume._plain({k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in out["arrays"].items()}):
            return None
        for f in out["files"]:
            if Path(f["path"]).stat().st_size != f["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    log.warning("%s: already complete (its sidecar records this command); nothing to do", output)
    return AugmentResult(output, sidecar, plan.output_rows, 0.0, int(seed), str(record.get("run_id")), record,
                         already_complete=True)


class _Stage:
    """A thread that handles batches in order while the caller mixes the next.

    ``handle(at, arrays)`` is called for each batch in the thread; each batch
    comes with a ``release`` callback, called once it is handled (or dropped
    after an error) so the caller may reuse the memory. An error in the
    thread is re-raised in the caller by ``check`` (which the caller's waits
    call), and ``close`` always joins the thread, so nothing is in flight
    when the caller cleans up.
    """

    def __init__(self, name: str, handle, on_close=None):
        self._handle = handle
        self._on_close = on_close
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
            at, arrays, release = item
            try:
                if self._error is None:
                    self._handle(at, arrays)
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

    def after(self, callback) -> None:
        """Call ``callback`` in the stage's thread once all batches submitted so far are handled."""
        self.check()
        self._todo.put(callback)

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join()
        if self._on_close is not None:
            self._on_close()
        self.check()


def _writer_thread(writer) -> _Stage:
    """Writes batches in a thread; a flusher starts the disk flush meanwhile."""
    flusher = _Flusher(writer)

    def write(at, arrays):
        for key, arr in arrays.items():
            writer.write(key, at, arr)
            flusher.wrote(arr.nbytes)

    return _Stage("mixup-writer", write, on_close=flusher.close)


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
                atomic.sync_quietly(p, data_only=True)

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
                return self._free.get(timeout=0.05)
            except queue.Empty:
                continue

    def release(self, bufs) -> None:
        self._free.put(bufs)


def run_plan(source: Source, plan: Plan, writer, batch_rows: int, progress: Progress, *,
             threaded: bool = True, skip=frozenset(), on_done=None, hasher=None) -> None:
    """Compute every task of the plan and hand the rows to ``writer``.

    Reading and mixing happen in the caller's thread, writing in another
    (``threaded=False`` writes inline: same bytes, slower). With global
    pairing over several blocks, a block is mixed in place (its own rows are
    not needed again: the cycle reads it afresh when it comes back as a
    partner), so memory holds three blocks, one being written, one being
    mixed, one its partner. Otherwise rows are mixed into two output
    batches. Either way, about three blocks, whatever the number of rows.

    Tasks are numbered in ``plan.tasks()`` order; those in ``skip`` are
    already in the output (resume). ``on_done(index)`` is called once all of
    a task's rows are written (and hashed). ``hasher`` (a
    ``digests.BlockHasher``) is given every batch, in a third thread.
    """
    source = balance.view(source, plan)  # a balanced plan's rows, read by index
    out = _writer_thread(writer) if threaded else _InlineWriter(writer)
    # Output hashes in a thread of their own: the work spreads over the cores.
    hashing = _Stage("mixup-hash", hasher.update) if hasher is not None and threaded else None
    stages = [st for st in (hashing, out) if st is not None]  # closed in this order

    def check():
        for stage in stages:
            stage.check()

    cache = BlockCache(source, plan, slots=3 if threaded else 2, check=check)
    in_place = plan.pairing == "global" and plan.n_blocks > 1
    rows = min(batch_rows, plan.block_rows, plan.n_rows)
    mixed_specs = {key: source.specs[key] for key in source.mixed_keys}
    pool = _BufferPool(mixed_specs, rows, 2 if threaded else 1, check)
    mixer = Mixer(plan, {key: spec.row_shape for key, spec in mixed_specs.items()})
    try:
        for index, task in enumerate(plan.tasks()):
            if index in skip:
                continue
            own = cache.get(task.block, keep=task.partner_block)
            drawn = mixer.draw(task)
            partner = drawn.partner
            if task.partner_block is None:  # class pairings: partners by index (sorted, unique reads)
                partner_rows = {key: source.reader.take(key, partner) for key in source.specs}
                local = np.arange(len(partner))
            else:
                partner_rows = cache.get(task.partner_block, keep=task.block)
                local = partner - plan.block_bounds(task.partner_block)[0]
            slot = cache.slot_of(task.block)
            mixing_in_place = in_place and task.copy >= 0
            if mixing_in_place:
                cache.take_over(slot)  # its rows are about to become output rows
            n = task.stop - task.start
            for s in range(0, n, batch_rows):
                e = min(n, s + batch_rows)
                k = e - s
                if task.copy < 0 or mixing_in_place:
                    arrays = {key: own[key][s:e] for key in source.mixed_keys}
                    if mixing_in_place:
                        for key in source.mixed_keys:
                            mixer.mix_gather(key, own[key][s:e], partner_rows[key], local[s:e], drawn, s, e, out=arrays[key])
                    cache.pin(slot)
                    release = (lambda i=slot: cache.unpin(i))
                else:
                    bufs = pool.acquire()
                    arrays = {key: bufs[key][:k] for key in source.mixed_keys}
                    for key in source.mixed_keys:
                        mixer.mix_gather(key, own[key][s:e], partner_rows[key], local[s:e], drawn, s, e, out=arrays[key])
                    release = (lambda b=bufs: pool.release(b))
                for key in source.paired_keys:  # --y-format pair: both targets, unmixed (copies)
                    key_a, key_b = pair_keys(key)
                    arrays[key_a] = own[key][s:e].copy()
                    arrays[key_b] = partner_rows[key][local[s:e]]
                arrays.update(drawn.provenance(s, e))
                if hashing is not None:
                    release = _released_after(2, release)
                    hashing.submit(task.out_start + s, arrays, release)
                elif hasher is not None:
                    hasher.update(task.out_start + s, arrays)
                out.submit(task.out_start + s, arrays, release)
                progress.update(k)
            if on_done is not None:
                if hashing is not None:  # once hashed, then once written: the journal keeps its digests
                    hashing.after(lambda i=index: out.after(lambda: on_done(i)))
                else:
                    out.after(lambda i=index: on_done(i))
    except BaseException:
        for stage in stages:
            try:
                stage.close()
            except BaseException:
                pass  # the first error is the one to report
        raise
    for stage in stages:
        stage.close()


def augment(request: AugmentRequest, progress: Progress | None = None) -> AugmentResult:
    """Run ``mixup augment``: write OUT and its sidecar, or nothing at all.

    Everything is built under ``.OUT.mixup-partial`` names beside OUT; on any
    failure (interruption included) those are removed and an existing OUT is
    left as it was. After a kill they stay, and ``request.resume`` continues
    from the last block the journal records.
    """
    started_at, t0 = provenance.utc_now(), time.perf_counter()
    progress = progress or Progress()
    check_alpha(request.alpha)
    check_positive(request.copies, "--copies")
    for value, option in ((request.batch_size, "--batch-size"), (request.block_rows, "--block-rows")):
        if value is not None:
            check_positive(value, option)
    check_engine_options(request.engine, request.scheduler, request.workers)
    input_path, output = Path(request.input), Path(request.output)
    atomic.recover(output)  # a commit a killed run left half-done is finished or rolled back first
    # --resume on a finished OUT: done if its sidecar records this command.
    maybe_done = (request.resume and not request.overwrite and output.exists()
                  and provenance.sidecar_path(output).is_file() and not atomic.partials(output, with_lock=False))
    out_format = check_output_path(input_path, output, request.overwrite, exists_ok=maybe_done)

    y_for = f"--pairing {request.pairing}" if request.pairing in CLASS_PAIRINGS else None
    source = open_source(input_path, request.x_key, request.y_key, request.data_options(), request.require_y, y_for=y_for,
                         scratch_prefix=atomic.partial_path(output))
    lock = atomic.RunLock(output)
    try:
        lock.acquire()
        if maybe_done:
            finished = _completed_run(request, source, output, out_format)
            if finished is not None:
                return finished
            raise OutputError(
                f"{output}: already exists, written by another command (its sidecar differs); "
                "pass --overwrite to replace it"
            )
        journal = _open_journal(request, output)
        if journal is not None and request.seed is None and journal.seed is not None:
            request = dataclasses.replace(request, seed=journal.seed)
        plan = resolve_plan(request, source)
        batch_rows = request.batch_size or default_batch_rows(source.row_bytes, plan.block_rows)
        specs = output_specs(source, plan)
        options = layout_options(out_format, request.compression, plan.block_rows, request.chunk_rows,
                                 request.byte_shuffle, request.zarr_format)
        fingerprint = resume.fingerprint(request, plan, source, out_format, specs)
        tmp = atomic.partial_path(output)
        writer = None
        if journal is not None:
            # A refusal here leaves the partial output as it was.
            journal.check(fingerprint, output)
            try:
                writer = reopen_writer(tmp, out_format, specs, options)
                if not _keep_verified(journal, plan, writer):
                    writer.abort()
                    writer = None
                    raise DamagedPartial(f"{output}: the partial output does not hold the rows its journal records")
            except DamagedPartial as exc:
                # A kill mid-flush: what it held cannot be trusted, so start over.
                log.warning("%s; starting from the beginning", exc)
                _discard(atomic.partials(output, with_lock=False))
                journal = None  # the plan keeps the interrupted run's seed
        input_hashes = provenance.BackgroundHash(source.reader.files())
        sidecar = provenance.sidecar_path(output)
        sidecar_tmp = tmp.with_name(tmp.name + provenance.SIDECAR_SUFFIX)  # removed with the partial
        scratch_needs = scratch.scratch_bytes(source, plan) if request.engine == "local" else 0
        commit_started = False
        try:
            if journal is None:
                check_free_space(output, out_format, specs, request.compression, scratch_needs)
                writer = create_writer(tmp, out_format, specs, options)
                journal = resume.Journal(resume.journal_path(output), fingerprint, uuid.uuid4().hex, started_at)
                journal.save()
            resumed_tasks = len(journal.done)
            block_digests = output_block_digests(plan, specs, journal)
            progress.start(plan.output_rows)
            if resumed_tasks:  # (work proportional to the tasks done, only when resuming)
                progress.update(sum(t.stop - t.start for i, t in enumerate(plan.tasks()) if i in journal.done))
            if request.engine == "dask":
                from mixup_cli.engines import dask_engine

                # Workers open the input themselves, prepared as here, with the
                # recorded options (classes found here included): no pass over y.
                worker_options = DataOptions.from_parameters(source.prepared.parameters())
                engine_info = dask_engine.run_plan(
                    input_path, source, worker_options, plan, writer, progress,
                    scheduler=request.scheduler, workers=request.workers, block_digests=block_digests,
                    skip=frozenset(journal.done), on_done=lambda index: journal.task_done(index, writer),
                )
                batch_rows = plan.block_rows  # a worker mixes a whole block at once
            else:
                # Class pairings on compressed input: read from an uncompressed copy.
                with scratch.source_for_run(source, plan, tmp.with_name(tmp.name + ".scratch.h5")) as run_source:
                    run_plan(
                        run_source, plan, writer, batch_rows, progress, hasher=digests.BlockHasher(block_digests),
                        skip=frozenset(journal.done), on_done=lambda index: journal.task_done(index, writer),
                    )
                engine_info = {"engine": "local"}
            writer.flush()
            journal.save()  # every task recorded before the file is finished
            writer.set_attributes({"mixup_cli_version": __version__, "run_id": journal.run_id,
                                   **names.attributes(source.prepared)})
            writer.close()
            out_files = [tmp / rel if str(rel) != "." else tmp for rel in writer.files()]
            out_hashing = provenance.BackgroundHash(out_files if request.hash_files else [])
            atomic.sync(tmp)  # the disk flush overlaps the hashing; commit's own fsync is then quick
            out_hashes = out_hashing.result()
            in_hashes = input_hashes.result()
            input_entry = dataset_entry(
                input_path, source.reader.format_name, source.input_specs or source.specs, in_hashes
            )
            final = {str(output / rel if str(rel) != "." else output): f for rel, f in zip(writer.files(), out_files)}
            output_entry = dataset_entry(
                output, out_format, specs,
                {name: out_hashes.get(str(f)) for name, f in final.items()},
                {name: f.stat().st_size for name, f in final.items()},
            )
            array_digests = block_digests.arrays()
            for key, entry in output_entry["arrays"].items():
                entry["sha256"] = array_digests[key]
            output_entry["array_sha256"] = {
                "scheme": digests.SCHEME, "block_rows": plan.block_rows, "segment_rows": plan.n_rows,
            }

            parameters = dict(plan.to_dict(), x_key=request.x_key, y_key=source.y_key, compression=request.compression)
            parameters.update(source.prepared.parameters())
            seconds = time.perf_counter() - t0
            execution = dict(engine_info, batch_size=batch_rows, seconds=round(seconds, 3))
            if resumed_tasks:
                execution["resumed_tasks"] = resumed_tasks
            record = provenance.build(
                run_id=journal.run_id,
                command_line=request.command_line,
                parameters=parameters,
                execution=execution,
                input_entry=input_entry,
                output_entry=output_entry,
                started_at=journal.started_at,
                finished_at=provenance.utc_now(),
            )
            atomic.stage_text(sidecar_tmp, provenance.to_json(record))
            atomic.test_pause("staged")
            # The point of no return: once the first rename is under way the run
            # finishes the commit whatever arrives; a signal meanwhile is only
            # reported as too late (``late_signals``), never as a stop.
            committing = getattr(progress, "committing", None)
            if committing is not None:
                committing()  # may still stop the run: nothing is replaced yet
            commit_started = True
            with atomic.signals_held() as held:
                atomic.commit_output(
                    tmp, output, sidecar_tmp, sidecar, request.overwrite,
                    check=lambda: atomic.check_replaceable(output, sidecar, out_format in DIRECTORY_FORMATS),
                )
            atomic.test_pause("committed")
        except BaseException as exc:
            if commit_started and atomic.commit_record_path(output).exists():
                raise  # the new output is in place: its record lets the next command finish the commit
            if isinstance(exc, KeyboardInterrupt) and _keep_for_resume(writer, journal):
                raise  # stopped at a checkpoint: --resume continues from the journal
            if writer is not None:
                writer.abort()
            atomic.remove_partials(output)
            if _disk_full(exc):
                raise OutputError(
                    f"{output}: disk full (no space left in {output.parent.resolve()}); "
                    "nothing was written: free some space or choose another output directory"
                ) from None
            raise
    finally:
        lock.release()
        source.reader.close()

    return AugmentResult(output, sidecar, plan.output_rows, seconds, int(plan.seed), journal.run_id, record,
                         tuple(held.caught))


def _keep_for_resume(writer, journal) -> bool:
    """After SIGINT or SIGTERM: leave the partial output as --resume needs it
    (rows flushed, journal saved after them, files closed). False when there
    is nothing to continue, or it cannot be left consistent."""
    if writer is None or journal is None:
        return False
    try:
        writer.flush()
    except Exception:  # closed already (then the journal was saved before), or a failing disk:
        pass  # either way the journal on disk claims no more than is flushed
    else:
        try:
            journal.save()
        except Exception:
            return False
    try:
        writer.suspend()
    except Exception:
        return False
    return True


def dataset_entry(path: Path, fmt: str, specs: dict[str, ArraySpec], hashes: dict[str, str | None],
                  sizes: dict[str, int] | None = None) -> dict:
    """A dataset as the sidecar records it: where, what arrays, which files with their hashes.

    ``sizes`` gives the files' sizes when they are not yet at ``path``; a
    file whose hash is None is recorded without one."""
    files = []
    for p, digest in hashes.items():
        item = {"path": str(Path(p).resolve()), "size": sizes[p] if sizes else Path(p).stat().st_size}
        if digest is not None:
            item["sha256"] = digest
        files.append(item)
    return {
        "path": str(Path(path).resolve()),
        "format": fmt,
        "arrays": {key: spec.to_dict() for key, spec in specs.items()},
        "files": files,
    }


def output_block_digests(plan: Plan, specs: dict[str, ArraySpec], journal: resume.Journal) -> digests.BlockDigests:
    """The digests of the output's blocks, shared with the journal so that a
    resumed run keeps those of the blocks already written."""
    # A fresh run has nothing to look up: no pass over the plan's tasks.
    written = {task.out_start for i, task in enumerate(plan.tasks()) if i in journal.done} if journal.done else set()
    for start in [s for s in journal.digests if s not in written]:
        del journal.digests[start]  # hashed, but not recorded as written: written again
    return digests.BlockDigests.for_plan(plan, specs, done=journal.digests)
