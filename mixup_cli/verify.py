"""``mixup verify OUT``: check an output against its provenance sidecar.

Three checks, all run so that a report names everything that differs:

``output files``
    every file of OUT has the size (and SHA-256, when recorded) the sidecar
    records;
``output data``
    every array of OUT has the SHA-256 the sidecar records (see
    ``mixup_cli.digests``), hashed as ``recompute`` reads OUT, so OUT is
    read once; without the input, read back block by block;
``input files``
    the input (where the sidecar says, or ``input_path``) still has the
    recorded size and SHA-256;
``recompute``
    the output is computed again from the input and the sidecar's
    parameters, with the same plan, engine and per-task computation as
    ``mixup augment``, and compared row by row with OUT as it goes: memory
    is bounded as in a run (ARCHITECTURE.md, "Memory"). The first differing array and row are reported.

Editing the sidecar's parameters (seed, alpha, pairing...) is caught by the
recomputation, since they no longer produce OUT.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixup_cli import beside, digests, provenance, scratch, stopping
from mixup_cli.errors import InputError, MixupError
from mixup_cli.io import open_reader
from mixup_cli.sampling import PLAN_VERSIONS

# Parameters a sidecar must record for the output to be recomputed.
_REQUIRED = ("alpha", "seed", "x_key", "pairing", "copies", "include_original", "block_rows")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerifyReport:
    output: Path
    sidecar: Path
    input: Path
    checks: list[Check] = field(default_factory=list)
    # The first array and row of OUT that differ from the recomputation.
    first_difference: dict | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "output": str(self.output),
            "sidecar": str(self.sidecar),
            "input": str(self.input),
            "checks": [check.to_dict() for check in self.checks],
            "first_difference": self.first_difference,
        }


def _files_of(entry: dict, root: Path) -> list[tuple[Path, dict]]:
    """The recorded files of a dataset entry, mapped onto where it is now."""
    recorded_root = Path(entry["path"])
    mapped = []
    for item in entry.get("files", []):
        recorded = Path(item["path"])
        try:
            rel = recorded.relative_to(recorded_root)
        except ValueError:
            rel = None
        if rel is not None:
            mapped.append((root if str(rel) == "." else root / rel, item))
            continue
        # A file the input reads from besides itself (a virtual dataset's
        # source, external raw data or link target): beside it, as recorded.
        try:
            mapped.append((root.parent / recorded.relative_to(recorded_root.parent), item))
        except ValueError:
            mapped.append((recorded, item))
    return mapped


def check_files(name: str, entry: dict, root: Path, hint: str = "") -> Check:
    """Each recorded file exists under ``root`` with its recorded size and SHA-256."""
    files = _files_of(entry, root)
    if not files:
        return Check(name, False, f"the sidecar records no files for {root}")
    problems = []
    for path, item in files:
        if not path.exists():
            problems.append(f"{path}: not found{hint}")
            continue
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would be read for ever
            problems.append(f"{path}: is {beside.kind(st.st_mode)}, not a file a run reads; the sidecar is wrong")
            continue
        size = st.st_size
        if size != item.get("size"):
            problems.append(f"{path}: size {size} bytes, the sidecar records {item.get('size')}")
            continue
        if "sha256" not in item:
            continue  # recorded without its hash (the arrays' digests cover the data)
        digest = provenance.sha256_file(path)
        if digest != item["sha256"]:
            problems.append(
                f"{path}: SHA-256 {digest[:12]}... differs from the recorded {str(item.get('sha256'))[:12]}..."
            )
    if problems:
        return Check(name, False, "; ".join(problems))
    count = len(files)
    what = "size and SHA-256" if all("sha256" in item for _, item in files) else "size"
    return Check(name, True, f"{count} file{'s' if count != 1 else ''}, {what} as recorded")


def recorded_digests(entry: dict) -> dict | None:
    """How the sidecar's output entry says its arrays were hashed (the
    ``array_sha256`` scheme), or None when it records no array digests."""
    scheme = entry.get("array_sha256")
    arrays = entry.get("arrays") or {}
    if not scheme or not arrays or not all("sha256" in a for a in arrays.values()):
        return None
    return scheme


def check_array_digests(entry: dict, output: Path, found: dict[str, str] | None = None) -> Check | None:
    """Each output array's SHA-256 against the sidecar: ``found`` when the
    recomputation already hashed the rows it read, else read back block by
    block. None when the sidecar records no array digests (older sidecars)."""
    scheme = recorded_digests(entry)
    if scheme is None:
        return None
    if scheme.get("scheme") != digests.SCHEME:
        return Check("output data", False, f"unknown digest scheme {scheme.get('scheme')!r}")
    try:
        sizes = int(scheme["block_rows"]), int(scheme["segment_rows"]), int(scheme.get("block_offset", 0))
    except (KeyError, TypeError, ValueError):
        sizes = (0, 0, 0)
    if min(sizes[:2]) < 1 or sizes[2] < 0:
        return Check("output data", False, "the sidecar's array_sha256 records impossible block sizes; it is damaged")
    arrays = entry["arrays"]
    problems = []
    if found is None or set(found) != set(arrays):
        try:
            found, problems = _read_back_digests(output, arrays, scheme)
        except (MixupError, OSError, ValueError, KeyError, TypeError) as exc:
            return Check("output data", False, f"cannot read {output}: {exc}")
    problems += [
        _differs(key, found[key], recorded["sha256"])
        for key, recorded in arrays.items()
        if key in found and found[key] != recorded["sha256"]
    ]
    if problems:
        return Check("output data", False, "; ".join(problems))
    return Check("output data", True, f"{len(arrays)} arrays, SHA-256 as recorded")


def _read_back_digests(output: Path, arrays: dict, scheme: dict) -> tuple[dict[str, str], list[str]]:
    """The digests of OUT's arrays, read block by block, and what kept an array from being hashed."""
    found, problems = {}, []
    segment = int(scheme["segment_rows"])
    with open_reader(output) as reader:
        present = reader.keys()
        for key in arrays:
            if key not in present:
                problems.append(f"array '{key}' is missing")
                continue
            rows = reader.spec(key).rows
            if segment < 1 or rows % segment:
                problems.append(f"'{key}' has {rows} rows, not a whole number of copies of {segment}")
                continue
            bounds = digests.block_bounds(
                segment, int(scheme["block_rows"]), rows // segment, int(scheme.get("block_offset", 0))
            )  # a set's output: shifted blocks
            found[key] = digests.combine([_block_digest(reader, key, a, b) for a, b in bounds])
    return found, problems


