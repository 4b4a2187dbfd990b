"""Storage layout of outputs: --chunk-rows, the compressed default chunking,
the byte-shuffle filter written chunk by chunk, and --zarr-format 2.

Outputs are read back with h5py, the HDF5 command-line tools, or (Zarr v2)
the store's JSON metadata and chunk files with numpy, never through
mixup_cli's readers; the layout must never change the arrays."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import KILLER, REPO, examples, load_output, read_sidecar, run_in_process, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.io import hdf5
from mixup_cli.io.base import ArraySpec, WriteOptions

ARGS = ("--seed", "3", "--quiet")


def _digests(out) -> dict:
    return {k: a["sha256"] for k, a in read_sidecar(out)["output"]["arrays"].items()}


@pytest.fixture
def images(tmp_path):
    x = (np.arange(400 * 3 * 8 * 8) % 251 / 255).astype(np.float32).reshape(400, 3, 8, 8)
    y = np.arange(400) % 7
    return write_h5(tmp_path / "in.h5", x=x, y=y)


@pytest.mark.slow
def test_gzip_default_is_small_shuffled_chunks_with_the_same_arrays(images, tmp_path, run_mixup):
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    assert run_in_process("augment", images, plain, *ARGS).returncode == 0
    done = run_mixup("augment", images, packed, *ARGS, "--compression", "gzip")
    assert done.returncode == 0, done.stderr
    with h5py.File(packed, "r") as f:
        x = f["x"]
        assert x.compression == "gzip" and x.shuffle
        chunk_bytes = x.chunks[0] * 3 * 8 * 8 * 4
        assert 16 << 10 <= chunk_bytes <= hdf5.COMPRESSED_CHUNK_BYTES["gzip"]  # 768-byte rows: 64 rows, 48 KiB
        assert all(f[k].shuffle for k in f)
    with h5py.File(plain, "r") as f:
        assert not f["x"].shuffle and f["x"].chunks[0] == 256  # uncompressed: about 1 MiB, at most the rows
    want, got = load_output(plain), load_output(packed)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    assert _digests(packed) == _digests(plain)


@pytest.mark.skipif(shutil.which("h5diff") is None, reason="needs hdf5-tools (h5diff, h5dump)")
def test_hdf5_tools_decode_the_shuffled_chunks(images, tmp_path, run_mixup):
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    assert run_in_process("augment", images, plain, *ARGS).returncode == 0
    assert run_mixup("augment", images, packed, *ARGS, "--compression", "gzip", "--chunk-rows", 16).returncode == 0
    for key in ("x", "y", "lam", "partner"):
        diff = subprocess.run(["h5diff", str(plain), str(packed), key, key], capture_output=True, text=True)
        assert diff.returncode == 0, (key, diff.stdout, diff.stderr)
    dump = subprocess.run(["h5dump", "-p", "-d", "lam", str(packed)], capture_output=True, text=True)
    assert dump.returncode == 0 and "SHUFFLE" in dump.stdout and "DEFLATE" in dump.stdout
    with h5py.File(plain, "r") as f:
        lam = f["lam"][()]
    # h5dump's own decoding of the values (not just h5diff's verdict).
    dump = subprocess.run(
        ["h5dump", "-m", "%.17g", "-w", "1", "-d", "lam", str(packed)], capture_output=True, text=True
    )
    values = [float(v.split(":")[-1].strip(" ,")) for v in dump.stdout.splitlines() if v.strip().startswith("(")]
    assert len(values) == len(lam) and np.array_equal(np.array(values, lam.dtype), lam)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64", "uint8", "int16"])
def test_shuffled_gzip_chunks_match_hdf5s_own_filter(tmp_path, dtype):
    """Chunks written whole (shuffled and deflated here) hold what HDF5's pipeline holds."""
    rng = np.random.default_rng(1)
    data = (rng.random((96, 5)) * 200).astype(dtype)
    spec = ArraySpec(data.shape, data.dtype)
    path = tmp_path / "ours.h5"
    writer = hdf5.Writer(path, {"a": spec}, WriteOptions(compression="gzip", block_rows=32, chunk_rows=8))
    writer.write("a", 0, data[:40])  # whole chunks and an edge through HDF5
    writer.write("a", 40, data[40:])
    writer.close()
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f.create_dataset("a", data=data, chunks=(8, 5), compression="gzip", compression_opts=4, shuffle=True)
    with h5py.File(path, "r") as ours, h5py.File(tmp_path / "ref.h5", "r") as ref:
        assert ours["a"].shuffle and np.array_equal(ours["a"][()], data)
        for c in range(0, 96, 8):
            mine, theirs = ours["a"].id.read_direct_chunk((c, 0)), ref["a"].id.read_direct_chunk((c, 0))
            # Same filter mask, and the same bytes once inflated (deflate streams may differ).
            assert mine[0] == theirs[0] == 0
            assert zlib.decompress(mine[1]) == zlib.decompress(theirs[1]), c


