"""``mixup lineage OUT``: the input rows each output row was made from."""

from __future__ import annotations

from pathlib import Path

import click

from .options import debug_option, emit


@click.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("csv", "jsonl")),
    default="csv",
    show_default=True,
    help="csv: a header line, then one line per output row; jsonl: one JSON object per output row.",
)
@debug_option
def lineage(output, fmt):
    """Print, for each output row of OUT, the input rows it was made from.

    Columns: row (output row), copy (-1: an original row of
    --include-original), own (its input row), partner, lam, and group with
    --groups. A set's output adds own_input, own_row, partner_input and
    partner_row (the input file and its row); a set's OUTDIR gives every
    output present, with an output column first. Written to stdout, a piece
    at a time.

    \b
    Examples:
      mixup lineage out.h5 > lineage.csv
      mixup lineage out.h5 --format jsonl | head
    """
    from mixup_cli.commands.lineage import lineage as rows_of
    from mixup_cli.commands.lineage import render

    for text in render(rows_of(output), fmt):
        emit(text.rstrip("\n"))
