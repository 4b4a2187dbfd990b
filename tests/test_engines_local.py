"""The streaming engine: threaded writing, reused buffers, direct chunk writes."""

import os
import subprocess
import threading
from unittest import mock

import h5py
import numpy as np
import pytest
from conftest import examples, expected_mix, load_output, make_arrays, write_h5, write_npy_dir, write_npz
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, Progress, augment, open_source
from mixup_cli.core.blend import mix_gather, mix_rows, mixup
from mixup_cli.engines import local
from mixup_cli.engines.local import BlockCache
from mixup_cli.io import hdf5
from mixup_cli.io.base import ArraySpec, WriteOptions
from mixup_cli.mixing.sampling import Plan
from mixup_cli.record import provenance
from mixup_cli.run import planner


def h5_arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}


PLANS = [
    dict(pairing="global", copies=1, include_original=False, block_rows=8),
    dict(pairing="global", copies=2, include_original=True, block_rows=5),
    dict(pairing="batch", copies=1, include_original=False, block_rows=16),
    dict(pairing="global", copies=1, include_original=False, block_rows=64),  # one block
    # plan version 1 (the block cycle), still computed to verify its outputs
    dict(pairing="global", copies=2, include_original=True, block_rows=5, version=1),
    dict(pairing="batch", copies=1, include_original=False, block_rows=16, version=1),  # its tail of 5 alone
]


def keyed(seed, *key):
    """The generator ARCHITECTURE.md documents for each use of randomness."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def reference_output(x, y, seed, alpha, block_rows, pairing="global", copies=1, include_original=False, version=2):
    """The output arrays computed here from the documented scheme, in plain
    numpy: no block cache, no kernel, no engine. Keys (purpose, copy, block):
    (1, copy, block) draws the block's lam (Beta) then its partners: for
    global pairing, i.i.d. uniform over all rows; for batch, concatenated
    permutations of the block's rows, but for a last block shorter than half
    a block, paired with the one before it: (4, copy, first block of the two)
    permutes the two blocks' rows. Plan version 1's global pairing: (0,
    copy) orders the blocks of a copy in a cycle, and a block's partners are
    concatenated permutations of the next block's rows. Floats are mixed in
    their own dtype, lam rounded to it first, as the README states."""
    n = len(x)
    n_blocks = -(-n // block_rows)
    bounds = [(b * block_rows, min(n, (b + 1) * block_rows)) for b in range(n_blocks)]
    lam_parts, partner_parts = [], []
    if include_original:
        lam_parts.append(np.ones(n))
        partner_parts.append(np.arange(n, dtype=np.int64))
    for copy in range(copies):
        order = list(range(n_blocks))
        cycle = pairing == "global" and version == 1
        if cycle and n_blocks > 1:
            order = list(keyed(seed, 0, copy).permutation(n_blocks))
        partner_of = {b: (order[(i + 1) % n_blocks] if cycle else b) for i, b in enumerate(order)}
        for b, (start, stop) in enumerate(bounds):
            rng = keyed(seed, 1, copy, b)
            lam_parts.append(rng.beta(alpha, alpha, stop - start))
            if pairing == "global" and version == 2:
                partner_parts.append(rng.integers(0, n, stop - start, dtype=np.int64))
                continue
            short_tail = n_blocks > 1 and 2 * (n - (n_blocks - 1) * block_rows) < block_rows
            if pairing == "batch" and version == 2 and short_tail and b >= n_blocks - 2:
                # the last two blocks are one group: one permutation of it, keyed (4, copy, first block)
                first = (n_blocks - 2) * block_rows
                group = keyed(seed, 4, copy, n_blocks - 2).permutation(n - first)
                partner_parts.append(group[start - first : stop - first].astype(np.int64) + first)
                continue
            p_start, p_stop = bounds[partner_of[b]]
            perms = [rng.permutation(p_stop - p_start) for _ in range(-(-(stop - start) // (p_stop - p_start)))]
            partner_parts.append(np.concatenate(perms)[: stop - start].astype(np.int64) + p_start)
    lam, partner = np.concatenate(lam_parts), np.concatenate(partner_parts)
    out = {"lam": lam, "partner": partner}
    first = n if include_original else 0  # the original rows are written as they are
    for key, a in (("x", x), ("y", y)):
        l = lam[first:].astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
        mixed = l * np.concatenate([a] * copies) + (1 - l) * a[partner[first:]]
        out[key] = np.concatenate([a[:first], mixed])
    return out


def test_the_reference_follows_the_plan_it_documents():
    """The reference's draws are the plan's (``Plan.draw``), so a mismatch
    below is the engine's, not a reference drawn differently."""
    x, y = make_arrays(n=37, x_shape=(3, 2), seed=4)
    for params in PLANS:
        plan = Plan(n_rows=37, alpha=0.3, seed=9, **params)
        ref = reference_output(x, y, seed=9, alpha=0.3, **params)
        tasks = sorted(plan.tasks(), key=lambda t: t.out_start)
        lam, partner = (np.concatenate(parts) for parts in zip(*(plan.draw(t) for t in tasks)))
        assert ref["lam"].tobytes() == lam.tobytes() and ref["partner"].tobytes() == partner.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("params", PLANS)
