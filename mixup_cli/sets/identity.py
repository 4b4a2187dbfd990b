"""A set's identity, its section in each output's sidecar, and what OUTDIR may hold.

Each output's own sidecar carries a ``set`` section, and
``set_status(OUTDIR)`` finds the set from the sidecars there. OUTDIR also
holds ``mixup-set.json`` (``MANIFEST``, written by ``sets.run``): the whole
input list and the plan, whatever S. Its content depends only on the set
(no part, time or run id), and every part writes it by an atomic rename, so
parts running at once write the same bytes and cannot corrupt it.

``set_id`` is the SHA-256 of the ordered inputs (name and rows) and of
what decides the output (the plan's fields and the data options), so two
parts of one set agree on it, and a different seed, order or shard gives
another. Every sidecar records its own input (name, rows, offset, path),
the number of inputs and rows, and the SHA-256 of the ordered input list;
the whole list only for sets of at most ``INLINE_INPUTS`` inputs, since
S sidecars each holding S entries would grow as S squared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.core.errors import InputError, OutputError
from mixup_cli.record import atomic, provenance
from mixup_cli.sets.inputs import Part
from mixup_cli.sets.layout import SetLayout, resolved_path

SET_VERSION = 1
INLINE_INPUTS = 256
MANIFEST = "mixup-set.json"
# The manifest's temporary names and a part's scratch copy: OUTDIR may hold them.
SET_PREFIX = ".mixup-set."


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_list(layout: SetLayout) -> list[dict]:
    return [{"name": s.path.name, "rows": s.rows, "offset": s.offset} for s in layout.shards]


def inputs_sha256(layout: SetLayout) -> str:
    return _digest([[s.path.name, s.rows] for s in layout.shards])


def set_id(layout: SetLayout, decides: dict) -> str:
    """``decides``: the plan's fields (``Plan.to_dict()``) and the options that
    change the output's bytes (data options, keys), as the sidecar records them."""
    return _digest({"version": SET_VERSION, "inputs": inputs_sha256(layout), "decides": decides})


def inputs_state(layout: SetLayout, files=None) -> str:
    """SHA-256 of every input file's size and modification time, in order:
    what a part's resume journal records of the inputs, computed once per run
    (S stats), instead of listing all S inputs in each of S journals.
    ``files``: the files of each input (``Reader.files()``), else the inputs."""
    entries = []
    for k, shard in enumerate(layout.shards):
        for path in files[k] if files is not None else [shard.path]:
            st = Path(path).stat()
            entries.append([shard.path.name, str(Path(path).name), st.st_size, st.st_mtime_ns])
    return _digest(entries)


def section(layout: SetLayout, k: int, part: Part, sid: str, output: str | None = None) -> dict:
    """The ``set`` section of output ``k``'s sidecar; ``output``: the output's
    name, recorded when it is not its input's (``layout.output_name``)."""
    shard = layout.shards[k]
    record = {
        "set_id": sid,
        "version": SET_VERSION,
        "index": k,
        "outputs": len(layout.shards),
        "rows": layout.n_rows,
        "input": {
            "name": shard.path.name,
            "rows": shard.rows,
            "offset": shard.offset,
            "path": str(shard.path.resolve()),
        },
        "inputs_sha256": inputs_sha256(layout),
        "part": part.to_dict(),
    }
    if output is not None and output != shard.path.name:
        record["output"] = output
    if len(layout.shards) <= INLINE_INPUTS:
        record["inputs"] = input_list(layout)
    return record


# More outputs (or parts) than this in a sidecar is a damaged or hand-made record, not a set.
MAX_OUTPUTS = 10_000_000


