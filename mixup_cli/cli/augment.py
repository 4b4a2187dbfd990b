"""``mixup augment``: the main job."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from mixup_cli.engines import ENGINES
from mixup_cli.record import atomic

from . import signals
from .options import (
    as_int,
    batch_size_option,
    data_options,
    debug_option,
    emit,
    json_option,
    keys_options,
    pairing_options,
    quiet_option,
    run_options,
)
from .progress import BarProgress


def _resume_command() -> str:
    args = [a for a in sys.argv[1:] if a != "--resume"]
    return shlex.join(["mixup", *args, "--resume"])


def _stopped(output: Path, name: str) -> str:
    """What an interrupted run says, from what it left on disk."""
    from mixup_cli.run import resume

    if resume.journal_path(output).exists() and atomic.partials(output, with_lock=False):
        return (
            f"Interrupted by {name}: stopped at a checkpoint, the partial output is kept; "
            f"continue with: {_resume_command()} (or run it again without --resume to discard it)"
        )
    return f"Interrupted by {name}: stopped before writing any output; nothing was kept."


def _stopped_set(outdir: Path, name: str, written: list[Path], sharded: bool) -> str:
    """What an interrupted set's run (or part, with --shard) says: outputs committed, one kept to resume."""
    from mixup_cli.run import resume

    done = f"{len(written)} output(s){' of this part' if sharded else ''} committed; " if written else ""
    kept = [p for p in sorted(Path(outdir).glob(".*" + atomic.PARTIAL_SUFFIX + resume.JOURNAL_SUFFIX))]
    if kept:
        return (
            f"Interrupted by {name}: stopped at a checkpoint; {done}the partial output is kept; "
            f"continue with: {_resume_command()} (or run it again without --resume to start that output over)"
        )
    return f"Interrupted by {name}: stopped; {done}nothing else was kept."


