"""End to end: augment real files, reopen the output, check every row."""

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import expected_mix, load_output, make_arrays, read_sidecar, write_h5, write_npy_dir, write_npz

from mixup_cli.commands.pipeline import AugmentRequest, augment


def make_input(fmt, tmp_path, x, y):
    if fmt == "h5":
        return write_h5(tmp_path / "in.h5", x=x, y=y)
    if fmt == "npz":
        return write_npz(tmp_path / "in.npz", x=x, y=y)
    if fmt == "npz-compressed":
        return write_npz(tmp_path / "in.npz", compressed=True, x=x, y=y)
    return write_npy_dir(tmp_path / "in", x=x, y=y)


OUT_NAMES = {"h5": "out.h5", "npz": "out.npz", "npydir": "out"}


def check_rows(out, x, y):
    lam, partner = out["lam"], out["partner"]
    assert lam.dtype == np.float64 and partner.dtype == np.int64
    assert len(lam) == len(x) and partner.min() >= 0 and partner.max() < len(x)
    assert np.array_equal(out["x"], expected_mix(x, lam, partner))
    assert np.array_equal(out["y"], expected_mix(y, lam, partner))
    assert out["x"].dtype == x.dtype and out["y"].dtype == y.dtype


@pytest.mark.parametrize("in_fmt", ["h5", "npz", "npz-compressed", "npydir"])
@pytest.mark.parametrize("out_fmt", ["h5", "npz", "npydir"])
def test_every_format_pair_matches_the_formula(tmp_path, in_fmt, out_fmt):
    x, y = make_arrays(n=41, x_shape=(3, 4, 2))
    src = make_input(in_fmt, tmp_path, x, y)
    out = tmp_path / OUT_NAMES[out_fmt]
    result = augment(AugmentRequest(src, out, alpha=0.4, seed=3, batch_size=5, block_rows=8))
    assert result.rows == 41 and out.exists()
    check_rows(load_output(out), x, y)


@pytest.mark.slow
@pytest.mark.parametrize("x_shape", [(), (7,), (2, 3), (2, 3, 2), (1, 2, 1, 3)])
@pytest.mark.parametrize("batch_size", [1, 3, 17, 1000])
def test_ranks_and_odd_batches(tmp_path, x_shape, batch_size):
    x, y = make_arrays(n=19, x_shape=x_shape, dtype=np.float64)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=11, batch_size=batch_size))
    check_rows(load_output(out), x, y)


def test_single_row_dataset(tmp_path):
    x, y = make_arrays(n=1)
    src = write_npy_dir(tmp_path / "in", x=x, y=y)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=0))
    out = load_output(tmp_path / "out.h5")
    assert out["partner"].tolist() == [0]
    assert np.array_equal(out["x"], expected_mix(x, out["lam"], out["partner"]))
    assert np.allclose(out["x"], x, rtol=1e-6)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    x, y = make_arrays(n=100)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    for name, seed in (("a.h5", 5), ("b.h5", 5), ("c.h5", 6)):
        augment(AugmentRequest(src, tmp_path / name, seed=seed))
    a, b, c = (load_output(tmp_path / n) for n in ("a.h5", "b.h5", "c.h5"))
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    assert not np.array_equal(a["lam"], c["lam"])


