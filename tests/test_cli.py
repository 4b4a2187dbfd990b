"""The command line: exit codes, messages, stdout/stderr discipline, help."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    SAMPLE_H5,
    expected_mix,
    load_output,
    make_arrays,
    mixup_executable,
    read_sidecar,
    write_h5,
    write_npy_dir,
    write_npz,
)

from mixup_cli import __version__
from mixup_cli.cli import cli


@pytest.fixture
def small_h5(tmp_path):
    x, y = make_arrays(n=25)
    return write_h5(tmp_path / "in.h5", x=x, y=y), x, y


def test_augment_json_goes_to_stdout_alone(run_cli, small_h5, tmp_path):
    src, x, y = small_h5
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--seed", 4, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert summary["rows"] == 25 and summary["seed"] == 4
    assert summary["output"] == str(out) and Path(summary["sidecar"]).exists()
    data = load_output(out)
    assert np.array_equal(data["x"], expected_mix(x, data["lam"], data["partner"]))


def test_quiet_prints_nothing(run_cli, small_h5, tmp_path):
    src, _, _ = small_h5
    result = run_cli("augment", src, tmp_path / "out.npz", "--seed", 1, "--quiet")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


def _paused_and_killed(args, stage, tmp_path):
    """``mixup ARGS`` stopped by SIGKILL where it reaches ``stage`` (MIXUP_TEST_PAUSE)."""
    import os
    import signal
    import time

    flag = tmp_path / "paused.flag"
    env = dict(os.environ, MIXUP_TEST_PAUSE=f"{stage}:{flag}")
    proc = subprocess.Popen(
        mixup_executable() + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    flag.unlink()


@pytest.mark.slow
def test_quiet_leaves_only_errors_on_stderr(tmp_path):
    """-q in every command that has it: the warnings and notes each run below
    prints without it (checked) are gone; an error still says its one line."""
    x, _ = make_arrays(n=12)
    src = write_h5(tmp_path / "xonly.h5", x=x)  # no 'y': "mixing 'x' alone" is a warning
    other = write_h5(tmp_path / "xonly2.h5", x=x)

    def run(*args):
        return subprocess.run(mixup_executable() + [str(a) for a in args], capture_output=True, text=True, timeout=120)

    out = tmp_path / "out.h5"
    runs = {
        "augment": ["augment", src, out, "--seed", 1],
        "augment --resume": ["augment", src, tmp_path / "r.h5", "--seed", 1, "--resume"],  # nothing to resume
        "augment of a set": ["augment", src, other, tmp_path / "set", "--seed", 1],
    }
    if importlib.util.find_spec("matplotlib") is not None:
        runs["preview"] = ["preview", src, "-o", tmp_path / "p.png", "--seed", 1]
    for what, args in runs.items():
        loud = run(*args)
        assert loud.returncode == 0 and "warning: " in loud.stderr, (what, loud.stderr)
        for p in [tmp_path / "r.h5", tmp_path / "p.png", out, tmp_path / "set"]:
            subprocess.run(["rm", "-rf", str(p), str(p) + ".provenance.json"], check=True)
        quiet = run(*args, "-q")
        assert quiet.returncode == 0 and quiet.stderr == "", (what, quiet.stderr)
    # verify finishing the commit a killed run left half-done: a warning, silenced by -q.
    for flags in ([], ["-q"]):
        subprocess.run(["rm", "-rf", str(out), str(out) + ".provenance.json"], check=True)
        _paused_and_killed(["augment", src, out, "--seed", 1, "-q"], "output-in-place", tmp_path)
        checked = run("verify", out, *flags)
        assert checked.returncode == 0 and checked.stdout.strip().endswith("OK"), checked.stdout
        assert ("finished the commit" in checked.stderr) == (not flags), checked.stderr
        assert checked.stderr == "" or not flags
    failed = run("augment", tmp_path / "missing.h5", tmp_path / "o.h5", "-q")
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1 and "missing.h5" in failed.stderr


def test_default_run_reports_on_stderr_only(run_cli, small_h5, tmp_path):
    src, _, _ = small_h5
    result = run_cli("augment", src, tmp_path / "out.h5", "--seed", 1)
    assert result.exit_code == 0 and result.stdout == ""
    assert "wrote 25 rows" in result.stderr and "seed 1" in result.stderr


@pytest.mark.parametrize("form", ["npy-dir", "hdf5"])
def test_one_input_and_out_with_a_slash_write_one_npy_directory(run_cli, tmp_path, form):
    """A shell's completion adds the slash: ``data/ mixed/`` (and ``in.h5 mixed/``) write
    the .npy directory ``mixed`` and ``mixed.provenance.json``, as ``mixed`` does; no set."""
    from mixup_cli.commands.dataset import MixupDataset

    x, y = make_arrays(n=20)
    if form == "npy-dir":
        src = write_npy_dir(tmp_path / "data", x=x, y=y)
        given = str(src) + "/"
    else:
        src = given = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "mixed"
    result = run_cli("augment", given, str(out) + "/", "--seed", 7)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lam.npy", "partner.npy", "x.npy", "y.npy"]
    assert (tmp_path / "mixed.provenance.json").is_file()
    assert "set" not in read_sidecar(out)
    reference = tmp_path / "reference"
    assert run_cli("augment", src, reference, "--seed", 7).exit_code == 0
    data = load_output(out)
    assert {k: v.tobytes() for k, v in data.items()} == {k: v.tobytes() for k, v in load_output(reference).items()}
    with MixupDataset(str(out) + "/") as ds:
        assert len(ds) == 20
    verified = run_cli("verify", str(out) + "/")
    assert verified.exit_code == 0 and verified.stdout.strip().endswith("OK"), verified.stdout


def test_existing_output_is_kept_without_overwrite(run_cli, small_h5, tmp_path):
    src, _, _ = small_h5
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    result = run_cli("augment", src, out, "--seed", 1)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == b"precious"
    assert run_cli("augment", src, out, "--seed", 1, "--overwrite").exit_code == 0
    assert load_output(out)["x"].shape == (25, 4, 3)


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name != "in.h5")


@pytest.mark.parametrize(
    "args, code, pattern",
    [
        (["--alpha", "0"], 2, r"--alpha"),
        (["--alpha", "-0.5"], 2, r"--alpha"),
        (["--alpha", "nan"], 2, r"--alpha"),
        (["--batch-size", "0"], 2, r"--batch-size"),
        (["--copies", "0"], 2, r"--copies"),
        (["--x-key", "images"], 1, r"no array 'images' \(arrays present: x, y\).*--x-key"),
        (["--y-key", "labels"], 1, r"no array 'labels'.*--y-key"),
        (["--compression", "zstd"], 2, r"--compression"),
    ],
)
def test_refused_options(run_cli, small_h5, tmp_path, args, code, pattern):
    src, _, _ = small_h5
    result = run_cli("augment", src, tmp_path / "out.h5", *args)
    assert result.exit_code == code, result.stderr
    assert re.search(pattern, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["augment", "IN", "out.h5", "--alpah", "0.3"],
            "mixup augment: no such option --alpah (did you mean --alpha?); see 'mixup augment --help'",
        ),
        (["augment"], "mixup augment: missing arguments 'IN... OUT'; see 'mixup augment --help'"),
        (["verify"], "mixup verify: missing argument 'OUT'; see 'mixup verify --help'"),
        (
            ["augment", "IN", "out.h5", "--copies", "x"],
            "mixup augment: invalid value for '--copies': 'x' is not a valid integer; see 'mixup augment --help'",
        ),
        (
            ["augment", "IN", "out.h5", "--alpha"],
            "mixup augment: option '--alpha' requires an argument; see 'mixup augment --help'",
        ),
        (
            ["inspect", "IN", "extra"],
            "mixup inspect: got unexpected extra argument (extra); see 'mixup inspect --help'",
        ),
        (["preview", "IN"], "mixup preview: missing option '-o' / '--output'; see 'mixup preview --help'"),
        (
            ["augment", "IN", "out.h5", "--no-y", "--y-key", "y"],
            "mixup augment: --no-y and --y-key exclude each other; see 'mixup augment --help'",
        ),
        (  # the library's own usage errors (ParameterError, exit 2): the same form
            ["augment", "IN", "out.h5", "--chunk-rows", "7", "--block-rows", "64"],
            "mixup augment: --chunk-rows 7 does not divide the block rows (64): blocks must cover whole chunks; "
            "choose a divisor such as 2, 4, 8, or set --block-rows; see 'mixup augment --help'",
        ),
        (  # click < 8.4 names no near miss
            ["agument"],
            (
                "mixup: no such command 'agument' (did you mean augment?); see 'mixup --help'",
                "mixup: no such command 'agument'; see 'mixup --help'",
            ),
        ),
        (["--bogus"], "mixup: no such option --bogus; see 'mixup --help'"),
    ],
)
def test_usage_errors_are_one_line(small_h5, tmp_path, args, line):
    """click's usage errors (Usage, Try, a blank line, Error) and the command's own: one line, exit 2."""
    src, _, _ = small_h5
    args = [str(src) if a == "IN" else a for a in args]
    proc = subprocess.run(mixup_executable() + args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr in [f"{one}\n" for one in ((line,) if isinstance(line, str) else line)], proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_mismatched_rows_are_refused_before_output(run_cli, tmp_path):
    x, y = make_arrays(n=10)
    src = write_h5(tmp_path / "in.h5", x=x, y=y[:9])
    result = run_cli("augment", src, tmp_path / "out.h5")
    assert result.exit_code == 1
    assert "'x' has 10 rows but 'y' has 9" in result.stderr and str(src) in result.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["out.csv", "out.npy", "out.txt"])
def test_unknown_output_extension_is_a_usage_error(run_cli, small_h5, tmp_path, name):
    src, _, _ = small_h5
    result = run_cli("augment", src, tmp_path / name)
    assert result.exit_code == 2
    assert name in result.stderr and "unknown output format" in result.stderr
    assert leftovers(tmp_path) == []


def test_lzf_is_refused_for_npz(run_cli, small_h5, tmp_path):
    src, _, _ = small_h5
    result = run_cli("augment", src, tmp_path / "out.npz", "--compression", "lzf")
    assert result.exit_code == 2 and "lzf" in result.stderr
    assert leftovers(tmp_path) == []


def test_pickled_npz_is_never_loaded(run_cli, tmp_path):
    x = np.empty(3, dtype=object)
    x[:] = [{"a": 1}, None, 3]
    np.savez(tmp_path / "in.npz", x=x, y=np.ones((3, 2)))
    result = run_cli("augment", tmp_path / "in.npz", tmp_path / "out.h5")
    assert result.exit_code == 1 and "pickled" in result.stderr


def test_output_equal_to_input_is_refused(run_cli, small_h5):
    src, _, _ = small_h5
    result = run_cli("augment", src, src, "--overwrite")
    assert result.exit_code == 2 and "input itself" in result.stderr


def test_missing_input(run_cli, tmp_path):
    result = run_cli("augment", tmp_path / "nope.h5", tmp_path / "out.h5")
    assert result.exit_code == 1 and "nope.h5" in result.stderr and "no such file" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mixup_cli", "augment", str(tmp_path / "nope.h5"), str(tmp_path / "o.h5"), "--debug"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_every_command_has_help_with_an_example(run_cli):
    for name in cli.commands:
        result = run_cli(name, "--help")
        assert result.exit_code == 0
        assert f"mixup {name} " in result.stdout, f"{name} --help lacks an example"


def test_every_command_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in cli.commands:
        assert f"mixup {name}" in readme, name


def test_installed_executable_runs_the_sample(run_mixup, tmp_path):
    out = tmp_path / "digits-mixed.h5"
    proc = run_mixup("augment", SAMPLE_H5, out, "--seed", 7, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 1797
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal, summary via --json
    assert out.exists() and Path(str(out) + ".provenance.json").exists()


@pytest.mark.slow
def test_python_dash_m_and_exit_codes_in_a_shell_script(tmp_path):
    x, y = make_arrays(n=8)
    write_npz(tmp_path / "in.npz", x=x, y=y)
    script = tmp_path / "job.sh"
    script.write_text(
        "set -euo pipefail\n"
        f"{sys.executable} -m mixup_cli augment in.npz out.h5 --seed 1 --quiet\n"
        f"if {sys.executable} -m mixup_cli augment in.npz out.h5 --quiet 2>err.txt; then exit 9; fi\n"
        "echo done\n"
    )
    proc = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "already exists" in (tmp_path / "err.txt").read_text()


def test_shared_options_refuse_alike_in_every_command(run_cli, small_h5, tmp_path):
    """--batch-size is one option for augment and verify: the same check, the same message."""
    src, _, _ = small_h5
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--seed", 1, "--quiet").exit_code == 0
    messages = set()
    for args in (["augment", src, tmp_path / "other.h5"], ["verify", out]):
        result = run_cli(*args, "--batch-size", 0)
        assert result.exit_code == 2
        messages.add(result.stderr)
    assert {m.replace("verify", "CMD").replace("augment", "CMD") for m in messages} == {
        "mixup CMD: --batch-size must be an integer >= 1, got 0; see 'mixup CMD --help'\n"
    }
    assert not (tmp_path / "other.h5").exists()


def test_no_y_and_y_key_exclude_each_other_in_augment_and_preview(run_cli, small_h5, tmp_path):
    src, _, _ = small_h5
    for args in (["augment", src, tmp_path / "out.h5"], ["preview", src, "-o", tmp_path / "p.png"]):
        result = run_cli(*args, "--no-y", "--y-key", "y")
        assert result.exit_code == 2 and "--no-y and --y-key exclude each other" in result.stderr
    assert leftovers(tmp_path) == []


HEAVY_MODULES = {
    "sklearn",
    "dask",
    "distributed",
    "zarr",
    "numcodecs",
    "tables",
    "matplotlib",
    "tqdm",
    "h5py",
    "scipy",
    "anndata",
    "netCDF4",
    "pyarrow",
    "pandas",
    "PIL",
}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["augment", "--help"], ["preview", "--help"], ["verify", "--help"]])
def test_help_imports_no_heavy_module(args):
    """--help stays fast: the shared options import lists of choices, not the code behind them."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['mixup', *{args!r}]\n"
        "try:\n    runpy.run_module('mixup_cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mixup" in proc.stdout
    loaded = set(proc.stderr.split())
    assert "click" in loaded and not loaded & HEAVY_MODULES, sorted(loaded & HEAVY_MODULES)
