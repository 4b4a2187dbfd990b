"""Set soak: SIGKILL, SIGINT or SIGTERM a set's run at a random instant,
then ``--resume`` once, against an uninterrupted run of the whole set.

    python bench/soak_sets.py [--trials 60] [--block-rows 700] [--workdir /tmp]
    python bench/soak_sets.py --pairing within-class --shard-compression gzip  # the scratch copy too

Builds a set of six HDF5 shards of unequal sizes (a few MB in all, blocks
straddling shards) and the reference, ``mixup augment shards... REF/ --seed 7
--block-rows B``, read with h5py. Each ``--shard I/3`` part is also run once
uninterrupted (its outputs must equal the reference's; its duration times
the trials of that part). Then, ``--trials`` times, alternately the whole
set and one ``--shard I/3`` part (random I): the run is started and sent a
signal (SIGKILL, SIGINT, SIGTERM in turn) one time in ten at an instant drawn
uniformly in start-up [0, S] (until the first partial file appears in
OUTDIR), otherwise uniformly in [0, 1.05 T] after it; then the same command
with ``--resume`` is run once. Every output of the run (or part) is compared
with the reference's array by array, byte for byte, and OUTDIR must hold
only those outputs, their sidecars and the manifest; a whole-set trial ends
with ``mixup verify OUTDIR`` (exit 0). Each trial is counted as:

- ``resumed``: exit 0, identical, something kept (an output skipped as
  already complete, or tasks of a partial output resumed);
- ``started over``: exit 0, identical, nothing kept from the stopped run;
- ``complete``: the stopped run had exited 0 (signal after the end, or
  caught too late to stop it); ``--resume`` wrote nothing;
- ``different``: exit 0 but an array differs (must never happen);
- ``failed``: ``--resume`` exits non-zero, an output does not read back,
  files left in OUTDIR beside the outputs (the manifest and the layout
  record aside), or ``mixup verify`` fails.

The exit codes of the stopped runs (130, 143, -9, 0, ...) are tallied per
signal. Not part of the test suite (minutes). One line per signal and kind on
stderr, a JSON summary on stdout; exit 1 if any trial is different or failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py
import installed  # noqa: E402  (first: the installed mixup_cli for the subprocesses)
import numpy as np
from soak_kill import STARTUP_SHARE, remove

# Unequal shards (rows); with --block-rows 700 most blocks straddle two.
SHARD_ROWS = (2300, 900, 3100, 1500, 650, 2750)
PARTS = 3
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
MANIFEST = "mixup-set.json"
LAYOUT_RECORD = ".mixup-set.layout.json"  # what later parts read instead of every input (docs/sets.md)
SIDECAR = ".provenance.json"


def make_shards(folder: Path, width: int, compression: str | None = None) -> list[Path]:
    rng = np.random.default_rng(0)
    filters = {"compression": compression} if compression else {}
    folder.mkdir()
    paths = []
    for k, rows in enumerate(SHARD_ROWS):
        path = folder / f"shard-{k}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "x", data=rng.standard_normal((rows, width), dtype=np.float32), chunks=(256, width), **filters
            )
            f.create_dataset(
                "y", data=np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)], chunks=(256, 10), **filters
            )
        paths.append(path)
    return paths


def part_outputs(index: int | None, names: list[str]) -> list[str]:
    """The outputs part ``index`` of PARTS writes (README: floor(I*S/N) to floor((I+1)*S/N)-1)."""
    if index is None:
        return list(names)
    s = len(names)
    return names[index * s // PARTS : (index + 1) * s // PARTS]


def digests(path: Path) -> dict[str, str]:
    """Each array's SHA-256 of its bytes, dtype and shape, read with h5py only."""
    found: dict[str, str] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            v = np.ascontiguousarray(obj[()])
            found[name] = f"{hashlib.sha256(v.tobytes()).hexdigest()} {v.dtype} {v.shape}"

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def listing(d: Path) -> list[str]:
    try:
        return sorted(p.name for p in d.iterdir())
    except FileNotFoundError:
        return []


def extras(outdir: Path, outputs: list[str]) -> list[str]:
    """Entries of OUTDIR that are neither these outputs, their sidecars, the
    manifest nor the layout record."""
    allowed = {MANIFEST, LAYOUT_RECORD, *outputs, *(o + SIDECAR for o in outputs)}
    return [n for n in listing(outdir) if n not in allowed]


