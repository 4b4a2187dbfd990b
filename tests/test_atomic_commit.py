"""The final commit, through the ``mixup`` executable: signals and kills at
every step of it, and what the next command makes of what was left.

``MIXUP_TEST_PAUSE=STAGE:FLAG`` (``atomic.test_pause``) stops the run at a
named step until the test removes FLAG, so a signal lands exactly there.
The oracle is the disk: OUT's arrays (read with h5py / numpy / zarr) equal
an uninterrupted run's, and the sidecar beside OUT is that run's.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, cli_runner, default_signals, make_arrays, mixup_executable, write_h5

from mixup_cli.cli import cli

FORMATS = ["out.h5", "out.npz", "out", "out.zarr"]
ARGS = ["--block-rows", "250", "--json"]  # stderr: the warnings alone (-q drops them)
# Before the commit record: the run can still stop. From it on: it finishes.
STOPPABLE = ["staged"]
TOO_LATE = ["commit-record", "output-in-place", "sidecar-in-place", "cleaned", "committed", "finished"]


def env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def mixup(*args, prefix=(), **extra):
    cmd = list(prefix) or mixup_executable()
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120, env=env(**extra))


def start(*args, prefix=(), **extra):
    cmd = list(prefix) or mixup_executable()
    return subprocess.Popen(
        cmd + [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**extra),
        preexec_fn=default_signals,
    )


def paused_run(args, stage, signum, tmp_path, prefix=()):
    """Run augment paused at ``stage``, deliver ``signum`` there, let it go on; (rc, stderr)."""
    flag = tmp_path / "paused.flag"
    proc = start(*args, prefix=prefix, MIXUP_TEST_PAUSE=f"{stage}:{flag}")
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, f"ended before {stage}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never reached {stage}"
        time.sleep(0.005)
    proc.send_signal(signum)
    if signum != signal.SIGKILL:
        time.sleep(0.1)  # the handler runs while the run waits
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def read_arrays(path: Path) -> dict[str, bytes]:
    """OUT's arrays as bytes, read with the formats' own libraries."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return {k: f[k][()].tobytes() for k in f}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].tobytes() for k in z.files}
    if path.suffix == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="r")
        return {k: np.asarray(a[...]).tobytes() for k, a in group.arrays()}
    return {p.stem: np.load(p, allow_pickle=False).tobytes() for p in path.glob("*.npy")}


def sidecar_of(out: Path) -> dict:
    return json.loads(Path(f"{out}.provenance.json").read_text())


def state(out: Path, refs: dict) -> str:
    """'old', 'new' (OUT and its sidecar both of that run) or what is wrong."""
    arrays = read_arrays(out)
    record = sidecar_of(out)
    for name, (want, want_record) in refs.items():
        if arrays == want:
            seed_ok = record["parameters"]["seed"] == want_record["parameters"]["seed"]
            digests_ok = record["output"]["arrays"] == want_record["output"]["arrays"]
            return name if seed_ok and digests_ok else f"{name} data with another run's sidecar"
    return "data of neither run"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "mixup" in p.name and p.name.startswith("."))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    x, y = make_arrays(n=1000, x_shape=(8,))
    return write_h5(tmp_path_factory.mktemp("src") / "in.h5", x=x, y=y)


@pytest.fixture(scope="module")
def references(source, tmp_path_factory):
    """Per format: the arrays and sidecar of the old (seed 1) and new (seed 2) runs."""
    if not _has_zarr():
        pytest.skip("Zarr is an optional extra")
    refs = {}
    base = tmp_path_factory.mktemp("refs")
    for name in FORMATS:
        refs[name] = {}
        for label, seed in (("old", 1), ("new", 2)):
            out = base / label / name
            out.parent.mkdir(exist_ok=True)
            done = cli_runner().invoke(cli, ["augment", str(source), str(out), "--seed", str(seed), *ARGS])
            assert done.exit_code == 0, done.output
            refs[name][label] = (read_arrays(out), sidecar_of(out), out)
    return refs


def _has_zarr() -> bool:
    try:
        import zarr  # noqa: F401
    except ImportError:
        return False
    return True


def old_output(tmp_path: Path, name: str, refs) -> Path:
    """A copy of the old run's OUT and sidecar in ``tmp_path``."""
    src = refs[name]["old"][2]
    out = tmp_path / name
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, out)
    shutil.copy2(f"{src}.provenance.json", f"{out}.provenance.json")
    return out


def matrix(stages):
    """(stage, format) for every pair: the fast suite runs each stage in one
    format, the formats taken in turn (each format meets every fourth stage);
    the slow suite runs the rest."""
    params = []
    for i, stage in enumerate(stages):
        fast = {FORMATS[i % len(FORMATS)]}
        for name in FORMATS:
            params.append(
                pytest.param(stage, name, id=f"{stage}-{name}", marks=() if name in fast else pytest.mark.slow)
            )
    return params


def expected(refs, name):
    return {label: refs[name][label][:2] for label in ("old", "new")}


