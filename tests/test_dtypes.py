"""Input dtypes: floats kept, integers rounded and clipped, --x-dtype, refused
dtypes, NaN and Inf."""

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
from mixup_cli.core.blend import mix_rows, working_dtype

SUPPORTED = "supported dtypes are float16/32/64 and integer types"


def run(src, out, **kw):
    kw.setdefault("seed", 5)
    kw.setdefault("command_line", [])
    return augment(AugmentRequest(src, out, **kw))


def one_hot(n, c=3):
    return np.eye(c, dtype=np.float32)[np.arange(n) % c]


def rounded_formula(x, lam, partner):
    """round(l*x[i] + (1-l)*x[j]) in float64, the value integer output must be within 1 of."""
    l = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return np.rint(l * x.astype(np.float64) + (1 - l) * x[partner].astype(np.float64))


# ---------------------------------------------------------------- kept dtypes


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["h5", "npz", "npydir"])
def test_float_dtypes_are_kept(tmp_path, dtype, fmt):
    x = np.random.default_rng(0).standard_normal((19, 3, 2)).astype(dtype)
    y = one_hot(19)
    write = {"h5": write_h5, "npz": write_npz, "npydir": write_npy_dir}[fmt]
    src = write(tmp_path / {"h5": "in.h5", "npz": "in.npz", "npydir": "in"}[fmt], x=x, y=y)
    run(src, tmp_path / "out.h5", block_rows=8)
    data = load_output(tmp_path / "out.h5")
    assert data["x"].dtype == dtype
    assert np.array_equal(data["x"], expected_mix(x, data["lam"], data["partner"]))


