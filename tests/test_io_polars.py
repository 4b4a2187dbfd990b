"""Parquet files written by polars as input, and Parquet output read back with polars."""

import json

import numpy as np
import pytest
from conftest import expected_mix, read_sidecar

pytest.importorskip("pyarrow", reason="Parquet is an optional extra: pip install 'mixup-cli[arrow]'")
pq = pytest.importorskip("pyarrow.parquet")
pl = pytest.importorskip("polars")


def one_hot(codes, n):
    return np.eye(n, dtype=np.float32)[codes]


def make_frame(n=50, seed=0):
    rng = np.random.default_rng(seed)
    names = np.array(["owl", "cat", "yak", "ant"])
    # classes first seen in later row groups: every row group has its own dictionary
    species = names[np.minimum(rng.integers(0, 4, n), np.arange(n) // 12)]
    species[-1] = "ant"
    data = {
        "img": rng.standard_normal((n, 3, 2)).astype(np.float32),
        "seq": rng.standard_normal((n, 4)),
        "f0": rng.standard_normal(n),
        "f1": rng.standard_normal(n).astype(np.float32),
        "f2": rng.standard_normal(n),
        "species": species,
        "target": rng.standard_normal(n),
    }
    frame = pl.DataFrame(
        {
            "img": pl.Series(data["img"]),  # Array(Float32, shape=(3, 2))
            "seq": pl.Series([list(r) for r in data["seq"]]),  # List(Float64)
            "f0": data["f0"],
            "f1": data["f1"],
            "f2": data["f2"],
            "species": pl.Series(species, dtype=pl.Categorical),
            # declared order differs from the sorted one; "emu" is declared and never used
            "grade": pl.Series(species, dtype=pl.Enum(["yak", "owl", "emu", "cat", "ant"])),
            "target": data["target"],
        }
    )
    assert frame.schema["img"] == pl.Array(pl.Float32, (3, 2)) and frame.schema["seq"] == pl.List(pl.Float64)
    return frame, data


def read_back(path) -> dict:
    """The output as polars reads it, each column as a numpy array."""
    frame = pl.read_parquet(path)
    return {name: frame[name].to_numpy() for name in frame.columns}


def test_array_column_and_categorical_labels(tmp_path, run_cli):
    frame, data = make_frame()
    frame.write_parquet(tmp_path / "in.parquet", row_group_size=12)
    out = tmp_path / "out.parquet"
    args = ("--x-key", "img", "--y-key", "species", "--seed", 3, "--alpha", 0.4, "--block-rows", 16)
    result = run_cli("augment", tmp_path / "in.parquet", out, *args)
    assert result.exit_code == 0, result.stderr
    got = read_back(out)
    assert pl.read_parquet_schema(out)["img"] == pl.Array(pl.Float32, (3, 2))
    lam, partner = got["lam"], got["partner"]
    assert lam.dtype == np.float64 and partner.dtype == np.int64
    assert got["img"].dtype == np.float32 and np.array_equal(got["img"], expected_mix(data["img"], lam, partner))
    names = ["ant", "cat", "owl", "yak"]
    codes = np.searchsorted(np.array(names), data["species"])
    assert np.array_equal(got["species"], expected_mix(one_hot(codes, 4), lam, partner))
    assert read_sidecar(out)["parameters"]["class_names"] == names
    assert run_cli("verify", out).exit_code == 0


def test_list_column_and_enum_labels(tmp_path, run_cli):
    frame, data = make_frame(seed=1)
    frame.write_parquet(tmp_path / "in.parquet", row_group_size=12)
    out = tmp_path / "out.parquet"
    args = ("--x-key", "seq", "--y-key", "grade", "--seed", 4, "--pairing", "within-class")
    result = run_cli("augment", tmp_path / "in.parquet", out, *args)
    assert result.exit_code == 0, result.stderr
    got = read_back(out)
    lam, partner = got["lam"], got["partner"]
    assert np.array_equal(got["seq"], expected_mix(data["seq"], lam, partner))
    # an Enum's categories, unused ones too, sorted as every categorical's are
    names = ["ant", "cat", "emu", "owl", "yak"]
    assert json.loads(pq.read_schema(out).metadata[b"mixup"])["class_names"] == names
    codes = np.searchsorted(np.array(names), data["species"])
    assert np.array_equal(got["grade"], expected_mix(one_hot(codes, 5), lam, partner))
    assert np.array_equal(data["species"][partner], data["species"])


def test_float_columns_gathered_with_x_key(tmp_path, run_cli):
    frame, data = make_frame(seed=2)
    frame.write_parquet(tmp_path / "in.parquet", row_group_size=12)
    out = tmp_path / "out.parquet"
    args = ("--x-key", "f*", "--y-key", "target", "--seed", 5)
    result = run_cli("augment", tmp_path / "in.parquet", out, *args)
    assert result.exit_code == 0, result.stderr
    back = pl.read_parquet(out)
    assert back.columns == ["f0", "f1", "f2", "target", "lam", "partner"]
    # float32 and float64 columns gathered as float64, written back as three float64 columns
    assert all(back.schema[c] == pl.Float64 for c in ("f0", "f1", "f2"))
    x = np.stack([data["f0"], data["f1"].astype(np.float64), data["f2"]], axis=1)
    lam, partner = back["lam"].to_numpy(), back["partner"].to_numpy()
    assert np.array_equal(back.select("f0", "f1", "f2").to_numpy(), expected_mix(x, lam, partner))
    assert np.array_equal(back["target"].to_numpy(), expected_mix(data["target"], lam, partner))


def test_polars_lazy_scan_streams_the_output_by_row_group(tmp_path, run_cli):
    frame, data = make_frame(n=40, seed=3)
    frame.write_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    args = ("--x-key", "img", "--y-key", "target", "--seed", 6, "--block-rows", 8)
    assert run_cli("augment", tmp_path / "in.parquet", out, *args).exit_code == 0
    part = pl.scan_parquet(out).filter(pl.col("partner") >= 0).slice(8, 8).collect()
    l = part["lam"].to_numpy().astype(np.float32).reshape(-1, 1, 1)
    want = l * data["img"][8:16] + (1 - l) * data["img"][part["partner"].to_numpy()]
    assert np.array_equal(part["img"].to_numpy(), want)
