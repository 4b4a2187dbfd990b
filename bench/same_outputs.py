"""Same outputs: the arrays ``mixup augment`` writes over a matrix of options.

    python bench/same_outputs.py --write before.json     # record
    python bench/same_outputs.py --compare before.json   # exit 1 and list what differs

Runs the ``mixup`` of this checkout (a subprocess with PYTHONPATH set to the
repository root) on the sample data and on a few inputs generated here
(chunked+gzip HDF5, ``.npz``, ``.npy`` directory, Zarr; integer, one-hot and
string labels, segmentation-mask pairs, unlabelled), over every pairing,
CutMix, copies with the original, balance, the Dask engine (one case),
several block and batch sizes and every output format. Each output array is
read with h5py, numpy or zarr directly (never through mixup_cli) and
recorded by its shape, dtype and SHA-256, together with the sidecar's
parameters and array digests. A refactoring that keeps every output byte
for byte compares identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"


def _sha(arr) -> dict:
    arr = np.asarray(arr)
    if arr.dtype.kind == "O":  # variable-length strings: their text
        data = "\x00".join(map(str, arr.ravel())).encode()
    else:
        data = np.ascontiguousarray(arr).tobytes()
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": hashlib.sha256(data).hexdigest()}


def read_arrays(path: Path) -> dict[str, dict]:
    """Every array of an output, by name, read by the format's own library."""
    out: dict[str, dict] = {}
    name = path.name
    if name.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, obj: out.__setitem__(k, _sha(obj[()])) if isinstance(obj, h5py.Dataset) else None)
            out["@attrs"] = {k: str(v) for k, v in sorted(f.attrs.items()) if k != "run_id"}
    elif name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            for k in sorted(z.files):
                out[k] = _sha(z[k])
    elif name.endswith(".zarr"):
        import zarr

        group = zarr.open_group(str(path), mode="r")

        def walk(g, prefix=""):
            for k, arr in sorted(g.arrays()):
                out[prefix + k] = _sha(arr[...])
            for k, sub in sorted(g.groups()):
                walk(sub, prefix + k + "/")

        walk(group)
    else:  # a directory of .npy files
        for f in sorted(path.rglob("*.npy")):
            out[str(f.relative_to(path))[:-4]] = _sha(np.load(f, allow_pickle=False))
    return out


def make_inputs(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1234)
    inputs = {"digits_h5": SAMPLE / "digits.h5", "digits_dir": SAMPLE / "digits"}
    # Chunked + gzip HDF5: images with integer labels (4 classes, unequal sizes).
    p = d / "img_gzip.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset(
            "x", data=rng.random((301, 6, 6, 3), dtype=np.float32), chunks=(16, 6, 6, 3), compression="gzip"
        )
        f.create_dataset(
            "y", data=rng.choice(4, size=301, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64), chunks=(64,), compression="gzip"
        )
    inputs["img_gzip"] = p
    # .npz: float64 x, one-hot y.
    p = d / "onehot.npz"
    labels = rng.integers(0, 3, 257)
    np.savez(p, x=rng.normal(size=(257, 6)), y=np.eye(3, dtype=np.float32)[labels])
    inputs["onehot_npz"] = p
    # .npz with string labels, uint8 x.
    p = d / "names.npz"
    np.savez(
        p, x=rng.integers(0, 256, (190, 5), dtype=np.uint8), y=np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 190)]
    )
    inputs["names_npz"] = p
    # .npy directory: int16 x and dense float y (regression: label-kernel).
    p = d / "dense_dir"
    p.mkdir()
    np.save(p / "x.npy", rng.integers(-500, 500, (233, 7), dtype=np.int16))
    np.save(p / "y.npy", rng.normal(size=233).astype(np.float32))
    inputs["dense_dir"] = p
    # Unlabelled .npy directory.
    p = d / "unlabelled"
    p.mkdir()
    np.save(p / "x.npy", rng.random((150, 4, 4), dtype=np.float32))
    inputs["unlabelled"] = p
    # Segmentation masks: images and uint8 masks of the same size.
    p = d / "masks.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=rng.random((130, 8, 8, 1), dtype=np.float32), chunks=(10, 8, 8, 1))
        f.create_dataset("y", data=rng.integers(0, 3, (130, 8, 8), dtype=np.uint8))
    inputs["masks"] = p
    # Zarr: float32 x, int labels.
    import zarr

    p = d / "store.zarr"
    g = zarr.open_group(str(p), mode="w")
    x = rng.random((170, 9), dtype=np.float32)
    ya = rng.integers(0, 5, 170).astype(np.int32)
    g.create_array("x", shape=x.shape, dtype=x.dtype, chunks=(32, 9))[...] = x
    g.create_array("y", shape=ya.shape, dtype=ya.dtype, chunks=(32,))[...] = ya
    inputs["zarr"] = p
    return inputs