def test_seed_is_drawn_and_recorded_so_the_run_repeats(tmp_path):
    x, y = make_arrays(n=30)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    first = augment(AugmentRequest(src, tmp_path / "a.h5"))
    seed = read_sidecar(tmp_path / "a.h5")["parameters"]["seed"]
    assert seed == first.seed
    augment(AugmentRequest(src, tmp_path / "b.h5", seed=seed))
    a, b = load_output(tmp_path / "a.h5"), load_output(tmp_path / "b.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_copies_and_original_layout(tmp_path):
    x, y = make_arrays(n=23)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=1, copies=2, include_original=True, block_rows=4))
    out = load_output(tmp_path / "out.h5")
    assert out["x"].shape[0] == 69
    assert np.array_equal(out["x"][:23], x) and np.all(out["lam"][:23] == 1)
    assert out["partner"][:23].tolist() == list(range(23))
    for k in (1, 2):
        rows = slice(23 * k, 23 * (k + 1))
        assert np.array_equal(out["x"][rows], expected_mix(x, out["lam"][rows], out["partner"][rows]))
    assert not np.array_equal(out["lam"][23:46], out["lam"][46:])


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("out_name", ["out.h5", "out.npz", "out"])
def test_sidecar_records_files_arrays_and_parameters(tmp_path, out_name):
    x, y = make_arrays(n=20)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / out_name
    result = augment(AugmentRequest(src, out, seed=9, alpha=0.3, command_line=["mixup", "augment"]))
    record = read_sidecar(out)
    assert result.sidecar == Path(str(out) + ".provenance.json")
    assert record["schema_version"] == 2
    assert record["tool"]["name"] == "mixup-cli"
    assert record["command_line"] == ["mixup", "augment"]
    params = record["parameters"]
    assert params["seed"] == 9 and params["alpha"] == 0.3 and params["pairing"] == "global"
    assert params["x_key"] == "x" and params["y_key"] == "y"
    assert record["input"]["files"][0]["sha256"] == sha256(src)
    assert record["input"]["files"][0]["size"] == src.stat().st_size
    assert record["input"]["arrays"]["x"] == {"shape": [20, 4, 3], "dtype": "<f4"}
    files = record["output"]["files"]
    assert files and all("sha256" not in f for f in files)  # the arrays' digests cover the data
    assert all(Path(f["path"]).stat().st_size == f["size"] for f in files)
    lam = record["output"]["arrays"]["lam"]
    assert {k: lam[k] for k in ("shape", "dtype")} == {"shape": [20], "dtype": "<f8"}
    assert len(lam["sha256"]) == 64
    assert record["started_at"].endswith("Z") and record["finished_at"] >= record["started_at"]
    assert {"python", "numpy", "h5py", "hdf5"} <= set(record["software"])
    assert record["software"]["kernel"] in ("c", "numpy")


@pytest.mark.parametrize("out_name", ["out.h5", "out.npz", "out"])
def test_hash_files_records_each_output_files_sha256(tmp_path, out_name):
    x, y = make_arrays(n=20)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / out_name
    augment(AugmentRequest(src, out, seed=9, hash_files=True, command_line=[]))
    files = read_sidecar(out)["output"]["files"]
    assert files and all(sha256(f["path"]) == f["sha256"] for f in files)


def test_hdf5_output_layout_and_root_attributes(tmp_path):
    x, y = make_arrays(n=300, x_shape=(8, 8))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = augment(AugmentRequest(src, tmp_path / "out.h5", seed=1, compression="gzip", block_rows=128))
    with h5py.File(tmp_path / "out.h5") as f:
        assert f.attrs["run_id"] == result.run_id == read_sidecar(tmp_path / "out.h5")["run_id"]
        assert f.attrs["mixup_cli_version"]
        for key in ("x", "y", "lam", "partner"):
            ds = f[key]
            assert ds.chunks is not None and ds.chunks[1:] == ds.shape[1:]
            assert 128 % ds.chunks[0] == 0
            assert ds.compression == "gzip"


def test_lzf_compression(tmp_path):
    x, y = make_arrays(n=10)
    src = write_npz(tmp_path / "in.npz", x=x, y=y)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=1, compression="lzf"))
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["x"].compression == "lzf"


def test_custom_keys_and_nested_hdf5_paths(tmp_path):
    x, y = make_arrays(n=12)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["train/images"] = x
        f["train/labels"] = y
    augment(AugmentRequest(tmp_path / "in.h5", tmp_path / "out.h5", seed=2, x_key="train/images", y_key="train/labels"))
    with h5py.File(tmp_path / "out.h5") as f:
        lam, partner = f["lam"][()], f["partner"][()]
        assert np.array_equal(f["train/images"][()], expected_mix(x, lam, partner))


def test_input_is_never_modified(tmp_path):
    x, y = make_arrays(n=50)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    before = sha256(src)
    augment(AugmentRequest(src, tmp_path / "out.npz", seed=1))
    assert sha256(src) == before


def test_sample_data_runs(tmp_path):
    from conftest import SAMPLE_H5, SAMPLE_NPY_DIR

    augment(AugmentRequest(SAMPLE_H5, tmp_path / "h5.h5", seed=7))
    augment(AugmentRequest(SAMPLE_NPY_DIR, tmp_path / "npy", seed=7))
    a, b = load_output(tmp_path / "h5.h5"), load_output(tmp_path / "npy")
    assert a["x"].shape == (1797, 8, 8) and a["y"].shape == (1797, 10)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.allclose(a["y"].sum(axis=1), 1, atol=1e-6)