def _block_digest(reader, key: str, start: int, stop: int) -> str:
    stopping.check()  # between two blocks read back
    return digests.of_rows({key: reader.read(key, start, stop)})[key]


def _differs(key: str, found: str, recorded: str) -> str:
    return f"'{key}': SHA-256 {found[:12]}... differs from the recorded {recorded[:12]}..."


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


_VERIFY_SCRATCH = ".mixup-verify-"


def _scratch_path(output: Path) -> Path:
    """Where a recomputation may put a scratch copy of the input: beside OUT
    (hidden, one per process: ``.OUT.mixup-verify-HOST.PID.scratch.h5``), or in
    the temporary folder if that is read-only. Copies a killed verify of
    this host left (its process gone) are removed first."""
    folder = output.parent if os.access(output.parent, os.W_OK) else Path(tempfile.gettempdir())
    prefix = f".{output.name}{_VERIFY_SCRATCH}"
    _remove_stale(folder, prefix, ".scratch.h5")
    return folder / f"{prefix}{socket.gethostname()}.{os.getpid()}.scratch.h5"


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


def recompute(record: dict, output: Path, input_path: Path, batch_size: int | None = None, progress=None):
    """Recompute OUT from the input and the recorded parameters.

    Returns ``(check, first_difference, digests)``: ``digests`` are the
    SHA-256 of OUT's arrays as read for the comparison, when the sidecar
    records them for the same blocks (else None)."""
    from mixup_cli.planning import output_specs, plan_from_sidecar
    from mixup_cli.prepare import DataOptions
    from mixup_cli.request import Progress
    from mixup_cli.source import open_source

    params = record.get("parameters") or {}
    problem = _parameters_problem(params)
    if problem is not None:
        return problem, None, None

    source = None
    try:
        options = DataOptions.from_parameters(params)
        # Read through HDF5's own decoding, never the run's fast paths: a
        # wrong fast path would otherwise reproduce its own wrong output.
        source = open_source(input_path, params["x_key"], params.get("y_key"), options, fast=False)
        plan = plan_from_sidecar(params, source)
        expected = output_specs(source, plan)
        scheme = recorded_digests(record.get("output") or {})
        block_digests = None
        if scheme and (scheme.get("block_rows"), scheme.get("segment_rows")) == (plan.block_rows, plan.n_rows):
            block_digests = digests.BlockDigests.for_plan(plan, expected)
        progress = progress or Progress()
        progress.start(plan.output_rows)
        # Class pairings on compressed input: from an uncompressed copy, as in a run.
        with scratch.source_for_run(source, plan, _scratch_path(output), fast=False) as run_source:
            found = compare(run_source, plan, plan.tasks(), expected, output, block_digests, progress, batch_size)
        note = None if found[0].ok else _decoder_note(params)
        if note:
            found = (Check(found[0].name, False, f"{found[0].detail}; {note}"),) + found[1:]
        return found
    except (MixupError, OSError, ValueError, TypeError, KeyError) as exc:
        return Check("recompute", False, f"could not recompute the output: {exc}"), None, None
    finally:
        if source is not None:
            source.reader.close()


