"""CutMix: every output row checked pixel by pixel against its recorded box."""

import h5py
import numpy as np
import pytest
from conftest import expected_mix, load_output, make_arrays, read_sidecar, write_h5, write_npy_dir, write_npz

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import ParameterError
from mixup_cli.io import open_reader
from mixup_cli.mixing import cutmix
from mixup_cli.mixing.mixer import Mixer
from mixup_cli.mixing.sampling import Plan

H, W = 6, 7


def make_images(n, layout, dtype, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    shape = {"NHWC": (n, H, W, channels), "NCHW": (n, channels, H, W), "NHW": (n, H, W)}[layout]
    if np.dtype(dtype).kind == "u":
        x = rng.integers(0, 256, shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    return x, y


def spatial_view(arr, layout):
    """Rows as (n, H, W, ...) whatever the layout, for box indexing."""
    return np.moveaxis(arr, 1, -1) if layout == "NCHW" else arr


def check_boxes(out, x, layout):
    box, lam, partner = out["box"], out["lam"], out["partner"]
    assert box.dtype == np.int64 and box.shape == (len(x), 4)
    assert np.all((box[:, 0] <= box[:, 2]) & (box[:, 1] <= box[:, 3]))
    assert box[:, :2].min() >= 0 and box[:, 2].max() <= H and box[:, 3].max() <= W
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    assert np.array_equal(lam, 1 - area / (H * W))
    got, own, other = (spatial_view(a, layout) for a in (out["x"], x, x[partner]))
    assert out["x"].dtype == x.dtype
    for i, (y0, x0, y1, x1) in enumerate(box):
        inside = np.zeros((H, W), bool)
        inside[y0:y1, x0:x1] = True
        assert np.array_equal(got[i][inside], other[i][inside]), f"row {i}: inside the box"
        assert np.array_equal(got[i][~inside], own[i][~inside]), f"row {i}: outside the box"


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rows_match_the_recorded_box(tmp_path, layout, dtype):
    x, y = make_images(37, layout, dtype)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, alpha=1.0, seed=4, batch_size=5, block_rows=8, method="cutmix"))
    result = load_output(out)
    check_boxes(result, x, layout)
    # targets are blended with the corrected lam
    assert np.array_equal(result["y"], expected_mix(y, result["lam"], result["partner"]))
    # some boxes are real cuts, some rows keep more than half of themselves
    area = (result["box"][:, 2] - result["box"][:, 0]) * (result["box"][:, 3] - result["box"][:, 1])
    assert (area > 0).sum() > 20
    params = read_sidecar(out)["parameters"]
    assert params["method"] == "cutmix" and params["layout"] == layout


def test_segmentation_masks_get_the_same_box(tmp_path):
    rng = np.random.default_rng(1)
    x, _ = make_images(23, "NCHW", np.float32)
    mask = rng.integers(0, 2, (23, 4, H, W)).astype(np.float32)  # one-hot-ish per class, NCHW like x
    src = write_npz(tmp_path / "in.npz", x=x, y=mask)
    augment(AugmentRequest(src, tmp_path / "out.h5", alpha=0.5, seed=2, batch_size=4, block_rows=16, method="cutmix"))
    out = load_output(tmp_path / "out.h5")
    check_boxes(out, x, "NCHW")
    # the mask is pasted, not blended: every value stays a 0 or a 1 ...
    assert set(np.unique(out["y"])) <= {0.0, 1.0}
    # ... and is exactly the pasted partner mask
    check_boxes({**out, "x": out["y"]}, mask, "NCHW")


def test_grayscale_mask_beside_rgb_images(tmp_path):
    rng = np.random.default_rng(2)
    x, _ = make_images(19, "NHWC", np.uint8)
    mask = rng.random((19, H, W)).astype(np.float32)
    src = write_npy_dir(tmp_path / "in", x=x, y=mask)
    augment(AugmentRequest(src, tmp_path / "out", alpha=1.0, seed=3, method="cutmix"))
    out = load_output(tmp_path / "out")
    check_boxes(out, x, "NHWC")
    check_boxes({**out, "x": out["y"]}, mask, "NHW")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "npz", "npydir"])