@pytest.mark.slow  # the fast suite meets the commit's steps in test_sigkill_in_the_commit_is_finished_or_rolled_back
@pytest.mark.parametrize("stage, name", matrix(STOPPABLE + TOO_LATE))
def test_sigterm_at_each_step_of_the_commit(source, references, tmp_path, stage, name):
    out = old_output(tmp_path, name, references)
    rc, stderr = paused_run(
        ["augment", source, out, "--seed", 2, "--overwrite", *ARGS], stage, signal.SIGTERM, tmp_path
    )
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    if stage in STOPPABLE:
        # Stopped before anything was replaced: exit 143, the old output intact, the work kept.
        assert rc == 143 and len(lines) == 1 and "stopped at a checkpoint" in lines[0], stderr
        assert state(out, expected(references, name)) == "old"
        assert f".{name}.mixup-partial.journal.json" in leftovers(tmp_path)
        command = shlex.split(lines[0].split("continue with: ")[1].split(" (or run")[0])
        assert command[-1] == "--resume"
        resumed = mixup(*command[1:])
        assert resumed.returncode == 0, resumed.stderr
    else:
        # Past the point of no return: the run finished, says the signal came too late, exits 0.
        assert rc == 0, stderr
        assert len(lines) == 1 and "SIGTERM came too late to stop the run" in lines[0], stderr
    assert state(out, expected(references, name)) == "new"
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_quiet_drops_the_too_late_warning(source, references, tmp_path):
    """-q: only errors reach stderr; a signal too late to stop the run is a warning."""
    out = old_output(tmp_path, "out.h5", references)
    rc, stderr = paused_run(
        ["augment", source, out, "--seed", 2, "--overwrite", "--block-rows", "250", "-q"],
        TOO_LATE[0],
        signal.SIGTERM,
        tmp_path,
    )
    assert rc == 0 and stderr == ""
    assert state(out, expected(references, "out.h5")) == "new" and leftovers(tmp_path) == []


# SIGINT at the last stoppable step and the first and last too-late ones; the
# other steps are met by SIGTERM in every format above.
@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [
        "staged",
        "commit-record",
        "output-in-place",
        "committed",
        "finished",
    ],
)
def test_sigint_at_steps_of_the_commit(source, references, tmp_path, stage):
    out = old_output(tmp_path, "out.h5", references)
    rc, stderr = paused_run(["augment", source, out, "--seed", 2, "--overwrite", *ARGS], stage, signal.SIGINT, tmp_path)
    want = "old" if stage in STOPPABLE else "new"
    assert rc == (130 if want == "old" else 0), stderr
    assert state(out, expected(references, "out.h5")) == want
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["progress", "staged", "output-in-place"])
def test_sighup_is_handled_like_sigterm(source, references, tmp_path, stage):
    """A terminal closed or an ssh session dropped: stopped at a checkpoint
    (exit 129, the work kept for --resume), or, past the point of no
    return, the commit finished (exit 0): never the new OUT without its sidecar."""
    out = old_output(tmp_path, "out.h5", references)
    rc, stderr = paused_run(["augment", source, out, "--seed", 2, "--overwrite", *ARGS], stage, signal.SIGHUP, tmp_path)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    if stage == "output-in-place":
        assert rc == 0 and "SIGHUP came too late to stop the run" in lines[0], stderr
        assert state(out, expected(references, "out.h5")) == "new" and leftovers(tmp_path) == []
    else:
        assert rc == 129 and lines[0].startswith("Interrupted by SIGHUP: stopped at a checkpoint"), stderr
        assert state(out, expected(references, "out.h5")) == "old"
        assert f".{out.name}.mixup-partial.journal.json" in leftovers(tmp_path)


@pytest.mark.slow  # timing: 16 whole runs signalled at random instants
@pytest.mark.parametrize("name", ["out.h5", "out.npz", "out", "out.zarr"])
def test_signals_at_random_instants_exit_code_matches_the_disk(source, references, tmp_path, name):
    """Signals at random instants of whole runs (no pause): 0 only with the
    new output and its sidecar in place, 130/143 only with the old ones."""
    rng = random.Random(13)
    for trial in range(4):
        d = tmp_path / str(trial)
        d.mkdir()
        out = old_output(d, name, references)
        proc = start("augment", source, out, "--seed", 2, "--overwrite", *ARGS)
        time.sleep(rng.uniform(0.3, 1.5))  # from start-up (past the interpreter's own) to after the commit
        signum = rng.choice([signal.SIGTERM, signal.SIGINT])
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        found = state(out, expected(references, name))
        if proc.returncode == -signum:  # still starting up, before the handlers exist: nothing begun
            assert found == "old" and leftovers(d) == [], stderr
            continue
        assert "Traceback" not in stderr and proc.returncode in (0, 130, 143), stderr
        assert found == ("new" if proc.returncode == 0 else "old"), (proc.returncode, stderr)
        if proc.returncode:
            assert stderr.startswith(f"Interrupted by {signum.name}"), stderr


