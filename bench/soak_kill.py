"""Kill soak: SIGKILL ``mixup augment`` at random instants, then ``--resume``.

    python bench/soak_kill.py [--kills 100] [--formats h5:none,h5:gzip,...] [--workdir /tmp]

For each output format (HDF5 with no compression, gzip and lzf, ``.npz``,
``.npy`` directory, Zarr, Parquet, and a WebDataset ``.tar`` of uint8
images made from an image input) one uninterrupted run gives the reference arrays
with its start-up time S (until its first partial file appears) and the
rest of its duration T. Then, ``--kills`` times: a run is started and killed
with SIGKILL, one time in ten at an instant drawn uniformly in start-up
[0, S], otherwise at one drawn uniformly in [0, 1.05 T] after its first
partial file appeared (creation, the first journal save, mid-stream, the
flush and the commit); then ``mixup augment ... --resume`` is run once. Its output is read
with h5py / numpy / zarr / pyarrow / tarfile directly and compared with the reference, array by
array, byte for byte. Each trial is counted as one of:

- ``resumed``: exit 0, identical arrays, tasks kept from the killed run;
- ``started over``: exit 0, identical arrays, the resume started from the
  beginning by itself (nothing journaled yet, or a partial it could not use);
- ``complete``: the kill came after the run had finished; ``--resume``
  said so and exited 0 (arrays identical);
- ``different``: exit 0 but some array differs (must never happen);
- ``failed``: non-zero exit, or an output that does not read back.

``journaled`` counts the kills after which the journal recorded finished
tasks (those must resume), and ``journaled but started over`` those of them
that --resume could not continue (a partial damaged by the kill).

Not part of the test suite (minutes of work). Prints one line per format and
a JSON summary on stdout at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
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

# name -> (output, --compression, --copies): copies chosen so that each run
# takes about a second or two of work on a small machine.
FORMATS = {
    "h5:none": ("out.h5", "none", 4),
    "h5:gzip": ("out.h5", "gzip", 1),
    "h5:lzf": ("out.h5", "lzf", 2),
    "npz": ("out.npz", "none", 3),
    "npydir": ("out", "none", 4),
    "zarr": ("out.zarr", "none", 2),
    "parquet": ("out.parquet", "none", 2),  # staged as .npy beside OUT, packed at the commit
    "tar": ("out.tar", "none", 1),  # WebDataset: uint8 images, PNG-encoded at the commit
}
# Formats whose input is uint8 images (rows x 8 x 8 x 3) instead of float rows.
IMAGE_FORMATS = {"tar"}


def mixup_command() -> list[str]:
    return installed.mixup()


def env() -> dict:
    return installed.env()


def read_digests(path: Path) -> dict[str, str]:
    """SHA-256 of each array's bytes, read without mixup_cli."""
    arrays: dict[str, np.ndarray] = {}
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            while hasattr(column, "flatten"):  # fixed-size lists: the values, in row order
                column = column.flatten()
            arrays[name] = column.to_numpy(zero_copy_only=False)
    elif path.suffix == ".tar":
        import tarfile

        with tarfile.open(path) as tar:  # every sample's members; the header's run id differs by run
            for member in tar.getmembers():
                if member.isfile():
                    arrays[member.name] = np.frombuffer(tar.extractfile(member).read(), np.uint8)
    elif path.suffix == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="r")
        arrays = {name: node[...] for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}
    else:
        arrays = {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}
    return {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() + str(v.dtype) + str(v.shape)
        for k, v in sorted(arrays.items())
    }


# Share of the kills aimed at start-up, before any partial file exists (the
# rest are spread over the run from its first partial file to its exit).
STARTUP_SHARE = 0.1


def wait_for_partial(proc, out: Path) -> bool:
    """Wait until the run has made its first partial file (or ended)."""
    while proc.poll() is None:
        if any(p.name.startswith(f".{out.name}.mixup-partial") for p in out.parent.iterdir()):
            return True
        time.sleep(0.002)
    return False


def make_input(path: Path, rows: int, width: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=rng.standard_normal((rows, width), dtype=np.float32), chunks=(500, width))
        f.create_dataset("y", data=np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)], chunks=(500, 10))


def make_image_input(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=rng.integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8), chunks=(500, 8, 8, 3))
        f.create_dataset("y", data=rng.integers(0, 10, rows), chunks=(500,))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean(directory: Path) -> None:
    for p in directory.iterdir():
        remove(p)


