"""Nothing outside OUT, whatever was planted beside it.

Someone else who can write to OUT's directory plants links, special files
or hand-made records at the names mixup uses beside OUT. Whatever they
plant, no file outside OUT's own names is written, renamed or removed, and
OUT ends up a real file (or directory) of the right data. Real files, real
symbolic links, the installed executable where processes matter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, load_output, make_arrays, mixup_executable, read_sidecar, write_h5

from mixup_cli.cli import cli

ARGS = ["--seed", "11", "--block-rows", "100", "--copies", "2"]

_KILL_AT_WRITE = """
import os, signal, sys
from mixup_cli.commands import pipeline; from mixup_cli.run import resume
resume.SAVE_INTERVAL = 0
n, calls = int(sys.argv[1]), [0]
create = pipeline.create_writer
def create_writer(*args, **kwargs):
    writer = create(*args, **kwargs)
    write = writer.write
    def killing_write(key, start, data):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        write(key, start, data)
    writer.write = killing_write
    return writer
pipeline.create_writer = create_writer
from mixup_cli.cli import main
main(sys.argv[2:], prog_name="mixup")
"""


def env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mixup(*args, timeout=120):
    return subprocess.run(
        mixup_executable() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env()
    )


def killed_at_write(n: int, *args) -> None:
    """``mixup augment ARGS`` SIGKILLed at its n-th write of rows (journal saved after every task)."""
    result = subprocess.run(
        [sys.executable, "-c", _KILL_AT_WRITE, str(n), "augment"] + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)


def in_process(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def src(tmp_path):
    x, y = make_arrays(n=1000, x_shape=(6,), seed=3)
    return write_h5(tmp_path / "in.h5", x=x, y=y)


@pytest.fixture
def outside(tmp_path):
    """A folder beside OUT's: files there are someone else's, never to change."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


def victim(outside: Path, name: str = "victim.txt") -> tuple[Path, bytes]:
    path = outside / name
    path.write_bytes(b"precious, not mixup's\n")
    return path, path.read_bytes()


def reference(src, tmp_path, name, *extra):
    ref = tmp_path / "reference" / name
    ref.parent.mkdir(exist_ok=True)
    done = in_process("augment", src, ref, *ARGS, *extra, "--quiet")
    assert done.exit_code == 0, done.output
    return load_output(ref)


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key


# ---------------------------------------------------------------- 1: commit record names


