"""From parameters to a ``Plan``: the indexes its pairing draws from (classes,
neighbours, label kernel, balanced rows), found by passes over the source,
and the shapes the plan's output takes.

``build_plan(source, ...)`` takes plain parameters (``augment``, ``preview``);
``plan_from_sidecar(parameters, source)`` the ones a sidecar records
(``verify``). Both give the same plan for the same parameters.
"""

from __future__ import annotations

from mixup_cli.core.errors import ParameterError
from mixup_cli.io import ArraySpec
from mixup_cli.mixing import balance as balancing
from mixup_cli.mixing import cutmix
from mixup_cli.mixing import exclude as excluding
from mixup_cli.mixing import groups as grouping
from mixup_cli.mixing.mixer import Mixer
from mixup_cli.mixing.sampling import (
    CLASS_PAIRINGS,
    DEFAULT_NEIGHBORS,
    INDEX_PAIRINGS,
    KNN_PAIRINGS,
    PLAN_VERSION,
    PLAN_VERSIONS,
    Plan,
    default_block_rows,
    draw_seed,
)
from mixup_cli.run.source import Source
from mixup_cli.targets.classes import ClassIndex, class_index

# Default batch: rows of about this many bytes are mixed and written at once
# (at most a block). Large batches mean few, chunk-aligned HDF5 calls.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024

# Sidecar parameters that build_plan takes, with their default when absent.
_RECORDED = {
    "alpha": None,
    "seed": None,
    "x_key": None,
    "y_key": None,
    "pairing": None,
    "copies": None,
    "include_original": None,
    "block_rows": None,
    "method": "mixup",
    "layout": None,
    "neighbors": None,
    "project": None,
    "neighbor_index": None,
    "bandwidth": None,
    "balance": False,
    "balance_to": None,
    "groups": None,
}


def build_plan(
    source: Source,
    *,
    alpha: float,
    seed: int | None = None,
    x_key: str | None = None,
    y_key: str | None = None,
    pairing: str = "global",
    copies: int = 1,
    include_original: bool = False,
    block_rows: int | None = None,
    chunk_rows: int | None = None,
    method: str = "mixup",
    layout: str | None = None,
    neighbors: int | None = None,
    project: int | None = None,
    bandwidth: float | None = None,
    balance: bool = False,
    balance_to: int | None = None,
    plan_version: int = PLAN_VERSION,
    reference: bool = False,
    groups: str | None = None,
    exclude_rows=None,
    exclude_sha256: str | None = None,
    neighbor_index: str | None = None,
) -> Plan:
    """The plan of a run over ``source`` (seed drawn when None; ``x_key`` and
    ``y_key`` as asked, the source's own by default; without ``block_rows``,
    the default, a multiple of ``chunk_rows`` when that is given;
    ``plan_version`` a sidecar's, to recompute an output of an earlier version;
    ``reference``: indexes found by their reference path, as ``verify``
    recomputes, not by the fast one; ``groups``: the key of the group ids,
    ``--groups``; ``exclude_rows``: the file of input rows held out,
    ``--exclude-rows``, whose SHA-256 must be ``exclude_sha256`` when given;
    ``neighbor_index``: "approximate" for the knn pairings' approximate lists,
    ``--neighbor-index``; None or "exact": the exact ones)."""
    x_key = x_key or next(iter(source.specs))
    y_key = source.y_key if y_key is None else y_key
    block_rows = block_rows or default_block_rows(source.row_bytes, chunk_rows=chunk_rows)
    seed = draw_seed() if seed is None else seed
    if pairing in KNN_PAIRINGS and neighbors is None:
        neighbors = DEFAULT_NEIGHBORS
    neighbor_index = None if neighbor_index == "exact" else neighbor_index  # exact: recorded as before
    if pairing in CLASS_PAIRINGS and source.y_key is None:
        # The source's y: a y_key the input lacks (and was not asked for) is dropped there.
        where = f"{source.reader.path} has no '{y_key}': " if y_key else ""
        raise ParameterError(f"{where}--pairing {pairing} needs class labels; name them with --y-key", "--pairing")
    grouping.check(pairing, groups, x_key, y_key)
    balance_wanted = balancing.check(pairing, balance, balance_to, source.y_key)
    own, classes, exclude = _own_rows(source, pairing, balance_wanted, balance_to, seed, exclude_rows, exclude_sha256)
    options = dict(
        alpha=alpha,
        block_rows=block_rows,
        pairing=pairing,
        neighbors=neighbors,
        project=project,
        neighbor_index=neighbor_index,
        bandwidth=bandwidth,
    )
    if pairing in INDEX_PAIRINGS:  # check the options (a Plan without the index) before reading anything
        Plan(n_rows=source.n_rows, seed=0, **options)
    group_index = None
    if groups is not None:
        ids = grouping.read_ids(source.reader, groups, source.n_rows)
        ids = ids if own is None else ids[own]
        cell_classes = classes
        if pairing == "knn-within-class":  # its cells are (group, class) too
            cell_classes = _knn_classes(balancing.rows_view(source, own), y_key)
        group_index = grouping.GroupIndex.build(groups, ids, None if cell_classes is None else cell_classes.codes)
    partners = partner_index(
        balancing.rows_view(source, own),  # --exclude-rows: the index over the kept rows only
        pairing,
        x_key,
        y_key,
        neighbors,
        project,
        bandwidth,
        plan_version,
        reference=reference,
        groups=group_index,
        approximate=neighbor_index == "approximate",
    )
    if method == "cutmix":
        x_spec = source.specs[x_key]
        layout = cutmix.resolve_layout(x_spec.row_shape, layout, f"{source.reader.path}: '{x_key}'")
    return Plan(
        n_rows=source.n_rows if own is None else len(own),
        seed=seed,
        copies=copies,
        include_original=include_original,
        classes=classes,
        method=method,
        layout=layout if method == "cutmix" else None,
        partners=partners,
        balance_to=balance_to if balance_wanted else None,
        balance=balance_wanted and exclude is not None,
        own=own,
        version=plan_version,
        group_key=groups,
        groups=group_index,
        exclude=exclude,
        **options,
    )


