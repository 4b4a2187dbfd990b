"""``mixup inspect``: arrays and the provenance summary, as text and JSON."""

import json
import shutil

import numpy as np
import pytest
from conftest import make_arrays, read_sidecar, write_h5, write_npy_dir, write_npz


@pytest.fixture
def output(run_cli, tmp_path):
    x, y = make_arrays(n=30, x_shape=(4, 3))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment",
        src,
        out,
        "--seed",
        17,
        "--alpha",
        0.4,
        "--pairing",
        "within-class",
        "--copies",
        2,
        "--include-original",
        "--block-rows",
        8,
        "--compression",
        "gzip",
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    return out


def test_text_of_an_output(run_cli, output):
    result = run_cli("inspect", output)
    assert result.exit_code == 0
    text = result.stdout
    record = read_sidecar(output)
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:6]}
    assert lines["x"] == ["(90,", "4,", "3)", "float32", "(8,", "4,", "3)", "gzip"]
    assert lines["lam"] == ["(90,)", "float64", "(8,)", "gzip"]
    assert lines["partner"][1] == "int64" and lines["y"][2] == "float32"
    for expected in (
        "seed              17",
        "alpha             0.4",
        "pairing           within-class",
        "copies            2",
        "include original  yes",
        "block rows        8",
        f"run id            {record['run_id']}",
        f"input sha256      {record['input']['files'][0]['sha256']}  in.h5",
    ):
        assert expected in text, expected
    assert "warning" not in text


def test_json_of_an_output(run_cli, output):
    result = run_cli("inspect", output, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    record = read_sidecar(output)
    assert info["format"] == "hdf5"
    assert info["arrays"]["x"] == {"shape": [90, 4, 3], "dtype": "float32", "chunks": [8, 4, 3], "compression": "gzip"}
    p = info["provenance"]
    assert (p["seed"], p["alpha"], p["pairing"], p["copies"], p["include_original"]) == (
        17,
        0.4,
        "within-class",
        2,
        True,
    )
    assert p["run_id"] == record["run_id"] == info["attributes"]["run_id"]
    assert p["run_id_matches_file"] is True
    assert p["input"]["files"][0]["sha256"] == record["input"]["files"][0]["sha256"]
    assert p["input"]["path"] == record["input"]["path"]


def test_sidecar_of_another_run_is_flagged(run_cli, output, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(output, other)
    sidecar = json.loads((tmp_path / "out.h5.provenance.json").read_text())
    sidecar["run_id"] = "0" * 32
    (tmp_path / "other.h5.provenance.json").write_text(json.dumps(sidecar))
    result = run_cli("inspect", other)
    assert result.exit_code == 0 and "warning: the file's run_id attribute differs" in result.stdout


def test_compressed_npz_without_sidecar(run_cli, tmp_path):
    x, y = make_arrays(n=12, x_shape=(5,))
    src = write_npz(tmp_path / "in.npz", compressed=True, x=x, y=y)
    result = run_cli("inspect", src)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"{src} (npz)"
    assert "  x      (12, 5)  float32  -       deflate" in result.stdout
    assert result.stdout.splitlines()[-1] == "no provenance sidecar"
    info = json.loads(run_cli("inspect", src, "--json").stdout)
    assert info["provenance"] is None and info["arrays"]["y"]["compression"] == "deflate"


def test_npy_directory_output(run_cli, tmp_path):
    x, y = make_arrays(n=12)
    src = write_npy_dir(tmp_path / "in", x=x, y=np.argmax(y, axis=1).astype(np.float32)[:, None])
    out = tmp_path / "mixed"
    assert run_cli("augment", src, out, "--seed", 1, "--quiet").exit_code == 0
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["format"] == "npydir"
    assert set(info["arrays"]) == {"x", "y", "lam", "partner"}
    assert info["arrays"]["y"] == {"shape": [12, 1], "dtype": "float32", "chunks": None, "compression": "none"}
    assert info["provenance"]["seed"] == 1 and info["provenance"]["run_id_matches_file"] is None


def test_missing_file(run_cli, tmp_path):
    result = run_cli("inspect", tmp_path / "nope.h5")
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_unreadable_array_is_marked_and_the_rest_shown(run_cli, tmp_path):
    import h5py

    src = tmp_path / "mixed_types.h5"
    with h5py.File(src, "w") as f:
        f["x"] = np.zeros((5, 2), np.float32)
        f["be"] = np.zeros(5, ">i2")
        f["be_float"] = np.zeros(5, ">f8")
        odd = h5py.h5t.IEEE_F32LE.copy()
        odd.set_ebias(100)
        h5py.h5d.create(f.id, b"odd_float", odd, h5py.h5s.create_simple((5,)))
        f["rec"] = np.zeros(5, [("a", "<f4"), ("b", "i1")])
        f["name"] = np.array([b"a" * 224] * 5)
        f["blob"] = np.zeros(5, "V344")
        h5py.h5d.create(f.id, b"when", h5py.h5t.UNIX_D64LE, h5py.h5s.create_simple((5,)))  # H5T_TIME
        tid = h5py.h5t.STD_I16LE.copy()
        tid.set_precision(12)
        tid.set_offset(2)
        h5py.h5d.create(f.id, b"packed", tid, h5py.h5s.create_simple((5,)))
    result = run_cli("inspect", src)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "big-endian int16" in text
    assert "compound {a: float32, b: int8}" in text
    assert "string (fixed, 224 bytes)" in text
    assert "opaque (344 bytes)" in text
    assert "int16 (12 bits at bit 2)" in text
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert "big-endian float64" in lines["be_float"] and "non-IEEE" not in lines["be_float"]
    # h5py reads it as float64 (HDF5 converts): both are said.
    assert "32-bit float, non-IEEE (exponent bias 100), read as float64" in lines["odd_float"]
    assert "void344" not in text and "bytes224" not in text
    when = [line for line in text.splitlines() if line.split()[:1] == ["when"]]
    assert len(when) == 1 and "unreadable" in when[0] and "H5T_TIME" in when[0]
    info = json.loads(run_cli("inspect", src, "--json").stdout)
    assert info["arrays"]["x"] == {"shape": [5, 2], "dtype": "float32", "chunks": None, "compression": "none"}
    assert info["arrays"]["when"]["shape"] is None and "H5T_TIME" in info["arrays"]["when"]["error"]
