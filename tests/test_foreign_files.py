"""Files written by other software (PyTables, netCDF4, anndata) and legal but
unusual HDF5 layouts and types (h5py's low-level API): each gives the right
output, checked row by row against the input as h5py reads it, and passes
``mixup verify``, or a one-line refusal naming the file and array, exit 1,
with nothing left in the output folder."""

from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np
import pytest
from conftest import assert_nothing_written

from mixup_cli.io import hdf5
from mixup_cli.run import gather

N, D = 41, 6


def _data(dtype=np.float32, n=N, d=D, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal((n, d)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -2000), min(info.max, 2000), (n, d)).astype(dtype)


def _labels(n=N, k=3, seed=1):
    rng = np.random.default_rng(seed)
    return np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]


def _check_rows(out, x, lam, partner):
    """x_out[i] against the README's rule, computed here from h5py's x."""
    assert out.shape == x.shape
    if x.dtype.kind == "f":
        native = x.astype(x.dtype.newbyteorder("="))
        l = lam.astype(native.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        expected = l * native + (1 - l) * native[partner]
        np.testing.assert_array_equal(out, expected)
        return 0.0
    l = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    exact = l * x.astype(np.float64) + (1 - l) * x[partner].astype(np.float64)
    info = np.iinfo(x.dtype)
    expected = np.clip(np.round(exact), info.min, info.max)
    err = float(np.abs(out.astype(np.float64) - expected).max())
    assert err <= 1, err
    return err


def check_accepted(run_cli, src, outdir, x_key="x", y_key="y", x=None, y=None, name="out.h5"):
    """Mix ``src``, compare every row with the formula on arrays h5py read
    (``x``/``y`` given, or read here by h5py), then ``mixup verify``."""
    out = outdir / name
    if x is None:
        with h5py.File(src, "r") as f:
            x = f[x_key][()]
            y = f[y_key][()] if y_key else None
    args = ["augment", src, out, "--seed", 5, "--alpha", 0.4, "--quiet", "--x-key", x_key]
    args += ["--y-key", y_key] if y_key else ["--no-y"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        lam, partner = f["lam"][()], f["partner"][()]
        x_out = f[x_key][()]
        y_out = f[y_key][()] if y_key else None
    assert partner.min() >= 0 and partner.max() < len(x)  # global pairing: rows of the dataset
    err = _check_rows(x_out, x, lam, partner)
    if y_key:
        _check_rows(y_out, y, lam, partner)
    verified = run_cli("verify", out)
    assert verified.exit_code == 0, verified.stdout
    assert verified.stdout.splitlines()[-1] == "OK"
    return out, err


def check_refused(run_cli, src, outdir, key, *words, x_key="x", y_key=None):
    args = ["augment", src, outdir / "out.h5", "--seed", 5, "--quiet", "--x-key", x_key]
    args += ["--y-key", y_key] if y_key else ["--no-y"]
    result = run_cli(*args)
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(src) in lines[0] and f"'{key}'" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.stderr
    assert_nothing_written(outdir)
    return lines[0]


# --- other software ---------------------------------------------------------


def _tables():
    warnings.filterwarnings("ignore", module="tables")
    return pytest.importorskip("tables")


@pytest.mark.parametrize("kind", ["array", "carray-zlib", "earray-zlib-shuffle"])
def test_pytables_arrays(run_cli, tmp_path, outdir, kind):
    tables = _tables()
    x, y = _data(), _labels()
    src = tmp_path / "pytables.h5"
    with tables.open_file(src, "w") as f:
        if kind == "array":
            f.create_array("/", "x", obj=x)
            f.create_array("/", "y", obj=y)
        elif kind == "carray-zlib":
            filters = tables.Filters(complevel=4, complib="zlib", shuffle=False)
            f.create_carray("/", "x", obj=x, filters=filters, chunkshape=(5, D))
            f.create_carray("/", "y", obj=y, filters=filters)
        else:
            filters = tables.Filters(complevel=4, complib="zlib", shuffle=True)
            ex = f.create_earray("/", "x", atom=tables.Float32Atom(), shape=(0, D), filters=filters, chunkshape=(3, D))
            ey = f.create_earray("/", "y", atom=tables.Float32Atom(), shape=(0, 3), filters=filters)
            for i in range(0, N, 7):  # appended in pieces, as a logger would
                ex.append(x[i : i + 7])
                ey.append(y[i : i + 7])
    check_accepted(run_cli, src, outdir)


def test_pytables_blosc_is_refused_naming_the_filter(run_mixup, tmp_path, outdir, monkeypatch):
    tables = _tables()
    src = tmp_path / "blosc.h5"
    with tables.open_file(src, "w") as f:
        f.create_carray("/", "x", obj=_data(), filters=tables.Filters(complevel=5, complib="blosc"))
    # No plugins where HDF5 looks (netCDF4, imported by another test, points it at its own).
    (tmp_path / "no-plugins").mkdir()
    monkeypatch.setenv("HDF5_PLUGIN_PATH", str(tmp_path / "no-plugins"))
    result = run_mixup("augment", src, outdir / "out.h5", "--no-y")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {src}: array 'x' is compressed with HDF5 filter 32001 (blosc), which this HDF5 lacks; "
        "install the plugin (for example `pip install hdf5plugin`, which mixup loads when present) "
        "or point HDF5_PLUGIN_PATH at a folder holding it"
    ]
    assert_nothing_written(outdir)


def test_pytables_time_array_is_refused(run_cli, tmp_path, outdir):
    tables = _tables()
    src = tmp_path / "times.h5"
    with tables.open_file(src, "w") as f:
        t = f.create_carray("/", "t", atom=tables.Time64Atom(), shape=(N,))
        t[:] = np.arange(N, dtype=np.float64)
    check_refused(run_cli, src, outdir, "t", "H5T_TIME", x_key="t")


def test_netcdf4_unlimited_zlib_shuffle_named_nc(run_cli, tmp_path, outdir):
    netCDF4 = pytest.importorskip("netCDF4")
    x, y = _data(d=64), _labels()
    src = tmp_path / "written_by_netcdf4.nc"
    with netCDF4.Dataset(src, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("feature", 64)
        nc.createDimension("class", 3)
        vx = nc.createVariable("x", "f4", ("time", "feature"), zlib=True, shuffle=True, chunksizes=(1, 64))
        vy = nc.createVariable("y", "f4", ("time", "class"), zlib=True, shuffle=True, chunksizes=(1, 3))
        for i in range(0, N, 10):
            vx[i : i + 10] = x[i : i + 10]
            vy[i : i + 10] = y[i : i + 10]
    check_accepted(run_cli, src, outdir)


@pytest.mark.slow
def test_anndata_dense_x_with_obs_labels(run_cli, tmp_path, outdir):
    anndata = pytest.importorskip("anndata")
    pd = pytest.importorskip("pandas")
    x = _data()
    labels = np.random.default_rng(2).integers(0, 3, N).astype(np.float32)
    adata = anndata.AnnData(X=x, obs=pd.DataFrame({"score": labels}, index=[f"c{i}" for i in range(N)]))
    src = tmp_path / "cells.h5ad"
    adata.write_h5ad(src)
    with h5py.File(src, "r") as f:
        assert isinstance(f["X"], h5py.Dataset)
        score = f["obs/score"][()]
    # A float column as targets: mixed linearly like x.
    check_accepted(run_cli, src, outdir, x_key="X", y_key="obs/score", x=x, y=score)


def test_anndata_obs_suggests_a_class_column_never_the_row_index(run_cli, tmp_path, outdir):
    """--y-key obs names a group: the example given is a column of obs, not
    obs/_index (one identifier a cell), which is itself refused as classes."""
    anndata = pytest.importorskip("anndata")
    pd = pytest.importorskip("pandas")
    x = _data()
    kind = pd.Categorical(np.random.default_rng(2).choice(["b", "t", "nk"], N))
    src = tmp_path / "cells.h5ad"
    anndata.AnnData(X=x, obs=pd.DataFrame({"kind": kind}, index=[f"c{i}" for i in range(N)])).write_h5ad(src)
    line = check_refused(run_cli, src, outdir, "obs", "is a group", x_key="X", y_key="obs")
    assert line.endswith("pass the path of an array in it with --y-key (for example 'obs/kind')"), line
    check_refused(run_cli, src, outdir, "obs/_index", "a label of its own", "--no-y", x_key="X", y_key="obs/_index")
    done = run_cli("augment", src, outdir / "out.h5", "--seed", 5, "--x-key", "X", "--y-key", "obs/kind")
    assert done.exit_code == 0, done.stderr
    with h5py.File(outdir / "out.h5", "r") as f:
        assert f["obs/kind"].shape == (N, 3)  # three classes, one-hot


def test_anndata_sparse_x_is_refused_as_a_sparse_matrix(run_cli, tmp_path, outdir):
    anndata = pytest.importorskip("anndata")
    sparse = pytest.importorskip("scipy.sparse")
    x = _data()
    x[x < 0.5] = 0
    src = tmp_path / "sparse.h5ad"
    anndata.AnnData(X=sparse.csr_matrix(x)).write_h5ad(src)
    check_refused(run_cli, src, outdir, "X", "sparse matrix (CSR", "toarray()", "--x-key", x_key="X")


# --- unusual HDF5 types -----------------------------------------------------


def _low_level_dataset(f, name, tid, data, chunks=None, gzip=False):
    """A dataset of HDF5 type ``tid`` holding ``data`` (HDF5 converts)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks:
        dcpl.set_chunk(chunks)
        if gzip:
            dcpl.set_deflate(4)
    space = h5py.h5s.create_simple(data.shape)
    dsid = h5py.h5d.create(f.id, name.encode(), tid, space, dcpl=dcpl)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(data))
    return f[name]


def _int12(order="le"):
    tid = (h5py.h5t.STD_I16LE if order == "le" else h5py.h5t.STD_I16BE).copy()
    tid.set_precision(12)
    tid.set_offset(2)
    return tid


def _odd_float():
    tid = h5py.h5t.IEEE_F32LE.copy()
    tid.set_ebias(100)  # IEEE's is 127: same bits, other numbers
    return tid


STORAGE = {"contiguous": {}, "chunked": {"chunks": (4, D)}, "chunked-gzip": {"chunks": (4, D), "gzip": True}}


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("kind", ["int16 precision 12 offset 2", "float32 exponent bias 100"])
def test_unusual_bit_layouts_read_through_hdf5_conversion(run_cli, tmp_path, outdir, kind, storage):
    """The fast paths would copy the stored bits (every row wrong, or a false
    'truncated' when the array is last in the file): HDF5 converts them."""
    if kind.startswith("int"):
        x, tid = np.random.default_rng(3).integers(-2048, 2048, (N, D)).astype(np.int16), _int12()
    else:
        x, tid = _data(np.float32), _odd_float()
    src = tmp_path / "odd.h5"
    with h5py.File(src, "w") as f:
        f["y"] = _labels()
        ds = _low_level_dataset(f, "x", tid, x, **STORAGE[storage])  # last in the file
        stored = ds[()]
    np.testing.assert_array_equal(stored, x)  # h5py decodes it to the values written
    check_accepted(run_cli, src, outdir, x=stored, y=_labels())


def test_verify_does_not_share_a_wrong_fast_path(run_cli, tmp_path, outdir, monkeypatch):
    """A fast path copying 12-bit integers as stored writes a wrong output;
    verify, reading through HDF5, says so instead of certifying it."""
    x = np.random.default_rng(4).integers(-2048, 2048, (N, D)).astype(np.int16)
    src = tmp_path / "odd.h5"
    with h5py.File(src, "w") as f:
        _low_level_dataset(f, "x", _int12(), x)
    monkeypatch.setattr(hdf5, "plain_type", lambda tid, dtype: np.dtype(dtype).kind in "fiu")
    # every partner row by the reader's take (rows close together would be read as ranges, through HDF5)
    monkeypatch.setattr(gather, "MIN_RUN_ROWS", N + 1)
    out = outdir / "out.h5"
    # Several blocks: partners read by index, as stored (the fast path's layout).
    assert run_cli("augment", src, out, "--seed", 1, "--no-y", "--block-rows", 8, "--quiet").exit_code == 0
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  recompute: the recomputed output differs: 'x' first at row " in result.stdout


@pytest.mark.parametrize("dtype", [">i2", ">f4", ">f8", ">u2"])
def test_big_endian(run_cli, tmp_path, outdir, dtype):
    src = tmp_path / "be.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=_data(np.dtype(dtype)), chunks=(4, D), compression="gzip")
    _, err = check_accepted(run_cli, src, outdir, y_key=None)
    assert err <= 1


def _write_unfiltered_edge_chunk(f, x, shuffle, rows=4):
    """The partial last chunk stored as plain bytes, its filter mask saying
    so: what HDF5 writes with H5Pset_chunk_opts(DONT_FILTER_PARTIAL_CHUNKS)."""
    import zlib

    ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(rows, D), compression="gzip", shuffle=shuffle)
    for start in range(0, len(x), rows):
        piece = np.zeros((rows, D), x.dtype)
        piece[: len(x[start : start + rows])] = x[start : start + rows]
        if start + rows <= len(x):
            stored = piece.view(np.uint8).reshape(-1, x.itemsize).T.copy() if shuffle else piece
            ds.id.write_direct_chunk((start, 0), zlib.compress(stored.tobytes()))
        else:
            ds.id.write_direct_chunk((start, 0), piece.tobytes(), filter_mask=0b11 if shuffle else 0b1)


@pytest.mark.parametrize(
    "layout",
    [
        "fletcher32",
        "scaleoffset-int",
        "scaleoffset-float",
        "compact",
        "contiguous",
        "lzf",
        "gzip-1-row-chunks",
        "part-row-chunks",
        "gzip-unfiltered-edge-chunk",
        "shuffle-gzip-unfiltered-edge-chunk",
        "gzip-one-chunk",
    ],
)
def test_storage_layouts(run_cli, tmp_path, outdir, layout):
    src = tmp_path / "layout.h5"
    x = _data(np.int32 if layout == "scaleoffset-int" else np.float32)
    with h5py.File(src, "w") as f:
        f["y"] = _labels()
        if layout == "fletcher32":
            f.create_dataset("x", data=x, chunks=(4, D), fletcher32=True)
        elif layout == "scaleoffset-int":
            f.create_dataset("x", data=x, chunks=(4, D), scaleoffset=0)
        elif layout == "scaleoffset-float":
            f.create_dataset("x", data=x, chunks=(4, D), scaleoffset=3)  # lossy: compared to what h5py reads
        elif layout == "compact":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            dsid = h5py.h5d.create(f.id, b"x", h5py.h5t.py_create(x.dtype), h5py.h5s.create_simple(x.shape), dcpl=dcpl)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, x)
        elif layout == "contiguous":
            f.create_dataset("x", data=x)
        elif layout == "lzf":
            f.create_dataset("x", data=x, chunks=(4, D), compression="lzf")
        elif layout == "gzip-1-row-chunks":
            f.create_dataset("x", data=x, chunks=(1, D), compression="gzip", shuffle=True)
        elif layout.endswith("unfiltered-edge-chunk"):
            _write_unfiltered_edge_chunk(f, x, shuffle=layout.startswith("shuffle"))
        elif layout == "gzip-one-chunk":
            f.create_dataset("x", data=x, chunks=x.shape, compression="gzip")
        else:
            f.create_dataset("x", data=x, chunks=(3, 2), compression="gzip")
    check_accepted(run_cli, src, outdir)


def test_external_raw_storage_is_an_input_file(run_cli, tmp_path, outdir):
    x = _data()
    raw = tmp_path / "x.raw"
    x.tofile(raw)
    src = tmp_path / "ext.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)])
    out, _ = check_accepted(run_cli, src, outdir, y_key=None)
    import json

    files = [item["path"] for item in json.loads((outdir / "out.h5.provenance.json").read_text())["input"]["files"]]
    assert str(raw.resolve()) in files
    raw.write_bytes(_data(seed=9).tobytes())
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "FAIL  input files" in result.stdout and "x.raw" in result.stdout


def test_missing_external_raw_storage_is_refused(run_cli, tmp_path, outdir):
    x = _data()
    raw = tmp_path / "gone.raw"
    x.tofile(raw)
    src = tmp_path / "ext.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)])
    raw.unlink()
    check_refused(run_cli, src, outdir, "x", "external file", "gone.raw", "missing")


def _vds(tmp_path, x):
    """x split over two source files, joined by a virtual dataset."""
    half = len(x) // 2
    layout = h5py.VirtualLayout(shape=x.shape, dtype=x.dtype)
    for i, (lo, hi) in enumerate([(0, half), (half, len(x))]):
        name = f"part{i}.h5"
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("data", data=x[lo:hi], chunks=(4, D), compression="gzip")
        layout[lo:hi] = h5py.VirtualSource(name, "data", shape=(hi - lo, D))  # relative: beside the file
    src = tmp_path / "joined.h5"
    with h5py.File(src, "w") as f:
        f.create_virtual_dataset("x", layout, fillvalue=-1)
    return src


def test_virtual_dataset_sources_are_input_files(run_cli, tmp_path, outdir):
    x = _data()
    src = _vds(tmp_path, x)
    out, _ = check_accepted(run_cli, src, outdir, y_key=None, x=x)
    import json

    files = [
        os.path.basename(item["path"])
        for item in json.loads((outdir / "out.h5.provenance.json").read_text())["input"]["files"]
    ]
    assert files == ["joined.h5", "part0.h5", "part1.h5"]
    with h5py.File(tmp_path / "part1.h5", "r+") as f:  # edit a source after the run
        f["data"][0] = 99
    result = run_cli("verify", out)
    assert result.exit_code == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any(line.startswith("FAIL  input files") and "part1.h5" in line for line in failed), result.stdout


def test_virtual_dataset_with_a_missing_source_is_refused(run_cli, tmp_path, outdir):
    src = _vds(tmp_path, _data())
    (tmp_path / "part1.h5").unlink()
    check_refused(run_cli, src, outdir, "x", "part1.h5", "missing")


# --- names as h5py resolves them -------------------------------------------


@pytest.mark.parametrize("key", ["/x", "alias", "/group/x_again", "group/x_again", "soft_in_group/x"])
def test_keys_h5py_resolves(run_cli, tmp_path, outdir, key):
    x = _data()
    src = tmp_path / "links.h5"
    with h5py.File(src, "w") as f:
        f["x"] = x
        f["alias"] = h5py.SoftLink("/x")
        f.create_group("group")["x_again"] = f["x"]  # a hard link: the same dataset under another name
        f["soft_in_group"] = h5py.SoftLink("/")
    check_accepted(run_cli, src, outdir, x_key=key, y_key=None, x=x)


def test_external_link_target_is_an_input(run_cli, tmp_path, outdir):
    x = _data()
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("x", data=x, chunks=(4, D))
    src = tmp_path / "links.h5"
    with h5py.File(src, "w") as f:
        f["x"] = h5py.ExternalLink("target.h5", "/x")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # HDF5 looks for a relative link target from here too
    try:
        out, _ = check_accepted(run_cli, src, outdir, y_key=None, x=x)
        import json

        files = [
            os.path.basename(item["path"])
            for item in json.loads((outdir / "out.h5.provenance.json").read_text())["input"]["files"]
        ]
        assert files == ["links.h5", "target.h5"]
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("suffix", [".h5ad", ".nc4", ".he5", ".hdf", ".dat", ""])
def test_hdf5_recognised_by_its_signature(run_cli, tmp_path, outdir, suffix):
    x = _data()
    src = tmp_path / f"data{suffix}"
    with h5py.File(src, "w", userblock_size=512 if suffix == ".dat" else 0) as f:
        f["x"] = x
    check_accepted(run_cli, src, outdir, y_key=None, x=x)


def test_netcdf3_is_refused_with_what_to_do(run_cli, tmp_path, outdir):
    src = tmp_path / "classic.nc"
    src.write_bytes(b"CDF\x01" + bytes(60))
    result = run_cli("augment", src, outdir / "out.h5", "--no-y")
    assert result.exit_code == 1 and "netCDF-3" in result.stderr and "nccopy" in result.stderr
    assert_nothing_written(outdir)


@pytest.mark.slow
def test_a_fifo_is_refused_at_once(run_mixup, tmp_path, outdir):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    result = run_mixup("augment", fifo, outdir / "out.h5", "--no-y", timeout=30)
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"Error: {fifo}: is a named pipe (FIFO), not a dataset file; "
        "write the data to a file and pass that"
    )
    assert_nothing_written(outdir)


# --- other refusals -----------------------------------------------------------


def test_long_double_from_hdf5_is_refused(run_cli, tmp_path, outdir):
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 here")
    src = tmp_path / "ld.h5"
    with h5py.File(src, "w") as f:
        f["x"] = _data(np.float64).astype(np.longdouble)
    check_refused(run_cli, src, outdir, "x", "long double", "float64")


@pytest.mark.slow
def test_missing_filter_refusal_from_the_executable(run_mixup, tmp_path, outdir, monkeypatch):
    """Exit code and message from the installed executable (no traceback)."""
    src = tmp_path / "filtered.h5"
    with h5py.File(src, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, D))
        dcpl.set_filter(32015, h5py.h5z.FLAG_OPTIONAL, (3,))  # zstd, optional: no plugin needed to write
        h5py.h5d.create(f.id, b"x", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((N, D)), dcpl=dcpl)
    (tmp_path / "no-plugins").mkdir()
    monkeypatch.setenv("HDF5_PLUGIN_PATH", str(tmp_path / "no-plugins"))
    result = run_mixup("augment", src, outdir / "out.h5", "--no-y")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {src}: array 'x' is compressed with HDF5 filter 32015 (zstd), which this HDF5 lacks; "
        "install the plugin (for example `pip install hdf5plugin`, which mixup loads when present) "
        "or point HDF5_PLUGIN_PATH at a folder holding it"
    ]
    assert_nothing_written(outdir)


def test_a_character_device_is_refused(run_cli, outdir):
    result = run_cli("augment", "/dev/null", outdir / "out.h5", "--no-y")
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == "Error: /dev/null: is a character device, not a dataset file; "
        "write the data to a file and pass that"
    )
    assert_nothing_written(outdir)


def test_a_file_without_the_signature_is_still_an_unknown_format(run_cli, tmp_path, outdir):
    src = tmp_path / "notes.txt"
    src.write_bytes(b"not hdf5" * 200)
    result = run_cli("augment", src, outdir / "out.h5", "--no-y")
    assert result.exit_code == 2 and "unknown input format '.txt'" in result.stderr
    assert_nothing_written(outdir)


@pytest.mark.parametrize("storage", ["chunked", "chunked-gzip"])
def test_unusual_bit_layout_with_class_pairing(run_cli, tmp_path, outdir, storage):
    """Partners read by index (and, compressed, through the scratch copy)."""
    x = np.random.default_rng(5).integers(-2048, 2048, (N, D)).astype(np.int16)
    labels = np.random.default_rng(6).integers(0, 3, N)
    src = tmp_path / "odd.h5"
    with h5py.File(src, "w") as f:
        f["y"] = labels
        stored = _low_level_dataset(f, "x", _int12(), x, **STORAGE[storage])[()]
    out = outdir / "out.h5"
    result = run_cli("augment", src, out, "--seed", 2, "--pairing", "within-class", "--block-rows", 8, "--quiet")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        lam, partner, x_out = f["lam"][()], f["partner"][()], f["x"][()]
    assert (labels[partner] == labels).all()
    assert _check_rows(x_out, stored, lam, partner) <= 1
    verified = run_cli("verify", out)
    assert verified.exit_code == 0 and verified.stdout.splitlines()[-1] == "OK", verified.stdout


@pytest.mark.parametrize("layout", ["gzip", "shuffle-gzip", "gzip-unfiltered-edge-chunk"])
def test_gzip_chunks_larger_than_a_block_read_right(run_cli, tmp_path, outdir, layout):
    """A dataset stored in a few chunks larger than a block (the last one
    stored unfiltered in one layout): every row is still the formula's."""
    src, x = tmp_path / "big.h5", _data()
    with h5py.File(src, "w") as f:
        f["y"] = _labels()
        if layout == "gzip-unfiltered-edge-chunk":
            _write_unfiltered_edge_chunk(f, x, shuffle=False, rows=20)
        else:
            f.create_dataset("x", data=x, chunks=(20, D), compression="gzip", shuffle=layout.startswith("shuffle"))
    result = run_cli("augment", src, outdir / "out.h5", "--seed", 3, "--block-rows", 5, "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(outdir / "out.h5", "r") as f:
        assert _check_rows(f["x"][()], x, f["lam"][()], f["partner"][()]) <= 1


def test_a_damaged_big_chunk_is_refused_naming_its_rows(run_cli, tmp_path, outdir):
    import zlib

    src, x = tmp_path / "big.h5", _data()
    with h5py.File(src, "w") as f:
        f["y"] = _labels()
        ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype, chunks=(20, D), compression="gzip")
        for start in range(0, N, 20):
            piece = np.zeros((20, D), x.dtype)
            piece[: len(x[start : start + 20])] = x[start : start + 20]
            stored = b"not a deflate stream" if start == 20 else zlib.compress(piece.tobytes())
            ds.id.write_direct_chunk((start, 0), stored)
    line = check_refused(run_cli, src, outdir, "x", "rows 20:40", "damaged", y_key="y")
    assert "copy or write the file again" in line


def test_a_null_dataspace_is_refused_in_one_line(run_cli, tmp_path, outdir):
    src = tmp_path / "null.h5"
    with h5py.File(src, "w") as f:
        f["x"] = _data()
        f.create_dataset("y", data=h5py.Empty("f4"))
    line = check_refused(run_cli, src, outdir, "y", "null dataspace", y_key="y")
    assert "TypeError" not in line


def test_a_matlab_v5_file_is_refused_saying_how_to_save_it(run_cli, tmp_path, outdir):
    scipy_io = pytest.importorskip("scipy.io")
    src = tmp_path / "old.mat"
    scipy_io.savemat(src, {"x": _data(), "y": np.arange(N)})
    result = run_cli("augment", src, outdir / "out.h5", "--quiet")
    assert result.exit_code == 1, result.stderr
    assert str(src) in result.stderr and "'-v7.3'" in result.stderr and "scipy.io.loadmat" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_written(outdir)


def test_hdf5_enum_labels_are_named_classes(run_cli, tmp_path, outdir):
    """{b: 20, a: 10, c: 30}: three classes named a, b, c (c never used), not
    31 one-hot columns of the raw values."""
    src, x = tmp_path / "enum.h5", _data()
    values = np.random.default_rng(3).choice([10, 20], N).astype(np.int8)
    with h5py.File(src, "w") as f:
        f["x"] = x
        f.create_dataset("y", data=values, dtype=h5py.enum_dtype({"b": 20, "a": 10, "c": 30}, basetype="i1"))
    result = run_cli("augment", src, outdir / "out.h5", "--seed", 2, "--quiet")
    assert result.exit_code == 0, result.stderr
    with h5py.File(outdir / "out.h5", "r") as f:
        assert json.loads(f.attrs["class_names"]) == ["a", "b", "c"]
        y_out, lam, partner = f["y"][()], f["lam"][()], f["partner"][()]
    one_hot = np.eye(3, dtype=y_out.dtype)[(values == 20).astype(int)]  # a -> column 0, b -> column 1
    _check_rows(y_out, one_hot, lam, partner)
    assert run_cli("verify", outdir / "out.h5").exit_code == 0


def test_an_enum_value_no_member_has_is_refused(run_cli, tmp_path, outdir):
    src = tmp_path / "enum.h5"
    with h5py.File(src, "w") as f:
        f["x"] = _data()
        dt = h5py.enum_dtype({"a": 10, "b": 20}, basetype="i1")
        ds = f.create_dataset("y", shape=(N,), dtype=dt)
        ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.full(N, 10, np.int8))
        ds.id.write(h5py.h5s.create_simple((N,)), h5py.h5s.ALL, np.full(N, 10, np.int8))
        raw = np.full(N, 10, np.int8)
        raw[7] = 15
        ds.id.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=h5py.h5t.NATIVE_INT8)
    line = check_refused(run_cli, src, outdir, "y", "row 7", "code 15", y_key="y")
    assert "names no class" in line


