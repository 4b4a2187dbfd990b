"""The input as a run sees it: opened, checked, prepared (``Source``), and
the names of the arrays it gives the output."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import ArraySpec, Reader, axes, cf, open_reader
from mixup_cli.run.prepared import DataOptions, Prepared, pair_keys, prepare
from mixup_cli.targets import named

log = logging.getLogger("mixup_cli")

PROVENANCE_KEYS = ("lam", "partner")
# Targets may also be bool (binary and multi-label 0/1); x may not.
TARGET_DTYPE_KINDS = "fiub"


@dataclass(frozen=True)
class Source:
    """An opened input with the arrays that take part, checked for consistency."""

    reader: Reader  # reads rows as they are mixed (prepared.PreparedReader)
    specs: dict[str, ArraySpec]  # data keys (x, then y if any) as mixed: --x-dtype, y encoded
    input_specs: dict[str, ArraySpec] | None = None  # the same keys as stored in the input
    # How the rows were prepared (None for a copy of rows already prepared: ``scratch``).
    prepared: Prepared | None = None
    paired: tuple[str, ...] = ()  # data keys written as KEY_a / KEY_b (--y-format pair) instead of mixed
    path: Path | None = None  # the input as opened (workers of other engines open it again)
    layout: object | None = None  # a set's ``sets.SetLayout`` (its inputs; path is the first): workers open it so

    @property
    def y_key(self) -> str | None:
        return next(iter(list(self.specs)[1:]), None)

    @property
    def paired_keys(self) -> tuple[str, ...]:
        return self.paired

    @property
    def mixed_keys(self) -> list[str]:
        return [key for key in self.specs if key not in self.paired_keys]

    def output_keys(self, key: str) -> tuple[str, ...]:
        return pair_keys(key) if key in self.paired_keys else (key,)

    @property
    def n_rows(self) -> int:
        return next(iter(self.specs.values())).rows

    @property
    def row_bytes(self) -> int:
        return sum(spec.row_bytes for spec in self.specs.values())


def open_source(
    path: Path,
    x_key: str,
    y_key: str | None,
    options: DataOptions | None = None,
    require_y: bool = True,
    scratch_prefix: Path | None = None,
    fast: bool = True,
    y_for: str | None = None,
    reader: Reader | None = None,
    layout=None,
) -> Source:
    """Open the input and check that x (and y) exist and have rows to mix.

    ``options`` decide how rows are prepared (x dtype, target encoding,
    NaN checks); the classes of integer labels may be found here by one
    streaming pass over y. Without ``require_y`` a missing y means x alone.
    ``scratch_prefix``: the output's partial name, beside which the reader may
    put scratch files (inflated ``.npz`` members); else the temporary directory.
    ``fast=False`` reads through the format library's own decoding (verify).
    ``reader``: an input already opened (a set's ``ConcatReader``), checked and
    prepared like a file's; closed here when a check fails; ``layout``: the
    set's, which the Source keeps for the workers of other engines.
    """
    if reader is None:
        reader = open_reader(path, scratch_prefix, fast=fast, images=(options or DataOptions()).image_options())
    try:
        reader.require(x_key, "--x-key")  # x exists, before its attributes are read
        options = options or DataOptions()
        # MATLAB v7.3 arrays as MATLAB shows them; --sample-axis: x's samples moved first.
        reader = axes.wrap(reader, (x_key, y_key), options.sample_axis, x_key=x_key)
        reader = cf.wrap(reader, (x_key, y_key))  # netCDF: packed variables as floats, fill values as missing
        dims = reader
        specs = {x_key: reader.require(x_key, "--x-key")}
        reader = named.wrap(reader, y_key)  # string or categorical class labels, shown as class codes
        if y_key is not None and not require_y and y_key not in reader.keys():
            if y_for is not None:  # e.g. --pairing within-class: the labels are not optional
                raise ParameterError(
                    f"{path} has no '{y_key}': {y_for} needs class labels; name them with --y-key", "--y-key"
                )
            log.warning("%s has no '%s': mixing '%s' alone (--no-y says so; --y-key names targets)", path, y_key, x_key)
            y_key = None
        if y_key is not None:
            if y_key == x_key:
                raise ParameterError(f"--y-key and --x-key both name '{x_key}'", "--y-key")
            specs[y_key] = reader.require(y_key, "--y-key", kinds=TARGET_DTYPE_KINDS)
            n_x, n_y = specs[x_key].rows, specs[y_key].rows
            if options.sample_axis is None:
                axes.refuse_misplaced(dims, x_key, specs[x_key].shape, y_key, n_y)
            if n_x != n_y:
                raise InputError(
                    f"{path}: '{x_key}' has {n_x} rows but '{y_key}' has {n_y}; x and y need one row per sample"
                )
        if specs[x_key].rows == 0:
            raise InputError(f"{path}: '{x_key}' has zero rows; there is nothing to mix")
        for key in PROVENANCE_KEYS:
            if key in specs:
                raise ParameterError(f"'{key}' is reserved for provenance in the output; rename the array", "--x-key")
        for key in specs:
            top = key.strip("/").split("/")[0]
            if top in PROVENANCE_KEYS and top != key.strip("/"):
                option = "--x-key" if key == x_key else "--y-key"
                raise ParameterError(
                    f"'{key}' would be written inside '{top}', the name of a provenance array of the output; "
                    "rename the array (or its group)",
                    option,
                )
        prepared = prepare(reader, x_key, specs[x_key], y_key, specs.get(y_key), options)
        check_output_keys(prepared, x_key)
    except BaseException:
        reader.close()
        raise
    return Source(
        prepared.reader, prepared.specs, named.stored_specs(reader, specs), prepared, prepared.paired, path, layout
    )


def check_output_keys(prepared: Prepared, x_key: str) -> None:
    """Pair outputs (y_a, y_b) must not collide with x or the provenance arrays."""
    for key in prepared.paired:
        for name in pair_keys(key):
            if name == x_key or name in PROVENANCE_KEYS:
                raise ParameterError(
                    f"--y-format pair would write '{name}', which is also '{x_key}' or a provenance array; "
                    "rename the array",
                    "--y-format",
                )