@click.command()
# Strings: the library says why a path fails.
@click.argument("paths", metavar="IN... OUT", nargs=-1, type=click.Path(readable=False))
@click.option(
    "--inputs-from",
    metavar="FILE",
    default=None,
    help="A set's inputs, one path a line ('#' starts a comment line; relative to FILE's folder; '-' reads stdin), after any IN given: sets of any size.",
)
@click.option(
    "--shard",
    metavar="I/N",
    default=None,
    help="Write only part I of N of the set's outputs (outputs floor(I*S/N) to floor((I+1)*S/N)-1 of S), with the whole set's plan; N > 1 needs --seed. 'slurm': I and N from a Slurm job array's task (SLURM_ARRAY_TASK_ID relative to SLURM_ARRAY_TASK_MIN and STEP, N = SLURM_ARRAY_TASK_COUNT); 'k8s/N' (or 'kubernetes/N'): I from a Kubernetes Indexed Job's JOB_COMPLETION_INDEX, N its completions. Recorded as I/N.",
)
@keys_options
@run_options
@pairing_options
@click.option(
    "--copies",
    type=int,
    default=1,
    show_default=True,
    help="Augmented copies of the dataset to write, each with fresh lam and partners.",
)
@click.option(
    "--include-original", is_flag=True, help="Also write the original rows first (lam = 1, partner = itself)."
)
@batch_size_option
@click.option(
    "--compression",
    type=click.Choice(["none", "gzip", "lzf", "zstd"]),
    default="none",
    show_default=True,
    help="Output compression (HDF5: gzip or lzf; .npz: gzip; Zarr and Parquet: gzip or zstd).",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="HDF5/Zarr output: rows per chunk; must divide --block-rows when both are given (alone, it makes the block rows the largest multiple of N not above their default, at least N) [default: chunks of about 64 KiB for compressed HDF5, 1 MiB otherwise]. With --block-rows, or with blocks of a multiple of N, does not change the arrays.",
)
@click.option(
    "--byte-shuffle/--no-byte-shuffle",
    default=None,
    help="HDF5 output: the shuffle filter before compression [default: on for gzip]. Does not change the arrays.",
)
@click.option(
    "--zarr-format",
    type=click.Choice(["2", "3"]),
    default=None,
    callback=as_int,
    help="Zarr output: store format; 2 for readers that know only Zarr v2 (zarr-python 2) [default: 3].",
)
@click.option(
    "--image-format",
    type=click.Choice(["png", "jpeg"]),
    default=None,
    help="WebDataset output (.tar): how each sample's mixed image is stored; JPEG is lossy, so verify compares the images as JPEG encodes them [default: png].",
)
@click.option(
    "--jpeg-quality",
    type=int,
    default=None,
    metavar="Q",
    help="With --image-format jpeg: the JPEG quality, 1 to 95 [default: 90].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUT if it exists, only once the new output is complete (a directory only if a mixup run wrote it).",
)
@data_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a run that was killed, from its last block written, if its options and input match; otherwise say what differs and stop.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Where blocks are computed: this process, or a Dask cluster (extra: pip install 'mixup-cli[dask]'). Does not change the output.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="With --engine dask: address of a running Dask scheduler (tcp://host:8786).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="With --engine dask and no --scheduler: worker processes of a local cluster started for this run [default: CPU count].",
)
@click.option(
    "--hash-files",
    is_flag=True,
    help="Also record each output file's SHA-256 in the sidecar (one more read of the output; the arrays' SHA-256 is always recorded).",
)
@quiet_option
@json_option
@debug_option
def augment(paths, inputs_from, shard, keys, data, quiet, as_json, **params):
    """Write a mixed copy of dataset IN to OUT, plus OUT.provenance.json.

    IN and OUT are .h5/.hdf5, .npz, .zarr, .parquet, or a directory of .npy
    files (x.npy, y.npy); OUT's extension chooses its format, so formats
    convert. OUT may also be a WebDataset shard (OUT.tar) of uint8 images:
    each sample KEY.png (or .jpg) with KEY.json (lam, partner, sources,
    target). Parquet (pip install 'mixup-cli[arrow]'): x is a column of
    fixed-size lists (or of equal-length lists), or several numeric columns
    gathered by --x-key 'f0,f1,f2' or --x-key 'f*'. IN may also be a folder
    of images (IN/<class>/*.jpg, or images alone) or a WebDataset shard
    (IN.tar): see --image-size.

    A set: with two inputs or more (or --inputs-from, or --shard) the inputs are mixed as one dataset, their concatenation in the
    order given (pairs cross inputs), and OUT is a directory receiving one
    output per input under its name, each with its sidecar, and the set's
    manifest mixup-set.json. --shard I/N writes part I of N of them
    (--shard slurm or k8s/N: the part of a job array's task). A
    folder of Parquet files or of WebDataset .tar shards (no .npy files) is
    the set of its .parquet (or .tar) files, sorted by name; a quoted brace
    pattern such as 'shards/train-{000..099}.tar' (or {a,b}) is the set of
    the paths it names, as an argument or a line of --inputs-from. A .tar
    shard's output is a WebDataset shard of the same name (PNG images); OUT
    named like a file (mixed.h5) is refused for a set. Otherwise one input
    makes one output, OUT spelled with a trailing slash or not (data/ mixed/ writes mixed/x.npy,
    ... and mixed.provenance.json).

    \b
    Examples:
      mixup augment in.h5 out.h5 --alpha 0.2 --seed 7
      mixup augment data/ mixed/ --seed 7          # x.npy + y.npy in data/
      mixup augment in.npz out.h5 --copies 3 --compression gzip --json
      mixup augment labels.h5 out.h5 --num-classes 10 --label-smoothing 0.1
      mixup augment masks.h5 out.h5 --y-format pair   # y_a, y_b, lam
      mixup augment in.h5 out.h5 --seed 7 --resume  # after a killed run
      mixup augment in.h5 out.zarr --engine dask --workers 2
      mixup augment in.h5 out.zarr --zarr-format 2   # for zarr-python 2 readers
      mixup augment images.h5 out.h5 --pairing knn --neighbors 5 --project 32
      mixup augment regression.h5 out.h5 --pairing label-kernel --bandwidth 0.5
      mixup augment photos/ out.h5 --image-size 16 --seed 7   # photos/<class>/*.jpg
      mixup augment samples.tar out.h5 --image-size 16   # WebDataset: .jpg + .cls
      mixup augment photos/ out.tar --image-size 16 --seed 7   # png + json samples
      mixup augment shards/*.h5 mixed/ --seed 7     # a set: mixed/part-0000.h5, ...
      mixup augment --inputs-from shards.txt mixed/ --seed 7
      mixup augment shards/*.h5 mixed/ --seed 7 --shard 3/16
      mixup augment shards/*.h5 mixed/ --seed 7 --shard slurm   # sbatch --array=0-15
    """
    import dataclasses

    from mixup_cli.commands.pipeline import AugmentRequest
    from mixup_cli.sets import is_set_form

    if not paths:
        raise click.UsageError("Missing arguments 'IN... OUT'.")
    if len(paths) == 1 and inputs_from is None:
        raise click.UsageError("Missing argument 'OUT' (or --inputs-from FILE for a set's inputs).")
    *inputs, out_text = paths
    inputs, output_path = [Path(p) for p in inputs], Path(out_text)
    # Every other option is named as the request's field it sets.
    request = AugmentRequest(
        input=inputs[0] if inputs else output_path,
        output=output_path,
        **keys.as_dict(),
        **dataclasses.asdict(data),
        **params,
    )
    if is_set_form(len(inputs), inputs_from, shard, inputs[0] if inputs else None):
        return _augment_set(request, inputs, inputs_from, shard, quiet, as_json)
    _augment_one(request, quiet, as_json)


