"""`mixup augment` over HDF5 chunk layouts, against h5py reading the same
arrays whole and writing them to a new HDF5 file.

    python bench/bench_layouts.py [--rows-scale 1.0] [--only NAME] [--keep DIR]

Layouts: one row per chunk (images), part-row chunks (chunks not spanning a
row), 1 x 64 chunks with 100k rows, each with and without gzip, the whole
array in one gzip chunk, and a file
written by the netCDF4 library (unlimited first dimension, zlib + shuffle,
chunks 1 x 64). Every run mixes x alone (``--no-y``), writes uncompressed
HDF5 and the sidecar; the h5py baseline is timed in this process (no
interpreter start-up) and does not fsync (mixup does, before renaming its
output into place), so the ratio is, if anything, pessimistic for mixup; a
second baseline adds the fsync, and a third runs that copy as a script in
a new interpreter (what a shell job would run instead of mixup: it pays
the start-up and imports too). Target: at most 2x h5py on every layout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent

import installed  # noqa: E402  (the installed mixup_cli for the subprocesses)

# name: (shape, chunks, gzip, writer)
LAYOUTS = {
    "row-chunks (30k uint8 images 64 x 64, 1 per chunk)": ((30_000, 64, 64), (1, 64, 64), False, "h5py"),
    "row-chunks gzip": ((30_000, 64, 64), (1, 64, 64), True, "h5py"),
    "part-row (100k x 256, chunks 1 x 64)": ((100_000, 256), (1, 64), False, "h5py"),
    "part-row gzip": ((100_000, 256), (1, 64), True, "h5py"),
    "1 x 64 (100k x 64, chunks 1 x 64)": ((100_000, 64), (1, 64), False, "h5py"),
    "1 x 64 gzip": ((100_000, 64), (1, 64), True, "h5py"),
    "netCDF4 (100k x 64, unlimited, zlib+shuffle, 1 x 64)": ((100_000, 64), (1, 64), True, "netcdf4"),
    "one chunk gzip (1M x 64 in a single 256 MB chunk)": ((1_000_000, 64), (1_000_000, 64), True, "h5py"),
}


def make(path: Path, shape, chunks, gzip: bool, writer: str) -> None:
    rng = np.random.default_rng(0)
    # Smooth-ish values so gzip has something to do, as in real data;
    # images (3-D) as uint8 pixels, the rest float32.
    x = (rng.standard_normal(shape).cumsum(axis=-1) / 8).astype(np.float32)
    if len(shape) == 3:
        x = np.clip(x * 16 + 128, 0, 255).astype(np.uint8)
    if writer == "netcdf4":
        import netCDF4

        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("sample", None)
            nc.createDimension("feature", shape[1])
            v = nc.createVariable("x", "f4", ("sample", "feature"), zlib=True, shuffle=True, chunksizes=chunks)
            for i in range(0, shape[0], 10_000):  # appended along the unlimited dimension
                v[i : i + 10_000] = x[i : i + 10_000]
        return
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=chunks, compression="gzip" if gzip else None, shuffle=gzip)


def h5py_copy(src: Path, dst: Path, sync: bool = False) -> float:
    """Read x whole, write it to a new file; with ``sync``, also fsync it
    (as mixup does before it renames its output into place)."""
    t = time.perf_counter()
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key in ("x",):
            g.create_dataset(key, data=f[key][()])
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t


_COPY_SCRIPT = """
import os, sys, h5py
with h5py.File(sys.argv[1], "r") as f, h5py.File(sys.argv[2], "w") as g:
    g.create_dataset("x", data=f["x"][()])
fd = os.open(sys.argv[2], os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


def h5py_script(src: Path, dst: Path) -> float:
    """The synced copy as a script in a new interpreter, timed from outside."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _COPY_SCRIPT, str(src), str(dst)], check=True)
    return time.perf_counter() - t


def mixup(src: Path, dst: Path) -> float:
    env = installed.env()
    cmd = installed.mixup() + ["augment", str(src), str(dst), "--no-y", "--seed", "1", "--quiet", "--overwrite"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(ap)
    ap.add_argument("--rows-scale", type=float, default=1.0, help="scale the rows of every layout")
    ap.add_argument("--only", help="run the layouts whose name contains this")
    ap.add_argument("--repeat", type=int, default=1, help="best of this many runs of each")
    ap.add_argument("--keep", type=Path, help="folder for the files (default: a temporary one, removed)")
    args = ap.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_layouts"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, (shape, chunks, gzip, writer) in LAYOUTS.items():
            if args.only and args.only not in name:
                continue
            shape = (max(1, int(shape[0] * args.rows_scale)),) + shape[1:]
            src = work / ("in.nc" if writer == "netcdf4" else "in.h5")
            make(src, shape, chunks, gzip, writer)
            base = min(h5py_copy(src, work / "copy.h5") for _ in range(args.repeat))
            synced = min(h5py_copy(src, work / "copy.h5", sync=True) for _ in range(args.repeat))
            script = min(h5py_script(src, work / "copy.h5") for _ in range(args.repeat))
            ours = min(mixup(src, work / "out.h5") for _ in range(args.repeat))
            rows.append((name, shape, base, synced, script, ours))
            print(
                f"{name}: h5py {base:.2f} s (+fsync {synced:.2f} s), mixup {ours:.2f} s, {ours / base:.2f}x", flush=True
            )
            for p in work.iterdir():
                if p.is_file():
                    p.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "| layout | rows | h5py read + write (s) | same + fsync (s) | same as a script (s) | `mixup augment` (s) "
        "| ratio | ratio to h5py + fsync | ratio to the script |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, shape, base, synced, script, ours in rows:
        print(
            f"| {name} | {shape[0]:,} | {base:.2f} | {synced:.2f} | {script:.2f} | {ours:.2f} | {ours / base:.2f}x "
            f"| {ours / synced:.2f}x | {ours / script:.2f}x |"
        )


if __name__ == "__main__":
    main()