def _own_rows(source: Source, pairing: str, balanced: bool, balance_to, seed: int, exclude_rows, exclude_sha256):
    """The plan's rows, when they are not the input's (``--balance``: drawn per
    class; ``--exclude-rows``: the kept ones), the class index over them, and
    the record of the excluded rows' file: ``(own, classes, exclude)``."""
    own = exclude = None
    if exclude_rows is not None:
        excluded = excluding.read_rows(exclude_rows, source.n_rows)
        found = excluding.record(exclude_rows, excluded)
        if exclude_sha256 is not None and found["sha256"] != exclude_sha256:
            raise ParameterError(
                f"{exclude_rows}: its SHA-256 differs from the one the run recorded; restore the file of excluded rows",
                "--exclude-rows",
            )
        own = excluding.kept_rows(excluded, source.n_rows)
        exclude = (found["path"], found["sha256"], found["rows"])
    if not (balanced or (own is not None and pairing in CLASS_PAIRINGS)):
        return own, _class_index(source) if pairing in CLASS_PAIRINGS else None, exclude
    # One pass over y: the own rows, and the classes of the plan's rows from them.
    input_classes = _class_index(source)
    if balanced and own is not None:  # --exclude-rows: M rows per class drawn among the kept rows
        kept = ClassIndex.from_labels(input_classes.values[input_classes.codes[own]], input_classes.label)
        own = own[balancing.own_rows(kept, seed, balance_to)]
    elif balanced:
        own = balancing.own_rows(input_classes, seed, balance_to)
    classes = None
    if pairing in CLASS_PAIRINGS:
        classes = ClassIndex.from_labels(input_classes.values[input_classes.codes[own]], input_classes.label)
    return own, classes, exclude


def plan_from_sidecar(parameters: dict, source: Source) -> Plan:
    """The plan a sidecar's ``parameters`` record, rebuilt over ``source``
    (its indexes found again, by their reference paths: a check never shares
    the fast path it checks); a usage error when they are incomplete or of
    another plan version."""
    if parameters.get("plan_version") not in PLAN_VERSIONS:
        raise ParameterError(version_problem(parameters), "OUT")
    missing = [
        key
        for key, default in _RECORDED.items()
        if default is None
        and key not in parameters
        and key
        not in ("layout", "neighbors", "project", "neighbor_index", "bandwidth", "balance_to", "y_key", "groups")
    ]
    if missing:
        raise ParameterError(f"the sidecar lacks the parameter '{missing[0]}'", "OUT")
    kwargs = {key: parameters.get(key, default) for key, default in _RECORDED.items()}
    kwargs["balance"] = bool(kwargs["balance"])
    excluded = parameters.get("exclude_rows")
    if excluded:
        kwargs.update(exclude_rows=excluded["path"], exclude_sha256=excluded["sha256"])
    return build_plan(source, plan_version=parameters["plan_version"], reference=True, **kwargs)