def _augment_one(request, quiet: bool, as_json: bool) -> None:
    from mixup_cli.commands.pipeline import augment as run_augment

    output_path = request.output
    result = _with_bar(
        BarProgress(quiet), lambda bar: run_augment(request, progress=bar), lambda name: _stopped(output_path, name)
    )
    if as_json:
        emit(json.dumps(result.summary(), sort_keys=True))
    elif not quiet and not result.already_complete:  # that case was said already
        click.echo(
            f"wrote {result.rows} rows to {result.output} in {result.seconds:.2f} s "
            f"(seed {result.seed}); provenance in {result.sidecar}",
            err=True,
        )
        if groups := result.group_summary():
            click.echo(
                f"--groups {groups['groups']}: {groups['group_count']} groups; {groups['unpaired_rows']} rows per "
                "copy have no partner in their group and are left unmixed (lam 1)",
                err=True,
            )
            if groups.get("short_rows"):
                click.echo(
                    f"--groups {groups['groups']}: {groups['short_rows']} rows have fewer than --neighbors others "
                    "in their group and draw from all of them",
                    err=True,
                )
    atomic.test_pause("finished")


def _with_bar(bar, run, stopped):
    """``run(bar)``, the bar closed after; an interruption says what it left
    (``stopped(signal name)``)."""
    try:
        result = run(bar)
    except KeyboardInterrupt as exc:
        exc.mixup_message = stopped(signals.describe(exc)[0])
        raise
    finally:
        bar.close()
    return result


def _augment_set(request, inputs, inputs_from, shard, quiet: bool, as_json: bool) -> None:
    from mixup_cli.commands.augment_set import augment_set
    from mixup_cli.sets import collect_inputs, parse_shard

    part = parse_shard(shard)
    paths = collect_inputs(inputs, inputs_from)
    outdir = request.output
    written: list[Path] = []
    result = _with_bar(
        BarProgress(quiet),
        lambda bar: augment_set(request, paths, outdir, part, progress=bar, written=written),
        lambda name: _stopped_set(outdir, name, written, shard is not None),
    )
    if as_json:
        emit(json.dumps(result.summary(), sort_keys=True))
    elif not quiet:
        click.echo(_set_summary(result, outdir, shard is not None), err=True)
    atomic.test_pause("finished")


def _set_summary(result, outdir: Path, sharded: bool) -> str:
    """The line a set's run ends with; its part (I/N) only when --shard was given."""
    before = f", {len(result.skipped)} already complete" if result.skipped else ""
    rows = f"{result.rows} rows in this part" if sharded else f"{result.rows} rows"
    whose = "this part's" if sharded else "its"
    what = (
        f"wrote {len(result.written)} output(s){before} to {outdir}, {rows},"
        if result.written
        else f"{outdir}: {whose} {len(result.skipped)} output(s) already complete; nothing to do,"
    )
    part = f", part {result.part}" if sharded else ""
    return f"{what} in {result.seconds:.2f} s (seed {result.seed}, set {result.set_id[:12]}{part})"
