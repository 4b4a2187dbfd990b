"""Stopping a run through the library: a ``StopToken`` passed as ``stop=``.

The command's signal handlers only record into such a token
(tests/test_cli_signals.py, tests/test_atomic_commit.py); here a library
caller owns it: asked to stop (from the progress callback, another thread,
or during the commit), the run stops at its next safe point with the
exception the command maps to its exit code, keeps what ``resume=True``
continues from, and lets a commit that has begun finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, default_signals, load_output, make_arrays, write_h5

import mixup_cli
from mixup_cli import StopToken


def partials(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".mixup-partial" in p.name)


class StopAfter:
    """A progress object that asks ``token`` to stop once ``rows`` rows are written."""

    def __init__(self, token: StopToken, rows: int, signum=signal.SIGINT):
        self.token, self.rows, self.signum, self.seen = token, rows, signum, 0

    def start(self, total: int) -> None:
        pass

    def update(self, rows: int) -> None:
        self.seen += rows
        if self.seen >= self.rows:
            self.token.request(self.signum)


@pytest.fixture
def source(tmp_path):
    x, y = make_arrays(n=600, x_shape=(6,))
    return write_h5(tmp_path / "in.h5", x=x, y=y)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_token_stops_augment_at_a_checkpoint_and_resume_finishes(source, tmp_path, signum):
    out = tmp_path / "out.h5"
    token = StopToken()
    with pytest.raises(KeyboardInterrupt) as caught:
        mixup_cli.augment(
            source, out, seed=3, block_rows=100, batch_size=25, progress=StopAfter(token, 200, signum), stop=token
        )
    if signum == signal.SIGTERM:
        assert getattr(caught.value, "signum", None) == signal.SIGTERM  # Terminated, as the command's SIGTERM
    else:
        assert type(caught.value) is KeyboardInterrupt
    assert not out.exists() and ".out.h5.mixup-partial.journal.json" in partials(tmp_path)

    summary = mixup_cli.augment(source, out, seed=3, block_rows=100, batch_size=25, resume=True)
    assert summary.written == (out,) and partials(tmp_path) == []
    reference = tmp_path / "ref.h5"
    mixup_cli.augment(source, reference, seed=3, block_rows=100)
    got, want = load_output(out), load_output(reference)
    assert got.keys() == want.keys() and all(got[k].tobytes() == want[k].tobytes() for k in want)


@pytest.mark.slow
def test_a_request_from_another_thread_stops_the_run_within_a_tenth_of_a_second(tmp_path):
    """The engine waits at most 50 ms before looking at the token again."""
    rng = np.random.default_rng(1)
    src = write_h5(tmp_path / "in.h5", x=rng.standard_normal((200_000, 64), dtype=np.float32))
    out = tmp_path / "out.h5"
    token = StopToken()
    asked = []

    class Once:
        def start(self, total):
            pass

        def update(self, rows):
            if not asked:
                asked.append(None)
                threading.Timer(0.05, lambda: asked.append(time.monotonic()) or token.request()).start()

    with pytest.raises(KeyboardInterrupt):
        mixup_cli.augment(src, out, seed=1, batch_size=64, progress=Once(), stop=token)
    stopped = time.monotonic()
    assert len(asked) == 2, "the run ended before the request"
    assert stopped - asked[1] < 2.0  # about 0.1 s idle (a batch, or one wait of the engine), then the cleanup
    assert not out.exists()


@pytest.mark.slow
def test_a_token_stops_the_index_build(tmp_path):
    """A K-nearest-neighbour search over many rows stops between its pieces
    (of 4,096 rows), not once the whole index is built (several seconds here)."""
    pytest.importorskip("sklearn.neighbors")  # imported before: an import is not a place to stop
    rng = np.random.default_rng(2)
    src = write_h5(tmp_path / "in.h5", x=rng.standard_normal((20_000, 32), dtype=np.float32))
    token = StopToken()
    asked = []
    timer = threading.Timer(0.3, lambda: asked.append(time.monotonic()) or token.request())
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mixup_cli.augment(src, tmp_path / "out.h5", seed=1, pairing="knn", neighbors=5, stop=token)
    finally:
        timer.cancel()
    late = time.monotonic() - asked[0] if asked else None
    assert late is not None and late < 5.0, late  # a piece of the search at most, and the cleanup
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_a_token_requested_before_the_call_stops_it_before_anything_is_written(source, tmp_path):
    token = StopToken()
    token.request(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        mixup_cli.augment(source, tmp_path / "out.h5", seed=1, stop=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_a_token_stops_verify(source, tmp_path):
    out = tmp_path / "out.h5"
    mixup_cli.augment(source, out, seed=1, block_rows=100)
    token = StopToken()
    with pytest.raises(KeyboardInterrupt):
        mixup_cli.verify(out, batch_size=25, progress=StopAfter(token, 100), stop=token)
    assert mixup_cli.verify(out, batch_size=25, stop=StopToken()).ok  # a fresh token: nothing asked
    assert partials(tmp_path) == []


_DURING_COMMIT = """
import signal, sys, threading, time
from pathlib import Path
import mixup_cli

