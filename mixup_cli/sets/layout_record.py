"""The set's checked layout, recorded in OUTDIR for the parts that follow.

``inspect_inputs`` opens every input of the set, so a part that did it for
itself would cost time proportional to S, and an array job of S parts S
squared. The first part that checks the inputs once OUTDIR holds the
manifest of these inputs (a part got that far before) records what it found in
``OUTDIR/.mixup-set.layout.json`` (``RECORD``): what ``inspect_inputs``
returns (each input's path, rows, offset, format and array specs, the
arrays used and shared, class names, the classes found and their key),
each input's identity as ``stat`` gives it (size, ``st_mtime_ns``,
``st_ino``, ``st_dev``), the options that change what the check returns
(keys, ``require_y``, ``--groups``, the y kind it looked for), OUTDIR and
the version of mixup-cli. A later part stats every input (reading the list:
O(S) stats, no input opened) and uses the record when all of it matches
exactly; anything else (another option, list, OUTDIR or version, an input
whose size, mtime or inode changed, a file that is damaged, too large,
planted as a link or holding a field of the wrong type or range) makes it
check every input again, as without a record, and record what it found.

Only inputs that are one regular file whose content shows in its ``stat``
are recorded: HDF5 (itself alone: no external link, virtual dataset or
external raw file), ``.npz`` and Parquet files (``RECORDED_FORMATS``). A
folder (of images, of ``.npy`` files, a Zarr store, a datasets folder) or
a WebDataset shard list can change inside without its own ``stat``
changing (a file replaced in a subfolder), so a set holding one is checked
in full by every part, as before.

OUTDIR may be a shared directory: the record is written by an atomic
rename from a name of this process's own (created with ``O_EXCL |
O_NOFOLLOW``, like the manifest), read without following a link and only
up to a size that fits S inputs, and every field is checked before it is
used; a record that fails is ignored, never an error. Parts running at once
write the same bytes. As a last guard, ``ConcatReader`` checks each input
as it opens it against the layout (rows, row shapes, dtypes).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mixup_cli._version import __version__
from mixup_cli.core import beside
from mixup_cli.core.errors import OutputError
from mixup_cli.io.base import ArraySpec
from mixup_cli.record import atomic
from mixup_cli.sets import identity
from mixup_cli.sets.layout import SetLayout, ShardInfo, check_place, inspect_inputs
from mixup_cli.targets.named import STRING_KINDS

RECORD = identity.SET_PREFIX + "layout.json"
VERSION = 1
# One regular file each, whose every change shows in its size, mtime or inode.
RECORDED_FORMATS = frozenset({"hdf5", "npz", "parquet"})
# What a record may weigh: a fixed part (classes, class names) and some per input.
BASE_BYTES = 8 << 20
INPUT_BYTES = 4 << 10
MAX_DIMS = 32
MAX_INT = (1 << 63) - 1
# dtype kinds of the arrays used (x: numbers; y and group ids: labels too).
X_KINDS, OTHER_KINDS = "fiu", "fiubSUO"
# A dtype as the record writes it (``dtype.str``): byte order, kind, size (none for objects).
_DTYPE = re.compile(r"[<>|=][biufSUO][0-9]{0,6}")


def inspect_recorded(
    paths: Sequence[Path],
    x_key: str = "x",
    y_key: str | None = "y",
    *,
    require_y: bool = True,
    outdir: Path,
    groups: str | None = None,
    images=None,
    y_kind: str | None = None,
) -> SetLayout:
    """``inspect_inputs`` of the set (same arguments and refusals), or the
    layout recorded in ``outdir`` when it is this set's, under these options,
    with every input as it was then (see the module's notes)."""
    paths = [Path(p) for p in paths]
    outdir = Path(outdir)

    def check(on_input=None) -> SetLayout:
        return inspect_inputs(
            paths,
            x_key,
            y_key,
            require_y=require_y,
            outdir=outdir,
            groups=groups,
            images=images,
            y_kind=y_kind,
            on_input=on_input,
        )

    if not paths or (images is not None and not images.is_default()):
        return check()  # no set, or image options: for folders of images, never recorded
    options = {
        "x_key": x_key,
        "y_key": y_key,
        "require_y": bool(require_y),
        "groups": groups,
        "y_kind": y_kind,
        "images": "default",
    }
    before = _stats(paths)
    if before is not None:
        recorded = _recorded(paths, before, outdir, options, images)
        if recorded is not None:
            return recorded
    plain: dict[int, bool] = {}
    layout = check(lambda k, reader, info: plain.__setitem__(k, _plain_file(reader, info)))
    if before is not None and all(plain.get(k) for k in range(len(paths))) and _stats(paths) == before:
        _write(outdir, layout, _record(layout, before, outdir, options))
    return layout


def _stats(paths: list[Path]) -> list[list[int]] | None:
    """[size, st_mtime_ns, st_ino, st_dev] of each input (a link followed: the
    file read), or None when one is not a regular file (or is missing)."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        found.append([st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev])
    return found


def _plain_file(reader, info: ShardInfo) -> bool:
    """Whether the input, open as ``reader``, is one file of a recorded format
    whose arrays' dtypes the record can hold exactly."""
    if info.format not in RECORDED_FORMATS or info.images is not None:
        return False
    try:
        files = [os.path.realpath(p) for p in reader.files()]
    except (OSError, AttributeError, TypeError, ValueError):
        return False
    if files != [os.path.realpath(info.path)]:
        return False  # an HDF5 file reading others (external links, virtual datasets): their changes do not show
    return all(_dtype_text(spec.dtype) is not None for spec in info.specs.values())


def _dtype_text(dtype) -> str | None:
    """The dtype as the record writes it, when that text gives it back exactly."""
    dtype = np.dtype(dtype)
    if dtype.metadata is not None or dtype.names is not None or dtype.subdtype is not None:
        return None  # h5py's strings and enums, records, sub-arrays: not recorded
    text = dtype.str
    return text if np.dtype(text) == dtype else None


def _record(layout: SetLayout, stats: list[list[int]], outdir: Path, options: dict) -> dict:
    return {
        "mixup_set_layout": VERSION,
        "mixup_cli": __version__,
        "outdir": str(outdir.resolve()),
        "options": options,
        "keys": list(layout.keys),
        "shared": list(layout.shared),
        "classes": None if layout.classes is None else [int(c) for c in layout.classes],
        "classes_key": layout.classes_key,
        "class_names": None if layout.shards[0].class_names is None else list(layout.shards[0].class_names),
        "inputs": [
            {
                "path": str(shard.path),
                "size": st[0],
                "mtime_ns": st[1],
                "ino": st[2],
                "dev": st[3],
                "rows": shard.rows,
                "offset": shard.offset,
                "format": shard.format,
                "specs": {
                    key: {"shape": [int(n) for n in spec.shape], "dtype": _dtype_text(spec.dtype)}
                    for key, spec in shard.specs.items()
                },
            }
            for shard, st in zip(layout.shards, stats)
        ],
    }


def _limit(count: int) -> int:
    return BASE_BYTES + count * INPUT_BYTES


def _write(outdir: Path, layout: SetLayout, record: dict) -> None:
    """Record the layout by an atomic rename, only where a part of this list
    of inputs already wrote the set's manifest (a part that made OUTDIR, or
    its manifest, removes them when it fails; an OUTDIR of another set gets
    nothing). A record that cannot be written is only not written."""
    if not (outdir.is_dir() and beside.plain_file(outdir / identity.MANIFEST)):
        return
    manifest = identity.read_manifest(outdir)
    listed = manifest.get("inputs") if manifest is not None else None
    if listed != identity.manifest_inputs(layout):
        return
    text = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    if len(text.encode("utf-8")) > _limit(len(record["inputs"])):
        return
    tmp = outdir / identity.own_name("layout.", identity.STAGE_SUFFIX)
    try:
        atomic.stage_text(tmp, text)
        os.replace(tmp, outdir / RECORD)  # replaces a link planted there, never what it points to
    except (OSError, OutputError):
        atomic.remove(tmp)


def _recorded(paths: list[Path], stats: list[list[int]], outdir: Path, options: dict, images) -> SetLayout | None:
    """The recorded layout when OUTDIR holds one that matches exactly, else None."""
    try:
        data = beside.read_regular(outdir / RECORD, _limit(len(paths)))
    except OSError:
        return None  # none, a link, not a file, too large, unreadable
    try:
        layout = _parse(json.loads(data.decode("utf-8")), paths, stats, outdir, options, images)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return None
    if layout is None:
        return None
    # What inspect_inputs refuses of the list itself (an input given twice, inside
    # OUTDIR): its stats, not the inputs, say it.
    seen: dict = {}
    folders: dict = {}
    out_real = outdir.resolve()
    for k, path in enumerate(paths):
        check_place(path, k, paths, seen, out_real, outdir, folders)
    return layout


def _int(value, low: int = 0) -> bool:
    return type(value) is int and low <= value <= MAX_INT


def _strings(value, most: int) -> bool:
    return isinstance(value, list) and len(value) <= most and all(isinstance(v, str) for v in value)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _parse(record, paths, stats, outdir: Path, options: dict, images) -> SetLayout | None:
    """The layout the record holds, each field checked, or None."""
    if not isinstance(record, dict) or not _int(record.get("mixup_set_layout")):
        return None
    if record["mixup_set_layout"] != VERSION or record.get("mixup_cli") != __version__:
        return None
    if record.get("outdir") != str(outdir.resolve()) or _canonical(record.get("options")) != _canonical(options):
        return None
    keys = _parse_keys(record, options)
    if keys is None:
        return None
    keys, shared, names = keys
    shards = _parse_inputs(record.get("inputs"), paths, stats, keys, options["x_key"], names)
    if shards is None:
        return None
    y_key = options["y_key"]
    if names is not None and (y_key is None or not names):
        return None
    classes = _parse_classes(record, keys, options, shards[-1].offset + shards[-1].rows if shards else 0)
    if classes is False:
        return None
    return SetLayout(tuple(shards), tuple(keys), tuple(shared), images, classes, record.get("classes_key"))


def _parse_keys(record, options: dict):
    """``(keys, shared, class_names)`` as recorded, each checked, or None."""
    x_key, y_key, groups = options["x_key"], options["y_key"], options["groups"]
    keys, shared = record.get("keys"), record.get("shared")
    allowed = {x_key, groups} | ({y_key, f"{y_key}/codes"} if y_key is not None else set())
    if not _strings(keys, 4) or not keys or keys[0] != x_key or len(set(keys)) != len(keys) or set(keys) - allowed:
        return None
    if not _strings(shared, 1) or (shared and (y_key is None or shared != [f"{y_key}/categories"])):
        return None
    if shared and f"{y_key}/codes" not in keys:
        return None
    names = record.get("class_names")
    if names is not None and not _strings(names, 1 << 20):
        return None
    return keys, shared, names


def _parse_inputs(inputs, paths, stats, keys, x_key: str, names) -> list[ShardInfo] | None:
    """Each input as recorded, while its stat is as recorded, or None."""
    if not isinstance(inputs, list) or len(inputs) != len(paths):
        return None
    fields = {"path", "size", "mtime_ns", "ino", "dev", "rows", "offset", "format", "specs"}
    shards: list[ShardInfo] = []
    offset = 0
    for path, st, entry in zip(paths, stats, inputs):
        if not isinstance(entry, dict) or set(entry) != fields or entry["path"] != str(path):
            return None
        if not all(_int(entry[name]) for name in ("size", "mtime_ns", "ino", "dev", "rows", "offset")):
            return None
        if [entry["size"], entry["mtime_ns"], entry["ino"], entry["dev"]] != st:
            return None  # the input changed (or is another file) since it was checked
        rows = entry["rows"]
        if rows < 1 or entry["offset"] != offset or entry["format"] not in RECORDED_FORMATS:
            return None
        specs = _specs(entry["specs"], keys, rows, x_key)
        if specs is None or (shards and not _agree(specs, shards[0].specs)):
            return None
        shards.append(ShardInfo(path, rows, offset, entry["format"], specs, None, tuple(names) if names else None))
        offset += rows
        if offset > MAX_INT:
            return None
    return shards


def _parse_classes(record, keys, options: dict, n_rows: int):
    """The recorded classes (a tuple, or None when none were), or False when malformed."""
    classes, classes_key, y_key = record.get("classes"), record.get("classes_key"), options["y_key"]
    if classes is None:
        return None if classes_key is None else False
    if classes_key != y_key or y_key not in keys or options["y_kind"] is None:
        return False
    if not isinstance(classes, list) or not 1 <= len(classes) <= n_rows or not all(_int(c) for c in classes):
        return False
    if any(a >= b for a, b in zip(classes, classes[1:])):
        return False
    return tuple(classes)


def _specs(found, keys: list[str], rows: int, x_key: str) -> dict[str, ArraySpec] | None:
    """One input's specs of the arrays used, in the order of ``keys``."""
    if not isinstance(found, dict) or set(found) != set(keys):
        return None
    specs = {}
    for key in keys:
        entry = found[key]
        if not isinstance(entry, dict) or set(entry) != {"shape", "dtype"}:
            return None
        shape, text = entry["shape"], entry["dtype"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS or not all(_int(n) for n in shape):
            return None
        if shape[0] != rows or not isinstance(text, str) or not _DTYPE.fullmatch(text):
            return None
        dtype = np.dtype(text)
        if _dtype_text(dtype) != text or dtype.kind not in (X_KINDS if key == x_key else OTHER_KINDS):
            return None
        specs[key] = ArraySpec(tuple(shape), dtype)
    return specs


def _agree(specs: dict[str, ArraySpec], first: dict[str, ArraySpec]) -> bool:
    """Row shapes and dtypes as ``inspect_inputs`` lets inputs of a set differ (string storage only)."""
    for key, spec in specs.items():
        ref = first[key]
        if spec.row_shape != ref.row_shape:
            return False
        if spec.dtype != ref.dtype and not (spec.dtype.kind in STRING_KINDS and ref.dtype.kind in STRING_KINDS):
            return False
    return True
