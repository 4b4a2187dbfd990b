"""Class pairings on compressed input read from an uncompressed scratch
copy: the same bytes as reading the input itself, and nothing left behind."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import KILLER, read_sidecar, write_h5

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import OutputError
from mixup_cli.io import hdf5
from mixup_cli.run import scratch
from mixup_cli.run.planner import build_plan
from mixup_cli.run.preflight import check_free_space
from mixup_cli.run.source import open_source


def write_gzip_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, chunks=(min(16, len(value)),) + value.shape[1:], compression="gzip")
    return Path(path)


def images_and_labels(n=90):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    y = np.sort(rng.integers(0, 5, n)).astype(np.int16)  # integer classes, sorted: encoded while copied
    return x, y


def arrays_of(path):
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        dict(pairing="within-class"),
        dict(pairing="between-class", copies=2, include_original=True),
        dict(pairing="within-class", y_format="pair"),
        dict(pairing="within-class", label_smoothing=0.1, x_dtype="float32"),
        dict(pairing="between-class", method="cutmix", layout="NHWC"),
    ],
)
def test_compressed_input_gives_the_bytes_of_the_uncompressed_one(tmp_path, monkeypatch, extra):
    x, y = images_and_labels()
    plain = write_h5(tmp_path / "plain.h5", x=x, y=y)
    packed = write_gzip_h5(tmp_path / "packed.h5", x=x, y=y)
    copies = []
    real_copy = scratch._copy
    monkeypatch.setattr(scratch, "_copy", lambda *a: copies.append(a[2]) or real_copy(*a))
    common = dict(seed=3, block_rows=20, batch_size=7, command_line=[], **extra)
    augment(AugmentRequest(plain, tmp_path / "from-plain.h5", **common))
    assert copies == []  # uncompressed input: read as it is
    augment(AugmentRequest(packed, tmp_path / "from-packed.h5", **common))
    assert copies == [tmp_path / ".from-packed.h5.mixup-partial.scratch.h5"]
    a, b = arrays_of(tmp_path / "from-plain.h5"), arrays_of(tmp_path / "from-packed.h5")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert (
        read_sidecar(tmp_path / "from-plain.h5")["output"]["arrays"]
        == read_sidecar(tmp_path / "from-packed.h5")["output"]["arrays"]
    )
    assert sorted(p.name for p in tmp_path.iterdir() if "mixup" in p.name) == []


def test_the_copy_is_removed_when_the_run_fails(tmp_path, monkeypatch):
    x, y = images_and_labels()
    packed = write_gzip_h5(tmp_path / "packed.h5", x=x, y=y)
    real_read = hdf5.Reader.read_into

    def failing_read(self, key, start, stop, out):  # own rows and partners alike
        if self.path.name.endswith(".scratch.h5"):
            assert self.path.exists()
            raise OSError("bad sector")
        return real_read(self, key, start, stop, out)

    monkeypatch.setattr(hdf5.Reader, "read_into", failing_read)
    with pytest.raises(OSError, match="bad sector"):
        augment(AugmentRequest(packed, tmp_path / "out.h5", seed=1, block_rows=20, pairing="within-class"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed.h5"]


@pytest.mark.parametrize(
    "pairing, block_rows, compressed, expected",
    [
        ("within-class", 20, True, True),
        ("within-class", 45, True, False),  # two blocks: inflating twice is cheaper than a copy
        ("within-class", 20, False, False),
        ("global", 20, True, True),  # partners i.i.d. over all rows, read by index
        ("global", 45, True, False),
        ("global", 90, True, False),  # one block: partners from the block in memory
        ("batch", 20, True, False),  # reads whole blocks
    ],
)
def test_a_copy_is_made_only_where_it_pays(tmp_path, pairing, block_rows, compressed, expected):
    x, y = images_and_labels()
    src = (write_gzip_h5 if compressed else write_h5)(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")
    try:
        plan = build_plan(source, alpha=0.2, seed=1, block_rows=block_rows, pairing=pairing)
        assert scratch.wanted(source, plan) is expected
        # x: 90 rows of 48 uint8; y: 90 one-hot rows of 5 float32
        assert scratch.scratch_bytes(source, plan) == (90 * 48 + 90 * 5 * 4 if expected else 0)
    finally:
        source.reader.close()


def test_free_space_check_counts_the_copy(tmp_path, monkeypatch):
    class Small:
        f_bavail, f_frsize = 100, 1024  # 100 KiB free

    monkeypatch.setattr(os, "statvfs", lambda path: Small())
    specs = {"x": hdf5.ArraySpec((10, 10), np.dtype("float32"))}  # 400 bytes
    check_free_space(tmp_path / "out.h5", "hdf5", specs, "gzip", extra=50 * 1024)
    with pytest.raises(
        OutputError, match="an uncompressed copy of the input .* need about 0.2 MiB but 0.1 MiB is free"
    ):
        check_free_space(tmp_path / "out.h5", "hdf5", specs, "gzip", extra=200 * 1024)


def test_verify_recomputes_from_a_copy_too_and_removes_it(tmp_path, run_cli, monkeypatch):
    x, y = images_and_labels()
    packed = write_gzip_h5(tmp_path / "packed.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    assert (
        run_cli(
            "augment", packed, out, "--seed", 2, "--block-rows", 20, "--pairing", "between-class", "--quiet"
        ).exit_code
        == 0
    )
    copies = []
    real_copy = scratch._copy
    monkeypatch.setattr(scratch, "_copy", lambda *a: copies.append(a[2]) or real_copy(*a))
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert len(copies) == 1 and copies[0].parent == tmp_path and copies[0].name.startswith(".out.h5.mixup-verify-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5", "out.h5.provenance.json", "packed.h5"]


_KILLED = (
    KILLER
    + """
import sys
from mixup_cli.commands import pipeline; from mixup_cli.run import resume
resume.SAVE_INTERVAL = 0
src, out = sys.argv[1], sys.argv[2]

pipeline.augment(pipeline.AugmentRequest(src, out, seed=5, block_rows=20, batch_size=10, pairing="within-class"),
                 progress=Killer(out, 50))
"""
)


@pytest.mark.slow
def test_a_killed_run_resumes_with_a_fresh_copy(tmp_path, run_mixup):
    import subprocess
    import sys

    from conftest import REPO

    x, y = images_and_labels()
    packed = write_gzip_h5(tmp_path / "packed.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED, str(packed), str(out)], env=env, capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr
    assert (tmp_path / ".out.h5.mixup-partial.scratch.h5").exists()  # left by the kill, like the partial output

    args = ("--seed", 5, "--block-rows", 20, "--pairing", "within-class", "--quiet")
    resumed = run_mixup("augment", packed, out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] > 0
    assert run_mixup("augment", packed, tmp_path / "ref.h5", *args).returncode == 0
    got, want = arrays_of(out), arrays_of(tmp_path / "ref.h5")
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    assert sorted(p.name for p in tmp_path.iterdir() if "mixup" in p.name) == []
