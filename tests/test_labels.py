"""Targets: integer classes, binary, multi-label, dense, pair output, label smoothing."""

import h5py
import numpy as np
import pytest
from conftest import (
    assert_nothing_written,
    examples,
    expected_mix,
    load_output,
    read_sidecar,
    write_h5,
    write_npy_dir,
    write_npz,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import open_reader
from mixup_cli.run.prepared import DataOptions
from mixup_cli.targets import encoding


def xs(n, shape=(3, 2), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(dtype)


def run(src, out, **kw):
    kw.setdefault("seed", 5)
    kw.setdefault("command_line", [])
    return augment(AugmentRequest(src, out, **kw))


# ---------------------------------------------------------------- classes


@pytest.mark.slow
@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8, np.int32])
@pytest.mark.parametrize("column", [False, True])
def test_class_labels_give_the_same_output_as_hand_one_hot(tmp_path, label_dtype, column):
    n, c = 37, 6
    rng = np.random.default_rng(1)
    y = rng.integers(0, c, n).astype(label_dtype)
    y[:c] = np.arange(c)  # every class present, so the inferred C is c
    x = xs(n)
    by_hand = np.eye(c, dtype=np.float32)[y]
    a = write_h5(tmp_path / "labels.h5", x=x, y=y[:, None] if column else y)
    b = write_h5(tmp_path / "onehot.h5", x=x, y=by_hand)
    for extra in ({}, {"num_classes": c}):
        run(a, tmp_path / "a.h5", block_rows=8, batch_size=5, overwrite=True, **extra)
        run(b, tmp_path / "b.h5", block_rows=8, batch_size=5, overwrite=True)
        out_a, out_b = load_output(tmp_path / "a.h5"), load_output(tmp_path / "b.h5")
        assert out_a.keys() == out_b.keys() == {"x", "y", "lam", "partner"}
        for key in out_a:
            assert np.array_equal(out_a[key], out_b[key]), key
        assert out_a["y"].dtype == np.float32
        assert np.allclose(out_a["y"].sum(axis=1), 1, atol=1e-6)


def test_class_targets_sum_to_one_and_sidecar_records_the_classes(tmp_path, run_cli):
    y = np.array([0, 3, 7, 3, 0, 7, 7, 3, 0, 0, 3], dtype=np.int16)
    src = write_npz(tmp_path / "in.npz", x=xs(len(y)), y=y)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--seed", 2, "--copies", 3)
    assert result.exit_code == 0, result.stderr
    data = load_output(out)
    assert data["y"].shape == (33, 8) and data["y"].dtype == np.float32
    assert np.allclose(data["y"].sum(axis=1), 1, atol=1e-6)
    assert data["y"].min() >= 0 and data["y"].max() <= 1
    # mass only on the two classes mixed
    yy = np.concatenate([y] * 3)
    own = data["y"][np.arange(33), yy]
    part = data["y"][np.arange(33), y[data["partner"]]]
    same = yy == y[data["partner"]]
    assert np.allclose(np.where(same, own, own + part), 1, atol=1e-6)
    params = read_sidecar(out)["parameters"]
    assert params["targets"] == {
        "kind": "classes",
        "dtype": "<f4",
        "num_classes": 8,
        "classes": [0, 3, 7],
        "label_smoothing": 0.0,
    }
    assert params["y_format"] == "soft" and params["x_dtype"] == "keep" and params["allow_nonfinite"] is False
    record = read_sidecar(out)
    assert record["input"]["arrays"]["y"] == {"shape": [11], "dtype": "<i2"}
    assert {k: record["output"]["arrays"]["y"][k] for k in ("shape", "dtype")} == {"shape": [33, 8], "dtype": "<f4"}


