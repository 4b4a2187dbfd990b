""".npz and .npy safety: members shorter than their headers, impossible shapes,
output names that could leave OUT, nested names, and where compressed
members are inflated (beside OUT, unlinked, within the free space)."""

import io
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, assert_nothing_written, mixup_executable, write_npz

from mixup_cli.core.blend import mix_rows
from mixup_cli.io import npz as npz_module
from mixup_cli.io import open_reader


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def header_only(shape, dtype="<f4") -> bytes:
    """A .npy header for ``shape`` with no data after it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    line = stderr.strip()
    assert "\n" not in line, stderr
    return line


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------- short members


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_member_shorter_than_its_header_is_refused_naming_it(tmp_path, run_cli, outdir, method):
    """x.npy's header says 100 rows but holds 50; the bytes after it are y.npy's."""
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    y = np.arange(100, dtype=np.int64) % 3
    src = tmp_path / "short.npz"
    with zipfile.ZipFile(src, "w", compression=method) as zf:
        zf.writestr("x.npy", npy_bytes(x)[: -200 * 4])  # 50 rows missing
        zf.writestr("y.npy", npy_bytes(y))
        zf.writestr("z.npy", npy_bytes(np.zeros((1000, 4), np.float32)))
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    line = one_line(result.stderr)
    assert f"{src}[x]" in line and "member is shorter than its .npy header" in line
    assert_nothing_written(outdir)


def test_complete_stored_members_still_read(tmp_path):
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    src = write_npz(tmp_path / "ok.npz", x=x, y=np.arange(100) % 3)
    with open_reader(src) as reader:
        assert np.array_equal(reader.read("x", 0, 100), x)


# ---------------------------------------------------------------- impossible shapes


@pytest.mark.parametrize("shape", [(2**62, 2**62), (2**40, 2**30), (-1, 4), (0, 2**70)])
def test_impossible_npy_shapes_get_one_line(tmp_path, run_cli, outdir, shape):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.npy").write_bytes(header_only(shape) + b"\0" * 64)
    np.save(src / "y.npy", np.zeros(4, np.float32))
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    line = one_line(result.stderr)
    assert str(src / "x.npy") in line
    assert "ValueError" not in line and "OverflowError" not in line
    assert "impossible shape" in line or "no array can have" in line or "truncated" in line
    assert_nothing_written(outdir)


# ---------------------------------------------------------------- names


def evil_npz(path: Path, key: str) -> Path:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{key}.npy", npy_bytes(x))
        zf.writestr("y.npy", npy_bytes(np.arange(10) % 2))
    return path


@pytest.mark.parametrize("out_name", ["out.npz", "out", "out.h5"])
@pytest.mark.parametrize("key", ["../x", "a/../../x", "./x", "a//x", "a\\x"])
def test_keys_that_could_leave_out_are_refused_and_nothing_is_written(tmp_path, run_cli, out_name, key):
    work = tmp_path / "work"
    outdir = work / "outputs"
    outdir.mkdir(parents=True)
    src = evil_npz(work / "evil.npz", key)
    before = tree(tmp_path)
    result = run_cli("augment", src, outdir / out_name, "--x-key", key)
    assert result.exit_code == 2, result.stderr
    line = one_line(result.stderr)
    assert "--x-key" in line and repr(key) in line
    assert tree(tmp_path) == before  # nothing inside OUT's directory, nothing outside it


def nested_npz(path: Path):
    x = np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32)
    y = (np.arange(30) % 3).astype(np.int64)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train/images.npy", npy_bytes(x))
        zf.writestr("train/labels.npy", npy_bytes(y))
    return path, x, y


@pytest.mark.parametrize("out_name", ["out.npz", "out", "out.h5"])
def test_nested_keys_are_written_nested_and_verify(tmp_path, run_cli, out_name):
    src, x, y = nested_npz(tmp_path / "nested.npz")
    out = tmp_path / out_name
    result = run_cli("augment", src, out, "--x-key", "train/images", "--y-key", "train/labels", "--seed", 4)
    assert result.exit_code == 0, result.stderr
    if out_name == "out.npz":
        with np.load(out) as f:
            got, lam, partner, ys = f["train/images"], f["lam"], f["partner"], f["train/labels"]
    elif out_name == "out":
        assert (out / "train" / "images.npy").is_file()
        got, lam, partner, ys = (
            np.load(out / n) for n in ("train/images.npy", "lam.npy", "partner.npy", "train/labels.npy")
        )
    else:
        with h5py.File(out) as f:
            got, lam, partner, ys = (f[n][()] for n in ("train/images", "lam", "partner", "train/labels"))
    assert np.array_equal(got, mix_rows(x, x[partner], lam))
    eye = np.eye(3, dtype=np.float32)
    assert np.array_equal(ys, mix_rows(eye[y], eye[y][partner], lam))
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout + result.stderr


def test_nested_npy_directory_is_read_as_input(tmp_path, run_cli):
    src = tmp_path / "in"
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    (src / "train").mkdir(parents=True)
    np.save(src / "train" / "x.npy", x)
    np.save(src / "y.npy", np.eye(2, dtype=np.float32)[np.arange(12) % 2])
    with open_reader(src) as reader:
        assert "train/x" in reader.keys()
        assert np.array_equal(reader.read("train/x", 0, 12), x)
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--x-key", "train/x").exit_code == 0
    with h5py.File(out) as f:
        assert np.array_equal(f["train/x"][()], mix_rows(x, x[f["partner"][()]], f["lam"][()]))


# ---------------------------------------------------------------- inflation of compressed members


def test_inflated_members_leave_no_file_behind(tmp_path):
    """The scratch file is unlinked once made: only the map holds it, so no
    kill can leave it in the folder."""
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    src = write_npz(tmp_path / "in.npz", compressed=True, x=x, y=np.arange(500) % 4)
    folder = tmp_path / "out_dir"
    folder.mkdir()
    prefix = folder / ".out.h5.mixup-partial"
    reader = open_reader(src, scratch_prefix=prefix)
    try:
        assert np.array_equal(reader.read("x", 0, 500), x)
        assert np.array_equal(reader.take("x", np.array([499, 3, 3])), x[[499, 3, 3]])
        assert list(folder.iterdir()) == []
    finally:
        reader.close()


def test_inflation_checks_the_declared_size_against_free_space(tmp_path, run_cli, outdir, monkeypatch):
    x = np.zeros((2048, 512), np.float32)  # 4 MiB, deflates to a few KiB
    src = write_npz(tmp_path / "bomb.npz", compressed=True, x=x, y=np.zeros(2048, np.float32))
    monkeypatch.setattr(npz_module, "_free_bytes", lambda folder: 1024 * 1024)

    def never(prefix):
        raise AssertionError("inflated although the space was refused")

    monkeypatch.setattr(npz_module, "_scratch_file", never)
    result = run_cli("augment", src, outdir / "out.h5")
    assert result.exit_code == 1, result.stderr
    line = one_line(result.stderr)
    assert "bomb.npz[x]" in line and "4.0 MiB" in line and "1.0 MiB is free" in line
    assert_nothing_written(outdir)


def test_inflation_writes_no_more_than_the_header_declares(tmp_path):
    """A member whose stream goes on past its .npy header's size: only the declared bytes are inflated."""
    x = np.arange(64, dtype=np.float32).reshape(16, 4)
    src = tmp_path / "long.npz"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", npy_bytes(x) + b"\0" * (8 * 1024 * 1024))
    with open_reader(src, scratch_prefix=tmp_path / ".o.mixup-partial") as reader:
        arr = reader._array("x")
        assert np.array_equal(arr, x)
        assert arr._mmap.size() == len(npy_bytes(x))  # the scratch file's length: header and 256 bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.npz"]


