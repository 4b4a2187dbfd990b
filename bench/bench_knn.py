"""kNN pairing benchmark: ``--pairing knn`` against ``global`` on the same data.

    python bench/bench_knn.py [--tabular-rows 100000] [--image-rows 40000] [--neighbors 5] [--workdir /tmp]
    python bench/bench_knn.py --ann [--ann-rows 100000,1000000] [--ann-data clustered] [--exact-max 200000]

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

``--ann`` (needs the ``ann`` extra, faiss-cpu) benchmarks ``--neighbor-index
approximate`` instead: for each of ``--ann-rows`` (N x 64 float32 rows:
``clustered``, 1,000 Gaussian clusters, or ``gaussian``, one standard normal,
the worst case for an index), in fresh processes, ``augment`` with
``global``, ``knn`` exact (only up to ``--exact-max`` rows: it grows as N^2)
and ``knn`` approximate (its recall@K as the sidecar records it, on its
1,000 sampled rows), the ratio to ``global`` on the same file; then the
searches alone up to ``--exact-max`` rows: the exact ``neighbour_table``,
scikit-learn's ``NearestNeighbors`` brute force (K + 1 neighbours, itself
included) and ``approximate.search`` (index built, searched, re-ranked),
on ``--crossover-rows`` too, where the approximate search overtakes the
exact one.
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


ANN_SEARCH = r"""
import json, sys, time
import h5py, numpy as np
from mixup_cli.mixing import approximate
from mixup_cli.mixing import neighbours
src, k = sys.argv[1], int(sys.argv[2])
with h5py.File(src, "r") as f:
    feats = f["x"][()].astype(np.float32)
out = {}
for name in sys.argv[3].split(","):
    t = time.perf_counter()
    if name == "exact":
        table = neighbours.neighbour_table(feats, k)
    elif name == "approximate":
        table = approximate.search(feats, k)
        found, entries = approximate.recall(feats, table, None, None, approximate.exact_rows)
        out["recall"] = found / entries
    else:
        from sklearn.neighbors import NearestNeighbors
        from mixup_cli.core import threads
        with threads.blas_limited(None):
            NearestNeighbors(algorithm="brute").fit(feats).kneighbors(feats, n_neighbors=k + 1)
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def make_ann_input(path: Path, rows: int, kind: str) -> Path:
    """N x 64 float32 rows: 1,000 Gaussian clusters (centres of norm about 24, unit noise), or one
    standard normal; labels of 10 classes."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, 64)).astype(np.float32) * 3
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", (rows, 64), "f4", chunks=(min(4096, rows), 64))
        for s in range(0, rows, 1 << 18):
            e = min(rows, s + (1 << 18))
            block = rng.standard_normal((e - s, 64), dtype=np.float32)
            if kind == "clustered":
                block += centres[rng.integers(0, 1000, e - s)]
            x[s:e] = block
        f.create_dataset("y", data=rng.integers(0, 10, rows))
    return path


def ann_search(src: Path, k: int, names: str) -> dict:
    env = dict(installed.env(), PATH="/usr/bin:/bin")
    proc = subprocess.run(
        installed.python() + ["-c", ANN_SEARCH, str(src), str(k), names],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ann_main(args, folder: Path) -> None:
    k = args.neighbors
    sizes = [int(v) for v in args.ann_rows.split(",")]
    print(load(), flush=True)
    print(f"{args.ann_data} rows x 64 float32; K = {k}; uncompressed HDF5 in and out, one run each, in a fresh process")
    print(f"{'rows':>9}  {'pairing':<22}{'s':>9}{'index s':>9}{'recall@K':>10}{'rows/s':>10}{'/ global':>10}")
    for rows in sizes:
        src = make_ann_input(folder / f"ann-{rows}.h5", rows, args.ann_data)
        cases = [("global", {}), ("knn exact", {"neighbors": k}), ("knn approximate", {"neighbors": k})]
        base = None
        for label, options in cases:
            if label == "knn exact" and rows > args.exact_max:
                print(f"{rows:>9}  {label:<22}  skipped (N^2: above --exact-max {args.exact_max})", flush=True)
                continue
            pairing = label.split()[0]
            if label.endswith("approximate"):
                options = dict(options, neighbor_index="approximate")
            r = run(folder / f"ann-{rows}.h5", folder / "out.h5", pairing=pairing, **options)
            base = base or r["seconds"]
            recall = f"{r['recall']:.4f}" if r.get("recall") is not None else "-"
            print(
                f"{rows:>9}  {label:<22}{r['seconds']:>9.2f}{r['index'] if pairing != 'global' else 0:>9.2f}"
                f"{recall:>10}{rows / r['seconds']:>10,.0f}{r['seconds'] / base:>9.2f}x",
                flush=True,
            )
        src.unlink()
    print("searches alone (no reading or writing), s:")
    print(f"{'rows':>9}{'exact':>10}{'sklearn':>10}{'approx':>10}{'recall@K':>10}{'exact/approx':>14}")
    alone = sorted({int(v) for v in args.crossover_rows.split(",")} | {n for n in sizes if n <= args.exact_max})
    for rows in alone:
        src = make_ann_input(folder / f"alone-{rows}.h5", rows, args.ann_data)
        names = "exact,approximate" + (",sklearn" if rows in sizes else "")
        r = ann_search(src, k, names)
        sk = f"{r['sklearn']:.2f}" if "sklearn" in r else "-"
        print(
            f"{rows:>9}{r['exact']:>10.2f}{sk:>10}{r['approximate']:>10.2f}{r['recall']:>10.4f}"
            f"{r['exact'] / r['approximate']:>13.2f}x",
            flush=True,
        )
        src.unlink()
    print(load(), flush=True)


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
    sidecar = Path(str(out) + ".provenance.json")
    recall = json.loads(sidecar.read_text())["parameters"].get("neighbor_recall")
    sidecar.unlink()
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), recall=recall)


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
    parser.add_argument("--ann", action="store_true", help="benchmark --neighbor-index approximate instead")
    parser.add_argument("--ann-rows", default="100000,1000000", help="with --ann: the row counts (x 64 float32)")
    parser.add_argument("--ann-data", choices=("clustered", "gaussian"), default="clustered")
    parser.add_argument("--exact-max", type=int, default=200_000, help="with --ann: no exact search above this")
    parser.add_argument("--crossover-rows", default="10000,30000", help="with --ann: more sizes, searches alone")
    args = parser.parse_args()
    installed.check(args)
    print(installed.header(), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="mixup-bench-knn-", dir=args.workdir))
    try:
        if args.ann:
            return ann_main(args, folder)
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