def test_label_smoothing_values(tmp_path, run_cli):
    n, c, eps = 20, 4, 0.2
    y = np.arange(n) % c
    src = write_h5(tmp_path / "in.h5", x=xs(n), y=y)
    out = tmp_path / "out.npz"
    result = run_cli("augment", src, out, "--seed", 3, "--label-smoothing", eps, "--include-original")
    assert result.exit_code == 0, result.stderr
    data = load_output(out)
    smooth = np.full((n, c), np.float32(eps / c), dtype=np.float32)
    smooth[np.arange(n), y] = np.float32(1 - eps + eps / c)
    assert np.array_equal(data["y"][:n], smooth)  # original rows: smoothed one-hot exactly
    lam, partner = data["lam"][n:], data["partner"][n:]
    assert np.array_equal(data["y"][n:], expected_mix(smooth, lam, partner))
    assert np.allclose(data["y"].sum(axis=1), 1, atol=1e-6)
    assert data["y"].min() >= np.float32(eps / c) - 1e-7
    assert read_sidecar(out)["parameters"]["targets"]["label_smoothing"] == eps


def test_one_hot_matches_timm_formula():
    out = encoding.one_hot(np.array([2, 0]), 5, smoothing=0.1)
    assert np.allclose(out, [[0.02, 0.02, 0.92, 0.02, 0.02], [0.92, 0.02, 0.02, 0.02, 0.02]])
    assert out.dtype == np.float32


@pytest.mark.parametrize("fmt", ["h5", "npz", "npydir"])
def test_label_out_of_range_names_the_row_and_writes_nothing(tmp_path, run_cli, outdir, fmt):
    y = np.zeros(30, dtype=np.int64)
    y[23] = 5
    x = xs(30)
    src = {
        "h5": lambda: write_h5(tmp_path / "in.h5", x=x, y=y),
        "npz": lambda: write_npz(tmp_path / "in.npz", x=x, y=y),
        "npydir": lambda: write_npy_dir(tmp_path / "in", x=x, y=y),
    }[fmt]()
    # row 23 sits in the last block: earlier blocks are already written when it is found
    result = run_cli("augment", src, outdir / "out.h5", "--num-classes", 5, "--block-rows", 8, "--pairing", "batch")
    assert result.exit_code == 1
    assert "row 23 has label 5, outside [0, 5)" in result.stderr and "'y'" in result.stderr
    assert str(src) in result.stderr
    assert_nothing_written(outdir)


def test_negative_label_is_found_by_the_class_pass(tmp_path, run_cli, outdir):
    y = np.arange(12) % 3
    y[9] = -1
    src = write_h5(tmp_path / "in.h5", x=xs(12), y=y)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1 and "row 9 has label -1" in result.stderr
    assert_nothing_written(outdir)


def test_float_labels_that_are_not_whole_numbers_are_refused(tmp_path, run_cli, outdir):
    y = np.array([0, 1, 2, 1.5, 0], dtype=np.float32)
    src = write_h5(tmp_path / "in.h5", x=xs(5), y=y)
    result = run_cli("augment", src, outdir / "out.h5", "--y-kind", "classes")
    assert result.exit_code == 1 and "row 3 has label 1.5" in result.stderr
    assert_nothing_written(outdir)
    ok = write_h5(tmp_path / "ok.h5", x=xs(5), y=np.array([0, 1, 2, 1, 0], dtype=np.float32))
    assert run_cli("augment", ok, outdir / "ok.h5", "--y-kind", "classes").exit_code == 0
    assert load_output(outdir / "ok.h5")["y"].shape == (5, 3)


def test_classes_are_found_streaming_in_blocks(tmp_path, monkeypatch):
    y = np.arange(50) % 7
    src = write_npz(tmp_path / "in.npz", x=xs(50), y=y)
    monkeypatch.setattr(encoding, "SCAN_ROWS", 8)
    reader = open_reader(src)
    sizes = []
    real_read = reader.read

    def spy(key, start, stop):
        sizes.append(stop - start)
        return real_read(key, start, stop)

    reader.read = spy
    try:
        found = encoding.find_classes(reader, "y", 50, "y", block_rows=8)
    finally:
        reader.close()
    assert found == tuple(range(7)) and max(sizes) == 8 and sum(sizes) == 50


# ---------------------------------------------------- binary, multi-label, dense


