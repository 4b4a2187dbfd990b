"""``--overwrite`` replaces only what a mixup run made, and says before any
work when the final rename could not or must not replace OUT."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_arrays, mixup_executable, read_sidecar, run_in_process, write_h5


@pytest.fixture
def src(tmp_path):
    x, y = make_arrays(n=200, x_shape=(4,))
    return write_h5(tmp_path / "in.h5", x=x, y=y)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_a_directory_of_other_outputs_is_not_replaced(src, tmp_path, run_mixup):
    """The shard loop: mixed/ holds a.h5, b.h5 and their sidecars. `--overwrite`
    into mixed/ itself must not delete them."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for shard in ("a", "b"):
        done = run_in_process("augment", src, mixed / f"{shard}.h5", "--seed", 1, "--quiet")  # the previous outputs
        assert done.returncode == 0, done.stderr
    before = snapshot(mixed)
    result = run_mixup("augment", src, mixed, "--seed", 2, "--overwrite")
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error: ")
    for name in ("a.h5", "a.h5.provenance.json", "b.h5", "b.h5.provenance.json"):
        assert name in line
    assert "no mixup run wrote there" in line
    assert snapshot(mixed) == before and hidden(tmp_path) == []  # refused before any work


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out", "out.zarr"])
def test_a_previous_directory_output_is_replaced_but_not_with_foreign_files(src, tmp_path, run_mixup, name):
    if name.endswith(".zarr"):
        pytest.importorskip("zarr", reason="Zarr is an optional extra")
    out = tmp_path / name
    assert run_in_process("augment", src, out, "--seed", 1, "--quiet").returncode == 0  # the previous output
    again = run_mixup("augment", src, out, "--seed", 2, "--overwrite", "--quiet")
    assert again.returncode == 0, again.stderr
    assert read_sidecar(out)["parameters"]["seed"] == 2 and hidden(tmp_path) == []

    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused = run_mixup("augment", src, out, "--seed", 3, "--overwrite")
    assert refused.returncode == 1 and "notes.txt" in refused.stderr, refused.stderr
    assert snapshot(out) == before and read_sidecar(out)["parameters"]["seed"] == 2
    assert hidden(tmp_path) == []


@pytest.mark.slow
def test_a_mixup_zarr_store_without_its_sidecar_is_still_ours(src, tmp_path, run_mixup):
    pytest.importorskip("zarr", reason="Zarr is an optional extra")
    out = tmp_path / "out.zarr"
    assert run_in_process("augment", src, out, "--seed", 1, "--quiet").returncode == 0  # the previous output
    Path(f"{out}.provenance.json").unlink()
    done = run_mixup("augment", src, out, "--seed", 2, "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    # A store some other tool wrote (no mixup attributes) is not.
    import zarr

    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("x", shape=(3,), dtype="f4")
    refused = run_mixup("augment", src, other, "--seed", 2, "--overwrite")
    assert refused.returncode == 1 and "zarr.json" in refused.stderr


@pytest.mark.slow
def test_npy_files_no_sidecar_names_are_refused_an_empty_directory_is_replaced(src, tmp_path, run_mixup):
    data = tmp_path / "arrays"
    data.mkdir()
    np.save(data / "x.npy", np.zeros((3, 2), np.float32))
    refused = run_mixup("augment", src, data, "--seed", 1, "--overwrite")
    assert refused.returncode == 1 and "x.npy" in refused.stderr
    assert (data / "x.npy").exists()

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    done = run_mixup("augment", src, empty, "--seed", 1, "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["lam.npy", "partner.npy", "x.npy", "y.npy"]


@pytest.mark.slow
def test_a_single_file_out_is_replaced_whatever_it_holds(src, tmp_path, run_mixup):
    """A file named as OUT is the user's choice: --overwrite replaces it (and nothing else)."""
    out = tmp_path / "out.h5"
    out.write_bytes(b"not a mixup output")
    neighbour = tmp_path / "keep.txt"
    neighbour.write_text("keep")
    done = run_mixup("augment", src, out, "--seed", 1, "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n" and neighbour.read_text() == "keep"


def test_a_directory_where_a_file_goes_is_refused_before_any_work(src, tmp_path, run_mixup):
    out = tmp_path / "out.h5"
    out.mkdir()
    (out / "data").write_text("x")
    result = run_mixup("augment", src, out, "--seed", 1, "--overwrite")
    assert result.returncode == 1 and "exists and is a directory" in result.stderr
    assert (out / "data").read_text() == "x" and hidden(tmp_path) == []


@pytest.mark.slow
def test_a_link_is_replaced_never_what_it_points_to(src, tmp_path, run_mixup):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "a.h5").write_bytes(b"data")
    link = tmp_path / "out"
    link.symlink_to(target, target_is_directory=True)
    done = run_mixup("augment", src, link, "--seed", 1, "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    assert not link.is_symlink() and (link / "x.npy").exists()
    assert snapshot(target) == {"a.h5": b"data"}


def test_sticky_directory_refusal_comes_before_any_work(src, tmp_path, monkeypatch):
    """Another user's OUT in a sticky directory cannot be renamed over: said up front."""
    from mixup_cli.core.errors import OutputError
    from mixup_cli.run import preflight

    sticky = tmp_path / "shared"
    sticky.mkdir()
    sticky.chmod(0o1777)
    out = sticky / "out.h5"
    out.write_bytes(b"someone else's")
    me = os.stat(out).st_uid + 1000  # neither the file's owner nor the directory's
    monkeypatch.setattr(os, "geteuid", lambda: me)
    with pytest.raises(OutputError, match="sticky directory"):
        preflight.check_output_path(src, out, overwrite=True)
    monkeypatch.undo()
    preflight.check_output_path(src, out, overwrite=True)  # the owner may


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_sticky_directory_refusal_through_the_executable(src):
    # Under a folder every user can search (pytest's own temporary folder is root's alone).
    base = Path(tempfile.mkdtemp(prefix="mixup-sticky-", dir="/tmp"))
    try:
        base.chmod(0o755)
        _sticky_refusal_as_nobody(src, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _sticky_refusal_as_nobody(src, base):
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        as_nobody + [*mixup_executable(), "--version"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=base,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run the project here: {probe.stderr.strip()[-200:]}")
    mine = base / "in.h5"
    shutil.copy(src, mine)
    mine.chmod(0o644)
    sticky = base / "shared"
    sticky.mkdir()
    sticky.chmod(0o1777)
    out = sticky / "out.h5"
    out.write_bytes(b"root's")  # owned by root; the run is user nobody's
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(sticky))
    cmd = as_nobody + [*mixup_executable(), "augment", str(mine), str(out), "--seed", "1", "--overwrite"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=sticky)
    assert result.returncode == 1, result.stderr
    assert "sticky directory" in result.stderr and out.read_bytes() == b"root's"
    assert sorted(p.name for p in sticky.iterdir()) == ["out.h5"]
