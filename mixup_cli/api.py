"""The functions ``mixup_cli`` exports (see the package's docstring): keyword
front ends over the library, the same code the command runs.

Heavy modules (h5py, the engines, scikit-learn) are imported inside the
functions, so ``import mixup_cli`` and even ``from mixup_cli import augment``
stay light until a function is called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixup_cli.core import stopping
from mixup_cli.core.errors import ParameterError
from mixup_cli.core.stopping import StopToken

__all__ = ["AugmentSummary", "StopToken", "augment", "lineage", "mix", "verify"]


@dataclass(frozen=True)
class AugmentSummary:
    """What ``augment()`` did.

    ``output``: OUT, or a set's OUTDIR; ``written``: the outputs written by
    this call (OUT, or the set's outputs of this part, in the set's order);
    ``skipped``: outputs found complete already (``resume=True``); ``rows``:
    the rows of those outputs; ``seed``: the seed used (drawn and recorded
    when none was given); ``set_id``: the set's id (None for one output);
    ``sidecars``: the provenance sidecar of each output, written then skipped.
    """

    output: Path
    written: tuple[Path, ...]
    skipped: tuple[Path, ...]
    rows: int
    seed: int
    seconds: float
    set_id: str | None = None

    @property
    def sidecars(self) -> tuple[Path, ...]:
        """The provenance sidecar of each output, written ones first, then skipped ones."""
        return tuple(Path(str(p) + ".provenance.json") for p in self.written + self.skipped)

    def summary(self) -> dict:
        """The summary as plain JSON values."""
        return {
            "output": str(self.output),
            "written": [str(p) for p in self.written],
            "skipped": [str(p) for p in self.skipped],
            "rows": self.rows,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "set_id": self.set_id,
        }


def augment(
    input,
    output,
    *,
    alpha: float = 0.2,
    seed: int | None = None,
    x_key: str = "x",
    y_key: str | None = "y",
    pairing: str = "global",
    copies: int = 1,
    include_original: bool = False,
    batch_size: int | None = None,
    block_rows: int | None = None,
    compression: str = "none",
    chunk_rows: int | None = None,
    byte_shuffle: bool | None = None,
    zarr_format: int | None = None,
    image_format: str | None = None,
    jpeg_quality: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    engine: str = "local",
    scheduler: str | None = None,
    workers: int | None = None,
    x_dtype: str = "keep",
    y_format: str = "soft",
    y_kind: str = "auto",
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    allow_nonfinite: bool = False,
    image_size: int | str | tuple[int, int] | None = None,
    image_resize: str | None = None,
    image_channels: str | None = None,
    skip_bad_images: bool = False,
    wds_label: str | None = None,
    sample_axis: int | str | None = None,
    method: str = "mixup",
    layout: str | None = None,
    neighbors: int | None = None,
    project: int | None = None,
    neighbor_index: str | None = None,
    bandwidth: float | None = None,
    balance: bool = False,
    balance_to: int | None = None,
    groups: str | None = None,
    exclude_rows: str | os.PathLike | None = None,
    hash_files: bool = False,
    shard: str | None = None,
    progress=None,
    stop: StopToken | None = None,
) -> AugmentSummary:
    """Write a mixed copy of ``input`` to ``output`` and its provenance
    sidecar, as ``mixup augment INPUT OUTPUT`` does; returns an ``AugmentSummary``.

    ``input``: a path (.h5/.hdf5, .npz, .zarr, a directory of .npy files,
    a folder of images or WebDataset shards (.tar): ``image_size`` 224,
    "224x160" or (224, 160)),
    or a list of paths: a set, mixed as their concatenation and written into
    the directory ``output``, one output per input under its name, with the
    manifest ``mixup-set.json`` (as ``mixup augment IN1 IN2 ... OUTDIR``).
    ``shard="I/N"`` writes part I of N of a set's outputs (``--shard``);
    ``"slurm"`` and ``"k8s/N"`` take the part from the job array's variables.

    Every other keyword is the command's option of the same name without its
    dashes (``--block-rows`` is ``block_rows``), with the same default and
    meaning (docs/reference/augment.md). ``seed=None`` draws a
    seed and records it. ``y_key=None`` mixes x alone (``--no-y``); the
    default ``"y"`` missing from the input also means x alone, any other key
    must be there.

    ``progress``: an object with ``start(total_rows)`` and ``update(rows)``
    methods, told as rows are written.
    ``stop``: a ``StopToken``; ``stop.request()`` (from another thread, or
    from a signal handler of your own: ``signal.signal(signal.SIGTERM,
    lambda signum, frame: stop.request(signum))``) stops the run at its next
    safe point, within about 0.1 s, with ``KeyboardInterrupt`` (for
    ``request(signal.SIGTERM)`` or SIGHUP: its subclass, with ``signum``),
    keeping what ``resume=True`` continues from; once the output is being
    put in place the request comes too late (listed in ``stop.late``) and
    the call returns normally. A token once asked to stop stops every call
    it is passed to. Without a token the library installs nothing: Ctrl-C
    raises ``KeyboardInterrupt`` wherever Python's own handler lands, and
    the same cleanup runs.

    Raises the library's exceptions: ``ParameterError`` for an option value
    that cannot work, ``InputError`` and ``OutputError`` for the input and
    the output (all ``MixupError``), each with a one-line message naming the
    file, array or option. A refusal leaves nothing on disk; an interruption
    (``KeyboardInterrupt``) keeps what ``resume=True`` continues from.
    """
    options = {k: _plain(v) for k, v in locals().items() if k not in ("input", "output", "shard", "progress", "stop")}
    if stop is not None:
        stop.begin()
    with stopping.using(stop):
        return _augment(input, output, shard, progress, options, _plain(y_key))


def _plain(value):
    """numpy scalars (``np.int64(2)``, also inside a tuple) as the Python
    values they equal: the sidecar is JSON, which has no numpy types."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _call_text(input, output, options: dict, shard) -> str:
    """The library call as written, its keywords other than their defaults:
    what a sidecar records as the command line of a run the command did not make."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(augment).parameters.items()}
    given = dict(options, shard=shard)
    keywords = [f"{k}={v!r}" for k, v in given.items() if k in defaults and v != defaults[k]]
    where = [repr(str(input)) if isinstance(input, (str, os.PathLike)) else repr([str(p) for p in input])]
    return f"mixup_cli.augment({', '.join(where + [repr(str(output))] + keywords)})"


def _augment(input, output, shard, progress, options: dict, y_key) -> AugmentSummary:
    from mixup_cli.commands.request import AugmentRequest
    from mixup_cli.sets import is_set_form

    many = not isinstance(input, (str, os.PathLike))
    inputs = [Path(p) for p in input] if many else [Path(input)]
    if not inputs:
        raise ParameterError("augment() needs an input: a path, or a list of a set's paths", "input")
    # The command's rule: a missing y is an error only when its key was named.
    require_y = y_key not in (None, "y")
    request = AugmentRequest(
        input=inputs[0],
        output=Path(output),
        require_y=require_y,
        command_line=[_call_text(input, output, options, shard)],
        **options,
    )
    # A list of paths is a set whatever its length, as --inputs-from is.
    if many or is_set_form(len(inputs), None, shard, inputs[0]):
        return _augment_set(request, inputs, shard, progress)
    from mixup_cli.commands.pipeline import augment as run

    result = run(request, progress=progress)
    done = (result.output,)
    return AugmentSummary(
        output=result.output,
        written=() if result.already_complete else done,
        skipped=done if result.already_complete else (),
        rows=result.rows,
        seed=result.seed,
        seconds=result.seconds,
    )


def _augment_set(request, inputs: list[Path], shard: str | None, progress) -> AugmentSummary:
    from mixup_cli.commands.augment_set import augment_set
    from mixup_cli.sets import parse_shard
    from mixup_cli.sets.inputs import expand_folders

    result = augment_set(request, expand_folders(inputs), request.output, parse_shard(shard), progress=progress)
    return AugmentSummary(
        output=result.outdir,
        written=tuple(result.written),
        skipped=tuple(result.skipped),
        rows=result.rows,
        seed=result.seed,
        seconds=result.seconds,
        set_id=result.set_id,
    )


def lineage(output) -> dict:
    """The input rows each output row of ``output`` was made from, as
    ``mixup lineage OUT`` prints them: a dict of numpy arrays, one entry per
    output row, in output order: ``row``, ``copy`` (-1: an original row of
    ``include_original``), ``own`` (its input row), ``partner``, ``lam``,
    ``group`` (with ``groups=``); a set's output adds ``own_input``,
    ``own_row``, ``partner_input``, ``partner_row`` (input file name and row),
    a set's OUTDIR an ``output`` column. Holds every row in memory (the
    command prints them a piece at a time). Raises ``InputError`` for what is
    not an output of ``augment``."""
    import numpy as np

    from mixup_cli.commands.lineage import lineage as rows_of

    pieces = list(rows_of(Path(output)))
    if not pieces:
        return {}
    return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}


def verify(output, *, input=None, batch_size: int | None = None, progress=None, stop: StopToken | None = None):
    """Check an output against its provenance sidecar, recomputing it, as
    ``mixup verify OUTPUT`` does; prints nothing, returns a report.

    For one output, a ``VerifyReport``: ``ok``, ``checks`` (each a ``Check``
    with ``name``, ``ok`` and ``detail``: "output files", "output data",
    "input files", "recompute"), ``first_difference`` (the first differing
    array and row, or None) and ``to_dict()``. For a set's OUTDIR (or one of
    its outputs, recomputed from the whole set), a ``SetVerifyReport``:
    ``ok``, ``complete``, ``missing`` (each missing output with the parts that
    write it), ``problems`` (one line each), ``reports`` (a ``VerifyReport``
    per output present) and ``to_dict()``.

    ``input``: where the input is now if it moved (for a set: the folder
    holding its inputs under their names, or a file listing them in order).
    Raises ``InputError`` when there is nothing to check (no sidecar, not an
    output); a check that fails is in the report, not raised. ``progress``:
    as ``augment``'s, told the rows recomputed; ``stop``: as ``augment``'s
    (a stop raises ``KeyboardInterrupt``). Warnings (a commit a killed
    run left half-done, finished first) go to the ``mixup_cli`` logger.
    """
    if stop is not None:
        stop.begin()
    with stopping.using(stop):
        return _verify(output, input, batch_size, progress)


def _verify(output, input, batch_size, progress):
    from mixup_cli.sets.status import is_set_dir
    from mixup_cli.verify import verify as verify_one
    from mixup_cli.verify import verify_set

    output = Path(output)
    input = None if input is None else Path(input)
    if is_set_dir(output):
        return verify_set(output, input_path=input, batch_size=batch_size, progress=progress)
    return verify_one(output, input_path=input, batch_size=batch_size, progress=progress)


def mix(x, y, lam, partner, *, num_classes: int | None = None, label_smoothing: float = 0.0):
    """The mixup formula on arrays in memory, as the command applies it:
    returns ``(x_mixed, y_mixed)`` with, for each row ``i``::

        x_mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[partner[i]]
        y_mixed[i] = lam[i] * y[i] + (1 - lam[i]) * y[partner[i]]

    ``lam`` (weights in [0, 1]) and ``partner`` (row indices into ``x``) have
    one entry per row of ``x``: an output's own ``lam`` and ``partner`` with
    its input's ``x`` and ``y`` give back the output's arrays, bit for bit.
    The dtype rules are the command's: floating arrays stay in their dtype
    (float32 stays float32; ``lam`` is rounded to it first), integer arrays
    are mixed in floating point, rounded to nearest and clipped to their
    range. ``y`` is None (x alone), floating targets (one-hot or soft), or
    integer class labels with ``num_classes`` (one-hot float32 first, with
    ``label_smoothing`` as ``--label-smoothing``); ``y_mixed`` is None when
    ``y`` is. Bad arguments raise ``ParameterError`` naming the argument.
    """
    import numpy as np

    from mixup_cli.core.blend import mix_gather

    x = np.asarray(x)
    n = x.shape[0] if x.ndim else 0
    lam = _weights(lam, n)
    partner = _partners(partner, n)
    y = _targets(y, n, num_classes, label_smoothing)
    x_mixed = mix_gather(x, x, partner, lam)
    return x_mixed, (None if y is None else mix_gather(y, y, partner, lam))


def _weights(lam, n: int):
    import numpy as np

    if lam is None:
        raise ParameterError("mix() needs lam: one weight in [0, 1] per row of x", "lam")
    lam = np.asarray(lam, dtype=np.float64)
    if lam.shape != (n,):
        raise ParameterError(f"lam has shape {lam.shape}; x has {n} rows: one weight per row", "lam")
    if not np.all((lam >= 0) & (lam <= 1)):
        raise ParameterError("lam holds values outside [0, 1] (or NaN): weights are in [0, 1]", "lam")
    return lam


def _partners(partner, n: int):
    import numpy as np

    if partner is None:
        raise ParameterError("mix() needs partner: one row index into x per row of x", "partner")
    partner = np.asarray(partner)
    if partner.shape != (n,) or (partner.size and partner.dtype.kind not in "iu"):
        raise ParameterError(
            f"partner has shape {partner.shape} and dtype {partner.dtype}; x has {n} rows: one integer per row",
            "partner",
        )
    partner = partner.astype(np.int64)
    if partner.size and (partner.min() < 0 or partner.max() >= n):
        raise ParameterError(f"partner holds row indices outside [0, {n}): they index the rows of x", "partner")
    return partner


def _targets(y, n: int, num_classes: int | None, label_smoothing: float):
    import numpy as np

    if y is None:
        return None
    y = np.asarray(y)
    if not y.ndim or y.shape[0] != n:
        raise ParameterError(f"y has shape {y.shape}; x has {n} rows: y needs one row per row of x", "y")
    if y.dtype.kind in "iub" and num_classes is not None:
        from mixup_cli.targets.encoding import one_hot

        if y.ndim != 1:
            raise ParameterError(f"y has shape {y.shape}: num_classes one-hot encodes 1-D class labels", "y")
        return one_hot(y, int(num_classes), float(label_smoothing))
    if y.dtype.kind != "f":
        raise ParameterError(
            f"y has dtype {y.dtype}: class labels are not mixed as numbers; pass num_classes= to one-hot "
            "encode them (as the command does), or floating targets",
            "y",
        )
    return y
