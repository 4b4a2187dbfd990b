"""Target encoding: what kind of targets ``y`` holds and how a block of them
becomes rows that can be mixed.

Kinds (``--y-kind``; ``auto`` decides from the dtype and shape alone):

``classes``
    integer class labels of shape ``(N,)`` or ``(N, 1)``, each in
    ``[0, C)``: one-hot encoded (float32, one column per class index) and,
    with label smoothing, softened as timm does before mixing. ``C`` is
    ``--num-classes`` or, without it, ``max(label) + 1`` found by one
    streaming pass over ``y``. Float storage of whole numbers is accepted.
``binary``
    0/1 targets of shape ``(N,)`` or ``(N, 1)``: mixed linearly, so they
    come out in ``[0, 1]``.
``multilabel``
    0/1 targets of any other shape, e.g. ``(N, C)`` multi-hot rows or
    ``(N, H, W)`` binary masks: mixed linearly.
``dense``
    anything else numeric (regression values, maps, probability rows):
    mixed linearly.

auto: bool -> binary or multilabel by shape; integer ``(N,)``/``(N, 1)`` ->
classes; integer of any other shape -> multilabel (a value other than 0/1 is
then an error: use ``--y-format pair`` or ``--y-kind dense``); float ->
dense. Integer targets are never mixed as plain numbers unless ``dense`` is
asked for. Floating targets keep their dtype; integer and bool targets are
mixed as float32.

One-hot encoding is plain numpy: class indices map straight to columns, which
is what scikit-learn's encoders would do at the cost of an import and an
extra copy per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError

KINDS = ("classes", "binary", "multilabel", "dense")
Y_KINDS = ("auto",) + KINDS
KIND_NAMES = {"classes": "class", "binary": "binary", "multilabel": "multi-label", "dense": "dense"}
# Rows of y read at once by the pass that finds the classes.
SCAN_ROWS = 1 << 20
# Inferred classes (no --num-classes) are refused when there are more of them
# than rows, or when their one-hot rows would be more than ONE_HOT_FACTOR times
# the input's rows (x and y) and more than ONE_HOT_FLOOR bytes in all: labels
# that are identifiers rather than classes would otherwise start a huge output.
ONE_HOT_FACTOR = 8
ONE_HOT_FLOOR = 64 * 1024 * 1024
# Labels taken as classes by --y-kind auto are refused when every row has its
# own (as many distinct labels as rows) and there are more than this many
# rows: one label a row is an identifier (AnnData's obs/_index), not a class.
# --y-kind classes (or --num-classes) keeps them as classes.
UNIQUE_LABEL_ROWS = 16


@dataclass(frozen=True)
class Targets:
    """How ``y`` is turned into rows to mix; ``to_dict`` is what the sidecar records."""

    kind: str
    dtype: np.dtype  # dtype of the encoded rows
    num_classes: int | None = None  # classes only
    classes: tuple[int, ...] | None = None  # classes found in the data (None when --num-classes was given)
    label_smoothing: float = 0.0
    label: str = "y"  # "FILE: 'KEY'", for messages

    def encoded_row_shape(self, row_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.num_classes,) if self.kind == "classes" else tuple(row_shape)

    def encode(self, block: np.ndarray, first_row: int) -> np.ndarray:
        """Rows ``first_row:first_row+len(block)`` of y as they are mixed.

        Raises InputError naming the first bad row (label out of range, a
        value other than 0/1 for binary and multi-label targets).
        """
        if self.kind == "classes":
            labels = class_indices(block, first_row, self.label)
            return one_hot(labels, self.num_classes, self.label_smoothing, first_row, self.label)
        if self.kind in ("binary", "multilabel"):
            check_zero_one(block, first_row, self.label, self.kind)
        return block.astype(self.dtype, copy=False)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "dtype": np.dtype(self.dtype).str,
            "num_classes": self.num_classes,
            "classes": None if self.classes is None else [int(c) for c in self.classes],
            "label_smoothing": self.label_smoothing,
        }


def row_number(rows, i: int) -> int:
    """Input row of offset ``i`` in a block: ``rows`` is the block's first row
    (a contiguous read) or the array of rows it holds (rows read by index)."""
    return int(rows[i]) if isinstance(rows, np.ndarray) else int(rows) + i


def auto_kind(dtype: np.dtype, row_shape: tuple[int, ...]) -> str:
    """The kind ``--y-kind auto`` picks, from dtype and shape only."""
    dtype = np.dtype(dtype)
    single = row_shape in ((), (1,))
    if dtype.kind == "b":
        return "binary" if single else "multilabel"
    if dtype.kind in "iu":
        return "classes" if single else "multilabel"
    return "dense"


def check_smoothing(eps: float) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ParameterError(f"--label-smoothing must be a number, got {eps!r}", "--label-smoothing") from None
    if not (0.0 <= value < 1.0):
        raise ParameterError(f"--label-smoothing must be in [0, 1), got {eps!r}", "--label-smoothing")
    return value


def _other_targets(kind: str, dtype: np.dtype, shape, num_classes, eps: float, label: str) -> Targets:
    """Binary, multi-label or dense targets: mixed as they are (as floats)."""
    if num_classes is not None:
        raise ParameterError(
            f"--num-classes applies to class labels; {label} holds {kind} targets (shape {list(shape)}, dtype {dtype})",
            "--num-classes",
        )
    if eps:
        raise ParameterError(
            f"--label-smoothing applies to class labels; {label} holds {kind} targets "
            f"(shape {list(shape)}, dtype {dtype}), which are mixed as they are",
            "--label-smoothing",
        )
    if kind == "binary" and tuple(shape[1:]) not in ((), (1,)):
        raise InputError(f"{label} has shape {list(shape)}; binary targets have shape (N,) or (N, 1)")
    out = dtype if dtype.kind == "f" else np.dtype(np.float32)
    return Targets(kind, out, label=label)


def resolve(
    reader,
    key: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    kind: str = "auto",
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    input_row_bytes: int | None = None,
) -> Targets:
    """Decide how ``y`` is encoded; for classes without ``num_classes``, find them.

    ``reader`` is only read (in blocks) when the classes must be found.
    ``input_row_bytes`` (x and y of one input row) sizes the guard on
    inferred classes (``check_inferred_classes``).
    """
    dtype = np.dtype(dtype)
    row_shape = tuple(shape[1:])
    label = f"{reader.path}: '{key}'"
    if kind not in Y_KINDS:
        raise ParameterError(f"--y-kind must be one of {', '.join(Y_KINDS)}, got {kind!r}", "--y-kind")
    eps = check_smoothing(label_smoothing)
    inferred = kind == "auto"
    if inferred:
        kind = auto_kind(dtype, row_shape)
    if dtype.kind not in "biuf":
        raise InputError(
            f"{label} has dtype {dtype}, which cannot be a target; "
            "supported target dtypes are float16/32/64, integer and bool types"
        )
    if kind != "classes":
        return _other_targets(kind, dtype, shape, num_classes, eps, label)

    if row_shape not in ((), (1,)):
        raise InputError(
            f"{label} has shape {list(shape)}; class labels have shape (N,) or (N, 1) "
            "(one integer per row); for other shapes choose --y-kind multilabel or dense"
        )
    classes = None
    if num_classes is None:
        classes = find_classes(reader, key, shape[0], label)
        if not len(classes):
            raise InputError(f"{label} has no rows; there are no classes to encode")
        # Named classes (strings, categories, declared names): one column per name, the
        # last ones too when no row has them (column k is the k-th name).
        num_classes = max(int(classes[-1]) + 1, len(getattr(reader, "class_names", None) or ()))
        check_inferred_classes(label, num_classes, len(classes), shape[0], input_row_bytes)
        if inferred:
            check_identifiers(label, len(classes), shape[0], named=hasattr(reader, "class_names"))
    else:
        try:
            num_classes = int(num_classes)
        except (TypeError, ValueError):
            raise ParameterError(
                f"--num-classes must be an integer >= 1, got {num_classes!r}", "--num-classes"
            ) from None
        if num_classes < 1:
            raise ParameterError(f"--num-classes must be an integer >= 1, got {num_classes!r}", "--num-classes")
    return Targets("classes", np.dtype(np.float32), num_classes, classes, eps, label)


def check_identifiers(label: str, present: int, n_rows: int, named: bool = False) -> None:
    """Refuse labels that ``--y-kind auto`` would take as classes when every row
    has its own (``UNIQUE_LABEL_ROWS``); ``named``: string or categorical labels."""
    if present != n_rows or n_rows <= UNIQUE_LABEL_ROWS:
        return
    numbers = "" if named else ", --y-kind dense if they are numbers to mix"
    raise InputError(
        f"{label}: every one of its {n_rows} rows has a label of its own, so they identify rows rather than "
        f"name classes; pass the array of classes with --y-key{numbers}, or --no-y to mix x alone "
        "(--y-kind classes takes them as classes all the same)"
    )


def check_inferred_classes(
    label: str, num_classes: int, present: int, n_rows: int, input_row_bytes: int | None
) -> None:
    """Refuse classes found in the data that look like identifiers: more
    classes than rows, or a one-hot output many times the input."""
    one_hot_row = num_classes * np.dtype(np.float32).itemsize
    reason = None
    if num_classes > n_rows:
        reason = "more classes than rows"
    elif input_row_bytes and one_hot_row > ONE_HOT_FACTOR * input_row_bytes and one_hot_row * n_rows > ONE_HOT_FLOOR:
        reason = (
            f"one-hot rows of {one_hot_row} bytes would be {one_hot_row / input_row_bytes:.0f} times "
            f"the input's {input_row_bytes}-byte rows, {one_hot_row * n_rows / 2**20:.0f} MiB per copy"
        )
    if reason:
        raise InputError(
            f"{label}: labels up to {num_classes - 1} make {num_classes} classes ({present} present) "
            f"for {n_rows} rows: {reason}; if they are identifiers, not classes, pass --y-format pair "
            f"(kept as they are) or --y-kind dense (mixed as numbers); if they are classes, pass --num-classes"
        )


def find_classes(reader, key: str, n_rows: int, label: str, block_rows: int = SCAN_ROWS) -> tuple[int, ...]:
    """The sorted class labels present in ``key``, read ``block_rows`` rows at a time.

    A reader that already knows them (``classes_present(key)`` not None: a
    set's inputs, whose labels were read while they were checked) is not read."""
    known = getattr(reader, "classes_present", None)
    found_before = known(key) if known is not None else None
    if found_before is not None:
        return tuple(found_before)
    found: set[int] = set()
    for start in range(0, n_rows, block_rows):
        stopping.check()
        block = reader.read(key, start, min(n_rows, start + block_rows))
        found.update(block_classes(block, start, label).tolist())
    return tuple(sorted(found))


def block_classes(block: np.ndarray, first_row: int, label: str) -> np.ndarray:
    """The sorted unique class labels (int64) of a block of ``y``; InputError
    naming the first row whose label is not a whole number, or else the first
    negative one (``first_row``: the block's first row)."""
    labels = class_indices(block, first_row, label)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        row = row_number(first_row, int(negative[0]))
        raise InputError(f"{label} row {row} has label {int(labels[negative[0]])}; class labels must be >= 0")
    return np.unique(labels)


def wants_classes(dtype: np.dtype, row_shape: tuple[int, ...], kind: str = "auto") -> bool:
    """Whether targets of this dtype and row shape, under ``--y-kind kind``
    (without ``--num-classes``), are classes whose labels a pass must find."""
    if np.dtype(dtype).kind not in "biuf" or tuple(row_shape) not in ((), (1,)):
        return False
    return kind == "classes" or (kind == "auto" and auto_kind(dtype, row_shape) == "classes")


def class_indices(block: np.ndarray, first_row: int, label: str) -> np.ndarray:
    """Labels of a block as a flat int64 array (one per row); floats must be whole numbers."""
    flat = block.reshape(len(block))
    if flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{label} row {row_number(first_row, i)} has label {flat[i].item()}; class labels must be whole numbers"
            )
    return flat.astype(np.int64)


