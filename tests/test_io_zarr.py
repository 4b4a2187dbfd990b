"""Zarr directory stores as input and output (an optional extra)."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, expected_mix, make_arrays, read_sidecar, write_h5, write_npz

from mixup_cli.commands.pipeline import AugmentRequest, augment

zarr = pytest.importorskip("zarr", reason="Zarr is an optional extra: pip install 'mixup-cli[zarr]'")


def write_zarr(path, chunk_rows=16, **arrays):
    root = zarr.open_group(str(path), mode="w-")
    for key, value in arrays.items():
        root.create_array(key, data=value, chunks=(min(chunk_rows, len(value)),) + value.shape[1:])
    return Path(path)


def load_zarr(path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {name: node[...] for name, node in root.members(max_depth=None) if isinstance(node, zarr.Array)}


def check_formula(out, x, y, x_key="x", y_key="y"):
    lam, partner = out["lam"], out["partner"]
    assert lam.dtype == np.float64 and partner.dtype == np.int64 and len(lam) == len(x)
    assert np.array_equal(out[x_key], expected_mix(x, lam, partner))
    assert np.array_equal(out[y_key], expected_mix(y, lam, partner))
    assert out[x_key].dtype == x.dtype and out[y_key].dtype == y.dtype


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_h5_to_zarr_matches_the_formula(tmp_path, compression):
    x, y = make_arrays(n=45, x_shape=(3, 2))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.zarr"
    result = augment(AugmentRequest(src, out, alpha=0.4, seed=3, block_rows=8, batch_size=3, compression=compression))
    check_formula(load_zarr(out), x, y)
    root = zarr.open_group(str(out), mode="r")
    for key in ("x", "y", "lam", "partner"):
        assert 8 % root[key].chunks[0] == 0  # chunks divide the block: parallel block writes never share one
    assert root.attrs["run_id"] == result.run_id
    sidecar = read_sidecar(out)
    assert sidecar["output"]["format"] == "zarr" and sidecar["parameters"]["compression"] == compression
    listed = {Path(f["path"]) for f in sidecar["output"]["files"]}
    assert listed == {p.resolve() for p in out.rglob("*") if p.is_file()}
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_zarr_to_h5_with_nested_keys_and_integer_images(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (37, 4, 4), dtype=np.uint8)
    _, y = make_arrays(n=37)
    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w-")
    root.create_array("train/images", data=x, chunks=(10, 4, 4))
    root.create_array("train/labels", data=y, chunks=(10, 5))
    out = tmp_path / "out.h5"
    augment(
        AugmentRequest(tmp_path / "in.zarr", out, seed=5, block_rows=16, x_key="train/images", y_key="train/labels")
    )
    with h5py.File(out, "r") as f:
        lam, partner = f["lam"][()], f["partner"][()]
        l = lam.astype(np.float32).reshape(-1, 1, 1)
        want = np.clip(np.rint(l * x + (1 - l) * x[partner]), 0, 255).astype(np.uint8)
        assert np.array_equal(f["train/images"][()], want)
        assert np.array_equal(f["train/labels"][()], expected_mix(y, lam, partner))
    assert read_sidecar(out)["input"]["format"] == "zarr"


def test_take_equals_fancy_indexing(tmp_path):
    from mixup_cli.io import zarr as zarr_io

    x = np.random.default_rng(2).random((50, 3, 2)).astype(np.float32)
    with zarr_io.Reader(write_zarr(tmp_path / "in.zarr", chunk_rows=7, x=x)) as reader:
        for rows in [[], [0], [49], [49, 0, 7, 7, 30, 6], list(range(49, -1, -3))]:
            got = reader.take("x", np.array(rows, dtype=np.int64))
            assert got.dtype == x.dtype and np.array_equal(got, x[rows]) and got.shape == (len(rows), 3, 2)


def test_npz_to_zarr_with_copies_and_originals(tmp_path):
    x, y = make_arrays(n=21, x_shape=(5,))
    src = write_npz(tmp_path / "in.npz", x=x, y=y)
    out = tmp_path / "out.zarr"
    augment(AugmentRequest(src, out, seed=2, block_rows=4, copies=2, include_original=True))
    got = load_zarr(out)
    assert len(got["lam"]) == 63
    assert np.array_equal(got["x"][:21], x) and np.all(got["lam"][:21] == 1)
    for key, arr in (("x", x), ("y", y)):
        own = np.concatenate([arr] * 3)  # output row k*N + i is input row i ...
        l = got["lam"].astype(arr.dtype).reshape((-1,) + (1,) * (arr.ndim - 1))
        assert np.array_equal(got[key], l * own + (1 - l) * arr[got["partner"]])  # ... mixed with its partner


def test_zarr_to_zarr_overwrite_replaces_the_directory(tmp_path, run_cli):
    x, y = make_arrays(n=20)
    src = write_zarr(tmp_path / "in.zarr", x=x, y=y)
    out = tmp_path / "out.zarr"
    assert run_cli("augment", src, out, "--seed", 1, "-q").exit_code == 0
    refused = run_cli("augment", src, out, "--seed", 2, "-q")
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr
    assert run_cli("augment", src, out, "--seed", 2, "-q", "--overwrite").exit_code == 0
    assert read_sidecar(out)["parameters"]["seed"] == 2
    check_formula(load_zarr(out), x, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr", "out.zarr.provenance.json"]


def test_a_directory_that_is_not_a_zarr_group_is_refused(tmp_path, run_cli):
    (tmp_path / "in.zarr").mkdir()
    (tmp_path / "in.zarr" / "junk.txt").write_text("hello")
    result = run_cli("augment", tmp_path / "in.zarr", tmp_path / "out.h5")
    assert result.exit_code == 1 and "in.zarr" in result.stderr and "not a readable Zarr group" in result.stderr


def test_missing_key_names_the_keys_present(tmp_path, run_cli):
    x, y = make_arrays(n=10)
    src = write_zarr(tmp_path / "in.zarr", images=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5")
    assert result.exit_code == 1 and "no array 'x'" in result.stderr and "images" in result.stderr


def test_zstd_is_refused_for_hdf5(tmp_path, run_cli):
    x, y = make_arrays(n=10)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5", "--compression", "zstd")
    assert result.exit_code == 2 and "zstd" in result.stderr


def test_without_zarr_the_message_names_the_extra(tmp_path, run_cli, monkeypatch):
    x, y = make_arrays(n=10)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    monkeypatch.setitem(sys.modules, "zarr", None)  # `import zarr` now fails
    result = run_cli("augment", src, tmp_path / "out.zarr")
    assert result.exit_code == 2 and "pip install 'mixup-cli[zarr]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_help_imports_neither_zarr_nor_dask():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mixup_cli.cli import cli\n"
        "for args in (['--help'], ['augment', '--help']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'zarr'})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_partial_store_reopens_for_resume_and_flush_syncs_what_changed(tmp_path, monkeypatch):
    import os
    import shutil

    from mixup_cli.core.errors import OutputError
    from mixup_cli.io import zarr as zarr_io
    from mixup_cli.io.base import ArraySpec, WriteOptions

    specs = {"x": ArraySpec((20, 3), np.dtype("float32")), "lam": ArraySpec((20,), np.dtype("float64"))}
    options = WriteOptions(block_rows=10)
    path = tmp_path / "part.zarr"
    writer = zarr_io.Writer(path, specs, options)
    writer.write("x", 0, np.ones((10, 3), np.float32))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    writer.flush()
    chunk_files = {str(p) for p in path.rglob("*") if p.is_file() and "c" in p.relative_to(path).parts[1:2]}
    assert chunk_files and chunk_files <= set(synced)
    writer.close()

    again = zarr_io.Writer.reopen(path, specs, options)  # as --resume does
    again.write("x", 10, np.full((10, 3), 2, np.float32))
    again.close()
    with zarr_io.Reader(path) as reader:
        assert np.array_equal(reader.read("x", 0, 20), np.repeat([[1.0], [2.0]], 10, axis=0) * np.ones(3))

    shutil.rmtree(path / "lam")
    with pytest.raises(OutputError, match="the partial output is damaged"):
        zarr_io.Writer.reopen(path, specs, options)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_named_without_the_zarr_suffix_is_read_as_zarr(tmp_path, run_cli, zarr_format):
    x, y = make_arrays(n=30, x_shape=(3,))
    store = tmp_path / "features"  # a folder, as `zarr.open_group("features")` makes it
    group = zarr.open_group(str(store), mode="w", zarr_format=zarr_format)
    group["x"], group["y"] = x, y
    out = tmp_path / "out.h5"
    result = run_cli("augment", store, out, "--seed", 4, "--quiet")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["x"][()], expected_mix(x, f["lam"][()], f["partner"][()]))
    assert read_sidecar(out)["input"]["format"] == "zarr"
    assert run_cli("verify", out).exit_code == 0
