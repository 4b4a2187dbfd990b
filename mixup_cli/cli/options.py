"""Options shared by several commands, each defined once, as decorators.

A command takes the groups it shares (``keys_options``, ``run_options``,
``pairing_options``, ``data_options``, ``batch_size_option``, ``quiet_option``,
``json_option``, ``debug_option``) instead of redefining them, so one help
text and one default serve every command. ``keys_options`` and
``data_options`` hand the command one object each (``keys``: a ``Keys``,
``data``: a ``prepared.DataOptions``) instead of their separate values; the
other groups pass values named as ``pipeline.AugmentRequest``'s fields, so a
command builds its request from them as they come.

Only light modules are imported here: the lists of choices, not the code
that uses them (``mixup --help`` stays fast).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from mixup_cli.io.images import CHANNELS, RESIZES, parse_size
from mixup_cli.mixing.cutmix import LAYOUTS
from mixup_cli.mixing.sampling import METHODS, PAIRINGS, check_positive
from mixup_cli.run.prepared import X_DTYPES, Y_FORMATS, DataOptions
from mixup_cli.targets.encoding import Y_KINDS


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def _gathered(f, names, build, into):
    """``f`` called with the values of ``names`` replaced by ``build(ctx, **values)`` as ``into``."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in names}
        kwargs[into] = build(click.get_current_context(), **values)
        return f(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------- output and errors


def _set_debug(ctx, param, value):
    if value:
        ctx.meta["mixup.debug"] = True
        ctx.find_root().meta["mixup.debug"] = True


def debug_option(f):
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show the full traceback on errors.",
    )(f)


JSON_HELP = "Print one JSON object on stdout when done."


def emit(text: str) -> None:
    """``text`` on stdout. When stdout is gone (a pipe whose reader has
    ended: ``| head``, ``| true``) or full (``/dev/full``), what the command
    did stays done and its exit code stands: one warning line on stderr,
    and stdout goes to the null device (nothing more fails at exit)."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError as exc:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        click.echo(
            f"warning: could not print on stdout ({exc.strerror or exc}); the command's work is done all the same",
            err=True,
        )


def json_option(f=None, *, help=JSON_HELP):
    """``--json`` (as ``as_json``); ``help``: what the object holds, where a command says so."""
    option = click.option("--json", "as_json", is_flag=True, help=help)
    return option if f is None else option(f)


def _set_quiet(ctx, param, value):
    """With -q only errors reach stderr: the library's warnings and notes (its
    logger) and Python's warnings (of the libraries below) are dropped."""
    if value:
        import logging
        import warnings

        logging.getLogger("mixup_cli").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
        ctx.meta["mixup.quiet"] = True  # shared by every context of the command line
    return value


QUIET_HELP = "No progress bar, warnings or notes: only errors reach stderr."


def quiet_option(f=None, *, help=QUIET_HELP):
    """``-q/--quiet``; ``help``: what it prints besides errors, where a command prints more."""
    option = click.option("-q", "--quiet", is_flag=True, callback=_set_quiet, help=help)
    return option if f is None else option(f)


def _positive(ctx, param, value):
    # The library's check and message (exit 2), at the option.
    return None if value is None else check_positive(value, param.opts[0])


def as_int(ctx, param, value):
    """A choice of numbers (``click.Choice(["2", "3"])``) as an int, None kept."""
    return None if value is None else int(value)


def batch_size_option(f):
    return click.option(
        "--batch-size",
        type=int,
        default=None,
        callback=_positive,
        help="Rows computed at once (augment: mixed and written; verify: recomputed and compared) "
        "[default: about 16 MiB, at most a block]. Does not change the output or the result.",
    )(f)


# --------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class Keys:
    """Which arrays hold x and y; ``require_y``: whether a missing y is an error
    (``--y-key`` given) or means x alone."""

    x_key: str
    y_key: str | None
    require_y: bool

    def as_dict(self) -> dict:
        return {"x_key": self.x_key, "y_key": self.y_key, "require_y": self.require_y}


def _keys(ctx, x_key, y_key, no_y):
    y_given = ctx.get_parameter_source("y_key") != click.core.ParameterSource.DEFAULT
    if no_y:
        if y_given:
            raise click.UsageError("--no-y and --y-key exclude each other")
        y_key = None
    return Keys(x_key, y_key, y_given)


