"""The sidecar of a run: its entries for the input and the output, the
parameters that rebuild its plan, the whole record; and the check that an
existing OUT is what a command would write (``--resume`` on a finished run)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from mixup_cli.io import ArraySpec
from mixup_cli.mixing.sampling import Plan
from mixup_cli.record import digests, provenance
from mixup_cli.run import resume
from mixup_cli.run.planner import build_plan, output_specs
from mixup_cli.run.source import Source

log = logging.getLogger("mixup_cli")


def run_parameters(plan: Plan, source: Source, *, x_key: str, compression: str) -> dict:
    """The sidecar's ``parameters``: the plan's, the keys, and how rows were prepared."""
    parameters = dict(plan.to_dict(), x_key=x_key, y_key=source.y_key, compression=compression)
    parameters.update(source.prepared.parameters())
    return parameters


def dataset_entry(
    path: Path,
    fmt: str,
    specs: dict[str, ArraySpec],
    hashes: dict[str, str | None],
    sizes: dict[str, int] | None = None,
) -> dict:
    """A dataset as the sidecar records it: where, what arrays, which files with their hashes.

    ``sizes`` gives the files' sizes when they are not yet at ``path``; a
    file whose hash is None is recorded without one."""
    files = []
    for p, digest in hashes.items():
        item = {"path": str(Path(p).resolve()), "size": sizes[p] if sizes else Path(p).stat().st_size}
        if digest is not None:
            item["sha256"] = digest
        files.append(item)
    return {
        "path": str(Path(path).resolve()),
        "format": fmt,
        "arrays": {key: spec.to_dict() for key, spec in specs.items()},
        "files": files,
    }


def output_entry(
    output: Path,
    out_format: str,
    specs: dict[str, ArraySpec],
    files: dict[str, Path],
    hashes: dict[str, str],
    plan: Plan,
    block_digests: digests.BlockDigests,
    shift=None,
) -> dict:
    """The output's entry: ``files`` maps each file's final path to where it
    is now; the arrays' digests come from the blocks as they were written.
    ``shift``: (segment_rows, block_offset) of a set's output (``digests.Bounds``)."""
    entry = dataset_entry(
        output,
        out_format,
        specs,
        {name: hashes.get(str(f)) for name, f in files.items()},
        {name: f.stat().st_size for name, f in files.items()},
    )
    array_digests = block_digests.arrays()
    for key, item in entry["arrays"].items():
        item["sha256"] = array_digests[key]
    entry["array_sha256"] = {"scheme": digests.SCHEME, "block_rows": plan.block_rows, "segment_rows": plan.n_rows}
    if shift is not None:
        entry["array_sha256"].update(segment_rows=shift[0], block_offset=shift[1])
    return entry


class Finished(NamedTuple):
    """A run ``completed_run`` found finished: its sidecar, record, output rows and seed."""

    sidecar: Path
    record: dict
    rows: int
    seed: int


def completed_run(
    source: Source, output: Path, out_format: str, *, input_path: Path, plan_parameters: dict, compression: str
) -> Finished | None:
    """With --resume, an OUT whose sidecar records this very run (the input
    at ``input_path``, ``plan_parameters`` as ``build_plan`` takes them, the
    output's ``compression``): that run (nothing to do), else None."""
    sidecar = provenance.sidecar_path(output)
    try:
        record = provenance.read(sidecar)
        params = record["parameters"]
        seed = plan_parameters["seed"] if plan_parameters["seed"] is not None else params.get("seed")
        if not isinstance(seed, int):
            return None
        plan = build_plan(source, **dict(plan_parameters, seed=seed))
        ours = run_parameters(plan, source, x_key=plan_parameters["x_key"], compression=compression)
        if resume._plain(ours) != resume._plain(params):
            return None
        inp, out = record["input"], record["output"]
        if inp["path"] != str(Path(input_path).resolve()) or out["format"] != out_format:
            return None
        done_at = sidecar.stat().st_mtime_ns
        recorded = {f["path"]: f["size"] for f in inp["files"]}
        for path in source.reader.files():
            st = Path(path).stat()
            if recorded.get(str(Path(path).resolve())) != st.st_size or st.st_mtime_ns > done_at:
                return None  # the input changed since
        arrays = {key: spec.to_dict() for key, spec in output_specs(source, plan).items()}
        if resume._plain(arrays) != resume._plain(
            {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in out["arrays"].items()}
        ):
            return None
        for f in out["files"]:
            if Path(f["path"]).stat().st_size != f["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    log.warning("%s: already complete (its sidecar records this command); nothing to do", output)
    return Finished(sidecar, record, plan.output_rows, int(seed))