def _decoder_note(params: dict) -> str | None:
    """Images decoded by another Pillow or codec than the run's: say so (they may decode differently)."""
    recorded = (params.get("images") or {}).get("decoder")
    if not isinstance(recorded, dict):
        return None
    from mixup_cli.io.images import pillow_versions

    now = pillow_versions()
    changed = [
        f"{name} {recorded.get(name)} then, {now.get(name)} now" for name in now if recorded.get(name) != now[name]
    ]
    if not changed:
        return None
    return "the images were decoded by other versions (" + ", ".join(changed) + "), which may decode them differently"


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


def verify(output: Path, input_path: Path | None = None, batch_size: int | None = None, progress=None) -> VerifyReport:
    """Run every check on OUT; raise only when there is nothing to check."""
    output = Path(output)
    from mixup_cli.atomic import recover

    recover(output)  # a commit left half-done by a killed run: finished or rolled back, with a warning
    if not output.exists():
        raise InputError(f"{output}: no such file or directory")
    sidecar = provenance.sidecar_path(output)
    record = provenance.read(sidecar)
    try:
        out_entry, in_entry = record["output"], record["input"]
        recorded_input = Path(in_entry["path"])
    except (KeyError, TypeError):
        raise InputError(f"{sidecar}: lacks the 'input' or 'output' entry; it is not a complete sidecar") from None
    if "set" in record:  # one output of a set: recomputed from the whole set
        return _verify_set_output(output, record, input_path, batch_size, progress)
    source = Path(input_path) if input_path is not None else recorded_input
    report = VerifyReport(output, sidecar, source)

    hint = "; if the input moved, pass its new place with --input" if input_path is None else ""
    recomputed, first, found = None, None, None
    if source.exists():
        recomputed, first, found = recompute(record, output, source, batch_size, progress)
    report.checks.append(check_files("output files", out_entry, output))
    data_check = check_array_digests(out_entry, output, found)
    if data_check is not None:
        report.checks.append(data_check)
    report.checks.append(check_files("input files", in_entry, source, hint))
    report.checks.append(recomputed or Check("recompute", False, f"skipped: input {source} not found{hint}"))
    law = check_law(record.get("parameters") or {}, output, source if source.exists() else None)
    if law is not None:
        report.checks.append(law)
    report.first_difference = first
    return report


# Rows of OUT's provenance read at once by the law check.
_LAW_PIECE_ROWS = 1 << 18


