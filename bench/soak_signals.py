"""Soak: SIGINT/SIGTERM at random instants, and SIGKILL at every step of the
final commit, of `mixup augment ... --overwrite` runs replacing an old output.

Not part of the test suite (minutes). For each trial it checks the disk
against the exit code, the way a batch script would trust it:

* ``signals``: a signal at a random instant of a whole run. Exit 0 must mean
  the new output with its new sidecar; 130/143 the old output with its old
  sidecar, and the partial kept: the command the message gives
  (``--resume``) must then give output byte-identical to an uninterrupted run.
* ``kills``: SIGKILL at a random step of the commit (``MIXUP_TEST_PAUSE``),
  then ``mixup verify OUT``: it must find the old output with the old
  sidecar or the new with the new, verify OK, and nothing left beside it.

Outputs: HDF5, ``.npz``, a ``.npy`` folder, Zarr, Parquet and a WebDataset
``.tar`` (of uint8 images), read back with h5py, numpy, zarr, pyarrow and
tarfile, never through mixup_cli.

    python bench/soak_signals.py --trials 40 --kills 20
    python bench/soak_signals.py --trials 12 --kills 8 --formats out.parquet out.tar
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent

import installed  # noqa: E402  (the installed mixup_cli for the subprocesses)

FORMATS = ["out.h5", "out.npz", "out", "out.zarr", "out.parquet", "out.tar"]
# A WebDataset output holds images: its input is uint8 images (rows x 8 x 8 x 3) instead of float rows.
IMAGE_FORMATS = {"out.tar"}
STAGES = ["staged", "commit-record", "output-in-place", "sidecar-in-place", "cleaned", "committed"]


def env(**extra):
    return installed.env(**extra)


def exe():
    return installed.mixup()


def run(*args, **extra):
    return subprocess.run(exe() + [str(a) for a in args], capture_output=True, text=True, env=env(**extra), timeout=300)


def start(*args, **extra):
    return subprocess.Popen(
        exe() + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra)
    )


def arrays(path: Path) -> dict[str, bytes]:
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return {k: f[k][()].tobytes() for k in f}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].tobytes() for k in z.files}
    if path.suffix == ".zarr":
        import zarr

        return {k: np.asarray(a[...]).tobytes() for k, a in zarr.open_group(str(path), mode="r").arrays()}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {name: str(table.column(name).to_pylist()).encode() for name in table.column_names}
    if path.suffix == ".tar":
        import tarfile

        with tarfile.open(path) as tar:  # every sample's members (the PAX header's run id differs by run)
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return {p.stem: np.load(p, allow_pickle=False).tobytes() for p in path.glob("*.npy")}


def sidecar(out: Path) -> dict:
    return json.loads(Path(f"{out}.provenance.json").read_text())


def state(out: Path, refs) -> str:
    try:
        found, record = arrays(out), sidecar(out)
    except Exception as exc:  # unreadable: the worst outcome
        return f"unreadable ({type(exc).__name__})"
    for label, (want, want_record) in refs.items():
        if found == want:
            same = record["parameters"]["seed"] == want_record["parameters"]["seed"] and (
                record["output"]["arrays"] == want_record["output"]["arrays"]
            )
            return label if same else f"{label} data, other sidecar"
    return "neither"


def leftovers(d: Path, name: str) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(f".{name}.mixup"))


def place_old(d: Path, name: str, refs_dir: Path) -> Path:
    src, out = refs_dir / "old" / name, d / name
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, out)
    shutil.copy2(f"{src}.provenance.json", f"{out}.provenance.json")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--trials", type=int, default=40, help="random-instant signals per format")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs at commit steps per format")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--formats", nargs="+", default=FORMATS, choices=FORMATS, help="outputs to soak (all by default)"
    )
    opts = parser.parse_args()
    installed.check(opts)
    print(installed.header(), flush=True)
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="mixup-soak-"))
    gen = np.random.default_rng(0)
    inputs = {"rows": work / "in.h5", "images": work / "images.h5"}
    with h5py.File(inputs["rows"], "w") as f:
        f["x"] = gen.standard_normal((opts.rows, 64), dtype=np.float32)
        f["y"] = np.eye(10, dtype=np.float32)[gen.integers(0, 10, opts.rows)]
    with h5py.File(inputs["images"], "w") as f:
        f["x"] = gen.integers(0, 256, (opts.rows // 4, 8, 8, 3), dtype=np.uint8)
        f["y"] = gen.integers(0, 10, opts.rows // 4)
    common = ["--block-rows", "1000", "--copies", "2", "--quiet"]
    try:
        for name in opts.formats:
            src = inputs["images" if name in IMAGE_FORMATS else "rows"]
            refs = {}
            for label, seed in (("old", 1), ("new", 2)):
                (work / label).mkdir(exist_ok=True)
                t0 = time.monotonic()
                done = run("augment", src, work / label / name, "--seed", seed, *common)
                assert done.returncode == 0, done.stderr
                duration = time.monotonic() - t0
                refs[label] = (arrays(work / label / name), sidecar(work / label / name))
            outcomes, bad = Counter(), []
            for trial in range(opts.trials):
                d = work / f"{name}-s{trial}"
                d.mkdir()
                out = place_old(d, name, work)
                signum = rng.choice([signal.SIGINT, signal.SIGTERM])
                proc = start("augment", src, out, "--seed", 2, "--overwrite", *common)
                time.sleep(rng.uniform(0, duration * 1.1))
                proc.send_signal(signum)
                _, err = proc.communicate(timeout=300)
                found = state(out, refs)
                rc = proc.returncode
                if rc == 0:
                    ok = found == "new" and not leftovers(d, name)
                    outcomes["0: new" + (", too late" if "too late" in err else "")] += 1
                elif rc in (130, 143):
                    ok = found == "old"
                    if "continue with: " in err:
                        command = shlex.split(err.split("continue with: ", 1)[1].split(" (or run it again", 1)[0])
                        resumed = run(*command[1:])
                        ok = ok and resumed.returncode == 0 and state(out, refs) == "new" and not leftovers(d, name)
                        outcomes[f"{rc}: old, resumed identical" if ok else f"{rc}: resume FAILED"] += 1
                    else:
                        ok = ok and not leftovers(d, name)
                        outcomes[f"{rc}: old, nothing kept"] += 1
                elif rc == -signum or "KeyboardInterrupt" in err:
                    # In the interpreter's own start-up, before any of mixup runs: nothing begun.
                    ok = found == "old" and not leftovers(d, name)
                    outcomes["stopped in interpreter start-up, old"] += 1
                else:
                    ok = False
                if not ok:
                    bad.append((trial, rc, found, err.strip()[-300:]))
                shutil.rmtree(d)
            print(
                f"{name}: signals at random instants: exit code matched disk in "
                f"{opts.trials - len(bad)} of {opts.trials}; {dict(outcomes)}"
            )
            for item in bad:
                print("   MISMATCH", item)

            kills, kbad = Counter(), []
            for trial in range(opts.kills):
                d = work / f"{name}-k{trial}"
                d.mkdir()
                out = place_old(d, name, work)
                stage = STAGES[trial % len(STAGES)]
                flag = d / "flag"
                proc = start(
                    "augment", src, out, "--seed", 2, "--overwrite", *common, MIXUP_TEST_PAUSE=f"{stage}:{flag}"
                )
                while not flag.exists() and proc.poll() is None:
                    time.sleep(0.002)
                proc.kill()
                proc.communicate(timeout=60)
                flag.unlink(missing_ok=True)
                checked = run("verify", out, "--quiet")
                found = state(out, refs)
                ok = (
                    checked.returncode == 0
                    and found in ("old", "new")
                    and not [
                        n
                        for n in leftovers(d, name)
                        if n
                        not in (
                            f".{name}.mixup-partial",
                            f".{name}.mixup-partial.journal.json",
                            f".{name}.mixup-partial.journal.json.log",
                            f".{name}.mixup-partial.provenance.json",
                            f".{name}.mixup-partial.lock",
                        )
                    ]
                )
                kills[f"{stage}: {found}"] += 1
                if not ok:
                    kbad.append((stage, found, checked.stdout[-200:], checked.stderr[-300:]))
                shutil.rmtree(d)
            print(
                f"{name}: SIGKILL at commit steps, then verify: consistent in {opts.kills - len(kbad)} of "
                f"{opts.kills}; {dict(kills)}"
            )
            for item in kbad:
                print("   INCONSISTENT", item)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