@settings(max_examples=examples(25), deadline=None)
@given(
    rows=st.integers(1, 70),
    chunk=st.sampled_from([1, 2, 4, 8]),
    width=st.integers(1, 4),
    dtype=st.sampled_from(["f2", "f4", "f8", "i1", "u4", "i8"]),
    shuffle=st.sampled_from([None, True, False]),
    cut=st.integers(0, 70),
)
def test_gzip_output_reads_back_through_h5py(tmp_path_factory, rows, chunk, width, dtype, shuffle, cut):
    rng = np.random.default_rng(rows * 7 + chunk)
    data = (rng.random((rows, width)) * 100).astype(dtype)
    path = tmp_path_factory.mktemp("w") / "o.h5"
    options = WriteOptions(compression="gzip", block_rows=8, chunk_rows=chunk, shuffle=shuffle)
    writer = hdf5.Writer(path, {"a": ArraySpec(data.shape, data.dtype)}, options)
    cut = min(cut, rows)
    writer.write("a", 0, data[:cut])
    writer.write("a", cut, data[cut:])
    writer.close()
    with h5py.File(path, "r") as f:
        assert f["a"].shuffle == (shuffle is not False)
        assert f["a"].chunks[0] == min(chunk, rows) or rows < chunk
        assert np.array_equal(f["a"][()], data)