def check_law(params: dict, output: Path, input_path: Path | None) -> Check | None:
    """The ``law`` check: OUT's own ``partner`` and ``lam`` (and ``own``)
    arrays against the pairing's documented law (``mixup_cli.law``), read
    from OUT alone (and, for class pairings, the input's labels): none of the
    planner's code. None when the sidecar lacks what it needs."""
    from mixup_cli import law

    try:
        pairing, copies = params["pairing"], int(params["copies"])
        segments = copies + int(bool(params["include_original"]))
        block_rows, alpha = int(params["block_rows"]), float(params["alpha"])
    except (KeyError, TypeError, ValueError):
        return None
    if params.get("plan_version") == 1 and pairing == "global":
        return Check(
            "law",
            True,
            "plan version 1: global pairing took each block's partners from the next block of a random "
            "cycle (its documented law then), not uniform over the dataset; not tested",
        )
    try:
        reader = open_reader(output, fast=False)
    except (MixupError, OSError) as exc:
        return Check("law", False, f"could not read {output}: {exc}")
    try:
        rows = reader.spec("partner").rows
        n = rows // segments
        balanced = bool(params.get("balance") or params.get("exclude_rows"))  # an 'own' array
        excluded = _excluded_rows(params, rows)
        classes = None
        if pairing in ("within-class", "between-class") and input_path is not None:
            classes = _input_classes(input_path, params.get("y_key"), params)
        grouped = _group_law(params, input_path, classes, excluded)
        if grouped is not None:
            _check_original_groups(reader, grouped, n, segments - copies, balanced)
            classes = None  # the group law tests the classes, alone rows apart
        tested = law.Law(
            pairing,
            n,
            block_rows,
            alpha,
            copies * n,
            lam_is_beta=params.get("method", "mixup") == "mixup",
            classes=classes,
            # batch with --groups: its permutations still hold (the group law adds the groups)
            partner_law=not balanced and (grouped is None or pairing == "batch"),
            version=int(params.get("plan_version", 1)),
        )
        piece = max(1, _LAW_PIECE_ROWS // block_rows) * block_rows
        for seg in range(segments - copies, segments):  # the original rows come first, unmixed
            for s in range(0, n, piece):
                stopping.check()
                _feed_law(reader, tested, grouped, excluded, (seg * n + s, s, min(n, s + piece)), balanced)
        return _law_check(tested, grouped, params, excluded)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        return Check("law", False, f"could not read the provenance of {output}: {exc}")
    finally:
        reader.close()


def _feed_law(reader, tested, grouped, excluded, rows: tuple[int, int, int], balanced: bool) -> None:
    """Output rows ``at...`` (input rows ``s:e`` of a segment) fed to the law's checks."""
    at, s, e = rows
    own = reader.read("own", at, at + e - s) if balanced else np.arange(s, e)
    partner, lam = reader.read("partner", at, at + e - s), reader.read("lam", at, at + e - s)
    if excluded is not None:
        excluded.add(own, partner, at)
    if grouped is not None:
        grouped.check_groups(own, reader.read("group", at, at + e - s), at)
        drew = grouped.add(own, partner, lam, at)
        if tested.pairing == "batch":  # every row is in its block's permutation; lam of the mixed ones
            tested.add(own, partner, lam, at, mixed=drew)
            return
        own, partner, lam = own[drew], partner[drew], lam[drew]
    tested.add(own, partner, lam, at)


def _law_check(tested, grouped, params: dict, excluded=None) -> Check:
    """The law check's line: the pairing's law, with --groups the group law,
    with --exclude-rows the rows held out."""
    ok, detail = tested.result()
    if excluded is not None:
        problem, line = excluded.result()
        if problem:
            return Check("law", False, problem + (f"; {detail}" if not ok else ""))
        detail += f"; {line}"
    if params.get("groups") is None:
        return Check("law", ok, detail)
    if grouped is None:
        return Check("law", ok, detail + f"; --groups {params['groups']}: not tested, the input was not found")
    problems, tested_groups = grouped.result()
    if problems:
        return Check("law", False, "; ".join(problems) + (f"; {detail}" if not ok else ""))
    return Check("law", ok, detail + f"; --groups {params['groups']}: {', '.join(tested_groups)}")


def _excluded_rows(params: dict, rows: int):
    """``--exclude-rows``: the check that no output row uses the rows the file lists; None without it."""
    from mixup_cli import law
    from mixup_cli.exclude import read_rows

    recorded = params.get("exclude_rows")
    if not recorded:
        return None
    path = Path(recorded["path"])
    try:
        excluded = read_rows(path, np.iinfo(np.int64).max)
        if provenance.sha256_file(path) != recorded.get("sha256"):
            return law.Excluded(None, f"--exclude-rows: {path} changed since the run (its SHA-256 differs)")
    except (MixupError, OSError) as exc:
        return law.Excluded(None, f"--exclude-rows: could not read {path}: {exc}")
    return law.Excluded(excluded)


def _group_law(params: dict, input_path: Path | None, classes, excluded=None):
    """``--groups``: the law inside the groups, from the input's group ids read here; None without them."""
    from mixup_cli import law

    key = params.get("groups")
    if key is None or input_path is None:
        return None
    held_out = None if excluded is None else excluded.rows
    return law.GroupLaw(params["pairing"], _group_ids(input_path, key), classes, held_out)


def _group_ids(input_path: Path, key: str) -> np.ndarray:
    """The input's group ids as stored (strings as text, bools as integers), read here."""
    reader = open_reader(input_path, fast=False)
    try:
        spec = reader.spec(key)
        parts = [reader.read(key, s, min(spec.rows, s + _LAW_PIECE_ROWS)) for s in range(0, spec.rows, _LAW_PIECE_ROWS)]
    finally:
        reader.close()
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ids = ids.reshape(len(ids))
    if ids.dtype.kind in "SO":
        ids = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in ids.tolist()], dtype=str)
    return ids.astype(np.int64) if ids.dtype.kind == "b" else ids


