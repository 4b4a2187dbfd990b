"""``mixup inspect FILE``: arrays and provenance of a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import debug_option, emit, json_option


def _shape(values) -> str:
    return "(" + ", ".join(map(str, values)) + ("," if len(values) == 1 else "") + ")"


_STORE_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata")


def _array_of(rel: Path) -> str:
    """The array (or store) a file of a directory input belongs to: a Zarr
    chunk (``x/c/0/0``, v2 ``x/0.0``) or metadata file to its array's folder,
    a file at the top (``x.npy``) to itself, store metadata to the store."""
    parts = rel.parts
    for k in range(len(parts) - 1):
        if parts[k] == "c" and all(q.isdigit() for q in parts[k + 1 :]):
            return "/".join(parts[:k])
    if len(parts) > 1:
        return "/".join(parts[:-1])
    return "(store metadata)" if parts[0] in _STORE_METADATA else parts[0]


def _input_files(entry: dict) -> list[tuple[str, str]]:
    """One line per input file, or for a directory input one per array: a
    Zarr store has a file per chunk, listed by --json with their SHA-256."""
    root = Path(entry.get("path") or "")
    singles, groups = [], {}
    for f in entry.get("files", []):
        path = Path(f["path"])
        try:
            rel = path.relative_to(root)
        except ValueError:
            rel = Path(".")
        if rel == Path("."):
            singles.append(("input sha256", f"{f.get('sha256')}  {path.name}"))
        else:
            groups.setdefault(_array_of(rel), []).append((rel, f.get("sha256")))
    for name, files in sorted(groups.items()):
        if len(files) == 1:
            singles.append(("input sha256", f"{files[0][1]}  {files[0][0]}"))
        else:
            singles.append(("input files", f"{name}: {len(files)} files (the SHA-256 of each: --json)"))
    return singles


def render(info: dict) -> str:
    lines = [f"{info['path']} ({info['format']})"]
    rows = [("array", "shape", "dtype", "chunks", "compression")]
    unreadable = {}
    for key, a in info["arrays"].items():
        if a.get("error"):
            unreadable[key] = a["error"]
            continue
        rows.append(
            (key, _shape(a["shape"]), a["dtype"], _shape(a["chunks"]) if a["chunks"] else "-", a["compression"])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"  {key}  unreadable: {reason}" for key, reason in unreadable.items()]
    p = info.get("provenance")
    if p is None:
        lines.append("no provenance sidecar")
        return "\n".join(lines)
    fields = [
        ("run id", p["run_id"]),
        ("seed", p["seed"]),
        ("alpha", p["alpha"]),
        ("pairing", p["pairing"]),
        *[(key.replace("_", " "), value) for key, value in (p.get("pairing_options") or {}).items()],
        ("copies", p["copies"]),
        ("include original", "yes" if p["include_original"] else "no"),
        ("block rows", p["block_rows"]),
        ("x key / y key", f"{p['x_key']} / {p['y_key']}"),
        ("input", f"{p['input']['path']} ({p['input']['format']})"),
    ]
    fields += _input_files(p["input"])
    for key, digest in p.get("array_sha256", {}).items():
        fields.append(("array sha256", f"{digest}  {key}"))
    fields.append(("written by", f"mixup-cli {p['tool_version']} at {p['finished_at']}"))
    lines.append(f"provenance ({p['sidecar']})")
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in fields]
    if p.get("run_id_matches_file") is False:
        lines.append(
            "  warning: the file's run_id attribute differs from the sidecar's; the sidecar may belong to another run"
        )
    return "\n".join(lines)


INPUTS_LISTED = 10  # a set's inputs shown one a line up to this many; more: a summary (all: --json)


def render_set(info: dict) -> str:
    inputs, outputs, p = info["inputs"], info["outputs"], info["parameters"]
    lines = [f"{info['path']} (set {info['set_id'][:12]}, {inputs['count']} inputs, {info['rows']} rows)"]
    listed = inputs["list"] or []
    if listed and len(listed) <= INPUTS_LISTED:
        width = max(len(e["name"]) for e in listed)
        lines += [f"  {e['name'].ljust(width)}  {e['rows']:>10} rows  from row {e['offset']}" for e in listed]
    elif listed:
        lines.append(
            f"  inputs {listed[0]['name']} ... {listed[-1]['name']}: {inputs['rows_min']} to "
            f"{inputs['rows_max']} rows each, {inputs['rows']} in all (each: --json)"
        )
    fields = [
        ("seed", p["seed"]),
        ("alpha", p["alpha"]),
        ("pairing", p["pairing"]),
        ("copies", p["copies"]),
        ("include original", "yes" if p["include_original"] else "no"),
        ("block rows", p["block_rows"]),
        ("x key / y key", f"{p['x_key']} / {p['y_key']}"),
        ("outputs", f"{len(outputs['present'])} of {outputs['count']} present"),
    ]
    if outputs["missing"]:
        shown = outputs["missing"][:INPUTS_LISTED]
        more = len(outputs["missing"]) - len(shown)
        fields.append(("missing", ", ".join(shown) + (f" and {more} more" if more else "")))
    if outputs["interrupted"]:
        fields.append(("interrupted", ", ".join(outputs["interrupted"]) + " (continue with --resume)"))
    for part in info["parts"].values():
        if part["count"] == 1:  # written without --shard (or as its one part): nothing beyond "complete"
            continue
        done = part["done"]
        fields.append(
            (
                f"parts of {part['count']}",
                f"{len(done)} done ({_indices(done)})"
                + (f", not done: {_indices(part['not_done'])}" if part["not_done"] else ""),
            )
        )
    fields.append(("complete", "yes" if info["complete"] else "no"))
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in fields]
    return "\n".join(lines)


def _indices(values: list[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"


@click.command()
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@json_option(
    help="Print one JSON object on stdout: path, format, arrays (shape, dtype, chunks, compression each), "
    "attributes, provenance (null without a sidecar); for a set, its inputs, parameters and outputs."
)
@debug_option
def inspect(path, as_json):
    """Show a dataset's arrays and, for an output, its provenance.

    Lists each array of FILE with its shape, dtype, chunking and compression
    and, when FILE has a sidecar (FILE.provenance.json), its summary: run id,
    seed, alpha, pairing, copies, input and the input's SHA-256, and the
    SHA-256 of each array written.

    FILE is .h5/.hdf5, .npz or a directory of .npy files, or a set's OUTDIR
    (mixup augment IN1 IN2 ... OUTDIR): then its inputs and rows, the
    parameters, the outputs present and missing, the --shard parts done,
    and whether the set is complete.

    \b
    Examples:
      mixup inspect out.h5
      mixup inspect mixed/ --json
    """
    from mixup_cli.commands.describe import describe, describe_set
    from mixup_cli.sets.status import is_set_dir

    if is_set_dir(path):
        info = describe_set(path)
        emit(json.dumps(info, sort_keys=True) if as_json else render_set(info))
        return
    info = describe(path)
    emit(json.dumps(info, sort_keys=True) if as_json else render(info))
