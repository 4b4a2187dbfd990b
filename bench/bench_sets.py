"""Sharded sets: ``mixup augment shards/*.h5 OUTDIR`` against one run on one
file holding the same rows, and ``--shard`` jobs against one run.

    python bench/bench_sets.py [--shards 16] [--shard-mb 32] [--repeats 3] [--workdir /tmp]

Writes ``--shards`` HDF5 shards of about ``--shard-mb`` MB each (float32 x of
32x32x3 rows, one-hot y, chunks of 256 rows) and one file of their
concatenation, in a temporary folder under ``--workdir`` (deleted at the
end). Each case runs ``python -m mixup_cli`` with this checkout first on
``PYTHONPATH`` (from the data folder), alternating with its reference,
``--repeats`` times; the table gives median wall seconds and the ratio
(target: the set within 1.25x of the single file).

- ``set``: ``mixup augment shards/*.h5 OUTDIR --seed 7`` vs
  ``mixup augment whole.h5 out.h5 --seed 7`` (same rows, same plan);
- ``4 parts, 2 at a time``: ``--shard I/4`` for I = 0..3 run two at a time
  (as ``xargs -P 2``) vs the whole set in one run.

Each case also checks that the set's outputs hold the single-file run's
rows (lam of the first copy), so a fast wrong run cannot pass.

``--before DIR`` (another checkout of mixup-cli, e.g. ``git worktree add
/tmp/before REV``) adds a case, interleaved with the others in each round:
the set run with DIR's code (``PYTHONPATH``), against one file with this
checkout's, so before and after are measured in the same run.
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
ROW = (32, 32, 3)


def _env(repo: Path = REPO) -> dict:
    return dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _mixup(*args, repo: Path = REPO) -> subprocess.Popen:
    # python -m with the checkout first on the path (run from the data folder: never another checkout's cwd)
    cmd = [sys.executable, "-m", "mixup_cli", "augment", *map(str, args), "-q"]
    return subprocess.Popen(cmd, env=_env(repo), stderr=subprocess.PIPE, text=True, cwd=str(Path(args[0]).parent))


def _wait(*procs) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"mixup failed ({p.returncode}): {err}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_data(folder: Path, shards: int, shard_mb: float) -> tuple[list[Path], Path]:
    rows = max(256, int(shard_mb * 2**20 / (np.prod(ROW) * 4)) // 256 * 256 - 37)  # off the blocks
    rng = np.random.default_rng(0)
    (folder / "shards").mkdir()
    paths = []
    with h5py.File(folder / "whole.h5", "w") as whole:
        n = rows * shards
        wx = whole.create_dataset("x", (n,) + ROW, np.float32, chunks=(256,) + ROW)
        wy = whole.create_dataset("y", (n, 10), np.float32, chunks=(256, 10))
        for k in range(shards):
            x = rng.standard_normal((rows,) + ROW, dtype=np.float32)
            y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)]
            path = folder / "shards" / f"part-{k:04d}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset("x", data=x, chunks=(256,) + ROW)
                f.create_dataset("y", data=y, chunks=(256, 10))
            wx[k * rows : (k + 1) * rows], wy[k * rows : (k + 1) * rows] = x, y
            paths.append(path)
    return paths, folder / "whole.h5"


def _check(outdir: Path, paths: list[Path], single: Path) -> None:
    with h5py.File(single, "r") as f:
        lam = f["lam"][()]
    got = []
    for p in paths:
        with h5py.File(outdir / p.name, "r") as f:
            got.append(f["lam"][()])
    if not np.array_equal(np.concatenate(got), lam):
        raise SystemExit("the set's outputs differ from the single-file run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--shard-mb", type=float, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--before", type=Path, default=None, help="another checkout: its set run as a case too")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mixup-bench-sets-", dir=args.workdir))
    try:
        paths, whole = make_data(folder, args.shards, args.shard_mb)
        common = ["--seed", 7]
        rows = {"set": ([], []), "4 parts, 2 at a time": ([], [])}
        if args.before is not None:
            rows["set, --before's code"] = ([], [])

        def one_file():
            out = folder / "single.h5"
            _wait(_mixup(whole, out, *common, "--overwrite"))

        def the_set(outdir, repo=REPO):
            shutil.rmtree(outdir, ignore_errors=True)
            _wait(_mixup(*paths, outdir, *common, repo=repo))

        def four_parts(outdir):
            shutil.rmtree(outdir, ignore_errors=True)
            for pair in ((0, 1), (2, 3)):
                _wait(*[_mixup(*paths, outdir, *common, "--shard", f"{i}/4") for i in pair])

        for r in range(args.repeats):
            first, second = (0, 1) if r % 2 == 0 else (1, 0)
            cases = [
                (lambda: one_file(), lambda: the_set(folder / "set")),
                (lambda: the_set(folder / "set1"), lambda: four_parts(folder / "parts")),
            ]
            if args.before is not None:
                cases.append((lambda: one_file(), lambda: the_set(folder / "before", args.before.resolve())))
            for name, (ref, cand) in zip(rows, cases):
                fns = (ref, cand)
                times = [0.0, 0.0]
                for i in (first, second):
                    times[i] = _timed(fns[i])
                rows[name][0].append(times[0])
                rows[name][1].append(times[1])
        _check(folder / "set", paths, folder / "single.h5")
        _check(folder / "parts", paths, folder / "single.h5")
        if args.before is not None:
            _check(folder / "before", paths, folder / "single.h5")
        total = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"{args.shards} shards, {total:.0f} MiB in all, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f}, median of {args.repeats}"
        )
        print(f"{'case':<24} {'reference s':>12} {'candidate s':>12} {'ratio':>7}")
        refs = {"set": "one file", "4 parts, 2 at a time": "the set, one run", "set, --before's code": "one file"}
        for name, (ref, cand) in rows.items():
            a, b = statistics.median(ref), statistics.median(cand)
            print(f"{name:<24} {a:>12.2f} {b:>12.2f} {b / a:>7.2f}   (reference: {refs[name]})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
