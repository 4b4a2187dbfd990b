"""``mixup verify``: passes on fresh outputs, names what differs otherwise."""

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import make_arrays, read_sidecar, write_h5, write_npy_dir, write_npz

N = 40
ROW_BYTES = 4 * 3 * 4  # x rows: (4, 3) float32


def make_input(fmt, tmp_path):
    x, y = make_arrays(n=N, x_shape=(4, 3))
    if fmt == "h5":
        return write_h5(tmp_path / "in.h5", x=x, y=y)
    if fmt == "npz":
        return write_npz(tmp_path / "in.npz", compressed=True, x=x, y=y)
    return write_npy_dir(tmp_path / "in", x=x, y=y)


def run_augment(run_cli, src, out, *args):
    result = run_cli("augment", src, out, "--seed", 7, "--block-rows", 8, "--quiet", *args)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def h5_output(run_cli, tmp_path):
    src = make_input("h5", tmp_path)
    return src, run_augment(run_cli, src, tmp_path / "out.h5")


def edit_sidecar(out, **changes):
    path = out.with_name(out.name + ".provenance.json")
    record = json.loads(path.read_text())
    record["parameters"].update(changes)
    path.write_text(json.dumps(record))


def flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0x10]))


@pytest.mark.slow
@pytest.mark.parametrize("in_fmt", ["h5", "npz", "npydir"])
@pytest.mark.parametrize("out_name,pairing", [("out.h5", "global"), ("out.npz", "within-class"), ("out", "batch")])
def test_fresh_outputs_verify(run_cli, tmp_path, in_fmt, out_name, pairing):
    src = make_input(in_fmt, tmp_path)
    out = run_augment(run_cli, src, tmp_path / out_name, "--pairing", pairing, "--copies", 2, "--include-original")
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "OK"
    assert "FAIL" not in result.stdout


def test_changed_value_in_x_is_found(h5_output, run_cli):
    _, out = h5_output
    with h5py.File(out, "r+") as f:
        f["x"][13, 2, 1] += 1
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  output data: 'x': SHA-256" in result.stdout
    assert "ok    output files" in result.stdout  # same size; no file hash recorded by default
    assert "'x' first at row 13 (1 of 40 rows differ)" in result.stdout
    assert result.stdout.splitlines()[-1] == "FAILED: output data, recompute"


def test_flipped_byte_in_the_hdf5_file_is_found(h5_output, run_cli):
    _, out = h5_output
    with h5py.File(out, "r") as f:
        ds = f["x"]
        chunk_rows = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((chunk_rows, 0, 0))  # second chunk
        offset = info.byte_offset + 3 * ROW_BYTES + 2  # its fourth row
    flip_byte(out, offset)
    result = run_cli("verify", out, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_difference"] == {"array": "x", "row": chunk_rows + 3}
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"output data", "recompute"}


def test_flipped_byte_in_a_npy_output_is_found(run_cli, tmp_path):
    src = make_input("h5", tmp_path)
    out = run_augment(run_cli, src, tmp_path / "out")
    x_file = out / "x.npy"
    header = x_file.stat().st_size - N * ROW_BYTES
    flip_byte(x_file, header + 21 * ROW_BYTES + 5)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  output data: 'x': SHA-256" in result.stdout
    assert "'x' first at row 21" in result.stdout


def test_changed_input_is_found(h5_output, run_cli):
    src, out = h5_output
    with h5py.File(src, "r+") as f:
        f["y"][30] = f["y"][31][()] * 0.5
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  input files" in result.stdout and str(src) in result.stdout
    assert "ok    output files" in result.stdout
    assert "FAIL  recompute" in result.stdout and "'y'" in result.stdout


@pytest.mark.parametrize(
    "edit,names",
    [
        ({"alpha": 0.3}, ["'lam' first at row 0"]),
        ({"seed": 8}, ["'lam' first at row 0", "'partner'"]),
        ({"pairing": "batch"}, ["'partner'"]),
    ],
)
def test_edited_sidecar_parameters_are_found(h5_output, run_cli, edit, names):
    _, out = h5_output
    edit_sidecar(out, **edit)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "ok    output files" in result.stdout and "ok    input files" in result.stdout
    assert "FAIL  recompute: the recomputed output differs" in result.stdout
    for name in names:
        assert name in result.stdout


def test_invalid_sidecar_parameters_fail_the_check(h5_output, run_cli):
    _, out = h5_output
    edit_sidecar(out, alpha=-1)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  recompute: could not recompute the output: --alpha" in result.stdout


def test_moved_input_needs_and_accepts_input_option(h5_output, run_cli, tmp_path):
    src, out = h5_output
    moved = tmp_path / "elsewhere.h5"
    shutil.move(src, moved)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "not found" in result.stdout and "--input" in result.stdout
    result = run_cli("verify", out, "--input", moved)
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "OK"


def test_moved_output_directory_still_verifies(run_cli, tmp_path):
    src = make_input("npydir", tmp_path)
    out = run_augment(run_cli, src, tmp_path / "out")
    (tmp_path / "moved").mkdir()
    shutil.move(out, tmp_path / "moved" / "out")
    shutil.move(str(out) + ".provenance.json", tmp_path / "moved" / "out.provenance.json")
    result = run_cli("verify", tmp_path / "moved" / "out", "--batch-size", 3)
    assert result.exit_code == 0, result.stdout


def test_json_report_of_a_fresh_output(h5_output, run_cli):
    _, out = h5_output
    result = run_cli("verify", out, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["first_difference"] is None
    assert [c["name"] for c in report["checks"]] == ["output files", "output data", "input files", "recompute", "law"]
    assert result.stderr == ""


def test_missing_sidecar_is_an_error(h5_output, run_cli):
    _, out = h5_output
    out.with_name(out.name + ".provenance.json").unlink()
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "no provenance sidecar" in result.stderr


@pytest.mark.slow
def test_installed_executable_exit_codes(h5_output, run_mixup):
    _, out = h5_output
    assert run_mixup("verify", out, "--quiet").returncode == 0
    edit_sidecar(out, seed=read_sidecar(out)["parameters"]["seed"] + 1)
    proc = run_mixup("verify", out)
    assert proc.returncode == 1 and "FAILED: recompute" in proc.stdout


@pytest.mark.parametrize(
    "extra",
    [
        ["--num-classes", "6", "--label-smoothing", "0.1"],
        ["--y-format", "pair"],
        ["--x-dtype", "float64"],
    ],
)
def test_target_and_dtype_options_are_recomputed(run_cli, tmp_path, extra):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 5, 30)
    src = write_h5(tmp_path / "in.h5", x=x, y=labels)
    out = run_augment(run_cli, src, tmp_path / "out.h5", *extra)
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")