def _set_group_checks(records: dict, params: dict, paths: list[Path], reports: dict) -> None:
    """``--groups`` on a set: each output's ``group`` and partners against the
    group ids of the whole set (global rows), read from the inputs here."""
    from mixup_cli import law

    key, pairing = params.get("groups"), params.get("pairing")
    if key is None:
        return
    try:
        ids = np.concatenate([_group_ids(p, key) for p in paths])
        classes = None
        if pairing in ("within-class", "between-class"):
            found = [_input_classes(p, params.get("y_key"), params) for p in paths]
            classes = None if any(c is None for c in found) else np.concatenate(found)
        grouped = law.GroupLaw(pairing, ids, classes)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        for rep in reports.values():
            rep.checks.append(Check("law", False, f"--groups {key}: could not read the inputs' group ids: {exc}"))
        return
    segments = int(params["copies"]) + int(bool(params["include_original"]))
    for k, rep in reports.items():
        section = records[k]["set"]["input"]
        grouped.reset()
        try:
            _add_set_output(grouped, rep.output, int(section["offset"]), segments, segments - int(params["copies"]))
        except (MixupError, OSError, KeyError, ValueError) as exc:
            rep.checks.append(Check("law", False, f"could not read the provenance of {rep.output}: {exc}"))
            continue
        problems, tested = grouped.result()
        line = "; ".join(problems) if problems else f"--groups {key}: {', '.join(tested)}"
        rep.checks.append(Check("law", not problems, line))


def _add_set_output(grouped, output: Path, offset: int, segments: int, originals: int) -> None:
    """One output of a set, fed to ``grouped`` (its own rows are global rows from ``offset``)."""
    reader = open_reader(output, fast=False)
    try:
        n = reader.spec("partner").rows // segments
        for seg in range(segments):
            for s in range(0, n, _LAW_PIECE_ROWS):
                e, at = min(n, s + _LAW_PIECE_ROWS), seg * n + s
                own = np.arange(s, e) + offset
                grouped.check_groups(own, reader.read("group", at, at + e - s), at)
                if seg >= originals:
                    grouped.add(own, reader.read("partner", at, at + e - s), reader.read("lam", at, at + e - s), at)
    finally:
        reader.close()


def _check_original_groups(reader, grouped, n: int, originals: int, with_own: bool) -> None:
    """The original rows' (``--include-original``) ``group``: their own row's id."""
    for seg in range(originals):
        for s in range(0, n, _LAW_PIECE_ROWS):
            e = min(n, s + _LAW_PIECE_ROWS)
            own = reader.read("own", seg * n + s, seg * n + e) if with_own else np.arange(s, e)
            grouped.check_groups(own, reader.read("group", seg * n + s, seg * n + e), seg * n + s)


def _input_classes(input_path: Path, y_key: str | None, params: dict) -> np.ndarray | None:
    """The class of every input row, read here (argmax of label rows, or
    integer labels); None where y holds neither (names: not tested)."""
    from mixup_cli.prepare import DataOptions

    if not y_key:
        return None
    # A folder of images: the files the run read (--skip-bad-images left some out).
    from mixup_cli.io import axes

    options = DataOptions.from_parameters(params)
    reader = open_reader(input_path, fast=False, images=options.image_options())
    try:
        # As the run read y: MATLAB's orientation, its own samples' axis for a dimension name.
        reader = axes.wrap(reader, (y_key,), options.sample_axis, x_key=params.get("x_key") or "x")
        spec = reader.spec(y_key)
        parts = []
        for s in range(0, spec.rows, _LAW_PIECE_ROWS):
            stopping.check()
            y = np.asarray(reader.read(y_key, s, min(spec.rows, s + _LAW_PIECE_ROWS)))
            if y.ndim == 2 and y.shape[1] > 1:
                parts.append(np.argmax(y, axis=1))
            elif y.dtype.kind in "iub":
                parts.append(y.reshape(len(y)).astype(np.int64))
            else:
                return None
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    except (MixupError, OSError, KeyError, ValueError):
        return None
    finally:
        reader.close()