@pytest.mark.slow
def test_a_hand_made_commit_record_renames_nothing_it_names(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    notes, other = tmp_path / "notes.txt", tmp_path / "other.txt"
    notes.write_text("my notes\n")
    other.write_text("other\n")
    st_out, st_other = os.lstat(out), os.lstat(other)
    record = {
        "output": out.name,
        "sidecar": "notes.txt",
        "sidecar_tmp": "other.txt",
        "new_output": [st_out.st_dev, st_out.st_ino],
        "new_sidecar": [st_other.st_dev, st_other.st_ino],
    }
    (tmp_path / ".out.h5.mixup-partial.commit.json").write_text(json.dumps(record))
    sidecar = Path(f"{out}.provenance.json").read_bytes()
    result = mixup("inspect", out)
    assert result.returncode == 0, result.stderr
    assert notes.read_text() == "my notes\n" and other.read_text() == "other\n"
    assert Path(f"{out}.provenance.json").read_bytes() == sidecar


@pytest.mark.slow
def test_a_fifo_as_the_commit_record_does_not_hang_inspect(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    os.mkfifo(tmp_path / ".out.h5.mixup-partial.commit.json")
    result = mixup("inspect", out, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "unreadable commit record" in result.stderr


# ---------------------------------------------------------------- 2: staging names


@pytest.mark.slow
@pytest.mark.parametrize(
    "planted",
    [
        ".out.h5.mixup-partial.journal.json.tmp",
        ".out.h5.mixup-partial.provenance.json",
        ".out.h5.mixup-partial.commit.json.tmp",
    ],
)
def test_links_at_staging_names_are_never_written_through(src, tmp_path, outside, planted):
    out = tmp_path / "out.h5"
    killed_at_write(7, src, out, *ARGS)
    target, before = victim(outside)
    (tmp_path / planted).unlink(missing_ok=True)
    (tmp_path / planted).symlink_to(target)
    result = mixup("augment", src, out, *ARGS, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == before
    assert not out.is_symlink() and not Path(f"{out}.provenance.json").is_symlink()
    assert_same(load_output(out), reference(src, tmp_path, "out.h5"))


@pytest.mark.slow
def test_a_partial_output_replaced_by_a_link_is_not_written_through(src, tmp_path, outside):
    out = tmp_path / "out.h5"
    killed_at_write(7, src, out, *ARGS)
    partial = tmp_path / ".out.h5.mixup-partial"
    moved = outside / "moved.h5"
    os.rename(partial, moved)
    partial.symlink_to(moved)
    before = moved.read_bytes()
    result = mixup("augment", src, out, *ARGS, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert moved.read_bytes() == before
    assert out.is_file() and not out.is_symlink()
    assert_same(load_output(out), reference(src, tmp_path, "out.h5"))


# ---------------------------------------------------------------- 3: the lock


@pytest.mark.slow
def test_a_dangling_link_at_the_lock_creates_nothing_outside(src, tmp_path, outside):
    out = tmp_path / "out.h5"
    target = outside / "created-by-mixup"
    (tmp_path / ".out.h5.mixup-partial.lock").symlink_to(target)
    result = mixup("augment", src, out, *ARGS, "--quiet")
    assert result.returncode == 0, result.stderr
    assert not target.exists() and not target.is_symlink()
    assert out.is_file()


# ---------------------------------------------------------------- 5: preview


def test_preview_never_writes_through_a_link_at_its_temporary_name(tmp_path, outside):
    target, before = victim(outside)
    pic = tmp_path / "pic.png"
    (tmp_path / ".pic.png.mixup-partial").symlink_to(target)
    result = in_process("preview", "--identity", 4, "--alphas", "0.2,0.4", "-o", pic, "--seed", 2)
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == before
    assert pic.is_file() and not pic.is_symlink()
    assert pic.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- 6: verify's scratch copy


def test_verify_never_writes_its_scratch_copy_through_a_link(tmp_path, outside):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (90, 4, 4, 3), dtype=np.uint8)
    y = np.sort(rng.integers(0, 5, 90)).astype(np.int16)
    packed = tmp_path / "packed.h5"
    with h5py.File(packed, "w") as f:
        for key, value in (("x", x), ("y", y)):
            f.create_dataset(key, data=value, chunks=(16,) + value.shape[1:], compression="gzip")
    out = tmp_path / "out.h5"
    made = in_process("augment", packed, out, "--seed", 2, "--block-rows", 20, "--pairing", "between-class", "--quiet")
    assert made.exit_code == 0
    target, before = victim(outside)
    # verify runs in this process here: the scratch name it derives carries this pid
    for name in (f"{socket.gethostname()}.{os.getpid()}", str(os.getpid())):
        (tmp_path / f".out.h5.mixup-verify-{name}.scratch.h5").symlink_to(target)
    result = in_process("verify", out)
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == before
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [
        f".out.h5.mixup-verify-{os.getpid()}.scratch.h5",
        "out.h5",
        "out.h5.provenance.json",
        "outside",
        "packed.h5",
    ]


# ---------------------------------------------------------------- 7: journaled blocks read back


def _change_one_row(partial: Path, name: str, row: int) -> None:
    """Row ``row`` of x in the partial output, changed as another program would."""
    if name.endswith(".h5"):
        with h5py.File(partial, "r+") as f:
            f["x"][row] = f["x"][row] + 1
    elif name.endswith(".zarr"):
        import zarr

        arr = zarr.open_array(store=str(partial), path="x", mode="r+")
        arr[row] = np.asarray(arr[row]) + 1
    else:
        folder = partial.with_name(partial.name + ".staging") if name.endswith(".npz") else partial
        arr = np.load(folder / "x.npy", mmap_mode="r+")
        arr[row] += 1
        arr.flush()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out.h5", "out", "out.zarr", "out.npz"])
def test_a_changed_row_in_a_journaled_block_means_start_over(src, tmp_path, name):
    out = tmp_path / name
    killed_at_write(13, src, out, *ARGS)
    partial = tmp_path / f".{name}.mixup-partial"
    log = (tmp_path / f".{name}.mixup-partial.journal.json.log").read_text().splitlines()
    starts = {json.loads(line)[0] for line in log}
    assert starts, "nothing journaled: the test needs a journaled block"
    for start in starts:  # one row in each block hashed (those journaled among them)
        _change_one_row(partial, name, int(start) + 3)
    result = mixup("augment", src, out, *ARGS, "--resume")
    assert result.returncode == 0, result.stderr
    assert "does not hold the rows its journal records; starting from the beginning" in result.stderr
    assert "resumed_tasks" not in read_sidecar(out)["execution"]
    assert_same(load_output(out), reference(src, tmp_path, name))


# ---------------------------------------------------------------- 4: --overwrite against a renaming process

_SWAP_FIRST = """
import os, sys
from mixup_cli.record import atomic
out, mine, moved = sys.argv[1:4]
real, calls = atomic.exchange, [0]
def exchange(a, b):
    calls[0] += 1
    if calls[0] == 1:  # another process, right before the swap: OUT moved away, the user's folder put there
        os.rename(out, moved)
        os.rename(mine, out)
    return real(a, b)
atomic.exchange = exchange
from mixup_cli.cli import main
main(sys.argv[4:], prog_name="mixup")
"""


@pytest.mark.slow
def test_overwrite_never_deletes_a_directory_swapped_in_after_the_check(src, tmp_path):
    out = tmp_path / "out.zarr"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("mine\n")
    result = subprocess.run(
        [sys.executable, "-c", _SWAP_FIRST, str(out), str(mine), str(tmp_path / "moved")]
        + ["augment", str(src), str(out), *ARGS, "--alpha", "0.3", "--overwrite", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    found = [p for p in tmp_path.rglob("data.txt")]
    assert [p.read_text() for p in found] == ["mine\n"], "the user's folder was deleted"
    assert result.returncode == 1, result.stderr
    assert "was replaced by another entry while mixup replaced it" in result.stderr
    assert (out / "data.txt").read_text() == "mine\n"  # back where the other process put it
    assert not [p.name for p in tmp_path.iterdir() if "mixup-partial" in p.name]


# ---------------------------------------------------------------- 8: exit codes that match the disk


def _run_with_stdout(stdout, *args):
    return subprocess.run(
        mixup_executable() + [str(a) for a in args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env=env(),
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["closed pipe", "/dev/full"])
def test_stdout_gone_after_the_commit_is_a_warning_not_a_failure(src, tmp_path, where):
    out = tmp_path / "out.h5"
    if where == "closed pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has ended, as `| true` has
        result = _run_with_stdout(write_end, "augment", src, out, *ARGS, "--json", "--quiet")
        os.close(write_end)
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        with open("/dev/full", "w") as full:
            result = _run_with_stdout(full, "augment", src, out, *ARGS, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: could not print on stdout"), result.stderr
    assert "Error" not in result.stderr and "Traceback" not in result.stderr
    assert out.is_file() and Path(f"{out}.provenance.json").is_file()


@pytest.mark.slow
def test_a_directory_at_the_sidecar_name_is_refused_before_anything_is_written(src, tmp_path):
    out = tmp_path / "out.h5"
    (tmp_path / "out.h5.provenance.json").mkdir()
    result = mixup("augment", src, out, *ARGS)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {out}.provenance.json: is a directory, where mixup puts the sidecar of out.h5; "
        "move it away or choose another output path"
    ]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "mixup-partial" in p.name]


_FULL_AT_SECOND = """
import errno, sys
from mixup_cli.commands import pipeline
calls, create = [0], pipeline.create_writer
def create_writer(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:
        raise OSError(errno.ENOSPC, "No space left on device")
    return create(*args, **kwargs)
pipeline.create_writer = create_writer
from mixup_cli.cli import main
main(sys.argv[1:], prog_name="mixup")
"""


@pytest.mark.slow
def test_a_set_failing_after_its_first_output_says_which_are_written(tmp_path):
    x, y = make_arrays(n=200, x_shape=(6,), seed=3)
    a = write_h5(tmp_path / "a.h5", x=x[:120], y=y[:120])
    b = write_h5(tmp_path / "b.h5", x=x[120:], y=y[120:])
    outdir = tmp_path / "mixed"
    result = subprocess.run(
        [sys.executable, "-c", _FULL_AT_SECOND, "augment", str(a), str(b), str(outdir), "--seed", "3", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], result.stderr
    assert "nothing was written" not in lines[0]
    assert "1 output(s) of this part were written before it and stay: a.h5" in lines[0]
    assert (outdir / "a.h5").is_file() and (outdir / "a.h5.provenance.json").is_file()
    assert not (outdir / "b.h5").exists()


# ---------------------------------------------------------------- 9: leftovers and hangs


@pytest.mark.slow
def test_verify_removes_the_scratch_copy_a_killed_verify_left(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    gone = subprocess.Popen(["true"])  # a process that has ended: its pid names a killed verify's copy
    gone.wait()
    left = tmp_path / f".out.h5.mixup-verify-{socket.gethostname()}.{gone.pid}.scratch.h5"
    left.write_bytes(b"\0" * 4096)
    elsewhere = tmp_path / ".out.h5.mixup-verify-otherhost.1.scratch.h5"  # another host's: maybe in use
    elsewhere.write_bytes(b"\0")
    result = mixup("verify", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not left.exists() and elsewhere.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param({"done": [[0, 10**15]]}, id="huge"),
        pytest.param({"done": [[-5, 3]]}, id="negative"),
        pytest.param({"done": [[0, "7"]]}, id="text"),
        pytest.param({"fingerprint": ["not", "a", "fingerprint"]}, id="fingerprint-list"),
        pytest.param({"fingerprint": {"plan": 3}}, id="plan-number"),
        pytest.param({"log_bytes": 10**15}, id="log-length"),
    ],
)
def test_a_damaged_journal_starts_over_by_itself(src, tmp_path, damage):
    out = tmp_path / "out.h5"
    killed_at_write(7, src, out, *ARGS)
    journal = tmp_path / ".out.h5.mixup-partial.journal.json"
    record = json.loads(journal.read_text())
    record.update(damage)
    journal.write_text(json.dumps(record))
    result = mixup("augment", src, out, *ARGS, "--resume")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if not line.startswith("wrote ")]
    assert len(warnings) == 1 and "is unreadable; starting from the beginning" in warnings[0], result.stderr
    assert_same(load_output(out), reference(src, tmp_path, "out.h5"))


@pytest.mark.slow
def test_verify_refuses_a_device_the_sidecar_lists_as_an_input_file(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    sidecar = Path(f"{out}.provenance.json")
    record = json.loads(sidecar.read_text())
    record["input"]["files"].append({"path": "/dev/zero", "size": 0, "sha256": "0" * 64})
    sidecar.write_text(json.dumps(record))
    result = mixup("verify", out, timeout=60)
    assert result.returncode == 1
    assert "/dev/zero: is a character device, not a file a run reads" in result.stdout


@pytest.mark.slow
def test_a_sidecar_claiming_absurdly_many_set_outputs_is_refused_in_one_line(tmp_path):
    x, y = make_arrays(n=200, x_shape=(6,), seed=3)
    a = write_h5(tmp_path / "a.h5", x=x[:120], y=y[:120])
    b = write_h5(tmp_path / "b.h5", x=x[120:], y=y[120:])
    outdir = tmp_path / "mixed"
    assert in_process("augment", a, b, outdir, "--seed", 3, "--quiet").exit_code == 0
    for name in ("a.h5", "b.h5"):
        sidecar = outdir / f"{name}.provenance.json"
        record = json.loads(sidecar.read_text())
        record["set"]["outputs"] = 10**12
        record["set"].pop("inputs", None)
        sidecar.write_text(json.dumps(record))
    (outdir / "mixup-set.json").unlink()
    for command in ("inspect", "verify"):
        result = mixup(command, outdir, timeout=60)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "'set' section is damaged" in lines[0], (command, result.stderr)


def test_a_fifo_as_the_sidecar_does_not_hang_inspect(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    sidecar = Path(f"{out}.provenance.json")
    sidecar.unlink()
    os.mkfifo(sidecar)
    result = mixup("inspect", out, timeout=30)
    assert "Traceback" not in result.stderr
    assert "named pipe" in result.stderr or "named pipe" in result.stdout


# ---------------------------------------------------------------- 10: memory bounded up front


def test_an_absurd_balance_to_is_refused_up_front(src, tmp_path):
    out = tmp_path / "out.h5"
    result = mixup("augment", src, out, "--seed", 1, "--balance-to", 10**12, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--balance-to 1000000000000 makes" in lines[0] and "lower --balance-to" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "mixup" in p.name]


@pytest.mark.slow
def test_label_kernel_on_wide_targets_keeps_its_batches_small(tmp_path):
    """The exact multi-dimensional draw holds rows x N x width differences at
    once: its step is sized by all three (500 rows of width 512: 1 GiB before)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 4)).astype(np.float32)
    y = rng.standard_normal((500, 512)).astype(np.float32)
    src = write_h5(tmp_path / "wide.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    tracemalloc.start()
    try:
        result = in_process(
            "augment", src, out, "--seed", 1, "--pairing", "label-kernel", "--bandwidth", 1.0, "--quiet"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------- 11: messages in words, not Python's


def _one_line(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    # A data error reads "Error: ..."; a usage error names the command and its help.
    prefix = "Error: " if code == 1 else "mixup "
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    if code == 2:
        assert lines[0].endswith("--help'"), result.stderr
    for name in ("ZeroDivisionError", "OverflowError", "ValueError", "ContainsGroupError", "RuntimeWarning"):
        assert name not in result.stderr
    return lines[0]


@pytest.mark.slow
def test_knn_on_rows_without_values_is_refused_in_words(tmp_path):
    src = write_h5(
        tmp_path / "empty-rows.h5",
        chunks=False,
        x=np.zeros((20, 0), np.float32),
        y=np.eye(2, dtype=np.float32)[np.arange(20) % 2],
    )
    line = _one_line(mixup("augment", src, tmp_path / "out.h5", "--pairing", "knn", "--seed", 1), 1)
    assert "its rows hold no values" in line


@pytest.mark.slow
@pytest.mark.parametrize("bandwidth, word", [("1e300", "large"), ("1e-300", "small")])
def test_a_bandwidth_that_cannot_be_computed_with_is_a_usage_error(tmp_path, bandwidth, word):
    rng = np.random.default_rng(1)
    src = write_h5(tmp_path / "r.h5", x=rng.random((50, 3), np.float32), y=rng.random(50, np.float32))
    result = mixup(
        "augment", src, tmp_path / "out.h5", "--pairing", "label-kernel", "--bandwidth", bandwidth, "--seed", 1
    )
    assert f"too {word} to compute with" in _one_line(result, 2)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out.h5", "out.zarr"])
def test_a_key_inside_a_provenance_name_is_refused_in_words(tmp_path, name):
    rng = np.random.default_rng(1)
    src = tmp_path / "n.h5"
    with h5py.File(src, "w") as f:
        f["x"] = rng.random((50, 3), np.float32)
        f["lam/y"] = rng.random(50, np.float32)
    line = _one_line(mixup("augment", src, tmp_path / name, "--y-key", "lam/y", "--seed", 1), 2)
    assert "'lam/y' would be written inside 'lam'" in line


@pytest.mark.slow
def test_a_sidecar_with_block_rows_0_fails_verify_in_words(src, tmp_path):
    out = tmp_path / "out.h5"
    assert in_process("augment", src, out, *ARGS, "--quiet").exit_code == 0
    sidecar = Path(f"{out}.provenance.json")
    record = json.loads(sidecar.read_text())
    record["output"]["array_sha256"]["block_rows"] = 0
    sidecar.write_text(json.dumps(record))
    result = mixup("verify", out)
    assert result.returncode == 1 and "ZeroDivisionError" not in result.stdout + result.stderr
    assert "records impossible block sizes" in result.stdout


@pytest.mark.slow
def test_a_run_with_stderr_closed_still_runs(src, tmp_path):
    out = tmp_path / "out.h5"
    result = subprocess.run(
        mixup_executable() + ["augment", str(src), str(out), *ARGS, "--json"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
        env=env(),
        preexec_fn=lambda: os.close(2),  # as `2>&-` leaves it
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["rows"] == 2000
    assert_same(load_output(out), reference(src, tmp_path, "out.h5"))


@pytest.mark.slow  # a thousand one-row tasks
def test_the_journal_costs_what_was_done_since_its_last_save(tmp_path):
    """Block digests go to an append-only log: the journal rewritten at
    each save stays small however many blocks are done, and --resume still
    gives the uninterrupted run's bytes."""
    x, y = make_arrays(n=20, x_shape=(3,), seed=2)
    src = write_h5(tmp_path / "small.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    args = ["--seed", "4", "--block-rows", "1", "--copies", "50"]
    killed_at_write(2000, src, out, *args)  # about 500 of 1,000 tasks, the journal saved after each
    journal = tmp_path / ".out.h5.mixup-partial.journal.json"
    assert journal.stat().st_size < 8192, journal.stat().st_size
    assert len((tmp_path / ".out.h5.mixup-partial.journal.json.log").read_text().splitlines()) >= 400
    result = mixup("augment", src, out, *args, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] >= 400
    ref = tmp_path / "reference" / "out.h5"
    ref.parent.mkdir()
    assert in_process("augment", src, ref, *args, "--quiet").exit_code == 0
    assert_same(load_output(out), load_output(ref))
