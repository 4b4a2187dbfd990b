"""Formats benchmark: ``mixup augment`` of each input format against a floor.

    python bench/bench_formats.py [--mb 100] [--image-mb 10] [--repeats 2] [--formats h5py,npy,...] [--workdir /tmp]

Makes the same data (``x`` float32 N x 256, about ``--mb`` MB, and ``y``
integer labels of 10 classes) in each format, written by the library users
write it with, in a temporary folder under ``--workdir`` (deleted at the
end), then times, per format:

- mixup: ``mixup_cli.augment(IN, OUT.h5, seed=1, ...)`` run in-process
  through the public API (no interpreter start-up; everything else
  included: the input files' and the output arrays' SHA-256, fsync, the
  atomic rename and the sidecar);
- floor: the writer's own read of the same data into numpy (h5py, PyTables,
  ``numpy.load``, zarr, ``pyarrow.parquet.read_table``, polars'
  ``read_parquet``, ``datasets.load_from_disk``, ``hdf5storage.loadmat``,
  netCDF4, Pillow, the webdataset library) plus an h5py write of an output
  of mixup's size (x, one-hot y, lam, partner) and its fsync.

``result OK`` checks the output: for the numeric formats every row of x
and y against the mixup formula computed here from the data and the
output's ``lam`` and ``partner`` (the writer's read is not used); for the
image formats (``--image-mb``, 32 x 32 RGB PNG files: a smaller size, as
100 MB of PNG files takes minutes to write) ``mixup_cli.verify``, which
recomputes the output. A format whose writer is not installed is left out
and said so. The page cache is warm on both sides (the input was just
written); each side runs ``--repeats`` times (2), alternating, and the
best is shown. One run of the whole table takes about 2.5 minutes on 2
shared CPUs. On a shared machine the figures are noisy (the same floor
varied 5-fold between two runs): compare ratios, not seconds, and rerun
before believing a small gap.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import h5py
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)
import numpy as np

import mixup_cli  # noqa: E402

FEATURES = 256
CLASSES = 10
IMAGE = (32, 32, 3)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- writers and their reads
# Each format: (name, writer, layout, needs, write(path, x, y), read(path) -> (x, y), augment keywords, is_image)


def write_h5py(path, x, y):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(1024, FEATURES))
        f.create_dataset("y", data=y)


def read_h5py(path):
    with h5py.File(path, "r") as f:
        return f["x"][()], f["y"][()]


def write_tables(path, x, y):
    import tables

    with tables.open_file(str(path), "w") as f:
        f.create_carray("/", "x", obj=x, chunkshape=(1024, FEATURES))
        f.create_array("/", "y", obj=y)


def read_tables(path):
    import tables

    with tables.open_file(str(path), "r") as f:
        return f.root.x.read(), f.root.y.read()


def write_npy(path, x, y):
    path.mkdir()
    np.save(path / "x.npy", x)
    np.save(path / "y.npy", y)


def read_npy(path):
    return np.load(path / "x.npy"), np.load(path / "y.npy")


def write_npz(path, x, y):
    np.savez(path, x=x, y=y)


def read_npz(path):
    with np.load(path) as f:
        return f["x"], f["y"]


def write_zarr(path, x, y):
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.create_array("x", data=x, chunks=(4096, FEATURES))
    root.create_array("y", data=y, chunks=(4096,))


def read_zarr(path):
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return root["x"][:], root["y"][:]


def write_pyarrow(path, x, y):
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
    pq.write_table(pa.table({"x": column, "y": y}), path, row_group_size=16384)


def read_pyarrow(path):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    x = table.column("x").combine_chunks().flatten().to_numpy().reshape(-1, FEATURES)
    return x, table.column("y").to_numpy()


def write_pandas(path, x, y):
    import pandas as pd

    frame = pd.DataFrame({f"f{j}": x[:, j] for j in range(FEATURES)})
    frame["y"] = y
    frame.to_parquet(path, row_group_size=16384)


def read_pandas(path):
    # pandas' own read, by path through pyarrow (pandas.read_parquet hands pyarrow an open
    # file, which aborted at interpreter exit with pyarrow 26: docs/parquet.md)
    import pyarrow.parquet as pq

    frame = pq.read_table(path).to_pandas()
    return frame[[f"f{j}" for j in range(FEATURES)]].to_numpy(), frame["y"].to_numpy()


def write_polars(path, x, y):
    import polars as pl

    pl.DataFrame({"x": pl.Series(x), "y": y}).write_parquet(path, row_group_size=16384)


def read_polars(path):
    import polars as pl

    frame = pl.read_parquet(path)
    return frame["x"].to_numpy(), frame["y"].to_numpy()


def write_datasets(path, x, y):
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, Sequence, Value
    from datasets.table import InMemoryTable
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    features = Features({"x": Sequence(Value("float32"), length=FEATURES), "y": ClassLabel(num_classes=CLASSES)})
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
    table = pa.table({"x": column, "y": y}).cast(features.arrow_schema)
    Dataset(InMemoryTable(table), info=DatasetInfo(features=features)).save_to_disk(str(path))


def read_datasets(path):
    from datasets import Dataset

    rows = Dataset.load_from_disk(str(path)).with_format("numpy")[:]
    return rows["x"], rows["y"]


def write_matlab(path, x, y):
    import hdf5storage

    hdf5storage.savemat(str(path), {"x": x, "y": y}, format="7.3", matlab_compatible=True)


def read_matlab(path):
    import hdf5storage

    found = hdf5storage.loadmat(str(path), variable_names=["x", "y"])
    return found["x"], found["y"]


def write_netcdf(path, x, y):
    import netCDF4

    with netCDF4.Dataset(str(path), "w") as f:
        f.createDimension("sample", len(x))
        f.createDimension("feature", FEATURES)
        f.createVariable("x", "f4", ("sample", "feature"))[:] = x
        f.createVariable("y", "i8", ("sample",))[:] = y


def read_netcdf(path):
    import netCDF4

    with netCDF4.Dataset(str(path), "r") as f:
        return np.asarray(f["x"][:]), np.asarray(f["y"][:])


def png_bytes(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_images(path, x, y):
    for i, (image, label) in enumerate(zip(x, y)):
        folder = path / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.png").write_bytes(png_bytes(image))


def read_images(path):
    from PIL import Image

    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in path.iterdir() if p.is_dir())):
        for file in sorted(folder.iterdir()):
            with Image.open(file) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_wds(path, x, y):
    if have("webdataset"):
        import webdataset as wds

        with wds.TarWriter(str(path)) as sink:
            for i, (image, label) in enumerate(zip(x, y)):
                sink.write({"__key__": f"{i:06d}", "png": png_bytes(image), "cls": int(label)})
        return
    with tarfile.open(path, "w") as tar:
        for i, (image, label) in enumerate(zip(x, y)):
            for ext, data in (("png", png_bytes(image)), ("cls", str(int(label)).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def read_wds(path):
    import webdataset as wds

    images, labels = [], []
    for image, label in wds.WebDataset(str(path), shardshuffle=False).decode("rgb8").to_tuple("png", "cls"):
        images.append(image)
        labels.append(label)
    return np.stack(images), np.array(labels)


NUMERIC = {"x_key": "x", "y_key": "y"}
IMAGES = {"x_key": "x", "y_key": "y", "image_size": IMAGE[0]}
FORMATS = [
    ("h5py", "h5py", "HDF5, chunks of 1024 rows", "h5py", ".h5", write_h5py, read_h5py, NUMERIC),
    ("pytables", "PyTables", "HDF5 CArray, chunks of 1024 rows", "tables", ".h5", write_tables, read_tables, NUMERIC),
    ("npy", "numpy.save", "folder of .npy", "numpy", "", write_npy, read_npy, NUMERIC),
    ("npz", "numpy.savez", ".npz, stored", "numpy", ".npz", write_npz, read_npz, NUMERIC),
    ("zarr", "zarr", "Zarr v3, chunks of 4096 rows", "zarr", ".zarr", write_zarr, read_zarr, NUMERIC),
    (
        "parquet-pyarrow",
        "pyarrow",
        "fixed_size_list column, row groups of 16384",
        "pyarrow",
        ".parquet",
        write_pyarrow,
        read_pyarrow,
        NUMERIC,
    ),
    (
        "parquet-pandas",
        "pandas",
        f"{FEATURES} float columns (--x-key 'f*'), row groups of 16384",
        "pandas",
        ".parquet",
        write_pandas,
        read_pandas,
        {"x_key": "f*", "y_key": "y"},
    ),
    (
        "parquet-polars",
        "polars",
        "Array column, row groups of 16384",
        "polars",
        ".parquet",
        write_polars,
        read_polars,
        NUMERIC,
    ),
    (
        "datasets",
        "datasets",
        "save_to_disk folder, Sequence + ClassLabel",
        "datasets",
        "",
        write_datasets,
        read_datasets,
        NUMERIC,
    ),
    ("matlab", "hdf5storage", "MATLAB v7.3 .mat", "hdf5storage", ".mat", write_matlab, read_matlab, NUMERIC),
    ("netcdf", "netCDF4", "netCDF-4 .nc", "netCDF4", ".nc", write_netcdf, read_netcdf, NUMERIC),
    ("images", "Pillow", "folder of 32x32 PNG by class", "PIL", "", write_images, read_images, IMAGES),
    ("webdataset", "webdataset", "one .tar shard, png + cls", "webdataset", ".tar", write_wds, read_wds, IMAGES),
]


# ---------------------------------------------------------------- the floor's write and the check


def h5py_write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """An output of mixup's size: x, one-hot y (float32), lam, partner; written and synced."""
    n = len(x)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x)
        f.create_dataset("y", data=np.eye(CLASSES, dtype=np.float32)[np.asarray(y, dtype=np.int64)])
        f.create_dataset("lam", data=np.zeros(n))
        f.create_dataset("partner", data=np.arange(n))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def formula_ok(out: Path, x: np.ndarray, y: np.ndarray) -> bool:
    with h5py.File(out, "r") as f:
        key = next(k for k in f if k not in ("lam", "partner") and f[k].ndim == 2 and f[k].shape[1] == FEATURES)
        got_x, got_y, lam, partner = f[key][()], f["y"][()], f["lam"][()], f["partner"][()]
    l = lam.astype(np.float32)[:, None]
    onehot = np.eye(CLASSES, dtype=np.float32)[y]
    return (
        len(lam) == len(x)
        and np.array_equal(got_x, l * x + (1 - l) * x[partner])
        and np.array_equal(got_y, l * onehot + (1 - l) * onehot[partner])
    )


