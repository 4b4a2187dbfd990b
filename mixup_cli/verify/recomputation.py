"""The recomputation that ``verify`` shares between one output and a set's:
the recorded parameters checked and opened (``parameters_problem``,
``open_recorded``), the tasks run on the local engine (the run's own) into
a ``CompareWriter`` over OUT (``compare``), which compares the rows with
OUT's and hashes them as it reads, and the scratch names a recomputation
may write (``scratch_name``)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.errors import MixupError
from mixup_cli.io import open_reader
from mixup_cli.mixing.sampling import PLAN_VERSIONS
from mixup_cli.record import digests
from mixup_cli.verify.report import Check

# Parameters a sidecar must record for the output to be recomputed.
_REQUIRED = ("alpha", "seed", "x_key", "pairing", "copies", "include_original", "block_rows")
# What a failed recomputation raises: reported as its check, never raised.
RECOMPUTE_ERRORS = (MixupError, OSError, ValueError, TypeError, KeyError)


def parameters_problem(params: dict) -> Check | None:
    """The recompute check's failure when the sidecar's parameters cannot be
    recomputed here (another plan version, a parameter missing); else None."""
    if params.get("plan_version") not in PLAN_VERSIONS:
        return Check(
            "recompute",
            False,
            f"the sidecar's plan_version is {params.get('plan_version')!r}, this mixup-cli computes versions "
            f"{' and '.join(map(str, PLAN_VERSIONS))}; verify with the mixup-cli version that wrote it",
        )
    missing = [key for key in _REQUIRED if key not in params]
    return Check("recompute", False, f"the sidecar lacks the parameter '{missing[0]}'") if missing else None


def index_problem(params: dict, plan) -> Check | None:
    """``--neighbor-index approximate``: the recall the sidecar records against
    the one found again (the lists rebuilt by the library, the sample's exact
    lists by scikit-learn's brute force); the recompute check's failure when
    they differ, else None."""
    if params.get("neighbor_index") is None and plan.neighbor_index is None:
        return None
    found = plan.to_dict()
    keys = ("neighbor_index", "neighbor_recall", "neighbor_recall_sample")
    if all(params.get(key) == found.get(key) for key in keys):
        return None
    then = (params.get("neighbor_index_parameters") or {}).get("version")
    now = (found.get("neighbor_index_parameters") or {}).get("version")
    note = f"; the index was built with faiss-cpu {then}, this is {now}" if then != now else ""
    return Check(
        "recompute",
        False,
        f"the recorded recall@K {params.get('neighbor_recall')!r} ({_found(params)}) differs from "
        f"{found.get('neighbor_recall')!r} ({_found(found)}) found again with scikit-learn's brute force on "
        f"the same sampled rows{note}",
    )


def _found(record: dict) -> str:
    sample = record.get("neighbor_recall_sample") or {}
    return f"{sample.get('found')} of {sample.get('entries')} list entries of {sample.get('rows')} rows"


def not_recomputed(exc: BaseException, what: str = "the output") -> tuple:
    """``(check, first_difference, digests)`` of a recomputation that failed with ``exc``."""
    return Check("recompute", False, f"could not recompute {what}: {exc}"), None, None


def open_recorded(params: dict, path: Path, **where):
    """The ``Source`` the recorded parameters read from ``path`` (``where``:
    a set's ``reader`` and ``layout``), through HDF5's own decoding, never
    the run's fast paths: a wrong fast path would otherwise reproduce its
    own wrong output."""
    from mixup_cli.run.prepared import DataOptions
    from mixup_cli.run.source import open_source

    options = DataOptions.from_parameters(params)
    return open_source(path, params["x_key"], params.get("y_key"), options, fast=False, **where)


def scratch_name(folder: Path, prefix: str, suffix: str) -> Path:
    """Where a recomputation may put a scratch file: ``PREFIX HOST.PID SUFFIX``
    in ``folder``, or in the temporary folder if that is read-only. Copies a
    killed verify of this host left (its process gone) are removed first."""
    folder = folder if os.access(folder, os.W_OK) else Path(tempfile.gettempdir())
    _remove_stale(folder, prefix, suffix)
    return folder / f"{prefix}{socket.gethostname()}.{os.getpid()}{suffix}"


def _remove_stale(folder: Path, prefix: str, suffix: str) -> None:
    """Scratch copies named ``PREFIX HOST.PID SUFFIX`` whose process, on this
    host, is gone; those of another host or a live process are left."""
    from mixup_cli.sets.identity import process_gone

    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        host, _, pid = name[len(prefix) : -len(suffix)].rpartition(".")
        if process_gone(host, pid):
            beside.clear(folder / name)


class CompareWriter:
    """Takes the rows a run would write and compares them with an existing
    output instead, remembering the first differing row of each array; the
    rows read are given to ``hasher`` too (the output is read once)."""

    def __init__(self, reader, hasher=None):
        self._reader = reader
        self._hasher = hasher
        self.first: dict[str, int] = {}
        self.count: dict[str, int] = {}

    def write(self, key: str, start: int, data: np.ndarray) -> None:
        n = len(data)
        if n == 0:
            return
        actual = self._reader.read(key, start, start + n)
        if self._hasher is not None:
            self._hasher.update(start, {key: actual})
        as_stored = getattr(self._reader, "as_stored", None)  # lossy storage (JPEG): the rows as it keeps them
        if as_stored is not None:
            data = as_stored(key, data)
        expected = np.ascontiguousarray(data).reshape(n, -1).view(np.uint8)
        actual = np.ascontiguousarray(actual).reshape(n, -1).view(np.uint8)
        rows = np.flatnonzero((expected != actual).any(axis=1))
        if len(rows):
            first = start + int(rows[0])
            self.first[key] = min(first, self.first.get(key, first))
            self.count[key] = self.count.get(key, 0) + len(rows)


def _shape_problems(expected: dict, out_reader, output: Path) -> list[str]:
    """How OUT's arrays differ in name, shape or dtype from what the parameters give."""
    present = out_reader.keys()
    problems = []
    for key, spec in expected.items():
        if key not in present:
            problems.append(f"array '{key}' is missing from {output}")
        elif out_reader.spec(key) != spec:
            got = out_reader.spec(key)
            problems.append(
                f"'{key}' has shape {got.shape} and dtype {got.dtype}; the recorded parameters "
                f"give shape {spec.shape} and dtype {np.dtype(spec.dtype)}"
            )
    return problems


def compare(run_source, plan, tasks, expected: dict, output: Path, block_digests, progress, batch_size=None):
    """Run ``tasks`` of ``plan`` on the local engine (the run's own) into a
    ``CompareWriter`` over OUT, read with ``fast=False``. Returns ``(check,
    first_difference, digests)`` like ``recompute``."""
    from mixup_cli.engines import local

    out_reader = open_reader(output, fast=False)
    try:
        problems = _shape_problems(expected, out_reader, output)
        if problems:
            return Check("recompute", False, "; ".join(problems)), None, None
        # The rows read for the comparison are hashed as they come (OUT is read once).
        writer = CompareWriter(out_reader, digests.BlockHasher(block_digests) if block_digests else None)
        local.run(run_source, plan, writer, tasks, progress, batch_rows=batch_size)
    finally:
        out_reader.close()
    rows = next(iter(expected.values())).rows
    found = block_digests.arrays() if block_digests is not None and not block_digests.missing() else None
    return _compared(writer, rows, list(expected)) + (found,)


def _compared(writer: CompareWriter, rows: int, order: list[str]) -> tuple[Check, dict | None]:
    """The recompute check from what the comparing writer found, and the first difference."""
    if not writer.first:
        return Check("recompute", True, f"all {rows} rows of {len(order)} arrays match"), None
    keys = sorted(writer.first, key=lambda k: (writer.first[k], order.index(k)))
    parts = [f"'{k}' first at row {writer.first[k]} ({writer.count[k]} of {rows} rows differ)" for k in keys]
    first = {"array": keys[0], "row": writer.first[keys[0]]}
    return Check("recompute", False, "the recomputed output differs: " + ", ".join(parts)), first
