"""File benchmark: ``mixup augment`` against an h5py streaming copy.

    python bench/bench_file.py [--rows 40000] [--repeats 3] [--workdir /tmp]
    python bench/bench_file.py --together --durable --input-compression gzip --rows 160000


Generates an HDF5 file (float32 ``x`` of 40,000 x 32x32x3 = 0.49 GB, chunks
of 256 rows, plus one-hot ``y``) in a temporary folder under ``--workdir``
and deletes it at the end. For each case the reference and the candidate run
alternately (which goes first alternates too), ``--repeats`` times each; the table gives medians and their
ratio.

- reference: an h5py loop reading 1024-row batches (``read_direct`` into one
  buffer) of ``x`` and ``y`` and writing them to a new file chunked the same
  way (256 rows), with the same compression.
- candidate: ``mixup augment`` run in-process through the library
  (``mixup_cli.commands.pipeline.augment``), everything included: the input file's
  and the output arrays' SHA-256, fsync, atomic rename and the provenance
  sidecar.

Cases: uncompressed and gzip (both sides), ``global`` and ``batch`` pairing;
``cycle`` is ``global`` under plan version 1 (its blocks in a random cycle,
each taking its partners from the next block, read whole: the law before
version 2, still computed to verify its outputs), for the cost of reading
whole blocks.
``--input-compression gzip`` writes the input itself with gzip (chunks of
256 rows; the case's compression is then the output's, as before).
``--durable`` makes the reference fsync its output before it returns (as
mixup does before renaming its output into place). ``--together`` runs the
cases of one output compression in one loop: each round runs the copy and
every pairing once, in an order that rotates from round to round, so the
ratios ``global/copy`` and ``batch/copy`` come from runs side by side; the
table then also gives each contender's peak memory (the process's resident
set above what it held before the run, VmHWM reset before each run: Linux).
``--phases`` adds, per case, where one more candidate run spends its time:
the engine's ``run`` (read, mix, hash and write the output; the input file is hashed
meanwhile in a thread), ``fsync``, ``wait hashes`` (what is left of the
input's hash after it), and the rest; and the seconds spent in the
calls of each stage (reading, mixing, hashing the output, writing, hashing
the input), each in its own thread, so they overlap.
The page cache is warm for both sides (the input was just written). The
CPU columns add up user and system time of all threads: on a shared machine
they vary less than wall time, and show the work each side does. ``load`` is
the 1-minute load average at the end of the case (other processes on the
machine; on 2 CPUs anything above 2 means the two sides shared the cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)
import numpy as np

from mixup_cli.commands.pipeline import AugmentRequest, augment  # noqa: E402

CHUNK_ROWS = 256
BATCH = 1024


def make_input(path: Path, rows: int, compression: str | None = None) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        x = f.create_dataset(
            "x", shape=(rows, 32, 32, 3), dtype=np.float32, chunks=(CHUNK_ROWS, 32, 32, 3), compression=compression
        )
        y = f.create_dataset("y", shape=(rows, 10), dtype=np.float32, chunks=(CHUNK_ROWS, 10), compression=compression)
        for s in range(0, rows, 4096):
            e = min(rows, s + 4096)
            x[s:e] = rng.random((e - s, 32, 32, 3), dtype=np.float32)
            y[s:e] = np.eye(10, dtype=np.float32)[rng.integers(0, 10, e - s)]


def h5py_copy(src: Path, dst: Path, compression: str | None, durable: bool = False) -> None:
    """The reference: stream every row of x and y to a new chunked file
    (``durable``: then fsync it, as mixup does its output)."""
    _copy_rows(src, dst, compression)
    if durable:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_rows(src: Path, dst: Path, compression: str | None) -> None:
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key in ("x", "y"):
            ds = fin[key]
            out = fout.create_dataset(
                key, shape=ds.shape, dtype=ds.dtype, chunks=(CHUNK_ROWS,) + ds.shape[1:], compression=compression
            )
            buf = np.empty((BATCH,) + ds.shape[1:], ds.dtype)
            for s in range(0, ds.shape[0], BATCH):
                e = min(ds.shape[0], s + BATCH)
                ds.read_direct(buf, np.s_[s:e], np.s_[0 : e - s])
                out.write_direct(buf, np.s_[0 : e - s], np.s_[s:e])


def candidate(src: Path, dst: Path, compression: str, pairing: str) -> None:
    if pairing == "cycle":  # global pairing's law of plan version 1: blocks in a cycle, read whole
        from unittest import mock

        from mixup_cli.commands import pipeline
        from mixup_cli.run import planner as planning

        def build_plan(source, **kwargs):
            return planning.build_plan(source, **{**kwargs, "plan_version": 1})

        with mock.patch.object(pipeline, "build_plan", build_plan):
            return candidate(src, dst, compression, "global")
    augment(
        AugmentRequest(
            src,
            dst,
            alpha=0.2,
            seed=1,
            pairing=pairing,
            compression=compression,
            overwrite=True,
            command_line=["bench"],
        )
    )


def candidate_phases(src: Path, dst: Path, compression: str, pairing: str) -> tuple[dict, dict]:
    """One candidate run, timed by wrapping the library's functions: where the
    run's wall time goes, and the seconds spent in each stage's calls (in
    their own threads, so these overlap)."""
    from mixup_cli.commands import pipeline
    from mixup_cli.engines import local
    from mixup_cli.io import hdf5
    from mixup_cli.mixing import mixer
    from mixup_cli.record import digests, provenance
    from mixup_cli.run import tasks

    phases = {
        "engine run": (local, "run"),
        "fsync": (pipeline.atomic, "sync"),
        "wait hashes": (provenance.BackgroundHash, "result"),
    }
    stages = {
        "read": (hdf5.Reader, "read_into"),
        "partners": (tasks, "partner_rows"),
        "mix": (mixer.Mixer, "mix_gather"),
        "hash out": (digests.BlockHasher, "update"),
        "write": (hdf5.Writer, "write"),
        "hash in": (provenance, "sha256_file"),
    }
    stages = {name: (owner, attr) for name, (owner, attr) in stages.items() if hasattr(owner, attr)}
    spent = {name: 0.0 for name in [*phases, *stages]}
    originals = {name: getattr(owner, attr) for name, (owner, attr) in {**phases, **stages}.items()}

    def wrap(fn, name):
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0

        return inner

    for name, (owner, attr) in {**phases, **stages}.items():
        setattr(owner, attr, wrap(originals[name], name))
    try:
        total = timed(lambda: candidate(src, dst, compression, pairing))[0]
    finally:
        for name, (owner, attr) in {**phases, **stages}.items():
            setattr(owner, attr, originals[name])
    wall = {name: spent[name] for name in phases}
    wall["rest"] = total - sum(wall.values())
    wall["total"] = total
    return wall, {name: spent[name] for name in stages}


def reset_peak() -> int | None:
    """Reset the process's peak resident set (Linux: VmHWM); its size now, in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_above(before: int | None) -> float:
    """MiB of the peak resident set since ``reset_peak`` above what it held then (NaN: unknown)."""
    peak = _status_bytes("VmHWM")
    return float("nan") if before is None or peak is None else (peak - before) / 2**20


