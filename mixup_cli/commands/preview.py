"""Pictures of what mixup and CutMix do, before running them on a dataset.

Drawn with matplotlib, the optional ``plot`` extra (``pip install
'mixup-cli[plot]'``), imported only when a picture is made. Figures are
``matplotlib.figure.Figure`` objects on the Agg canvas: no pyplot, no global
backend, no window.

- ``dataset_figure(preview_rows(IN, ...))``: rows of a dataset, each shown as
  its own input, its partner and the mixed result, exactly as ``mixup
  augment`` with the same options writes them (the first rows of the plan's
  first task: the same plan, the same keyed draws, the same per-task
  computation). Only the rows shown are read.
- ``identity_figure(n, alphas, seed)``: mixup applied to the ``n x n``
  identity matrix, one panel per alpha: how much each alpha blends.
- ``hist=True`` adds the histogram of lam for the alpha against the
  Beta(alpha, alpha) density.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixup_cli.core import beside
from mixup_cli.core.blend import check_alpha, mix_rows, sample_lam
from mixup_cli.core.errors import MixupError, OutputError, ParameterError
from mixup_cli.mixing import cutmix
from mixup_cli.mixing.sampling import check_positive, keyed_rng
from mixup_cli.record import atomic
from mixup_cli.run.prepared import DataOptions, pair_keys

INSTALL_HINT = "pip install 'mixup-cli[plot]'"
FORMATS = ("png", "svg", "pdf")
MAX_PANELS = 64
MAX_IDENTITY = 1024
IDENTITY_PIXELS = 128  # cells drawn across an identity panel at most
HIST_SAMPLES = 20_000
PANEL = 2.0  # inches per panel
# Key purpose of the preview's own draws (identity matrix, histogram); they
# never reach a dataset, so they only need to differ from one another.
_PREVIEW = 100


class PlotExtraMissing(MixupError):
    """matplotlib is not installed: a usage problem, solved by installing the extra."""

    exit_code = 2


def require_matplotlib():
    """``(Figure, FigureCanvasAgg)``, or an error that says which extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotExtraMissing(
            f"mixup preview draws with matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def pixel_size(fig, dpi: int) -> tuple[int, int]:
    """Width and height in pixels of ``fig`` saved at ``dpi``."""
    width, height = fig.get_size_inches()
    return int(round(width * dpi)), int(round(height * dpi))


# ----------------------------------------------------------------- parameters


def parse_alphas(text: str) -> list[float]:
    """``"0.1,0.3,0.5"``, or a range written ``"0.1,0.2,...,0.9"``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]

    def number(p):
        try:
            value = float(p)
        except ValueError:
            raise ParameterError(f"--alphas: {p!r} is not a number", "--alphas") from None
        if not math.isfinite(value) or value <= 0:
            raise ParameterError(f"--alphas: every alpha must be a finite number > 0, got {p}", "--alphas")
        return value

    if "..." in parts:
        if len(parts) != 4 or parts[2] != "...":
            raise ParameterError(f"--alphas: write a range as first,second,...,last, got {text!r}", "--alphas")
        first, second, last = number(parts[0]), number(parts[1]), number(parts[3])
        step = second - first
        count = (last - first) / step + 1 if step > 0 else 0
        if step <= 0 or count > MAX_PANELS or abs(count - round(count)) > 1e-6:
            raise ParameterError(
                f"--alphas: {text!r} is not an increasing range that ends on its last value", "--alphas"
            )
        alphas = [round(first + k * step, 10) for k in range(int(round(count)))]
    else:
        alphas = [number(p) for p in parts]
    if not alphas:
        raise ParameterError("--alphas: give at least one alpha, e.g. 0.1,0.2,...,0.9", "--alphas")
    if len(alphas) > MAX_PANELS:
        raise ParameterError(f"--alphas: at most {MAX_PANELS} panels, got {len(alphas)}", "--alphas")
    return alphas


def beta_pdf(x: np.ndarray, a: float, b: float | None = None) -> np.ndarray:
    """Density of Beta(a, b) on the open interval (0, 1), from ``math.lgamma``."""
    b = a if b is None else b
    x = np.asarray(x, dtype=np.float64)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - log_beta)


def check_output(output: Path, overwrite: bool) -> str:
    """The picture format of ``output``, or why it cannot be written."""
    output = Path(output)
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ParameterError(f"{output}: -o must end in .png, .svg or .pdf", "-o")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{output}: directory {parent} does not exist; create it first")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    return fmt


def save_figure(fig, output: Path, dpi: int = 100, overwrite: bool = False) -> Path:
    """Write ``fig`` beside ``output`` under a temporary name, then rename it into place."""
    output = Path(output)
    fmt = check_output(output, overwrite)
    tmp = atomic.partial_path(output)
    try:
        # A new file where nothing is: whatever sat at the temporary name (a
        # link) is removed, never written through.
        with os.fdopen(beside.create_file(tmp), "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi)
        atomic.commit(tmp, output, overwrite)
    except BaseException:
        atomic.remove(tmp)
        raise
    return output


# ------------------------------------------------------------------ histogram


def lam_sample(
    alpha: float,
    seed: int,
    method: str = "mixup",
    image_size: tuple[int, int] | None = None,
    size: int = HIST_SAMPLES,
    key: int = 0,
) -> np.ndarray:
    """lam as a run draws it: Beta(alpha, alpha), corrected to the box for CutMix."""
    rng = keyed_rng(seed, _PREVIEW, 2, key)
    lam = sample_lam(rng, alpha, size)
    if method == "cutmix":
        _, lam = cutmix.draw_boxes(rng, lam, *image_size)
    return lam


def draw_lam_hist(ax, alpha: float, lam: np.ndarray, label: str, compact: bool = False) -> None:
    heights, _, _ = ax.hist(
        lam, bins=50, range=(0, 1), density=True, color="#9ecae1", edgecolor="#6baed6", linewidth=0.4, label=label
    )
    xs = np.linspace(0.0005, 0.9995, 800)
    pdf = beta_pdf(xs, alpha)
    ax.plot(xs, pdf, color="#d62728", linewidth=1.4, label=f"Beta({alpha:g}, {alpha:g}) density")
    middle = pdf[(xs > 0.05) & (xs < 0.95)]
    ax.set_ylim(0, 1.15 * max(float(np.max(heights)), float(np.max(middle))))
    ax.set_xlim(0, 1)
    ax.set_xlabel("lam", fontsize=8)
    ax.tick_params(labelsize=7)
    if not compact:
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7, loc="upper center", frameon=False)


# ------------------------------------------------------------------- identity


def identity_figure(n: int, alphas, seed: int, hist: bool = False):
    """mixup of the ``n x n`` identity matrix (rows are samples), one panel per alpha.

    Every panel pairs row ``i`` with the same partner (one keyed permutation);
    only lam, drawn per alpha, differs. With ``hist``, each panel has the
    histogram of lam for its alpha below it.
    """
    if isinstance(alphas, str):
        alphas = parse_alphas(alphas)
    alphas = [check_alpha(a) for a in alphas]
    if not 2 <= int(n) <= MAX_IDENTITY:
        raise ParameterError(f"--identity must be between 2 and {MAX_IDENTITY}, got {n}", "--identity")
    n = int(n)
    k = len(alphas)
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    per_row = 2 if hist else 1
    fig = new_figure(cols * PANEL + 1.0, rows * PANEL * (1.75 if hist else 1) + 0.5)
    grid = fig.add_gridspec(rows * per_row, cols, height_ratios=[1, 0.75] * rows if hist else None)
    eye = np.eye(n)
    partner = keyed_rng(seed, _PREVIEW, 0).permutation(n)
    # A panel is about PANEL * 100 pixels: more cells than that and nearest
    # resampling drops most of the diagonal, so larger matrices are shown as
    # the maximum of each pool x pool block of cells.
    pool = math.ceil(n / IDENTITY_PIXELS)
    image_axes, image = [], None
    for i, alpha in enumerate(alphas):
        r, c = divmod(i, cols)
        lam = sample_lam(keyed_rng(seed, _PREVIEW, 1, i), alpha, n)
        mixed = _max_pooled(mix_rows(eye, eye[partner], lam), pool)
        ax = fig.add_subplot(grid[r * per_row, c])
        image = ax.imshow(
            mixed, vmin=0, vmax=1, cmap="viridis", interpolation="nearest", extent=(-0.5, n - 0.5, n - 0.5, -0.5)
        )
        ax.set_title(f"α = {alpha:g}", fontsize=10)
        ax.set_xticks([0, n - 1])
        ax.set_yticks([0, n - 1])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("class (column)", fontsize=8)
        ax.set_ylabel("sample (row)", fontsize=8)
        image_axes.append(ax)
        if hist:
            draw_lam_hist(
                fig.add_subplot(grid[r * per_row + 1, c]),
                alpha,
                lam_sample(alpha, seed, key=i),
                "lam drawn",
                compact=True,
            )
    fig.colorbar(image, ax=image_axes, shrink=0.8, label="value")
    title = f"mixup of the {n} x {n} identity matrix (seed {seed})"
    if pool > 1:
        title += f"\neach cell drawn: the largest value of {pool} x {pool}"
    if hist:
        title += f"\nbars: lam of {HIST_SAMPLES} draws; red line: Beta(α, α) density"
    fig.suptitle(title, fontsize=11)
    return fig


def _max_pooled(a: np.ndarray, pool: int) -> np.ndarray:
    """The maximum of every ``pool x pool`` block of ``a`` (edges padded with 0)."""
    if pool <= 1:
        return a
    n = -(-a.shape[0] // pool) * pool
    padded = np.zeros((n, n), a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return padded.reshape(n // pool, pool, n // pool, pool).max(axis=(1, 3))


# -------------------------------------------------------------------- dataset


@dataclass
class PreviewRows:
    """Rows of a dataset as ``mixup augment`` with the same options mixes them."""

    path: Path
    x_key: str
    y_key: str | None  # None: x alone (unlabelled data)
    method: str
    alpha: float
    seed: int
    layout: str | None  # how x is shown: NHW, NHWC, NCHW, or None (not an image: a line)
    rows: np.ndarray  # input row of each shown row
    out_rows: np.ndarray  # its output row in copy 0
    partner: np.ndarray  # input row of its partner
    lam: np.ndarray
    box: np.ndarray | None
    own: dict  # data key -> rows
    other: dict  # data key -> partner rows
    mixed: dict  # output array -> its rows as augment writes them (y_a, y_b for a pair)
    image_size: tuple[int, int] | None
    y_kind: str | None = None  # classes, binary, multilabel or dense (encoding.KINDS)
    paired: tuple[str, ...] = ()  # data keys written as KEY_a / KEY_b (--y-format pair)
    class_names: list | None = None  # names of the classes of string labels, by code
    pairing: str = "global"


def preview_rows(
    path: Path,
    *,
    x_key: str = "x",
    y_key: str | None = "y",
    require_y: bool = True,
    data: DataOptions | None = None,
    method: str = "mixup",
    alpha: float = 0.2,
    seed: int = 0,
    rows: int = 4,
    layout: str | None = None,
    block_rows: int | None = None,
    pairing: str = "global",
    neighbors: int | None = None,
    project: int | None = None,
    bandwidth: float | None = None,
    balance: bool = False,
    balance_to: int | None = None,
    groups: str | None = None,
    exclude_rows=None,
    neighbor_index: str | None = None,
) -> PreviewRows:
    """The first ``rows`` rows of the plan's first task of copy 0, mixed.

    The input is opened and the plan built as ``mixup augment`` does with the
    same keys, data options (``data``) and pairing parameters; then the rows
    are mixed by the same per-task computation (``tasks.compute_task``'s
    steps, for only the rows shown). Reads those rows and their partners,
    and what the plan itself needs (a pass over y for the class pairings,
    the index of knn and label-kernel).
    """
    from mixup_cli.mixing.sampling import CLASS_PAIRINGS
    from mixup_cli.run.planner import build_plan
    from mixup_cli.run.source import open_source

    check_alpha(alpha)
    rows = check_positive(rows, "--rows")
    if block_rows is not None:
        check_positive(block_rows, "--block-rows")
    path = Path(path)
    data = data or DataOptions()
    y_for = f"--pairing {pairing}" if pairing in CLASS_PAIRINGS else None
    source = open_source(path, x_key, y_key, data, require_y, y_for=y_for)
    try:
        plan = build_plan(
            source,
            alpha=alpha,
            seed=seed,
            x_key=x_key,
            y_key=y_key,
            pairing=pairing,
            block_rows=block_rows,
            method=method,
            layout=layout,
            neighbors=neighbors,
            project=project,
            bandwidth=bandwidth,
            balance=balance,
            balance_to=balance_to,
            groups=groups,
            exclude_rows=exclude_rows,
            neighbor_index=neighbor_index,
        )
        shown, task, mixer, own, other, mixed, provenance = _first_rows(source, plan, rows)
        x_shape = shown.specs[x_key].row_shape
        prepared = source.prepared
        k = task.stop - task.start
    finally:
        source.reader.close()
    if plan.method == "cutmix":
        shown_layout = plan.layout
    else:
        try:
            shown_layout = cutmix.resolve_layout(x_shape, layout)
        except ParameterError:
            shown_layout = None  # not an image: drawn as a line of values
    return PreviewRows(
        path=path,
        x_key=x_key,
        y_key=source.y_key,
        method=plan.method,
        alpha=plan.alpha,
        seed=int(plan.seed),
        layout=shown_layout,
        rows=provenance["own"] if "own" in provenance else np.arange(task.start, task.start + k),
        out_rows=task.out_start + np.arange(k),
        partner=provenance["partner"],
        lam=provenance["lam"],
        box=provenance.get("box"),
        own=own,
        other=other,
        mixed=mixed,
        image_size=mixer.image_size,
        y_kind=prepared.target_kind if prepared is not None else None,
        paired=tuple(source.paired_keys),
        class_names=getattr(prepared, "class_names", None) or None,
        pairing=plan.pairing,
    )


def _first_rows(source, plan, rows: int):
    """The first ``rows`` rows of the plan's first task of copy 0 as a task of
    their own: drawn for the whole block and mixed by the engines' own
    computation (``tasks.output_rows``), reading only those rows and partners."""
    from mixup_cli.mixing import balance
    from mixup_cli.mixing.mixer import Mixer
    from mixup_cli.mixing.sampling import Task
    from mixup_cli.run import tasks

    shown = balance.view(source, plan)  # a balanced plan's rows, read by index
    mixer = Mixer(plan, {key: shown.specs[key].row_shape for key in shown.mixed_keys})
    first = next(t for t in plan.tasks() if t.copy == 0)
    k = min(rows, first.stop - first.start)
    task = Task(first.copy, first.block, first.partner_block, first.start, first.start + k, first.out_start)
    drawn = tasks.draw(plan, mixer, task)
    own = {key: shown.reader.read(key, task.start, task.stop) for key in shown.specs}
    other = {key: shown.reader.take(key, drawn.partner) for key in shown.specs}
    written = tasks.output_rows(shown, mixer, tasks.TaskInput(task, drawn, own, other, np.arange(k)), 0, k)
    provenance = drawn.provenance(0, k)
    mixed = {key: value for key, value in written.items() if key not in provenance}
    return shown, task, mixer, own, other, mixed, provenance


def _as_image(row: np.ndarray, layout: str) -> np.ndarray:
    """A row as (H, W) or (H, W, 3) for imshow."""
    if layout == "NCHW":
        row = np.moveaxis(row, 0, -1)
    if row.ndim == 3:
        row = row[..., 0] if row.shape[-1] < 3 else row[..., :3]
    return row


def _label(y_row: np.ndarray | None, kind: str | None = None, names: list | None = None) -> str:
    """How a panel names a row's target: its class (by name for string
    labels), its set of labels (multi-label: the argmax of a multi-hot row
    means nothing), or its value. Nothing for a mask (drawn on its own)."""
    if y_row is None:
        return ""
    flat = np.asarray(y_row).ravel()

    def named(code: int) -> str:
        return f", class {names[code]}" if names and 0 <= code < len(names) else f", class {code}"

    if flat.size == 1:
        if kind == "classes" and flat.dtype.kind in "iu":  # a label kept as it is (--y-format pair)
            return named(int(flat[0]))
        return f", y = {float(flat[0]):.3g}"
    if np.asarray(y_row).ndim != 1 or kind == "dense":
        return ""
    if kind == "multilabel" or (kind is None and np.isin(flat, (0, 1)).all() and flat.sum() != 1):
        on = np.flatnonzero(flat).tolist()
        if not on:
            return ", no labels"
        shown = ", ".join(map(str, on[:6])) + (", ..." if len(on) > 6 else "")
        return f", labels {{{shown}}}"
    return named(int(np.argmax(flat)))


def _value_range(*arrays: np.ndarray, bytes_full: bool = True) -> tuple[float, float]:
    """The colour scale of panels: 0-255 for bytes (images), else the values' range."""
    if bytes_full and all(a.dtype == np.uint8 for a in arrays):
        return 0.0, 255.0
    shown = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    vmin, vmax = float(np.nanmin(shown)), float(np.nanmax(shown))
    return (vmin, vmin + 1.0) if not vmax > vmin else (vmin, vmax)


