"""mixup preview: pictures rendered to real files and read back."""

import struct
import sys

import h5py
import numpy as np
import pytest
from conftest import SAMPLE_H5, examples, load_output, write_h5
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixup_cli.commands import preview
from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import ParameterError
from mixup_cli.run.prepared import DataOptions


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def png_size(path):
    """Width and height from the PNG header (signature, then the IHDR chunk)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def check_png(path, size):
    import matplotlib.image

    assert png_size(path) == size
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (size[1], size[0])
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 10, "the picture is (nearly) blank"
    assert not list(path.parent.glob(".*mixup-partial"))


def rgb_dataset(tmp_path, n=20):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 12, 10, 3)).astype(np.uint8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)]
    return write_h5(tmp_path / "rgb.h5", x=x, y=y)


@pytest.mark.slow
def test_dataset_grid_from_the_sample(run_cli, tmp_path, mpl):
    out = tmp_path / "grid.png"
    result = run_cli("preview", SAMPLE_H5, "-o", out, "--rows", 3, "--seed", 7, "--alpha", 0.4)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and "seed 7" in result.stderr
    check_png(out, (600, 3 * 200 + 50))


@pytest.mark.slow
def test_cutmix_grid_with_histogram(run_cli, tmp_path, mpl):
    out = tmp_path / "cutmix.png"
    result = run_cli(
        "preview",
        rgb_dataset(tmp_path),
        "-o",
        out,
        "--method",
        "cutmix",
        "--alpha",
        1,
        "--rows",
        2,
        "--hist",
        "--seed",
        1,
        "--dpi",
        50,
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    check_png(out, (300, (2 * 2 + 3 + 0.5) * 50))


@pytest.mark.slow
def test_mixup_of_feature_vectors_is_drawn_as_lines(tmp_path, mpl):
    x = np.random.default_rng(0).standard_normal((9, 16)).astype(np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, y=np.eye(3, dtype=np.float32)[np.arange(9) % 3])
    shown = preview.preview_rows(src, seed=3, rows=2)
    assert shown.layout is None
    fig = preview.dataset_figure(shown)
    assert sum(bool(ax.lines) for ax in fig.axes) == 6
    preview.save_figure(fig, tmp_path / "lines.png", dpi=40)
    check_png(tmp_path / "lines.png", (240, 180))


@pytest.mark.slow  # nine panels; test_existing_picture_is_kept_without_overwrite draws --identity fast
def test_identity_table(run_cli, tmp_path, mpl):
    out = tmp_path / "table.png"
    result = run_cli("preview", "--identity", 8, "--alphas", "0.1,0.2,...,0.9", "-o", out, "--seed", 2)
    assert result.exit_code == 0, result.stderr
    check_png(out, (700, 650))


@pytest.mark.slow
@pytest.mark.parametrize("hist", [False, True])
def test_identity_figure_has_one_panel_per_alpha(mpl, hist):
    alphas = preview.parse_alphas("0.1,0.2,...,0.9")
    fig = preview.identity_figure(10, alphas, seed=0, hist=hist)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 9
    assert [ax.get_title() for ax in panels] == [f"α = {a:g}" for a in alphas]
    for ax in panels:
        values = ax.images[0].get_array()
        assert values.shape == (10, 10)
        assert np.allclose(values.sum(axis=1), 1)  # mixup keeps each row's total
    assert sum(bool(ax.patches) for ax in fig.axes) == (9 if hist else 0)  # histogram bars


def test_preview_shows_what_augment_writes(tmp_path):
    src = rgb_dataset(tmp_path, n=30)
    for method in ("mixup", "cutmix"):
        out = tmp_path / f"{method}.h5"
        augment(AugmentRequest(src, out, alpha=0.8, seed=5, block_rows=8, method=method))
        written = load_output(out)
        shown = preview.preview_rows(src, method=method, alpha=0.8, seed=5, rows=5, block_rows=8)
        at = shown.out_rows
        assert np.array_equal(written["x"][at], shown.mixed["x"])
        assert np.array_equal(written["y"][at], shown.mixed["y"])
        assert np.array_equal(written["lam"][at], shown.lam)
        assert np.array_equal(written["partner"][at], shown.partner)
        if method == "cutmix":
            assert np.array_equal(written["box"][at], shown.box)


def test_preview_reads_only_the_rows_it_shows(tmp_path, monkeypatch):
    from mixup_cli.io import hdf5

    x = np.random.default_rng(0).random((500, 8, 8)).astype(np.float32)
    src = write_h5(tmp_path / "big.h5", x=x, y=np.eye(2, dtype=np.float32)[np.arange(500) % 2])
    rows_read = []
    read, take = hdf5.Reader.read, hdf5.Reader._take_sorted_unique

    def counting_read(self, key, start, stop):
        rows_read.append(stop - start)
        return read(self, key, start, stop)

    def counting_take(self, key, rows):
        rows_read.append(len(rows))
        return take(self, key, rows)

    monkeypatch.setattr(hdf5.Reader, "read", counting_read)
    monkeypatch.setattr(hdf5.Reader, "_take_sorted_unique", counting_take)
    preview.preview_rows(src, seed=1, rows=3)
    assert 0 < sum(rows_read) <= 2 * 2 * 3  # x and y: 3 rows and 3 partners each


def test_missing_matplotlib_names_the_extra(run_cli, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "grid.png"
    result = run_cli("preview", SAMPLE_H5, "-o", out)
    assert result.exit_code == 2
    assert "pip install 'mixup-cli[plot]'" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, code, pattern",
    [
        (["-o", "x.png"], 2, "either IN"),
        ([SAMPLE_H5, "--identity", "4", "-o", "x.png"], 2, "either IN"),
        (["--identity", "4", "--method", "cutmix", "-o", "x.png"], 2, "--method cutmix needs images"),
        (["--identity", "4", "--alphas", "0.1,0,0.3", "-o", "x.png"], 2, "--alphas"),
        (["--identity", "4", "--alphas", "0.1,...,0.9", "-o", "x.png"], 2, "--alphas"),
        (["--identity", "1", "-o", "x.png"], 2, "--identity"),
        (["--identity", "4", "-o", "x.jpg"], 2, "-o must end in .png"),
        ([SAMPLE_H5, "--method", "cutmix", "--x-key", "y", "--y-key", "x", "-o", "x.png"], 2, "needs images"),
    ],
)
def test_refused_previews(run_cli, tmp_path, monkeypatch, mpl, args, code, pattern):
    monkeypatch.chdir(tmp_path)
    result = run_cli("preview", *args)
    assert result.exit_code == code, result.output
    assert pattern in result.stderr
    assert not list(tmp_path.iterdir())


def test_existing_picture_is_kept_without_overwrite(run_cli, tmp_path, mpl):
    out = tmp_path / "table.png"
    out.write_bytes(b"keep")
    result = run_cli("preview", "--identity", 4, "--alphas", "0.5", "-o", out)
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep"
    result = run_cli("preview", "--identity", 4, "--alphas", "0.5", "-o", out, "--overwrite", "--dpi", 40)
    assert result.exit_code == 0, result.stderr
    assert png_size(out) == (120, 100)


def test_parse_alphas():
    assert preview.parse_alphas("0.1,0.2,...,0.9") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert preview.parse_alphas("0.5, 1, 2") == [0.5, 1.0, 2.0]
    assert preview.parse_alphas("1,2,...,4") == [1, 2, 3, 4]
    for bad in ("", "a", "0.2,0.1,...,0.9", "0.1,0.2,...,0.95", "-1", "inf"):
        with pytest.raises(ParameterError):
            preview.parse_alphas(bad)


@pytest.mark.parametrize("alpha", [0.1, 0.4, 1.0, 2.5])
def test_beta_density_matches_scipy(alpha):
    stats = pytest.importorskip("scipy.stats")
    xs = np.linspace(0.01, 0.99, 50)
    assert np.allclose(preview.beta_pdf(xs, alpha), stats.beta.pdf(xs, alpha, alpha), rtol=1e-10)


# ------------------------------------------- any file augment mixes, preview shows


def _masks(tmp_path, n=30):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (n, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 5, (n, 8, 8)).astype(np.uint8)  # a class per pixel
    return write_h5(tmp_path / "masks.h5", x=x, y=y)


def _unlabelled(tmp_path, n=30):
    x = np.random.default_rng(4).standard_normal((n, 6)).astype(np.float32)
    return write_h5(tmp_path / "unlabelled.h5", x=x)


def _classes(tmp_path, n=30):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = np.array([0] * 4 + [1] * 10 + [2] * 16, dtype=np.int64)[rng.permutation(n)]
    return write_h5(tmp_path / "classes.h5", x=x, y=y)


def _names(tmp_path, n=30):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (n, 6, 6)).astype(np.uint8)
    y = np.array(["cat", "dog", "owl"], dtype="S3")[rng.integers(0, 3, n)]
    return write_h5(tmp_path / "names.h5", x=x, y=y)


def _regression(tmp_path, n=30):
    rng = np.random.default_rng(7)
    return write_h5(
        tmp_path / "regression.h5",
        x=rng.standard_normal((n, 4)).astype(np.float32),
        y=rng.standard_normal(n).astype(np.float32),
    )


SHOWN_CASES = {
    "masks as pairs": (_masks, ["--y-format", "pair"]),
    "masks as pairs, cutmix": (_masks, ["--y-format", "pair", "--method", "cutmix", "--alpha", "1"]),
    "masks mixed as numbers, cutmix": (_masks, ["--y-kind", "dense", "--method", "cutmix", "--alpha", "1"]),
    "unlabelled": (_unlabelled, []),
    "labels left out": (_classes, ["--no-y"]),
    "within-class": (_classes, ["--pairing", "within-class"]),
    "between-class, balanced": (_classes, ["--pairing", "between-class", "--balance"]),
    "knn": (_classes, ["--pairing", "knn", "--neighbors", "3"]),
    "string labels, within-class": (_names, ["--pairing", "within-class", "--label-smoothing", "0.1"]),
    "string labels as pairs": (_names, ["--y-format", "pair"]),
    "x as float32": (_names, ["--x-dtype", "float32"]),
    "label-kernel": (_regression, ["--pairing", "label-kernel", "--bandwidth", "0.5"]),
}


# The fast suite: pairs and CutMix's boxes, a balanced class pairing, a converted x.
FAST_SHOWN = {"masks as pairs, cutmix", "between-class, balanced", "x as float32"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c in FAST_SHOWN else pytest.mark.slow) for c in SHOWN_CASES]
)
def test_preview_shows_what_augment_writes_for_any_input(run_cli, tmp_path, monkeypatch, mpl, case):
    make, args = SHOWN_CASES[case]
    src = make(tmp_path)
    common = [*args, "--seed", 5, "--block-rows", 8]
    shown = []
    figure = preview.dataset_figure
    monkeypatch.setattr(preview, "dataset_figure", lambda p, hist=False: shown.append(p) or figure(p, hist))
    picture = tmp_path / "shown.png"
    result = run_cli("preview", src, "-o", picture, "--rows", 3, "--dpi", 25, *common)
    assert result.exit_code == 0, result.stderr
    check_png(picture, png_size(picture))
    result = run_cli("augment", src, tmp_path / "out.h5", *common, "--quiet")
    assert result.exit_code == 0, result.stderr
    (p,) = shown
    with h5py.File(tmp_path / "out.h5", "r") as f:
        written = {key: f[key][()] for key in f}
    at = p.out_rows
    assert len(at) == 3
    provenance = {"lam": p.lam, "partner": p.partner}
    if p.box is not None:
        provenance["box"] = p.box
    if "--balance" in args:
        provenance["own"] = p.rows
    else:
        assert np.array_equal(p.rows, at)  # copy 0, first block: output row i is input row i
    assert set(written) == set(p.mixed) | set(provenance)  # every array augment writes is shown
    for key, rows in {**p.mixed, **provenance}.items():
        assert rows.dtype == written[key].dtype, key
        assert np.array_equal(written[key][at], rows, equal_nan=rows.dtype.kind == "f"), key


@pytest.mark.slow
def test_mask_preview_draws_the_masks_below_their_rows(tmp_path, mpl):
    src = _masks(tmp_path)
    shown = preview.preview_rows(src, seed=2, rows=3, data=DataOptions(y_format="pair"))
    assert shown.paired == ("y",) and set(shown.mixed) == {"x", "y_a", "y_b"}
    fig = preview.dataset_figure(shown)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 3 * 5  # x: row, partner, mixed; the masks y_a and y_b
    assert titles[3:5] == [f"y_a (row {shown.rows[0]})", f"y_b (partner {shown.partner[0]})"]
    kept = [ax for ax in fig.axes if ax.texts]
    assert len(kept) == 3 and "kept" in kept[0].texts[0].get_text()


def test_string_labels_are_named_in_the_titles(tmp_path, mpl):
    src = _names(tmp_path)
    shown = preview.preview_rows(src, seed=2, rows=4)
    assert shown.class_names == ["cat", "dog", "owl"]
    with h5py.File(src, "r") as f:
        y = f["y"][()].astype(str)
    fig = preview.dataset_figure(shown)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("row ")]
    assert titles == [f"row {r}, class {y[r]}" for r in shown.rows]


@pytest.mark.slow
def test_the_mask_message_names_an_option_preview_takes(run_cli, tmp_path, mpl):
    """Soft targets of masks are refused by augment and preview alike, with a
    message that suggests --y-format pair; preview takes it and then works."""
    src = _masks(tmp_path)
    refused = run_cli("augment", src, tmp_path / "out.h5", "--seed", 1)
    result = run_cli("preview", src, "-o", tmp_path / "m.png", "--seed", 1)
    assert result.exit_code == refused.exit_code == 1
    assert result.stderr == refused.stderr and "--y-format pair" in result.stderr
    assert "--y-format" in run_cli("preview", "--help").stdout
    result = run_cli("preview", src, "-o", tmp_path / "m.png", "--seed", 1, "--y-format", "pair")
    assert result.exit_code == 0, result.stderr
    assert "--y-format" not in result.stderr


@pytest.mark.slow
def test_unlabelled_preview_says_x_is_shown_alone(run_cli, tmp_path, mpl):
    result = run_cli("preview", _unlabelled(tmp_path), "-o", tmp_path / "u.png", "--seed", 1)
    assert result.exit_code == 0, result.stderr
    assert "has no 'y': mixing 'x' alone" in result.stderr
    result = run_cli("preview", _unlabelled(tmp_path), "-o", tmp_path / "v.png", "--y-key", "y")
    assert result.exit_code == 1 and "no array 'y'" in result.stderr  # asked for: an error, as for augment


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32),
    alpha=st.sampled_from([0.2, 1.0, 3.0]),
    block_rows=st.integers(3, 40),
    rows=st.integers(1, 12),
    pairing=st.sampled_from(["global", "batch", "within-class", "between-class"]),
    y_format=st.sampled_from(["soft", "pair"]),
    balance=st.booleans(),
)
def test_preview_rows_are_the_rows_augment_writes(
    tmp_path_factory, seed, alpha, block_rows, rows, pairing, y_format, balance
):
    directory = tmp_path_factory.mktemp("shown")
    src = _classes(directory)
    out = directory / "out.h5"
    data = DataOptions(y_format=y_format)
    run = dict(alpha=alpha, seed=seed, block_rows=block_rows, pairing=pairing, balance=balance)
    augment(AugmentRequest(src, out, **run, y_format=y_format, command_line=[]))
    shown = preview.preview_rows(src, data=data, rows=rows, **run)
    with h5py.File(out, "r") as f:
        at = shown.out_rows
        # The first rows of copy 0's first task: a block's start (global pairing
        # visits blocks in a cycle, so the block may be the short last one).
        n = f["lam"].shape[0]
        assert at[0] % block_rows == 0 and np.array_equal(at, at[0] + np.arange(len(at)))
        assert len(at) == min(rows, block_rows, n - at[0])
        for key, values in shown.mixed.items():
            assert np.array_equal(f[key][at], values), key
        assert np.array_equal(f["partner"][at], shown.partner)
        assert np.array_equal(f["lam"][at], shown.lam)
        assert np.array_equal(f["own"][at] if balance else at, shown.rows)