@pytest.mark.parametrize("batch_rows", [1, 3, 8, 1000])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_threaded_engine_writes_the_reference_bytes(tmp_path, params, batch_rows, compression):
    x, y = make_arrays(n=37, x_shape=(3, 2), seed=4)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")
    try:
        plan = Plan(n_rows=37, alpha=0.3, seed=9, **params)
        results = []
        for threaded in (False, True):
            path = tmp_path / f"out-{threaded}.h5"
            specs = planner.output_specs(source, plan)
            writer = hdf5.Writer(
                path, specs, WriteOptions(compression=compression, block_rows=plan.block_rows, chunk_bytes=4 * 6 * 4)
            )
            local.run(source, plan, writer, plan.tasks(), Progress(), batch_rows=batch_rows, threaded=threaded)
            writer.close()
            results.append(h5_arrays(path))
    finally:
        source.reader.close()
    want = reference_output(x, y, seed=9, alpha=0.3, **params)
    for got in results:
        assert got.keys() == want.keys() == {"x", "y", "lam", "partner"}
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key


def test_output_data_does_not_depend_on_batch_size_or_compression(tmp_path):
    x, y = make_arrays(n=100, x_shape=(4, 4), seed=2)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    outputs = []
    for i, (batch, comp) in enumerate([(None, "none"), (7, "none"), (33, "gzip"), (None, "gzip"), (1, "lzf")]):
        out = tmp_path / f"out{i}.h5"
        augment(AugmentRequest(src, out, seed=5, batch_size=batch, block_rows=16, compression=comp))
        outputs.append(h5_arrays(out))
    for other in outputs[1:]:
        for key in outputs[0]:
            assert np.array_equal(outputs[0][key], other[key]), key


