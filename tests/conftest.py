"""Shared fixtures: real files in temporary directories, the CLI in-process
(CliRunner) and as the installed ``mixup`` executable."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mixup_cli.cli import cli

REPO = Path(__file__).resolve().parent.parent
SAMPLE_H5 = REPO / "sample_data" / "digits.h5"
SAMPLE_NPY_DIR = REPO / "sample_data" / "digits"

# For scripts run in a child process: ``Killer(out, rows)`` is a progress
# object that ends the process like SIGKILL (no cleanup) once ``rows`` rows
# were handed to the writer *and* a finished block is in the journal
# (progress counts rows before they are written, so counting alone races).
KILLER = """
import json as _json, os as _os, time as _time
from pathlib import Path as _Path
from mixup_cli.commands import pipeline as _pipeline; from mixup_cli.run import resume as _resume

class Killer(_pipeline.Progress):
    def __init__(self, out, stop_after):
        self.journal, self.stop_after, self.rows = _resume.journal_path(_Path(out)), stop_after, 0

    def _a_block_is_journalled(self):
        try:
            return bool(_json.loads(self.journal.read_text())["done"])
        except (OSError, ValueError, KeyError):
            return False

    def update(self, rows):
        self.rows += rows
        if self.rows >= self.stop_after:
            deadline = _time.monotonic() + 60
            while not self._a_block_is_journalled():
                if _time.monotonic() > deadline:
                    _os._exit(3)  # never journalled: the test fails on this exit code
                _time.sleep(0.01)
            _os._exit(9)
"""


# Hypothesis examples: a property runs its full count in the whole suite and
# a fifth of it (at least 5) in the fast suite, the default (-m 'not slow').
_FAST_SUITE = [False]


def examples(n: int) -> int:
    """``max_examples`` for a property whose whole-suite count is ``n``."""
    return max(5, n // 5) if _FAST_SUITE[0] else n


def pytest_configure(config):
    _FAST_SUITE[0] = " ".join(str(config.getoption("markexpr", "") or "").split()) == "not slow"


def make_arrays(n=53, x_shape=(4, 3), n_classes=5, dtype=np.float32, seed=0):
    """Random x of the given row shape and one-hot y."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(x_shape)).astype(dtype)
    y = np.eye(n_classes, dtype=np.float32)[rng.integers(0, n_classes, n)]
    return x, y


