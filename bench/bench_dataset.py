"""Rows per second read from a mixup output through MixupDataset, against h5py.

Writes an input of --rows rows of float32 x (--row-shape) and integer labels,
runs `mixup augment` on it once per --compression, then reads each output:
random single rows with h5py (x alone, the floor of what a reader can do),
random single rows and random batches through MixupDataset (every array of
a row: x, y, lam, partner), and sequential batches. With torch installed, also a
DataLoader (2 workers, shuffle=True, batch 64) over the whole output.

    python bench/bench_dataset.py                 # 10,000 rows of 3x32x32, none and gzip
    python bench/bench_dataset.py --rows 2000 --row-shape 3,64,64
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)

from mixup_cli.commands.dataset import MixupDataset  # noqa: E402


def rate(n, seconds):
    return f"{n / seconds:>10,.0f}"


def timed(fn, n):
    t = time.perf_counter()
    fn()
    return rate(n, time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(ap)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--row-shape", default="3,32,32")
    ap.add_argument("--reads", type=int, default=2000, help="random rows read per measure")
    ap.add_argument("--compression", default="none,gzip")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    shape = tuple(int(s) for s in args.row_shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench_dataset.", dir=args.workdir))
    env = installed.env()
    try:
        rng = np.random.default_rng(0)
        src = work / "in.h5"
        with h5py.File(src, "w") as f:
            d = f.create_dataset("x", (args.rows,) + shape, "f4")
            for a in range(0, args.rows, 1024):
                b = min(a + 1024, args.rows)
                d[a:b] = rng.random((b - a,) + shape, dtype=np.float32)
            f["y"] = rng.integers(0, 10, args.rows)
        print(
            f"{args.rows:,} rows of x {shape} float32 ({args.rows * np.prod(shape) * 4 / 2**20:,.0f} MiB), "
            f"{args.reads:,} random reads; rows/s"
        )
        print(
            f"{'output':<8}{'MiB':>8}{'x chunk':>14}{'h5py row':>10}{'ds[i]':>10}{'ds[64 idx]':>11}"
            f"{'ds[i:i+64]':>11}{'DataLoader':>11}"
        )
        for comp in args.compression.split(","):
            out = work / f"out-{comp}.h5"
            subprocess.run(
                installed.mixup() + ["augment", str(src), str(out), "--seed", "1", "--compression", comp, "--quiet"],
                check=True,
                env=env,
            )
            idx = rng.integers(0, args.rows, args.reads)
            with h5py.File(out, "r") as f:
                chunk = f["x"].chunks
                x = f["x"]
                h5 = timed(lambda: [x[int(i)] for i in idx], len(idx))
            ds = MixupDataset(out)
            one = timed(lambda: [ds[int(i)] for i in idx], len(idx))
            batches = idx[: len(idx) // 64 * 64].reshape(-1, 64)
            many = timed(lambda: [ds[b] for b in batches], batches.size)
            seq = timed(lambda: [ds[a : a + 64] for a in range(0, len(ds), 64)], len(ds))
            loader = "-"
            try:
                import torch
            except ImportError:
                pass
            else:
                dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
                loader = timed(lambda: [b for b in dl], len(ds))
            ds.close()
            size = out.stat().st_size / 2**20
            print(
                f"{comp:<8}{size:>8,.0f}{str(chunk[0]) + ' rows':>14}{h5:>10}{one:>10}{many:>11}{seq:>11}{loader:>11}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
