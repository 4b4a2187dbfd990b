"""Every bad input through the installed ``mixup`` executable: a one-line
message naming the culprit, the documented exit code, no traceback, no
output and no temporary file left, and the input unchanged."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, cli_runner, load_output, make_arrays, mixup_executable, write_h5, write_npy_dir, write_npz

from mixup_cli.core.errors import ParameterError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
# Root ignores permission bits; without the capabilities that allow it to,
# it is held to them like anybody else.
DROP_DAC = [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search"] if IS_ROOT and SETPRIV else []
needs_permission_bits = pytest.mark.skipif(
    IS_ROOT and not SETPRIV, reason="running as root without setpriv: permission bits are not enforced"
)


def digest(path: Path) -> dict[str, str]:
    """SHA-256 of a file or of every file under a directory (empty if missing)."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    if path.is_dir():
        return {
            str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
    return {}


def temporaries(*directories: Path) -> list[str]:
    return sorted(
        p.name for d in directories if Path(d).is_dir() for p in Path(d).iterdir() if ".mixup-partial" in p.name
    )


def run(args, prefix=(), env_extra=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run(
        list(prefix) + mixup_executable() + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_clean_failure(result, code, pattern):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert result.stdout == ""


# Each case builds its input in ``d`` and returns (IN, OUT, extra args, exit code, pattern);
# OUT is None for "d/out.h5".


def _h5(d, **arrays):
    if not arrays:
        x, y = make_arrays(n=20)
        arrays = {"x": x, "y": y}
    return write_h5(d / "in.h5", **arrays)


def _bytes(name, data):
    def build(d):
        p = d / name
        if name.endswith("/x.npy"):
            p.parent.mkdir()
        p.write_bytes(data)
        return (p.parent if name.endswith("/x.npy") else p), None, [], 1, None

    return build


def _truncated_h5(d):
    full = _h5(d, x=make_arrays(n=400)[0], y=make_arrays(n=400)[1])
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    return full, None, [], 1, r"in\.h5: not a readable HDF5 file"


def _truncated_npz(d):
    x, y = make_arrays(n=100)
    p = write_npz(d / "in.npz", x=x, y=y)
    p.write_bytes(p.read_bytes()[:500])
    return p, None, [], 1, r"in\.npz: not a readable \.npz"


def _rank0_h5(d):
    return write_h5(d / "in.h5", chunks=False, x=np.float32(3.0), y=np.float32(1.0)), None, [], 1, r"'x' is a scalar"


def _rank0_npz(d):
    return write_npz(d / "in.npz", x=np.float32(3.0), y=np.float32(1.0)), None, [], 1, r"'x' is a scalar"


def _pickled_npy(d):
    p = d / "data"
    p.mkdir()
    np.save(p / "x.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(p / "y.npy", np.zeros((2, 3), np.float32))
    return p, None, [], 1, r"x\.npy: holds Python objects \(pickled"


def _pickled_npz(d):
    p = d / "in.npz"
    np.savez(p, x=np.array([[1], "s", None], dtype=object), y=np.zeros((3, 2), np.float32))
    return p, None, [], 1, r"in\.npz\[x\]: holds Python objects \(pickled"


def _x_y_rows(d):
    x, _ = make_arrays(n=10)
    _, y = make_arrays(n=12)
    return _h5(d, x=x, y=y), None, [], 1, r"'x' has 10 rows but 'y' has 12"


def _zero_rows(d):
    return _h5(d, x=np.zeros((0, 4), np.float32), y=np.zeros((0, 3), np.float32)), None, [], 1, r"'x' has zero rows"


def _key(option, name, pattern):
    def build(d):
        return _h5(d), None, [option, name], 1, pattern

    return build


def _option(*args, pattern):
    def build(d):
        return _h5(d), None, list(args), 2, pattern

    return build


def _same_path(spelling, *extra):
    def build(d):
        src = _h5(d)
        if spelling == "same":
            out = src
        elif spelling == "dotdot":
            (d / "sub").mkdir()
            out = Path(f"{d}/./sub/../in.h5")
        elif spelling == "symlink":
            out = d / "link.h5"
            out.symlink_to(src)
        elif spelling == "hardlink":
            out = d / "hard.h5"
            os.link(src, out)
        return src, out, list(extra), 2, r"is the input itself"

    return build


def _out_contains_in(d):
    outdir = d / "mixed"
    outdir.mkdir()
    src = _h5(outdir)
    return src, outdir, ["--overwrite"], 2, r"mixed: contains the input"


def _out_dir_missing(d):
    return _h5(d), d / "missing" / "out.h5", [], 1, r"out\.h5: directory .*missing does not exist; create it"


def _out_parent_is_file(d):
    src = _h5(d)
    return src, src / "out.h5", [], 1, r"is not a directory"


def _unknown(name, code, pattern):
    def build(d):
        if name == "in.txt":
            p = d / "in.txt"
            p.write_text("1 2 3\n")
            return p, None, [], code, pattern
        if name == "x.npy":
            p = d / "x.npy"
            np.save(p, np.zeros((3, 2), np.float32))
            return p, None, [], code, pattern
        return _h5(d), d / name, [], code, pattern

    return build


def _missing_input(d):
    return d / "nope.h5", None, [], 1, r"nope\.h5: no such file or directory"


def _directory_as_h5(d):
    p = d / "in.h5"
    p.mkdir()
    return p, None, [], 1, r"in\.h5: is a directory"


def _empty_directory(d):
    p = d / "data"
    p.mkdir()
    return p, None, [], 1, r"data: no x\.npy \(present: no \.npy files\); choose one with --x-key"


def _existing_out(d):
    src = _h5(d)
    out = d / "out.h5"
    out.write_bytes(b"precious")
    return src, out, [], 1, r"out\.h5: already exists; pass --overwrite"


RANDOM = np.random.default_rng(1).bytes(4096)

CASES = {
    "missing input": _missing_input,
    "directory named .h5": _directory_as_h5,
    "directory without .npy": _empty_directory,
    "random bytes .h5": lambda d: _bytes("in.h5", RANDOM)(d)[:4] + (r"in\.h5: not a readable HDF5 file",),
    "empty .h5": lambda d: _bytes("in.h5", b"")(d)[:4] + (r"in\.h5: not a readable HDF5 file",),
    "truncated .h5": _truncated_h5,
    "random bytes .npz": lambda d: _bytes("in.npz", RANDOM)(d)[:4] + (r"in\.npz: not a readable \.npz",),
    "empty .npz": lambda d: _bytes("in.npz", b"")(d)[:4] + (r"in\.npz: not a readable \.npz",),
    "truncated .npz": _truncated_npz,
    "random bytes .npy": lambda d: _bytes("data/x.npy", RANDOM)(d)[:4] + (r"x\.npy: not a valid \.npy",),
    "empty .npy": lambda d: _bytes("data/x.npy", b"")(d)[:4] + (r"x\.npy: not a valid \.npy",),
    "missing x key": _key("--x-key", "images", r"no array 'images' \(arrays present: x, y\); choose one with --x-key"),
    "misspelled y key": _key("--y-key", "Y", r"no array 'Y' \(arrays present: x, y\); choose one with --y-key"),
    "x and y rows differ": _x_y_rows,
    "zero rows": _zero_rows,
    "rank-0 h5": _rank0_h5,
    "rank-0 npz": _rank0_npz,
    "pickled .npy": _pickled_npy,
    "pickled .npz": _pickled_npz,
    "OUT is IN": _same_path("same"),
    "OUT is IN, overwrite": _same_path("same", "--overwrite"),
    "OUT is IN via ..": _same_path("dotdot", "--overwrite"),
    "OUT is IN via symlink": _same_path("symlink", "--overwrite"),
    "OUT is IN via hard link": _same_path("hardlink", "--overwrite"),
    "OUT directory holds IN": _out_contains_in,
    "OUT directory missing": _out_dir_missing,
    "OUT parent is a file": _out_parent_is_file,
    "OUT exists": _existing_out,
    "unknown output extension": _unknown("out.txt", 2, r"out\.txt: unknown output format '\.txt'"),
    "single .npy output": _unknown(
        "out.npy", 2, r"out\.npy: unknown output format.*put x\.npy and y\.npy in one directory"
    ),
    "unknown input extension": _unknown("in.txt", 2, r"in\.txt: unknown input format '\.txt'"),
    "single .npy input": _unknown("x.npy", 2, r"x\.npy: unknown input format.*one directory"),
    "alpha 0": _option("--alpha", "0", pattern=r"--alpha must be a finite number > 0"),
    "alpha negative": _option("--alpha", "-0.5", pattern=r"--alpha must be"),
    "alpha nan": _option("--alpha", "nan", pattern=r"--alpha must be"),
    "alpha inf": _option("--alpha", "inf", pattern=r"--alpha must be"),
    "batch size 0": _option("--batch-size", "0", pattern=r"--batch-size must be an integer >= 1"),
    "batch size negative": _option("--batch-size", "-3", pattern=r"--batch-size must be an integer >= 1"),
    "copies 0": _option("--copies", "0", pattern=r"--copies must be an integer >= 1"),
    "block rows 0": _option("--block-rows", "0", pattern=r"--block-rows must be an integer >= 1"),
}


def run_in_process(args):
    """The command line in this process (click's runner), as a CompletedProcess;
    an exception that escapes the command fails the test, as a traceback would."""
    from mixup_cli.cli import cli

    result = cli_runner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


# Every case through the command line in-process; through the executable (a
# process of its own per case: exit status, stderr as a shell sees them) in the slow suite.
@pytest.mark.parametrize("how", ["in-process", pytest.param("executable", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(tmp_path, case, how):
    src, out, extra, code, pattern = CASES[case](tmp_path)
    out = Path(out) if out is not None else tmp_path / "out.h5"
    out_existed = out.exists() or out.is_symlink()
    before_in, before_out = digest(src), digest(out)
    result = (run if how == "executable" else run_in_process)(["augment", src, out, "--seed", 1, *extra])
    assert_clean_failure(result, code, pattern)
    if out_existed:
        assert digest(out) == before_out
    else:
        assert not out.exists() and not out.is_symlink()
    assert not Path(str(out) + ".provenance.json").exists()
    assert digest(src) == before_in
    assert temporaries(tmp_path, out.parent, Path(src).parent) == []


@pytest.mark.slow
@needs_permission_bits
@pytest.mark.parametrize("fmt", ["in.h5", "in.npz", "data"])
def test_unreadable_input(tmp_path, fmt):
    x, y = make_arrays(n=20)
    if fmt == "in.h5":
        src = write_h5(tmp_path / fmt, x=x, y=y)
    elif fmt == "in.npz":
        src = write_npz(tmp_path / fmt, x=x, y=y)
    else:
        src = write_npy_dir(tmp_path / fmt, x=x, y=y)
    target = src / "x.npy" if src.is_dir() else src
    before = digest(src)
    target.chmod(0)
    try:
        result = run(["augment", src, tmp_path / "out.h5"], prefix=DROP_DAC)
    finally:
        target.chmod(0o644)
    assert_clean_failure(result, 1, rf"{re.escape(target.name)}(\[x\])?: permission denied; make the file readable")
    assert not (tmp_path / "out.h5").exists() and temporaries(tmp_path) == []
    assert digest(src) == before


@needs_permission_bits
def test_output_directory_not_writable(tmp_path):
    src = _h5(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run(["augment", src, locked / "out.h5"], prefix=DROP_DAC)
    finally:
        locked.chmod(0o755)
    assert_clean_failure(result, 1, r"out\.h5: directory .*locked is not writable")
    assert list(locked.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs, mounted for the test (root only)."""
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["out.h5", "out.npz", "out"])
def test_disk_full(tmp_path, small_tmpfs, name):
    x, y = make_arrays(n=3000, x_shape=(400,))  # about 4.8 MB of x alone: more than the disk holds
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    before = digest(src)
    out = small_tmpfs / name
    result = run(["augment", src, out, "--seed", 1])
    assert_clean_failure(result, 1, rf"{re.escape(str(out))}: disk full")
    assert list(small_tmpfs.iterdir()) == []
    assert digest(src) == before


@pytest.mark.slow
def test_disk_full_during_the_write(tmp_path, small_tmpfs):
    """The staged rows fit, the compressed archive packed after them does not."""
    x, y = make_arrays(n=1200, x_shape=(256,))  # about 1.2 MiB: staging fits in 2 MiB, staging + archive not
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = small_tmpfs / "out.npz"
    result = run(["augment", src, out, "--seed", 1, "--compression", "gzip"])
    assert_clean_failure(result, 1, rf"{re.escape(str(out))}: disk full \(no space left")
    assert list(small_tmpfs.iterdir()) == []


_NO_PRECHECK = """
import sys
import time
from mixup_cli.run import preflight
preflight.check_free_space = lambda *args: None  # let the write itself hit the full disk
from mixup_cli.cli import main
main(sys.argv[1:], prog_name="mixup")
"""


# Every format and compression: the write itself hits the full disk.
_EVERY_OUTPUT = [
    ("out.h5", "none"),
    pytest.param("out.h5", "gzip", marks=pytest.mark.slow),
    ("out.h5", "lzf"),
    ("out.npz", "none"),
    pytest.param("out.npz", "gzip", marks=pytest.mark.slow),
    ("out", "none"),
    pytest.param("out.zarr", "none", marks=pytest.mark.slow),
    ("out.zarr", "gzip"),
    pytest.param("out.zarr", "zstd", marks=pytest.mark.slow),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,compression", _EVERY_OUTPUT)
def test_disk_full_mid_write_without_the_precheck(tmp_path, small_tmpfs, name, compression):
    """Exit 1 with the one line, nothing left: no crash closing a file whose
    write failed (HDF5 lzf), no write still in flight after cleanup (Zarr)."""
    if name.endswith(".zarr"):
        pytest.importorskip("zarr")
    x, y = make_arrays(n=3000, x_shape=(400,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = small_tmpfs / name
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_PRECHECK,
            "augment",
            str(src),
            str(out),
            "--seed",
            "1",
            "--compression",
            compression,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert_clean_failure(result, 1, rf"{re.escape(str(out))}: disk full \(no space left")
    assert list(small_tmpfs.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_disk_full_compressed_hdf5(tmp_path, small_tmpfs, compression):
    """No free-space bound exists for compressed HDF5: the run itself finds the disk full."""
    x, y = make_arrays(n=3000, x_shape=(400,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = small_tmpfs / "out.h5"
    result = run(["augment", src, out, "--seed", 1, "--compression", compression])
    assert_clean_failure(result, 1, rf"{re.escape(str(out))}: disk full \(no space left")
    assert list(small_tmpfs.iterdir()) == []


def test_disk_full_keeps_old_output(tmp_path, small_tmpfs):
    """--overwrite replaces OUT only at the final rename: a failed run leaves it."""
    x, y = make_arrays(n=3000, x_shape=(400,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = small_tmpfs / "out.h5"
    old = write_h5(out, x=x[:5], y=y[:5])
    before = digest(old)
    result = run(["augment", src, out, "--seed", 1, "--overwrite"])
    assert_clean_failure(result, 1, r"disk full")
    assert digest(out) == before and sorted(p.name for p in small_tmpfs.iterdir()) == ["out.h5"]


_HOLD_LOCK = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a", locking=True)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_locked_hdf5_input(tmp_path):
    src = _h5(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(src)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(src)
        result = run(["augment", src, tmp_path / "out.h5"], env_extra={"HDF5_USE_FILE_LOCKING": "TRUE"})
    finally:
        holder.kill()
        holder.wait()
    assert_clean_failure(
        result, 1, r"in\.h5: cannot open HDF5 file: the file is locked by another process.*HDF5_USE_FILE_LOCKING"
    )
    assert not (tmp_path / "out.h5").exists() and temporaries(tmp_path) == []
    assert digest(src) == before


@pytest.mark.slow
def test_hdf5_output_is_never_opened_at_its_final_path(tmp_path):
    """An OUT held open by another process (a reader with a lock) is not truncated:
    the new file is written beside it and renamed over it."""
    src = _h5(tmp_path)
    out = tmp_path / "out.h5"
    x, y = make_arrays(n=7)
    write_h5(out, x=x, y=y)
    with h5py.File(out, "r") as held:
        result = run(["augment", src, out, "--seed", 2, "--overwrite", "--quiet"])
        assert result.returncode == 0, result.stderr
        assert held["x"].shape == (7, 4, 3)  # the old file, still whole
    assert load_output(out)["x"].shape == (20, 4, 3)
    assert temporaries(tmp_path) == []


@pytest.mark.slow
def test_a_billion_copies_are_refused_at_once(tmp_path):
    """No minutes spent planning tasks that could never be recorded: refused
    before anything is written, in about the time the command takes to start."""
    x, y = make_arrays(n=200, x_shape=(4,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["augment", src, out_dir / "out.h5", "--seed", 1, "--copies", 10**9, "--compression", "gzip"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The command's own peak memory, from a small parent: a child forked from
    # this (large) test process keeps that process's peak as its own across exec.
    peak_file = tmp_path / "peak"
    probe = (
        "import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
        "open(sys.argv[1], 'w').write(str(u.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(s))"
    )
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", probe, str(peak_file)] + mixup_executable() + [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - t0
    peak_kib = int(peak_file.read_text())
    assert_clean_failure(result, 2, r"--copies 1000000000 .* 1,000,000,000 tasks.*lower --copies or raise --block-rows")
    assert took < 10, took  # start-up included, on a loaded machine; the planning itself is O(1)
    assert peak_kib < 300 * 1024, peak_kib  # KiB: no task list in memory
    assert list(out_dir.iterdir()) == []


def test_many_tasks_cost_no_memory_before_the_first_write():
    """The block bounds behind the output digests are computed, not listed."""
    from mixup_cli.mixing.sampling import MAX_TASKS, Plan
    from mixup_cli.record import digests

    plan = Plan(n_rows=10, alpha=0.2, seed=1, block_rows=10, copies=MAX_TASKS)
    t0 = time.perf_counter()
    blocks = digests.BlockDigests.for_plan(plan, ["x"])
    assert time.perf_counter() - t0 < 0.1
    assert len(blocks.bounds) == MAX_TASKS and blocks.bounds[-1] == (10 * MAX_TASKS - 10, 10 * MAX_TASKS)
    with pytest.raises(ParameterError, match="--copies"):
        Plan(n_rows=10, alpha=0.2, seed=1, block_rows=10, copies=MAX_TASKS + 1)


@pytest.mark.slow
def test_class_pairing_on_an_input_without_y_is_a_usage_error(tmp_path):
    x, _ = make_arrays(n=50, x_shape=(4,))
    src = write_npz(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.h5"
    for pairing in ("within-class", "between-class"):
        result = run(["augment", src, out, "--seed", 1, "--pairing", pairing])
        assert_clean_failure(
            result, 2, rf"in\.npz has no 'y': --pairing {pairing} needs class labels; name them with --y-key"
        )
    assert not out.exists() and temporaries(tmp_path) == []


@pytest.mark.slow
def test_symlink_loops_are_named(tmp_path):
    x, y = make_arrays(n=50, x_shape=(4,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    loop = tmp_path / "loop.h5"
    loop.symlink_to(loop.name)  # points at itself
    as_input = run(["augment", loop, tmp_path / "out.h5", "--seed", 1])
    assert_clean_failure(as_input, 1, r"loop\.h5: is a symbolic link that loops back on itself")
    as_output = run(["augment", src, loop, "--seed", 1])
    assert_clean_failure(
        as_output, 1, r"loop\.h5: is a symbolic link that loops back on itself; fix or remove the link"
    )
    (tmp_path / "dir").symlink_to("dir")
    inside = run(["augment", src, tmp_path / "dir" / "out.h5", "--seed", 1])
    assert_clean_failure(inside, 1, r"out\.h5: is in a symbolic link that loops back on itself")
    assert loop.is_symlink() and temporaries(tmp_path) == [] and not (tmp_path / "out.h5").exists()
