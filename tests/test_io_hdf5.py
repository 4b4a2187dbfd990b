"""The HDF5 reader (its own raw reads of plain rows, HDF5 for the rest)
against h5py's own reading, over the chunk layouts files have."""

import h5py
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.io import hdf5

N = 37
# (row shape, chunks, gzip, shuffle, dtype)
LAYOUTS = {
    "whole rows": ((6,), (4, 6), False, False, "f4"),
    "one row per chunk, gzip": ((6,), (1, 6), True, True, "f4"),
    "part-row (1, 2), raw": ((6,), (1, 2), False, False, "f4"),
    "part-row (1, 2), gzip+shuffle": ((6,), (1, 2), True, True, "i2"),
    "3-D (1, 2, 6)": ((4, 6), (1, 2, 6), True, False, "f8"),
    "3-D (1, 1, 3)": ((4, 6), (1, 1, 3), False, False, "u1"),
    "3-D (1, 3, 6): does not divide": ((4, 6), (1, 3, 6), False, False, "f4"),
    "(2, 3): two rows, part of each": ((6,), (2, 3), True, False, "f4"),
    "big-endian": ((6,), (4, 6), True, False, ">f4"),
    "one chunk, gzip": ((6,), (N, 6), True, True, "f4"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    made = {}
    rng = np.random.default_rng(0)
    for name, (row, chunks, gzip, shuffle, dtype) in LAYOUTS.items():
        path = tmp_path_factory.mktemp("layouts") / "in.h5"
        x = (rng.standard_normal((N,) + row) * 100).astype(dtype)
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=x, chunks=chunks, compression="gzip" if gzip else None, shuffle=shuffle)
        made[name] = (path, x)
    return made


@settings(max_examples=examples(60), deadline=None)
@given(name=st.sampled_from(sorted(LAYOUTS)), start=st.integers(0, N), length=st.integers(0, N))
def test_read_into_equals_h5py(files, name, start, length):
    path, x = files[name]
    stop = min(N, start + length)
    with h5py.File(path, "r") as f:
        expected = f["x"][start:stop]
    out = np.full((N,) + x.shape[1:], 7, dtype=expected.dtype)
    with hdf5.Reader(path) as reader:
        reader.read_into("x", start, stop, out)
    np.testing.assert_array_equal(out[: stop - start], expected)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_take_equals_h5py(files, name):
    path, x = files[name]
    rows = np.array([5, 0, 36, 5, 17, 18, 19, 2])
    with h5py.File(path, "r") as f:
        expected = f["x"][()][rows]
    with hdf5.Reader(path) as reader:
        np.testing.assert_array_equal(reader.take("x", rows), expected)


def test_unwritten_chunks_read_as_fill_values(tmp_path):
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(20, 4), dtype="f4", chunks=(1, 2), fillvalue=-3)
        ds[5] = np.arange(4)
        expected = ds[()]
    with hdf5.Reader(path) as reader:
        out = np.empty((20, 4), "f4")
        reader.read_into("x", 0, 20, out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_read_through_hdf5_alone_equals_h5py(files, name, monkeypatch):
    """With the reader's own paths turned off (bench/bench_hdf5_paths.py's B side)."""
    monkeypatch.setenv("MIXUP_HDF5_OFF", ",".join(hdf5.OWN_PATHS))
    path, _ = files[name]
    with h5py.File(path, "r") as f:
        expected = f["x"][()]
    rows = np.array([5, 0, 36, 5, 17, 18, 19, 2])
    with hdf5.Reader(path) as reader:
        out = np.empty_like(expected)
        reader.read_into("x", 3, N, out)
        np.testing.assert_array_equal(out[: N - 3], expected[3:])
        np.testing.assert_array_equal(reader.take("x", rows), expected[rows])