def together(args, src: Path, work: Path) -> None:
    """The copy and each pairing of one output compression, side by side:
    each round runs every contender once, the order rotating each round."""
    groups: dict[str, list[str]] = {}
    for case in args.cases.split(","):
        compression, pairing = case.split(":")
        groups.setdefault(compression, []).append(pairing)
    print(
        f"{'compression':<12} {'contender':<10} {'s':>7} {'/ copy':>7} {'CPU s':>7} {'CPU / copy':>10}"
        f" {'peak MiB':>9} {'load':>5}"
    )
    for compression, pairings in groups.items():
        out_comp = None if compression == "none" else compression
        names = ["copy", *pairings]
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        peaks: dict[str, list[float]] = {n: [] for n in names}
        loads = []

        def run_one(name):
            dst = work / ("ref.h5" if name == "copy" else "out.h5")
            before = reset_peak()
            if name == "copy":
                times[name].append(timed(lambda: h5py_copy(src, dst, out_comp, args.durable)))
            else:
                times[name].append(timed(lambda: candidate(src, dst, compression, name)))
            peaks[name].append(peak_above(before))
            dst.unlink()

        repeats = args.gzip_repeats if "gzip" in (compression, args.input_compression) else args.repeats
        for i in range(repeats):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                run_one(name)
            loads.append(os.getloadavg()[0])
        ref_wall = statistics.median(t for t, _ in times["copy"])
        ref_cpu = statistics.median(u for _, u in times["copy"])
        for name in names:
            wall = statistics.median(t for t, _ in times[name])
            cpu = statistics.median(u for _, u in times[name])
            print(
                f"{compression:<12} {name:<10} {wall:7.2f} {wall / ref_wall:6.2f}x {cpu:7.2f} {cpu / ref_cpu:9.2f}x"
                f" {max(peaks[name]):9.1f} {statistics.median(loads):5.1f}",
                flush=True,
            )
            if args.all_runs:
                print("    runs s: " + " ".join(f"{t:.2f}" for t, _ in times[name]))


