"""MixupDataset against outputs written by the real `mixup augment`, each
reopened directly with h5py / zarr / numpy as the oracle; workers are real
processes (fork and spawn)."""

import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import cli_runner, examples, make_arrays, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.cli import cli
from mixup_cli.commands.dataset import MixupDataset
from mixup_cli.core.errors import InputError

N = 53


def augment(*args):
    result = cli_runner().invoke(cli, ["augment", *map(str, args), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def raw_arrays(path) -> dict:
    """Every array of an output, read directly by its format's library."""
    path = Path(path)
    if path.suffix == ".h5":
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, o: out.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
        return out
    if path.suffix == ".zarr":
        import zarr

        g = zarr.open_group(str(path), mode="r")
        return {k: np.asarray(a[...]) for k, a in g.members(max_depth=None) if isinstance(a, zarr.Array)}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return {p.relative_to(path).with_suffix("").as_posix(): np.load(p) for p in path.rglob("*.npy")}


FORMATS = [
    ("h5", "none"),
    ("h5", "gzip"),
    ("zarr", "none"),
    ("zarr", "gzip"),
    ("npz", "none"),
    ("npz", "gzip"),
    ("npydir", "none"),
]
Y_FORMATS = ["soft", "pair", "no-y"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    x, _ = make_arrays(n=N, x_shape=(4, 3), seed=1)
    labels = np.random.default_rng(2).integers(0, 5, N)
    return write_h5(d / "in.h5", x=x, y=labels)


@pytest.fixture(scope="module")
def outputs(source, tmp_path_factory):
    """One output per (format, compression, y-format), written once."""
    d = tmp_path_factory.mktemp("out")
    made = {}
    for fmt, comp in FORMATS:
        for yf in Y_FORMATS:
            out = d / (f"{fmt}-{comp}-{yf}" + ("" if fmt == "npydir" else f".{fmt}"))
            extra = ["--no-y"] if yf == "no-y" else ["--y-format", yf]
            # Two copies: output rows (2N) differ from input rows (N).
            augment(source, out, "--seed", 5, "--copies", 2, "--block-rows", 16, "--compression", comp, *extra)
            made[fmt, comp, yf] = out
    return made


def expected_names(yf):
    return {"soft": {"x": "x", "y": "y"}, "pair": {"x": "x", "y_a": "y_a", "y_b": "y_b"}, "no-y": {"x": "x"}}[yf]


@pytest.mark.slow
@pytest.mark.parametrize("yf", Y_FORMATS)
@pytest.mark.parametrize("fmt,comp", FORMATS)
def test_rows_slices_and_index_arrays_match_the_stored_arrays(outputs, fmt, comp, yf):
    out = outputs[fmt, comp, yf]
    raw = raw_arrays(out)
    names = dict(expected_names(yf), lam="lam", partner="partner")
    with MixupDataset(out) as ds:
        assert len(ds) == 2 * N == len(raw["lam"])
        assert set(ds.keys) == set(names)
        for i in range(len(ds)):
            row = ds[i]
            assert set(row) == set(names)
            for name, key in names.items():
                np.testing.assert_array_equal(row[name], raw[key][i])
                assert np.asarray(row[name]).dtype == raw[key].dtype
        assert np.isscalar(ds[0]["lam"]) and np.isscalar(ds[0]["partner"])
        np.testing.assert_array_equal(ds[-1]["x"], raw["x"][-1])
        rng = np.random.default_rng(0)
        for sel in (slice(3, 40), slice(0, 2 * N), slice(50, 10), slice(1, 90, 7), slice(None, None, -3)):
            batch = ds[sel]
            for name, key in names.items():
                np.testing.assert_array_equal(batch[name], raw[key][sel])
        for idx in (
            rng.permutation(2 * N)[:30],
            rng.integers(0, 2 * N, 40),
            np.array([5, 5, 4, -1]),
            np.array([], dtype=np.int64),
            [2 * N - 1, 0],
        ):
            batch = ds[idx]
            for name, key in names.items():
                np.testing.assert_array_equal(batch[name], raw[key][np.asarray(idx, dtype=np.int64)])
        mask = rng.random(2 * N) < 0.3
        np.testing.assert_array_equal(ds[mask]["lam"], raw["lam"][mask])
        for bad in (2 * N, -2 * N - 1):
            with pytest.raises(IndexError):
                ds[bad]
        with pytest.raises(IndexError):
            ds[[0, 2 * N]]


def test_the_pair_form_holds_both_targets_and_the_weights_of_the_loss(outputs, source):
    with h5py.File(source, "r") as f:
        y = f["y"][()]
    ds = MixupDataset(outputs["h5", "none", "pair"])
    batch = ds[:]
    # Row k*N + i of a copy is input row i; y_b is its partner's target.
    np.testing.assert_array_equal(batch["y_a"], np.concatenate([y, y]))
    np.testing.assert_array_equal(batch["y_b"], y[batch["partner"]])
    assert ((batch["lam"] >= 0) & (batch["lam"] <= 1)).all()


@settings(max_examples=examples(40), deadline=None)
@given(st.lists(st.integers(-2 * N, 2 * N - 1), max_size=60))
def test_any_index_list_gives_its_rows_in_the_order_asked(outputs, idx):
    out = outputs["h5", "gzip", "soft"]
    raw = raw_arrays(out)
    batch = MixupDataset(out)[np.array(idx, dtype=np.int64)]
    for name in ("x", "y", "lam", "partner"):
        np.testing.assert_array_equal(batch[name], raw[name][np.array(idx, dtype=np.int64)])
        assert len(batch[name]) == len(idx)


def test_names_restricts_what_is_read(outputs):
    ds = MixupDataset(outputs["npz", "none", "soft"], names=["x", "y"])
    assert set(ds[0]) == {"x", "y"} and set(ds[2:5]) == {"x", "y"}
    with pytest.raises(InputError, match="no array named 'box'"):
        MixupDataset(outputs["npz", "none", "soft"], names=["x", "box"])


def test_stored_npz_members_are_memory_mapped_compressed_ones_loaded(outputs):
    stored = MixupDataset(outputs["npz", "none", "soft"])
    stored[0]
    assert isinstance(stored._opened().arrays["x"]._array, np.memmap)
    deflated = MixupDataset(outputs["npz", "gzip", "soft"])
    deflated[0]
    assert not isinstance(deflated._opened().arrays["x"]._array, np.memmap)


# ---------------------------------------------------------------- names


def test_nested_keys_and_the_sidecar_names(tmp_path):
    x, y = make_arrays(n=20, x_shape=(6,), seed=3)
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f["train/images"] = x
        f["train/labels"] = y
    for yf, names in (
        ("soft", {"x": "train/images", "y": "train/labels"}),
        ("pair", {"x": "train/images", "y_a": "train/labels_a", "y_b": "train/labels_b"}),
    ):
        out = tmp_path / f"{yf}.h5"
        augment(src, out, "--x-key", "train/images", "--y-key", "train/labels", "--y-format", yf, "--seed", 1)
        raw = raw_arrays(out)
        for sidecar in (True, False):
            if not sidecar:
                Path(str(out) + ".provenance.json").unlink()
            ds = MixupDataset(out)
            assert ds.keys == dict(names, lam="lam", partner="partner")
            for name, key in names.items():
                np.testing.assert_array_equal(ds[7][name], raw[key][7])
            assert ds.parameters.get("x_key") == ("train/images" if sidecar else None)


def test_without_sidecar_flat_names_and_cutmix_box(tmp_path):
    x = np.random.default_rng(0).random((12, 8, 8, 3), dtype=np.float32)
    src = write_h5(tmp_path / "in.h5", x=x)
    out = tmp_path / "cm"
    augment(src, out, "--method", "cutmix", "--seed", 2)
    Path(str(out) + ".provenance.json").unlink()
    raw = raw_arrays(out)
    ds = MixupDataset(out)
    assert ds.keys == {"x": "x", "lam": "lam", "partner": "partner", "box": "box"}
    np.testing.assert_array_equal(ds[[3, 1]]["box"], raw["box"][[3, 1]])


# ---------------------------------------------------------------- errors


def test_an_input_dataset_is_not_a_mixup_output(source):
    with pytest.raises(InputError, match=r"in\.h5: not a mixup output: no 'lam' or 'partner' array \(found: x, y\)"):
        MixupDataset(source)


@pytest.mark.parametrize("name,content", [("a.h5", b"not hdf5"), ("a.npz", b"not a zip"), ("a.zarr", None)])
def test_unreadable_files_say_which_format(tmp_path, name, content):
    p = tmp_path / name
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(InputError) as exc:
        MixupDataset(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and "cannot be opened as" in msg


def test_missing_path_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        MixupDataset(tmp_path / "nope.h5")
    (tmp_path / "a.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"not a mixup output \(expected \.h5"):
        MixupDataset(tmp_path / "a.csv")


def test_missing_zarr_names_the_extra(outputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr -> ImportError
    with pytest.raises(InputError, match=r"pip install 'mixup-cli\[zarr\]'"):
        MixupDataset(outputs["zarr", "none", "soft"])


def test_sidecar_naming_an_array_the_output_lacks(outputs, tmp_path):
    import json
    import shutil

    out = tmp_path / "o.npz"
    shutil.copy(outputs["npz", "none", "soft"], out)
    side = json.loads(Path(str(outputs["npz", "none", "soft"]) + ".provenance.json").read_text())
    side["parameters"]["x_key"] = "images"
    Path(str(out) + ".provenance.json").write_text(json.dumps(side))
    with pytest.raises(InputError, match="the sidecar names 'images' as x, but the output has no such array"):
        MixupDataset(out)


def test_an_array_with_other_row_count_is_refused(tmp_path):
    p = write_h5(tmp_path / "bad.h5", x=np.zeros((5, 2)), lam=np.zeros(6), partner=np.zeros(6, dtype=np.int64))
    with pytest.raises(InputError, match="array 'x' has 5 rows, 'lam' has 6"):
        MixupDataset(p)


# ---------------------------------------------------------------- processes


def _open_fds(path):
    target = os.path.realpath(path)
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                fds.append(fd)
        except OSError:
            pass
    return fds


def test_close_and_context_manager_release_the_file(outputs):
    out = outputs["h5", "none", "soft"]
    with MixupDataset(out) as ds:
        ds[0]
        assert _open_fds(out)
    assert not _open_fds(out)
    ds[1]  # reopens on use
    assert _open_fds(out)
    ds.close()
    assert not _open_fds(out)


def test_pickles_without_open_handles(outputs):
    for key in (("h5", "gzip", "soft"), ("zarr", "none", "pair"), ("npz", "gzip", "soft")):
        ds = MixupDataset(outputs[key])
        first = ds[4]
        copy = pickle.loads(pickle.dumps(ds))  # h5py objects would not pickle
        assert copy._store is None
        for name in first:
            np.testing.assert_array_equal(copy[4][name], first[name])


_CHILD_DS = None


def _keep_in_child(ds):
    # Pool initargs are inherited as they are under fork (not pickled), as a
    # DataLoader's dataset is by its fork workers; under spawn they are pickled.
    global _CHILD_DS
    _CHILD_DS = ds


def _read_in_child(rows):
    ds = _CHILD_DS
    batch = ds[rows]
    singles = [ds[int(i)]["x"] for i in rows]
    return os.getpid(), ds._pid, batch, np.stack(singles)


_WORKER_KEYS = [
    ("h5", "gzip", "soft"),
    ("h5", "none", "pair"),
    ("zarr", "gzip", "soft"),
    ("npz", "none", "soft"),
    ("npydir", "none", "no-y"),
]


# Fork for every format; spawn (a new interpreter per worker, about a second)
# for the formats whose handles are reopened per process, the rest in the slow suite.
@pytest.mark.slow
@pytest.mark.parametrize(
    "method, key",
    [("fork", k) for k in _WORKER_KEYS]
    + [
        pytest.param("spawn", k, marks=() if k[0] in ("h5", "zarr") and k[2] != "pair" else pytest.mark.slow)
        for k in _WORKER_KEYS
    ],
)
def test_workers_read_a_dataset_opened_in_the_parent(outputs, method, key):
    out = outputs[key]
    raw = raw_arrays(out)
    ds = MixupDataset(out)
    ds[0]  # opened in the parent before the workers start: the classic fork bug
    chunks = np.array_split(np.random.default_rng(1).permutation(len(ds)), 6)
    with multiprocessing.get_context(method).Pool(2, initializer=_keep_in_child, initargs=(ds,)) as pool:
        results = pool.map(_read_in_child, chunks)
    for (pid, opened_pid, batch, singles), rows in zip(results, chunks):
        assert pid != os.getpid()
        if key[0] in ("h5", "zarr"):
            assert opened_pid == pid  # the child opened its own handle
        np.testing.assert_array_equal(singles, raw["x"][rows])
        for name, stored in ds.keys.items():
            np.testing.assert_array_equal(batch[name], raw[stored][rows])
    # the parent's handle still reads after its children closed theirs
    np.testing.assert_array_equal(ds[len(ds) - 1]["x"], raw["x"][-1])


@pytest.mark.parametrize("key", [("h5", "gzip", "soft"), ("zarr", "none", "pair")])
def test_torch_dataloader_with_two_workers_reads_every_row_once(outputs, key):
    torch = pytest.importorskip("torch")
    out = outputs[key]
    raw = raw_arrays(out)
    ds = MixupDataset(out)
    ds[0]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    seen = {}
    for batch in loader:
        assert isinstance(batch["x"], torch.Tensor) and tuple(batch["x"].shape[1:]) == raw["x"].shape[1:]
        for j in range(len(batch["lam"])):
            # a mixed row's bytes identify it (the rows are random floats)
            row = batch["x"][j].numpy().tobytes()
            assert row not in seen
            seen[row] = (float(batch["lam"][j]), int(batch["partner"][j]))
    assert len(seen) == len(raw["x"])
    for i in range(len(raw["x"])):
        assert seen[raw["x"][i].tobytes()] == (float(raw["lam"][i]), int(raw["partner"][i]))


@pytest.mark.parametrize(
    "layout",
    [
        "contiguous",
        "chunked-edge",
        "chunk-splits-rows",
        "gzip-shuffle",
        "big-endian",
        "unallocated-chunks",
        "userblock",
    ],
)
def test_every_hdf5_layout_reads_as_h5py_reads_it(tmp_path, layout):
    """Plain rows are read with pread; anything else through HDF5: same values."""
    n = 45
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, 3, 5)).astype(np.float32)
    kw = {"data": x}
    file_kw = {}
    if layout == "chunked-edge":
        kw["chunks"] = (8, 3, 5)  # 45 rows: the last chunk is partly outside the data
    elif layout == "chunk-splits-rows":
        kw["chunks"] = (4, 3, 2)
    elif layout == "gzip-shuffle":
        kw.update(chunks=(8, 3, 5), compression="gzip", shuffle=True)
    elif layout == "big-endian":
        kw["data"] = x.astype(">f4")
        kw["chunks"] = (8, 3, 5)
    elif layout == "userblock":
        file_kw["userblock_size"] = 512
    p = tmp_path / "o.h5"
    with h5py.File(p, "w", **file_kw) as f:
        if layout == "unallocated-chunks":
            d = f.create_dataset("x", (n, 3, 5), "f4", chunks=(8, 3, 5), fillvalue=7.5)
            d[8:16] = x[8:16]  # other chunks never written: HDF5 returns the fill value
        else:
            f.create_dataset("x", **kw)
        f["lam"] = rng.random(n)
        f.create_dataset("partner", data=rng.integers(0, n, n), chunks=(10,))
    with h5py.File(p, "r") as f:
        raw = {k: f[k][()] for k in ("x", "lam", "partner")}
    ds = MixupDataset(p)
    for sel in (slice(0, n), slice(5, 30), [44, 0, 17, 16, 15, 8, 7, 3, 3], rng.permutation(n)):
        batch = ds[sel]
        for k in raw:
            np.testing.assert_array_equal(batch[k], raw[k][sel])
            assert batch[k].dtype == raw[k].dtype
    for i in (0, 7, 8, 44, -1):
        np.testing.assert_array_equal(ds[i]["x"], raw["x"][i])


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """uint8 NHWC images and class labels, mixed by the real command."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    src = write_h5(d / "images.h5", x=x, y=rng.integers(0, 4, 40))
    out = d / "mixed.h5"
    augment(src, out, "--seed", 2, "--block-rows", 16)
    return out


def test_uint8_nhwc_images_as_float32_nchw_in_zero_one(images):
    raw = raw_arrays(images)
    assert raw["x"].dtype == np.uint8 and raw["x"].shape == (40, 6, 5, 3)
    expected = raw["x"].astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
    ds = MixupDataset(images, image_format="float-nchw")
    assert ds.shapes["x"] == (40, 3, 6, 5) and ds.dtypes["x"] == np.float32
    row = ds[7]
    assert row["x"].shape == (3, 6, 5) and row["x"].dtype == np.float32 and row["x"].flags.c_contiguous
    np.testing.assert_array_equal(row["x"], expected[7])
    np.testing.assert_array_equal(ds[3:19]["x"], expected[3:19])
    idx = np.array([30, 2, 30, 11])
    batch = ds[idx]
    np.testing.assert_array_equal(batch["x"], expected[idx])
    assert batch["x"].min() >= 0 and batch["x"].max() <= 1
    for name in ("y", "lam", "partner"):  # only x changes
        np.testing.assert_array_equal(batch[name], raw[name][idx])
    rows = ds.__getitems__([5, 1])
    np.testing.assert_array_equal(np.stack([r["x"] for r in rows]), expected[[5, 1]])
    # as stored without the option
    assert MixupDataset(images)[7]["x"].dtype == np.uint8


def test_other_image_formats_and_dtypes(images, tmp_path):
    raw = raw_arrays(images)["x"]
    nhwc = MixupDataset(images, image_format="float-nhwc")[0:4]["x"]
    np.testing.assert_array_equal(nhwc, raw[:4].astype(np.float32) / np.float32(255))
    nchw = MixupDataset(images, image_format="nchw")[0:4]["x"]
    assert nchw.dtype == np.uint8
    np.testing.assert_array_equal(nchw, raw[:4].transpose(0, 3, 1, 2))
    # float (N, H, W) images: values and dtype kept, one channel axis added
    gray = np.random.default_rng(0).random((20, 4, 4)).astype(np.float64)
    src = write_h5(tmp_path / "gray.h5", x=gray, y=np.arange(20) % 2)
    out = tmp_path / "gray-mixed.h5"
    augment(src, out, "--seed", 1)
    ds = MixupDataset(out, image_format="float-nchw")
    assert ds[3]["x"].shape == (1, 4, 4) and ds.dtypes["x"] == np.float64
    np.testing.assert_array_equal(ds[0:20]["x"][:, 0], raw_arrays(out)["x"])


def test_image_format_refusals(images, outputs, a_set):
    from mixup_cli.core.errors import ParameterError

    with pytest.raises(ParameterError, match="image_format must be one of 'float-nchw', 'float-nhwc', 'nchw'"):
        MixupDataset(images, image_format="NCHW")
    images_wanted = r"image_format='float-nchw' needs x of images, \(N, H, W, C\) or \(N, H, W\); the output has "
    with pytest.raises(ParameterError, match=images_wanted + r"x of shape \(104, 3\)"):
        MixupDataset(a_set[0], image_format="float-nchw")
    with pytest.raises(ParameterError, match=images_wanted + "no x"):
        MixupDataset(outputs["h5", "none", "soft"], names=["lam"], image_format="float-nchw")


# ---------------------------------------------------------------- sets


@pytest.fixture(scope="module")
def a_set(tmp_path_factory):
    """A set written by the command: shards in an order that is not their
    names' order, mixed formats, two copies, blocks across shard boundaries."""
    d = tmp_path_factory.mktemp("set")
    rng = np.random.default_rng(6)
    paths = []
    for name, rows in (("c.h5", 19), ("a.npz", 7), ("b.h5", 26)):
        x = rng.random((rows, 3), dtype=np.float32)
        y = rng.integers(0, 3, rows)
        if name.endswith(".npz"):
            np.savez(d / name, x=x, y=y)
            paths.append(d / name)
        else:
            paths.append(write_h5(d / name, x=x, y=y))
    augment(*paths, d / "mixed", "--seed", 4, "--block-rows", 16, "--copies", 2)
    return d / "mixed", [d / "mixed" / p.name for p in paths]


def test_a_sets_outdir_is_one_dataset_in_the_sets_order(a_set):
    outdir, outputs = a_set
    parts = [raw_arrays(p) for p in outputs]  # h5py / numpy, each output alone
    whole = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "lam", "partner")}
    ds = MixupDataset(outdir)
    assert ds.outputs == outputs and len(ds) == 2 * (19 + 7 + 26) == len(whole["x"])
    assert ds.shapes["x"] == (104, 3) and ds.parameters["seed"] == 4
    rows = ds[0 : len(ds)]
    for name in whole:
        np.testing.assert_array_equal(rows[name], whole[name])
    for i in (0, 37, 38, 52, 103, -1):  # first, last of an output, first of the next
        for name in whole:
            np.testing.assert_array_equal(ds[i][name], whole[name][i])
    idx = np.random.default_rng(1).integers(0, len(ds), 50)
    batch = ds[idx]
    for name in whole:
        np.testing.assert_array_equal(batch[name], whole[name][idx])
    np.testing.assert_array_equal(ds[30:45]["partner"], whole["partner"][30:45])
    assert ds[5:5]["x"].shape == (0, 3)


def test_a_sets_rows_in_workers(a_set):
    outdir, outputs = a_set
    whole = np.concatenate([raw_arrays(p)["x"] for p in outputs])
    ds = MixupDataset(outdir)
    ds[50]
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(copy[[3, 90]]["x"], whole[[3, 90]])
    chunks = np.array_split(np.random.default_rng(2).permutation(len(ds)), 4)
    with multiprocessing.get_context("fork").Pool(2, initializer=_keep_in_child, initargs=(ds,)) as pool:
        results = pool.map(_read_in_child, chunks)
    for (_, _, batch, singles), rows in zip(results, chunks):
        np.testing.assert_array_equal(batch["x"], whole[rows])
        np.testing.assert_array_equal(singles, whole[rows])


def test_an_incomplete_set_is_refused_naming_the_missing_output_and_its_command(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write_h5(tmp_path / f"s{k}.h5", x=rng.random((10, 2)), y=np.arange(10) % 2) for k in range(4)]
    outdir = tmp_path / "mixed"
    augment(*paths, outdir, "--seed", 3, "--shard", "0/2")
    with pytest.raises(InputError) as exc:
        MixupDataset(outdir)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{outdir}: an incomplete set (2 of 4 outputs missing): {outdir / 's2.h5'}: missing; ")
    assert msg.endswith(f"part 1/2 writes it: mixup augment <the set's inputs> {outdir} --seed 3 --shard 1/2 --resume")
    augment(*paths, outdir, "--seed", 3, "--shard", "1/2")
    assert len(MixupDataset(outdir)) == 40


@pytest.mark.slow
def test_a_set_of_many_outputs_keeps_few_open(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write_h5(tmp_path / f"s{k:02d}.h5", x=rng.random((3, 2)), y=np.arange(3) % 2) for k in range(20)]
    outdir = tmp_path / "mixed"
    augment(*paths, outdir, "--seed", 3)
    whole = np.concatenate([raw_arrays(outdir / p.name)["x"] for p in paths])
    ds = MixupDataset(outdir)

    def open_outputs():
        return sum(bool(_open_fds(outdir / p.name)) for p in paths)

    assert open_outputs() == 0
    np.testing.assert_array_equal(np.stack([ds[i]["x"] for i in range(len(ds))]), whole)
    assert open_outputs() == 16
    ds.close()
    assert open_outputs() == 0


def test_images_of_a_set(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 4, 4, 1), dtype=np.uint8)
    paths = [write_h5(tmp_path / f"s{k}.h5", x=x[k * 12 : (k + 1) * 12], y=np.arange(12) % 3) for k in range(2)]
    augment(*paths, tmp_path / "mixed", "--seed", 3)
    whole = np.concatenate([raw_arrays(tmp_path / "mixed" / p.name)["x"] for p in paths])
    ds = MixupDataset(tmp_path / "mixed", image_format="float-nchw")
    as_float = whole.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds[0:24]["x"], as_float.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds[13]["x"], as_float[13].transpose(2, 0, 1))


def test_images_cutmix_stored_nchw_are_not_transposed_again(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)  # NCHW, as the sidecar records
    src = write_h5(tmp_path / "nchw.h5", x=x, y=np.arange(16) % 2)
    out = tmp_path / "cut.h5"
    augment(src, out, "--seed", 1, "--method", "cutmix", "--layout", "NCHW")
    stored = raw_arrays(out)["x"].astype(np.float32) / np.float32(255)
    ds = MixupDataset(out, image_format="float-nchw")
    np.testing.assert_array_equal(ds[0:16]["x"], stored)
    nhwc = MixupDataset(out, image_format="float-nhwc")
    np.testing.assert_array_equal(nhwc[4]["x"], stored[4].transpose(1, 2, 0))