# A set's outputs (``mixup augment IN1 IN2 ... OUTDIR``): each output is
# checked as above, but recomputed from the WHOLE set (partners come from
# any input), with the set's plan and the output's own tasks (``sets.split``).

_ADVICE = {
    "output files": "the output changed after the run: remove it and its sidecar, then {rewrite}",
    "output data": "the output changed after the run: remove it and its sidecar, then {rewrite}",
    "input files": "its input changed since the run (or moved: --input): restore it, or write the set again",
    "recompute": "it is not what the set's inputs and recorded parameters give: restore the inputs, or write "
    "the set again",
    "law": "its provenance breaks the law of its pairing: {rewrite}",
}


class _OneBar:
    """One progress bar over every output checked: each output's ``start`` is ignored."""

    def __init__(self, inner):
        self.inner = inner

    def start(self, total: int) -> None:
        pass

    def update(self, rows: int) -> None:
        self.inner.update(rows)


@dataclass
class SetVerifyReport:
    outdir: Path
    set_id: str
    outputs: int  # S
    missing: list[dict] = field(default_factory=list)  # name, index, parts that write it
    reports: dict[int, VerifyReport] = field(default_factory=dict)  # each present output's
    problems: list[str] = field(default_factory=list)  # one line each: the output, what failed, what to do

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "outdir": str(self.outdir),
            "set_id": self.set_id,
            "outputs": self.outputs,
            "complete": self.complete,
            "verified": sum(r.ok for r in self.reports.values()),
            "missing": self.missing,
            "problems": self.problems,
            "reports": [dict(r.to_dict(), index=k) for k, r in sorted(self.reports.items())],
        }


def verify_set(
    outdir: Path, input_path: Path | None = None, batch_size: int | None = None, progress=None
) -> SetVerifyReport:
    """Whether the set in OUTDIR is complete (every output present with its
    sidecar) and correct (each output verified, recomputed from the whole set)."""
    from mixup_cli.sets import MANIFEST
    from mixup_cli.sets.status import input_paths, read_set

    outdir = Path(outdir)
    _recover_set(outdir)
    view = read_set(outdir)
    report = SetVerifyReport(outdir, view.set_id, view.outputs)
    if view.present:
        records = _records(view, sorted(view.present))
        params = _set_parameters(view, records)
        if view.has_manifest and view.parameters != params:
            report.problems.append(
                f"{outdir / MANIFEST}: its parameters differ from its outputs' sidecars' ({_changed(params, view.parameters)}); "
                "it was edited: write the set again, or remove it (a part's run writes it again)"
            )
        view.parameters = params  # the seed told in the commands below
        report.reports = _verify_outputs(
            view, records, params, input_paths(view, input_path), input_path, batch_size, progress
        )
    for k in view.missing:
        parts = view.parts_for(k)
        report.missing.append({"index": k, "name": view.name(k), "parts": parts})
        report.problems.append(view.missing_problem(k))
    for k, found in sorted(report.reports.items()):
        rewrite = "write it again: " + view.command(view.parts_for(k))
        report.problems += [
            f"{found.output}: {c.name}: {c.detail}; " + _ADVICE[c.name].format(rewrite=rewrite)
            for c in found.checks
            if not c.ok
        ]
    return report


def _records(view, ks: list[int]) -> dict[int, dict]:
    return {k: provenance.read(provenance.sidecar_path(view.present[k])) for k in ks}


def _set_parameters(view, records: dict[int, dict]) -> dict:
    """The set's parameters: those most of its outputs' sidecars record (one
    edited sidecar fails alone); for one output, the manifest's when there is one."""
    if len(records) == 1 and view.parameters is not None:
        return view.parameters
    counted: dict[str, list] = {}
    for record in records.values():
        params = record.get("parameters") or {}
        counted.setdefault(json.dumps(params, sort_keys=True, default=str), []).append(params)
    most = max(len(found) for found in counted.values())
    tied = [found[0] for found in counted.values() if len(found) == most]
    return view.parameters if view.parameters in tied else tied[0]


