"""The ``law`` check of ``mixup verify``: OUT's own ``partner``, ``lam`` (and
``own``, ``group``) arrays against the documented law of its pairing
(``mixup_cli.mixing.law``), with ``--groups`` the law inside the groups and with
``--exclude-rows`` the rows held out; read from OUT alone and, where the
law needs them, the input's labels and group ids: none of the planner's
code. ``set_group_checks``: ``--groups`` on a set's outputs, against the
whole set's group ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import MixupError
from mixup_cli.io import open_reader
from mixup_cli.record import provenance
from mixup_cli.verify.report import Check

# Rows of OUT's provenance read at once by the law check.
_LAW_PIECE_ROWS = 1 << 18


def _law_frame(params: dict) -> tuple | None:
    """``(pairing, copies, segments, block_rows, alpha)`` from the sidecar; None when it lacks them."""
    try:
        pairing, copies = params["pairing"], int(params["copies"])
        segments = copies + int(bool(params["include_original"]))
        return pairing, copies, segments, int(params["block_rows"]), float(params["alpha"])
    except (KeyError, TypeError, ValueError):
        return None


def _version_one_global(params: dict) -> Check | None:
    if params.get("plan_version") == 1 and params.get("pairing") == "global":
        return Check(
            "law",
            True,
            "plan version 1: global pairing took each block's partners from the next block of a random "
            "cycle (its documented law then), not uniform over the dataset; not tested",
        )
    return None


def check_law(params: dict, output: Path, input_path: Path | None) -> Check | None:
    """The ``law`` check: OUT's own ``partner`` and ``lam`` (and ``own``)
    arrays against the pairing's documented law (``mixup_cli.mixing.law``), read
    from OUT alone (and, for class pairings, the input's labels): none of the
    planner's code. None when the sidecar lacks what it needs."""
    frame = _law_frame(params)
    if frame is None:
        return None
    old = _version_one_global(params)
    if old is not None:
        return old
    try:
        reader = open_reader(output, fast=False)
    except (MixupError, OSError) as exc:
        return Check("law", False, f"could not read {output}: {exc}")
    try:
        excluded = _excluded_rows(params)
        classes = None
        if frame[0] in ("within-class", "between-class") and input_path is not None:
            classes = _input_classes(input_path, params.get("y_key"), params)
        grouped = _group_law(params, input_path, classes, excluded, _balanced_rows(params, reader, frame))
        return _output_law(params, frame, reader, classes, grouped, excluded)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        return Check("law", False, f"could not read the provenance of {output}: {exc}")
    finally:
        reader.close()


def _output_law(params: dict, frame: tuple, reader, classes, grouped, excluded, where=None) -> Check:
    """The law check of one output, open in ``reader``. ``where`` (a set's
    output): ``(offset, plan_rows)``: its input's first global row, and the
    rows the set's plan draws partners from; its own rows are global rows
    from ``offset``, and with --pairing batch only the set's pair groups that
    lie whole in its rows are tested as permutations (the others span outputs)."""
    from mixup_cli.mixing import law

    pairing, copies, segments, block_rows, alpha = frame
    n = reader.spec("partner").rows // segments
    offset, plan_rows = where if where is not None else (0, n)
    balanced = bool(params.get("balance") or params.get("exclude_rows"))  # an 'own' array
    if grouped is not None:
        _check_original_groups(reader, grouped, n, segments - copies, balanced, offset)
        classes = None  # the group law tests the classes, alone rows apart
    tested = law.Law(
        pairing,
        plan_rows,
        block_rows,
        alpha,
        copies * n,
        lam_is_beta=params.get("method", "mixup") == "mixup",
        classes=classes,
        # batch with --groups: its permutations still hold (the group law adds the groups)
        partner_law=not balanced and (grouped is None or pairing == "batch"),
        version=int(params.get("plan_version", 1)),
    )
    if where is not None and pairing == "batch" and tested.partner_law:
        tested.batch_window = _whole_groups(tested, offset, offset + n)
    piece = max(1, _LAW_PIECE_ROWS // block_rows) * block_rows
    for seg in range(segments - copies, segments):  # the original rows come first, unmixed
        for s in range(0, n, piece):
            stopping.check()
            _feed_law(reader, tested, grouped, excluded, (seg * n + s, s, min(n, s + piece)), balanced, offset)
    return _law_check(tested, grouped, params, excluded)


def _whole_groups(tested, first: int, stop: int) -> tuple[int, int]:
    """The plan rows of the batch pair groups that lie whole in ``[first, stop)``."""
    b = tested.block_rows
    lo = -(-first // b) * b
    hi = lo
    while hi < stop:
        end = tested.group_stop(hi)
        if end > stop or end <= hi:
            break
        hi = end
    return lo, hi


def _feed_law(reader, tested, grouped, excluded, rows: tuple[int, int, int], balanced: bool, offset: int = 0) -> None:
    """Output rows ``at...`` (rows ``s:e`` of a segment) fed to the law's checks;
    ``offset``: the global row of a set output's first row."""
    at, s, e = rows
    own = reader.read("own", at, at + e - s) if balanced else np.arange(s, e) + offset
    partner, lam = reader.read("partner", at, at + e - s), reader.read("lam", at, at + e - s)
    if excluded is not None:
        excluded.add(own, partner, at)
    if grouped is not None:
        grouped.check_groups(own, reader.read("group", at, at + e - s), at)
        drew = grouped.add(own, partner, lam, at)
        if tested.pairing == "batch":  # every row is in its block's permutation; lam of the mixed ones
            tested.add(own, partner, lam, at, mixed=drew)
            return
        own, partner, lam = own[drew], partner[drew], lam[drew]
    tested.add(own, partner, lam, at)


def _law_check(tested, grouped, params: dict, excluded=None) -> Check:
    """The law check's line: the pairing's law, with --groups the group law,
    with --exclude-rows the rows held out."""
    ok, detail = tested.result()
    if excluded is not None:
        problem, line = excluded.result()
        if problem:
            return Check("law", False, problem + (f"; {detail}" if not ok else ""))
        detail += f"; {line}"
    if params.get("groups") is None:
        return Check("law", ok, detail)
    if grouped is None:
        return Check("law", ok, detail + f"; --groups {params['groups']}: not tested, the input was not found")
    problems, tested_groups = grouped.result()
    if problems:
        return Check("law", False, "; ".join(problems) + (f"; {detail}" if not ok else ""))
    return Check("law", ok, detail + f"; --groups {params['groups']}: {', '.join(tested_groups)}")


def _excluded_rows(params: dict):
    """``--exclude-rows``: the check that no output row uses the rows the file lists; None without it."""
    from mixup_cli.mixing import law
    from mixup_cli.mixing.exclude import read_rows

    recorded = params.get("exclude_rows")
    if not recorded:
        return None
    path = Path(recorded["path"])
    try:
        excluded = read_rows(path, np.iinfo(np.int64).max)
        if provenance.sha256_file(path) != recorded.get("sha256"):
            return law.Excluded(None, f"--exclude-rows: {path} changed since the run (its SHA-256 differs)")
    except (MixupError, OSError) as exc:
        return law.Excluded(None, f"--exclude-rows: could not read {path}: {exc}")
    return law.Excluded(excluded)


def _group_law(params: dict, input_path: Path | None, classes, excluded=None, balanced=None):
    """``--groups``: the law inside the groups, from the input's group ids read
    here; None without them. ``balanced`` (--balance): the balanced rows of a
    copy, the pools partners are drawn from."""
    from mixup_cli.mixing import law

    key = params.get("groups")
    if key is None or input_path is None:
        return None
    held_out = None if excluded is None else excluded.rows
    ids = _group_ids(input_path, key)
    weights = None if balanced is None else np.bincount(balanced, minlength=len(ids))
    return law.GroupLaw(params["pairing"], ids, classes, held_out, weights=weights)


def _balanced_rows(params: dict, reader, frame: tuple) -> np.ndarray | None:
    """--balance with --groups: OUT's ``own`` rows of its first segment (each
    segment holds the same balanced rows); None otherwise."""
    if not (params.get("balance") and params.get("groups")):
        return None
    n = reader.spec("partner").rows // frame[2]
    own = np.asarray(reader.read("own", 0, n), np.int64)
    if len(own) and own.min() < 0:
        raise ValueError("its 'own' array holds negative rows")
    return own


def _group_ids(input_path: Path, key: str) -> np.ndarray:
    """The input's group ids as stored (strings as text, bools as integers), read here."""
    reader = open_reader(input_path, fast=False)
    try:
        spec = reader.spec(key)
        parts = [reader.read(key, s, min(spec.rows, s + _LAW_PIECE_ROWS)) for s in range(0, spec.rows, _LAW_PIECE_ROWS)]
    finally:
        reader.close()
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ids = ids.reshape(len(ids))
    if ids.dtype.kind in "SO":
        ids = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in ids.tolist()], dtype=str)
    return ids.astype(np.int64) if ids.dtype.kind == "b" else ids


def set_law_checks(records: dict, params: dict, paths: list[Path], reports: dict) -> None:
    """The ``law`` check of each output of a set, as of one output: its
    ``partner``/``lam`` (``own``, ``group``) against the pairing's law, the
    rows held out, and the group law, against the labels and group ids of
    the whole set (global rows), read from the inputs here."""
    frame = _law_frame(params)
    if frame is None:
        return
    old = _version_one_global(params)
    if old is not None:
        for rep in reports.values():
            rep.checks.append(old)
        return
    try:
        classes, grouped = _set_labels(params, paths)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        for rep in reports.values():
            rep.checks.append(Check("law", False, f"could not read the inputs' labels or group ids: {exc}"))
        return
    for k, rep in reports.items():
        stopping.check()
        section = records[k]["set"]
        plan_rows = int(params.get("rows_per_copy") or section["rows"])
        where = (int(section["input"]["offset"]), plan_rows)
        if grouped is not None:
            grouped.reset()
        try:
            reader = open_reader(rep.output, fast=False)
            try:
                check = _output_law(params, frame, reader, classes, grouped, _excluded_rows(params), where)
            finally:
                reader.close()
        except (MixupError, OSError, KeyError, ValueError) as exc:
            check = Check("law", False, f"could not read the provenance of {rep.output}: {exc}")
        rep.checks.append(check)


def _set_labels(params: dict, paths: list[Path]):
    """The classes (class pairings) and the group law (--groups) over the whole set."""
    from mixup_cli.mixing import law

    key, pairing = params.get("groups"), params.get("pairing")
    classes = None
    if pairing in ("within-class", "between-class"):
        found = [_input_classes(p, params.get("y_key"), params) for p in paths]
        classes = None if any(c is None for c in found) else np.concatenate(found)
    if key is None:
        return classes, None
    ids = np.concatenate([_group_ids(p, key) for p in paths])
    excluded = _excluded_rows(params)
    held_out = None if excluded is None else excluded.rows
    return classes, law.GroupLaw(pairing, ids, classes, held_out)


def _check_original_groups(reader, grouped, n: int, originals: int, with_own: bool, offset: int = 0) -> None:
    """The original rows' (``--include-original``) ``group``: their own row's id."""
    for seg in range(originals):
        for s in range(0, n, _LAW_PIECE_ROWS):
            e = min(n, s + _LAW_PIECE_ROWS)
            own = reader.read("own", seg * n + s, seg * n + e) if with_own else np.arange(s, e) + offset
            grouped.check_groups(own, reader.read("group", seg * n + s, seg * n + e), seg * n + s)


def _input_classes(input_path: Path, y_key: str | None, params: dict) -> np.ndarray | None:
    """The class of every input row, read here (argmax of label rows, or
    integer labels); None where y holds neither (names: not tested)."""
    from mixup_cli.run.prepared import DataOptions

    if not y_key:
        return None
    # A folder of images: the files the run read (--skip-bad-images left some out).
    from mixup_cli.io import axes

    options = DataOptions.from_parameters(params)
    reader = open_reader(input_path, fast=False, images=options.image_options())
    try:
        # As the run read y: MATLAB's orientation, its own samples' axis for a dimension name.
        reader = axes.wrap(reader, (y_key,), options.sample_axis, x_key=params.get("x_key") or "x")
        spec = reader.spec(y_key)
        parts = []
        for s in range(0, spec.rows, _LAW_PIECE_ROWS):
            stopping.check()
            y = np.asarray(reader.read(y_key, s, min(spec.rows, s + _LAW_PIECE_ROWS)))
            if y.ndim == 2 and y.shape[1] > 1:
                parts.append(np.argmax(y, axis=1))
            elif y.dtype.kind in "iub":
                parts.append(y.reshape(len(y)).astype(np.int64))
            else:
                return None
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    except (MixupError, OSError, KeyError, ValueError):
        return None
    finally:
        reader.close()


# A set's outputs (``mixup augment IN1 IN2 ... OUTDIR``): each output is
