"""Local engine vs ``--engine dask --workers N`` on one generated dataset.

Writes an HDF5 input of at least ``--size-mb`` MiB (float32 images in [0, 1]
plus one-hot labels) under a temporary directory, runs ``mixup augment``
with gzip output through each engine, checks that every run wrote the same
bytes, prints a Markdown table, and deletes everything it wrote.

    python bench/bench_dask.py                       # 512 MiB, 2 workers
    python bench/bench_dask.py --size-mb 1024 --workers 4 --tmp /scratch
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent

import installed  # noqa: E402  (the installed mixup_cli for the subprocesses)

ROW_SHAPE = (32, 32, 3)
CLASSES = 10


def make_input(path: Path, size_mb: int) -> int:
    row_bytes = int(np.prod(ROW_SHAPE)) * 4 + CLASSES * 4
    rows = -(-size_mb * 1024 * 1024 // row_bytes)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", shape=(rows,) + ROW_SHAPE, dtype=np.float32, chunks=(256,) + ROW_SHAPE)
        y = f.create_dataset("y", shape=(rows, CLASSES), dtype=np.float32, chunks=(4096, CLASSES))
        for start in range(0, rows, 4096):
            stop = min(rows, start + 4096)
            x[start:stop] = rng.integers(0, 256, (stop - start,) + ROW_SHAPE, dtype=np.uint8) / np.float32(255)
            y[start:stop] = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, stop - start)]
    return rows


def digest(path: Path) -> str:
    """SHA-256 over the arrays' bytes (not the files: containers differ)."""
    h = hashlib.sha256()
    if path.suffix == ".zarr":
        import zarr

        root = zarr.open_group(str(path), mode="r")
        get = lambda key: root[key]  # noqa: E731
    else:
        f = h5py.File(path, "r")
        get = lambda key: f[key]  # noqa: E731
    for key in ("x", "y", "lam", "partner"):
        arr = get(key)
        for start in range(0, arr.shape[0], 8192):
            h.update(np.ascontiguousarray(arr[start : start + 8192]).tobytes())
    return h.hexdigest()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run(args: list[str]) -> float:
    env = installed.env()
    t0 = time.perf_counter()
    subprocess.run(installed.mixup() + ["augment", *map(str, args)], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    installed.add_arguments(parser)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="where the data goes (default: the system's temporary directory)")
    opts = parser.parse_args()
    installed.check(opts)
    print(installed.header(), flush=True)

    work = Path(tempfile.mkdtemp(prefix="mixup-bench-", dir=opts.tmp))
    try:
        src = work / "in.h5"
        rows = make_input(src, opts.size_mb)
        mb = src.stat().st_size / 2**20
        print(
            f"input: {rows} rows of {ROW_SHAPE} float32 + {CLASSES} one-hot, {mb:.0f} MiB; "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
            flush=True,
        )
        common = ["--seed", 7, "--compression", "gzip", "--quiet"]
        dask = ["--engine", "dask", "--workers", opts.workers]
        cases = [
            ("local", "out-local.h5", []),
            (f"dask, {opts.workers} workers", "out-dask.h5", dask),
            ("local", "out-local.zarr", []),
            (f"dask, {opts.workers} workers", "out-dask.zarr", dask),
        ]
        results, digests = [], set()
        for engine, name, extra in cases:
            out = work / name
            seconds = run([src, out, *common, *extra])
            digests.add(digest(out))
            results.append((engine, name.split(".")[-1], seconds, size_of(out) / 2**20))
            print(f"  {engine:<18} {name:<16} {seconds:7.1f} s", flush=True)
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        assert len(digests) == 1, "engines disagree"
        print("\nidentical x, y, lam, partner in every run\n")
        print("| engine | output (gzip) | seconds | MiB/s of input | output MiB |")
        print("| --- | --- | ---: | ---: | ---: |")
        for engine, fmt, seconds, out_mb in results:
            print(
                f"| {engine} | {'HDF5' if fmt == 'h5' else 'Zarr'} | {seconds:.1f} | {mb / seconds:.0f} | {out_mb:.0f} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