def _changed(a: dict, b: dict | None) -> str:
    b = b or {}
    return ", ".join(sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key)))


def _verify_set_output(output: Path, record: dict, input_path, batch_size, progress) -> VerifyReport:
    from mixup_cli.sets import read_section
    from mixup_cli.sets.status import input_paths, read_set

    k = int(read_section(record, str(provenance.sidecar_path(output)))["index"])
    view = read_set(output.parent)
    if k not in view.present or view.present[k].name != output.name:
        raise InputError(
            f"{output}: its sidecar says it is output {k} of a set, but {output.parent} holds "
            f"{view.present.get(k)} as that output; an OUTDIR holds one set"
        )
    records = _records(view, [k])
    return _verify_outputs(
        view, records, _set_parameters(view, records), input_paths(view, input_path), input_path, batch_size, progress
    )[k]


def _recover_set(outdir: Path) -> None:
    """Finish (or roll back) any commit a killed part left half-done, before counting outputs."""
    from mixup_cli.atomic import recover
    from mixup_cli.sets import read_manifest

    names = set((read_manifest(outdir) or {}).get("outputs") or [])
    names |= {p.name[: -len(provenance.SIDECAR_SUFFIX)] for p in outdir.glob("*" + provenance.SIDECAR_SUFFIX)}
    for name in sorted(names):
        recover(outdir / name)


def _verify_outputs(
    view, records: dict[int, dict], params: dict, paths: list[Path], override, batch_size, progress
) -> dict[int, VerifyReport]:
    """Each present output (``records``: their sidecars) checked as ``verify``
    checks one, recomputed with the set's ``params``."""
    ks = sorted(records)
    hint = "; if the inputs moved, pass --input (their folder, or a list of them)" if override is None else ""
    recomputed = _recompute_set(view, ks, records, params, paths, batch_size, progress, hint)
    reports = {}
    for k in ks:
        record, output = records[k], view.present[k]
        rep = reports[k] = VerifyReport(output, provenance.sidecar_path(output), paths[k])
        check, rep.first_difference, found = recomputed[k]
        if (record.get("parameters") or {}) != params:
            check = Check(
                "recompute",
                False,
                f"its sidecar's parameters differ from the set's ({_changed(params, record.get('parameters'))})",
            )
        rep.checks.append(check_files("output files", record.get("output") or {}, output))
        data_check = check_array_digests(record.get("output") or {}, output, found)
        if data_check is not None:
            rep.checks.append(data_check)
        rep.checks.append(check_files("input files", record.get("input") or {}, paths[k], hint))
        rep.checks.append(check)
    _set_group_checks(records, params, paths, reports)
    return reports


def _parameters_problem(params: dict) -> Check | None:
    if params.get("plan_version") not in PLAN_VERSIONS:
        return Check(
            "recompute",
            False,
            f"the sidecar's plan_version is {params.get('plan_version')!r}, this mixup-cli computes versions "
            f"{' and '.join(map(str, PLAN_VERSIONS))}; verify with the mixup-cli version that wrote it",
        )
    missing = [key for key in _REQUIRED if key not in params]
    return Check("recompute", False, f"the sidecar lacks the parameter '{missing[0]}'") if missing else None