def timed(fn) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all threads of this process) of one call."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--repeats", type=int, default=5, help="per uncompressed case")
    parser.add_argument("--gzip-repeats", type=int, default=3, help="per gzip case (20 s each)")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument(
        "--cases",
        default="none:global,none:batch,gzip:global,gzip:batch",
        help="comma-separated compression:pairing pairs",
    )
    parser.add_argument(
        "--phases", action="store_true", help="also print where one candidate run of each case spends its time"
    )
    parser.add_argument("--input-compression", choices=("none", "gzip"), default="none", help="of the input file")
    parser.add_argument("--durable", action="store_true", help="the copy fsyncs its output, as mixup does")
    parser.add_argument(
        "--together",
        action="store_true",
        help="run the copy and every pairing of one output compression in one loop, in rotating order",
    )
    parser.add_argument(
        "--keep-input",
        type=Path,
        help="the input file at this path: made there (and kept) when it is not there yet, else reused as it is",
    )
    parser.add_argument("--all-runs", action="store_true", help="with --together: print every run's seconds")
    args = parser.parse_args(argv)
    installed.check(args)
    print(installed.header(), flush=True)

    work = Path(tempfile.mkdtemp(prefix="mixup-bench-", dir=args.workdir))
    try:
        src = work / "in.h5"
        if args.keep_input is not None:
            src = args.keep_input
        if not src.exists():
            make_input(src, args.rows, None if args.input_compression == "none" else args.input_compression)
        size = src.stat().st_size
        print(
            f"input: {args.rows} x 32x32x3 float32 + y[10], chunks of {CHUNK_ROWS} rows, "
            f"compression {args.input_compression}, {size / 1e9:.2f} GB on disk; "
            f"median of {args.repeats} (gzip: {args.gzip_repeats}), alternating; "
            f"copy {'fsynced' if args.durable else 'not fsynced'}"
        )
        if args.together:
            together(args, src, work)
            return
        phases = {}
        print(
            f"{'compression':<12} {'pairing':<8} {'h5py copy s':>12} {'mixup s':>9} {'ratio':>7}"
            f" {'copy CPU s':>11} {'mixup CPU s':>12} {'CPU ratio':>10} {'load':>5}"
        )
        for case in args.cases.split(","):
            compression, pairing = case.split(":")
            ref_t, cand_t = [], []

            def run_ref():
                ref_t.append(
                    timed(
                        lambda: h5py_copy(
                            src, work / "ref.h5", None if compression == "none" else compression, args.durable
                        )
                    )
                )
                (work / "ref.h5").unlink()

            def run_cand():
                cand_t.append(timed(lambda: candidate(src, work / "out.h5", compression, pairing)))
                (work / "out.h5").unlink()

            for i in range(args.gzip_repeats if compression == "gzip" else args.repeats):
                for run in (run_ref, run_cand) if i % 2 == 0 else (run_cand, run_ref):
                    run()
            if args.phases:
                phases[case] = candidate_phases(src, work / "out.h5", compression, pairing)
                (work / "out.h5").unlink()
            r, c = statistics.median(t for t, _ in ref_t), statistics.median(t for t, _ in cand_t)
            rc, cc = statistics.median(u for _, u in ref_t), statistics.median(u for _, u in cand_t)
            print(
                f"{compression:<12} {pairing:<8} {r:12.2f} {c:9.2f} {c / r:6.2f}x"
                f" {rc:11.2f} {cc:12.2f} {cc / rc:9.2f}x {os.getloadavg()[0]:5.1f}",
                flush=True,
            )
        for title, index in (
            ("where one candidate run spends its time (s):", 0),
            ("seconds in each stage's calls, in their own threads (they overlap):", 1),
        ):
            if not phases:
                break
            print(f"\n{title}")
            names = list(next(iter(phases.values()))[index])
            print(f"{'case':<14}" + "".join(f" {n:>14}" for n in names))
            for case, tables in phases.items():
                print(f"{case:<14}" + "".join(f" {tables[index][n]:14.2f}" for n in names))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
