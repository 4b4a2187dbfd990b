"""Memory benchmark: peak RSS of ``mixup augment`` on N and 8N rows.

    python bench/bench_memory.py [--rows 4096] [--workdir /tmp]

Writes two HDF5 files (float32 x of 32x32x3 per row and one-hot y[10],
chunks of 256 rows) with N and 8N rows under a temporary folder in
``--workdir``, runs ``mixup augment`` on each as a subprocess (default
options, global pairing, uncompressed, then gzip) and reads each child's
peak RSS (``VmHWM`` in ``/proc/self/status``, reported by the child as it
exits). It prints the ratio of the two peaks
(target: under 1.10) and compares each peak with 4x the default batch's
bytes plus a baseline: the peak of the same command on a 64-row file
(interpreter, imports, HDF5 library, everything but the data buffers).
Files are deleted at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)

from mixup_cli.mixing.sampling import default_block_rows  # noqa: E402
from mixup_cli.run.planner import default_batch_rows  # noqa: E402

ROW_SHAPE = (32, 32, 3)
CLASSES = 10


def make_input(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", shape=(rows,) + ROW_SHAPE, dtype=np.float32, chunks=(min(256, rows),) + ROW_SHAPE)
        y = f.create_dataset("y", shape=(rows, CLASSES), dtype=np.float32, chunks=(min(256, rows), CLASSES))
        for s in range(0, rows, 4096):
            e = min(rows, s + 4096)
            x[s:e] = rng.random((e - s,) + ROW_SHAPE, dtype=np.float32)
            y[s:e] = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, e - s)]


# The child reports its own high-water mark (VmHWM) as it exits. The kernel's
# rusage figure for a child (os.wait4, RUSAGE_CHILDREN) is not used: it keeps
# the peak from before exec, i.e. this benchmark process's own size.
_WRAPPER = """
import atexit, runpy, sys
def _report():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            sys.stderr.write('VMHWM_KB ' + line.split()[1] + '\\n')
atexit.register(_report)
sys.argv = ['mixup'] + sys.argv[1:]
runpy.run_module('mixup_cli', run_name='__main__')
"""


def peak_rss(args: list[str]) -> int:
    """Peak resident set size (bytes) of one ``mixup`` process."""
    env = installed.env()
    done = subprocess.run(
        installed.python() + ["-c", _WRAPPER] + args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"mixup augment failed: {done.stderr}")
    kb = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("VMHWM_KB ")]
    return kb[-1] * 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=4096, help="N")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    installed.check(args)
    print(installed.header(), flush=True)
    n = args.rows
    row_bytes = int(np.prod(ROW_SHAPE)) * 4 + CLASSES * 4
    block = default_block_rows(row_bytes)
    batch_bytes = default_batch_rows(row_bytes, block) * row_bytes
    work = Path(tempfile.mkdtemp(prefix="mixup-mem-", dir=args.workdir))
    mb = 1 / 2**20
    try:
        files = {}
        for rows in (64, n, 8 * n):
            files[rows] = work / f"in-{rows}.h5"
            make_input(files[rows], rows)
        print(
            f"rows of 32x32x3 float32 + y[{CLASSES}]: {row_bytes} bytes; default block {block} rows, "
            f"default batch {batch_bytes * mb:.1f} MiB"
        )
        print(
            f"{'compression':<12} {'baseline MiB':>13} {'N':>7} {'peak MiB':>9} {'8N':>7} {'peak MiB':>9}"
            f" {'8N / N':>7} {'limit MiB':>10} {'under':>6}"
        )
        for comp in ("none", "gzip"):
            peaks = {}
            for rows, src in files.items():
                out = work / f"out-{rows}.h5"
                peaks[rows] = peak_rss(["augment", str(src), str(out), "--seed", "1", "--compression", comp, "-q"])
                out.unlink()
                Path(str(out) + ".provenance.json").unlink()
            limit = peaks[64] + 4 * batch_bytes
            worst = max(peaks[n], peaks[8 * n])
            print(
                f"{comp:<12} {peaks[64] * mb:13.1f} {n:7d} {peaks[n] * mb:9.1f} {8 * n:7d} {peaks[8 * n] * mb:9.1f}"
                f" {peaks[8 * n] / peaks[n]:7.3f} {limit * mb:10.1f} {'yes' if worst < limit else 'NO':>6}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