@pytest.mark.parametrize(
    "y",
    [
        np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1], dtype=bool),
        np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1], dtype=bool)[:, None],
        np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1], dtype=np.float32),
    ],
)
def test_binary_targets_come_out_in_unit_interval(tmp_path, y):
    src = write_h5(tmp_path / "in.h5", x=xs(len(y)), y=y)
    run(src, tmp_path / "out.h5", alpha=1.0)
    data = load_output(tmp_path / "out.h5")
    assert data["y"].shape == y.shape and data["y"].dtype == np.float32
    assert data["y"].min() >= 0 and data["y"].max() <= 1
    assert np.array_equal(data["y"], expected_mix(y.astype(np.float32), data["lam"], data["partner"]))


def test_integer_binary_labels_with_y_kind_binary(tmp_path, run_cli, outdir):
    y = np.array([[0], [1], [1], [0], [1]], dtype=np.int8)
    src = write_h5(tmp_path / "in.h5", x=xs(5), y=y)
    assert run_cli("augment", src, outdir / "out.h5", "--y-kind", "binary").exit_code == 0
    data = load_output(outdir / "out.h5")
    assert data["y"].shape == (5, 1) and 0 <= data["y"].min() and data["y"].max() <= 1
    # by default the same labels are two classes, one-hot
    assert run_cli("augment", src, outdir / "two.h5").exit_code == 0
    assert load_output(outdir / "two.h5")["y"].shape == (5, 2)
    bad = write_h5(tmp_path / "bad.h5", x=xs(5), y=np.array([0, 1, 2, 0, 1]))
    result = run_cli("augment", bad, outdir / "bad.h5", "--y-kind", "binary")
    assert result.exit_code == 1 and "row 2 holds 2" in result.stderr and "binary targets are 0 or 1" in result.stderr
    assert not (outdir / "bad.h5").exists()


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool])
def test_multilabel_rows_are_soft_multi_hot(tmp_path, dtype):
    rng = np.random.default_rng(4)
    y = (rng.random((29, 5)) < 0.4).astype(dtype)
    src = write_npz(tmp_path / "in.npz", x=xs(29), y=y)
    run(src, tmp_path / "out.h5", block_rows=8)
    data = load_output(tmp_path / "out.h5")
    assert data["y"].dtype == np.float32 and data["y"].shape == (29, 5)
    assert data["y"].min() >= 0 and data["y"].max() <= 1
    assert np.array_equal(data["y"], expected_mix(y.astype(np.float32), data["lam"], data["partner"]))
    assert read_sidecar(tmp_path / "out.h5")["parameters"]["targets"]["kind"] == "multilabel"


def test_integer_masks_that_are_not_zero_one_point_to_pair(tmp_path, run_cli, outdir):
    y = np.zeros((6, 4, 4), dtype=np.uint8)
    y[4, 1, 2] = 3
    src = write_h5(tmp_path / "in.h5", x=xs(6), y=y)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1
    assert "row 4 holds 3, but multi-label targets" in result.stderr and "--y-format pair" in result.stderr
    assert_nothing_written(outdir)
    # asked for explicitly, integer targets are mixed as numbers (in float32)
    assert run_cli("augment", src, outdir / "dense.h5", "--y-kind", "dense", "--seed", 1).exit_code == 0
    data = load_output(outdir / "dense.h5")
    assert data["y"].dtype == np.float32
    assert np.array_equal(data["y"], expected_mix(y.astype(np.float32), data["lam"], data["partner"]))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("row_shape", [(), (3,), (4, 4), (2, 3, 2)])
def test_dense_targets_are_mixed_linearly(tmp_path, dtype, row_shape):
    rng = np.random.default_rng(5)
    y = (rng.standard_normal((23,) + row_shape) * 10).astype(dtype)
    src = write_h5(tmp_path / "in.h5", x=xs(23), y=y)
    run(src, tmp_path / "out.npz", block_rows=4)
    data = load_output(tmp_path / "out.npz")
    assert data["y"].dtype == dtype and data["y"].shape == y.shape
    assert np.array_equal(data["y"], expected_mix(y, data["lam"], data["partner"]))


# ---------------------------------------------------------------- pair