def write_h5(path, chunks=True, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if value is None:
                continue
            c = None
            if chunks and value.ndim and value.shape[0]:
                c = (min(16, value.shape[0]),) + value.shape[1:]
            f.create_dataset(key, data=value, chunks=c)
    return Path(path)


def write_npz(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **{k: v for k, v in arrays.items() if v is not None})
    return Path(path)


def write_npy_dir(path, **arrays):
    path = Path(path)
    path.mkdir()
    for key, value in arrays.items():
        if value is not None:
            np.save(path / f"{key}.npy", value)
    return path


def load_output(path) -> dict[str, np.ndarray]:
    """Every array of an output dataset, whatever its format, read with the
    format's own library. Never empty: two outputs compared key by key must
    have arrays to compare (a Zarr store once read as no arrays at all)."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            found = {k: f[k][()] for k in f.keys()}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
    elif path.suffix == ".zarr":
        import zarr

        found = {k: np.asarray(a[...]) for k, a in zarr.open_group(str(path), mode="r").arrays()}
    elif path.suffix == ".parquet":
        found = load_parquet(path)
    else:
        found = {p.stem: np.load(p, allow_pickle=False) for p in path.glob("*.npy")}
    assert found, f"no arrays in {path}"
    return found


def load_parquet(path) -> dict[str, np.ndarray]:
    """A Parquet output's columns with pyarrow: nested fixed-size lists as
    tensors, plain columns as vectors (by the types, not mixup's metadata)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    found = {}
    for name in table.column_names:
        values = table.column(name).combine_chunks()
        shape = []
        while hasattr(values.type, "list_size"):
            shape.append(values.type.list_size)
            values = values.flatten()
        found[name] = values.to_numpy(zero_copy_only=False).reshape([table.num_rows] + shape)
    return found


def expected_mix(arr, lam, partner, source_rows=None):
    """The documented formula: l = lam rounded to arr's dtype; l*a + (1-l)*a[partner]."""
    src = arr if source_rows is None else source_rows
    l = lam.astype(arr.dtype).reshape((-1,) + (1,) * (arr.ndim - 1))
    return l * src + (1 - l) * src[partner]


def cli_runner() -> CliRunner:
    """click's test runner with stdout and stderr apart, as click 8.2 and later
    always keep them; click 8.1 needs it asked (``mix_stderr``, gone in 8.2)."""
    import inspect

    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result (stdout and stderr apart)."""

    def run(*args, input=None):
        return cli_runner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


def run_in_process(*args) -> subprocess.CompletedProcess:
    """The command line in this process (click's runner) as a CompletedProcess,
    for reference runs beside the runs under test: no interpreter start-up.
    An exception that escapes the command fails the test."""
    args = [str(a) for a in args]
    result = cli_runner().invoke(cli, args, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def default_signals():
    """``preexec_fn`` for children that tests signal: a parent that ignores
    SIGINT (a suite run as a background job) or SIGHUP (under nohup) must not
    hide it from them (they would keep it ignored)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def mixup_executable() -> list[str]:
    """The ``mixup`` script installed for the interpreter running the tests.

    The one beside ``sys.executable`` first: a ``mixup`` found on PATH may be a
    version manager's shim (pyenv's costs a shell script and 0.1 s a run, and
    may pick another interpreter)."""
    beside = Path(sys.executable).with_name("mixup")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    exe = shutil.which("mixup")
    return [exe] if exe else [sys.executable, "-m", "mixup_cli"]


@pytest.fixture
def run_mixup():
    """Run the installed ``mixup`` executable as a subprocess."""

    def run(*args, timeout=120, **kwargs):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return subprocess.run(
            mixup_executable() + [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            **kwargs,
        )

    return run


def read_sidecar(output) -> dict:
    return json.loads(Path(str(output) + ".provenance.json").read_text())


@pytest.fixture
def outdir(tmp_path):
    """An empty directory for outputs, to check that a refused run leaves nothing."""
    d = tmp_path / "outputs"
    d.mkdir()
    return d


def assert_nothing_written(outdir):
    assert sorted(p.name for p in outdir.iterdir()) == []


_CLUSTER: dict = {}


@pytest.fixture
def dask_scheduler():
    """A scheduler and two worker processes on loopback, shared by consecutive
    Dask tests (a cluster takes seconds to start) and shut down after the last
    of them (``pytest_runtest_teardown``: an idle cluster keeps using CPU). The
    tests that use it are grouped on one xdist worker (``xdist_group``)."""
    pytest.importorskip("distributed", reason="the Dask engine is an optional extra: pip install 'mixup-cli[dask]'")
    pytest.importorskip("zarr", reason="Zarr is an optional extra: pip install 'mixup-cli[dask]'")
    import distributed

    if "cluster" not in _CLUSTER:
        _CLUSTER["cluster"] = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            host="127.0.0.1",
        )
    return _CLUSTER["cluster"].scheduler_address


def pytest_runtest_teardown(item, nextitem):
    if "cluster" in _CLUSTER and (nextitem is None or "dask_scheduler" not in nextitem.fixturenames):
        _CLUSTER.pop("cluster").close()


class OpenedInputs(logging.Handler):
    """Readers opened (``PATH: opened (FORMAT)``, logged at DEBUG), and those
    opened before the run started (it is also the run's progress object)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.opened: list[str] = []
        self.before_run: list[str] | None = None

    def emit(self, record):
        message = record.getMessage()
        if message.endswith(")") and ": opened (" in message:
            self.opened.append(message.rsplit(": opened (", 1)[0])

    def start(self, total_rows):
        self.before_run = list(self.opened)

    def update(self, rows):
        pass


@pytest.fixture
def counted_opens():
    """An ``OpenedInputs`` listening to mixup's log while the test runs."""
    logger = logging.getLogger("mixup_cli")
    handler, level = OpenedInputs(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
