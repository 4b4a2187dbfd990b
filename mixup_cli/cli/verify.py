"""``mixup verify OUT``: check an output against its provenance sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import batch_size_option, debug_option, emit, json_option, quiet_option
from .progress import BarProgress


@click.command()
@click.argument("output_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the input is now, if it moved since the run [default: the path in the sidecar]. "
    "For a set (OUTDIR or one of its outputs): the folder now holding its inputs under their "
    "names, or a file listing them in order, one a line.",
)
@batch_size_option
@quiet_option(help="Print only the final line (OK or FAILED: ...): no progress bar, warnings or notes.")
@json_option(
    help="Print the report as one JSON object on stdout: ok, output, sidecar, input, checks (name, ok, detail), "
    "first_difference (array, row; or null); for a set, each output's report under reports."
)
@debug_option
def verify(output_path, input_path, batch_size, quiet, as_json):
    """Check OUT against its provenance sidecar, recomputing it.

    Checks OUT's files and arrays against the sizes and SHA-256 hashes in
    OUT.provenance.json, checks the input still has its recorded hashes, and
    recomputes OUT from the input and the recorded parameters.

    Prints OK and exits 0 when everything holds; otherwise names each check
    that failed (with the first differing array and row) and exits 1.

    OUT may be a set's OUTDIR (mixup augment IN1 IN2 ... OUTDIR): then the
    set must be complete (each missing output is named, with the --shard
    part that writes it) and every output verify, each recomputed from the
    whole set. One of a set's outputs is also recomputed from the whole set.

    \b
    Examples:
      mixup verify out.h5
      mixup verify out.h5 --input moved/in.h5 --json
      mixup verify mixed/
      mixup verify mixed/ --input moved/shards/
    """
    from mixup_cli.sets.status import is_set_dir
    from mixup_cli.verify import verify as run_verify
    from mixup_cli.verify import verify_set

    bar = BarProgress(quiet or as_json)
    try:
        if is_set_dir(output_path):
            report = verify_set(output_path, input_path=input_path, batch_size=batch_size, progress=bar)
        else:
            report = run_verify(output_path, input_path=input_path, batch_size=batch_size, progress=bar)
    finally:
        bar.close()
    if hasattr(report, "problems"):
        _echo_set(report, quiet, as_json)
        return
    if as_json:
        emit(json.dumps(report.to_dict(), sort_keys=True))
    else:
        if not quiet:
            for check in report.checks:
                emit(f"{'ok' if check.ok else 'FAIL':<5} {check.name}: {check.detail}")
        failed = [check.name for check in report.checks if not check.ok]
        emit("OK" if report.ok else f"FAILED: {', '.join(failed)}")
    if not report.ok:
        raise click.exceptions.Exit(1)


def _echo_set(report, quiet: bool, as_json: bool) -> None:
    """A set's report: one line per output checked, one per problem, then the verdict."""
    if as_json:
        emit(json.dumps(report.to_dict(), sort_keys=True))
    else:
        if not quiet:
            for _k, found in sorted(report.reports.items()):
                if found.ok:
                    emit(f"ok    {found.output}: {', '.join(c.name for c in found.checks)}")
        for line in report.problems:
            emit(f"FAIL  {line}")
        verified = sum(r.ok for r in report.reports.values())
        if report.ok:
            emit(f"OK: set {report.set_id[:12]}, all {report.outputs} outputs present and verified")
        else:
            emit(
                f"FAILED: set {report.set_id[:12]}, {report.outputs - len(report.missing)} of {report.outputs} "
                f"outputs present, {verified} verified, {len(report.problems)} "
                f"problem{'s' if len(report.problems) != 1 else ''}"
            )
    if not report.ok:
        raise click.exceptions.Exit(1)
