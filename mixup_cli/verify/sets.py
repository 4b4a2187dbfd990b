"""``mixup verify OUTDIR`` for a set's outputs (``mixup augment IN1 IN2 ...
OUTDIR``): whether the set is complete, and each output checked as one
output is (``report``), but recomputed from the WHOLE set (partners come
from any input), with the set's plan and the output's own tasks
(``sets.split``); ``verify_member``: one output of a set alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError
from mixup_cli.io import open_reader
from mixup_cli.record import provenance
from mixup_cli.run import scratch
from mixup_cli.verify.laws import set_law_checks
from mixup_cli.verify.recomputation import (
    RECOMPUTE_ERRORS,
    compare,
    index_problem,
    not_recomputed,
    open_recorded,
    parameters_problem,
    scratch_name,
)
from mixup_cli.verify.report import Check, VerifyReport, matching_digests

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


def verify_member(output: Path, record: dict, input_path, batch_size, progress) -> VerifyReport:
    """One output of a set (``record``: its sidecar), recomputed from the whole set."""
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
    from mixup_cli.record.atomic import recover
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
        rep.add_checks(record.get("output") or {}, record.get("input") or {}, check, found, hint)
    set_law_checks(records, params, paths, reports)
    return reports


def _recompute_set(view, ks, records, params, paths, batch_size, progress, hint) -> dict[int, tuple]:
    """``(check, first_difference, digests)`` for each output of ``ks``: the
    set opened once (fast=False), one plan, each output's own tasks."""
    from mixup_cli.run.planner import plan_from_sidecar
    from mixup_cli.run.prepared import DataOptions
    from mixup_cli.sets import ConcatReader, inspect_inputs, plan_offsets, split

    absent = [p for p in paths if not p.exists()]
    problem = (
        Check("recompute", False, f"skipped: input {absent[0]} of the set not found{hint}")
        if absent
        else parameters_problem(params)
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
        source = open_recorded(params, paths[0], reader=concat, layout=layout)
        plan = plan_from_sidecar(params, source)
        problem = index_problem(params, plan)
        if problem is not None:
            return {k: (problem, None, None) for k in ks}
        bounds = plan_offsets(plan, layout.offsets)  # the plan's rows of each input (--exclude-rows: the kept ones)
        tasks = split(plan.tasks(), plan, bounds, range(min(ks), max(ks) + 1))
        _compare_outputs(view, ks, records, source, plan, bounds, tasks, results, batch_size, progress)
    except RECOMPUTE_ERRORS as exc:
        failed = not_recomputed(exc, "the output from the set")
        results.update({k: failed for k in ks if k not in results})
    finally:
        if concat is not None:
            concat.close()
    return results


def _set_scratch(outdir: Path, what: str) -> Path:
    """Scratch names of a set's verification: in OUTDIR under the set's own
    prefix (which a part's run allows there), or in the temporary folder."""
    from mixup_cli.sets.identity import SET_PREFIX

    return scratch_name(outdir, f"{SET_PREFIX}verify-", f".{what}")


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


def _compare_outputs(view, ks, records, source, plan, bounds, tasks, results, batch_size, progress) -> None:
    """Each output recomputed through the local engine from one run source
    (class pairings on compressed inputs: one scratch copy of the whole set)."""
    from mixup_cli.commands.request import Progress
    from mixup_cli.io import ArraySpec
    from mixup_cli.run.planner import output_specs
    from mixup_cli.sets import output_rows

    specs = output_specs(source, plan)
    progress = progress or Progress()
    progress.start(sum(output_rows(plan, bounds[k + 1] - bounds[k]) for k in ks))
    bar = _OneBar(progress)
    with scratch.source_for_run(source, plan, _set_scratch(view.outdir, "scratch.h5"), fast=False) as run_source:
        for k in ks:
            stopping.check()  # between two outputs
            n = bounds[k + 1] - bounds[k]
            rows, shift = output_rows(plan, n), bounds[k] % plan.block_rows
            expected = {key: ArraySpec((rows,) + spec.row_shape, spec.dtype) for key, spec in specs.items()}
            block_digests = matching_digests(records[k].get("output") or {}, plan, expected, (n, shift))
            try:
                results[k] = compare(
                    run_source, plan, tasks.pop(k), expected, view.present[k], block_digests, bar, batch_size
                )
            except RECOMPUTE_ERRORS as exc:
                results[k] = not_recomputed(exc)
