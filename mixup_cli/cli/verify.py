"""``mixup verify OUT``: check an output against its provenance sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .progress import BarProgress
from .options import batch_size_option, debug_option, json_option, quiet_option


@click.command()
@click.argument("output_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Where the input is now, if it moved since the run [default: the path in the sidecar].")
@batch_size_option
@quiet_option
@json_option
@debug_option
def verify(output_path, input_path, batch_size, quiet, as_json):
    """Check OUT against its provenance sidecar, recomputing it.

    Checks OUT's files and arrays against the sizes and SHA-256 hashes in
    OUT.provenance.json, checks the input still has its recorded hashes, and
    recomputes OUT from the input and the recorded parameters.

    Prints OK and exits 0 when everything holds; otherwise names each check
    that failed (with the first differing array and row) and exits 1.

    \b
    Examples:
      mixup verify out.h5
      mixup verify out.h5 --input /data/moved/in.h5 --json
    """
    from mixup_cli.verify import verify as run_verify

    bar = BarProgress(quiet or as_json)
    try:
        report = run_verify(output_path, input_path=input_path, batch_size=batch_size, progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), sort_keys=True))
    else:
        if not quiet:
            for check in report.checks:
                click.echo(f"{'ok' if check.ok else 'FAIL':<5} {check.name}: {check.detail}")
        failed = [check.name for check in report.checks if not check.ok]
        click.echo("OK" if report.ok else f"FAILED: {', '.join(failed)}")
    if not report.ok:
        raise click.exceptions.Exit(1)
