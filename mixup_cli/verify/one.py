"""``mixup verify OUT`` for one output: its files, arrays' digests and input
against the sidecar, the output recomputed from the input and compared row
by row, and the law of its pairing (``laws``). One output of a set is
recomputed from the whole set (``sets.verify_member``)."""

from __future__ import annotations

from pathlib import Path

from mixup_cli.core.errors import InputError
from mixup_cli.record import provenance
from mixup_cli.run import scratch
from mixup_cli.verify import recomputation
from mixup_cli.verify.laws import check_law
from mixup_cli.verify.report import Check, VerifyReport, matching_digests
from mixup_cli.verify.sets import verify_member


def verify(output: Path, input_path: Path | None = None, batch_size: int | None = None, progress=None) -> VerifyReport:
    """Run every check on OUT; raise only when there is nothing to check."""
    output = Path(output)
    from mixup_cli.record.atomic import recover

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
        return verify_member(output, record, input_path, batch_size, progress)
    source = Path(input_path) if input_path is not None else recorded_input
    report = VerifyReport(output, sidecar, source)

    hint = "; if the input moved, pass its new place with --input" if input_path is None else ""
    recomputed, first, found = Check("recompute", False, f"skipped: input {source} not found{hint}"), None, None
    if source.exists():
        recomputed, first, found = recompute(record, output, source, batch_size, progress)
    report.add_checks(out_entry, in_entry, recomputed, found, hint)
    law = check_law(record.get("parameters") or {}, output, source if source.exists() else None)
    if law is not None:
        report.checks.append(law)
    report.first_difference = first
    return report


def recompute(record: dict, output: Path, input_path: Path, batch_size: int | None = None, progress=None):
    """Recompute OUT from the input and the recorded parameters.

    Returns ``(check, first_difference, digests)``: ``digests`` are the
    SHA-256 of OUT's arrays as read for the comparison, when the sidecar
    records them for the same blocks (else None)."""
    from mixup_cli.commands.request import Progress
    from mixup_cli.run.planner import output_specs, plan_from_sidecar

    params = record.get("parameters") or {}
    problem = recomputation.parameters_problem(params)
    if problem is not None:
        return problem, None, None

    source = None
    try:
        source = recomputation.open_recorded(params, input_path)
        plan = plan_from_sidecar(params, source)
        problem = recomputation.index_problem(params, plan)
        if problem is not None:
            return problem, None, None
        expected = output_specs(source, plan)
        block_digests = matching_digests(record.get("output") or {}, plan, expected)
        progress = progress or Progress()
        progress.start(plan.output_rows)
        # Class pairings on compressed input: from an uncompressed copy, as in a run.
        where = recomputation.scratch_name(output.parent, f".{output.name}.mixup-verify-", ".scratch.h5")
        with scratch.source_for_run(source, plan, where, fast=False) as run_source:
            found = recomputation.compare(
                run_source, plan, plan.tasks(), expected, output, block_digests, progress, batch_size
            )
        note = None if found[0].ok else _decoder_note(params)
        if note:
            found = (Check(found[0].name, False, f"{found[0].detail}; {note}"),) + found[1:]
        return found
    except recomputation.RECOMPUTE_ERRORS as exc:
        return recomputation.not_recomputed(exc)
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
