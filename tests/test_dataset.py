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
from conftest import cli_runner, make_arrays, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.cli import cli
from mixup_cli.dataset import MixupDataset
from mixup_cli.errors import InputError

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


@settings(max_examples=40, deadline=None)
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
