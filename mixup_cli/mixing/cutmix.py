"""Pure array math for CutMix (Yun et al. 2019, arXiv 1905.04899): no I/O.

For output row ``i`` with drawn weight ``lam_i ~ Beta(alpha, alpha)`` and
partner row ``j``, a box of about ``sqrt(1 - lam_i)`` of the image's height
and width, centred on a uniformly drawn pixel and clipped to the image, is
cut from ``x[j]`` and pasted into ``x[i]``::

    cut_h = floor(H * sqrt(1 - lam_i))      cut_w = floor(W * sqrt(1 - lam_i))
    cy ~ U{0..H-1}                          cx ~ U{0..W-1}
    y0 = clip(cy - cut_h // 2, 0, H)        y1 = clip(cy - cut_h // 2 + cut_h, 0, H)
    x0 = clip(cx - cut_w // 2, 0, W)        x1 = clip(cx - cut_w // 2 + cut_w, 0, W)

    x_out[i] = x[i], with x_out[i][y0:y1, x0:x1] = x[j][y0:y1, x0:x1]
    lam_i   <- 1 - (y1 - y0) * (x1 - x0) / (H * W)     (the corrected lam)

Targets are mixed with the corrected lam, except dense targets with the
image's spatial shape (segmentation masks), which get the same box pasted.
Pixels are copied, never computed, so every dtype is kept exactly.

Boxes are ``int64`` arrays of shape ``(rows, 4)``: ``y0, x0, y1, x1``
(half-open, in pixels). An empty box (``y0 == y1`` or ``x0 == x1``) leaves
the row as it is, with ``lam = 1``.
"""

from __future__ import annotations

import numpy as np

from mixup_cli.core.blend import check_alpha, mix_rows, sample_lam
from mixup_cli.core.errors import ParameterError

# Accepted by --layout; "NHW" is what a grayscale (N, H, W) array resolves to.
LAYOUTS = ("NHWC", "NCHW")
GRAYSCALE = "NHW"
# Channel counts that make a layout unambiguous when only one side has one.
CHANNEL_COUNTS = (1, 3, 4)
_SPATIAL_AXES = {"NHW": (0, 1), "NHWC": (0, 1), "NCHW": (1, 2)}  # of a row (no sample axis)


def _shape_text(row_shape) -> str:
    return "(N, " + ", ".join(str(d) for d in row_shape) + ")"


def resolve_layout(row_shape: tuple[int, ...], layout: str | None = None, where: str = "x") -> str:
    """The layout of image rows of shape ``row_shape``: NHW, NHWC or NCHW.

    ``(N, H, W)`` is grayscale whatever ``layout`` says. For rank-4 arrays
    ``layout`` decides; without it the layout is inferred only when exactly
    one of the first and last row axes has 1, 3 or 4 entries, the channel
    counts of grayscale, RGB and RGBA. Anything else raises a
    ``ParameterError`` that names ``--layout`` (or ``--method`` for arrays
    that are not images at all). ``where`` names the array in messages.
    """
    row_shape = tuple(int(d) for d in row_shape)
    # NHW: what a grayscale array resolved to, as a sidecar records it (verify rebuilds the plan from it)
    if layout is not None and layout not in LAYOUTS + (GRAYSCALE,):
        raise ParameterError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}", "--layout")
    if len(row_shape) == 2:
        return GRAYSCALE
    if layout == GRAYSCALE:
        raise ParameterError(
            f"{where} has shape {_shape_text(row_shape)}; layout NHW is for grayscale (N, H, W) images", "--layout"
        )
    if len(row_shape) != 3:
        raise ParameterError(
            f"{where} has shape {_shape_text(row_shape)}; --method cutmix needs images: "
            "(N, H, W), (N, H, W, C) or (N, C, H, W)",
            "--method",
        )
    if layout is not None:
        return layout
    last, first = row_shape[2] in CHANNEL_COUNTS, row_shape[0] in CHANNEL_COUNTS
    if last != first:
        return "NHWC" if last else "NCHW"
    raise ParameterError(
        f"{where} has shape {_shape_text(row_shape)}: cannot tell which axis holds the channels; "
        "pass --layout NHWC or --layout NCHW",
        "--layout",
    )