def test_uint8_images_near_0_and_255_stay_uint8_and_never_wrap(tmp_path):
    rng = np.random.default_rng(1)
    n = 64
    # half the rows near 255, half near 0, so pairs mix high-high, low-low and high-low
    high = rng.integers(250, 256, (n // 2, 6, 6, 3))
    low = rng.integers(0, 6, (n // 2, 6, 6, 3))
    x = np.concatenate([high, low]).astype(np.uint8)
    x[0] = 255
    x[n // 2] = 0
    src = write_h5(tmp_path / "in.h5", x=x, y=one_hot(n))
    out = tmp_path / "out.h5"
    run(src, out, alpha=0.5, copies=3, block_rows=16, batch_size=7)
    data = load_output(out)
    assert data["x"].dtype == np.uint8
    ref = rounded_formula(np.concatenate([x] * 3), data["lam"], data["partner"])
    assert np.abs(data["x"].astype(np.int64) - ref).max() <= 1
    # never wraps: rows mixing two high rows stay high, two low rows stay low
    both_high = (np.arange(3 * n) % n < n // 2) & (data["partner"] < n // 2)
    both_low = (np.arange(3 * n) % n >= n // 2) & (data["partner"] >= n // 2)
    assert both_high.any() and both_low.any()
    assert data["x"][both_high].min() >= 249
    assert data["x"][both_low].max() <= 6


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_integer_extremes_mix_without_wrapping(dtype):
    info = np.iinfo(dtype)
    a = np.array([[info.max, info.max, info.min, info.min, info.max]], dtype=dtype)
    b = np.array([[info.max, info.min, info.min, info.max, info.max - 1]], dtype=dtype)
    for lam in (0.0, 1e-9, 0.3, 0.5, 0.7, 1 - 1e-9, 1.0):
        out = mix_rows(a, b, np.array([lam]))
        assert out.dtype == dtype
        ref = np.rint(lam * a.astype(np.float64) + (1 - lam) * b.astype(np.float64))
        # within 1 for 8/16/32 bits; 64-bit values are rounded to float64 (53 bits) first
        tol = 1 if np.dtype(dtype).itemsize <= 4 else 2048
        assert np.all(np.abs(out.astype(np.float64) - ref) <= tol), (dtype, lam, out, ref)
        assert out[0, 0] >= info.max - tol  # max with max stays at the top
        assert out[0, 2] <= info.min + tol  # min with min stays at the bottom


def test_wide_integers_are_mixed_in_float64():
    assert working_dtype(np.uint8) == np.float32 and working_dtype(np.int16) == np.float32
    assert working_dtype(np.int32) == np.float64 and working_dtype(np.uint64) == np.float64


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.int32])
def test_other_integer_x_round_trip_through_files(tmp_path, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(2)
    x = rng.integers(info.min, int(info.max) + 1, (33, 4)).astype(dtype)
    x[:4] = info.max
    x[4:8] = info.min
    src = write_npz(tmp_path / "in.npz", x=x, y=one_hot(33))
    run(src, tmp_path / "out.npz", block_rows=8)
    data = load_output(tmp_path / "out.npz")
    assert data["x"].dtype == dtype
    ref = rounded_formula(x, data["lam"], data["partner"])
    assert np.abs(data["x"].astype(np.float64) - ref).max() <= 1


# ---------------------------------------------------------------- --x-dtype


def test_x_dtype_float32_for_uint8_images_is_unrounded(tmp_path, run_cli):
    x = np.random.default_rng(3).integers(0, 256, (21, 4, 4)).astype(np.uint8)
    src = write_h5(tmp_path / "in.h5", x=x, y=one_hot(21))
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--x-dtype", "float32", "--seed", 1).exit_code == 0
    data = load_output(out)
    assert data["x"].dtype == np.float32
    assert np.array_equal(data["x"], expected_mix(x.astype(np.float32), data["lam"], data["partner"]))
    record = read_sidecar(out)
    assert record["parameters"]["x_dtype"] == "float32"
    assert record["input"]["arrays"]["x"]["dtype"] == "|u1"
    assert record["output"]["arrays"]["x"]["dtype"] == "<f4"


@pytest.mark.parametrize("target", ["float16", "float32", "float64"])
def test_x_dtype_converts_floats(tmp_path, target):
    x = np.random.default_rng(4).standard_normal((17, 3)).astype(np.float64)
    src = write_h5(tmp_path / "in.h5", x=x, y=one_hot(17))
    run(src, tmp_path / "out.h5", x_dtype=target, include_original=True)
    data = load_output(tmp_path / "out.h5")
    assert data["x"].dtype == np.dtype(target)
    assert np.array_equal(data["x"][:17], x.astype(target))
    assert np.array_equal(data["x"][17:], expected_mix(x.astype(target), data["lam"][17:], data["partner"][17:]))


# ---------------------------------------------------------------- refused dtypes


def _string_array(n):
    return np.array([f"s{i}" for i in range(n)])


@pytest.mark.parametrize("kind", ["bool", "complex", "string", "bytes"])
@pytest.mark.parametrize("fmt", ["h5", "npz", "npydir"])
def test_unsupported_x_dtypes_are_refused(tmp_path, run_cli, outdir, kind, fmt):
    n = 6
    x = {
        "bool": np.ones((n, 2), dtype=bool),
        "complex": np.ones((n, 2), dtype=np.complex64),
        "string": _string_array(n),
        "bytes": _string_array(n).astype("S"),
    }[kind]
    if fmt == "h5" and kind == "string":
        src = tmp_path / "in.h5"
        with h5py.File(src, "w") as f:
            f.create_dataset("x", data=list(x), dtype=h5py.string_dtype())
            f.create_dataset("y", data=one_hot(n))
    else:
        write = {"h5": write_h5, "npz": write_npz, "npydir": write_npy_dir}[fmt]
        src = write(tmp_path / {"h5": "in.h5", "npz": "in.npz", "npydir": "in"}[fmt], x=x, y=one_hot(n))
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    assert "'x'" in result.stderr and SUPPORTED in result.stderr and str(src) in result.stderr
    assert_nothing_written(outdir)


# Strings of shape (N,) are class labels (test_names.py); strings of any other shape are not.
@pytest.mark.parametrize("y", [np.ones(6, dtype=np.complex128), _string_array(12).reshape(6, 2)])
def test_unsupported_y_dtypes_are_refused(tmp_path, run_cli, outdir, y):
    src = write_npz(tmp_path / "in.npz", x=np.ones((6, 2), np.float32), y=y)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1
    assert "'y'" in result.stderr and "supported dtypes are float16/32/64, integer and bool types" in result.stderr
    assert_nothing_written(outdir)


needs_long_double = pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="long double is float64 here")


@needs_long_double
@pytest.mark.parametrize("fmt", ["npz", "npydir", "npz-compressed"])
@pytest.mark.parametrize("key", ["x", "y"])
def test_long_double_is_refused_naming_file_and_array(tmp_path, run_cli, outdir, fmt, key):
    n = 6
    arrays = {"x": np.ones((n, 2), np.float32), "y": one_hot(n)}
    arrays[key] = arrays[key].astype(np.longdouble)
    if fmt == "npydir":
        src = write_npy_dir(tmp_path / "in", **arrays)
    else:
        src = write_npz(tmp_path / "in.npz", compressed=fmt == "npz-compressed", **arrays)
    for out in ("out.h5", "out.npz", "out"):
        result = run_cli("augment", src, outdir / out)
        assert result.exit_code == 1, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and str(src) in line and f"array '{key}'" in line and "long double" in line
        assert "Traceback" not in result.stderr
        assert_nothing_written(outdir)


@needs_long_double
def test_long_double_x_converted_with_x_dtype_round_trips_and_verifies(tmp_path, run_cli):
    x = np.arange(24, dtype=np.longdouble).reshape(12, 2) / 7
    src = write_npz(tmp_path / "in.npz", x=x, y=one_hot(12))
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--x-dtype", "float64", "--seed", 3).exit_code == 0
    with h5py.File(out) as f:
        got, lam, partner = f["x"][()], f["lam"][()], f["partner"][()]
    assert got.dtype == np.float64
    assert np.array_equal(got, mix_rows(x.astype(np.float64), x.astype(np.float64)[partner], lam))
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- NaN and Inf


@pytest.mark.slow
@pytest.mark.parametrize("key", ["x", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_refused_naming_array_and_row(tmp_path, run_cli, outdir, key, bad):
    n = 40
    arrays = {
        "x": np.random.default_rng(5).standard_normal((n, 3)).astype(np.float32),
        "y": np.random.default_rng(6).random((n, 2)),
    }
    arrays[key][33, 1] = bad
    arrays[key][37, 0] = bad
    src = write_h5(tmp_path / "in.h5", **arrays)
    # row 33 lies in the last block: the first blocks are mixed and written before it is read
    result = run_cli("augment", src, outdir / "out.h5", "--block-rows", 8, "--pairing", "batch")
    assert result.exit_code == 1
    assert f"'{key}' row 33 holds NaN or Inf" in result.stderr and "--allow-nonfinite" in result.stderr
    assert_nothing_written(outdir)
    result = run_cli("augment", src, outdir / "out.h5", "--block-rows", 8, "--allow-nonfinite", "--seed", 2)
    assert result.exit_code == 0
    data = load_output(outdir / "out.h5")
    assert not np.isfinite(data[key]).all()
    assert read_sidecar(outdir / "out.h5")["parameters"]["allow_nonfinite"] is True


def test_overflow_on_conversion_is_reported(tmp_path, run_cli, outdir):
    x = np.ones((5, 2))
    x[3, 0] = 1e6  # beyond float16
    src = write_npz(tmp_path / "in.npz", x=x, y=one_hot(5))
    result = run_cli("augment", src, outdir / "out.npz", "--x-dtype", "float16")
    assert result.exit_code == 1 and "row 3 holds NaN or Inf after conversion to float16" in result.stderr
    assert_nothing_written(outdir)


# ---------------------------------------------------------------- varying inputs


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.uint8, np.int8, np.int16, np.uint16, np.int32]),
    row_shape=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    n=st.integers(1, 30),
    block_rows=st.integers(1, 12),
    x_dtype=st.sampled_from(["keep", "keep", "float32", "float64"]),
    seed=st.integers(0, 2**32),
)
def test_hypothesis_dtypes_and_shapes(tmp_path_factory, dtype, row_shape, n, block_rows, x_dtype, seed):
    tmp = tmp_path_factory.mktemp("d")
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = rng.standard_normal((n,) + row_shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, int(info.max) + 1, (n,) + row_shape).astype(dtype)
    src = write_h5(tmp / "in.h5", x=x)
    run(src, tmp / "out.h5", seed=seed, block_rows=block_rows, x_dtype=x_dtype, y_key=None)
    data = load_output(tmp / "out.h5")
    out_dtype = np.dtype(dtype) if x_dtype == "keep" else np.dtype(x_dtype)
    assert data["x"].dtype == out_dtype and data["x"].shape == x.shape
    if out_dtype.kind == "f":
        assert np.array_equal(data["x"], expected_mix(x.astype(out_dtype), data["lam"], data["partner"]))
    else:
        ref = rounded_formula(x, data["lam"], data["partner"])
        assert np.abs(data["x"].astype(np.float64) - ref).max() <= 1
