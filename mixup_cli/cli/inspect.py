"""``mixup inspect FILE``: arrays and provenance of a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import debug_option, json_option


def _shape(values) -> str:
    return "(" + ", ".join(map(str, values)) + ("," if len(values) == 1 else "") + ")"


def render(info: dict) -> str:
    lines = [f"{info['path']} ({info['format']})"]
    rows = [("array", "shape", "dtype", "chunks", "compression")]
    for key, a in info["arrays"].items():
        rows.append((key, _shape(a["shape"]), a["dtype"], _shape(a["chunks"]) if a["chunks"] else "-", a["compression"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
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
    for f in p["input"]["files"]:
        fields.append(("input sha256", f"{f['sha256']}  {Path(f['path']).name}"))
    for key, digest in p.get("array_sha256", {}).items():
        fields.append(("array sha256", f"{digest}  {key}"))
    fields.append(("written by", f"mixup-cli {p['tool_version']} at {p['finished_at']}"))
    lines.append(f"provenance ({p['sidecar']})")
    width = max(len(name) for name, _ in fields)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in fields]
    if p.get("run_id_matches_file") is False:
        lines.append("  warning: the file's run_id attribute differs from the sidecar's; the sidecar may belong to another run")
    return "\n".join(lines)


@click.command()
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path))
@json_option
@debug_option
def inspect(path, as_json):
    """Show a dataset's arrays and, for an output, its provenance.

    Lists each array of FILE with its shape, dtype, chunking and compression
    and, when FILE has a sidecar (FILE.provenance.json), its summary: run id,
    seed, alpha, pairing, copies, input and the input's SHA-256, and the
    SHA-256 of each array written.

    FILE is .h5/.hdf5, .npz or a directory of .npy files.

    \b
    Examples:
      mixup inspect out.h5
      mixup inspect mixed/ --json
    """
    from mixup_cli.describe import describe

    info = describe(path)
    click.echo(json.dumps(info, sort_keys=True) if as_json else render(info))
