"""``mixup augment``: the main job."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from mixup_cli.labels import Y_KINDS
from mixup_cli.prepare import X_DTYPES, Y_FORMATS
from mixup_cli.cutmix import LAYOUTS
from mixup_cli.engines import ENGINES
from mixup_cli.sampling import METHODS, PAIRINGS

from mixup_cli import atomic

from . import signals
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
        signals.check()
        self._bar.update(rows)
        atomic.test_pause("progress")

    def committing(self) -> None:
        signals.finishing()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _resume_command() -> str:
    args = [a for a in sys.argv[1:] if a != "--resume"]
    return shlex.join(["mixup", *args, "--resume"])


def _stopped(output: Path, name: str) -> str:
    """What an interrupted run says, from what it left on disk."""
    from mixup_cli import resume

    if resume.journal_path(output).exists() and atomic.partials(output, with_lock=False):
        return (f"Interrupted by {name}: stopped at a checkpoint, the partial output is kept; "
                f"continue with: {_resume_command()} (or run it again without --resume to discard it)")
    return f"Interrupted by {name}: stopped before writing any output; nothing was kept."


def _y_key_given() -> bool:
    ctx = click.get_current_context()
    return ctx.get_parameter_source("y_key") != click.core.ParameterSource.DEFAULT


@click.command()
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path, readable=False))  # the library says why
@click.argument("output_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--alpha", type=float, default=0.2, show_default=True, help="lam ~ Beta(alpha, alpha).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for all randomness; drawn and recorded if omitted.")
@click.option("--x-key", default="x", show_default=True, help="Array holding the inputs (HDF5 path, .npz member or .npy file stem).")
@click.option("--y-key", default="y", show_default=True, help="Array holding the targets. If not given and IN has no 'y', x is mixed alone.")
@click.option("--pairing", type=click.Choice(PAIRINGS), default="global", show_default=True, help="Where partners come from: the whole dataset, the row's own block, rows of the same / another class of y, one of the --neighbors nearest rows in x (of the same class), or rows of near float y (C-Mixup, --bandwidth).")
@click.option("--neighbors", type=click.IntRange(min=1), default=None, metavar="K", help="With --pairing knn / knn-within-class: the partner is one of the K nearest rows [default: 5].")
@click.option("--project", type=click.IntRange(min=1), default=None, metavar="D", help="With --pairing knn: search neighbours in x projected to D dimensions (IncrementalPCA, one streaming pass) [default: the rows as they are].")
@click.option("--bandwidth", type=float, default=None, metavar="S", help="With --pairing label-kernel: partner probability proportional to exp(-|y_i - y_j|^2 / (2 S^2)).")
@click.option("--balance", is_flag=True, help="Every class gets as many output rows per copy as the largest class: own rows of smaller classes are drawn more often (an 'own' array records each row's own input row).")
@click.option("--balance-to", type=click.IntRange(min=1), default=None, metavar="M", help="Balance to M rows of every class per copy (implies --balance; larger classes are subsampled).")
@click.option("--copies", type=int, default=1, show_default=True, help="Augmented copies of the dataset to write.")
@click.option("--include-original", is_flag=True, help="Also write the original rows first (lam = 1, partner = itself).")
@click.option("--batch-size", type=int, default=None, help="Rows mixed and written at once [default: about 16 MiB, at most a block]. Does not change the output.")
@click.option("--block-rows", type=int, default=None, help="Rows per pairing block, the unit of randomness [default: about 16 MiB].")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf", "zstd"]), default="none", show_default=True, help="Output compression (HDF5: gzip or lzf; .npz: gzip; Zarr: gzip or zstd).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None, metavar="N", help="HDF5/Zarr output: rows per chunk; must divide the block rows [default: chunks of about 64 KiB for compressed HDF5, 1 MiB otherwise]. Does not change the arrays.")
@click.option("--byte-shuffle/--no-byte-shuffle", default=None, help="HDF5 output: the shuffle filter before compression [default: on for gzip]. Does not change the arrays.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default=None, help="Zarr output: store format; 2 for readers that know only Zarr v2 (zarr-python 2) [default: 3].")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new output is complete).")
@click.option("--no-y", is_flag=True, help="Mix x alone (unlabelled data); y is neither read nor written.")
@click.option("--y-format", type=click.Choice(Y_FORMATS), default="soft", show_default=True, help="soft: mixed targets; pair: y_a, y_b (the two original targets, dtype kept) beside lam.")
@click.option("--y-kind", type=click.Choice(Y_KINDS), default="auto", show_default=True, help="What y holds; auto: integer (N,) labels are classes (one-hot), bool and other integer targets 0/1, floats dense.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, metavar="C", help="Classes of integer labels (labels in [0, C)) [default: max label + 1, found by a pass over y].")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, metavar="EPS", help="Class targets: off = EPS/C, on = 1 - EPS + EPS/C, applied before mixing.")
@click.option("--x-dtype", type=click.Choice(X_DTYPES), default="keep", show_default=True, help="Output dtype of x (keep: integers are rounded and clipped back).")
@click.option("--allow-nonfinite", is_flag=True, help="Mix NaN and Inf as they are instead of stopping at the first row holding one.")
@click.option("--resume", is_flag=True, help="Continue a run that was killed, from its last block written, if its options and input match; otherwise say what differs and stop.")
@click.option("--method", type=click.Choice(METHODS), default="mixup", show_default=True, help="mixup blends whole rows; cutmix pastes a box of the partner image into each image (x must be images).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="Axis order of image x for cutmix [default: inferred when unambiguous].")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True, help="Where blocks are computed: this process, or a Dask cluster (extra: pip install 'mixup-cli[dask]'). Does not change the output.")
@click.option("--scheduler", metavar="ADDRESS", default=None, help="With --engine dask: address of a running Dask scheduler (tcp://host:8786).")
@click.option("--workers", type=int, default=None, help="With --engine dask and no --scheduler: worker processes of a local cluster started for this run [default: CPU count].")
@click.option("--hash-files", is_flag=True, help="Also record each output file's SHA-256 in the sidecar (one more read of the output; the arrays' SHA-256 is always recorded).")
@quiet_option
@json_option
@debug_option
def augment(input_path, output_path, alpha, seed, x_key, y_key, pairing, neighbors, project, bandwidth, balance,
            balance_to, copies, include_original, batch_size, block_rows, compression, chunk_rows, byte_shuffle,
            zarr_format, overwrite, no_y, y_format, y_kind, num_classes,
            label_smoothing, x_dtype, allow_nonfinite, resume, method, layout, engine, scheduler, workers,
            hash_files, quiet, as_json):
    """Write a mixed copy of dataset IN to OUT, plus OUT.provenance.json.

    IN and OUT are .h5/.hdf5, .npz, .zarr, or a directory of .npy files
    (x.npy, y.npy); OUT's extension chooses its format, so formats convert.

    \b
    Examples:
      mixup augment in.h5 out.h5 --alpha 0.2 --seed 7
      mixup augment data/ mixed/ --seed 7          # x.npy + y.npy in data/
      mixup augment in.npz out.h5 --copies 3 --compression gzip --json
      mixup augment labels.h5 out.h5 --num-classes 10 --label-smoothing 0.1
      mixup augment masks.h5 out.h5 --y-format pair   # y_a, y_b, lam
      mixup augment in.h5 out.h5 --seed 7 --resume  # after a killed run
      mixup augment in.h5 out.zarr --engine dask --scheduler tcp://host:8786
      mixup augment in.h5 out.zarr --zarr-format 2   # for zarr-python 2 readers
      mixup augment images.h5 out.h5 --pairing knn --neighbors 5 --project 32
      mixup augment regression.h5 out.h5 --pairing label-kernel --bandwidth 0.5
    """
    from mixup_cli.pipeline import AugmentRequest, augment as run_augment

    request = AugmentRequest(
        input=input_path, output=output_path, alpha=alpha, seed=seed, x_key=x_key, y_key=y_key,
        pairing=pairing, copies=copies, include_original=include_original, batch_size=batch_size,
        block_rows=block_rows, compression=compression, overwrite=overwrite,
        x_dtype=x_dtype, y_format=y_format, y_kind=y_kind, num_classes=num_classes,
        label_smoothing=label_smoothing, allow_nonfinite=allow_nonfinite,
        require_y=_y_key_given(), resume=resume, method=method, layout=layout,
        engine=engine, scheduler=scheduler, workers=workers, hash_files=hash_files,
        chunk_rows=chunk_rows, byte_shuffle=byte_shuffle, zarr_format=int(zarr_format) if zarr_format else None,
        neighbors=neighbors, project=project, balance=balance, balance_to=balance_to, bandwidth=bandwidth,
    )
    if no_y:
        if _y_key_given():
            raise click.UsageError("--no-y and --y-key exclude each other")
        request.y_key = None
    bar = _BarProgress(quiet)
    try:
        result = run_augment(request, progress=bar)
    except KeyboardInterrupt as exc:
        exc.mixup_message = _stopped(output_path, signals.describe(exc)[0])
        raise
    finally:
        bar.close()
    signals.add_late(result.late_signals)
    if as_json:
        click.echo(json.dumps(result.summary(), sort_keys=True))
    elif not quiet and not result.already_complete:  # that case was said already
        click.echo(
            f"wrote {result.rows} rows to {result.output} in {result.seconds:.2f} s "
            f"(seed {result.seed}); provenance in {result.sidecar}",
            err=True,
        )
    atomic.test_pause("finished")