def test_gzip_output_is_read_by_hdf5_tools(tmp_path):
    x, y = make_arrays(n=50, x_shape=(8,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    augment(AugmentRequest(src, plain, seed=1, block_rows=16))
    augment(AugmentRequest(src, packed, seed=1, block_rows=16, compression="gzip"))
    with h5py.File(packed, "r") as f:
        assert f["x"].compression == "gzip" and f["x"].chunks[0] <= 16
    if not _has("h5diff"):
        pytest.skip("h5diff not installed")
    for key in ("/x", "/y", "/lam", "/partner"):
        done = subprocess.run(["h5diff", str(plain), str(packed), key, key], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def _has(tool):
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


class Boom(RuntimeError):
    pass


def _assert_nothing_left(tmp_path, out):
    assert not out.exists()
    assert not provenance.sidecar_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def _failure_points():
    from mixup_cli.record import digests

    return [
        pytest.param(hdf5.Writer, "write", 6, id="writer thread"),
        pytest.param(hdf5.Reader, "read_into", 5, id="reading"),
        pytest.param(digests.BlockHasher, "update", 4, id="hashing thread"),
    ]


@pytest.mark.parametrize("cls, method, nth", _failure_points())
def test_an_error_anywhere_reaches_the_caller_stops_every_thread_and_leaves_no_output(
    tmp_path, monkeypatch, cls, method, nth
):
    x, y = make_arrays(n=40)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    calls = {"n": 0}
    real = getattr(cls, method)

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Boom(f"{method} broke")
        return real(self, *args)

    monkeypatch.setattr(cls, method, failing)
    before = {t.name for t in threading.enumerate()}
    out = tmp_path / "out.h5"
    with pytest.raises(Boom, match=f"{method} broke"):
        augment(AugmentRequest(src, out, seed=1, batch_size=3, block_rows=8))
    _assert_nothing_left(tmp_path, out)
    started = {t.name for t in threading.enumerate()} - before
    assert not {"mixup-writer", "mixup-hash", "mixup-flush"} & started


def test_block_cache_reads_each_block_once_while_held_and_reuses_two_buffers(tmp_path, monkeypatch):
    x, y = make_arrays(n=30, x_shape=(2,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")
    reads = []
    real = type(source.reader).read_into

    def recording(self, key, start, stop, out):
        if key == "x":
            reads.append(start // 8)
        return real(self, key, start, stop, out)

    monkeypatch.setattr(type(source.reader), "read_into", recording)
    try:
        plan = Plan(n_rows=30, alpha=0.2, seed=0, block_rows=8)
        cache = BlockCache(source, plan)
        buffers = []
        for block, keep in [(0, 1), (1, 0), (1, 2), (2, 1), (3, 2), (2, 3), (0, 3), (3, 0)]:
            got = cache.get(block, keep)
            start, stop = plan.block_bounds(block)
            assert np.array_equal(got["x"], x[start:stop]) and np.array_equal(got["y"], y[start:stop])
            buffers.append(got["x"].ctypes.data)
        # A block still held is not read again, and the block kept is never the one evicted.
        assert reads == [0, 1, 2, 3, 0]
        # Two buffers, allocated once: every block lives in one of them.
        assert len(set(buffers)) == 2
    finally:
        source.reader.close()


def test_block_cache_never_reuses_a_pinned_buffer(tmp_path):
    x, y = make_arrays(n=30, x_shape=(2,))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")

    class Waited(Exception):
        pass

    def check():
        raise Waited  # get() found no buffer it may reuse and waits for the writer

    try:
        plan = Plan(n_rows=30, alpha=0.2, seed=0, block_rows=8)
        cache = BlockCache(source, plan, check=check)
        cache.get(0, 1)
        cache.get(1, 0)
        cache.pin(cache.slot_of(0))  # block 0's rows are still being written
        with pytest.raises(Waited):
            cache.get(2, 1)  # block 1 is kept, block 0 pinned: nothing free
        cache.unpin(cache.slot_of(0))
        got = cache.get(2, 1)  # now block 0's buffer is taken
        assert np.array_equal(got["x"], x[16:24]) and cache.slot_of(2) == 0 and 0 not in cache._held
        assert np.array_equal(cache.get(1, 2)["x"], x[8:16])
    finally:
        source.reader.close()


def test_npy_dir_input_goes_through_the_generic_read_into(tmp_path):
    x, y = make_arrays(n=23, x_shape=(3,))
    src = write_npy_dir(tmp_path / "in", x=x, y=y)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=2, batch_size=4, block_rows=8))
    got = load_output(out)
    assert np.array_equal(got["x"], expected_mix(x, got["lam"], got["partner"]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8, np.int16])
def test_mix_gather_equals_mix_rows_of_the_gathered_rows(dtype):
    rng = np.random.default_rng(3)
    pool = (rng.random((50, 5, 7)) * 100).astype(dtype)
    a = (rng.random((31, 5, 7)) * 100).astype(dtype)
    index = rng.integers(0, 50, 31)
    lam = rng.beta(0.3, 0.3, 31)
    assert np.array_equal(mix_gather(a, pool, index, lam), mix_rows(a, pool[index], lam))


def test_mix_gather_with_rows_larger_than_a_cache_slice():
    rng = np.random.default_rng(4)
    x = rng.random((5, 400, 400)).astype(np.float32)
    index, lam = rng.permutation(5), rng.random(5)
    l = lam.astype(np.float32)[:, None, None]
    assert np.array_equal(mix_gather(x, x, index, lam), l * x + (1 - l) * x[index])


def test_mix_gather_refuses_out_of_range_partners():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(IndexError):
        mix_gather(x, x, np.array([0, 1, 2, 4]), np.ones(4))
    with pytest.raises(IndexError):
        mix_gather(x, x, np.array([0, -1, 2, 3]), np.ones(4))


def test_in_memory_mixup_matches_the_formula():
    x, y = make_arrays(n=64, x_shape=(3, 8, 8))
    xm, ym, lam, partner = mixup(x, y, 0.4, rng=1)
    assert np.array_equal(xm, expected_mix(x, lam, partner))
    assert np.array_equal(ym, expected_mix(y, lam, partner))


def test_direct_chunk_writes_handle_unaligned_and_edge_rows(tmp_path):
    x = np.random.default_rng(0).random((45, 3)).astype(np.float32)
    for comp in ("none", "gzip", "lzf"):
        path = tmp_path / f"{comp}.h5"
        w = hdf5.Writer(
            path, {"x": ArraySpec(x.shape, x.dtype)}, WriteOptions(compression=comp, chunk_bytes=8 * 12, block_rows=16)
        )
        for start, stop in [(0, 3), (3, 19), (19, 40), (40, 45)]:
            w.write("x", start, x[start:stop])
        w.close()
        with h5py.File(path, "r") as f:
            assert f["x"].chunks == (8, 3)
            assert np.array_equal(f["x"][()], x), comp


@pytest.mark.parametrize(
    "layout",
    [
        dict(chunks=(7, 3, 2)),
        dict(chunks=None),
        dict(chunks=(4, 3, 1)),
        dict(chunks=(7, 3, 2), compression="gzip"),
        dict(chunks=(7, 3, 2), dtype=">f4"),
        dict(chunks=(5, 3, 2), dtype="u1"),
        dict(chunks=(7, 3, 2), partial=True),
    ],
)
def test_raw_reads_equal_hdf5_reads_or_fall_back(tmp_path, layout):
    layout = dict(layout)
    dtype = np.dtype(layout.pop("dtype", "<f4"))
    partial = layout.pop("partial", False)
    x = (np.random.default_rng(0).random((50, 3, 2)) * 200).astype(dtype)
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=x.shape, dtype=dtype, fillvalue=7, **layout)
        if partial:  # chunks 2 and 3 never written: HDF5 returns the fill value
            ds[:14] = x[:14]
            ds[28:] = x[28:]
        else:
            ds[...] = x
    with h5py.File(path, "r") as f:
        expected = f["x"][()]
    reader = hdf5.Reader(path)
    try:
        for start, stop in [(0, 50), (0, 7), (3, 4), (6, 22), (13, 29), (44, 50), (49, 50)]:
            out = np.full((60, 3, 2), 99, dtype=x.dtype)
            reader.read_into("x", start, stop, out)
            assert np.array_equal(out[: stop - start], expected[start:stop]), (start, stop)
            assert (out[stop - start :] == 99).all()
    finally:
        reader.close()


# Partner rows by index: Reader.take against numpy's fancy indexing.
TAKE_LAYOUTS = {
    "chunked": dict(chunks=(16, 8)),
    "chunked gzip": dict(chunks=(16, 8), compression="gzip"),
    "contiguous": dict(chunks=None),
    "chunks of part rows": dict(chunks=(16, 4)),
    "chunks never written": dict(chunks=(16, 8), written=()),
    "chunks partly written": dict(chunks=(16, 8), written=(slice(0, 20), slice(64, 100))),
    "contiguous never written": dict(chunks=None, written=()),
    "big-endian chunked": dict(chunks=(16, 8), dtype=">f4"),
    "big-endian contiguous": dict(chunks=None, dtype=">f4"),
    "uint8, 7-row chunks": dict(chunks=(7, 8), dtype="u1"),
}
TAKE_ROWS = [
    [],
    [0],
    [99],
    [0, 99],
    [99, 0],
    [5, 5, 5],
    [99, 0, 50, 50, 3, 16, 15],
    [15, 16],
    list(range(16, 32)),
    list(range(100)),
    list(range(99, -1, -1)),
    list(range(0, 100, 3)),
    [17, 40, 41, 42, 60, 95, 96],
]


@pytest.fixture(scope="module")
def take_files(tmp_path_factory):
    """One HDF5 file per layout of a (100, 8) array; with what h5py reads of it."""
    folder = tmp_path_factory.mktemp("take")
    x = np.random.default_rng(3).random((100, 8)) * 200
    files = {}
    for i, (name, layout) in enumerate(TAKE_LAYOUTS.items()):
        layout = dict(layout)
        dtype = np.dtype(layout.pop("dtype", "<f4"))
        written = layout.pop("written", (slice(None),))
        path = folder / f"{i}.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", shape=x.shape, dtype=dtype, fillvalue=7, **layout)
            for rows in written:
                ds[rows] = x[rows].astype(dtype)
        with h5py.File(path, "r") as f:
            files[name] = (path, f["x"][()])
    return files


def _check_take(reader, expected, rows):
    rows = np.asarray(rows, dtype=np.int64)
    got = reader.take("x", rows)
    assert got.dtype == expected.dtype and got.shape == (len(rows),) + expected.shape[1:]
    assert np.array_equal(got, expected[rows]), rows


@pytest.mark.parametrize("layout", TAKE_LAYOUTS)
def test_take_equals_fancy_indexing(take_files, layout):
    path, expected = take_files[layout]
    row_bytes = expected[0].nbytes
    for gap in (0, 3 * row_bytes, hdf5.TAKE_GAP_BYTES):
        for window in (5 * row_bytes, hdf5.TAKE_WINDOW_BYTES):
            with (
                mock.patch.object(hdf5, "TAKE_GAP_BYTES", gap),
                mock.patch.object(hdf5, "TAKE_WINDOW_BYTES", window),
                hdf5.Reader(path) as reader,
            ):
                for rows in TAKE_ROWS:
                    _check_take(reader, expected, rows)
                    _check_take(reader, expected, np.unique(rows))  # sorted and unique: read as they are


@settings(max_examples=examples(60), deadline=None)
@given(
    layout=st.sampled_from(sorted(TAKE_LAYOUTS)),
    rows=st.lists(st.integers(0, 99), max_size=160),
    gap_rows=st.sampled_from([0, 1, 4, 2048]),
    window_rows=st.sampled_from([1, 6, 32768]),
)
def test_hypothesis_take_equals_fancy_indexing(take_files, layout, rows, gap_rows, window_rows):
    path, expected = take_files[layout]
    row_bytes = expected[0].nbytes
    with (
        mock.patch.object(hdf5, "TAKE_GAP_BYTES", gap_rows * row_bytes),
        mock.patch.object(hdf5, "TAKE_WINDOW_BYTES", window_rows * row_bytes),
        hdf5.Reader(path) as reader,
    ):
        _check_take(reader, expected, rows)
        _check_take(reader, expected, np.unique(rows))


def test_take_reads_a_compressed_chunk_once(take_files, monkeypatch):
    """Rows by index from gzip chunks: one HDF5 read per chunk holding some
    of them (from its first wanted row to its last), never one per row."""
    path, expected = take_files["chunked gzip"]
    reads = []
    real = h5py.Dataset.read_direct

    def recording(self, dest, source_sel=None, dest_sel=None):
        reads.append((source_sel.start, source_sel.stop) if isinstance(source_sel, slice) else source_sel)
        return real(self, dest, source_sel, dest_sel)

    monkeypatch.setattr(h5py.Dataset, "read_direct", recording)
    rows = np.array([1, 3, 14, 15, 16, 40, 41, 47, 99, 3])
    with hdf5.Reader(path) as reader:
        _check_take(reader, expected, rows)
    assert reads == [(1, 16), (16, 17), (40, 48), (99, 100)]


@pytest.mark.parametrize("fmt", ["npz", "npz deflated", "npy"])
def test_take_of_memory_mapped_formats_equals_fancy_indexing(tmp_path, fmt):
    from mixup_cli.io import open_reader

    x = np.random.default_rng(4).random((50, 3, 2)).astype(np.float32)
    if fmt == "npy":
        path = write_npy_dir(tmp_path / "in", x=x)
    else:
        path = write_npz(tmp_path / "in.npz", compressed=fmt == "npz deflated", x=x)
    with open_reader(path) as reader:
        for rows in [[], [0], [49, 0, 7, 7, 30], list(range(49, -1, -2))]:
            _check_take(reader, x, rows)


def _seed_where_copy_starts_with_the_last_block():
    """A seed whose first copy starts its cycle (plan version 1's global
    pairing, still computed to verify its outputs) with the block the
    original rows end with: that block is still in memory, queued for writing."""
    for seed in range(1000):
        plan = Plan(n_rows=37, alpha=0.3, seed=seed, block_rows=5, copies=2, include_original=True, version=1)
        if plan.block_order(0)[0] == plan.n_blocks - 1:
            return seed
    raise AssertionError("no such seed")


SLOW_PLANS = PLANS + [
    dict(
        pairing="global",
        copies=2,
        include_original=True,
        block_rows=5,
        seed=_seed_where_copy_starts_with_the_last_block(),
        version=1,
    )
]


@pytest.mark.slow
@pytest.mark.parametrize("params", SLOW_PLANS)
def test_slow_writer_never_sees_rows_change_under_it(tmp_path, params, monkeypatch):
    """Mixing in place reuses input buffers the writer thread reads: with a
    slow writer the reader must wait for it, never overwrite rows in flight."""
    import time

    x, y = make_arrays(n=37, x_shape=(3, 2), seed=6)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    source = open_source(src, "x", "y")
    real_write = hdf5.Writer.write

    def slow_write(self, key, start, data):
        snapshot = np.array(data, copy=True)
        time.sleep(0.002)
        assert np.array_equal(np.asarray(data), snapshot, equal_nan=True), "rows changed while being written"
        return real_write(self, key, start, data)

    try:
        plan = Plan(n_rows=37, alpha=0.3, **dict(dict(seed=9), **params))
        results = []
        for threaded in (False, True):
            if threaded:
                monkeypatch.setattr(hdf5.Writer, "write", slow_write)
            path = tmp_path / f"out-{threaded}.h5"
            writer = hdf5.Writer(path, planner.output_specs(source, plan), WriteOptions(block_rows=plan.block_rows))
            local.run(source, plan, writer, plan.tasks(), Progress(), batch_rows=3, threaded=threaded)
            writer.close()
            results.append(h5_arrays(path))
    finally:
        source.reader.close()
    params = dict(dict(seed=9), **params)
    want = reference_output(x, y, alpha=0.3, **params)
    for got in results:
        for key in want:
            assert got[key].tobytes() == want[key].tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize("params", [p for p in SLOW_PLANS if "version" not in p])  # augment computes the current
def test_slow_hashing_never_sees_rows_change_under_it(tmp_path, params, monkeypatch):
    """A batch is released (its buffer reused) only once both the writer and
    the hashing thread are done with it: the digests are those of the rows written."""
    import time

    from mixup_cli.record import digests

    x, y = make_arrays(n=37, x_shape=(3, 2), seed=6)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    request = dict(dict(seed=9), **params, batch_size=3)
    fast = augment(AugmentRequest(src, tmp_path / "fast.h5", **request))
    real_update = digests.BlockHasher.update

    def slow_update(self, start, arrays):
        snapshot = {key: np.array(a, copy=True) for key, a in arrays.items()}
        time.sleep(0.002)
        for key, a in arrays.items():
            assert np.array_equal(np.asarray(a), snapshot[key], equal_nan=True), "rows changed while being hashed"
        return real_update(self, start, arrays)

    monkeypatch.setattr(digests.BlockHasher, "update", slow_update)
    slow = augment(AugmentRequest(src, tmp_path / "slow.h5", **request))
    assert slow.record["output"]["arrays"] == fast.record["output"]["arrays"]


@pytest.mark.parametrize(
    "layout",
    [
        dict(chunks=(7, 3, 2), compression="gzip"),  # last chunk partial
        dict(chunks=(16, 3, 2), compression="gzip", compression_opts=9),
        dict(chunks=(7, 3, 2), compression="gzip", shuffle=True),
        dict(chunks=(7, 3, 2), compression="gzip", fletcher32=True),
        dict(chunks=(7, 3, 1), compression="gzip"),  # chunks split rows
        dict(chunks=(7, 3, 2), compression="lzf"),
        dict(chunks=(50, 3, 2), compression="gzip", shuffle=True),  # one chunk
    ],
)
@settings(max_examples=examples(25), deadline=None)
@given(start=st.integers(0, 50), length=st.integers(0, 50))
def test_compressed_chunks_read_equal_hdf5_reads(tmp_path_factory, layout, start, length):
    stop = min(50, start + length)
    path = tmp_path_factory.mktemp("gz") / "in.h5"
    x = (np.random.default_rng(1).random((50, 3, 2)) * 200).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, **layout)
    reader = hdf5.Reader(path)
    try:
        out = np.full((max(1, stop - start), 3, 2), -1, np.float32)
        reader.read_into("x", start, stop, out)
        assert np.array_equal(out[: stop - start], x[start:stop])
    finally:
        reader.close()


def test_gzip_chunks_stored_raw_or_never_written_read_as_hdf5_reads_them(tmp_path):
    x = np.arange(40 * 4, dtype=np.int16).reshape(40, 4)
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(8, 4), compression="gzip", fillvalue=-5)
        ds[:16] = x[:16]
        ds.id.write_direct_chunk((16, 0), x[16:24].tobytes(), filter_mask=1)  # stored without its deflate
        ds[32:] = x[32:]  # rows 24:32 never written
    reader = hdf5.Reader(path)
    try:
        out = np.empty((24, 4), np.int16)
        reader.read_into("x", 0, 24, out)
        assert np.array_equal(out, x[:24])
        out = np.empty((40, 4), np.int16)
        reader.read_into("x", 0, 40, out)  # meets the unwritten chunk: its fill value
        assert np.array_equal(out[24:32], np.full((8, 4), -5)) and np.array_equal(out[32:], x[32:])
    finally:
        reader.close()


