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


def check_law(params: dict, output: Path, input_path: Path | None) -> Check | None:
    """The ``law`` check: OUT's own ``partner`` and ``lam`` (and ``own``)
    arrays against the pairing's documented law (``mixup_cli.mixing.law``), read
    from OUT alone (and, for class pairings, the input's labels): none of the
    planner's code. None when the sidecar lacks what it needs."""
    from mixup_cli.mixing import law

    try:
        pairing, copies = params["pairing"], int(params["copies"])
        segments = copies + int(bool(params["include_original"]))
        block_rows, alpha = int(params["block_rows"]), float(params["alpha"])
    except (KeyError, TypeError, ValueError):
        return None
    if params.get("plan_version") == 1 and pairing == "global":
        return Check(
            "law",
            True,
            "plan version 1: global pairing took each block's partners from the next block of a random "
            "cycle (its documented law then), not uniform over the dataset; not tested",
        )
    try:
        reader = open_reader(output, fast=False)
    except (MixupError, OSError) as exc:
        return Check("law", False, f"could not read {output}: {exc}")
    try:
        rows = reader.spec("partner").rows
        n = rows // segments
        balanced = bool(params.get("balance") or params.get("exclude_rows"))  # an 'own' array
        excluded = _excluded_rows(params, rows)
        classes = None
        if pairing in ("within-class", "between-class") and input_path is not None:
            classes = _input_classes(input_path, params.get("y_key"), params)
        grouped = _group_law(params, input_path, classes, excluded)
        if grouped is not None:
            _check_original_groups(reader, grouped, n, segments - copies, balanced)
            classes = None  # the group law tests the classes, alone rows apart
        tested = law.Law(
            pairing,
            n,
            block_rows,
            alpha,
            copies * n,
            lam_is_beta=params.get("method", "mixup") == "mixup",
            classes=classes,
            # batch with --groups: its permutations still hold (the group law adds the groups)
            partner_law=not balanced and (grouped is None or pairing == "batch"),
            version=int(params.get("plan_version", 1)),
        )
        piece = max(1, _LAW_PIECE_ROWS // block_rows) * block_rows
        for seg in range(segments - copies, segments):  # the original rows come first, unmixed
            for s in range(0, n, piece):
                stopping.check()
                _feed_law(reader, tested, grouped, excluded, (seg * n + s, s, min(n, s + piece)), balanced)
        return _law_check(tested, grouped, params, excluded)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        return Check("law", False, f"could not read the provenance of {output}: {exc}")
    finally:
        reader.close()


def _feed_law(reader, tested, grouped, excluded, rows: tuple[int, int, int], balanced: bool) -> None:
    """Output rows ``at...`` (input rows ``s:e`` of a segment) fed to the law's checks."""
    at, s, e = rows
    own = reader.read("own", at, at + e - s) if balanced else np.arange(s, e)
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


def _excluded_rows(params: dict, rows: int):
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


def _group_law(params: dict, input_path: Path | None, classes, excluded=None):
    """``--groups``: the law inside the groups, from the input's group ids read here; None without them."""
    from mixup_cli.mixing import law

    key = params.get("groups")
    if key is None or input_path is None:
        return None
    held_out = None if excluded is None else excluded.rows
    return law.GroupLaw(params["pairing"], _group_ids(input_path, key), classes, held_out)


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


def set_group_checks(records: dict, params: dict, paths: list[Path], reports: dict) -> None:
    """``--groups`` on a set: each output's ``group`` and partners against the
    group ids of the whole set (global rows), read from the inputs here."""
    from mixup_cli.mixing import law

    key, pairing = params.get("groups"), params.get("pairing")
    if key is None:
        return
    try:
        ids = np.concatenate([_group_ids(p, key) for p in paths])
        classes = None
        if pairing in ("within-class", "between-class"):
            found = [_input_classes(p, params.get("y_key"), params) for p in paths]
            classes = None if any(c is None for c in found) else np.concatenate(found)
        grouped = law.GroupLaw(pairing, ids, classes)
    except (MixupError, OSError, KeyError, ValueError) as exc:
        for rep in reports.values():
            rep.checks.append(Check("law", False, f"--groups {key}: could not read the inputs' group ids: {exc}"))
        return
    segments = int(params["copies"]) + int(bool(params["include_original"]))
    for k, rep in reports.items():
        section = records[k]["set"]["input"]
        grouped.reset()
        try:
            _add_set_output(grouped, rep.output, int(section["offset"]), segments, segments - int(params["copies"]))
        except (MixupError, OSError, KeyError, ValueError) as exc:
            rep.checks.append(Check("law", False, f"could not read the provenance of {rep.output}: {exc}"))
            continue
        problems, tested = grouped.result()
        line = "; ".join(problems) if problems else f"--groups {key}: {', '.join(tested)}"
        rep.checks.append(Check("law", not problems, line))


def _add_set_output(grouped, output: Path, offset: int, segments: int, originals: int) -> None:
    """One output of a set, fed to ``grouped`` (its own rows are global rows from ``offset``)."""
    reader = open_reader(output, fast=False)
    try:
        n = reader.spec("partner").rows // segments
        for seg in range(segments):
            for s in range(0, n, _LAW_PIECE_ROWS):
                e, at = min(n, s + _LAW_PIECE_ROWS), seg * n + s
                own = np.arange(s, e) + offset
                grouped.check_groups(own, reader.read("group", at, at + e - s), at)
                if seg >= originals:
                    grouped.add(own, reader.read("partner", at, at + e - s), reader.read("lam", at, at + e - s), at)
    finally:
        reader.close()


def _check_original_groups(reader, grouped, n: int, originals: int, with_own: bool) -> None:
    """The original rows' (``--include-original``) ``group``: their own row's id."""
    for seg in range(originals):
        for s in range(0, n, _LAW_PIECE_ROWS):
            e = min(n, s + _LAW_PIECE_ROWS)
            own = reader.read("own", seg * n + s, seg * n + e) if with_own else np.arange(s, e)
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