@pytest.mark.slow
def test_chunk_rows_sets_hdf5_and_zarr_chunks(images, tmp_path, run_mixup):
    out = tmp_path / "c.h5"
    done = run_mixup("augment", images, out, *ARGS, "--chunk-rows", 8, "--block-rows", 64)
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as f:
        assert {f[k].chunks[0] for k in f} == {8}
    plain = tmp_path / "plain.h5"
    assert run_in_process("augment", images, plain, *ARGS, "--block-rows", 64).returncode == 0
    assert _digests(out) == _digests(plain)
    if pytest.importorskip("zarr", reason="Zarr is an optional extra"):
        store = tmp_path / "c.zarr"
        assert run_mixup("augment", images, store, *ARGS, "--chunk-rows", 16, "--block-rows", 64).returncode == 0
        meta = json.loads((store / "x" / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [16, 3, 8, 8]
        assert _digests(store) == _digests(plain)


@pytest.mark.slow
def test_chunk_rows_alone_chooses_block_rows_it_divides(tmp_path, run_mixup):
    """--chunk-rows without --block-rows: the block rows are the largest multiple
    of it not above their default (rows of 128 KiB: 128 rows a block; 10 rows a
    chunk: 120), the output verifies, and is the run with --block-rows 120."""
    rng = np.random.default_rng(0)
    x = rng.random((130, 32766), dtype=np.float32)  # with float64 y: 128 KiB a row; two blocks
    src = write_h5(tmp_path / "in.h5", x=x, y=rng.random(130))
    outs = [tmp_path / "c.h5"]
    if importlib.util.find_spec("zarr") is not None:  # Zarr is an optional extra
        outs.append(tmp_path / "c.zarr")
    for out in outs:
        done = run_mixup("augment", src, out, *ARGS, "--chunk-rows", 10)
        assert done.returncode == 0, done.stderr
        assert read_sidecar(out)["parameters"]["block_rows"] == 120
        checked = run_in_process("verify", out)
        assert checked.returncode == 0 and checked.stdout.strip().endswith("OK"), checked.stdout
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert {f[k].chunks[0] for k in f} == {10}
    both = tmp_path / "both.h5"
    assert run_in_process("augment", src, both, *ARGS, "--chunk-rows", 10, "--block-rows", 120).returncode == 0
    assert _digests(tmp_path / "c.h5") == _digests(both)
    # A chunk above the default block rows: one chunk a block.
    assert run_in_process("augment", src, tmp_path / "big.h5", *ARGS, "--chunk-rows", 200).returncode == 0
    assert read_sidecar(tmp_path / "big.h5")["parameters"]["block_rows"] == 200


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, words",
    [
        (("--chunk-rows", 7, "--block-rows", 64), ["--chunk-rows 7 does not divide the block rows (64)", "8"]),
        (("--chunk-rows", 0), ["--chunk-rows"]),
    ],
)
def test_chunk_rows_that_cannot_be_honoured_is_a_usage_error(images, tmp_path, run_mixup, args, words):
    out = tmp_path / "c.h5"
    done = run_mixup("augment", images, out, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "out_name, args, word",
    [
        ("o.npz", ("--chunk-rows", 8), "--chunk-rows applies to HDF5 and Zarr"),
        ("o.h5", ("--zarr-format", "2"), "--zarr-format applies to Zarr"),
        ("o.npz", ("--byte-shuffle",), "--byte-shuffle applies to HDF5"),
        ("o.h5", ("--byte-shuffle",), "--byte-shuffle only helps compression"),
    ],
)
def test_layout_options_for_another_format_are_refused(images, tmp_path, run_mixup, out_name, args, word):
    done = run_mixup("augment", images, tmp_path / out_name, *args)
    assert done.returncode == 2 and word in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _read_v2(store: Path, key: str) -> np.ndarray:
    """A Zarr v2 array from its .zarray and chunk files, as zarr-python 2 reads it."""
    meta = json.loads((store / key / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["order"] == "C" and meta["filters"] is None
    dtype, shape, chunks = np.dtype(meta["dtype"]), meta["shape"], meta["chunks"]
    sep = meta.get("dimension_separator", ".")
    out = np.full(shape, meta["fill_value"] or 0, dtype=dtype)
    for c in range(0, shape[0], chunks[0]):
        name = sep.join([str(c // chunks[0])] + ["0"] * (len(shape) - 1))
        raw = (store / key / name).read_bytes()
        if meta["compressor"] is not None:
            assert meta["compressor"]["id"] == "gzip"
            raw = gzip.decompress(raw)
        block = np.frombuffer(raw, dtype).reshape([chunks[0]] + shape[1:])
        out[c : c + chunks[0]] = block[: shape[0] - c]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_zarr_format_2_is_plain_v2_metadata_and_chunks(images, tmp_path, run_mixup, compression):
    zarr = pytest.importorskip("zarr", reason="Zarr is an optional extra")
    store, plain = tmp_path / "o.zarr", tmp_path / "plain.h5"
    done = run_mixup(
        "augment",
        images,
        store,
        *ARGS,
        "--zarr-format",
        "2",
        "--compression",
        compression,
        "--chunk-rows",
        32,
        "--block-rows",
        128,
    )
    assert done.returncode == 0, done.stderr
    assert run_in_process("augment", images, plain, *ARGS, "--block-rows", 128).returncode == 0
    assert not (store / "zarr.json").exists()
    assert json.loads((store / ".zgroup").read_text()) == {"zarr_format": 2}
    attrs = json.loads((store / ".zattrs").read_text())
    assert "run_id" in attrs and "mixup_cli_version" in attrs
    want = load_output(plain)
    assert sorted(p.name for p in store.iterdir() if p.is_dir()) == sorted(want)
    for key in want:
        assert json.loads((store / key / ".zarray").read_text())["chunks"][0] == 32
        assert _read_v2(store, key).tobytes() == want[key].tobytes(), key
        # zarr-python 3 reads it as v2 too.
        arr = zarr.open_group(str(store), mode="r", zarr_format=2)[key]
        assert np.asarray(arr[:]).tobytes() == want[key].tobytes()
    assert _digests(store) == _digests(plain)


_KILLED = (
    KILLER
    + """
import sys
from mixup_cli.commands import pipeline; from mixup_cli.run import resume
resume.SAVE_INTERVAL = 0
src, out, fmt = sys.argv[1], sys.argv[2], sys.argv[3]

extra = dict(zarr_format=2) if fmt == "zarr2" else {}
request = pipeline.AugmentRequest(src, out, seed=5, block_rows=64, copies=2, batch_size=32, compression="gzip",
                                  chunk_rows=16, **extra)
pipeline.augment(request, progress=Killer(out, 250))
raise SystemExit("not killed")
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zarr2", "h5"])
def test_resume_keeps_the_layout(images, tmp_path, run_mixup, fmt):
    """A killed gzip run (Zarr v2, or shuffled HDF5) resumed: same arrays, same layout."""
    if fmt == "zarr2":
        pytest.importorskip("zarr", reason="Zarr is an optional extra")
    out = tmp_path / ("o.zarr" if fmt == "zarr2" else "o.h5")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED, str(images), str(out), fmt],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    args = ("--seed", 5, "--block-rows", 64, "--copies", 2, "--compression", "gzip", "--chunk-rows", 16)
    args += ("--zarr-format", "2") if fmt == "zarr2" else ()
    mismatch = run_mixup("augment", images, out, *args[:-2] if fmt == "h5" else args[:-4], "--resume")
    assert mismatch.returncode != 0 and "--chunk-rows" in mismatch.stderr  # the layout is part of the run
    resumed = run_mixup("augment", images, out, *args, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] > 0
    ref = tmp_path / "ref.h5"
    assert (
        run_in_process("augment", images, ref, "--seed", 5, "--block-rows", 64, "--copies", 2, "--quiet").returncode
        == 0
    )
    want = load_output(ref)
    for key in want:
        if fmt == "zarr2":
            assert json.loads((out / key / ".zarray").read_text())["chunks"][0] == 16
            got = _read_v2(out, key)
        else:
            with h5py.File(out, "r") as f:
                assert f[key].shuffle and f[key].chunks[0] == 16
                got = f[key][()]
        assert got.tobytes() == want[key].tobytes(), key
    assert _digests(out) == _digests(ref)