def test_a_damaged_gzip_chunk_is_named(tmp_path, run_cli):
    x, y = make_arrays(n=100, x_shape=(8,))
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 8), compression="gzip")
        f.create_dataset("y", data=y, chunks=(16,) + y.shape[1:], compression="gzip")
        info = f["x"].id.get_chunk_info(2)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    result = run_cli("augment", path, tmp_path / "out.h5", "--seed", 1)
    assert result.exit_code == 1
    assert "in.h5: the compressed chunk of 'x' rows 32:48 is damaged" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_shuffled_chunks_stored_with_some_filters_skipped(tmp_path):
    x = np.arange(24 * 3, dtype=np.float64).reshape(24, 3) * 1.5
    shuffled = np.frombuffer(x[8:16].tobytes(), np.uint8).reshape(-1, 8).T.tobytes()
    path = tmp_path / "in.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(8, 3), compression="gzip", shuffle=True)
        ds[:8] = x[:8]  # shuffled, then deflated
        ds.id.write_direct_chunk((8, 0), shuffled, filter_mask=2)  # shuffled, not deflated
        ds.id.write_direct_chunk((16, 0), x[16:].tobytes(), filter_mask=3)  # neither
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["x"][()], x)  # what HDF5 itself reads
    reader = hdf5.Reader(path)
    try:
        out = np.empty_like(x)
        reader.read_into("x", 0, 24, out)
        assert np.array_equal(out, x)
    finally:
        reader.close()