def keys_options(f):
    """--x-key, --y-key, --no-y, passed as ``keys`` (a ``Keys``)."""
    f = _gathered(f, ("x_key", "y_key", "no_y"), _keys, "keys")
    return _apply(
        f,
        [
            click.option(
                "--x-key",
                default="x",
                show_default=True,
                help="Array holding the inputs (an HDF5 path such as train/images, an .npz member or a .npy file stem; "
                "Parquet: a column, or numeric columns gathered into (N, k) by a list or pattern: 'f0,f1,f2', 'f*').",
            ),
            click.option(
                "--y-key",
                default="y",
                show_default=True,
                help="Array holding the targets. If not given and IN has no 'y', x is mixed alone.",
            ),
            click.option("--no-y", is_flag=True, help="Mix x alone (unlabelled data); y is neither read nor written."),
        ],
    )


def _data(ctx, **values):
    return DataOptions(**values)


def _image_size(ctx, param, value):
    from mixup_cli.core.errors import ParameterError

    try:
        return parse_size(value)
    except ParameterError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1].replace("--image-size must", "must"), ctx, param) from None


def data_options(f):
    """How x and y are read and mixed, passed as ``data`` (a ``prepared.DataOptions``)."""
    names = (
        "y_format",
        "y_kind",
        "num_classes",
        "label_smoothing",
        "x_dtype",
        "allow_nonfinite",
        "image_size",
        "image_resize",
        "image_channels",
        "skip_bad_images",
        "wds_label",
        "sample_axis",
    )
    f = _gathered(f, names, _data, "data")
    return _apply(
        f,
        [
            click.option(
                "--y-format",
                type=click.Choice(Y_FORMATS),
                default="soft",
                show_default=True,
                help="soft: mixed targets; pair: y_a, y_b (the two original targets, dtype kept) beside lam.",
            ),
            click.option(
                "--y-kind",
                type=click.Choice(Y_KINDS),
                default="auto",
                show_default=True,
                help="What y holds; auto: integer (N,) labels are classes (one-hot), bool and other integer "
                "targets 0/1, floats dense.",
            ),
            click.option(
                "--num-classes",
                type=click.IntRange(min=1),
                default=None,
                metavar="C",
                help="Classes of integer labels (labels in [0, C)) [default: max label + 1, found by one pass over y].",
            ),
            click.option(
                "--label-smoothing",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.0,
                show_default=True,
                metavar="EPS",
                help="Class targets: off = EPS/C, on = 1 - EPS + EPS/C, applied before mixing.",
            ),
            click.option(
                "--x-dtype",
                type=click.Choice(X_DTYPES),
                default="keep",
                show_default=True,
                help="Output dtype of x (keep: integers are rounded and clipped back).",
            ),
            click.option(
                "--allow-nonfinite",
                is_flag=True,
                help="Mix NaN and Inf as they are instead of stopping at the first row holding one.",
            ),
            click.option(
                "--image-size",
                metavar="SIZE|WxH",
                default=None,
                callback=_image_size,
                help="A folder of images (IN/<class>/*.jpg, or IN/*.jpg with --no-y; JPEG, PNG, WebP, BMP) "
                "or WebDataset shards (extra: pip install 'mixup-cli[images]'): resize every image to SIZE x SIZE or WIDTH x HEIGHT "
                "pixels (x is uint8 N x HEIGHT x WIDTH x C) [default: the images' own size, which they must share].",
            ),
            click.option(
                "--image-resize",
                type=click.Choice(RESIZES),
                default=None,
                help="With --image-size: crop takes the largest centred region of the target's aspect ratio, "
                "squash the whole image (aspect not kept); both bilinear [default: crop].",
            ),
            click.option(
                "--image-channels",
                type=click.Choice(CHANNELS),
                default=None,
                help="Images: rgb (C=3; alpha dropped, not composited; grayscale repeated) or "
                "gray (C=1; ITU-R 601-2 luma) [default: rgb].",
            ),
            click.option(
                "--skip-bad-images",
                is_flag=True,
                help="A folder of images or shards: leave out files that do not decode (one more decoding pass), "
                "listed in the sidecar, instead of stopping at the first.",
            ),
            click.option(
                "--wds-label",
                metavar="cls|json:FIELD",
                default=None,
                help="WebDataset shards (IN.tar, a folder of .tar or a pattern such as 'train-{000..099}.tar'; samples grouped by key, image "
                "jpg/jpeg/png/webp/bmp): the class of a sample is the integer in its .cls member, or FIELD of "
                "its .json member [default: cls; without any, x alone].",
            ),
            click.option(
                "--sample-axis",
                metavar="A",
                default=None,
                help="HDF5 input whose samples are not on x's first axis: the axis of x holding them (a number; "
                "in a MATLAB v7.3 .mat file, of MATLAB's axes) or, in a netCDF-4 file, a dimension name (y's "
                "samples then lie on its dimension of that name too); rows are read along it and moved first "
                "[default: the first axis; MATLAB's first axis in a .mat file].",
            ),
        ],
    )