def _recompute_set(view, ks, records, params, paths, batch_size, progress, hint) -> dict[int, tuple]:
    """``(check, first_difference, digests)`` for each output of ``ks``: the
    set opened once (fast=False), one plan, each output's own tasks."""
    from mixup_cli.prepare import DataOptions
    from mixup_cli.sets import ConcatReader, inspect_inputs, split

    absent = [p for p in paths if not p.exists()]
    problem = (
        Check("recompute", False, f"skipped: input {absent[0]} of the set not found{hint}")
        if absent
        else _parameters_problem(params)
    )
    if problem is not None:
        return {k: (problem, None, None) for k in ks}
    results, concat = {}, None
    try:
        y_key = params.get("y_key")
        images = DataOptions.from_parameters(params).image_options()
        layout = inspect_inputs(
            paths,
            params["x_key"],
            y_key,
            require_y=y_key is not None,
            opener=lambda p: open_reader(p, fast=False, images=images),
            images=images,
            groups=params.get("groups"),
        )
        problem = _layout_problem(view, layout)
        if problem is not None:
            return {k: (problem, None, None) for k in ks}
        concat = ConcatReader(layout, fast=False, scratch_prefix=_set_scratch(view.outdir, "inflated"))
        source, plan = _open_set_source(params, paths[0], concat, layout)
        tasks = split(plan.tasks(), plan, layout.offsets, range(min(ks), max(ks) + 1))
        _compare_outputs(view, ks, records, source, plan, layout, tasks, results, batch_size, progress)
    except (MixupError, OSError, ValueError, TypeError, KeyError) as exc:
        failed = Check("recompute", False, f"could not recompute the output from the set: {exc}")
        results.update({k: (failed, None, None) for k in ks if k not in results})
    finally:
        if concat is not None:
            concat.close()
    return results


def _set_scratch(outdir: Path, what: str) -> Path:
    """Scratch names of a set's verification: in OUTDIR under the set's own
    prefix (which a part's run allows there), or in the temporary folder."""
    from mixup_cli.sets.identity import SET_PREFIX

    folder = outdir if os.access(outdir, os.W_OK) else Path(tempfile.gettempdir())
    _remove_stale(folder, f"{SET_PREFIX}verify-", f".{what}")
    return folder / f"{SET_PREFIX}verify-{socket.gethostname()}.{os.getpid()}.{what}"


def _layout_problem(view, layout) -> Check | None:
    """The inputs found now against the rows the set recorded."""
    if layout.n_rows == view.rows and all(s.rows == e["rows"] for s, e in zip(layout.shards, view.inputs)):
        return None
    k = next((k for k, (s, e) in enumerate(zip(layout.shards, view.inputs)) if s.rows != e["rows"]), 0)
    return Check(
        "recompute",
        False,
        f"input {layout.shards[k].path} has {layout.shards[k].rows} rows, the set "
        f"recorded {view.inputs[k]['rows']}; the set's inputs changed since the run",
    )


def _open_set_source(params: dict, first: Path, concat, layout):
    """The set's ``Source`` (over ``concat``) and the plan its parameters record."""
    from mixup_cli.planning import plan_from_sidecar
    from mixup_cli.prepare import DataOptions
    from mixup_cli.source import open_source

    source = open_source(
        first,
        params["x_key"],
        params.get("y_key"),
        DataOptions.from_parameters(params),
        fast=False,
        reader=concat,
        layout=layout,
    )
    return source, plan_from_sidecar(params, source)


def _compare_outputs(view, ks, records, source, plan, layout, tasks, results, batch_size, progress) -> None:
    """Each output recomputed through the local engine from one run source
    (class pairings on compressed inputs: one scratch copy of the whole set)."""
    from mixup_cli.io import ArraySpec
    from mixup_cli.planning import output_specs
    from mixup_cli.request import Progress
    from mixup_cli.sets import output_rows

    specs = output_specs(source, plan)
    progress = progress or Progress()
    progress.start(sum(output_rows(plan, layout.shards[k].rows) for k in ks))
    bar = _OneBar(progress)
    with scratch.source_for_run(source, plan, _set_scratch(view.outdir, "scratch.h5"), fast=False) as run_source:
        for k in ks:
            stopping.check()  # between two outputs
            shard = layout.shards[k]
            rows, shift = output_rows(plan, shard.rows), shard.offset % plan.block_rows
            expected = {key: ArraySpec((rows,) + spec.row_shape, spec.dtype) for key, spec in specs.items()}
            scheme = recorded_digests(records[k].get("output") or {})
            block_digests = None
            if scheme and (scheme.get("block_rows"), scheme.get("segment_rows"), scheme.get("block_offset", 0)) == (
                plan.block_rows,
                shard.rows,
                shift,
            ):
                block_digests = digests.BlockDigests.for_plan(
                    plan, expected, segment_rows=shard.rows, block_offset=shift
                )
            try:
                results[k] = compare(
                    run_source, plan, tasks.pop(k), expected, view.present[k], block_digests, bar, batch_size
                )
            except (MixupError, OSError, ValueError, TypeError, KeyError) as exc:
                results[k] = (Check("recompute", False, f"could not recompute the output: {exc}"), None, None)