@pytest.mark.parametrize(
    "y",
    [
        np.arange(31) % 4,  # class labels
        np.random.default_rng(2).integers(0, 9, (31, 5, 5)).astype(np.uint8),  # segmentation masks
        np.random.default_rng(3).random((31, 2)),  # float targets
    ],
)
def test_pair_output_holds_both_targets_unmixed(tmp_path, y):
    src = write_h5(tmp_path / "in.h5", x=xs(31), y=y)
    out = tmp_path / "out.h5"
    run(src, out, y_format="pair", copies=2, include_original=True, block_rows=8, batch_size=3)
    data = load_output(out)
    assert set(data) == {"x", "y_a", "y_b", "lam", "partner"}
    yy = np.concatenate([y] * 3)
    assert data["y_a"].dtype == y.dtype and data["y_b"].dtype == y.dtype
    assert np.array_equal(data["y_a"], yy)
    assert np.array_equal(data["y_b"], y[data["partner"]])
    assert np.array_equal(
        data["x"][31:], expected_mix(np.concatenate([xs(31)] * 2), data["lam"][31:], data["partner"][31:])
    )
    params = read_sidecar(out)["parameters"]
    assert params["y_format"] == "pair"


def test_pair_refuses_soft_only_options(tmp_path, run_cli, outdir):
    src = write_h5(tmp_path / "in.h5", x=xs(5), y=np.arange(5))
    for args in (["--label-smoothing", "0.1"], ["--num-classes", "5"]):
        result = run_cli("augment", src, outdir / "out.h5", "--y-format", "pair", *args)
        assert result.exit_code == 2 and args[0] in result.stderr
    assert_nothing_written(outdir)


def test_smoothing_of_non_class_targets_is_a_usage_error(tmp_path, run_cli, outdir):
    src = write_h5(tmp_path / "in.h5", x=xs(5), y=np.eye(5, dtype=np.float32))
    result = run_cli("augment", src, outdir / "out.h5", "--label-smoothing", "0.1")
    assert result.exit_code == 2 and "--label-smoothing applies to class labels" in result.stderr
    assert_nothing_written(outdir)


# ---------------------------------------------------------------- x without y


def test_x_without_y(tmp_path, run_cli, outdir):
    x = xs(9)
    src = write_npz(tmp_path / "in.npz", x=x)
    result = run_cli("augment", src, outdir / "auto.h5", "--seed", 1)
    assert result.exit_code == 0 and "mixing 'x' alone" in result.stderr
    data = load_output(outdir / "auto.h5")
    assert set(data) == {"x", "lam", "partner"}
    assert np.array_equal(data["x"], expected_mix(x, data["lam"], data["partner"]))
    params = read_sidecar(outdir / "auto.h5")["parameters"]
    assert params["y_key"] is None and params["targets"] is None
    # --no-y ignores a y that is present, quietly
    both = write_npz(tmp_path / "both.npz", x=x, y=np.arange(9))
    result = run_cli("augment", both, outdir / "noy.h5", "--seed", 1, "--no-y")
    assert result.exit_code == 0 and "alone" not in result.stderr
    assert np.array_equal(load_output(outdir / "noy.h5")["x"], data["x"])
    # a --y-key given explicitly must exist
    result = run_cli("augment", src, outdir / "named.h5", "--y-key", "y")
    assert result.exit_code == 1 and "no array 'y'" in result.stderr
    result = run_cli("augment", both, outdir / "named.h5", "--no-y", "--y-key", "y")
    assert result.exit_code == 2 and "--no-y and --y-key" in result.stderr
    result = run_cli("augment", src, outdir / "named.h5", "--num-classes", 3)
    assert result.exit_code == 2 and "without y" in result.stderr
    assert not (outdir / "named.h5").exists()


# ---------------------------------------------------------------- recompute


@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing": 0.1},
        {"y_format": "pair"},
        {"num_classes": 9, "x_dtype": "float16"},
    ],
)
def test_sidecar_parameters_rebuild_the_same_bytes(tmp_path, options):
    y = np.arange(21) % 6
    src = write_h5(tmp_path / "in.h5", x=xs(21, dtype=np.float64), y=y)
    first = tmp_path / "first.h5"
    run(src, first, block_rows=8, **options)
    params = read_sidecar(first)["parameters"]
    data_options = DataOptions.from_parameters(params)
    again = tmp_path / "again.h5"
    augment(
        AugmentRequest(
            src,
            again,
            alpha=params["alpha"],
            seed=params["seed"],
            block_rows=params["block_rows"],
            pairing=params["pairing"],
            copies=params["copies"],
            x_key=params["x_key"],
            y_key=params["y_key"],
            x_dtype=data_options.x_dtype,
            y_format=data_options.y_format,
            y_kind=data_options.y_kind,
            num_classes=data_options.num_classes,
            label_smoothing=data_options.label_smoothing,
            command_line=[],
        )
    )
    a, b = load_output(first), load_output(again)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