def _netcdf4():
    return pytest.importorskip("netCDF4")


def _packed_nc(path, gap=None, packed=True, n=N):
    netCDF4 = _netcdf4()
    values = np.random.default_rng(2).normal(20, 3, (n, 4))
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("sample", n)
        nc.createDimension("feature", 4)
        x = nc.createVariable("x", "i2", ("sample", "feature"), fill_value=-32767)
        if packed:
            x.scale_factor, x.add_offset = np.float32(0.01), np.float32(20.0)
        else:
            values = np.round(values * 100)
        data = np.ma.masked_array(values, mask=np.zeros(values.shape, bool))
        if gap is not None:
            data.mask[gap, 1] = True
        x[:] = data
        nc.createVariable("y", "i4", ("sample",))[:] = np.arange(n) % 3


def test_netcdf_packed_variables_are_mixed_as_the_values_netcdf_reads(run_cli, tmp_path, outdir):
    """int16 with scale_factor/add_offset: mixed as netCDF4-python decodes
    it (float32), not as raw integers; the output says so."""
    netCDF4 = _netcdf4()
    src = tmp_path / "packed.nc"
    _packed_nc(src)
    with netCDF4.Dataset(src) as nc:
        x = np.asarray(nc["x"][:], dtype=np.float32)  # the library's own unpacking
    out, _ = check_accepted(run_cli, src, outdir, x=x, y=None, y_key=None)
    with h5py.File(out, "r") as f:
        assert f["x"].dtype == np.float32 and "scale" not in " ".join(f["x"].attrs)
        assert "stored * 0.01 + 20" in f.attrs["x_decoded"]
    record = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert "_FillValue -32767 is missing data" in record["input"]["arrays"]["x"]["decoded"]


