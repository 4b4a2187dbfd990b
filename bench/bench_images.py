"""Image folder benchmark: ``mixup augment FOLDER OUT.h5 --image-size S`` against
a plain Pillow + numpy + h5py script doing the same work (the floor).

    python bench/bench_images.py [--images 2000] [--sizes 64,224] [--repeats 3] [--workdir /tmp]

Generates ``--images`` JPEG files (``--source`` WxH, default 320x240, quality 90,
smooth colour fields with noise, as photographs compress) in 10 class
folders under a temporary folder in ``--workdir``, deleted at the end. For
each target size the floor and the candidate run alternately (which goes
first alternates too), ``--repeats`` times each; the table gives medians of
images per second and their ratio (mixup's rate over the floor's: above 1,
mixup is faster).

- floor: the files listed in sorted order; per batch of 256 files, each
  decoded by Pillow, converted to RGB and cropped/resized with
  ``ImageOps.fit`` (bilinear) by a thread pool of ``--threads`` (the same
  count as mixup's decoding threads; ``--floor-threads 1`` for a
  single-threaded script), stacked, mixed with a permutation of the batch and
  ``lam ~ Beta(0.2, 0.2)`` in float32 (rounded, clipped; 16 rows at a time,
  since temporaries of the whole batch made it several times slower), and
  written with h5py to a chunked uint8 dataset, with one-hot ``y``.
- candidate: ``mixup augment`` run in-process through the library
  (``mixup_cli.commands.pipeline.augment``): listing, decoding in its thread pool,
  mixing, the input files' SHA-256, output digests, fsync, atomic rename and
  the sidecar, everything included.

The page cache is warm for both sides. ``CPU`` columns add user and system
time of all threads; ``load`` is the 1-minute load average after the case.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)
import numpy as np
from PIL import Image, ImageOps

from mixup_cli.commands.pipeline import AugmentRequest, augment  # noqa: E402
from mixup_cli.io.images import MAX_THREADS  # noqa: E402

CLASSES = 10
BATCH = 256


def make_folder(root: Path, n: int, source: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    w, h = source
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True)
    for i in range(n):
        a, b, p = rng.random(3, dtype=np.float32)
        base = np.stack(
            [
                128 + 100 * np.sin(xx / (10 + 40 * a) + p * 6),
                128 + 100 * np.cos(yy / (10 + 40 * b)),
                128 + 100 * np.sin((xx + yy) / 50 + a * 6),
            ],
            axis=-1,
        )
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"class{i % CLASSES:02d}" / f"{i:06d}.jpg", quality=90)


def floor(src: Path, dst: Path, size: int, threads: int) -> None:
    """The plain script: decode, resize, mix within each batch, write."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((src / c).iterdir())]
    rng = np.random.default_rng(1)

    def load(path):
        with Image.open(path) as im:
            return np.asarray(
                ImageOps.fit(im.convert("RGB"), (size, size), method=getattr(Image, "Resampling", Image).BILINEAR)
            )

    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    with h5py.File(dst, "w") as f:
        x = f.create_dataset("x", (len(files), size, size, 3), np.uint8, chunks=(16, size, size, 3))
        y = f.create_dataset("y", (len(files), len(classes)), np.float32)
        lam_ds = f.create_dataset("lam", (len(files),), np.float64)
        for s in range(0, len(files), BATCH):
            part = files[s : s + BATCH]
            paths = [p for p, _ in part]
            rows = np.stack(list(pool.map(load, paths)) if pool else [load(p) for p in paths])
            onehot = np.eye(len(classes), dtype=np.float32)[[k for _, k in part]]
            lam = rng.beta(0.2, 0.2, len(part))
            perm = rng.permutation(len(part))
            l32 = lam.astype(np.float32)
            out = np.empty_like(rows)
            for a in range(0, len(part), 16):  # 16 rows at a time: whole-batch temporaries cost 20x in page faults
                w = l32[a : a + 16, None, None, None]
                mixed = w * rows[a : a + 16] + (1 - w) * rows[perm[a : a + 16]]
                np.rint(mixed, out=mixed)
                np.clip(mixed, 0, 255, out=mixed)
                out[a : a + 16] = mixed
            x[s : s + len(part)] = out
            y[s : s + len(part)] = l32[:, None] * onehot + (1 - l32[:, None]) * onehot[perm]
            lam_ds[s : s + len(part)] = lam
    if pool:
        pool.shutdown()


def candidate(src: Path, dst: Path, size: int) -> None:
    augment(
        AugmentRequest(src, dst, alpha=0.2, seed=1, image_size=(size, size), overwrite=True, command_line=["bench"])
    )


def timed(fn) -> tuple[float, float]:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source", default="320x240", help="WxH of the generated JPEG files")
    parser.add_argument("--sizes", default="64,224", help="comma-separated target sizes (square)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor-threads", type=int, default=None, help="[default: mixup's decoding threads]")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    installed.check(args)
    print(installed.header(), flush=True)
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1))
    floor_threads = args.floor_threads or threads
    w, h = (int(v) for v in args.source.split("x"))

    work = Path(tempfile.mkdtemp(prefix="mixup-bench-images-", dir=args.workdir))
    try:
        src = work / "train"
        make_folder(src, args.images, (w, h))
        mb = sum(f.stat().st_size for f in src.rglob("*.jpg")) / 1e6
        print(
            f"input: {args.images} JPEG {w}x{h} in {CLASSES} classes, {mb:.1f} MB; decoding threads: mixup "
            f"{threads}, floor {floor_threads}; CPUs {os.cpu_count()}; median of {args.repeats}, alternating"
        )
        print(
            f"{'size':>5} {'floor img/s':>12} {'mixup img/s':>12} {'ratio':>6}"
            f" {'floor CPU s':>12} {'mixup CPU s':>12} {'load':>5}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            ref_t, cand_t = [], []

            def run_ref():
                ref_t.append(timed(lambda: floor(src, work / "ref.h5", size, floor_threads)))
                (work / "ref.h5").unlink()

            def run_cand():
                cand_t.append(timed(lambda: candidate(src, work / "out.h5", size)))
                (work / "out.h5").unlink()
                Path(str(work / "out.h5") + ".provenance.json").unlink()

            for i in range(args.repeats):
                for run in (run_ref, run_cand) if i % 2 == 0 else (run_cand, run_ref):
                    run()
            ref = statistics.median(t for t, _ in ref_t)
            cand = statistics.median(t for t, _ in cand_t)
            print(
                f"{size:>5} {args.images / ref:>12.0f} {args.images / cand:>12.0f} {ref / cand:>6.2f}"
                f" {statistics.median(c for _, c in ref_t):>12.2f} {statistics.median(c for _, c in cand_t):>12.2f}"
                f" {os.getloadavg()[0]:>5.1f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