def _draw_row(ax, row: np.ndarray, layout: str | None, vmin: float, vmax: float, cmap: str = "gray") -> None:
    """One row in one panel: an image, or a line of values."""
    if layout is None:
        ax.plot(np.asarray(row, dtype=np.float64).ravel(), linewidth=1)
        ax.set_ylim(vmin - 0.05 * (vmax - vmin), vmax + 0.05 * (vmax - vmin))
        ax.tick_params(labelsize=7)
        return
    image = _as_image(row, layout)
    if image.ndim == 3:
        scaled = np.clip((image.astype(np.float64) - vmin) / (vmax - vmin), 0, 1)
        ax.imshow(scaled, interpolation="nearest")
    else:
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _mask_layout(row_shape: tuple[int, ...], x_layout: str | None) -> str | None:
    """How a target row that is itself an image (a segmentation mask) is
    drawn; None when y is a label or a vector (named in the titles)."""
    if len(row_shape) == 2:
        return "NHW"
    if len(row_shape) == 3:
        return x_layout if x_layout in ("NHWC", "NCHW") else "NHWC"
    return None


def dataset_figure(p: PreviewRows, hist: bool = False):
    """Each shown row: its input, its partner, and the result with lam in the
    title; a target that is an image (a mask) gets a line of its own below:
    the row's, the partner's, and the mixed one (or, with ``--y-format
    pair``, the two kept as they are)."""
    k = len(p.rows)
    y = p.y_key
    mask = _mask_layout(p.own[y].shape[1:], p.layout) if y is not None else None
    per_row = 2 if mask else 1
    fig = new_figure(3 * PANEL, k * per_row * PANEL + (1.5 * PANEL if hist else 0) + 0.5)
    grid = fig.add_gridspec(k * per_row + int(hist), 3, height_ratios=[1] * (k * per_row) + ([1.5] if hist else []))
    x_own, x_other, x_mixed = p.own[p.x_key], p.other[p.x_key], p.mixed[p.x_key]
    vmin, vmax = _value_range(x_own, x_other, x_mixed)
    paired = y in p.paired
    titled = y is not None and mask is None
    if mask:
        y_shown = [p.own[y], p.other[y]] + ([] if paired else [p.mixed[y]])
        y_min, y_max = _value_range(*y_shown, bytes_full=False)  # a mask's classes, not grey levels
    for i in range(k):
        panels = [
            (x_own[i], f"row {p.rows[i]}{_label(p.own[y][i], p.y_kind, p.class_names) if titled else ''}"),
            (x_other[i], f"partner {p.partner[i]}{_label(p.other[y][i], p.y_kind, p.class_names) if titled else ''}"),
            (x_mixed[i], f"{p.method}, lam = {p.lam[i]:.3f}"),
        ]
        for c, (row, title) in enumerate(panels):
            ax = fig.add_subplot(grid[i * per_row, c])
            ax.set_title(title, fontsize=9)
            _draw_row(ax, row, p.layout, vmin, vmax)
            if p.layout is not None and p.box is not None and c > 0:
                _draw_box(ax, p.box[i])
        if not mask:
            continue
        _mask_line(fig, grid, i * per_row + 1, p, i, mask, (y_min, y_max))
    if hist:
        _hist_panel(fig.add_subplot(grid[k * per_row, :]), p)
    fig.suptitle(f"{p.path.name}: {p.method}, alpha {p.alpha:g}, seed {p.seed}", fontsize=10)
    return fig