# name: (input, output suffix, options)
CASES: list[tuple[str, str, str, list[str]]] = []


def _case(name, inp, suffix, *opts):
    CASES.append((name, inp, suffix, list(opts)))


for pairing in ("global", "batch", "within-class", "between-class", "knn", "knn-within-class"):
    _case(f"digits-{pairing}", "digits_h5", ".h5", "--pairing", pairing, "--block-rows", "512")
    _case(f"gzip-{pairing}", "img_gzip", ".h5", "--pairing", pairing, "--block-rows", "64", "--batch-size", "20")
_case("digits-knn-project", "digits_h5", ".npz", "--pairing", "knn", "--neighbors", "3", "--project", "8")
_case("dense-label-kernel", "dense_dir", ".h5", "--pairing", "label-kernel", "--bandwidth", "0.5", "--block-rows", "64")
_case("dense-label-kernel-npydir", "dense_dir", "_out", "--pairing", "label-kernel", "--bandwidth", "0.3")
_case("digits-default", "digits_h5", ".h5")
_case("digits-dir-npz", "digits_dir", ".npz", "--block-rows", "256", "--batch-size", "100")
_case("digits-dir-zarr", "digits_dir", ".zarr", "--block-rows", "256", "--copies", "2", "--include-original")
_case("digits-zarr2", "digits_h5", ".zarr", "--zarr-format", "2", "--block-rows", "128")
_case("digits-gzip-out", "digits_h5", ".h5", "--compression", "gzip", "--block-rows", "300", "--batch-size", "77")
_case("digits-copies", "digits_h5", ".h5", "--copies", "2", "--include-original", "--block-rows", "400")
_case(
    "digits-copies-batch7",
    "digits_h5",
    ".h5",
    "--copies",
    "2",
    "--include-original",
    "--block-rows",
    "400",
    "--batch-size",
    "7",
)
_case("gzip-cutmix", "img_gzip", ".h5", "--method", "cutmix", "--block-rows", "64")
_case("gzip-cutmix-within", "img_gzip", ".npz", "--method", "cutmix", "--pairing", "within-class", "--copies", "2")
_case("gzip-balance", "img_gzip", ".h5", "--balance", "--block-rows", "100")
_case(
    "gzip-balance-to",
    "img_gzip",
    ".zarr",
    "--balance-to",
    "50",
    "--pairing",
    "between-class",
    "--copies",
    "2",
    "--include-original",
)
_case("gzip-smoothing", "img_gzip", ".h5", "--label-smoothing", "0.1", "--num-classes", "6", "--x-dtype", "float64")
_case("gzip-pair", "img_gzip", ".h5", "--y-format", "pair", "--block-rows", "50")
_case("onehot-global", "onehot_npz", ".h5", "--block-rows", "64", "--batch-size", "30")
_case("onehot-within", "onehot_npz", "_out", "--pairing", "within-class", "--block-rows", "100")
_case("onehot-f16", "onehot_npz", ".npz", "--x-dtype", "float16", "--copies", "3")
_case("names-global", "names_npz", ".h5", "--block-rows", "64")
_case("names-within", "names_npz", ".npz", "--pairing", "within-class", "--include-original")
_case("names-balance", "names_npz", ".h5", "--balance", "--pairing", "within-class")
_case("dense-global", "dense_dir", ".zarr", "--block-rows", "100", "--batch-size", "33")
_case("unlabelled", "unlabelled", ".h5", "--no-y", "--block-rows", "64")
_case("unlabelled-knn", "unlabelled", "_out", "--no-y", "--pairing", "knn", "--copies", "2")
_case("masks-pair", "masks", ".h5", "--y-format", "pair", "--block-rows", "32", "--batch-size", "12")
_case("masks-pair-cutmix", "masks", ".zarr", "--y-format", "pair", "--method", "cutmix", "--layout", "NHWC")
_case("masks-pair-batch", "masks", ".npz", "--y-format", "pair", "--pairing", "batch", "--copies", "2")
_case("zarr-global", "zarr", ".h5", "--block-rows", "32")
_case("zarr-between", "zarr", ".zarr", "--pairing", "between-class", "--block-rows", "32", "--batch-size", "10")
_case("zarr-knn-within", "zarr", ".npz", "--pairing", "knn-within-class", "--neighbors", "4")
_case(
    "digits-dask",
    "digits_h5",
    ".zarr",
    "--engine",
    "dask",
    "--workers",
    "2",
    "--block-rows",
    "256",
    "--copies",
    "2",
    "--include-original",
)