def test_output_bytes_do_not_depend_on_batch_size(tmp_path, fmt):
    x, y = make_images(41, "NHWC", np.uint8)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    names = {"h5": "{}.h5", "npz": "{}.npz", "npydir": "{}"}[fmt]
    outs = []
    for batch in (1, 3, 1000):
        out = tmp_path / names.format(f"b{batch}")
        augment(
            AugmentRequest(
                src,
                out,
                alpha=0.3,
                seed=9,
                batch_size=batch,
                block_rows=16,
                copies=2,
                include_original=True,
                method="cutmix",
            )
        )
        outs.append(load_output(out))
    for other in outs[1:]:
        assert other.keys() == outs[0].keys()
        for key in outs[0]:
            assert other[key].tobytes() == outs[0][key].tobytes(), key
    first = outs[0]
    assert np.array_equal(first["box"][:41], np.zeros((41, 4)))  # the originals: no box, lam 1
    assert np.array_equal(first["x"][:41], x) and np.all(first["lam"][:41] == 1)


def test_output_is_recomputed_from_the_sidecar_parameters(tmp_path):
    """What a check of the output does: rebuild the plan from the sidecar and
    run the same per-task computation over the input."""
    x, y = make_images(45, "NCHW", np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, alpha=0.7, seed=12, block_rows=8, copies=2, method="cutmix", layout="NCHW"))
    params = read_sidecar(out)["parameters"]
    fields = ("alpha", "seed", "block_rows", "pairing", "copies", "include_original", "method", "layout")
    plan = Plan(n_rows=len(x), **{k: params[k] for k in fields})
    mixer = Mixer(plan, {"x": x.shape[1:], "y": y.shape[1:]})
    got = load_output(out)
    with open_reader(src) as reader:
        for task in plan.tasks():
            drawn = mixer.draw(task)
            rows = slice(task.out_start, task.out_start + task.stop - task.start)
            for name, values in drawn.provenance().items():
                assert np.array_equal(got[name][rows], values)
            for key in ("x", "y"):
                own = reader.read(key, task.start, task.stop)
                mixed = mixer.mix(key, own, reader.take(key, drawn.partner), drawn, 0, len(own))
                assert np.array_equal(got[key][rows], mixed)


def test_cutmix_pairs_rows_like_mixup(tmp_path):
    x, y = make_images(30, "NHW", np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    for method in ("mixup", "cutmix"):
        augment(AugmentRequest(src, tmp_path / f"{method}.h5", seed=5, block_rows=8, method=method))
    a, b = load_output(tmp_path / "mixup.h5"), load_output(tmp_path / "cutmix.h5")
    assert np.array_equal(a["partner"], b["partner"])
    assert "box" not in a and "method" in read_sidecar(tmp_path / "mixup.h5")["parameters"]


def test_ambiguous_layout_asks_for_layout(run_cli, tmp_path):
    x = np.zeros((6, 3, 5, 3), np.float32)
    _, y = make_arrays(n=6)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5", "--method", "cutmix")
    assert result.exit_code == 2
    assert "--layout" in result.stderr and "'x'" in result.stderr and "(N, 3, 5, 3)" in result.stderr
    assert not (tmp_path / "out.h5").exists()
    ok = run_cli("augment", src, tmp_path / "out.h5", "--method", "cutmix", "--layout", "NHWC", "--quiet")
    assert ok.exit_code == 0, ok.stderr
    assert read_sidecar(tmp_path / "out.h5")["parameters"]["layout"] == "NHWC"


@pytest.mark.parametrize("shape", [(10,), (4, 5, 6, 2), ()])
def test_non_image_x_is_refused_for_cutmix(run_cli, tmp_path, shape):
    x, y = make_arrays(n=6, x_shape=shape)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5", "--method", "cutmix")
    assert result.exit_code == 2
    assert "--method cutmix needs images" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    "row_shape, layout, expected",
    [
        ((28, 28), None, "NHW"),
        ((28, 28), "NCHW", "NHW"),
        ((28, 28), "NHW", "NHW"),  # as a sidecar records a grayscale layout
        ((32, 32, 3), None, "NHWC"),
        ((3, 32, 32), None, "NCHW"),
        ((1, 28, 28), None, "NCHW"),
        ((28, 28, 4), None, "NHWC"),
        ((3, 32, 3), "NCHW", "NCHW"),
        ((16, 16, 7), "NHWC", "NHWC"),
    ],
)
def test_layout_resolution(row_shape, layout, expected):
    assert cutmix.resolve_layout(row_shape, layout) == expected