def run_format(fmt, work: Path, data, image_data, repeats: int) -> tuple:
    name, writer, layout, _needs, suffix, write, read, keywords = fmt
    image = keywords is IMAGES
    x, y = image_data if image else data
    src, out, floor_out = work / f"{name}{suffix}", work / f"{name}-out.h5", work / f"{name}-floor.h5"
    write(src, x, y)
    mixup_s = floor_s = float("inf")
    for _ in range(repeats):  # the two sides alternate; the best of each
        start = time.perf_counter()
        mixup_cli.augment(src, out, seed=1, overwrite=True, **keywords)
        mixup_s = min(mixup_s, time.perf_counter() - start)
        start = time.perf_counter()
        got_x, got_y = read(src)
        h5py_write(floor_out, got_x, got_y)
        floor_s = min(floor_s, time.perf_counter() - start)
        del got_x, got_y
    ok = mixup_cli.verify(out).ok if image else formula_ok(out, x, y)
    for path in (src, out, floor_out):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for extra in work.glob(f"{name}-out.h5*"):
        extra.unlink()
    return name, writer, layout, ok, mixup_s, floor_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of x of the numeric formats (MB)")
    parser.add_argument("--image-mb", type=float, default=10.0, help="size of the decoded images (MB)")
    parser.add_argument("--formats", default="", help="comma-separated names (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating; the best is shown")
    parser.add_argument("--workdir", default=None)
    installed.add_arguments(parser)
    args = parser.parse_args()
    kernel = installed.check(args)
    wanted = [f for f in FORMATS if not args.formats or f[0] in args.formats.split(",")]
    rng = np.random.default_rng(0)
    rows = max(16, int(args.mb * 1e6 / (4 * FEATURES)))
    data = (rng.standard_normal((rows, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, rows))
    images = max(16, int(args.image_mb * 1e6 / np.prod(IMAGE)))
    labels = np.sort(rng.integers(0, CLASSES, images))  # by class: the folder's order is the data's
    image_data = (rng.integers(0, 256, (images,) + IMAGE, dtype=np.uint8), labels)
    print(
        f"x: {rows} x {FEATURES} float32 ({rows * FEATURES * 4 / 1e6:.0f} MB), y: labels of {CLASSES} classes; "
        f"images: {images} PNG {IMAGE[0]}x{IMAGE[1]} RGB ({images * np.prod(IMAGE) / 1e6:.0f} MB decoded); "
        f"mixup {mixup_cli.__version__}, kernel {kernel}, in-process API; {os.cpu_count()} CPUs"
    )
    work = Path(tempfile.mkdtemp(prefix="mixup-bench-formats-", dir=args.workdir))
    rows_out, missing = [], []
    begin = time.perf_counter()
    try:
        for fmt in wanted:
            if not have(fmt[3]):
                missing.append(f"{fmt[0]} ({fmt[3]} not installed)")
                continue
            rows_out.append(run_format(fmt, work, data, image_data, args.repeats))
            print(f"  {fmt[0]} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| format | writer | layout | result OK | mixup s | floor s | ratio |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for name, writer, layout, ok, mixup_s, floor_s in rows_out:
        print(
            f"| {name} | {writer} | {layout} | {'yes' if ok else 'NO'} | {mixup_s:.2f} | {floor_s:.2f} | "
            f"{mixup_s / floor_s:.2f} |"
        )
    if missing:
        print(f"\nleft out: {', '.join(missing)}")
    load = os.getloadavg()[0]
    print(f"\ntotal {time.perf_counter() - begin:.0f} s; 1-minute load average at the end: {load:.2f}")
    return 0 if all(r[3] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