def one_hot(
    labels: np.ndarray,
    num_classes: int,
    smoothing: float = 0.0,
    first_row: int = 0,
    label: str = "y",
    dtype=np.float32,
) -> np.ndarray:
    """Rows of ``num_classes`` columns: ``on`` at the label, ``off`` elsewhere.

    With smoothing ``eps`` (timm's ``smooth_one_hot``): ``off = eps / C`` and
    ``on = 1 - eps + eps / C``, so each row still sums to 1. A label outside
    ``[0, C)`` is an error naming its row (``first_row`` + offset).
    """
    labels = np.asarray(labels).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{label} row {row_number(first_row, i)} has label {int(labels[i])}, outside [0, {num_classes}); "
            "check the data or --num-classes"
        )
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = np.full((len(labels), num_classes), off, dtype=dtype)
    out[np.arange(len(labels)), labels] = on
    return out


def check_zero_one(block: np.ndarray, first_row: int, label: str, kind: str) -> None:
    """Binary and multi-label targets hold only 0 and 1."""
    if block.dtype.kind == "b":
        return
    bad = (block != 0) & (block != 1)
    if bad.any():
        flat = bad.reshape(len(block), -1)
        row = int(np.flatnonzero(flat.any(axis=1))[0])
        value = block[row].reshape(-1)[int(np.flatnonzero(flat[row])[0])]
        hint = (
            "use --y-format pair to keep such targets as they are, or --y-kind dense to mix them as numbers"
            if block.dtype.kind in "iu"
            else "use --y-kind dense to mix them as numbers"
        )
        raise InputError(
            f"{label} row {row_number(first_row, row)} holds {value.item()}, but {KIND_NAMES[kind]} targets are 0 or 1; {hint}"
        )
