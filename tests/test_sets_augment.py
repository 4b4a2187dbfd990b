"""``mixup augment IN1 IN2 ... OUTDIR``: a set mixed as the concatenation of
its inputs. Outputs are reopened with h5py/numpy directly and compared,
byte for byte, with the single-file run on one file holding the
concatenated input (written here with h5py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, default_signals, examples, load_output, mixup_executable, write_h5, write_npy_dir, write_npz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixup_cli.commands.augment_set import augment_set
from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.sets import Part, layout_record

# Parts keep the set's checked layout in OUTDIR for the parts that follow
# (sets/layout_record.py); a run of the whole set never needs it.
RECORD = layout_record.RECORD
SIZES = (37, 5, 64, 1, 29)  # unequal; with --block-rows 16 no boundary but 0 falls on a block's
BLOCK = 16


def _arrays(n: int, x_shape=(6, 5, 3), seed=0, y="onehot"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + x_shape).astype(np.float32)
    if y == "onehot":
        yv = np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)]
    else:  # a regression target, for the label kernel
        yv = rng.standard_normal(n).astype(np.float32)
    return x, yv


def _write(path: Path, fmt: str, x, y) -> Path:
    if fmt == "h5":
        return write_h5(path.with_suffix(".h5"), x=x, y=y)
    if fmt == "npz":
        return write_npz(path.with_suffix(".npz"), x=x, y=y)
    return write_npy_dir(path, x=x, y=y)


def _set(tmp_path: Path, sizes=SIZES, fmts=("h5",), y="onehot", seed=0):
    """The shards (formats cycling through ``fmts``) and one HDF5 file of their concatenation."""
    x, yv = _arrays(sum(sizes), seed=seed, y=y)
    folder = tmp_path / "shards"
    folder.mkdir(exist_ok=True)
    paths, at = [], 0
    for k, n in enumerate(sizes):
        paths.append(_write(folder / f"part-{k:04d}", fmts[k % len(fmts)], x[at : at + n], yv[at : at + n]))
        at += n
    with h5py.File(tmp_path / "whole.h5", "w") as f:  # the concatenation, written directly
        f["x"], f["y"] = x, yv
    return paths, tmp_path / "whole.h5"


def _single(whole: Path, out: Path, **common) -> dict[str, np.ndarray]:
    augment(AugmentRequest(whole, out, command_line=[], **common))
    with h5py.File(out, "r") as f:
        return {k: f[k][()] for k in f}


def _names(folder: Path) -> list[str]:
    """What ``folder`` holds, less the layout record."""
    return sorted(x.name for x in folder.iterdir() if x.name != RECORD)


def _outputs(outdir: Path, paths) -> list[dict[str, np.ndarray]]:
    return [load_output(outdir / p.name) for p in paths]


def _assert_concatenation(single: dict, outs: list[dict], sizes=SIZES) -> None:
    """Each segment of the single-file output is that segment of every output, in input order."""
    total = sum(sizes)
    for key, want in single.items():
        segments = len(want) // total
        pieces = [out[key][s * n : (s + 1) * n] for s in range(segments) for out, n in zip(outs, sizes)]
        got = np.concatenate(pieces)
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert got.tobytes() == want.tobytes(), key


def _digest_from_file(arr: np.ndarray, scheme: dict) -> str:
    """The sidecar's array digest recomputed from the output alone: SHA-256 of
    each block's SHA-256, blocks cut every block_rows, shifted by block_offset."""
    n, br, off = scheme["segment_rows"], scheme["block_rows"], scheme.get("block_offset", 0)
    outer = hashlib.sha256()
    for s in range(len(arr) // n):
        cuts = [0] + [c for c in range(br - off if off else br, n, br)] + [n]
        for a, b in zip(cuts, cuts[1:]):
            rows = np.ascontiguousarray(arr[s * n + a : s * n + b])
            outer.update(hashlib.sha256(rows.tobytes()).digest())
    return outer.hexdigest()


CASES = [
    dict(pairing="global"),
    dict(pairing="batch"),
    dict(pairing="within-class"),
    dict(pairing="between-class"),
    dict(pairing="knn", neighbors=3),
    dict(pairing="knn-within-class", neighbors=2),
    dict(pairing="label-kernel", bandwidth=0.5),
    dict(method="cutmix", pairing="global"),
    dict(method="cutmix", pairing="within-class"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_the_sets_outputs_are_the_single_file_run_on_the_concatenation(tmp_path, case):
    y = "dense" if case.get("pairing") == "label-kernel" else "onehot"
    paths, whole = _set(tmp_path, y=y)
    common = dict(alpha=0.4, seed=11, block_rows=BLOCK, copies=2, include_original=True, batch_size=7, **case)
    single = _single(whole, tmp_path / "single.h5", **common)
    outdir = tmp_path / "mixed"
    result = augment_set(AugmentRequest(paths[0], outdir, command_line=[], **common), paths, outdir)
    assert [p.name for p in result.written] == [p.name for p in paths]
    outs = _outputs(outdir, paths)
    _assert_concatenation(single, outs)
    for out, n in zip(outs, SIZES):  # partner is a row of the whole set: pairs cross the inputs
        assert len(out["lam"]) == 3 * n
    assert any((out["partner"][n:] >= n).any() for out, n in zip(outs, SIZES)) or case.get("pairing") == "batch"
    for k, p in enumerate(paths):  # each sidecar's digests follow from its file alone
        record = json.loads((outdir / (p.name + ".provenance.json")).read_text())
        scheme = record["output"]["array_sha256"]
        assert scheme["block_offset"] == sum(SIZES[:k]) % BLOCK and scheme["segment_rows"] == SIZES[k]
        for key, arr in outs[k].items():
            assert record["output"]["arrays"][key]["sha256"] == _digest_from_file(arr, scheme), (k, key)


def test_a_part_is_written_in_one_pass_of_the_local_engine(tmp_path, monkeypatch):
    """The local engine writes all of a part's outputs in one pass (one set of
    threads and buffers, outputs committed one by one); the bytes are the
    single-file run's, and a part resumed after its first output still is."""
    from mixup_cli.engines import local

    passes = []
    real = local.run_outputs
    monkeypatch.setattr(local, "run_outputs", lambda *a, **k: passes.append(len(a[2])) or real(*a, **k))
    paths, whole = _set(tmp_path)
    common = dict(alpha=0.4, seed=11, block_rows=BLOCK, copies=2, batch_size=5)
    single = _single(whole, tmp_path / "single.h5", **common)
    passes.clear()
    outdir = tmp_path / "mixed"
    result = augment_set(AugmentRequest(paths[0], outdir, command_line=[], **common), paths, outdir)
    assert passes == [len(paths)] and [p.name for p in result.written] == [p.name for p in paths]
    _assert_concatenation(single, _outputs(outdir, paths))
    # --resume with the first two committed: one pass over the other three
    for p in paths[2:]:
        (outdir / p.name).unlink()
        (outdir / (p.name + ".provenance.json")).unlink()
    passes.clear()
    again = augment_set(AugmentRequest(paths[0], outdir, command_line=[], resume=True, **common), paths, outdir)
    assert passes == [3] and [p.name for p in again.skipped] == [p.name for p in paths[:2]]
    _assert_concatenation(single, _outputs(outdir, paths))


def test_mixed_formats_and_the_sidecars_own_input(tmp_path):
    """Shards of HDF5, .npz and .npy directories, outputs each in its input's
    format; each sidecar records (and hashes) its own input only."""
    paths, whole = _set(tmp_path, fmts=("h5", "npz", "npy"))
    common = dict(alpha=0.3, seed=2, block_rows=BLOCK, pairing="within-class")
    single = _single(whole, tmp_path / "single.h5", **common)
    outdir = tmp_path / "mixed"
    augment_set(AugmentRequest(paths[0], outdir, command_line=[], hash_files=True, **common), paths, outdir)
    _assert_concatenation(single, _outputs(outdir, paths))
    manifest = json.loads((outdir / "mixup-set.json").read_text())
    assert [e["name"] for e in manifest["inputs"]] == [p.name for p in paths]
    assert [e["offset"] for e in manifest["inputs"]] == list(np.cumsum((0,) + SIZES[:-1]))
    for k, p in enumerate(paths):
        record = json.loads((outdir / (p.name + ".provenance.json")).read_text())
        assert record["input"]["path"] == str(p.resolve())
        files = [Path(f["path"]) for f in record["input"]["files"]]
        assert all(f == p.resolve() or f.parent == p.resolve() for f in files), files
        assert record["set"]["index"] == k and record["set"]["set_id"] == manifest["set_id"]
        assert record["set"]["input"]["offset"] == manifest["inputs"][k]["offset"]


# --- parts ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "count",
    [1, 2, 3, len(SIZES), len(SIZES) + 2],
)
def test_any_split_into_parts_writes_the_whole_runs_files(tmp_path, count):
    paths, _ = _set(tmp_path)
    common = dict(alpha=0.3, seed=5, block_rows=BLOCK, copies=2, pairing="between-class")
    whole_dir, parts_dir = tmp_path / "whole", tmp_path / "parts"
    augment_set(AugmentRequest(paths[0], whole_dir, command_line=[], **common), paths, whole_dir)
    owners = {}
    for i in reversed(range(count)):  # any order
        result = augment_set(
            AugmentRequest(paths[0], parts_dir, command_line=[], **common), paths, parts_dir, Part(i, count)
        )
        for p in result.written:
            owners[p.name] = i
    assert sorted(owners) == sorted(p.name for p in paths)
    assert _names(whole_dir) == _names(parts_dir)
    assert (whole_dir / "mixup-set.json").read_bytes() == (parts_dir / "mixup-set.json").read_bytes()
    for k, p in enumerate(paths):
        a, b = load_output(whole_dir / p.name), load_output(parts_dir / p.name)
        assert {key: v.tobytes() for key, v in a.items()} == {key: v.tobytes() for key, v in b.items()}
        section = json.loads((parts_dir / (p.name + ".provenance.json")).read_text())["set"]
        assert section["part"] == {"index": owners[p.name], "count": count}
        assert (section["index"], section["outputs"], section["rows"]) == (k, len(SIZES), sum(SIZES))
        # Part I of N writes outputs floor(I*S/N) .. floor((I+1)*S/N) - 1.
        i = owners[p.name]
        assert i * len(SIZES) // count <= k < (i + 1) * len(SIZES) // count


# --- through the command line ----------------------------------------------


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _mixup(*args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        mixup_executable() + ["augment", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(**extra),
    )


@pytest.mark.slow
def test_the_command_line_forms(tmp_path):
    paths, whole = _set(tmp_path)
    listing = tmp_path / "shards.txt"
    listing.write_text("# the set\n" + "\n".join(f"shards/{p.name}" for p in paths[2:]) + "\n")
    args = ["--seed", 3, "--block-rows", BLOCK, "--copies", 2]
    r = _mixup(*paths[:2], tmp_path / "out", "--inputs-from", listing, *args, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["part"] == "0/1" and summary["seed"] == 3 and summary["rows"] == 2 * sum(SIZES)
    assert [Path(p).name for p in summary["outputs"]] == [p.name for p in paths]
    assert len(summary["set_id"]) == 64
    single = _single(whole, tmp_path / "single.h5", alpha=0.2, seed=3, block_rows=BLOCK, copies=2)
    _assert_concatenation(single, _outputs(tmp_path / "out", paths))
    # One input makes one output, OUT with a slash or not (tests/test_cli.py); --shard 0/1 a set of one.
    r = _mixup(paths[0], tmp_path / "one", "--shard", "0/1", *args)
    assert r.returncode == 0 and sorted(x.name for x in (tmp_path / "one").iterdir()) == [
        "mixup-set.json",
        paths[0].name,
        paths[0].name + ".provenance.json",
    ]
    r = _mixup(paths[0], tmp_path / "plain.h5", *args)
    assert r.returncode == 0 and "set" not in json.loads((tmp_path / "plain.h5.provenance.json").read_text())
    # Again without --resume: refused, nothing changed; with --resume: nothing to do, exit 0.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p.name != RECORD}
    r = _mixup(*paths, tmp_path / "out", *args)
    assert r.returncode == 1 and "already exists (an output of this set)" in r.stderr
    r = _mixup(*paths, tmp_path / "out", "--resume", "--block-rows", BLOCK, "--copies", 2, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"] == [] and json.loads(r.stdout)["seed"] == 3  # seed from the manifest
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p.name != RECORD}


@pytest.mark.slow
def test_the_part_is_shown_only_with_shard(tmp_path):
    """A run without --shard writes the whole set: its closing line names no part."""
    paths, _ = _set(tmp_path, sizes=(7, 5))
    r = _mixup(*paths, tmp_path / "whole", "--seed", 3)
    assert r.returncode == 0, r.stderr
    said = r.stderr.replace(str(tmp_path), "TMP")
    assert said.startswith("wrote 2 output(s) to TMP/whole, 12 rows, in ") and "part" not in said, said
    r = _mixup(*paths, tmp_path / "whole", "--seed", 3, "--resume")
    said = r.stderr.replace(str(tmp_path), "TMP")
    assert r.returncode == 0 and "TMP/whole: its 2 output(s) already complete" in said and "part" not in said, said
    r = _mixup(*paths, tmp_path / "halves", "--seed", 3, "--shard", "1/2")
    assert r.returncode == 0, r.stderr
    assert "to " + str(tmp_path / "halves") + ", 5 rows in this part, in " in r.stderr
    assert r.stderr.rstrip().endswith(", part 1/2)"), r.stderr


def _paused(args, stage: str, flag: Path, **extra):
    proc = subprocess.Popen(
        mixup_executable() + ["augment", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(MIXUP_TEST_PAUSE=f"{stage}:{flag}", **extra),
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, at", [(signal.SIGINT, 130, 12), (signal.SIGTERM, 143, 22)])
def test_a_part_stopped_mid_output_resumes_to_the_same_bytes(tmp_path, sig, code, at):
    paths, _ = _set(tmp_path)
    args = [
        *paths,
        tmp_path / "out",
        "--seed",
        4,
        "--block-rows",
        BLOCK,
        "--batch-size",
        4,
        "--copies",
        2,
        "--shard",
        "0/2",
    ]
    ref = _mixup(*paths, tmp_path / "ref", "--seed", 4, "--block-rows", BLOCK, "--copies", 2, "--shard", "0/2")
    assert ref.returncode == 0, ref.stderr
    flag = tmp_path / "paused.flag"
    proc = _paused(args, f"progress@{at}", flag)
    proc.send_signal(sig)
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "stopped at a checkpoint" in stderr and "--resume" in stderr
    left = _names(tmp_path / "out")
    committed = [p.name for p in paths if p.name in left]
    assert committed == [
        p.name for p in paths[: at // 20]
    ]  # 20 batches in output 0: those before the stop are complete
    assert any(name.endswith(".journal.json") for name in left)  # the current one is resumable
    r = _mixup(*args, "--resume")
    assert r.returncode == 0, r.stderr
    for p in paths[:2]:  # part 0 of 2 of 5 outputs: outputs 0 and 1
        a, b = load_output(tmp_path / "ref" / p.name), load_output(tmp_path / "out" / p.name)
        assert {k: v.tobytes() for k, v in a.items()} == {k: v.tobytes() for k, v in b.items()}
    assert _names(tmp_path / "out") == _names(tmp_path / "ref")


@pytest.mark.slow
def test_a_signal_between_two_outputs_keeps_the_first(tmp_path):
    paths, _ = _set(tmp_path)
    args = [*paths, tmp_path / "out", "--seed", 4, "--block-rows", BLOCK]
    flag = tmp_path / "paused.flag"
    proc = _paused(args, "committed", flag)  # output 0 committed, output 1 not started
    proc.send_signal(signal.SIGINT)
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    left = sorted(x.name for x in (tmp_path / "out").iterdir())
    assert left == ["mixup-set.json", paths[0].name, paths[0].name + ".provenance.json"], left
    r = _mixup(*args, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in json.loads(r.stdout)["skipped"]] == [paths[0].name]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [
        "sidecar-in-place",
        "cleaned",
        "committed",
    ],
)
def test_a_kill_late_in_an_outputs_commit_leaves_nothing_after_resume(tmp_path, stage):
    # SIGKILL once output 0 and its sidecar are in place, before its commit
    # record or its lock file is removed: --resume skips output 0 as complete
    # and must still finish its commit and remove the lock file.
    paths, _ = _set(tmp_path)
    args = [*paths, tmp_path / "out", "--seed", 4, "--block-rows", BLOCK]
    flag = tmp_path / "paused.flag"
    proc = _paused(args, stage, flag)
    proc.kill()
    proc.communicate(timeout=60)
    left = _names(tmp_path / "out")
    assert f".{paths[0].name}.mixup-partial.lock" in left and paths[0].name + ".provenance.json" in left, left
    r = _mixup(*args, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in json.loads(r.stdout)["skipped"]] == [paths[0].name]
    names = [p.name for p in paths]
    assert _names(tmp_path / "out") == sorted(["mixup-set.json", *names, *(n + ".provenance.json" for n in names)])


@pytest.mark.slow
def test_a_kill_while_the_manifest_is_staged_leaves_nothing_after_resume(tmp_path):
    paths, _ = _set(tmp_path)
    args = [*paths, tmp_path / "out", "--seed", 4, "--block-rows", BLOCK, "--shard", "1/2"]
    flag = tmp_path / "paused.flag"
    proc = _paused(args, "manifest-staged", flag)
    proc.kill()
    proc.communicate(timeout=60)
    left = sorted(x.name for x in (tmp_path / "out").iterdir())
    assert len(left) == 1 and left[0].startswith(".mixup-set.") and left[0].endswith(".json.tmp"), left
    r = _mixup(*args, "--resume")
    assert r.returncode == 0, r.stderr
    names = [p.name for p in paths[2:]]  # part 1 of 2 of 5 outputs: outputs 2 to 4
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == sorted(
        ["mixup-set.json", *names, *(n + ".provenance.json" for n in names)]
    )


def test_a_manifest_staged_by_another_host_or_a_live_process_is_left(tmp_path):
    import socket

    from mixup_cli.sets import identity

    host = socket.gethostname()
    live = subprocess.Popen(["sleep", "30"])
    try:
        keep = [tmp_path / f".mixup-set.other-{host}.1.json.tmp", tmp_path / f".mixup-set.{host}.{live.pid}.json.tmp"]
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = tmp_path / f".mixup-set.{host}.{dead.pid}.json.tmp"
        for p in (*keep, stale):
            p.write_text("{}")
        identity.write_manifest(tmp_path, {"mixup_set": 1})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mixup-set.json", *(p.name for p in keep)])
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_scratch_copy_a_killed_part_left_is_removed_by_the_next_run(tmp_path):
    # Class pairings on compressed shards: a part reads a scratch copy of the
    # whole set. A kill after the part's last commit leaves it; the --resume
    # (nothing left to write) and a run of another part remove it.
    x, y = _arrays(sum(SIZES))
    (tmp_path / "shards").mkdir()
    paths, at = [], 0
    for k, n in enumerate(SIZES):
        paths.append(tmp_path / "shards" / f"part-{k}.h5")
        with h5py.File(paths[-1], "w") as f:
            f.create_dataset("x", data=x[at : at + n], compression="gzip")
            f.create_dataset("y", data=y[at : at + n], compression="gzip")
        at += n
    common = [*paths, tmp_path / "out", "--seed", 4, "--block-rows", BLOCK, "--pairing", "within-class"]
    flag = tmp_path / "paused.flag"
    proc = _paused([*common, "--shard", "0/2"], "committed@2", flag)  # part 0 of 2: outputs 0 and 1
    proc.kill()
    proc.communicate(timeout=60)
    names = [p.name for p in paths]

    def left():
        return _names(tmp_path / "out")

    assert [n for n in left() if n.endswith(".scratch.h5")], left()
    r = _mixup(*common, "--shard", "0/2", "--resume")
    assert r.returncode == 0, r.stderr
    assert left() == sorted(["mixup-set.json", *names[:2], *(n + ".provenance.json" for n in names[:2])])
    proc = _paused([*common, "--shard", "1/2"], "committed", tmp_path / "paused2.flag")
    proc.kill()
    proc.communicate(timeout=60)
    r = _mixup(*common, "--resume")  # the whole set, its last outputs
    assert r.returncode == 0, r.stderr
    assert left() == sorted(["mixup-set.json", *names, *(n + ".provenance.json" for n in names)])


# --- refusals ------------------------------------------------------------------


def _refusal_inputs(tmp_path: Path, what: str):
    x, y = _arrays(20)
    a = write_h5(tmp_path / "a.h5", x=x[:10], y=y[:10])
    if what == "row shape":
        b = write_h5(tmp_path / "b.h5", x=np.zeros((10, 6, 5, 2), np.float32), y=y[10:])
    elif what == "dtype":
        b = write_h5(tmp_path / "b.h5", x=x[10:].astype(np.float64), y=y[10:])
    else:  # keys
        b = write_h5(tmp_path / "b.h5", x=x[10:])
    return [a, b]


@pytest.mark.slow
@pytest.mark.parametrize(
    "what, says",
    [
        ("row shape", r"b.h5: array 'x' has rows of shape \(6, 5, 2\), but .*a.h5.s are \(6, 5, 3\)"),
        ("dtype", r"b.h5: array 'x' is float64, but .*a.h5's is float32"),
        ("keys", r"b.h5: has no array 'y', which .*a.h5 has"),
    ],
)
def test_inputs_that_disagree_are_refused_naming_the_input_and_array(tmp_path, what, says):
    import re

    paths = _refusal_inputs(tmp_path, what)
    r = _mixup(*paths, tmp_path / "out", "--seed", 1)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(says, lines[0]), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_outdir_with_foreign_files_is_refused_and_left_alone(tmp_path):
    paths, _ = _set(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / paths[1].name).write_bytes(b"not an output")
    for extra in ([], ["--overwrite"]):
        r = _mixup(*paths, out, "--seed", 1, *extra)
        assert r.returncode == 1, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert "is not an output of this set" in r.stderr
        assert sorted(x.name for x in out.iterdir()) == ["notes.txt", paths[1].name]
    (out / "notes.txt").unlink()
    r = _mixup(*paths, out, "--seed", 1)
    assert (
        r.returncode == 1
        and f"{paths[1].name}: is not an output of this set (it has no provenance sidecar)" in r.stderr
    )
    # An output of another set (another seed) is replaced only with --overwrite.
    (out / paths[1].name).unlink()
    assert _mixup(*paths, out, "--seed", 1).returncode == 0
    r = _mixup(*paths, out, "--seed", 2)
    assert r.returncode == 1 and "manifest of another set" in r.stderr
    assert _mixup(*paths, out, "--seed", 2, "--overwrite").returncode == 0
    assert json.loads((out / "mixup-set.json").read_text())["parameters"]["seed"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, says",
    [
        (["--shard", "3/3", "--seed", 1], "--shard 3/3: I must be below N"),
        (["--shard", "1-3", "--seed", 1], "--shard must be I/N"),
        (["--shard", "0/3"], "--shard 0/3 needs --seed"),
        (["--balance", "--seed", 1], "--balance cannot split its output by input"),
    ],
)
def test_usage_refusals(tmp_path, args, says):
    paths, _ = _set(tmp_path)
    r = _mixup(*paths, tmp_path / "out", *args)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- --shard from the scheduler's variables -------------------------------------

_SCHEDULER_PREFIXES = ("SLURM_", "JOB_COMPLETION_INDEX")


def _in_job(*args, flag=None, **variables):
    """``mixup augment ARGS`` as a task of a job array: only ``variables``
    of the scheduler's are set (none inherited from the machine running the tests)."""
    env = {k: v for k, v in _env().items() if not k.startswith(_SCHEDULER_PREFIXES)}
    env.update({k: str(v) for k, v in variables.items()})
    command = mixup_executable() + ["augment", *map(str, args)]
    if flag is not None:
        env["MIXUP_TEST_PAUSE"] = f"progress@3:{flag}"
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_signals
        )
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def _slurm(task: int, first: int, last: int, step: int = 1) -> dict:
    count = (last - first) // step + 1
    return {
        "SLURM_ARRAY_JOB_ID": 4242,
        "SLURM_ARRAY_TASK_ID": task,
        "SLURM_ARRAY_TASK_MIN": first,
        "SLURM_ARRAY_TASK_MAX": last,
        "SLURM_ARRAY_TASK_STEP": step,
        "SLURM_ARRAY_TASK_COUNT": count,
    }


def _written(outdir: Path) -> dict:
    """What a set's OUTDIR holds that does not depend on the run: every output's
    arrays (bytes), the manifest (bytes), and each sidecar's set section,
    parameters and arrays' digests (a run's id and times aside)."""
    found = {"manifest": (outdir / "mixup-set.json").read_bytes()}
    for p in sorted(outdir.glob("*.provenance.json")):
        name = p.name[: -len(".provenance.json")]
        record = json.loads(p.read_text())
        found[name] = {
            "arrays": {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load_output(outdir / name).items()},
            "set": record["set"],
            "parameters": record["parameters"],
            "digests": record["output"]["arrays"],
        }
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    "shard, variables",
    [
        ("slurm", _slurm(1, 0, 1)),  # --array=0-1
        ("slurm", _slurm(2, 1, 2)),  # --array=1-2: I relative to MIN
        ("slurm", _slurm(7, 5, 7, step=2)),  # --array=5-7:2
        ("k8s/2", {"JOB_COMPLETION_INDEX": 1}),
        ("kubernetes/2", {"JOB_COMPLETION_INDEX": 1}),
    ],
)
def test_a_scheduler_part_is_the_explicit_part(tmp_path, shard, variables):
    paths, _ = _set(tmp_path)
    common = ["--seed", 5, "--block-rows", BLOCK, "--copies", 2]
    explicit = _in_job(*paths, tmp_path / "explicit", *common, "--shard", "1/2", "--json")
    assert explicit.returncode == 0, explicit.stderr
    r = _in_job(*paths, tmp_path / "job", *common, "--shard", shard, "--json", **variables)
    assert r.returncode == 0, r.stderr
    summary, want = json.loads(r.stdout), json.loads(explicit.stdout)
    assert summary["part"] == "1/2" and [Path(p).name for p in summary["outputs"]] == [p.name for p in paths[2:]]
    assert summary["set_id"] == want["set_id"]
    # The same arrays and manifest, byte for byte; the sidecars record the same part, set and digests.
    written = _written(tmp_path / "job")
    assert written == _written(tmp_path / "explicit") and len(written) == 4
    assert all(written[p.name]["set"]["part"] == {"index": 1, "count": 2} for p in paths[2:])
    # Part 0 written explicitly completes the set, which verifies whole.
    assert _in_job(*paths, tmp_path / "job", *common, "--shard", "0/2").returncode == 0
    v = subprocess.run(
        mixup_executable() + ["verify", str(tmp_path / "job")], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert v.returncode == 0, v.stderr


@pytest.mark.slow
@pytest.mark.parametrize("resume_with", ["slurm", "1/2"])
def test_a_scheduler_part_stopped_resumes(tmp_path, resume_with):
    """A --shard slurm task stopped mid-output resumes, as the same task or as --shard 1/2, to the same bytes."""
    paths, _ = _set(tmp_path)
    common = ["--seed", 4, "--block-rows", BLOCK, "--batch-size", 4]
    task = _slurm(2, 1, 2)
    ref = _in_job(*paths, tmp_path / "ref", *common, "--shard", "1/2")
    assert ref.returncode == 0, ref.stderr
    flag = tmp_path / "paused.flag"
    proc = _in_job(*paths, tmp_path / "out", *common, "--shard", "slurm", flag=flag, **task)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert any(p.name.endswith(".journal.json") for p in (tmp_path / "out").iterdir())
    r = _in_job(*paths, tmp_path / "out", *common, "--shard", resume_with, "--resume", "--json", **task)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["part"] == "1/2"
    assert _written(tmp_path / "out") == _written(tmp_path / "ref")
    left = _names(tmp_path / "out")
    assert left == _names(tmp_path / "ref")  # no partial files left
    # Once done, the task run again with --resume has nothing to do.
    again = _in_job(*paths, tmp_path / "out", *common, "--shard", "slurm", "--resume", "--json", **task)
    assert again.returncode == 0 and json.loads(again.stdout)["outputs"] == [], again.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "shard, variables, says",
    [
        ("slurm", {}, "--shard slurm: SLURM_ARRAY_TASK_ID is not set; run it as a task of a Slurm job array"),
        ("slurm", {"SLURM_JOB_ID": 7}, "SLURM_ARRAY_TASK_ID is not set"),  # a job, but no array
        ("slurm", {**_slurm(1, 0, 1), "SLURM_ARRAY_TASK_COUNT": "two"}, "SLURM_ARRAY_TASK_COUNT='two' is not"),
        ("slurm", {**_slurm(7, 1, 7), "SLURM_ARRAY_TASK_COUNT": 3}, "the job array is not a range of indices"),
        ("k8s", {"JOB_COMPLETION_INDEX": 0}, "--shard k8s needs N, the Job's spec.completions"),
        ("k8s/2", {}, "--shard k8s/2: JOB_COMPLETION_INDEX is not set"),
        ("k8s/2", {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x' is not a non-negative integer"),
        ("k8s/2", {"JOB_COMPLETION_INDEX": 2}, "JOB_COMPLETION_INDEX=2 is not below N=2"),
    ],
)
def test_a_scheduler_part_refuses_missing_or_malformed_variables(tmp_path, shard, variables, says):
    paths, _ = _set(tmp_path)
    r = _in_job(*paths, tmp_path / "out", "--seed", 1, "--shard", shard, **variables)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_scheduler_part_needs_a_seed(tmp_path):
    paths, _ = _set(tmp_path)
    r = _in_job(*paths, tmp_path / "out", "--shard", "slurm", **_slurm(1, 0, 3))
    assert r.returncode == 2 and "--shard slurm (part 1/4) needs --seed" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


# --- Dask --------------------------------------------------------------------


@pytest.mark.slow  # a cluster of its own (--workers 2); the Dask engine has fast tests of its own
def test_the_dask_engine_runs_a_set_with_the_local_bytes(tmp_path):
    pytest.importorskip("distributed", reason="the Dask engine is an optional extra")
    paths, _ = _set(tmp_path, fmts=("h5", "npz"))
    common = ["--seed", 9, "--block-rows", BLOCK, "--copies", 2, "--pairing", "within-class"]
    assert _mixup(*paths, tmp_path / "local", *common).returncode == 0
    r = _mixup(*paths, tmp_path / "dask", *common, "--engine", "dask", "--workers", 2)
    assert r.returncode == 0, r.stderr
    for p in paths:
        a, b = load_output(tmp_path / "local" / p.name), load_output(tmp_path / "dask" / p.name)
        assert {k: v.tobytes() for k, v in a.items()} == {k: v.tobytes() for k, v in b.items()}
        la = json.loads((tmp_path / "local" / (p.name + ".provenance.json")).read_text())
        da = json.loads((tmp_path / "dask" / (p.name + ".provenance.json")).read_text())
        assert la["output"]["arrays"] == da["output"]["arrays"]  # digests: the same blocks
        assert da["execution"]["engine"] == "dask" and la["set"]["set_id"] == da["set"]["set_id"]


@pytest.mark.slow
def test_a_bad_row_is_named_by_its_input_and_nothing_is_left(tmp_path):
    """A NaN found while mixing: the input holding it and its row there, one
    line, exit 1; outputs committed before it stay (complete, with their
    sidecars), nothing partial is left."""
    paths, _ = _set(tmp_path)
    with h5py.File(paths[2], "a") as f:
        f["x"][20, 0, 0, 0] = np.nan
    r = _mixup(*paths, tmp_path / "out", "--seed", 1, "--block-rows", BLOCK)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{paths[2]}: 'x' row 20 (row 62 of the set) holds NaN or Inf" in lines[0], lines
    left = sorted(x.name for x in (tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    outputs = [name for name in left if not name.endswith(".provenance.json") and name != "mixup-set.json"]
    assert all(name in {p.name for p in paths} for name in outputs), left  # no partial file
    assert left == sorted(["mixup-set.json"] * bool(outputs) + outputs + [n + ".provenance.json" for n in outputs])
    # Before the first block is mixed (a class pairing's pass over y), nothing at all is left.
    with h5py.File(paths[3], "a") as f:
        f["y"][0, 0] = np.nan
    r = _mixup(*paths, tmp_path / "out2", "--seed", 1, "--pairing", "within-class")
    assert r.returncode == 1 and paths[3].name in r.stderr and "'y' row 0" in r.stderr, r.stderr
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_parts_running_at_once_write_the_whole_runs_files(tmp_path):
    """Three parts started together in one OUTDIR (as an array job does):
    each sees the others' partial files and commits, all exit 0, and the
    files (manifest included) are those of one run."""
    paths, _ = _set(tmp_path)
    common = ["--seed", 6, "--block-rows", BLOCK, "--batch-size", 4, "--pairing", "within-class", "-q"]
    assert _mixup(*paths, tmp_path / "whole", *common).returncode == 0
    procs = [
        subprocess.Popen(
            mixup_executable()
            + ["augment", *map(str, paths), str(tmp_path / "parts"), *map(str, common), "--shard", f"{i}/3"],
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert _names(tmp_path / "parts") == _names(tmp_path / "whole")
    assert (tmp_path / "whole" / "mixup-set.json").read_bytes() == (tmp_path / "parts" / "mixup-set.json").read_bytes()
    for p in paths:
        a, b = load_output(tmp_path / "whole" / p.name), load_output(tmp_path / "parts" / p.name)
        assert {k: v.tobytes() for k, v in a.items()} == {k: v.tobytes() for k, v in b.items()}


@pytest.mark.slow
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 40), min_size=2, max_size=6),
    block_rows=st.sampled_from([3, 8, 16, 64]),
    copies=st.integers(1, 2),
    include_original=st.booleans(),
    pairing=st.sampled_from(["global", "batch", "between-class"]),
)
def test_any_shard_sizes_and_blocks_give_the_concatenations_run(
    tmp_path_factory, sizes, block_rows, copies, include_original, pairing
):
    tmp_path = tmp_path_factory.mktemp("sets")
    paths, whole = _set(tmp_path, sizes=tuple(sizes))
    common = dict(
        alpha=0.5, seed=3, block_rows=block_rows, copies=copies, include_original=include_original, pairing=pairing
    )
    single = _single(whole, tmp_path / "single.h5", **common)
    outdir = tmp_path / "mixed"
    augment_set(AugmentRequest(paths[0], outdir, command_line=[], **common), paths, outdir)
    _assert_concatenation(single, _outputs(outdir, paths), sizes=tuple(sizes))


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["global", "within-class"])
def test_more_inputs_than_readers_kept_open(tmp_path, monkeypatch, pairing):
    """20 inputs, more than the ConcatReader keeps open (16): partners by
    class, or global (i.i.d. over all rows), which fall anywhere in the set
    for every output, come from one scratch copy of the set made once (not
    O(inputs) reopenings an output). The same bytes."""
    from mixup_cli.run import scratch

    copies = []
    real_copy = scratch._copy
    monkeypatch.setattr(scratch, "_copy", lambda *a, **k: copies.append(a[2]) or real_copy(*a, **k))
    sizes = tuple(3 + k % 4 for k in range(20))
    paths, whole = _set(tmp_path, sizes=sizes, fmts=("h5", "npz"))
    common = dict(alpha=0.3, seed=8, block_rows=8, pairing=pairing, copies=2)
    single = _single(whole, tmp_path / "single.h5", **common)
    assert copies == []  # one file: its take reopens nothing
    outdir = tmp_path / "mixed"
    augment_set(AugmentRequest(paths[0], outdir, command_line=[], **common), paths, outdir)
    _assert_concatenation(single, _outputs(outdir, paths), sizes=sizes)
    assert len(copies) == 1
    assert not [p for p in outdir.iterdir() if "scratch" in p.name]  # removed when the part ends


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "mixed.h5",
        "mixed.npz",
        "mixed.parquet",
        "mixed.tar",
    ],
)
def test_a_set_written_to_a_files_name_is_refused(tmp_path, run_mixup, name):
    # Two inputs (or a folder of shards, or a brace pattern) make a folder of outputs:
    # a file's name for it would give a directory called mixed.h5.
    rng = np.random.default_rng(0)
    a = write_h5(tmp_path / "a.h5", x=rng.random((6, 2), dtype=np.float32), y=np.arange(6) % 2)
    b = write_h5(tmp_path / "b.h5", x=rng.random((6, 2), dtype=np.float32), y=np.arange(6) % 2)
    result = run_mixup("augment", a, b, tmp_path / name, "--seed", 1)
    assert result.returncode == 2
    assert f"{tmp_path / name}: the inputs are a set" in result.stderr
    assert f"(for example {tmp_path / 'mixed'}/)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]
    assert run_mixup("augment", a, b, tmp_path / "mixed", "--seed", 1, "-q").returncode == 0


# --- what a part reads before its run ------------------------------------------


@pytest.mark.slow
def test_a_part_of_many_inputs_opens_each_input_once_before_its_run(tmp_path, counted_opens):
    """Integer labels whose classes are found in the data: the labels are read
    while each input is checked, so the part opens every input once (not
    twice) before it writes; its output is the single-file run's rows."""
    import mixup_cli

    sizes = (10,) * 40
    rng = np.random.default_rng(3)
    x = rng.random((sum(sizes), 4), dtype=np.float32)
    y = rng.integers(0, 3, sum(sizes))
    y[233] = 5  # one input alone holds the last class: the classes are the whole set's
    folder = tmp_path / "shards"
    folder.mkdir()
    paths = [
        write_h5(folder / f"s-{k:03d}.h5", x=x[10 * k : 10 * k + 10], y=y[10 * k : 10 * k + 10]) for k in range(40)
    ]
    whole = write_h5(tmp_path / "whole.h5", x=x, y=y)
    mixup_cli.augment(paths, tmp_path / "out", seed=1, shard="7/40", progress=counted_opens)
    assert counted_opens.before_run is not None
    assert sorted(counted_opens.before_run) == sorted(str(p) for p in paths)  # each once
    single = _single(whole, tmp_path / "whole-out.h5", seed=1)
    got = load_output(tmp_path / "out" / paths[7].name)
    assert set(got) == set(single)
    for key, want in single.items():
        np.testing.assert_array_equal(got[key], want[70:80], err_msg=key)
    assert got["y"].shape == (10, 6)
    sidecar = json.loads((tmp_path / "out" / f"{paths[7].name}.provenance.json").read_text())
    assert sidecar["parameters"]["targets"]["classes"] == [0, 1, 2, 5]


@pytest.mark.parametrize(
    "label, options, says",
    [
        (-1, {}, "'y' row 4 (row 124 of the set) has label -1; class labels must be >= 0"),
        (
            1.5,
            {"y_kind": "classes"},
            "'y' row 4 (row 124 of the set) has label 1.5; class labels must be whole numbers",
        ),
    ],
)
def test_a_label_refused_in_a_set_names_its_input_and_row(tmp_path, label, options, says):
    """Labels read while the inputs are checked: a label to refuse is still
    told as the label pass tells it, naming the input and its row."""
    import mixup_cli

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200).astype(np.float64 if isinstance(label, float) else np.int64)
    y[124] = label
    folder = tmp_path / "shards"
    folder.mkdir()
    x = rng.random((200, 3), dtype=np.float32)
    paths = [
        write_h5(folder / f"s-{k:02d}.h5", x=x[10 * k : 10 * k + 10], y=y[10 * k : 10 * k + 10]) for k in range(20)
    ]
    with pytest.raises(mixup_cli.InputError) as err:
        mixup_cli.augment(paths, tmp_path / "out", seed=1, shard="0/20", **options)
    assert str(err.value) == f"{paths[12]}: {says}"
    assert not (tmp_path / "out").exists()