def version_problem(parameters: dict) -> str:
    """Why a sidecar's plan cannot be computed: a plan version this code lacks."""
    versions = " and ".join(map(str, PLAN_VERSIONS))
    return (
        f"the sidecar's plan_version is {parameters.get('plan_version')!r}, this mixup-cli computes "
        f"versions {versions}; verify with the mixup-cli version that wrote it"
    )


def _class_index(source: Source) -> ClassIndex:
    """The classes of the source's y, in one pass (one-hot encoded labels are
    read by column, so a single class is still class 0)."""
    targets = source.prepared.targets if source.prepared is not None else None
    return class_index(source.reader, source.y_key, one_hot=targets is not None and targets.kind == "classes")


def partner_index(
    source: Source,
    pairing: str,
    x_key: str,
    y_key: str | None,
    neighbors,
    project,
    bandwidth,
    version=PLAN_VERSION,
    *,
    reference: bool = False,
    groups=None,
    approximate: bool = False,
):
    """The index the knn and label-kernel pairings draw partners from (one or
    two passes over x, or one over y); None for the other pairings. ``groups``
    (``groups.GroupIndex``, --groups): partners searched inside the row's
    cell (group; group and class for knn-within-class); ``approximate``: the
    knn lists of ``approximate.search``."""
    if pairing not in INDEX_PAIRINGS:
        return None
    if pairing == "label-kernel":
        from mixup_cli.mixing import label_kernel

        if y_key is None:
            raise ParameterError("--pairing label-kernel needs targets; name them with --y-key", "--pairing")
        kind = source.prepared.target_kind if source.prepared is not None else None
        widen = label_kernel.MAX_LEFT_OUT if version >= 2 else None  # version 1: the plain window
        codes = None if groups is None else groups.codes
        return label_kernel.build(source.reader, y_key, bandwidth, kind, max_left_out=widen, groups=codes)
    from mixup_cli.mixing import neighbours

    build = neighbours.build
    if approximate:  # the same arguments, the lists of an approximate index
        from mixup_cli.mixing import approximate as ann

        build = ann.build
    label = f"{source.reader.path}['{x_key}']"
    if isinstance(source.reader, balancing.BalancedReader):  # --exclude-rows: the kept rows only
        label += " without the rows --exclude-rows holds out,"
    if groups is not None:
        return build(
            source.reader,
            x_key,
            neighbors,
            project,
            None,
            label,
            reference=reference,
            version=version,
            cells=groups.cells.codes,
        )
    within = _knn_classes(source, y_key) if pairing == "knn-within-class" else None
    return build(
        source.reader,
        x_key,
        neighbors,
        project,
        within,
        label,
        reference=reference,
        version=version,
    )


def _knn_classes(source: Source, y_key: str | None) -> ClassIndex:
    """The classes knn-within-class searches within (one pass over y)."""
    if y_key is None:
        raise ParameterError("--pairing knn-within-class needs class labels; name them with --y-key", "--pairing")
    return class_index(source.reader, y_key)


def default_batch_rows(row_bytes: int, block_rows: int) -> int:
    return min(block_rows, default_block_rows(row_bytes, DEFAULT_BATCH_BYTES))


def output_specs(source: Source, plan: Plan) -> dict[str, ArraySpec]:
    """Every array of the plan's output: data (mixed, or pairs), then provenance."""
    rows = plan.output_rows
    specs = {
        out_key: ArraySpec((rows,) + spec.row_shape, spec.dtype)
        for key, spec in source.specs.items()
        for out_key in source.output_keys(key)
    }
    for name, (row_shape, dtype) in Mixer.provenance_specs(plan).items():
        specs[name] = ArraySpec((rows,) + row_shape, dtype)
    return specs