def test_netcdf_fill_values_are_missing_data_not_numbers(run_cli, tmp_path, outdir):
    src = tmp_path / "gaps.nc"
    _packed_nc(src, gap=7)
    check_refused(run_cli, src, outdir, "x", "row 7", "NaN", y_key="y")
    kept = run_cli("augment", src, outdir / "kept.h5", "--allow-nonfinite", "--no-y", "--seed", 1, "--quiet")
    assert kept.exit_code == 0, kept.stderr
    with h5py.File(outdir / "kept.h5", "r") as f:
        x, partner = f["x"][()], f["partner"][()]
    touched = (partner == 7) | (np.arange(N) == 7)  # NaN times any lam is NaN
    assert np.isnan(x[touched, 1]).all() and not np.isnan(x[~touched]).any()


def test_netcdf_integer_fill_values_are_refused_naming_the_row(run_cli, tmp_path, outdir):
    src = tmp_path / "ints.nc"
    _packed_nc(src, gap=11, packed=False)
    check_refused(run_cli, src, outdir, "x", "row 11", "fill value", y_key="y")


def test_scale_factor_outside_netcdf_is_an_ordinary_attribute(run_cli, tmp_path, outdir):
    """Only files netCDF wrote give those attribute names their CF meaning."""
    src, x = tmp_path / "plain.h5", _data(np.int16)
    with h5py.File(src, "w") as f:
        f["x"] = x
        f["x"].attrs["scale_factor"] = np.float32(0.5)
    check_accepted(run_cli, src, outdir, y_key=None)


@pytest.mark.parametrize("fmt", ["table", "fixed"])
def test_a_pandas_frame_is_refused_saying_what_to_pass(run_cli, tmp_path, outdir, fmt):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    frame = pd.DataFrame(_data(), columns=[f"f{i}" for i in range(D)])
    src = tmp_path / "frame.h5"
    frame.to_hdf(src, key="train", format=fmt)
    line = check_refused(run_cli, src, outdir, "train", "pandas DataFrame", x_key="train")
    assert "df.to_parquet" in line and "dtype(" not in line and "[(" not in line
    if fmt == "fixed":  # its 2-D block of values is an array mixup reads
        assert "'train/block0_values'" in line
        check_accepted(run_cli, src, outdir, x_key="train/block0_values", y_key=None, name="block.h5")
    else:  # the table itself: its fields named, not its whole compound type printed
        line = check_refused(
            run_cli, src, outdir, "train/table", "table of records", "values_block_0", x_key="train/table"
        )
        assert "[(" not in line