token = mixup_cli.StopToken()
flag = Path(sys.argv[3])

def stopper():
    while not flag.exists():
        time.sleep(0.002)
    token.request(signal.SIGTERM)
    flag.unlink()

threading.Thread(target=stopper, daemon=True).start()
inputs = sys.argv[1].split(",")
try:
    summary = mixup_cli.augment(inputs if len(inputs) > 1 else inputs[0], sys.argv[2], seed=5, stop=token)
    print("done", len(summary.written), token.late_name())
except KeyboardInterrupt as exc:
    print("stopped", type(exc).__name__, getattr(exc, "signum", None) == signal.SIGTERM)
"""


def during_commit(inputs, out, stage, tmp_path):
    flag = tmp_path / "paused.flag"
    done = subprocess.run(
        [sys.executable, "-c", _DURING_COMMIT, ",".join(str(p) for p in inputs), str(out), str(flag)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO), MIXUP_TEST_PAUSE=f"{stage}:{flag}"),
        preexec_fn=default_signals,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout.split()


@pytest.mark.slow
def test_a_request_during_the_commit_is_too_late_and_the_call_returns(source, tmp_path):
    out = tmp_path / "out.h5"
    assert during_commit([source], out, "output-in-place", tmp_path) == ["done", "1", "SIGTERM"]
    assert out.exists() and Path(f"{out}.provenance.json").exists() and partials(tmp_path) == []
    with h5py.File(out, "r") as f:
        assert f["x"].shape == (600, 6)


@pytest.mark.slow
def test_a_request_during_one_output_commit_of_a_set_stops_before_the_next(tmp_path):
    x, y = make_arrays(n=300, x_shape=(4,))
    a = write_h5(tmp_path / "a.h5", x=x[:150], y=y[:150])
    b = write_h5(tmp_path / "b.h5", x=x[150:], y=y[150:])
    outdir = tmp_path / "outs"
    assert during_commit([a, b], outdir, "committed", tmp_path) == ["stopped", "Terminated", "True"]
    assert (outdir / "a.h5").exists() and Path(f"{outdir / 'a.h5'}.provenance.json").exists()
    assert not (outdir / "b.h5").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_a_token_stops_the_dask_engine_between_two_results(dask_scheduler, source, tmp_path):
    out = tmp_path / "out.zarr"
    options = dict(seed=3, block_rows=50, copies=2)
    token = StopToken()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        mixup_cli.augment(
            source,
            out,
            engine="dask",
            scheduler=dask_scheduler,
            progress=StopAfter(token, 1),
            stop=token,
            **options,
        )
    assert time.monotonic() - started < 60
    assert not out.exists() and ".out.zarr.mixup-partial.journal.json" in partials(tmp_path)
    mixup_cli.augment(source, out, resume=True, **options)  # the rest, on the local engine
    reference = tmp_path / "ref.zarr"
    mixup_cli.augment(source, reference, **options)
    got, want = load_output(out), load_output(reference)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want) and partials(tmp_path) == []
