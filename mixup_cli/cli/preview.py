"""``mixup preview``: a picture of the augmentation before running it."""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_options, debug_option, keys_options, pairing_options, quiet_option, run_options


@click.command()
@click.argument("input_path", metavar="[IN]", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Picture to write: .png (or .svg, .pdf).",
)
@keys_options
@run_options
@pairing_options
@data_options
@click.option("--rows", type=click.IntRange(min=1, max=32), default=4, show_default=True, help="Rows of IN to show.")
@click.option(
    "--identity",
    type=int,
    default=None,
    metavar="N",
    help="Instead of IN: mixup of the N x N identity matrix, one panel per alpha.",
)
@click.option(
    "--alphas",
    default="0.1,0.2,...,0.9",
    show_default=True,
    help="Alphas of the --identity panels: a list, or a range first,second,...,last.",
)
@click.option(
    "--hist",
    is_flag=True,
    help="Add the histogram of lam (20000 draws; for cutmix, corrected to the box) against the Beta(alpha, alpha) density.",
)
@click.option(
    "--dpi",
    type=click.IntRange(min=20, max=600),
    default=100,
    show_default=True,
    help="Resolution of the picture, in dots per inch; a picture is 2 inches per panel.",
)
@click.option("--overwrite", is_flag=True, help="Replace the picture if it exists.")
@quiet_option
@debug_option
def preview(input_path, output_path, keys, data, rows, identity, alphas, hist, dpi, overwrite, quiet, **run):
    """Draw what the augmentation does: a picture to look at before running it.

    With IN, shows --rows rows of the dataset, each as its own input, its
    partner and the result (lam in the title), exactly as `mixup augment`
    with the same options (keys, --method, --alpha, --seed, --block-rows,
    --pairing, the target and dtype options) writes them; a target that is
    an image (a segmentation mask) is drawn below its row. Only those rows
    and what the pairing needs are read. With --identity N, shows mixup of
    the N x N identity matrix for each of --alphas. Needs matplotlib:
    pip install 'mixup-cli[plot]'.

    \b
    Examples:
      mixup preview sample_data/digits.h5 -o grid.png --alpha 0.4 --seed 7
      mixup preview images.h5 -o cutmix.png --method cutmix --alpha 1 --hist
      mixup preview masks.h5 -o masks.png --y-format pair
      mixup preview labels.h5 -o classes.png --pairing within-class
      mixup preview --identity 10 --alphas 0.1,0.2,...,0.9 -o table.png
    """
    from mixup_cli.commands import preview as lib
    from mixup_cli.mixing.sampling import draw_seed

    if (input_path is None) == (identity is None):
        raise click.UsageError("give either IN (a dataset) or --identity N, not both and not neither")
    if identity is not None and run["method"] != "mixup":
        raise click.UsageError("--identity shows mixup of a matrix; --method cutmix needs images (give IN)")
    lib.require_matplotlib()
    lib.check_output(output_path, overwrite)
    seed = run["seed"] = draw_seed() if run["seed"] is None else run["seed"]
    if identity is not None:
        fig = lib.identity_figure(identity, lib.parse_alphas(alphas), seed, hist=hist)
    else:
        shown = lib.preview_rows(input_path, **keys.as_dict(), data=data, rows=rows, **run)
        fig = lib.dataset_figure(shown, hist=hist)
    lib.save_figure(fig, output_path, dpi=dpi, overwrite=overwrite)
    if not quiet:
        width, height = lib.pixel_size(fig, dpi)
        click.echo(f"wrote {output_path} ({width} x {height} px, seed {seed})", err=True)