def read_section(record: dict, label: str) -> dict | None:
    """A sidecar's ``set`` section, checked; None for an output of one input."""
    found = record.get("set")
    if found is None:
        return None
    try:
        ok = (
            isinstance(found["set_id"], str)
            and 0 <= int(found["index"]) < int(found["outputs"]) <= MAX_OUTPUTS
            and isinstance(found["input"]["name"], str)
            and 1 <= int(found["part"]["count"]) <= MAX_OUTPUTS
            and (found.get("inputs") is None or len(found["inputs"]) == int(found["outputs"]))
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok or found.get("version") != SET_VERSION:
        raise InputError(
            f"{label}: its 'set' section is damaged or of another version; check it with the "
            "mixup-cli version that wrote it"
        )
    return found


def _sidecar_set(sidecar: Path) -> tuple[bool, dict | None]:
    """(whether a readable sidecar is there, its set section)."""
    try:
        record = provenance.read(sidecar)
    except InputError:
        return False, None
    try:
        return True, read_section(record, str(sidecar))
    except InputError:
        return True, None


def check_outdir_contents(outdir: Path, outputs: Sequence[Path], sid: str, overwrite: bool = False) -> set[int]:
    """Refuse an OUTDIR holding anything but this set's outputs, their
    sidecars and partial files; return the indices of outputs already there
    (with a sidecar of this set). ``overwrite``: outputs of this set's
    names written by another set (or run) may be replaced; other files never."""
    outdir = Path(outdir)
    index = {p.name: k for k, p in enumerate(outputs)}
    sidecars = {provenance.sidecar_path(p).name: k for k, p in enumerate(outputs)}
    partial_prefixes = sorted((atomic.partial_path(p).name for p in outputs), key=len, reverse=True)
    done: set[int] = set()
    try:
        entries = sorted(outdir.iterdir())
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise OutputError(f"{outdir}: cannot list it ({exc.strerror or exc}); fix its permissions") from None
    for entry in entries:
        name = entry.name
        if any(name.startswith(prefix) for prefix in partial_prefixes) or name.startswith(SET_PREFIX):
            continue  # a part's run in progress or interrupted: its journal decides (--resume)
        if name == MANIFEST:
            _check_manifest(entry, sid, overwrite)
            continue
        k = index.get(name, sidecars.get(name))
        if k is None:
            raise OutputError(
                f"{entry}: is not an output of this set; a set's OUTDIR holds only its outputs, their sidecars and "
                "partial files: move it away or choose another OUTDIR"
            )
        readable, found = _sidecar_set(provenance.sidecar_path(outputs[k]))
        if not readable and atomic.partials(outputs[k], with_lock=False):
            continue  # another part is committing it right now (output in place, its sidecar next)
        if found is not None and found["set_id"] == sid and int(found["index"]) == k:
            if (outdir / outputs[k].name).exists():
                done.add(k)
            continue
        if overwrite and readable:  # a previous output of mixup (of another set, or of one input)
            continue
        why = (
            "it has no provenance sidecar"
            if not readable
            else "its sidecar records no set"
            if found is None
            else f"its sidecar records set {found['set_id'][:12]}, this set is {sid[:12]}"
        )
        raise OutputError(
            f"{entry}: is not an output of this set ({why}); move it away, choose another OUTDIR"
            + ("" if not readable else ", or pass --overwrite to replace it")
        )
    return done


def manifest(layout: SetLayout, sid: str, parameters: dict, outputs: Sequence[Path]) -> dict:
    """OUTDIR's ``mixup-set.json``: what every part agrees on, nothing of its own."""
    return {
        "mixup_set": SET_VERSION,
        "set_id": sid,
        "rows": layout.n_rows,
        "inputs": manifest_inputs(layout),
        "outputs": [Path(p).name for p in outputs],
        "parameters": parameters,
    }


def manifest_inputs(layout: SetLayout) -> list[dict]:
    """The manifest's list of inputs: name, rows, offset and resolved path of
    each (each folder of inputs resolved once: S resolves of the same folder
    cost as much as the rest of a part)."""
    folders: dict[Path, Path] = {}
    return [
        dict(entry, path=str(resolved_path(s.path, folders))) for entry, s in zip(input_list(layout), layout.shards)
    ]


def write_manifest(outdir: Path, record: dict) -> Path:
    """Write (or leave, when it already says the same) OUTDIR's manifest by an
    atomic rename from a name of this process's own."""
    import os

    path = Path(outdir) / MANIFEST
    text = json.dumps(record, sort_keys=True, indent=1, default=str) + "\n"
    remove_stale(Path(outdir))
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    for attempt in (1, 2):
        tmp = atomic.stage_text(Path(outdir) / _stage_name(), text)
        atomic.test_pause("manifest-staged")
        try:
            os.replace(tmp, path)
            break
        except FileNotFoundError:  # removed as stale by a part that could not see this process: stage again
            if attempt == 2:
                raise
    return path


# The suffix of a record staged under a name of this process's own (``own_name``).
STAGE_SUFFIX = ".json.tmp"
SCRATCH_SUFFIX = ".scratch.h5"


def _stage_name() -> str:
    return own_name("", STAGE_SUFFIX)


def own_name(tag: str, suffix: str) -> str:
    """A temporary name in OUTDIR of this process's own, with its host and
    pid, so a later part can tell what a killed process left from what a
    live one is using (``remove_stale``)."""
    import os
    import socket

    return f"{SET_PREFIX}{tag}{socket.gethostname()}.{os.getpid()}{suffix}"


def remove_stale(outdir: Path) -> None:
    """Remove the manifests staged and the scratch copies made by processes
    of this host that are gone (killed before removing them); those of
    another host, or of a live process, may be in use and are left."""
    import socket

    host = socket.gethostname()
    try:
        entries = [p for p in Path(outdir).iterdir() if p.name.startswith(SET_PREFIX)]
    except OSError:
        return
    for entry in entries:
        suffix = next((x for x in (STAGE_SUFFIX, SCRATCH_SUFFIX) if entry.name.endswith(x)), None)
        if suffix is None:
            continue
        who, _, pid = entry.name[len(SET_PREFIX) : -len(suffix)].rpartition(".")
        if process_gone(who, pid, host):
            try:
                entry.unlink()
            except OSError:
                pass


def process_gone(who: str, pid: str, host: str | None = None) -> bool:
    """Whether the process ``pid`` named in a scratch name with host ``who``
    (``I-N.HOST`` for a part) ran on this host and is gone."""
    import os
    import socket

    host = host or socket.gethostname()
    if not (who == host or who.endswith("." + host)) or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not _alive(int(pid))


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def read_manifest(outdir: Path) -> dict | None:
    """OUTDIR's manifest, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(outdir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("mixup_set") == SET_VERSION else None


def _check_manifest(path: Path, sid: str, overwrite: bool) -> None:
    record = read_manifest(path.parent)
    if record is not None and record.get("set_id") == sid:
        return
    if record is not None and overwrite:
        return  # another set's: replaced with its outputs
    why = "unreadable" if record is None else f"of set {str(record.get('set_id'))[:12]}, this set is {sid[:12]}"
    raise OutputError(
        f"{path}: is the manifest of another set ({why}); move it away, choose another OUTDIR"
        + ("" if record is None else ", or pass --overwrite to replace that set's outputs")
    )


class OutputsPresent:
    """Of a set's ``outputs`` outputs, those in ``present`` (index -> path):
    which are missing, and whether the set is complete."""

    @property
    def missing(self) -> list[int]:
        return [k for k in range(self.outputs) if k not in self.present]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class SetStatus(OutputsPresent):
    """What the sidecars in OUTDIR say of the set they belong to."""

    set_id: str
    outputs: int  # S
    rows: int
    present: dict[int, Path] = field(default_factory=dict)  # index -> output path (with its sidecar)
    parts: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (I, N) -> outputs it wrote
    inputs: list[dict] | None = None  # the ordered inputs, when known (inline, or every output present)
    sections: dict[int, dict] = field(default_factory=dict)

    def parts_done(self) -> dict[tuple[int, int], bool]:
        """Each part seen: whether every output it is assigned is present."""
        return {(i, n): all(k in self.present for k in Part(i, n).outputs(self.outputs)) for i, n in self.parts}


def set_status(outdir: Path) -> SetStatus | None:
    """The set the sidecars in OUTDIR describe (None: no sidecar of a set).
    Sidecars of two sets, or that disagree on the set, are refused by name."""
    outdir = Path(outdir)
    status: SetStatus | None = None
    first: Path | None = None
    for sidecar in sorted(outdir.glob("*" + provenance.SIDECAR_SUFFIX)):
        found = read_section(provenance.read(sidecar), str(sidecar))
        if found is None:
            continue
        if status is None:
            status = SetStatus(found["set_id"], int(found["outputs"]), int(found["rows"]), inputs=found.get("inputs"))
            first = sidecar
        elif found["set_id"] != status.set_id or int(found["outputs"]) != status.outputs:
            raise InputError(
                f"{sidecar}: belongs to set {found['set_id'][:12]}, but {first} to set "
                f"{status.set_id[:12]}; an OUTDIR holds one set"
            )
        k = int(found["index"])
        output = sidecar.with_name(sidecar.name[: -len(provenance.SIDECAR_SUFFIX)])
        if found.get("output", found["input"]["name"]) != output.name:
            raise InputError(f"{sidecar}: records input {found['input']['name']!r} for output {output.name!r}")
        if k in status.present:
            raise InputError(f"{sidecar}: output {k} of the set is also {status.present[k]}")
        if output.exists():
            status.present[k] = output
            status.sections[k] = found
        part = (int(found["part"]["index"]), int(found["part"]["count"]))
        status.parts.setdefault(part, []).append(k)
    if status is not None and status.inputs is None and status.complete:
        status.inputs = [dict(status.sections[k]["input"]) for k in range(status.outputs)]
        for entry in status.inputs:
            entry.pop("path", None)
    return status