# ---------------------------------------------------------------- library


def test_core_mixup_refuses_integer_labels():
    from mixup_cli.core.blend import mixup

    with pytest.raises(ParameterError, match="one_hot"):
        mixup(np.ones((4, 2), np.float32), np.arange(4), rng=0)


def test_errors_from_rows_read_by_index_name_the_input_row(tmp_path):
    from mixup_cli.run.source import open_source

    y = np.arange(10) % 3
    y[7] = 4
    src = write_h5(tmp_path / "in.h5", x=xs(10), y=y)
    source = open_source(src, "x", "y", DataOptions(num_classes=3))
    try:
        with pytest.raises(InputError, match="row 7 has label 4"):
            source.reader.take("y", np.array([9, 7, 1]))
        assert source.reader.take("y", np.array([2, 0])).shape == (2, 3)
    finally:
        source.reader.close()


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 12),
    block_rows=st.integers(1, 16),
    label_dtype=st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint64]),
    eps=st.sampled_from([0.0, 0.1, 0.3]),
    data=st.data(),
)
def test_hypothesis_class_labels_equal_hand_encoding(tmp_path_factory, n, c, block_rows, label_dtype, eps, data):
    tmp = tmp_path_factory.mktemp("h")
    y = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=label_dtype)
    x = xs(n, shape=(2,), seed=n)
    hand = encoding.one_hot(y, c, eps)
    a = write_npz(tmp / "a.npz", x=x, y=y)
    b = write_npz(tmp / "b.npz", x=x, y=hand)
    run(a, tmp / "a.h5", block_rows=block_rows, num_classes=c, label_smoothing=eps)
    # y_kind dense: the hand-made rows are mixed as they are
    run(b, tmp / "b.h5", block_rows=block_rows)
    out_a, out_b = load_output(tmp / "a.h5"), load_output(tmp / "b.h5")
    for key in ("x", "y", "lam", "partner"):
        assert np.array_equal(out_a[key], out_b[key]), key
    assert np.allclose(out_a["y"].sum(axis=1), 1, atol=1e-5)


# ---------------------------------------------------------------- guard on inferred classes


def test_identifiers_as_labels_are_refused_naming_classes_rows_and_options(tmp_path, run_cli, outdir):
    """More inferred classes than rows: identifiers, not classes."""
    n = 2000
    y = np.random.default_rng(3).choice(524_263, n, replace=False).astype(np.int64)
    y[0] = 524_263
    src = write_h5(tmp_path / "ids.h5", x=xs(n, (2,)), y=y)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "524264 classes" in line and "2000 rows" in line and "more classes than rows" in line
    for option in ("--num-classes", "--y-kind dense", "--y-format pair"):
        assert option in line
    assert_nothing_written(outdir)
    # the options it names do help: pair keeps them, dense mixes them as numbers
    assert run_cli("augment", src, outdir / "pair.h5", "--y-format", "pair").exit_code == 0
    assert run_cli("augment", src, outdir / "dense.h5", "--y-kind", "dense").exit_code == 0
    with h5py.File(outdir / "pair.h5") as f:
        assert np.array_equal(f["y_a"][()], y)
        assert np.array_equal(f["y_b"][()], y[f["partner"][()]])