def run_all(only: set[str] | None = None) -> dict[str, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    mixup = [sys.executable, "-m", "mixup_cli"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mixup-same-") as tmp:
        d = Path(tmp)
        (d / "in").mkdir()
        inputs = make_inputs(d / "in")
        for i, (name, inp, suffix, opts) in enumerate(CASES):
            if only and name not in only:
                continue
            out = d / f"out{i}{suffix}"
            cmd = [*mixup, "augment", str(inputs[inp]), str(out), "--seed", str(100 + i), "--quiet", *opts]
            proc = subprocess.run(cmd, env=env, cwd=d, capture_output=True, text=True)
            if proc.returncode != 0:
                results[name] = {"exit": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:]}
            else:
                sidecar = json.loads(Path(str(out) + ".provenance.json").read_text())
                results[name] = {
                    "exit": 0,
                    "arrays": read_arrays(out),
                    "parameters": sidecar["parameters"],
                    "recorded_sha256": {k: v.get("sha256") for k, v in sidecar["output"]["arrays"].items()},
                }
            print(f"{name:28s} exit {proc.returncode}", file=sys.stderr)
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink(missing_ok=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="record the outputs' digests in this JSON file")
    group.add_argument("--compare", type=Path, help="compare with a recorded JSON file; exit 1 on any difference")
    ap.add_argument("--only", nargs="*", help="run only these cases")
    args = ap.parse_args()
    results = run_all(set(args.only) if args.only else None)
    if args.write:
        args.write.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        failed = [n for n, r in results.items() if r["exit"] != 0]
        print(f"{len(results)} cases recorded in {args.write} ({len(failed)} refused: {', '.join(failed) or 'none'})")
        return 0
    before = json.loads(args.compare.read_text())
    differ = []
    for name, now in results.items():
        if name not in before:
            differ.append(f"{name}: not in {args.compare}")
        elif json.loads(json.dumps(now, sort_keys=True)) != before[name]:
            keys = sorted(
                k
                for k in set(now.get("arrays", {})) | set(before[name].get("arrays", {}))
                if now.get("arrays", {}).get(k) != before[name].get("arrays", {}).get(k)
            )
            differ.append(f"{name}: differs ({', '.join(keys) or 'exit, parameters or recorded digests'})")
    arrays = sum(len(r.get("arrays", {})) for r in results.values())
    if differ:
        print("\n".join(differ))
        print(f"{len(differ)} of {len(results)} cases differ")
        return 1
    print(f"all {len(results)} cases identical ({arrays} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