# ------------------------------------------------------------------ SIGKILL


KILL_STAGES = {
    # stage -> what the next command finds on disk and makes of it
    "commit-record": "old",  # nothing renamed yet: rolled back, the finished output kept for --resume
    "output-in-place": "new",  # OUT new, its sidecar not yet: completed
    "sidecar-in-place": "new",  # both new, the old data not yet removed: cleaned up
    "cleaned": "new",
}


@pytest.mark.parametrize("stage, name", matrix(list(KILL_STAGES)))
def test_sigkill_in_the_commit_is_finished_or_rolled_back(source, references, tmp_path, stage, name, run_cli):
    out = old_output(tmp_path, name, references)
    rc, _ = paused_run(["augment", source, out, "--seed", 2, "--overwrite", *ARGS], stage, signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL
    # Everything the run left beside OUT is named as its partial files (no .mixup-old).
    assert all(n.startswith(f".{name}.mixup-partial") for n in leftovers(tmp_path)), leftovers(tmp_path)
    if stage == "output-in-place" and Path(out).is_dir():
        # Directories are swapped in one step: the old data waits under the partial name.
        assert (tmp_path / f".{name}.mixup-partial").is_dir()

    # The next command on OUT recognises the half-done commit (here: verify).
    result = run_cli("verify", out)
    assert "half-done" not in result.stdout + result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, result.stderr
    want = KILL_STAGES[stage]
    assert ("finished the commit" in warning[0]) == (want == "new"), warning
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "OK", result.output
    assert state(out, expected(references, name)) == want
    if want == "new":
        assert leftovers(tmp_path) == []
    else:
        # Rolled back: the complete output waits; --resume puts it in place.
        resumed = mixup("augment", source, out, "--seed", 2, "--overwrite", "--resume", *ARGS)
        assert resumed.returncode == 0, resumed.stderr
        assert state(out, expected(references, name)) == "new" and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        "inspect",
        "augment",
        "augment --resume",
    ],
)
def test_every_command_on_out_finishes_a_half_done_commit(source, references, tmp_path, command, run_cli):
    name = "out.zarr"
    out = old_output(tmp_path, name, references)
    rc, _ = paused_run(
        ["augment", source, out, "--seed", 2, "--overwrite", *ARGS], "output-in-place", signal.SIGKILL, tmp_path
    )
    assert rc == -signal.SIGKILL
    # A reader right now finds the new store beside the old sidecar: the record says so.
    assert (tmp_path / f".{name}.mixup-partial.commit.json").exists()
    if command == "inspect":
        result = mixup("inspect", out)
        assert result.returncode == 0
        assert state(out, expected(references, name)) == "new"
    else:
        extra = ["--resume"] if command.endswith("--resume") else []
        result = mixup("augment", source, out, "--seed", 3, "--overwrite", *extra, *ARGS)
        assert result.returncode == 0, result.stderr
        assert sidecar_of(out)["parameters"]["seed"] == 3
    assert result.stderr.count("finished the commit") == 1, result.stderr
    assert leftovers(tmp_path) == []


_WITHOUT_EXCHANGE = (
    "import sys; from mixup_cli.record import atomic; atomic.exchange = lambda a, b: False; "
    "from mixup_cli.cli import main; sys.argv[0] = 'mixup'; main()"
)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["old-aside", "output-in-place"])
def test_without_renameat2_a_kill_between_the_two_renames_is_recovered(source, references, tmp_path, stage, run_cli):
    """Where directories cannot be swapped, the old one is set aside (under
    the partial name) and the new one renamed in: a kill between the two is
    rolled back; after them, completed."""
    name = "out"
    out = old_output(tmp_path, name, references)
    rc, _ = paused_run(
        ["augment", source, out, "--seed", 2, "--overwrite", *ARGS],
        stage,
        signal.SIGKILL,
        tmp_path,
        prefix=[sys.executable, "-c", _WITHOUT_EXCHANGE],
    )
    assert rc == -signal.SIGKILL
    if stage == "old-aside":
        assert not out.exists() and (tmp_path / f".{name}.mixup-partial.old").is_dir()
    result = run_cli("inspect", out)
    assert result.exit_code == 0, result.output
    assert state(out, expected(references, name)) == ("old" if stage == "old-aside" else "new")


def test_exchange_swaps_two_directories(tmp_path):
    from mixup_cli.record import atomic

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    (b / "from_b").touch()
    if not atomic.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert sorted(p.name for p in a.iterdir()) == ["from_b"]
    assert sorted(p.name for p in b.iterdir()) == ["from_a"]


def test_an_unreadable_commit_record_is_dropped(tmp_path, run_cli):
    out = tmp_path / "out.h5"
    x, y = make_arrays(n=20)
    write_h5(out, x=x, y=y)
    record = tmp_path / ".out.h5.mixup-partial.commit.json"
    record.write_text("{not json")
    result = run_cli("inspect", out)
    assert result.exit_code == 0 and "unreadable commit record" in result.stderr
    assert not record.exists()
