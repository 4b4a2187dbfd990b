"""The report of ``mixup verify`` and the checks of OUT's files against its
sidecar: ``output files`` (each file's size and SHA-256) and ``output data``
(each array's SHA-256, hashed as the recomputation reads OUT, or read back
block by block); ``input files`` likewise for the input. Reads only files
and arrays: none of the planner's code."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.core import beside, stopping
from mixup_cli.core.errors import MixupError
from mixup_cli.io import open_reader
from mixup_cli.record import digests, provenance


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

    def add_checks(self, out_entry: dict, in_entry: dict, recomputed: Check, found=None, hint: str = "") -> None:
        """The checks against the sidecar's ``output`` and ``input`` entries, in
        the report's order: output files, output data (where the sidecar records
        digests; ``found``: as the recomputation hashed OUT), input files, and
        ``recomputed``, the recomputation's check."""
        self.checks.append(check_files("output files", out_entry, self.output))
        data_check = check_array_digests(out_entry, self.output, found)
        if data_check is not None:
            self.checks.append(data_check)
        self.checks.append(check_files("input files", in_entry, self.input, hint))
        self.checks.append(recomputed)


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


def matching_digests(entry: dict, plan, expected: dict, shift: tuple[int, int] | None = None):
    """A ``BlockDigests`` that hashes the recomputed OUT in the blocks the
    sidecar's output ``entry`` records, when they are the plan's (``shift``:
    ``(segment_rows, block_offset)`` of a set's output); else None."""
    scheme = recorded_digests(entry)
    if not scheme:
        return None
    recorded = (scheme.get("block_rows"), scheme.get("segment_rows"))
    if shift is None:
        return digests.BlockDigests.for_plan(plan, expected) if recorded == (plan.block_rows, plan.n_rows) else None
    if recorded + (scheme.get("block_offset", 0),) != (plan.block_rows, *shift):
        return None
    return digests.BlockDigests.for_plan(plan, expected, segment_rows=shift[0], block_offset=shift[1])


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
