"""What ``mixup inspect`` shows: a dataset's arrays and, for an output, the
summary of its provenance sidecar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixup_cli.core.errors import MixupError
from mixup_cli.io import open_reader
from mixup_cli.record import provenance


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def arrays_of(reader) -> dict:
    """Each array's shape, type, chunks and compression; an array that
    cannot be read is listed with the reason instead (the rest still shown)."""
    from mixup_cli.io.hdf5 import type_name  # readable names for every format's dtypes

    arrays = {}
    for key in reader.keys():
        try:
            spec = reader.spec(key)
            storage = reader.describe(key)
        except (MixupError, OSError, TypeError, ValueError, KeyError) as exc:
            reason = str(exc)
            prefix = f"{reader.path}: "
            arrays[key] = {
                "shape": None,
                "dtype": None,
                "chunks": None,
                "compression": None,
                "error": reason[len(prefix) :] if reason.startswith(prefix) else reason,
            }
            continue
        chunks = storage.get("chunks")
        arrays[key] = {
            "shape": list(spec.shape),
            "dtype": storage.get("type") or type_name(spec.dtype),
            "chunks": list(chunks) if chunks else None,
            **({"stored_shape": storage["stored_shape"]} if "stored_shape" in storage else {}),
            "compression": storage.get("compression", "none"),
        }
    return arrays


def provenance_summary(record: dict) -> dict:
    """The parameters and identities a reader of an output wants first."""
    params = record.get("parameters") or {}
    entry = record.get("input") or {}
    return {
        "run_id": record.get("run_id"),
        "seed": params.get("seed"),
        "alpha": params.get("alpha"),
        "pairing": params.get("pairing"),
        "copies": params.get("copies"),
        "include_original": params.get("include_original"),
        "block_rows": params.get("block_rows"),
        "x_key": params.get("x_key"),
        "y_key": params.get("y_key"),
        "plan_version": params.get("plan_version"),
        # What some pairings, --balance, --groups and --exclude-rows add (absent for the others).
        "pairing_options": {
            key: params[key] if key != "exclude_rows" else f"{params[key]['rows']} rows, {params[key]['path']}"
            for key in (
                "neighbors",
                "project",
                "neighbor_index",
                "neighbor_recall",
                "bandwidth",
                "balance",
                "balance_to",
                "groups",
                "group_count",
                "unpaired_rows",
                "short_rows",
                "exclude_rows",
                "rows_per_copy",
            )
            if params.get(key) is not None
        },
        "input": {
            "path": entry.get("path"),
            "format": entry.get("format"),
            "files": [{"path": f.get("path"), "sha256": f.get("sha256")} for f in entry.get("files", [])],
        },
        # Each output array's SHA-256 (mixup_cli.record.digests), when recorded.
        "array_sha256": {
            key: a["sha256"] for key, a in ((record.get("output") or {}).get("arrays") or {}).items() if "sha256" in a
        },
        "tool_version": (record.get("tool") or {}).get("version"),
        "finished_at": record.get("finished_at"),
    }


def describe(path: Path) -> dict:
    """Arrays (shape, dtype, chunks, compression), file attributes, and the
    provenance summary when ``path`` has a sidecar (None otherwise)."""
    path = Path(path)
    from mixup_cli.record.atomic import recover

    recover(path)  # a commit left half-done by a killed run: finished or rolled back, with a warning
    reader = open_reader(path)
    from mixup_cli.io import axes

    reader = axes.as_matlab_shows(reader)  # MATLAB v7.3: shapes as MATLAB shows them
    try:
        info = {"path": str(path), "format": reader.format_name, "arrays": arrays_of(reader), "attributes": {}}
        attributes = getattr(reader, "attributes", None)
        if attributes is not None:
            try:
                info["attributes"] = {k: _jsonable(v) for k, v in attributes().items()}
            except (ValueError, TypeError, OSError):
                info["attributes"] = {}
    finally:
        reader.close()
    sidecar = provenance.sidecar_path(path)
    info["provenance"] = None
    if sidecar.exists():
        summary = provenance_summary(provenance.read(sidecar))
        summary["sidecar"] = str(sidecar)
        file_run_id = info["attributes"].get("run_id")
        summary["run_id_matches_file"] = None if file_run_id is None else file_run_id == summary["run_id"]
        info["provenance"] = summary
    return info


def describe_set(outdir: Path) -> dict:
    """A set's OUTDIR (``mixup augment IN1 IN2 ... OUTDIR``): its inputs (rows
    each, total), the plan's parameters, the outputs present and missing,
    the ``--shard`` parts seen (done or not), and whether it is complete.
    Read from the manifest and sidecars only: no array is opened."""
    from mixup_cli.record.atomic import recover
    from mixup_cli.sets.status import read_set

    outdir = Path(outdir)
    view = read_set(outdir)
    for k in view.missing:  # a commit a killed part left half-done counts once finished
        if view.inputs is not None:
            recover(outdir / view.name(k))
    view = read_set(outdir)
    params = view.parameters or {}
    rows = [e["rows"] for e in view.inputs] if view.inputs is not None else []
    return {
        "path": str(outdir),
        "format": "set",
        "set_id": view.set_id,
        "manifest": view.has_manifest,
        "rows": view.rows,
        "inputs": {
            "count": view.outputs,
            "rows": view.rows,
            "rows_min": min(rows) if rows else None,
            "rows_max": max(rows) if rows else None,
            "list": view.inputs,
        },
        "parameters": {
            key: params.get(key)
            for key in (
                "seed",
                "alpha",
                "pairing",
                "copies",
                "include_original",
                "block_rows",
                "x_key",
                "y_key",
                "method",
                "plan_version",
            )
        },
        "outputs": {
            "count": view.outputs,
            "present": [view.name(k) for k in sorted(view.present)],
            "missing": [view.name(k) for k in view.missing],
            "interrupted": view.interrupted,
        },
        "parts": {str(n): {"count": n, **table} for n, table in view.parts_table().items()},
        "complete": view.complete,
    }
