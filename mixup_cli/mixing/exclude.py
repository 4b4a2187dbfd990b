"""``--exclude-rows FILE``: input rows held out of the run.

FILE lists input row indices (0-based): a ``.npy`` file of one integer array
of shape (K,), or a text file of one index per line (blank lines and lines
starting with ``#`` skipped). Those rows are never an output row's own row nor
any row's partner, in every pairing and copy: the plan runs on the kept rows
(``Plan.own``, sorted), as ``--balance`` runs on its drawn rows, so its rows
are read by index (``balance.view``) and ``partner`` is mapped back to input
rows. The indexes of ``knn``, ``knn-within-class`` and ``label-kernel``
(neighbour lists, the projection, the label kernel) are built over the kept
rows alone (``planning.build_plan``), so a held-out row is in no list.
With ``--balance`` the M rows per class are drawn among the kept rows
(``planning._own_rows``). The output gets an ``own`` array: the input row
each output row is.
The sidecar records the file's path, SHA-256 and the rows it excludes; a
recomputation (``verify``, ``--resume``) refuses a file whose SHA-256 changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixup_cli.core.errors import InputError, ParameterError


def read_rows(path, n_rows: int) -> np.ndarray:
    """The sorted unique input rows FILE lists, each checked to be a row of the input."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(
            f"{path}: no such file; --exclude-rows names a .npy or text file of row indices", "--exclude-rows"
        )
    if path.suffix.lower() == ".npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc}); --exclude-rows needs row indices") from None
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise InputError(
                f"{path}: holds {rows.dtype} of shape {rows.shape}; --exclude-rows needs one integer row index per entry"
            )
    else:
        rows = _text_rows(path)
    rows = np.unique(rows.astype(np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        bad = int(rows[0] if rows[0] < 0 else rows[-1])
        raise InputError(f"{path}: row {bad} is not a row of the input (0 to {n_rows - 1}); fix the list")
    if rows.size == n_rows:
        raise InputError(f"{path}: excludes every one of the input's {n_rows} rows; there is nothing left to mix")
    return rows


def _text_rows(path: Path) -> np.ndarray:
    values = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                values.append(int(text))
            except ValueError:
                raise InputError(
                    f"{path}: line {number} is {text[:40]!r}, not a row index; --exclude-rows needs one integer a line"
                ) from None
    return np.array(values, dtype=np.int64)


def kept_rows(excluded: np.ndarray, n_rows: int) -> np.ndarray:
    """The input rows the run mixes (sorted int64)."""
    keep = np.ones(n_rows, bool)
    keep[excluded] = False
    return np.flatnonzero(keep).astype(np.int64)


def record(path, excluded: np.ndarray) -> dict:
    """What the sidecar records of the file."""
    from mixup_cli.record.provenance import sha256_file

    return {"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path)), "rows": int(excluded.size)}