def soak(name: str, src: Path, workdir: Path, kills: int, args: list[str], rng: random.Random) -> dict:
    out_name, compression, copies = FORMATS[name]
    ref_dir, run_dir = workdir / f"ref-{name.replace(':', '-')}", workdir / f"run-{name.replace(':', '-')}"
    for d in (ref_dir, run_dir):
        remove(d)
        d.mkdir()
    cmd = mixup_command() + ["augment", str(src)]
    opts = args + ["--copies", str(copies), "--compression", compression, "--quiet"]
    starts, works = [], []
    for _ in range(3):  # medians of three runs: the machine's load varies
        remove(ref_dir / out_name)
        remove(ref_dir / f"{out_name}.provenance.json")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd + [str(ref_dir / out_name)] + opts,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = wait_for_partial(proc, ref_dir / out_name)
        t1 = time.perf_counter()
        if proc.wait() != 0:
            raise SystemExit(f"{name}: the reference run failed: {proc.stderr.read()}")
        starts.append(t1 - t0 if started else 0.0)
        works.append(time.perf_counter() - t1)
    startup, took = sorted(starts)[1], sorted(works)[1]
    want = read_digests(ref_dir / out_name)
    counts = {
        "resumed": 0,
        "started over": 0,
        "complete": 0,
        "different": 0,
        "failed": 0,
        "journaled": 0,
        "journaled but started over": 0,
    }
    failures: list[str] = []
    out = run_dir / out_name
    for trial in range(kills):
        clean(run_dir)
        proc = subprocess.Popen(
            cmd + [str(out)] + opts, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if rng.random() < STARTUP_SHARE:  # in start-up: imports, opening the input, planning
            delay = rng.uniform(0, startup)
            time.sleep(delay)
        else:  # from the first partial file on: creation, journal, streaming, flush, commit
            wait_for_partial(proc, out)
            delay = startup + rng.uniform(0, 1.05 * took)
            time.sleep(delay - startup)
        proc.kill()
        finished_first = proc.wait() == 0
        journal = out.with_name(f".{out.name}.mixup-partial.journal.json")
        try:
            journaled = bool(json.loads(journal.read_text())["done"])
        except (OSError, ValueError, KeyError):
            journaled = False
        if journaled:
            counts["journaled"] += 1
        # Without --quiet: the note that the run was already complete is what is counted.
        resume_opts = [o for o in opts if o != "--quiet"] + ["--resume"]
        again = subprocess.run(cmd + [str(out)] + resume_opts, env=env(), capture_output=True, text=True)
        if again.returncode != 0:
            counts["failed"] += 1
            failures.append(
                f"trial {trial} (kill at {delay:.3f} s): exit {again.returncode}: {again.stderr.strip()[-300:]}"
            )
            continue
        try:
            got = read_digests(out)
        except Exception as exc:  # noqa: BLE001 - any unreadable output is a failure to report
            counts["failed"] += 1
            failures.append(f"trial {trial} (kill at {delay:.3f} s): output unreadable: {exc}")
            continue
        if got != want:
            counts["different"] += 1
            failures.append(f"trial {trial} (kill at {delay:.3f} s): arrays differ")
            continue
        if "already complete" in again.stderr:
            counts["complete"] += 1
        elif finished_first:
            counts["failed"] += 1
            failures.append(f"trial {trial}: the run had finished but --resume did not say so: {again.stderr.strip()}")
        else:
            sidecar = json.loads(Path(f"{out}.provenance.json").read_text())
            resumed = bool(sidecar["execution"].get("resumed_tasks"))
            counts["resumed" if resumed else "started over"] += 1
            if journaled and not resumed:
                counts["journaled but started over"] += 1
                failures.append(
                    f"trial {trial} (kill at {delay:.3f} s): progress journaled, yet started over: {again.stderr.strip()}"
                )
    clean(run_dir)
    return {
        "format": name,
        "kills": kills,
        "startup_s": round(startup, 3),
        "uninterrupted_s": round(took, 3),
        "counts": counts,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    installed.add_arguments(parser)
    parser.add_argument("--kills", type=int, default=100, help="per format")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--block-rows", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="of the kill instants")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    ns = parser.parse_args()
    installed.check(ns)
    print(installed.header(), flush=True)
    rng = random.Random(ns.seed)
    workdir = Path(tempfile.mkdtemp(prefix="mixup-soak-", dir=ns.workdir))
    results = []
    try:
        src, images = workdir / "in.h5", workdir / "images.h5"
        make_input(src, ns.rows, ns.width)
        make_image_input(images, ns.rows)
        args = ["--seed", "7", "--block-rows", str(ns.block_rows)]
        for name in ns.formats.split(","):
            result = soak(name, images if name in IMAGE_FORMATS else src, workdir, ns.kills, args, rng)
            results.append(result)
            c = result["counts"]
            print(
                f"{name:8} kills {ns.kills:4}  start-up {result['startup_s']:.2f} s  run {result['uninterrupted_s']:.2f} s  "
                + "  ".join(f"{k} {v}" for k, v in c.items()),
                file=sys.stderr,
                flush=True,
            )
            for line in result["failures"][:5]:
                print("   ", line, file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
