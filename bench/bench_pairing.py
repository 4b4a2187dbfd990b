"""Pairing benchmark: the cost of each ``--pairing`` mode on one file.

    python bench/bench_pairing.py [--rows 42000] [--repeats 2] [--workdir /tmp] [--input-compression gzip [--no-scratch]]

Writes an HDF5 file of float32 x (32x32x3 per row, chunks of 256 rows) and
one-hot y[10] sorted by class (about 0.5 GB with the default rows) under a
temporary folder in ``--workdir``, then runs ``mixup augment`` through the
library for every pairing mode, uncompressed, alternating the modes in each
repeat, and prints the median wall time, rows/s, MB/s and the ratio to
``global``. The class modes read partner rows by index, which is what this
shows. Files are deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)

from mixup_cli.commands.pipeline import AugmentRequest, augment  # noqa: E402
from mixup_cli.mixing.sampling import INDEX_PAIRINGS, PAIRINGS  # noqa: E402
from mixup_cli.run import scratch  # noqa: E402

# knn and label-kernel: bench_knn.py (they need options and float targets).
PAIRINGS = tuple(p for p in PAIRINGS if p not in INDEX_PAIRINGS)

ROW_SHAPE = (32, 32, 3)
CLASSES = 10


def make_input(path: Path, rows: int, compression: str | None = None) -> None:
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, CLASSES, rows))  # sorted by class, as datasets on disk often are
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", (rows,) + ROW_SHAPE, "f4", chunks=(256,) + ROW_SHAPE, compression=compression)
        for s in range(0, rows, 4096):
            e = min(rows, s + 4096)
            x[s:e] = rng.random((e - s,) + ROW_SHAPE, dtype=np.float32)
        f.create_dataset(
            "y", data=np.eye(CLASSES, dtype=np.float32)[labels], chunks=(256, CLASSES), compression=compression
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=42_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument(
        "--input-compression",
        choices=["none", "gzip"],
        default="none",
        help="gzip: the class modes then read from an uncompressed copy (mixup_cli.run.scratch)",
    )
    parser.add_argument(
        "--no-scratch",
        action="store_true",
        help="read compressed input directly, never from a copy: what the copy saves",
    )
    args = parser.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    if args.no_scratch:
        scratch.MIN_BLOCKS = sys.maxsize

    folder = Path(tempfile.mkdtemp(prefix="mixup-bench-pairing-", dir=args.workdir))
    try:
        src = folder / "in.h5"
        make_input(src, args.rows, None if args.input_compression == "none" else args.input_compression)
        megabytes = src.stat().st_size / 1e6
        times: dict[str, list[float]] = {mode: [] for mode in PAIRINGS}
        for _ in range(args.repeats):
            for mode in PAIRINGS:
                out = folder / f"{mode}.h5"
                t0 = time.perf_counter()
                augment(AugmentRequest(src, out, seed=1, pairing=mode, command_line=[]))
                times[mode].append(time.perf_counter() - t0)
                out.unlink()
                Path(str(out) + ".provenance.json").unlink()
        base = statistics.median(times["global"])
        print(
            f"{args.rows} rows, {megabytes:.0f} MB, input compression {args.input_compression}"
            f"{' (no scratch copy)' if args.no_scratch else ''}, uncompressed output, median of {args.repeats}"
        )
        print(f"{'pairing':<15}{'s':>8}{'rows/s':>10}{'MB/s':>8}{'/ global':>10}")
        for mode in PAIRINGS:
            t = statistics.median(times[mode])
            print(f"{mode:<15}{t:>8.2f}{args.rows / t:>10,.0f}{megabytes / t:>8.0f}{t / base:>9.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