@pytest.mark.parametrize("form", ["integers", "strings"])
def test_a_label_of_its_own_on_every_row_is_refused_as_classes(tmp_path, run_cli, outdir, form):
    """--y-kind auto: as many distinct labels as rows (more than UNIQUE_LABEL_ROWS)
    identify rows; refused in one line naming the file, the array and the ways out."""
    n = encoding.UNIQUE_LABEL_ROWS + 1
    ids = np.random.default_rng(4).permutation(n)
    y = ids.astype(np.int64) if form == "integers" else np.array([f"cell-{i}" for i in ids], dtype="S")
    src = write_h5(tmp_path / "in.h5", x=xs(n), y=y)
    result = run_cli("augment", src, outdir / "out.h5", "--seed", 1)
    assert result.exit_code == 1, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"Error: {src}: 'y': every one of its {n} rows has a label of its own"), line
    for option in ("--y-key", "--no-y", "--y-kind classes"):
        assert option in line
    assert ("--y-kind dense" in line) == (form == "integers")
    assert_nothing_written(outdir)
    # The user's word is kept: --y-kind classes, or --num-classes, take them as classes.
    assert run_cli("augment", src, outdir / "a.h5", "--seed", 1, "--y-kind", "classes").exit_code == 0
    assert load_output(outdir / "a.h5")["y"].shape == (n, n)
    if form == "integers":
        assert run_cli("augment", src, outdir / "b.h5", "--seed", 1, "--num-classes", n).exit_code == 0
        assert run_cli("augment", src, outdir / "c.h5", "--seed", 1, "--y-kind", "dense").exit_code == 0


def test_a_label_of_its_own_on_a_few_rows_is_still_classes(tmp_path):
    """UNIQUE_LABEL_ROWS rows or fewer, each its own class: classes as before."""
    n = encoding.UNIQUE_LABEL_ROWS
    src = write_h5(tmp_path / "in.h5", x=xs(n), y=np.arange(n)[::-1].copy())
    run(src, tmp_path / "out.h5")
    assert load_output(tmp_path / "out.h5")["y"].shape == (n, n)


def test_one_hot_many_times_the_input_is_refused(tmp_path, run_cli, outdir):
    """Fewer classes than rows, but one-hot rows 3000x the input's: 763 MiB per copy."""
    n = 20_000
    y = (np.arange(n) % 10_000).astype(np.int64)
    src = write_npz(tmp_path / "in.npz", x=np.ones((n, 1), np.float32), y=y)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    assert "10000 classes" in result.stderr and "20000 rows" in result.stderr and "times" in result.stderr
    assert_nothing_written(outdir)


def test_a_small_one_hot_is_not_refused(tmp_path):
    """Below the floor (64 MiB) many classes per row are fine: 1000 rows, 900 classes, 3.4 MiB."""
    n = 1000
    y = (np.arange(n) % 900).astype(np.int64)
    src = write_h5(tmp_path / "in.h5", x=np.ones((n, 1), np.float32), y=y)
    run(src, tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["y"].shape == (n, 900)


def test_explicit_num_classes_is_not_second_guessed(tmp_path):
    y = np.array([0, 7, 3, 7, 9], np.int64)
    src = write_h5(tmp_path / "in.h5", x=xs(5), y=y)
    with pytest.raises(InputError, match="more classes than rows"):
        run(src, tmp_path / "a.h5")
    run(src, tmp_path / "b.h5", num_classes=10)
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["y"].shape == (5, 10)


def test_free_space_check_counts_the_one_hot_output(tmp_path, monkeypatch):
    """x is 8 KB; with 2000 classes the one-hot y is 16 MB: a disk with 4 MB free refuses it."""
    import os
    from types import SimpleNamespace

    from mixup_cli.core.errors import OutputError
    from mixup_cli.run import preflight

    n = 2000
    src = write_h5(tmp_path / "in.h5", x=np.ones((n, 1), np.float32), y=(np.arange(n) % 10).astype(np.int64))
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    real = os.statvfs

    def small_disk(path):
        if os.path.realpath(path) == os.path.realpath(out_dir):
            return SimpleNamespace(f_bavail=1024, f_frsize=4096)  # 4 MiB free
        return real(path)

    monkeypatch.setattr(preflight.os, "statvfs", small_disk)
    with pytest.raises(OutputError, match="disk full"):
        run(src, out_dir / "big.h5", num_classes=2000)
    assert sorted(p.name for p in out_dir.iterdir()) == []
    run(src, out_dir / "small.h5")  # 10 classes: about 0.2 MB, fits
    with h5py.File(out_dir / "small.h5") as f:
        assert f["y"].shape == (n, 10)
