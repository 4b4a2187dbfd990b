"""The HDF5 reader's fast paths (raw reads, inflating gzip outside HDF5)
against h5py's own reading, over chunk layouts they take or refuse."""

import h5py
import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.io import hdf5

# (row shape, chunks, gzip, shuffle, dtype, fast path expected)
LAYOUTS = {
    "whole rows": ((6,), (4, 6), False, False, "f4", "raw"),
    "one row per chunk, gzip": ((6,), (1, 6), True, True, "f4", "inflate"),
    "part-row (1, 2), raw": ((6,), (1, 2), False, False, "f4", "raw"),
    "part-row (1, 2), gzip+shuffle": ((6,), (1, 2), True, True, "i2", "inflate"),
    "3-D (1, 2, 6)": ((4, 6), (1, 2, 6), True, False, "f8", "inflate"),
    "3-D (1, 1, 3)": ((4, 6), (1, 1, 3), False, False, "u1", "raw"),
    "3-D (1, 3, 6): does not divide": ((4, 6), (1, 3, 6), False, False, "f4", None),
    "(2, 3): two rows, part of each": ((6,), (2, 3), True, False, "f4", None),
    "big-endian": ((6,), (4, 6), True, False, ">f4", None),
}
N = 37


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    made = {}
    rng = np.random.default_rng(0)
    for name, (row, chunks, gzip, shuffle, dtype, _) in LAYOUTS.items():
        path = tmp_path_factory.mktemp("layouts") / "in.h5"
        x = (rng.standard_normal((N,) + row) * 100).astype(dtype)
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=x, chunks=chunks, compression="gzip" if gzip else None, shuffle=shuffle)
        made[name] = (path, x)
    return made


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_fast_path_taken_where_it_applies(files, name):
    path, _ = files[name]
    expected = LAYOUTS[name][-1]
    with hdf5.Reader(path) as reader:
        took = "raw" if reader._raw_layout("x") else "inflate" if reader._deflated("x") is not None else None
    assert took == expected


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