def _draw_box(ax, box) -> None:
    """CutMix's box on a panel, dashed."""
    from matplotlib.patches import Rectangle

    y0, x0, y1, x1 = (int(v) for v in box)
    if y1 > y0 and x1 > x0:
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#ff7f0e", linewidth=1.5, linestyle="--"
            )
        )


def _mask_line(fig, grid, line: int, p: PreviewRows, i: int, mask: str, value_range) -> None:
    """The masks of shown row ``i``: its own, its partner's, and the mixed one
    (or, with ``--y-format pair``, the two kept as they are)."""
    y, paired = p.y_key, p.y_key in p.paired
    y_min, y_max = value_range
    names = pair_keys(y) if paired else (y, y)
    masks = [(p.own[y][i], f"{names[0]} (row {p.rows[i]})"), (p.other[y][i], f"{names[1]} (partner {p.partner[i]})")]
    for c, (row, title) in enumerate(masks):
        ax = fig.add_subplot(grid[line, c])
        ax.set_title(title, fontsize=9)
        _draw_row(ax, row, mask, y_min, y_max, cmap="viridis")
    ax = fig.add_subplot(grid[line, 2])
    if paired:  # augment writes both targets as they are: nothing is mixed
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            f"{names[0]}, {names[1]} kept\nas they are,\nlam = {p.lam[i]:.3f}",
            ha="center",
            va="center",
            fontsize=9,
            transform=ax.transAxes,
        )
    else:
        ax.set_title(f"{y} mixed", fontsize=9)
        _draw_row(ax, p.mixed[y][i], mask, y_min, y_max, cmap="viridis")


def _hist_panel(ax, p: PreviewRows) -> None:
    """lam as drawn (CutMix: corrected to its box) against the Beta density."""
    lam = lam_sample(p.alpha, p.seed, p.method, p.image_size)
    if p.method == "cutmix":
        h, w = p.image_size
        label = f"lam corrected to the box ({h} x {w} images)"
    else:
        label = "lam drawn"
    draw_lam_hist(ax, p.alpha, lam, f"{label}, {len(lam)} draws")