@pytest.mark.parametrize("row_shape", [(3, 32, 3), (1, 8, 1), (5, 6, 7)])
def test_layout_is_never_guessed(row_shape):
    with pytest.raises(ParameterError, match="--layout") as info:
        cutmix.resolve_layout(row_shape)
    assert info.value.option == "--layout"
    with pytest.raises(ParameterError, match="NHW is for grayscale") as info:
        cutmix.resolve_layout(row_shape, "NHW")
    assert info.value.option == "--layout"


def test_draw_boxes_follows_the_paper():
    rng = np.random.default_rng(0)
    lam = np.concatenate([[1.0, 0.0, 0.75], rng.beta(1.0, 1.0, 2000)])
    box, corrected = cutmix.draw_boxes(np.random.default_rng(1), lam, 32, 40)
    assert np.array_equal(corrected, cutmix.box_lam(box, 32, 40))
    assert box[0, 2] == box[0, 0] or box[0, 3] == box[0, 1]  # lam 1: nothing pasted
    assert corrected[0] == 1.0
    heights, widths = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    cut_h = np.floor(32 * np.sqrt(1 - lam)).astype(int)
    cut_w = np.floor(40 * np.sqrt(1 - lam)).astype(int)
    assert np.all(heights <= cut_h) and np.all(widths <= cut_w)  # clipping only shrinks
    assert heights[1] > 0 and widths[1] > 0 and corrected[1] < 0.76  # lam 0: at least a quarter of the image
    # on average the corrected lam stays close to the drawn one (clipping biases it upward)
    assert 0 < corrected.mean() - lam.mean() < 0.2


def test_in_memory_cutmix():
    x, y = make_images(12, "NHWC", np.float32)
    x_m, y_m, lam, partner, box = cutmix.cutmix(x, y, alpha=1.0, rng=3)
    check_boxes({"x": x_m, "lam": lam, "partner": partner, "box": box}, x, "NHWC")
    assert np.array_equal(y_m, expected_mix(y, lam, partner))
    again = cutmix.cutmix(x, y, alpha=1.0, rng=np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(again, (x_m, y_m, lam, partner, box)))


def test_box_is_reserved_for_cutmix_provenance(run_cli, tmp_path):
    x, _ = make_images(5, "NHW", np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, box=np.eye(5, dtype=np.float32))
    result = run_cli("augment", src, tmp_path / "out.h5", "--method", "cutmix", "--y-key", "box")
    assert result.exit_code == 2 and "'box' is reserved" in result.stderr
    assert list(tmp_path.iterdir()) == [src]
    assert run_cli("augment", src, tmp_path / "out.h5", "--y-key", "box", "-q").exit_code == 0  # mixup writes no box


@pytest.mark.parametrize("pairing", ["global", "within-class"])
@pytest.mark.parametrize("row_shape", [(8, 8, 3), (8, 8)], ids=["NHWC", "grayscale"])
def test_cutmix_output_passes_verify_and_an_edit_fails_it(run_cli, tmp_path, pairing, row_shape):
    # grayscale (N, H, W) records layout NHW, which verify must take back
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (40,) + row_shape, dtype=np.uint8)
    labels = rng.integers(0, 4, 40)
    src = write_h5(tmp_path / "in.h5", x=x, y=labels)
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment",
        src,
        out,
        "--method",
        "cutmix",
        "--seed",
        3,
        "--block-rows",
        16,
        "--pairing",
        pairing,
        "--copies",
        2,
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    assert run_cli("verify", out).exit_code == 0
    with h5py.File(out, "r+") as f:
        box = f["box"][0]
        f["box"][0] = [0, 0, 0, 0] if box.tolist() != [0, 0, 0, 0] else [0, 0, 8, 8]
    failed = run_cli("verify", out)
    assert failed.exit_code == 1 and "box" in failed.stdout + failed.stderr
