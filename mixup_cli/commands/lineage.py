"""``mixup lineage OUT``: the input rows each output row was made from.

For every output row, in order: ``row`` (the output row), ``copy`` (-1 for
an original row of ``--include-original``, else 0, 1, ...), ``own`` (the
input row it is: ``i mod N``, or the ``own`` array of ``--balance`` and
``--exclude-rows`` outputs), ``partner``, ``lam`` and, with ``--groups``,
``group``. Read from OUT's own provenance arrays and its sidecar (copies,
``--include-original``), in pieces: memory does not grow with the rows.

A set's output holds global rows of the set (``own``, ``partner``); its
lineage adds ``own_input``/``own_row`` and ``partner_input``/``partner_row``
(the input file's name and its row there), from the set's manifest or the
sidecar's list of inputs. OUTDIR itself gives every present output in order,
with an ``output`` column first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import open_reader
from mixup_cli.record import provenance

FORMATS = ("csv", "jsonl")
PIECE_ROWS = 1 << 16

Columns = dict[str, np.ndarray]


def lineage(output: Path) -> Iterator[Columns]:
    """The lineage of OUT (an output, or a set's OUTDIR), in pieces of rows: column name -> array."""
    from mixup_cli.sets.status import is_set_dir, read_set

    output = Path(output)
    if not output.exists():
        raise InputError(f"{output}: no such file or directory")
    if is_set_dir(output):
        view = read_set(output)
        for k in sorted(view.present):
            path = Path(view.present[k])
            for piece in _output_lineage(path, view.inputs):
                yield {"output": np.full(len(piece["row"]), path.name)} | piece
        return
    yield from _output_lineage(output, None)


def _output_lineage(output: Path, inputs: list[dict] | None) -> Iterator[Columns]:
    record = provenance.read(provenance.sidecar_path(output))
    params = record.get("parameters") or {}
    try:
        originals = int(bool(params["include_original"]))
        segments = int(params["copies"]) + originals
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{output}: its sidecar lacks 'copies' or 'include_original'; not an output of mixup"
        ) from None
    set_section = record.get("set")
    offset = 0
    if set_section is not None:
        offset = int(set_section["input"]["offset"])
        inputs = inputs or set_section.get("inputs") or _manifest_inputs(output)
    reader = open_reader(output, fast=False)
    try:
        keys = set(reader.keys())
        if not {"partner", "lam"} <= keys:
            raise InputError(f"{output}: has no 'partner' and 'lam' arrays; not an output of mixup augment")
        rows = reader.spec("partner").rows
        n = rows // segments
        for s in range(0, rows, PIECE_ROWS):
            stopping.check()
            e = min(rows, s + PIECE_ROWS)
            at = np.arange(s, e, dtype=np.int64)
            own = reader.read("own", s, e) if "own" in keys else at % n + offset
            piece = {
                "row": at,
                "copy": at // n - originals,
                "own": np.asarray(own, np.int64),
                "partner": np.asarray(reader.read("partner", s, e), np.int64),
                "lam": np.asarray(reader.read("lam", s, e), np.float64),
            }
            if "group" in keys:
                piece["group"] = np.asarray(reader.read("group", s, e))
            if set_section is not None:
                piece.update(_by_input(piece["own"], "own", inputs))
                piece.update(_by_input(piece["partner"], "partner", inputs))
            yield piece
    finally:
        reader.close()


def _manifest_inputs(output: Path) -> list[dict]:
    try:
        return json.loads((output.parent / "mixup-set.json").read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        raise InputError(
            f"{output}: an output of a set of more inputs than its sidecar lists, and the set's manifest "
            f"{output.parent / 'mixup-set.json'} is missing; restore it"
        ) from None


def _by_input(rows: np.ndarray, name: str, inputs: list[dict]) -> Columns:
    """Global rows of a set as (input name, row of that input)."""
    offsets = np.array([int(i["offset"]) for i in inputs], np.int64)
    k = np.searchsorted(offsets, rows, side="right") - 1
    names = np.array([i["name"] for i in inputs])
    return {f"{name}_input": names[k], f"{name}_row": rows - offsets[k]}


def render(pieces: Iterator[Columns], fmt: str) -> Iterator[str]:
    """The lineage as text, a piece at a time: CSV with a header line, or one JSON object a line."""
    if fmt not in FORMATS:
        raise ParameterError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}", "--format")
    header = False
    for piece in pieces:
        names = list(piece)
        columns = [_texts(piece[key], fmt) for key in names]
        if fmt == "csv":
            lines = [",".join(names)] if not header else []
            header = True
            lines += [",".join(values) for values in zip(*columns)]
        else:
            lines = [
                "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in zip(names, values)) + "}"
                for values in zip(*columns)
            ]
        yield "\n".join(lines) + "\n"


def _texts(values: np.ndarray, fmt: str) -> list[str]:
    """Each value as it is written: integers, floats that read back exactly;
    strings quoted (JSON), or in CSV quoted only where they hold a comma, quote or line break."""
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values.tolist()]
    if values.dtype.kind == "f":
        return [repr(float(v)) for v in values.tolist()]
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
    if fmt == "jsonl":
        return [json.dumps(t) for t in texts]
    return ['"' + t.replace('"', '""') + '"' if any(c in t for c in ',"\n\r') else t for t in texts]