# ------------------------------------------------------------------------ run


def run_options(f):
    """--alpha, --seed, --method, --layout, --block-rows: the draws of a run."""
    return _apply(
        f,
        [
            click.option(
                "--alpha",
                type=float,
                default=0.2,
                show_default=True,
                help="lam ~ Beta(alpha, alpha); alpha from 1e-300 to 1e300.",
            ),
            click.option(
                "--seed",
                type=click.IntRange(min=0),
                default=None,
                help="Seed for all randomness (augment records it in the sidecar, preview shows it) [default: drawn].",
            ),
            click.option(
                "--method",
                type=click.Choice(METHODS),
                default="mixup",
                show_default=True,
                help="mixup blends whole rows; cutmix pastes a box of the partner image into each image "
                "(x must be images).",
            ),
            click.option(
                "--layout",
                type=click.Choice(LAYOUTS),
                default=None,
                help="Axis order of image x, for cutmix and for drawing images [default: inferred when unambiguous].",
            ),
            click.option(
                "--block-rows",
                type=int,
                default=None,
                help="Rows per pairing block, the unit of randomness (recorded) [default: about 16 MiB].",
            ),
        ],
    )


def pairing_options(f):
    """--pairing and its parameters, --balance, --balance-to, --groups and --exclude-rows: which rows are
    mixed with which."""
    return _apply(
        f,
        [
            click.option(
                "--pairing",
                type=click.Choice(PAIRINGS),
                default="global",
                show_default=True,
                help="Where partners come from. global: the whole dataset; batch: the row's own block; "
                "within-class / between-class: rows of the same / another class of y; knn / knn-within-class: "
                "the row's --neighbors nearest rows in x (of the same class); label-kernel: rows of near "
                "float y (C-Mixup, --bandwidth).",
            ),
            click.option(
                "--neighbors",
                type=click.IntRange(min=1),
                default=None,
                metavar="K",
                help="With --pairing knn / knn-within-class: the partner is drawn uniformly from the row's K nearest "
                "other rows [default: 5].",
            ),
            click.option(
                "--project",
                type=click.IntRange(min=1),
                default=None,
                metavar="D",
                help="With --pairing knn / knn-within-class: search neighbours in x projected to D dimensions "
                "(PCA fitted on a seeded sample of the rows, randomized, float32), for wide rows such as images [default: the rows as they are].",
            ),
            click.option(
                "--neighbor-index",
                type=click.Choice(("exact", "approximate")),
                default=None,
                help="With --pairing knn / knn-within-class: exact finds every row's true K nearest rows (N^2 D "
                "work); approximate searches an inverted-file index (faiss-cpu: pip install 'mixup-cli[ann]'), "
                "the same lists on every run, its recall@K on a seeded sample of 1,000 rows recorded in the "
                "sidecar [default: exact].",
            ),
            click.option(
                "--bandwidth",
                type=float,
                default=None,
                metavar="S",
                help="With --pairing label-kernel, which needs it: partner probability proportional to "
                "exp(-|y_i - y_j|^2 / (2 S^2)), S > 0 in units of y.",
            ),
            click.option(
                "--balance",
                is_flag=True,
                help="Every class gets as many output rows per copy as the largest class: own rows of smaller "
                "classes are drawn more often (an 'own' array records each row's own input row).",
            ),
            click.option(
                "--balance-to",
                type=click.IntRange(min=1),
                default=None,
                metavar="M",
                help="Balance to M rows of every class per copy (implies --balance; larger classes are subsampled).",
            ),
            click.option(
                "--groups",
                default=None,
                metavar="KEY",
                help="Keep every pair inside one group: KEY names the input's array (or column) of group ids "
                "(integers or strings: patient, session, fold), one per row. Every --pairing keeps its law inside "
                "the group (with --balance, partners come from the balanced rows of the group); a row with no partner "
                "in its group is left unmixed (lam 1). The output gets a 'group' array.",
            ),
            click.option(
                "--exclude-rows",
                type=click.Path(path_type=Path),
                default=None,
                metavar="FILE",
                help="Input rows never used, neither as a row nor as a partner (held-out rows, a test fold): a .npy "
                "array of row indices, or a text file of one index a line (for a set of inputs, rows of the set: "
                "the inputs' rows in the order given). Every pairing runs on the kept rows. The output gets an "
                "'own' array (the input row of each output row); the sidecar records FILE's SHA-256.",
            ),
        ],
    )