def started(outdir: Path) -> bool:
    """Whether the run has made its first partial file in OUTDIR."""
    return any(n.startswith(".") and ".mixup-partial" in n for n in listing(outdir))


def command(shards: list[Path], outdir: Path, opts: list[str], index: int | None) -> list[str]:
    cmd = installed.mixup() + ["augment", *map(str, shards), f"{outdir}/"] + opts
    return cmd + (["--shard", f"{index}/{PARTS}"] if index is not None else [])


def timed_run(cmd: list[str], outdir: Path) -> tuple[float, float]:
    """One uninterrupted run: (start-up until the first partial file, the rest)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=installed.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not started(outdir):
        time.sleep(0.002)
    t1 = time.perf_counter()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return t1 - t0, time.perf_counter() - t1


def kept(resume_json: dict, outdir: Path) -> bool:
    """Whether --resume kept work of the stopped run: outputs skipped as
    complete, or an output's tasks resumed from its partial file."""
    if resume_json.get("skipped"):
        return True
    for out in resume_json.get("outputs", []):
        record = json.loads(Path(out + SIDECAR).read_text())
        if record.get("execution", {}).get("resumed_tasks"):
            return True
    return False


def trial(n: int, rng: random.Random, shards, names, ref, timings, opts, work: Path) -> dict:
    index = None if n % 2 == 0 else rng.randrange(PARTS)
    signum = SIGNALS[(n // 2) % len(SIGNALS)]
    outdir = work / "run"
    remove(outdir)
    mine = part_outputs(index, names)
    startup, took = timings[index]
    cmd = command(shards, outdir, opts, index)
    proc = subprocess.Popen(
        cmd + ["--quiet"], env=installed.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0 = time.perf_counter()
    if rng.random() < STARTUP_SHARE:
        delay = rng.uniform(0, startup)
        time.sleep(delay)
    else:
        while proc.poll() is None and not started(outdir):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 1.05 * took))
    at = time.perf_counter() - t0
    proc.send_signal(signum)
    _, err1 = proc.communicate(timeout=300)
    rc1 = proc.returncode
    left = listing(outdir)
    what = {
        "trial": n,
        "part": "set" if index is None else f"{index}/{PARTS}",
        "signal": signum.name,
        "at_s": round(at, 3),
        "rc": rc1,
    }
    again = subprocess.run(
        cmd + ["--resume", "--json"], env=installed.env(), capture_output=True, text=True, timeout=300
    )

    def failed(why: str) -> dict:
        return dict(
            what,
            outcome="failed",
            why=why,
            command=" ".join(cmd + ["--resume"]),
            left_after_stop=left,
            left_after_resume=listing(outdir),
            stderr_stop=err1.strip()[-300:],
            stderr_resume=again.stderr.strip()[-400:],
        )

    if again.returncode != 0:
        return failed(f"--resume exit {again.returncode}")
    try:
        summary = json.loads(again.stdout.strip().splitlines()[-1])
        got = {name: digests(outdir / name) for name in mine}
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a failure to report
        return failed(f"output or --json unreadable: {type(exc).__name__}: {exc}")
    differ = [name for name in mine if got[name] != ref[name]]
    if differ:
        return dict(failed(f"arrays differ in {differ}"), outcome="different")
    extra = extras(outdir, mine)
    if extra:
        return failed(f"left in OUTDIR after the resume: {extra}")
    if index is None:
        checked = subprocess.run(
            installed.mixup() + ["verify", str(outdir), "--quiet"],
            env=installed.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if checked.returncode != 0:
            return failed(f"mixup verify exit {checked.returncode}: {(checked.stdout + checked.stderr).strip()[-300:]}")
    if rc1 == 0:
        if summary.get("outputs"):
            return failed("the stopped run had exited 0, yet --resume wrote outputs")
        return dict(what, outcome="complete")
    return dict(what, outcome="resumed" if kept(summary, outdir) else "started over")


OUTCOMES = ("resumed", "started over", "complete", "different", "failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    installed.add_arguments(parser)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--width", type=int, default=192, help="float32 columns of x")
    parser.add_argument("--block-rows", type=int, default=700)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--pairing", default="global", help="--pairing of every run")
    parser.add_argument(
        "--shard-compression",
        default=None,
        choices=["gzip", "lzf"],
        help="of the shards (with a class pairing, a part's run then reads a scratch copy of the set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the instants and parts")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    ns = parser.parse_args()
    installed.check(ns)
    print(installed.header(), file=sys.stderr, flush=True)
    rng = random.Random(ns.seed)
    work = Path(tempfile.mkdtemp(prefix="mixup-soak-sets-", dir=ns.workdir))
    t_all = time.perf_counter()
    try:
        shards = make_shards(work / "shards", ns.width, ns.shard_compression)
        names = [p.name for p in shards]
        opts = ["--seed", "7", "--block-rows", str(ns.block_rows), "--copies", str(ns.copies), "--pairing", ns.pairing]
        timings: dict = {}
        runs = []
        for _ in range(3):  # medians of three: the machine's load varies
            remove(work / "ref")
            runs.append(timed_run(command(shards, work / "ref", opts, None) + ["--quiet"], work / "ref"))
        timings[None] = tuple(sorted(r[i] for r in runs)[1] for i in (0, 1))
        if extras(work / "ref", names):
            raise SystemExit(f"the reference run left {extras(work / 'ref', names)}")
        ref = {name: digests(work / "ref" / name) for name in names}
        for i in range(PARTS):  # each part (median of three): same bytes as the whole run, and its duration
            d = work / f"part-{i}"
            runs = []
            for _ in range(3):
                remove(d)
                runs.append(timed_run(command(shards, d, opts, i) + ["--quiet"], d))
            timings[i] = tuple(sorted(r[j] for r in runs)[1] for j in (0, 1))
            mine = part_outputs(i, names)
            if {n: digests(d / n) for n in mine} != {n: ref[n] for n in mine} or extras(d, mine):
                raise SystemExit(f"--shard {i}/{PARTS} uninterrupted differs from the whole set's run")
            remove(d)
        print(
            f"set of {len(names)} shards, {sum(SHARD_ROWS)} rows, "
            f"{sum(p.stat().st_size for p in shards) / 2**20:.1f} MiB ({ns.shard_compression or 'not compressed'}), "
            f"--block-rows {ns.block_rows} --copies {ns.copies} --pairing {ns.pairing}; "
            f"start-up / run: set {timings[None][0]:.2f} / {timings[None][1]:.2f} s, "
            + ", ".join(f"part {i} {timings[i][0]:.2f} / {timings[i][1]:.2f} s" for i in range(PARTS)),
            file=sys.stderr,
            flush=True,
        )
        results = []
        for n in range(ns.trials):
            result = trial(n, rng, shards, names, ref, timings, opts, work)
            results.append(result)
            if result["outcome"] in ("different", "failed"):
                print("   ", json.dumps(result), file=sys.stderr, flush=True)
        remove(work / "run")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - t_all
    table = {}
    for sig in SIGNALS:
        for kind in ("set", "part"):
            rows = [r for r in results if r["signal"] == sig.name and (r["part"] == "set") == (kind == "set")]
            counts = Counter(r["outcome"] for r in rows)
            codes = Counter(str(r["rc"]) for r in rows)
            table[f"{sig.name} {kind}"] = {
                "trials": len(rows),
                **{o: counts[o] for o in OUTCOMES},
                "exit codes": dict(sorted(codes.items())),
            }
            print(
                f"{sig.name:8} {kind:4} trials {len(rows):3}  "
                + "  ".join(f"{o} {counts[o]}" for o in OUTCOMES)
                + f"  exit codes {dict(sorted(codes.items()))}",
                file=sys.stderr,
                flush=True,
            )
    totals = Counter(r["outcome"] for r in results)
    bad = [r for r in results if r["outcome"] in ("different", "failed")]
    print(
        json.dumps(
            {
                "trials": ns.trials,
                "seconds": round(took, 1),
                "block_rows": ns.block_rows,
                "shard_rows": list(SHARD_ROWS),
                "copies": ns.copies,
                "pairing": ns.pairing,
                "shard_compression": ns.shard_compression,
                "startup_run_s": {
                    ("set" if k is None else f"{k}/{PARTS}"): [round(v, 3) for v in t] for k, t in timings.items()
                },
                "totals": {o: totals[o] for o in OUTCOMES},
                "by_signal_and_kind": table,
                "failures": bad,
                "trials_detail": [
                    {k: r[k] for k in ("trial", "part", "signal", "at_s", "rc", "outcome")} for r in results
                ],
            },
            indent=1,
        )
    )
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
