"""kNN pairing benchmark: ``--pairing knn`` against ``global`` on the same data.

    python bench/bench_knn.py [--tabular-rows 100000] [--image-rows 40000] [--neighbors 5] [--workdir /tmp]

Writes two HDF5 files under a temporary folder in ``--workdir``:

* tabular: 100k rows of 64 float32 (standard normal), integer labels of 10 classes;
* images: 40k rows of 32x32x3 float32 (uniform), integer labels of 10 classes (about 0.5 GB);

then runs ``mixup augment`` (through the library, each run in a fresh
process, so that its peak memory is its own and scikit-learn's import is
counted) for ``global`` and the knn modes (the images with ``--project 32``;
with ``--old-projection`` also plan version 2's IncrementalPCA, minutes),
and prints, per run, the wall time, the part of it spent building the
neighbour index (``planning.build_plan``: scikit-learn's import, the projection's
fit and transform, the search), rows/s, the peak resident memory and the
ratio to ``global`` on the same file. Then the exact search alone on the
tabular rows, in a fresh process: ``neighbour_table`` (the run's) against
``reference_table`` (scikit-learn's brute force, widened until exact:
``verify``'s path), with a check that their lists are the same. The load
average is printed before and after (the figures are of a shared machine
when it is not 0). Files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent

import installed  # noqa: E402  (the installed mixup_cli for the subprocesses)

RUN = r"""
import json, resource, sys, time
from mixup_cli.commands import pipeline
args = json.loads(sys.argv[1])
real, spent = pipeline.build_plan, {}
def timed(*a, **k):
    t = time.perf_counter()
    plan = real(*a, **k)
    spent["index"] = time.perf_counter() - t
    return plan
pipeline.build_plan = timed
t = time.perf_counter()
pipeline.augment(pipeline.AugmentRequest(args.pop("src"), args.pop("out"), seed=1, command_line=[], **args))
print(json.dumps({"seconds": time.perf_counter() - t, "index": spent["index"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


SEARCH = r"""
import json, sys, time
import h5py, numpy as np
from mixup_cli.mixing import neighbours
src, k = sys.argv[1], int(sys.argv[2])
with h5py.File(src, "r") as f:
    feats = f["x"][()].astype(np.float32)
t = time.perf_counter()
fast = neighbours.neighbour_table(feats, k)
t_fast = time.perf_counter() - t
t = time.perf_counter()
ref = neighbours.reference_table(feats, k)
t_ref = time.perf_counter() - t
print(json.dumps({"fast": t_fast, "reference": t_ref, "same": bool(np.array_equal(fast, ref))}))
"""


def make_inputs(folder: Path, tabular_rows: int, image_rows: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    tab = folder / "tabular.h5"
    with h5py.File(tab, "w") as f:
        f.create_dataset(
            "x", data=rng.standard_normal((tabular_rows, 64), dtype=np.float32), chunks=(min(4096, tabular_rows), 64)
        )
        f.create_dataset("y", data=rng.integers(0, 10, tabular_rows))
    img = folder / "images.h5"
    with h5py.File(img, "w") as f:
        x = f.create_dataset("x", (image_rows, 32, 32, 3), "f4", chunks=(min(256, image_rows), 32, 32, 3))
        for s in range(0, image_rows, 4096):
            e = min(image_rows, s + 4096)
            x[s:e] = rng.random((e - s, 32, 32, 3), dtype=np.float32)
        f.create_dataset("y", data=rng.integers(0, 10, image_rows))
    return tab, img


def search(src: Path, k: int) -> dict:
    env = dict(installed.env(), PATH="/usr/bin:/bin")
    proc = subprocess.run(
        installed.python() + ["-c", SEARCH, str(src), str(k)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def run(src: Path, out: Path, **options) -> dict:
    env = dict(installed.env(), PATH="/usr/bin:/bin")
    proc = subprocess.run(
        installed.python() + ["-c", RUN, json.dumps(dict(options, src=str(src), out=str(out)))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    out.unlink()
    Path(str(out) + ".provenance.json").unlink()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--tabular-rows", type=int, default=100_000)
    parser.add_argument("--image-rows", type=int, default=40_000)
    parser.add_argument("--neighbors", type=int, default=5)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument(
        "--old-projection", action="store_true", help="also --project 32 as plan version 2 fitted it (IncrementalPCA)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the search alone against scikit-learn's")
    args = parser.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="mixup-bench-knn-", dir=args.workdir))
    try:
        tab, img = make_inputs(folder, args.tabular_rows, args.image_rows)
        k = args.neighbors
        cases = [
            ("tabular", tab, args.tabular_rows, "global", {}),
            ("tabular", tab, args.tabular_rows, "knn", {"neighbors": k}),
            ("tabular", tab, args.tabular_rows, "knn-within-class", {"neighbors": k}),
            ("images", img, args.image_rows, "global", {}),
            ("images", img, args.image_rows, "knn --project 32", {"neighbors": k, "project": 32}),
        ]
        if args.old_projection:
            cases.append(
                ("images", img, args.image_rows, "same, plan v2", {"neighbors": k, "project": 32, "plan_version": 2})
            )
        print(load(), flush=True)
        print(
            f"tabular: {args.tabular_rows} x 64 float32; images: {args.image_rows} x 32x32x3 float32; "
            f"K = {k}; uncompressed HDF5 in and out, one run each, in a fresh process"
        )
        print(f"{'data':<9}{'pairing':<20}{'s':>8}{'index s':>9}{'rows/s':>10}{'peak MB':>9}{'/ global':>10}")
        base = {}
        for data, src, rows, label, options in cases:
            pairing = label.split()[0]
            r = run(src, folder / "out.h5", pairing=pairing, **options)
            base.setdefault(data, r["seconds"])
            print(
                f"{data:<9}{label:<20}{r['seconds']:>8.2f}{r['index'] if pairing != 'global' else 0:>9.2f}"
                f"{rows / r['seconds']:>10,.0f}{r['rss_mb']:>9.0f}{r['seconds'] / base[data]:>9.2f}x",
                flush=True,
            )
        if not args.no_reference:
            r = search(tab, k)
            print(
                f"search alone, tabular, K = {k}: neighbour_table {r['fast']:.2f} s, scikit-learn brute force "
                f"(reference_table) {r['reference']:.2f} s: {r['reference'] / r['fast']:.1f}x faster; "
                f"same lists: {r['same']}",
                flush=True,
            )
        print(load(), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
