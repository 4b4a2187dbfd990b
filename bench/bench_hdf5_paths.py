"""The HDF5 reader's own paths against HDF5's reading, A/B, end to end.

    python bench/bench_hdf5_paths.py [--rows 262144] [--cols 64] [--repeats 3] [--layouts a,b] [--workdir /tmp]

Writes the same kind of data (``x`` float32 rows, values rounded to a tenth
so that gzip finds something to share, and ``y`` integer labels of 10
classes) in each layout users have: contiguous, chunks of whole rows,
chunks of part of a row (1 x 256 of 1,024 columns), one chunk for the whole
array, gzip, byte shuffle + gzip, lzf (chunks of 64 KiB) and a file written
by netCDF4 (its default chunks, zlib and shuffle). Then, for each layout,
times with the reader's own paths on (``on``: ``os.preadv`` of plain rows
at their byte offsets, blocks and rows by index) and off (``off``: every
read through h5py, ``read_direct`` of the rows asked; rows by index one
HDF5 read per chunk, or h5py's point selection in contiguous storage).
Compressed layouts are read by HDF5 on both sides (with a chunk cache
holding the chunks a row crosses where they are bigger than HDF5's 1 MiB
default): their ``on``/``off`` differ only where a run reads an
uncompressed copy (``take`` on compressed input: the scratch copy).

- ``global``, ``batch``: ``mixup_cli.augment(IN, OUT.h5)`` with that
  pairing (rows read block by block: ``Reader.read_into``);
- ``take``: ``mixup_cli.augment(IN, OUT.h5, pairing="within-class")``,
  whose partners are read by index (``Reader.take``; on compressed input
  from the uncompressed scratch copy it makes first);
- ``h5py read whole + write``, for the one-chunk gzip layout: h5py's read
  of the whole array and its write to an uncompressed file (the floor the
  ``global`` run must stay within 3x of).

for the uncompressed layouts, ``global`` again with one path off and the
other on (``only raw-read off``, ``only raw-take off``); and, for the training reader (``MixupDataset`` over an uncompressed mixup
output), ``ds[rows]`` of 400 batches of 256 random sorted rows and a pass of
256-row slices, with its ``pread`` of plain rows on and off.

The switch is the environment variable ``MIXUP_HDF5_OFF`` (names of paths,
comma-separated), read in one place, ``mixup_cli.io.hdf5.own_paths``; this
script sets it in its own process between runs. ``on`` and ``off`` run
alternately (their order swapped each round), the page cache warm on both
sides (the input was just written); the best of ``--repeats`` (3) is shown
with the ratio off / on (above 1: the own path is faster) and the load
average before and after. On a shared machine compare ratios, and rerun
before believing a small gap: with the same code on both sides (the
compressed layouts) the ratio ranged 0.7-1.6 at a load average of 9-15.

One run (2 shared CPUs, load average 4.5-5.6, 64 MiB, h5py 3.16, HDF5 2.0):
rows by index at computed offsets 3.6x (contiguous), 2.0x (chunks of
whole rows) and 2.6x (one chunk) end to end with global pairing; chunks
splitting rows read as stored 1.75x with batch pairing; MixupDataset's
pread of random batches 3.9x; one gzip chunk for the whole array 1.8x
h5py's read of it and its write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)
import numpy as np

import mixup_cli  # noqa: E402
from mixup_cli.io.hdf5 import OWN_PATHS  # noqa: E402

ALL_OFF = ",".join(OWN_PATHS)
KiB = 1 << 10


def _data(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((rows, cols)).astype(np.float32) * 10) / 10
    return x.astype(np.float32), rng.integers(0, 10, rows).astype(np.int64)


def _h5(path: Path, x: np.ndarray, y: np.ndarray, **kw) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, **kw)
        f.create_dataset("y", data=y)


def _netcdf(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    import netCDF4

    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("sample", x.shape[0])
        nc.createDimension("feature", x.shape[1])
        v = nc.createVariable("x", "f4", ("sample", "feature"), zlib=True)
        v[:] = x
        w = nc.createVariable("y", "i8", ("sample",))
        w[:] = y


def make_layouts(where: Path, rows: int, cols: int, wanted: set[str] | None) -> dict[str, Path]:
    x, y = _data(rows, cols)
    rows_64k = max(1, (64 * KiB) // (cols * 4))
    rows_1m = max(1, (1024 * KiB) // (cols * 4))
    wide = x.reshape(rows * cols // 1024, 1024) if (rows * cols) % 1024 == 0 else None
    layouts = {
        "contiguous": lambda p: _h5(p, x, y),
        "row chunks (1 MiB)": lambda p: _h5(p, x, y, chunks=(rows_1m, cols)),
        "part-row chunks (1 x 256)": lambda p: _h5(p, wide, y[: len(wide)], chunks=(1, 256)),
        "single chunk": lambda p: _h5(p, x, y, chunks=x.shape),
        "gzip (64 KiB)": lambda p: _h5(p, x, y, chunks=(rows_64k, cols), compression="gzip"),
        "shuffle+gzip (64 KiB)": lambda p: _h5(p, x, y, chunks=(rows_64k, cols), compression="gzip", shuffle=True),
        "lzf (64 KiB)": lambda p: _h5(p, x, y, chunks=(rows_64k, cols), compression="lzf"),
        "single chunk gzip": lambda p: _h5(p, x, y, chunks=x.shape, compression="gzip"),
        "netCDF4 (zlib, its chunks)": lambda p: _netcdf(p, x, y),
    }
    made = {}
    for i, (name, write) in enumerate(layouts.items()):
        if wanted and name.split(" ")[0] not in wanted and name not in wanted:
            continue
        if name.startswith("netCDF4"):
            try:
                import netCDF4  # noqa: F401
            except ImportError:
                print(f"{name}: left out (netCDF4 is not installed)")
                continue
        path = where / f"in{i}.{'nc' if name.startswith('netCDF4') else 'h5'}"
        write(path)
        made[name] = path
    return made


def _describe(path: Path) -> str:
    with h5py.File(path, "r") as f:
        ds = f["x"]
        filters = "+".join(k for k in ("shuffle", "compression") if getattr(ds, k)) or "none"
        return f"chunks {ds.chunks}, {ds.compression or filters}{'+shuffle' if ds.shuffle else ''}"


def _augment(src: Path, out: Path, pairing: str) -> None:
    mixup_cli.augment(src, out, alpha=0.2, seed=1, pairing=pairing, overwrite=True)


def _h5py_floor(src: Path, out: Path) -> None:
    with h5py.File(src, "r") as f:
        x, y = f["x"][()], f["y"][()]
    with h5py.File(out, "w") as g:
        g["x"], g["y"] = x, y
        g.flush()
        os.fsync(g.id.get_vfd_handle())


def _dataset_reads(out: Path, sliced: bool) -> None:
    with mixup_cli.MixupDataset(out) as ds:
        n = len(ds)
        if sliced:
            for start in range(0, n, 256):
                ds[start : min(n, start + 256)]
        else:
            rng = np.random.default_rng(5)
            for _ in range(400):
                ds[np.sort(rng.choice(n, 256, replace=False))]


def _timed(fn, off: str | None) -> float:
    if off:
        os.environ["MIXUP_HDF5_OFF"] = off
    else:
        os.environ.pop("MIXUP_HDF5_OFF", None)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ab(label: str, fn, off: str, repeats: int, rows: list) -> None:
    best = {"on": float("inf"), "off": float("inf")}
    for r in range(repeats):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for side in order:
            best[side] = min(best[side], _timed(fn, None if side == "on" else off))
    os.environ.pop("MIXUP_HDF5_OFF", None)
    rows.append((label, best["on"], best["off"]))
    print(f"| {label} | {best['on']:.2f} | {best['off']:.2f} | {best['off'] / best['on']:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layouts", default="", help="first words of the layouts to run (comma-separated)")
    ap.add_argument("--modes", default="global,batch,take", help="end-to-end runs: global, batch, take")
    ap.add_argument("--no-dataset", action="store_true", help="leave out the training reader")
    ap.add_argument("--workdir", default=None)
    installed.add_arguments(ap)
    args = ap.parse_args()
    kernel = installed.check(args)
    wanted = {w.strip() for w in args.layouts.split(",") if w.strip()} or None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    pairing = {"global": "global", "batch": "batch", "take": "within-class"}
    where = Path(tempfile.mkdtemp(prefix="mixup-hdf5ab-", dir=args.workdir))
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    print(f"core.KERNEL = {kernel!r}; h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")
    print(f"x: {args.rows} x {args.cols} float32 ({args.rows * args.cols * 4 / 2**20:.0f} MiB); best of {args.repeats}")
    rows: list = []
    try:
        made = make_layouts(where, args.rows, args.cols, wanted)
        print("\n| layout x run | on s | off s | off / on |\n| --- | --- | --- | --- |")
        out = where / "out.h5"
        for name, src in made.items():
            print(f"| **{name}**: {_describe(src)} | | | |", flush=True)
            for mode in modes:
                ab(f"{name}: {mode}", lambda s=src, m=mode: _augment(s, out, pairing[m]), ALL_OFF, args.repeats, rows)
            if "global" in modes and "gzip" not in name and "lzf" not in name and "zlib" not in name:
                for path in ("raw-read", "raw-take"):  # one path off, the other on
                    run = lambda s=src: _augment(s, out, "global")  # noqa: E731
                    ab(f"{name}: global, only {path} off", run, path, args.repeats, rows)
            if name == "single chunk gzip":
                floor = min(_timed(lambda s=src: _h5py_floor(s, where / "floor.h5"), None) for _ in range(args.repeats))
                on = next(r[1] for r in rows if r[0] == f"{name}: global") if "global" in modes else None
                ratio = f"{on / floor:.2f}x the floor" if on else ""
                print(f"| {name}: h5py read whole + write | {floor:.2f} | | {ratio} |", flush=True)
        if not args.no_dataset:
            x, y = _data(args.rows, args.cols)
            src = where / "train_in.h5"
            _h5(src, x, y, chunks=(max(1, 4096 * 64 // args.cols), args.cols))
            out = where / "train_out.h5"
            _augment(src, out, "global")
            print(f"| **training reader**: {_describe(out)} | | | |", flush=True)
            off = "dataset-pread"
            ab("MixupDataset: 400 x ds[256 random rows]", lambda: _dataset_reads(out, False), off, args.repeats, rows)
            ab("MixupDataset: ds[i:i+256] over all rows", lambda: _dataset_reads(out, True), off, args.repeats, rows)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
