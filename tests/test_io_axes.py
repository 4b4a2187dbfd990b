"""MATLAB v7.3 files and arrays whose samples are not on the first axis
(``--sample-axis``): outputs against the formula on the arrays as MATLAB or
netCDF shows them, the sidecar, resume's fingerprint, verify, and refusals."""

from __future__ import annotations

import json
import subprocess

import h5py
import numpy as np
import pytest
from conftest import expected_mix, load_output, mixup_executable, read_sidecar, run_in_process
from test_cli_signals import paused

N, F, C = 37, 6, 4
HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Dec  3 12:00:00 2026 HDF5 schema 1.00 ."


MATLAB_CLASSES = {"f4": "single", "f8": "double", "i4": "int32"}


def arrays(n=N, f=F, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(np.float32), rng.integers(0, C, n).astype(np.int32)


def write_mat(path, **variables):
    """A .mat v7.3 file as MATLAB writes one: a 512-byte user block holding
    the header text, each variable column-major (stored axes reversed) with
    its MATLAB_class; a vector stays 2-D (N x 1 is stored as 1 x N)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            value = np.asarray(value)
            if value.ndim == 1:
                value = value[:, None]  # MATLAB has no 1-D arrays: a column vector
            ds = f.create_dataset(name, data=value.T, chunks=True)  # column-major storage
            ds.attrs["MATLAB_class"] = np.bytes_(MATLAB_CLASSES[value.dtype.str[1:]])
    with open(path, "r+b") as fh:
        fh.write(HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def check_mixed(out, x, y=None):
    got = load_output(out)
    lam, partner = got["lam"], got["partner"]
    np.testing.assert_allclose(got["x"], expected_mix(x, lam, partner), rtol=1e-6, atol=1e-6)
    if y is not None:
        one_hot = np.eye(C, dtype=np.float32)[y.astype(int)]
        np.testing.assert_allclose(got["y"], expected_mix(one_hot, lam, partner), rtol=1e-6, atol=1e-6)
    return got


def test_matlab_matrix_reads_as_matlab_shows_it(run_cli, tmp_path, outdir):
    x, y = arrays()
    src, out = tmp_path / "data.mat", outdir / "out.h5"
    write_mat(src, x=x, y=y)
    assert h5py.File(src, "r")["x"].shape == (F, N)  # stored transposed, as MATLAB does
    r = run_cli("augment", src, out, "--alpha", "0.4", "--seed", "5", "--block-rows", "8")
    assert r.exit_code == 0, r.stderr
    got = check_mixed(out, x, y)
    assert got["x"].shape == (N, F)
    assert "sample_axis" not in read_sidecar(out)["parameters"]
    v = run_cli("verify", out)
    assert v.exit_code == 0, v.stdout + v.stderr


def test_matlab_sample_axis_counts_matlab_axes(run_cli, tmp_path, outdir):
    # A MATLAB F x N matrix (features down the columns): samples on MATLAB's axis 1.
    x, y = arrays()
    src, out = tmp_path / "cols.mat", outdir / "out.h5"
    write_mat(src, x=x.T, y=y)
    r = run_cli("augment", src, out, "--seed", "1", "--sample-axis", "1", "--block-rows", "5")
    assert r.exit_code == 0, r.stderr
    check_mixed(out, x, y)
    assert read_sidecar(out)["parameters"]["sample_axis"] == 1
    v = run_cli("verify", out)
    assert v.exit_code == 0, v.stdout + v.stderr


def test_matlab_transposed_without_option_is_refused_with_the_axis(run_cli, tmp_path, outdir):
    x, y = arrays()
    src = tmp_path / "cols.mat"
    write_mat(src, x=x.T, y=y)
    r = run_cli("augment", src, outdir / "out.h5", "--seed", "1")
    assert r.exit_code == 1
    assert "--sample-axis 1" in r.stderr and "'x' has 6 rows but 'y' has 37" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not any(outdir.iterdir())


def test_matlab_3d_x_without_y(run_cli, tmp_path, outdir):
    # MATLAB N x H x W images (stored W, H, N), mixed alone.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 3, 5))
    src, out = tmp_path / "img.mat", outdir / "out.npz"
    write_mat(src, images=x)
    r = run_cli("augment", src, out, "--x-key", "images", "--no-y", "--seed", "2", "--block-rows", "7")
    assert r.exit_code == 0, r.stderr
    got = load_output(out)
    np.testing.assert_allclose(got["images"], expected_mix(x, got["lam"], got["partner"]))


def test_hdf5storage_written_file(run_cli, tmp_path, outdir):
    hdf5storage = pytest.importorskip("hdf5storage")
    x, y = arrays()
    src, out = tmp_path / "by_hdf5storage.mat", outdir / "out.h5"
    hdf5storage.savemat(str(src), {"x": x, "y": y[:, None]}, format="7.3", matlab_compatible=True)
    r = run_cli("augment", src, out, "--seed", "4", "--block-rows", "9")
    assert r.exit_code == 0, r.stderr
    check_mixed(out, x, y)
    assert run_cli("verify", out).exit_code == 0


def test_sample_axis_on_plain_hdf5_and_resume_fingerprint(run_cli, tmp_path, outdir):
    x, y = arrays()
    src, out = tmp_path / "t.h5", outdir / "out.h5"
    with h5py.File(src, "w") as f:
        f["x"], f["y"] = x.T.copy(), y
    r = run_cli("augment", src, out, "--seed", "1", "--sample-axis", "-1", "--block-rows", "6")
    assert r.exit_code == 0, r.stderr
    check_mixed(out, x, y)
    assert read_sidecar(out)["parameters"]["sample_axis"] == -1
    assert run_cli("verify", out).exit_code == 0
    bad = run_cli("augment", src, outdir / "o2.h5", "--sample-axis", "2")
    assert bad.exit_code == 2 and "--sample-axis 2 is out of range for 'x'" in bad.stderr


def test_sample_axis_refused_for_other_formats(run_cli, tmp_path, outdir):
    x, y = arrays()
    src = tmp_path / "t.npz"
    np.savez(src, x=x.T, y=y)
    r = run_cli("augment", src, outdir / "out.h5", "--sample-axis", "1")
    assert r.exit_code == 2 and "--sample-axis applies to HDF5 input" in r.stderr


def write_netcdf(path, x, y):
    netCDF4 = pytest.importorskip("netCDF4")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("feature", x.shape[1])
        nc.createDimension("sample", x.shape[0])
        nc.createVariable("x", "f4", ("feature", "sample"))[:] = x.T
        nc.createVariable("y", "i4", ("sample",))[:] = y


def test_netcdf_dimension_name(run_cli, tmp_path, outdir):
    x, y = arrays(n=F)  # as many samples as features: row counts alone cannot tell
    src, out = tmp_path / "t.nc", outdir / "out.h5"
    write_netcdf(src, x, y)
    refused = run_cli("augment", src, out, "--seed", "1")
    assert refused.exit_code == 1
    assert "pass --sample-axis sample (or --sample-axis 1)" in refused.stderr
    r = run_cli("augment", src, out, "--seed", "1", "--sample-axis", "sample", "--block-rows", "4", "--num-classes", C)
    assert r.exit_code == 0, r.stderr
    check_mixed(out, x, y)
    assert read_sidecar(out)["parameters"]["sample_axis"] == "sample"
    assert run_cli("verify", out).exit_code == 0
    wrong = run_cli("augment", src, outdir / "o2.h5", "--sample-axis", "time")
    assert wrong.exit_code == 2 and "no dimension named 'time'" in wrong.stderr


def test_netcdf_name_moves_y_too(run_cli, tmp_path, outdir):
    netCDF4 = pytest.importorskip("netCDF4")
    x, _ = arrays()
    soft = np.random.default_rng(1).random((N, 3))
    src, out = tmp_path / "t.nc", outdir / "out.h5"
    with netCDF4.Dataset(src, "w") as nc:
        nc.createDimension("feature", F)
        nc.createDimension("target", 3)
        nc.createDimension("sample", N)
        nc.createVariable("x", "f4", ("feature", "sample"))[:] = x.T
        nc.createVariable("y", "f8", ("target", "sample"))[:] = soft.T
    r = run_cli("augment", src, out, "--seed", "3", "--sample-axis", "sample", "--block-rows", "10")
    assert r.exit_code == 0, r.stderr
    got = check_mixed(out, x)
    np.testing.assert_allclose(got["y"], expected_mix(soft, got["lam"], got["partner"]))
    assert run_cli("verify", out).exit_code == 0


def test_matlab_class_pairing_reads_partners_by_row(run_cli, tmp_path, outdir):
    x, y = arrays(n=120)
    src, out = tmp_path / "data.mat", outdir / "out.h5"
    write_mat(src, x=x, y=y)
    r = run_cli("augment", src, out, "--seed", "8", "--pairing", "within-class", "--block-rows", "16")
    assert r.exit_code == 0, r.stderr
    got = check_mixed(out, x, y)
    assert (y[got["partner"]] == y).all()
    assert run_cli("verify", out).exit_code == 0


def test_inspect_shows_matlab_shapes(run_cli, tmp_path):
    x, y = arrays()
    src = tmp_path / "data.mat"
    write_mat(src, x=x, y=y)
    r = run_cli("inspect", src, "--json")
    assert r.exit_code == 0, r.stderr
    shown = json.loads(r.stdout)["arrays"]
    assert shown["x"]["shape"] == [N, F] and shown["x"]["stored_shape"] == [F, N]
    assert shown["y"]["shape"] == [N]


@pytest.mark.slow
def test_killed_run_resumes_only_with_the_same_sample_axis(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, F)).astype(np.float32)
    src, out = tmp_path / "t.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f["x"] = x.T.copy()
    args = ["augment", src, out, "--no-y", "--seed", "4", "--block-rows", "100", "--copies", "2", "--batch-size", "30"]
    proc, flag = paused([*args, "--sample-axis", "1", "-q"], "progress@40", tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    flag.unlink()
    other = subprocess.run(
        mixup_executable() + [str(a) for a in (*args, "--resume")], capture_output=True, text=True, timeout=120
    )
    assert other.returncode != 0 and "--sample-axis" in other.stderr, other.stderr
    again = subprocess.run(
        mixup_executable() + [str(a) for a in (*args, "--sample-axis", "1", "--resume")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    whole = tmp_path / "whole.h5"
    assert run_in_process(*args[:2], whole, *args[3:], "--sample-axis", "1").returncode == 0
    a, b = load_output(out), load_output(whole)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_allclose(a["x"][:1000], expected_mix(x, a["lam"][:1000], a["partner"][:1000]))


def test_set_of_matlab_files(run_cli, tmp_path, outdir):
    # A set's outputs take their inputs' names: MATLAB files named .h5 (the format is HDF5).
    x, y = arrays(n=50)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_mat(a, x=x[:20], y=y[:20])
    write_mat(b, x=x[20:], y=y[20:])
    r = run_cli("augment", a, b, outdir / "set", "--seed", "6", "--block-rows", "8")
    assert r.exit_code == 0, r.stderr
    got = {k: np.concatenate([load_output(outdir / "set" / n)[k] for n in ("a.h5", "b.h5")]) for k in ("x", "lam")}
    partner = np.concatenate([load_output(outdir / "set" / n)["partner"] for n in ("a.h5", "b.h5")])
    np.testing.assert_allclose(got["x"], expected_mix(x, got["lam"], partner), rtol=1e-6, atol=1e-6)
    assert run_cli("verify", outdir / "set").exit_code == 0


@pytest.mark.slow  # Dask: the whole suite only (a local cluster costs seconds to start)
@pytest.mark.xdist_group("dask")
def test_dask_workers_read_the_same_rows(dask_scheduler, tmp_path, run_mixup):
    netCDF4 = pytest.importorskip("netCDF4")
    x, y = arrays(n=90)
    src = tmp_path / "t.nc"
    with netCDF4.Dataset(src, "w") as nc:
        nc.createDimension("feature", F)
        nc.createDimension("sample", 90)
        nc.createVariable("x", "f4", ("feature", "sample"))[:] = x.T
        nc.createVariable("y", "i4", ("sample",))[:] = y
    args = ("--sample-axis", "sample", "--seed", 2, "--block-rows", 16, "--num-classes", C, "-q")
    assert run_in_process("augment", src, tmp_path / "local.h5", *args).returncode == 0
    remote = run_mixup("augment", src, tmp_path / "dask.h5", *args, "--engine", "dask", "--scheduler", dask_scheduler)
    assert remote.returncode == 0, remote.stderr
    a, b = load_output(tmp_path / "local.h5"), load_output(tmp_path / "dask.h5")
    assert all(a[k].tobytes() == b[k].tobytes() for k in ("x", "y", "lam", "partner"))
    check_mixed(tmp_path / "dask.h5", x, y)


def test_the_written_mat_files_read_in_matlab_orientation_with_mat73(tmp_path):
    # An independent reader of MATLAB v7.3 files sees this module's test files as MATLAB would.
    mat73 = pytest.importorskip("mat73")
    x, y = arrays()
    src = tmp_path / "data.mat"
    write_mat(src, x=x, y=y)
    loaded = mat73.loadmat(str(src))
    np.testing.assert_array_equal(loaded["x"], x)
    np.testing.assert_array_equal(np.ravel(loaded["y"]), y)


def test_sample_axis_refused_for_a_set(run_cli, tmp_path, outdir):
    x, y = arrays()
    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            f["x"], f["y"] = x.T.copy(), y
    r = run_cli("augment", tmp_path / "a.h5", tmp_path / "b.h5", outdir / "set", "--sample-axis", "1")
    assert r.exit_code == 2 and "--sample-axis applies to one input file" in r.stderr