def image_size(row_shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """``(H, W)`` of image rows of the given shape and resolved layout."""
    if layout not in _SPATIAL_AXES:
        raise ParameterError(f"unknown layout {layout!r}", "--layout")
    if len(row_shape) != (2 if layout == GRAYSCALE else 3):
        raise ParameterError(f"rows of shape {_shape_text(row_shape)} do not have layout {layout}", "--layout")
    h_axis, w_axis = _SPATIAL_AXES[layout]
    height, width = int(row_shape[h_axis]), int(row_shape[w_axis])
    if height < 1 or width < 1:
        raise ParameterError(f"images of shape {_shape_text(row_shape)} have no pixels to cut", "--method")
    return height, width


def image_axes(layout: str) -> tuple[int, int]:
    """Row axes (no sample axis) of height and width for a resolved layout."""
    return _SPATIAL_AXES[layout]


def spatial_axes(row_shape: tuple[int, ...], layout: str, size: tuple[int, int]) -> tuple[int, int] | None:
    """Row axes ``(h, w)`` of an array whose rows carry the image's spatial shape ``size``.

    Rows of rank 2 must equal ``size``; rows of rank 3 have it where the
    layout puts it (channels last for NHWC, first for NCHW; for grayscale
    images, leading axes first, then trailing). None when the rows are not
    dense in that sense (class vectors, anything else): those are blended.
    """
    row_shape = tuple(int(d) for d in row_shape)
    if len(row_shape) == 2:
        return (0, 1) if row_shape == tuple(size) else None
    if len(row_shape) != 3:
        return None
    leading, trailing = row_shape[:2] == tuple(size), row_shape[1:] == tuple(size)
    if layout == "NCHW":
        return (1, 2) if trailing else None
    if layout == "NHWC":
        return (0, 1) if leading else None
    return (0, 1) if leading else (1, 2) if trailing else None


def draw_boxes(rng: np.random.Generator, lam: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One box per ``lam``, and the lam corrected to the box's area.

    Draws from ``rng`` exactly ``2 * len(lam)`` integers: all centre rows,
    then all centre columns. Returns ``(box, lam)``: ``box`` int64 of shape
    ``(n, 4)`` as ``y0, x0, y1, x1``; ``lam`` float64, ``1 - area / (H * W)``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    n = lam.shape[0]
    cy = rng.integers(0, height, size=n, dtype=np.int64)
    cx = rng.integers(0, width, size=n, dtype=np.int64)
    ratio = np.sqrt(np.clip(1.0 - lam, 0.0, 1.0))
    cut_h = np.floor(height * ratio).astype(np.int64)
    cut_w = np.floor(width * ratio).astype(np.int64)
    y0 = cy - cut_h // 2
    x0 = cx - cut_w // 2
    box = np.stack(
        [np.clip(y0, 0, height), np.clip(x0, 0, width), np.clip(y0 + cut_h, 0, height), np.clip(x0 + cut_w, 0, width)],
        axis=1,
    ).astype(np.int64)
    return box, box_lam(box, height, width)


def box_lam(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """The share of each row's own pixels left outside its box: ``1 - area / (H * W)``."""
    box = np.asarray(box, dtype=np.int64).reshape(-1, 4)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    return 1.0 - area / float(height * width)


def box_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean ``(n, H, W)``: True inside each row's box."""
    box = np.asarray(box, dtype=np.int64).reshape(-1, 4)
    rows = np.arange(height)
    cols = np.arange(width)
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 2:3])  # (n, H)
    in_cols = (cols >= box[:, 1:2]) & (cols < box[:, 3:4])  # (n, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def paste(
    a: np.ndarray, b: np.ndarray, box: np.ndarray, axes: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """Row ``i`` of ``a`` with row ``i`` of ``b`` pasted inside ``box[i]``.

    ``a`` and ``b`` have the same shape (rows first) and dtype; ``axes`` are
    the row axes (no sample axis) of height and width, consecutive. Values
    are copied, so the result equals ``a`` or ``b`` bit for bit everywhere.
    """
    if a.shape != b.shape:
        raise ValueError(f"row blocks differ in shape: {a.shape} vs {b.shape}")
    if box.shape != (a.shape[0], 4):
        raise ValueError(f"box has shape {box.shape}, expected ({a.shape[0]}, 4)")
    h_axis, w_axis = 1 + axes[0], 1 + axes[1]
    if w_axis != h_axis + 1:
        raise ValueError(f"height and width axes must be consecutive, got {axes}")
    if out is None:
        out = np.empty(a.shape, dtype=a.dtype)
    height, width = a.shape[h_axis], a.shape[w_axis]
    shape = [a.shape[0]] + [1] * (a.ndim - 1)
    shape[h_axis], shape[w_axis] = height, width
    mask = box_mask(box, height, width).reshape(shape)
    np.copyto(out, a)
    np.copyto(out, b, where=mask)
    return out


def cutmix(
    x: np.ndarray,
    y: np.ndarray | None = None,
    alpha: float = 1.0,
    rng: np.random.Generator | int | None = None,
    layout: str | None = None,
):
    """CutMix an in-memory batch, pairing each row with a random row of the batch.

    The in-memory counterpart of ``mixup augment --method cutmix`` for one
    block. Returns ``(x_mixed, y_mixed, lam, partner, box)`` with ``lam``
    corrected to the pasted area; ``y`` with the image's spatial shape gets
    the box pasted, other ``y`` is mixed with ``lam``.
    """
    alpha = check_alpha(alpha)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    x = np.asarray(x)
    layout = resolve_layout(x.shape[1:], layout)
    height, width = image_size(x.shape[1:], layout)
    n = x.shape[0]
    lam = sample_lam(rng, alpha, n)
    partner = rng.permutation(n).astype(np.int64)
    box, lam = draw_boxes(rng, lam, height, width)
    x_mixed = paste(x, x[partner], box, image_axes(layout))
    y_mixed = None
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
        axes = spatial_axes(y.shape[1:], layout, (height, width))
        y_mixed = mix_rows(y, y[partner], lam) if axes is None else paste(y, y[partner], box, axes)
    return x_mixed, y_mixed, lam, partner, box
