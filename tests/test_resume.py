"""SIGKILL at chosen points of a real ``mixup augment`` process, then ``--resume``.

A small wrapper runs the command line with one function patched to kill the
process (SIGKILL, so nothing of the run's own cleanup happens) at a given
point: before the first journal save, right after it, or in the middle of a
write. ``--resume`` then ends with exit 0 and the arrays of an uninterrupted
run, by continuing or, when nothing was journaled, by starting over and
saying so. The random-instant version of this is ``bench/soak_kill.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, cli_runner, load_output, make_arrays, mixup_executable, read_sidecar, write_h5

from mixup_cli.cli import cli

ARGS = ["--seed", "11", "--block-rows", "100", "--copies", "2"]

_KILL_AT = """
import os, signal, sys
from mixup_cli.commands import pipeline; from mixup_cli.run import resume
point, n = sys.argv[1], int(sys.argv[2])
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "save":  # instead of the n-th journal save (1: the empty journal made with the output)
    original = resume.Journal.save
    def save(self):
        calls[0] += 1
        if calls[0] == n:
            die()
        original(self)
        if calls[0] == -n:  # -n: right after it
            die()
    resume.Journal.save = save
elif point == "write":  # half-way through the n-th write of rows
    create = pipeline.create_writer
    def create_writer(*args, **kwargs):
        writer = create(*args, **kwargs)
        write = writer.write
        def killing_write(key, start, data):
            calls[0] += 1
            if calls[0] == n:
                write(key, start, data[: len(data) // 2])
                die()
            write(key, start, data)
        writer.write = killing_write
        return writer
    pipeline.create_writer = create_writer
from mixup_cli.cli import main
main(sys.argv[3:], prog_name="mixup")
"""


def env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mixup(*args):
    return subprocess.run(
        mixup_executable() + [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env()
    )


def killed(point: str, n: int, *args) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", _KILL_AT, point, str(n), "augment"] + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)
    return result


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if ".mixup-partial" in p.name)


@pytest.fixture
def src(tmp_path):
    x, y = make_arrays(n=1000, x_shape=(6,), seed=3)
    return write_h5(tmp_path / "in.h5", x=x, y=y)


_REFERENCES: dict = {}


def reference(src, tmp_path, name, *extra) -> dict[str, np.ndarray]:
    """An uninterrupted run's arrays, made in-process (the interrupted runs are
    the real processes) once per format and options: every ``src`` holds the same rows."""
    key = (name, *extra)
    if key not in _REFERENCES:
        ref = tmp_path / f"ref-{len(_REFERENCES)}" / name  # one folder per reference: a test may need two
        ref.parent.mkdir()
        done = cli_runner().invoke(cli, ["augment", str(src), str(ref), *ARGS, *map(str, extra), "--quiet"])
        assert done.exit_code == 0, done.output
        _REFERENCES[key] = load_output(ref)
    return _REFERENCES[key]


def assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
def test_killed_before_the_first_journal_entry_resume_starts_over(src, tmp_path, compression):
    """The HDF5 partial exists but nothing is journaled: --resume starts over, in one line."""
    out = tmp_path / "out.h5"
    killed("save", 1, src, out, *ARGS, "--compression", compression)
    assert (tmp_path / ".out.h5.mixup-partial").exists()
    assert not (tmp_path / ".out.h5.mixup-partial.journal.json").exists()
    result = mixup("augment", src, out, *ARGS, "--compression", compression, "--resume", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no journal" in lines[0] and "starting from the beginning" in lines[0], lines
    assert partials(tmp_path) == []
    assert "resumed_tasks" not in read_sidecar(out)["execution"]
    assert_same_arrays(load_output(out), reference(src, tmp_path, "out.h5", "--compression", compression))


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
def test_killed_right_after_the_first_journal_entry_resumes(src, tmp_path, compression):
    out = tmp_path / "out.h5"
    killed("save", -2, src, out, *ARGS, "--compression", compression)  # just after the first task is recorded
    journal = json.loads((tmp_path / ".out.h5.mixup-partial.journal.json").read_text())
    assert journal["done"] == [[0, 0]]
    # The partial opens as it is: its metadata was complete on disk.
    with h5py.File(tmp_path / ".out.h5.mixup-partial", "r") as f:
        assert f["x"].shape == (2000, 6)
    result = mixup("augment", src, out, *ARGS, "--compression", compression, "--resume", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] == 1
    assert_same_arrays(load_output(out), reference(src, tmp_path, "out.h5", "--compression", compression))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,compression",
    [
        ("out.h5", "none"),
        # compressed HDF5 and Zarr are resumed by
        # test_killed_right_after_the_first_journal_entry_resumes and test_cli_signals too
        ("out.h5", "gzip"),
        ("out.h5", "lzf"),
        ("out.npz", "none"),
        ("out", "none"),
        ("out.zarr", "none"),
        ("out.parquet", "none"),
        ("out.parquet", "zstd"),
    ],
)
def test_killed_mid_write_resumes_to_the_uninterrupted_arrays(src, tmp_path, name, compression):
    if name.endswith(".zarr"):
        pytest.importorskip("zarr")
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    out = tmp_path / name
    # 4 arrays (x, y, lam, partner) per task: half-way through x of the 6th task.
    killed("write", 21, src, out, *ARGS, "--compression", compression)
    done = json.loads(Path(f"{tmp_path / ('.' + name)}.mixup-partial.journal.json").read_text())["done"]
    assert done and done[0][0] == 0
    if name == "out.h5" and compression == "none":
        # The rows of the recorded tasks are in the file as it lies after the kill.
        want = reference(src, tmp_path, name)
        with h5py.File(tmp_path / ".out.h5.mixup-partial", "r") as f:
            assert f["x"][:100].tobytes() == want["x"][:100].tobytes()
    result = mixup("augment", src, out, *ARGS, "--compression", compression, "--resume", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] >= 1
    assert partials(tmp_path) == []
    assert_same_arrays(load_output(out), reference(src, tmp_path, name, "--compression", compression))


@pytest.mark.slow
def test_resume_of_a_complete_output_exits_0(src, tmp_path):
    """A retrying script can always pass --resume: a finished OUT of the same command is left alone."""
    out = tmp_path / "out.h5"
    assert mixup("augment", src, out, *ARGS, "--quiet").returncode == 0
    before = (out.stat().st_mtime_ns, Path(f"{out}.provenance.json").read_bytes())
    for seed_args in (ARGS, [a for a in ARGS if a not in ("--seed", "11")]):  # the seed may come from the sidecar
        again = mixup("augment", src, out, *seed_args, "--resume")
        assert again.returncode == 0, again.stderr
        assert again.stderr.strip().splitlines() == [
            f"warning: {out}: already complete (its sidecar records this command); nothing to do"
        ]
    assert (out.stat().st_mtime_ns, Path(f"{out}.provenance.json").read_bytes()) == before

    other = mixup("augment", src, out, *ARGS, "--alpha", "0.5", "--resume")
    assert other.returncode == 1 and "already exists" in other.stderr and "--overwrite" in other.stderr
    time.sleep(0.01)
    with h5py.File(src, "a") as f:  # the input changed since the run: not the same command's output
        f["x"][0] = 7.0
    changed = mixup("augment", src, out, *ARGS, "--resume")
    assert changed.returncode == 1 and "already exists" in changed.stderr
    assert (out.stat().st_mtime_ns, Path(f"{out}.provenance.json").read_bytes()) == before


def test_journaled_rows_that_do_not_read_back_start_over(src, tmp_path):
    """Compressed HDF5: the blocks the journal records are checked against
    their digests before they are kept; rows changed since mean start over."""
    out = tmp_path / "out.h5"
    killed("write", 21, src, out, *ARGS, "--compression", "gzip")
    with h5py.File(tmp_path / ".out.h5.mixup-partial", "r+") as f:
        f["x"][:] = f["x"][:] + 1  # the journaled blocks' rows among them
    result = mixup("augment", src, out, *ARGS, "--compression", "gzip", "--resume", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not hold the rows its journal records; starting from the beginning" in lines[0]
    assert "resumed_tasks" not in read_sidecar(out)["execution"]
    assert_same_arrays(load_output(out), reference(src, tmp_path, "out.h5", "--compression", "gzip"))


def test_every_request_field_is_either_fingerprinted_or_said_not_to_decide_the_output():
    # A new option must be placed in one list: a field left out of all three
    # would let --resume continue a run that was started with another value.
    import dataclasses

    from mixup_cli.commands.request import AugmentRequest
    from mixup_cli.run import resume

    lists = (resume.FINGERPRINT_OPTIONS, resume.FINGERPRINT_WHEN_GIVEN, resume.NOT_IN_FINGERPRINT)
    named = [name for names in lists for name in names]
    assert len(named) == len(set(named)), "a field is in two lists"
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(AugmentRequest))


@pytest.mark.slow
@pytest.mark.parametrize(
    "first, second, option",
    [
        (("--compression", "gzip"), ("--compression", "lzf"), "--compression"),
        (("--y-format", "soft"), ("--y-format", "pair"), "--y-format"),
        ((), ("--x-dtype", "float64"), "--x-dtype"),
    ],
)
def test_resume_with_an_option_that_changes_the_bytes_names_it(src, tmp_path, first, second, option):
    out = tmp_path / "out.h5"
    killed("save", -2, src, out, *ARGS, *first)
    result = mixup("augment", src, out, *ARGS, *second, "--resume")
    assert result.returncode != 0 and option in result.stderr, result.stderr
    assert (tmp_path / ".out.h5.mixup-partial").exists()  # kept: the original options can still resume it