class _RowsWriter:
    """A writer that keeps each batch it is handed (a copy: buffers are reused)."""

    def __init__(self, events, k):
        self.rows, self.events, self.k = {}, events, k

    def write(self, key, at, arr):
        self.rows.setdefault(key, {})[at] = np.array(arr, copy=True)

    def files(self):
        return []

    def written(self, key):
        return sum(len(a) for a in self.rows.get(key, {}).values())


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("params", PLANS[:3])
def test_one_pass_over_several_outputs_routes_each_task_and_finishes_each_in_turn(tmp_path, params, threaded):
    """``run_outputs``: each output's tasks go to its own writer, exactly the
    rows one run writes; an output is opened only once the one before it is
    finished, and finished only once all its rows are written; tasks its
    journal had done (``skip``), even the first one, whose partners were read
    ahead, are not written again."""
    x, y = make_arrays(n=37, x_shape=(3, 2), seed=4)
    source = open_source(write_h5(tmp_path / "in.h5", x=x, y=y), "x", "y")
    try:
        plan = Plan(n_rows=37, alpha=0.3, seed=9, **params)
        tasks = list(plan.tasks())
        whole = _RowsWriter([], -1)
        local.run(source, plan, whole, tasks, Progress(), batch_rows=3, threaded=threaded)
        cuts = [0, len(tasks) // 3, 2 * len(tasks) // 3, len(tasks)]
        parts = [tasks[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        skips = [frozenset(), frozenset({0}), frozenset({len(parts[2]) - 1})]
        events, writers = [], [_RowsWriter(None, k) for k in range(3)]

        def opener(k):
            events.append(("open", k))
            return local.Sink(writers[k], skips[k], on_done=lambda i, k=k: events.append(("done", k, i)))

        def finished(k, info):
            want = sum(t.stop - t.start for i, t in enumerate(parts[k]) if i not in skips[k])
            assert writers[k].written("x") == want  # every row written before it is finished
            events.append(("finished", k))

        outputs = [(part, lambda k=k: opener(k)) for k, part in enumerate(parts)]
        info = local.run_outputs(source, plan, outputs, Progress(), finished=finished, batch_rows=3, threaded=threaded)
    finally:
        source.reader.close()
    assert info["engine"] == "local"
    assert [e for e in events if e[0] != "done"] == [(s, k) for k in range(3) for s in ("open", "finished")]
    for k in range(3):  # journal callbacks: each task not skipped, once, before its output is finished
        done = [e[2] for e in events if e[0] == "done" and e[1] == k]
        assert done == [i for i in range(len(parts[k])) if i not in skips[k]]
        # (an output whose tasks were all done is finished all the same)
        assert all(events.index(("finished", k)) > events.index(("done", k, i)) for i in done)
    for key in ("x", "y", "lam", "partner"):
        got = {}
        for writer in writers:
            for at, arr in writer.rows.get(key, {}).items():
                assert at not in got
                got[at] = arr
        skipped = {t.out_start for k in range(3) for i, t in enumerate(parts[k]) if i in skips[k]}
        want = dict(whole.rows[key])
        # batches of skipped tasks are missing; every other batch is the single run's, byte for byte
        for at, arr in want.items():
            task = next(t for t in tasks if t.out_start <= at < t.out_start + t.stop - t.start)
            if task.out_start in skipped:
                assert at not in got
            else:
                assert got[at].tobytes() == arr.tobytes(), (key, at)
        assert set(got) <= set(want)
