"""``mixup augment``: the main job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mixup_cli.engines import ENGINES
from mixup_cli.sampling import PAIRINGS

from .options import debug_option, json_option, quiet_option


class _BarProgress:
    """A tqdm bar on stderr, only when stderr is a terminal and not --quiet."""

    def __init__(self, quiet: bool):
        self._quiet = quiet
        self._bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, unit="rows", unit_scale=True, file=sys.stderr, desc="mixup",
            disable=self._quiet or not sys.stderr.isatty(), dynamic_ncols=True,
        )

    def update(self, rows: int) -> None:
        self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@click.command()
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--alpha", type=float, default=0.2, show_default=True, help="lam ~ Beta(alpha, alpha).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for all randomness; drawn and recorded if omitted.")
@click.option("--x-key", default="x", show_default=True, help="Array holding the inputs (HDF5 path, .npz member or .npy file stem).")
@click.option("--y-key", default="y", show_default=True, help="Array holding the targets.")
@click.option("--pairing", type=click.Choice(PAIRINGS), default="global", show_default=True, help="Where partners come from: the whole dataset, or the row's own block.")
@click.option("--copies", type=int, default=1, show_default=True, help="Augmented copies of the dataset to write.")
@click.option("--include-original", is_flag=True, help="Also write the original rows first (lam = 1, partner = itself).")
@click.option("--batch-size", type=int, default=None, help="Rows mixed and written at once [default: about 4 MiB]. Does not change the output.")
@click.option("--block-rows", type=int, default=None, help="Rows per pairing block, the unit of randomness [default: about 16 MiB].")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf", "zstd"]), default="none", show_default=True, help="Output compression (HDF5: gzip or lzf; .npz: gzip; Zarr: gzip or zstd).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new output is complete).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True, help="Where blocks are computed: this process, or a Dask cluster (extra: pip install 'mixup-cli[dask]'). Does not change the output.")
@click.option("--scheduler", metavar="ADDRESS", default=None, help="With --engine dask: address of a running Dask scheduler (tcp://host:8786).")
@click.option("--workers", type=int, default=None, help="With --engine dask and no --scheduler: worker processes of a local cluster started for this run [default: CPU count].")
@quiet_option
@json_option
@debug_option
def augment(input_path, output_path, alpha, seed, x_key, y_key, pairing, copies, include_original,
            batch_size, block_rows, compression, overwrite, engine, scheduler, workers, quiet, as_json):
    """Write a mixed copy of dataset IN to OUT, plus OUT.provenance.json.

    IN and OUT are .h5/.hdf5, .npz, .zarr, or a directory of .npy files
    (x.npy, y.npy); OUT's extension chooses its format, so formats convert.

    \b
    Examples:
      mixup augment in.h5 out.h5 --alpha 0.2 --seed 7
      mixup augment data/ mixed/ --seed 7          # x.npy + y.npy in data/
      mixup augment in.npz out.h5 --copies 3 --compression gzip --json
      mixup augment in.h5 out.zarr --engine dask --scheduler tcp://host:8786
    """
    from mixup_cli.pipeline import AugmentRequest, augment as run_augment

    request = AugmentRequest(
        input=input_path, output=output_path, alpha=alpha, seed=seed, x_key=x_key, y_key=y_key,
        pairing=pairing, copies=copies, include_original=include_original, batch_size=batch_size,
        block_rows=block_rows, compression=compression, overwrite=overwrite,
        engine=engine, scheduler=scheduler, workers=workers,
    )
    bar = _BarProgress(quiet)
    try:
        result = run_augment(request, progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(result.summary(), sort_keys=True))
    elif not quiet:
        click.echo(
            f"wrote {result.rows} rows to {result.output} in {result.seconds:.2f} s "
            f"(seed {result.seed}); provenance in {result.sidecar}",
            err=True,
        )
