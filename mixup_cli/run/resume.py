"""Resuming a run that was killed: the journal beside the partial output.

While a run works, ``.OUT.mixup-partial.journal.json`` records a fingerprint
of everything that decides the output (plan, options, the input files' sizes
and modification times, the output's format and arrays, the tool version)
and which tasks of the plan are already in the partial output. The journal
is rewritten atomically at most every ``SAVE_INTERVAL`` seconds, always after
the writer has flushed the rows of the tasks it lists, so after a kill it
never claims more than is on disk.

``--resume`` compares the journal's fingerprint with the new run's, refuses
with the list of differences when they differ, and otherwise skips the
recorded tasks. Tasks are keyed by their place in ``Plan.tasks()`` and each
is computed alone from the seed, so the result is the same as an
uninterrupted run, whatever ``--batch-size`` either run used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from mixup_cli._version import __version__
from mixup_cli.core import beside
from mixup_cli.core.errors import OutputError
from mixup_cli.io import reopen_writer
from mixup_cli.io.base import DamagedPartial
from mixup_cli.record import atomic, digests

log = logging.getLogger("mixup_cli")


class NothingToResume(OutputError):
    """The partial files cannot be continued, and hold nothing worth keeping
    (no journal, an unreadable one, or no partial output beside it): the
    run starts over instead."""


JOURNAL_SUFFIX = ".journal.json"
JOURNAL_VERSION = 3  # 2: digests of the finished blocks; 3: those digests in an append-only log beside it
LOG_SUFFIX = ".log"  # the digests' log: ``.OUT.mixup-partial.journal.json.log``
# Seconds between journal updates: at most this much work is redone on resume.
SAVE_INTERVAL = 1.0
# A journal larger than this was not written by mixup (a million tasks' digests take far less).
JOURNAL_LIMIT = 512 * 1024 * 1024
MAX_TASKS = 1_000_000  # sampling.MAX_TASKS: no plan has more tasks, so no journal records more

# What the fingerprint records of a request besides the plan, each by name
# (a field's journal key is its name here, whatever the option is called).
# Options that decide the output's bytes, always recorded:
FINGERPRINT_OPTIONS = (
    "x_key",
    "y_key",
    "compression",
    "x_dtype",
    "y_format",
    "y_kind",
    "num_classes",
    "label_smoothing",
    "allow_nonfinite",
    "chunk_rows",
    "byte_shuffle",
    "zarr_format",
)
# Options of some pairings, inputs or outputs only: recorded only when given
# (not None or False) and not already in the plan, so that journals written
# before they existed, and by runs without them, stay valid.
FINGERPRINT_WHEN_GIVEN = (
    "neighbors",
    "project",
    "bandwidth",
    "balance",
    "balance_to",
    "groups",
    "exclude_rows",
    "image_size",
    "image_resize",
    "image_channels",
    "skip_bad_images",
    "wds_label",
    "sample_axis",
    "image_format",
    "jpeg_quality",
)
# Every option the fingerprint takes (``fingerprint(options=...)``), by name.
FINGERPRINTED = FINGERPRINT_OPTIONS + FINGERPRINT_WHEN_GIVEN
# In the fingerprint through the plan (``Plan.to_dict``), or not deciding the
# output's bytes (where the run reads and writes, how it runs, what it prints).
NOT_IN_FINGERPRINT = (
    "alpha",
    "seed",
    "block_rows",
    "pairing",
    "copies",
    "include_original",
    "method",
    "layout",
    "neighbor_index",
    "plan_version",
    "input",
    "output",
    "batch_size",
    "overwrite",
    "command_line",
    "resume",
    "require_y",
    "engine",
    "scheduler",
    "workers",
    "hash_files",
)


def journal_path(output: Path) -> Path:
    partial = atomic.partial_path(output)
    return partial.with_name(partial.name + JOURNAL_SUFFIX)


def _plain(value):
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def fingerprint(
    plan,
    source,
    out_format: str,
    out_specs: dict,
    *,
    options: dict,
    input_path: Path,
    input_record: dict | None = None,
) -> dict:
    """Everything that decides the bytes of the output. ``options``: the
    run's value of each name in ``FINGERPRINTED``; ``input_path``: the input
    as given; ``input_record``: what stands for the input (a set's output: the
    set's inputs, stated once, ``sets.inputs_state``), instead of the input's
    own files."""
    plan_fields = plan.to_dict()
    recorded = {name: options[name] for name in FINGERPRINT_OPTIONS}
    for name in FINGERPRINT_WHEN_GIVEN:
        value = options[name]
        if name not in plan_fields and value is not None and value is not False:
            recorded[name] = value
    files = []
    for path in source.reader.files() if input_record is None else ():
        st = Path(path).stat()
        files.append({"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    if input_record is None:
        input_record = {
            "path": str(Path(input_path).resolve()),
            "format": source.reader.format_name,
            "arrays": {key: spec.to_dict() for key, spec in source.specs.items()},
            "files": files,
        }
    return _plain(
        {
            "tool_version": __version__,
            "plan": plan_fields,
            "options": recorded,
            "input": input_record,
            "output": {"format": out_format, "arrays": {key: spec.to_dict() for key, spec in out_specs.items()}},
        }
    )


def _option_name(section: str, key: str) -> str:
    if section in ("plan", "options") and key != "plan_version":
        return "--" + key.replace("_", "-")
    return {
        ("", "tool_version"): "mixup-cli version",
        ("plan", "plan_version"): "plan version",
        ("input", "path"): "input path",
        ("input", "format"): "input format",
        ("input", "arrays"): "input arrays (shapes or dtypes)",
        ("input", "files"): "input files (size or modification time: the input changed)",
        ("output", "format"): "output format",
        ("output", "arrays"): "output arrays (shapes or dtypes)",
    }.get((section, key), f"{section}.{key}".strip("."))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words."""
    found = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    name = _option_name(section, key)
                    if section in ("plan", "options", "") or key in ("path", "format"):
                        name += f" {_short(a.get(key))} (interrupted run) vs {_short(b.get(key))} (now)"
                    found.append(name)
        elif a != b:
            found.append(f"{_option_name('', section)} {_short(a)} (interrupted run) vs {_short(b)} (now)")
    return found


def _ranges(done: set[int]) -> list[list[int]]:
    """Sorted task indices as [first, last] runs, to keep the journal small."""
    out: list[list[int]] = []
    for i in sorted(done):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


class Journal:
    """The resume record of one partial output."""

    def __init__(
        self, path: Path, fingerprint: dict, run_id: str, started_at: str, done=(), digests=None, log_bytes=None
    ):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.run_id = run_id
        self.started_at = started_at
        self.done: set[int] = set(done)
        # First output row of a written block -> its arrays' digests (digests.BlockDigests.done).
        self.digests: dict[int, dict[str, str]] = dict(digests or {})
        self._saved_at = 0.0
        self._first = True  # the first finished task is recorded at once: early kills lose little
        # The digests go to an append-only log; the journal records how many of its bytes count,
        # so a save costs what was done since the last one, not everything done so far.
        self.log_path = self.path.with_name(self.path.name + LOG_SUFFIX)
        self._log_bytes = log_bytes  # None: a new journal, whose log is made afresh
        self._logged: dict[int, dict[str, str]] = dict(self.digests)

    @property
    def seed(self) -> int | None:
        return self.fingerprint.get("plan", {}).get("seed")

    def save(self) -> None:
        self._append_digests()
        record = {
            "journal_version": JOURNAL_VERSION,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "fingerprint": self.fingerprint,
            "done": _ranges(self.done),
            "log_bytes": self._log_bytes,
        }
        # The temporary name shares the partial output's prefix, so cleanup finds it.
        tmp = atomic.stage_text(self.path.with_name(self.path.name + ".tmp"), json.dumps(record, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
        self._saved_at = time.monotonic()

    def _append_digests(self) -> None:
        """Digests not yet in the log appended to it and flushed; lines past
        the length the journal records (a kill between the two) are cut first."""
        if self._log_bytes is None:
            os.close(beside.create_file(self.log_path))  # whatever was at its name removed first
            self._log_bytes = 0
            self._logged = {}
        snapshot = dict(self.digests)  # a copy first: the engine adds digests from another thread
        new = [(start, d) for start, d in snapshot.items() if self._logged.get(start) != d]
        if not new:
            return
        data = "".join(json.dumps([start, d], sort_keys=True) + "\n" for start, d in new).encode()
        fd = beside.open_regular(self.log_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, self._log_bytes)
            view, at = memoryview(data), self._log_bytes
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
            os.fsync(fd)
        finally:
            os.close(fd)
        self._log_bytes += len(data)
        self._logged.update(new)

    def task_done(self, index: int, writer) -> None:
        """Record a finished task; for the first one and then every
        ``SAVE_INTERVAL`` s flush the writer, then save."""
        self.done.add(index)
        if self._first or time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self._first = False
            writer.flush()
            self.save()

    def check(self, new_fingerprint: dict, output: Path) -> None:
        """Refuse to resume when anything that decides the output differs."""
        found = differences(self.fingerprint, new_fingerprint)
        if found:
            raise OutputError(
                f"{output}: cannot resume, the interrupted run differs: {'; '.join(found)}; "
                "rerun with its options, or without --resume to start over"
            )

    @classmethod
    def load(cls, path: Path, output: Path) -> Journal:
        partial = atomic.partial_path(output)
        # The output itself, or (.npz) its staging directory.
        if not any(not p.name.startswith(Path(path).name) for p in atomic.partials(output, with_lock=False)):
            raise NothingToResume(f"{output}: the partial output {partial.name} is missing")
        try:
            record = json.loads(beside.read_regular(path, JOURNAL_LIMIT).decode("utf-8"))
            fingerprint, run_id, started_at, done, log_bytes = _checked(record)
            digests = _read_log(Path(path).with_name(Path(path).name + LOG_SUFFIX), log_bytes)
            return cls(path, fingerprint, run_id, started_at, done, digests, log_bytes)
        except FileNotFoundError:
            reason = "it has no journal (the run stopped before its first block)"
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            reason = f"its journal {Path(path).name} is unreadable"
        raise NothingToResume(f"{output}: {partial.name} cannot be continued: {reason}")


def _checked(record) -> tuple:
    """The journal's fields, checked against what mixup writes there (ValueError else):
    a fingerprint of sections, task ranges within what any plan has, digests as text."""
    if not isinstance(record, dict) or record.get("journal_version") != JOURNAL_VERSION:
        raise ValueError("unknown journal version")
    fingerprint, run_id, started_at = record["fingerprint"], record["run_id"], record["started_at"]
    if not isinstance(fingerprint, dict) or not all(isinstance(v, (dict, str)) for v in fingerprint.values()):
        raise ValueError("fingerprint")
    if not isinstance(run_id, str) or not isinstance(started_at, str):
        raise ValueError("run id")
    ranges, total = record["done"], 0
    for pair in ranges:
        first, last = pair
        if not (type(first) is int and type(last) is int and 0 <= first <= last < MAX_TASKS):
            raise ValueError("task range")
        total += last - first + 1
        if total > MAX_TASKS:
            raise ValueError("task ranges")
    done = {i for first, last in ranges for i in range(first, last + 1)}
    log_bytes = record["log_bytes"]
    if not (type(log_bytes) is int and 0 <= log_bytes <= JOURNAL_LIMIT):
        raise ValueError("log length")
    return fingerprint, run_id, started_at, done, log_bytes


def _read_log(path: Path, length: int) -> dict[int, dict[str, str]]:
    """The digests of the log's first ``length`` bytes (later lines: a kill
    came before the journal recorded them), the last line of a block winning."""
    if not length:
        return {}
    fd = beside.open_regular(path)
    try:
        data = os.pread(fd, length, 0)
    finally:
        os.close(fd)
    if len(data) != length or not data.endswith(b"\n"):
        raise ValueError("the digests' log is shorter than its journal records")
    found = {}
    for line in data.splitlines():
        start, d = json.loads(line)
        if not (
            type(start) is int
            and start >= 0
            and isinstance(d, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
        ):
            raise ValueError("digests")
        found[start] = d
    return found


def open_journal(output: Path, resume: bool) -> Journal | None:
    """The journal of the interrupted run to continue, or None to start afresh.

    Without --resume, leftovers of an interrupted run are removed (with a
    warning): a retried job then simply starts over.
    """
    left = atomic.partials(output, with_lock=False)
    if resume and left:
        try:
            return Journal.load(journal_path(output), output)
        except NothingToResume as exc:
            # Nothing journaled, nothing lost: a retried job needs no human.
            log.warning("%s; starting from the beginning", exc)
            discard(left)
            return None
    if resume:
        log.warning("%s: no interrupted run to resume; starting from the beginning", output)
    elif left:
        log.warning(
            "removing %s left by an interrupted run (pass --resume to continue such a run instead)",
            ", ".join(p.name for p in left),
        )
    discard(left)
    return None


def discard(paths) -> None:
    for path in paths:
        atomic.remove(path)


def _block_rows(plan, task, shift=None) -> tuple[int, int]:
    """The output rows of the whole block a task is (part of): what a digest covers.
    ``shift``: (segment_rows, block_offset) of a set's output, whose blocks
    are the set's clipped to its input (``digests.Bounds``)."""
    if shift is not None:
        bounds = digests.block_bounds(shift[0], plan.block_rows, plan.output_rows // plan.n_rows, shift[1])
        return bounds[bounds.index_of(task.out_start)]
    first, last = plan.block_bounds(task.block)
    start = task.out_start - (task.start - first)
    return start, start + last - first


def keep_verified(journal: Journal, plan, tasks, writer, shift=None) -> bool:
    """Whether the tasks (of the run's list ``tasks``) the journal records as
    written read back with their recorded digests (formats whose writer can
    read its partial). A kill can never make them differ; a partial damaged
    otherwise does."""
    if not journal.done:
        return True
    for index, task in enumerate(tasks):
        if index not in journal.done:
            continue
        start, stop = _block_rows(plan, task, shift)
        want = journal.digests.get(start)
        if want is None:
            if stop - start != task.stop - task.start:
                continue  # part of a block not finished: ``block_digests`` has it redone
            return False
        try:
            rows = {key: writer.read(key, start, stop) for key in want}
        except Exception:
            return False
        if any(v is None for v in rows.values()):
            return True  # this format cannot read its partial output back
        if digests.of_rows(rows) != want:
            return False
    return True


def keep_for_resume(writer, journal) -> bool:
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


def block_digests(plan, specs: dict, journal: Journal, tasks, shift=None) -> digests.BlockDigests:
    """The digests of the output's blocks, shared with the journal so that a
    resumed run keeps those of the blocks already written (``tasks``: the
    run's list, which the journal's indices number)."""
    # A fresh run has nothing to look up: no pass over the tasks.
    starts = (
        {i: _block_rows(plan, task, shift)[0] for i, task in enumerate(tasks) if i in journal.done}
        if journal.done
        else {}
    )
    # Parts of a block whose other parts were not all written: redone with them (a digest covers the whole block).
    journal.done -= {i for i, start in starts.items() if start not in journal.digests}
    written = {starts[i] for i in journal.done}
    for start in [s for s in journal.digests if s not in written]:
        del journal.digests[start]  # hashed, but not recorded as written: written again
    if shift is None:
        return digests.BlockDigests.for_plan(plan, specs, done=journal.digests)
    return digests.BlockDigests.for_plan(
        plan, specs, done=journal.digests, segment_rows=shift[0], block_offset=shift[1]
    )


def reopen_partial(
    journal: Journal, fingerprint: dict, output: Path, out_format: str, specs: dict, options, plan, tasks, shift=None
):
    """The writer of the partial output the journal describes, its journaled
    tasks checked, or None when it cannot be trusted (then removed: the run
    starts over, keeping the interrupted run's seed). Refuses, leaving the
    partial as it was, when the fingerprint differs."""
    journal.check(fingerprint, output)
    writer = None
    try:
        writer = reopen_writer(atomic.partial_path(output), out_format, specs, options)
        if not keep_verified(journal, plan, tasks, writer, shift):
            writer.abort()
            raise DamagedPartial(f"{output}: the partial output does not hold the rows its journal records")
    except DamagedPartial as exc:
        # A kill mid-flush: what it held cannot be trusted, so start over.
        log.warning("%s; starting from the beginning", exc)
        discard(atomic.partials(output, with_lock=False))
        return None
    return writer