@pytest.mark.slow
def test_compressed_input_uses_no_tmpdir_and_a_kill_leaves_nothing(tmp_path):
    """The run inflates beside OUT (never in $TMPDIR); SIGKILL mid-run leaves at
    most partial files, which the next run removes."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    outdir = tmp_path / "outputs"
    outdir.mkdir()
    x = np.random.default_rng(1).integers(0, 4, (20000, 256)).astype(np.uint8)
    src = write_npz(tmp_path / "in.npz", compressed=True, x=x, y=(np.arange(20000) % 10).astype(np.int64))
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        mixup_executable() + ["augment", str(src), str(outdir / "out.h5"), "--copies", "50"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (outdir / ".out.h5.mixup-partial").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)  # input inflated and memory-mapped by now: kill while rows stream
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert list(tmpdir.iterdir()) == []
    left = [p.name for p in outdir.iterdir()]
    assert all(name.startswith(".out.h5.mixup-partial") for name in left), left
    for args in (["augment", str(src), str(outdir / "out.h5"), "--copies", "1"], ["verify", str(outdir / "out.h5")]):
        result = subprocess.run(mixup_executable() + args, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["out.h5", "out.h5.provenance.json"]
    assert list(tmpdir.iterdir()) == []


def test_without_o_tmpfile_the_named_scratch_file_is_unlinked_at_once(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    x = np.arange(300, dtype=np.float64).reshape(100, 3)
    src = write_npz(tmp_path / "in.npz", compressed=True, x=x)
    folder = tmp_path / "out_dir"
    folder.mkdir()
    with open_reader(src, scratch_prefix=folder / ".out.npz.mixup-partial") as reader:
        assert np.array_equal(reader.read("x", 0, 100), x)
        assert list(folder.iterdir()) == []
