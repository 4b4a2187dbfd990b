"""Partner rows read by index: ``gather.take`` (rows close together read as
one range) and the local engine reading the next task's partners ahead."""

import threading
import time

import h5py
import numpy as np
import pytest
from conftest import examples, make_arrays, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, Progress, augment, open_source
from mixup_cli.core.errors import InputError
from mixup_cli.io import hdf5, open_reader
from mixup_cli.run import gather


@pytest.fixture(scope="module")
def small_rows(tmp_path_factory):
    """200 rows of 3 floats (12 bytes: many rows per 32 KiB gap) in chunks of
    16, and 200 rows of 4 KiB, contiguous; with what h5py reads of them."""
    path = tmp_path_factory.mktemp("gather") / "in.h5"
    rng = np.random.default_rng(5)
    with h5py.File(path, "w") as f:
        f.create_dataset("y", data=rng.random((200, 3)).astype(np.float32), chunks=(16, 3))
        f.create_dataset("x", data=rng.random((200, 1024)).astype(np.float32))
    with h5py.File(path, "r") as f:
        return path, {key: f[key][()] for key in f}


ROW_SETS = [
    [0, 1],
    [5],
    list(range(0, 200, 3)),  # runs across every chunk
    [0, 1, 2, 3, 100, 150, 151, 152, 153, 154, 199],
    list(range(200)),
    [3, 90, 180],  # far apart: each read alone
]


@pytest.mark.parametrize("rows", ROW_SETS)
@pytest.mark.parametrize("window_rows", [4, 10, 10**6])
def test_gathered_rows_are_the_rows_take_reads(small_rows, monkeypatch, rows, window_rows):
    path, expected = small_rows
    with hdf5.Reader(path) as reader:
        for key in ("x", "y"):
            row_bytes = expected[key][0].nbytes
            monkeypatch.setattr(gather, "WINDOW_BYTES", window_rows * row_bytes)
            got = gather.take(reader, key, np.array(rows))
            assert got.dtype == expected[key].dtype and np.array_equal(got, expected[key][rows])


@settings(max_examples=examples(60), deadline=None)
@given(rows=st.sets(st.integers(0, 199), max_size=120), gap=st.sampled_from([0, 12, 120, 1 << 15]))
def test_hypothesis_gathered_rows_equal_fancy_indexing(small_rows, rows, gap):
    path, expected = small_rows
    rows = np.array(sorted(rows), dtype=np.int64)
    with hdf5.Reader(path) as reader:
        old = gather.GAP_BYTES
        gather.GAP_BYTES = gap
        try:
            got = gather.take(reader, "y", rows)
        finally:
            gather.GAP_BYTES = old
    assert np.array_equal(got, expected["y"][rows])


def test_ranges_join_rows_closer_than_the_gap_and_stop_at_a_window(monkeypatch):
    monkeypatch.setattr(gather, "GAP_BYTES", 100)
    monkeypatch.setattr(gather, "WINDOW_BYTES", 10 * 10)
    monkeypatch.setattr(gather, "MIN_RUN_ROWS", 2)
    rows = np.array([0, 5, 9, 30, 31, 60, 62, 64, 66, 68, 70, 72])
    # rows of 10 bytes: gaps under 10 rows join; a range spans at most 10 rows
    assert gather.ranges(rows, 10) == [(0, 3), (3, 5), (5, 10), (10, 12)]
    assert gather.ranges(np.array([0, 50, 100]), 10) is None


def test_the_input_check_sees_the_rows_picked_only(tmp_path):
    """A NaN in a row read with the partners but not one of them is not an
    error: only the rows picked are prepared (converted, checked)."""
    x, y = make_arrays(n=64, x_shape=(2,))
    x[20] = np.nan
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")
    try:
        around = np.array([*range(10, 20), *range(21, 30)])
        assert np.array_equal(gather.take(source.reader, "x", around), x[around])
        with pytest.raises(InputError, match="row 20 holds NaN"):
            gather.take(source.reader, "x", np.arange(10, 30))
    finally:
        source.reader.close()


def test_formats_that_decode_rows_are_read_by_take(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(60, dtype=np.float32).reshape(30, 2))
    with open_reader(tmp_path) as reader:
        assert not gather.coalesces(reader)
        rows = np.array([1, 2, 3, 4, 5, 20])
        assert np.array_equal(gather.take(reader, "x", rows), np.arange(60, dtype=np.float32).reshape(30, 2)[rows])


class _Slow(Progress):
    """The caller's thread, busy after each batch it mixed."""

    def __init__(self, spans):
        self.spans = spans

    def update(self, rows):
        t0 = time.monotonic()
        time.sleep(0.15)
        self.spans.append(("mix", t0, time.monotonic(), threading.get_ident()))


@pytest.mark.slow
def test_the_next_tasks_partners_are_read_while_this_task_mixes(tmp_path, monkeypatch):
    x, y = make_arrays(n=80, x_shape=(2,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    spans = []
    real = gather.take

    def slow_take(reader, key, rows, out=None):
        t0 = time.monotonic()
        time.sleep(0.15)
        got = real(reader, key, rows, out)
        spans.append(("take", t0, time.monotonic(), threading.get_ident()))
        return got

    monkeypatch.setattr(gather, "take", slow_take)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=3, block_rows=16, batch_size=16), _Slow(spans))
    takes = [s for s in spans if s[0] == "take"]
    mixes = [s for s in spans if s[0] == "mix"]
    assert len(mixes) == 5 and len(takes) >= 10  # five blocks, partners of x and y each
    # the partners were read while the caller's thread was busy with the task before
    overlapping = [t for t in takes if any(m[1] < t[2] and t[1] < m[2] for m in mixes)]
    assert len(overlapping) >= 4
    assert not {t[3] for t in takes} & {m[3] for m in mixes}
    with h5py.File(out, "r") as f:  # the rows are those the plan draws
        partner, lam = f["partner"][()], f["lam"][()]
        expect = lam[:, None] * x + (1 - lam[:, None]) * x[partner]
        assert np.allclose(f["x"][()], expect, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_values_whose_sum_overflows_are_not_refused(tmp_path, dtype):
    """The input check sums a block first (a NaN or Inf makes the sum one);
    a sum that overflows is checked element by element."""
    big = np.finfo(dtype).max
    x = np.full((40, 3), big, dtype=dtype)
    x[::2] = -big / 2
    y = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=1, block_rows=8))
    x[33, 1] = np.inf
    x[35, 2] = -np.inf
    src = write_h5(tmp_path / "bad.h5", x=x, y=y)
    with pytest.raises(InputError, match="'x' row 33 holds NaN or Inf"):
        augment(AugmentRequest(src, tmp_path / "out2.h5", seed=1, block_rows=8))


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 150], [3, 90, 180]])
def test_rows_are_gathered_into_the_buffer_given(small_rows, rows):
    """The engine reads each task's partners into one of two buffers reused
    for the whole run: the rows land in the buffer's first rows."""
    path, expected = small_rows
    with hdf5.Reader(path) as reader:
        for key in ("x", "y"):
            out = np.full((8,) + expected[key].shape[1:], -1, expected[key].dtype)
            got = gather.take(reader, key, np.array(rows), out)
            assert np.shares_memory(got, out) and np.array_equal(out[: len(rows)], expected[key][rows])
