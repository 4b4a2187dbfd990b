"""HDF5 output chunking against the reader: size, write time, read rates.

Writes an image-like input (--rows rows of float32 x, --row-shape, values
k/255 of smooth patterns plus noise, as images scaled to [0, 1] are, and
integer labels), then for each storage choice runs `mixup augment` on it
(a subprocess; wall time, median of --repeat) and reads the output's x:

- seq: every row in order, 1024-row slices with h5py (rows/s);
- random: --reads single rows at random indices with h5py `ds[i]` (rows/s);
- dataset: the same random rows through MixupDataset (every array of a row);
- loader: with torch installed, a DataLoader (2 workers, shuffle=True,
  batch 64) over MixupDataset, the whole output once; "-" without torch.

Choices: compression none, gzip, lzf; chunks of about 16 KiB, 64 KiB,
256 KiB and 1 MiB (`--chunk-rows`: the power of two of rows nearest below,
as chunks must divide the power-of-two block rows); byte shuffle on and off
for gzip and lzf; and the defaults (no storage option) of each compression.

    python bench/bench_chunking.py                   # 20,000 rows of 3x32x32
    python bench/bench_chunking.py --rows 4000 --row-shape 3,64,64 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)

from mixup_cli.commands.dataset import MixupDataset  # noqa: E402


def image_like(rng, n, shape):
    """Smooth patterns with noise, quantized to k/255 as scaled 8-bit images."""
    c, h, w = (shape + (1, 1, 1))[:3] if len(shape) < 3 else shape[-3:]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n,) + shape, np.float32)
    for i in range(n):
        f = rng.uniform(1, 6, (c, 2, 1, 1))
        img = 0.5 + 0.4 * np.sin(f[:, 0] * 6.28 * xx + f[:, 1] * 6.28 * yy + rng.uniform(0, 6.28, (c, 1, 1)))
        img += rng.normal(0, 0.05, img.shape)
        out[i] = (np.clip(np.round(img * 255), 0, 255) / 255).astype(np.float32).reshape(shape)
    return out


def choices(row_bytes):
    sizes = {"16K": 16 << 10, "64K": 64 << 10, "256K": 256 << 10, "1M": 1 << 20}
    yield "none", "default", None, None
    yield "gzip", "default", None, None
    yield "lzf", "default", None, None
    for comp in ("none", "gzip", "lzf"):
        for label, nbytes in sizes.items():
            rows = 1 << max(0, (nbytes // row_bytes).bit_length() - 1)
            for shuffle in (None,) if comp == "none" else (True, False):
                yield comp, label, rows, shuffle


def rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(ap)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--row-shape", default="3,32,32")
    ap.add_argument("--reads", type=int, default=2000, help="random rows read per measure")
    ap.add_argument("--repeat", type=int, default=2, help="augment runs per choice (median wall time)")
    ap.add_argument("--compression", default="none,gzip,lzf", help="compressions measured (comma-separated)")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    shape = tuple(int(s) for s in args.row_shape.split(","))
    row_bytes = int(np.prod(shape)) * 4
    work = Path(tempfile.mkdtemp(prefix="bench_chunking.", dir=args.workdir))
    env = installed.env()
    try:
        import torch
    except ImportError:
        torch = None
    try:
        rng = np.random.default_rng(0)
        src = work / "in.h5"
        with h5py.File(src, "w") as f:
            d = f.create_dataset("x", (args.rows,) + shape, "f4")
            for a in range(0, args.rows, 1024):
                b = min(a + 1024, args.rows)
                d[a:b] = image_like(rng, b - a, shape)
            f["y"] = rng.integers(0, 10, args.rows)
        print(
            f"{args.rows:,} rows of x {shape} float32 ({args.rows * row_bytes / 2**20:,.0f} MiB) + y; "
            f"cpus {os.cpu_count()}; load {os.getloadavg()[0]:.1f}; read rates in rows/s "
            f"({args.reads:,} random rows){'' if torch else '; no torch: loader skipped'}"
        )
        print(
            f"{'compression':<12}{'chunk':>8}{'rows':>6}{'shuffle':>8}{'MiB':>8}{'write s':>9}"
            f"{'seq':>10}{'random':>9}{'dataset':>9}{'loader':>9}"
        )
        idx = rng.integers(0, args.rows, args.reads)
        for comp, label, chunk_rows, shuffle in choices(row_bytes):
            if comp not in args.compression.split(","):
                continue
            out = work / "out.h5"
            cmd = installed.mixup() + [
                "augment",
                str(src),
                str(out),
                "--seed",
                "1",
                "--compression",
                comp,
                "--quiet",
                "--overwrite",
            ]
            if chunk_rows:
                cmd += ["--chunk-rows", str(chunk_rows)]
            if shuffle is not None:
                cmd += ["--byte-shuffle" if shuffle else "--no-byte-shuffle"]
            walls = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, env=env)
                walls.append(time.perf_counter() - t)
            with h5py.File(out, "r") as f:
                x = f["x"]
                rows, shuffled = x.chunks[0], x.shuffle
                t = time.perf_counter()
                for a in range(0, args.rows, 1024):
                    x[a : a + 1024]
                seq = rate(args.rows, time.perf_counter() - t)
                t = time.perf_counter()
                for i in idx:
                    x[int(i)]
                rnd = rate(len(idx), time.perf_counter() - t)
            ds = MixupDataset(out)
            t = time.perf_counter()
            for i in idx:
                ds[int(i)]
            dsr = rate(len(idx), time.perf_counter() - t)
            loader = "-"
            if torch is not None:
                dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
                t = time.perf_counter()
                for _ in dl:
                    pass
                loader = f"{rate(len(ds), time.perf_counter() - t):,.0f}"
            ds.close()
            size = out.stat().st_size / 2**20
            name = label if label == "default" else f"~{label}"
            sh = "-" if comp == "none" else ("on" if shuffled else "off")
            print(
                f"{comp:<12}{name:>8}{rows:>6}{sh:>8}{size:>8,.0f}{statistics.median(walls):>9.2f}"
                f"{seq:>10,.0f}{rnd:>9,.0f}{dsr:>9,.0f}{loader:>9}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
