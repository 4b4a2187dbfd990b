"""A ``--shard I/S`` part of a set of S tiny inputs: seconds per part, and
how they grow with S.

    python bench/bench_set_parts.py [--inputs 2000] [--parts 3] [--workdir /tmp] [--repo PATH]

Writes ``--inputs`` HDF5 inputs of 20 rows each (8 float32 columns of x, an
integer label y in 5 classes), and a quarter as many, in a temporary folder
under ``--workdir`` (deleted at the end), listed in a file for
``--inputs-from``. For each size it runs ``mixup augment --inputs-from LIST
OUTDIR --seed 7 --shard I/S`` one part at a time, with the ``mixup`` of
this checkout (PYTHONPATH set to the repository root; ``--repo`` runs
another checkout's, e.g. to compare with a branch):

- ``first``: part 0 on a new OUTDIR (nothing recorded: every input checked);
- ``second``: part 1 (OUTDIR holds the set's manifest: every input checked,
  and the layout recorded in ``OUTDIR/.mixup-set.layout.json``);
- ``later``: parts 2, 3, ... (the record used), the median of ``--parts``.

A part's cost that does not grow with S beyond reading the list shows as a
``later`` column about the same at both sizes. Part 2's output is also
written on a fresh OUTDIR and compared byte for byte, so a fast wrong run
cannot pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
ROWS, COLUMNS, CLASSES = 20, 8, 5


def _env(repo: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _part(repo: Path, listing: Path, outdir: Path, i: int, count: int) -> float:
    cmd = [sys.executable, "-m", "mixup_cli", "augment", "--inputs-from", str(listing), str(outdir)]
    cmd += ["--seed", "7", "--shard", f"{i}/{count}", "-q"]
    t0 = time.perf_counter()
    # Run from the data's folder: ``python -m`` puts the working directory first on the path.
    done = subprocess.run(cmd, env=_env(repo), cwd=listing.parent, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"mixup failed ({done.returncode}): {done.stderr}")
    return seconds


def make_inputs(folder: Path, count: int) -> Path:
    """``count`` inputs in ``folder`` and the list file naming them."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for k in range(count):
        path = folder / f"in-{k:05d}.h5"
        with h5py.File(path, "w") as f:
            f["x"] = rng.standard_normal((ROWS, COLUMNS), dtype=np.float32)
            f["y"] = rng.integers(0, CLASSES, ROWS)
        paths.append(path)
    listing = folder.with_suffix(".txt")
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def _same(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        if sorted(fa) != sorted(fb) or any(fa[k][()].tobytes() != fb[k][()].tobytes() for k in fa):
            raise SystemExit(f"{a} differs from {b}, the same part written on a fresh OUTDIR")


def measure(repo: Path, folder: Path, count: int, parts: int) -> dict[str, float]:
    listing = make_inputs(folder / f"s{count}", count)
    outdir = folder / f"out{count}"
    first = _part(repo, listing, outdir, 0, count)
    second = _part(repo, listing, outdir, 1, count)
    later = [_part(repo, listing, outdir, i, count) for i in range(2, 2 + parts)]
    fresh = folder / f"fresh{count}"
    _part(repo, listing, fresh, 2, count)
    name = f"in-{2:05d}.h5"
    _same(outdir / name, fresh / name)
    return {"first": first, "second": second, "later": statistics.median(later)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=2000, help="S, the inputs of the larger set")
    ap.add_argument("--parts", type=int, default=3, help="later parts timed (the median is shown)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose mixup runs")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mixup-bench-set-parts-", dir=args.workdir))
    try:
        sizes = [max(2 + args.parts, args.inputs // 4), max(2 + args.parts, args.inputs)]
        found = {count: measure(args.repo.resolve(), folder, count, args.parts) for count in sizes}
        print(
            f"{args.repo.resolve()}: inputs of {ROWS} rows, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f}; later: median of {args.parts} parts"
        )
        print(f"{'inputs S':>9} {'first s':>9} {'second s':>9} {'later s':>9}")
        for count, row in found.items():
            print(f"{count:>9} {row['first']:>9.2f} {row['second']:>9.2f} {row['later']:>9.2f}")
        small, large = (found[c]["later"] for c in sizes)
        print(f"later parts: {large / small:.2f}x the time at {sizes[1] / sizes[0]:.0f}x the inputs")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
