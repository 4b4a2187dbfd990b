"""``--exclude-rows FILE`` on a set of inputs: FILE lists global rows of the
set (its inputs' rows in the order the inputs are listed). Every output of
the set, written whole, by ``--shard`` parts or by the Dask engine, holds
its input's kept rows and no held-out row as a partner; the outputs are
the single-file run on one file holding the concatenation, cut by input;
``mixup verify OUTDIR`` checks the rows held out."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from conftest import REPO, default_signals, load_output, mixup_executable, write_h5

SIZES = (37, 5, 64, 29)  # unequal, off the block boundaries of --block-rows 16
BLOCK = 16
# Global rows of the set: some of each input, and input 1's first and last.
HELD = [0, 3, 36, 37, 41, 42, 60, 105, 134]


def make_set(tmp_path):
    rng = np.random.default_rng(2)
    n = sum(SIZES)
    x = rng.standard_normal((n, 4, 3)).astype(np.float32)
    y = rng.integers(0, 3, n)
    pid = rng.integers(0, 5, n)
    (tmp_path / "shards").mkdir()
    paths, at = [], 0
    for k, m in enumerate(SIZES):
        paths.append(
            write_h5(tmp_path / "shards" / f"part-{k}.h5", x=x[at : at + m], y=y[at : at + m], pid=pid[at : at + m])
        )
        at += m
    whole = write_h5(tmp_path / "whole.h5", x=x, y=y, pid=pid)
    held = tmp_path / "held.txt"
    held.write_text("\n".join(map(str, HELD)) + "\n")
    return paths, whole, held, x, y


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def mixup(*args, check=True):
    env = _env()
    result = subprocess.run(
        mixup_executable() + [*map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def kept_of(k: int) -> np.ndarray:
    first = sum(SIZES[:k])
    rows = np.arange(first, first + SIZES[k])
    return rows[~np.isin(rows, HELD)]


def as_bytes(arrays: dict) -> dict:
    return {key: value.tobytes() for key, value in arrays.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        ["--pairing", "global"],
        ["--pairing", "batch"],
        ["--pairing", "within-class", "--groups", "pid"],
        ["--pairing", "knn", "--neighbors", "3"],
    ],
    ids=lambda o: o[1] + ("-groups" if "--groups" in o else ""),
)
def test_each_output_holds_its_kept_rows_and_the_concatenations_run(tmp_path, options):
    paths, whole, held, x, _ = make_set(tmp_path)
    common = ["--exclude-rows", held, "--seed", 7, "--block-rows", BLOCK, "--copies", 2, "--include-original"]
    mixup("augment", *paths, tmp_path / "set", *common, *options)
    mixup("augment", whole, tmp_path / "single.h5", *common, *options)
    single = load_output(tmp_path / "single.h5")
    outs = [load_output(tmp_path / "set" / p.name) for p in paths]
    kept = [len(kept_of(k)) for k in range(len(SIZES))]
    for k, out in enumerate(outs):
        assert np.array_equal(out["own"], np.tile(kept_of(k), 3))  # the original, then each copy
        assert not set(HELD) & set(out["partner"].tolist())
        lam = out["lam"][:, None, None]
        assert np.allclose(out["x"], lam * x[out["own"]] + (1 - lam) * x[out["partner"]], atol=1e-6)
    total = sum(kept)
    for key, want in single.items():  # each segment of the single-file run is that segment of every output
        got = np.concatenate([out[key][s * m : (s + 1) * m] for s in range(3) for out, m in zip(outs, kept)])
        assert got.tobytes() == want.tobytes() and len(want) == 3 * total, key
    record = json.loads((tmp_path / "set" / (paths[2].name + ".provenance.json")).read_text())
    assert record["parameters"]["exclude_rows"]["rows"] == len(HELD)
    assert record["output"]["array_sha256"]["segment_rows"] == kept[2]
    result = mixup("verify", tmp_path / "set", "--json", check=False)
    assert result.returncode == 0, result.stdout
    for report in json.loads(result.stdout)["reports"]:
        law = next(c for c in report["checks"] if c["name"] == "law")
        assert law["ok"] and f"none of the {len(HELD)} rows held out used" in law["detail"], law


def _same_outputs(paths, a, b) -> None:
    for p in paths:
        assert as_bytes(load_output(b / p.name)) == as_bytes(load_output(a / p.name)), (b, p.name)
        want = json.loads((a / (p.name + ".provenance.json")).read_text())["output"]["arrays"]
        assert json.loads((b / (p.name + ".provenance.json")).read_text())["output"]["arrays"] == want  # digests


COMMON = ["--seed", 3, "--block-rows", BLOCK, "--copies", 2, "--pairing", "global"]


@pytest.mark.slow
def test_shard_parts_write_the_whole_runs_bytes(tmp_path):
    paths, _, held, *_ = make_set(tmp_path)
    mixup("augment", *paths, tmp_path / "whole", "--exclude-rows", held, *COMMON)
    for i in (2, 0, 1):
        mixup("augment", *paths, tmp_path / "parts", "--exclude-rows", held, *COMMON, "--shard", f"{i}/3")
    _same_outputs(paths, tmp_path / "whole", tmp_path / "parts")
    assert mixup("verify", tmp_path / "parts", check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_the_dask_engine_writes_the_local_bytes(dask_scheduler, tmp_path):
    paths, _, held, *_ = make_set(tmp_path)
    mixup("augment", *paths, tmp_path / "local", "--exclude-rows", held, *COMMON)
    dask = ["--engine", "dask", "--scheduler", dask_scheduler]
    mixup("augment", *paths, tmp_path / "dask", "--exclude-rows", held, *COMMON, *dask)
    _same_outputs(paths, tmp_path / "local", tmp_path / "dask")


@pytest.mark.slow
def test_verify_fails_an_output_whose_partner_is_edited_to_a_held_out_row(tmp_path):
    paths, _, held, *_ = make_set(tmp_path)
    mixup("augment", *paths, tmp_path / "set", "--exclude-rows", held, "--seed", 3, "--block-rows", BLOCK)
    out = tmp_path / "set" / paths[2].name
    with h5py.File(out, "r+") as f:
        partner = f["partner"][()]
        partner[4] = 60
        f["partner"][...] = partner
    result = mixup("verify", tmp_path / "set", check=False)
    assert result.returncode == 1
    assert f"{out}: law: output row 4: its partner is input row 60, which --exclude-rows holds out" in result.stdout


def test_a_file_that_holds_out_a_whole_input_is_refused(tmp_path):
    paths, _, _, *_ = make_set(tmp_path)
    held = tmp_path / "all-of-1.npy"
    np.save(held, np.arange(37, 42))
    result = mixup("augment", *paths, tmp_path / "set", "--exclude-rows", held, "--seed", 1, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds out every row of input" in lines[0] and "part-1.h5" in lines[0], lines
    assert not (tmp_path / "set").exists()


@pytest.mark.slow
def test_the_file_is_recorded_in_every_sidecar(tmp_path):
    paths, _, held, *_ = make_set(tmp_path)
    mixup("augment", *paths, tmp_path / "set", "--exclude-rows", held, "--seed", 3)
    sha = hashlib.sha256(held.read_bytes()).hexdigest()
    for p in paths:
        record = json.loads((tmp_path / "set" / (p.name + ".provenance.json")).read_text())
        assert record["parameters"]["exclude_rows"] == {"path": str(held.resolve()), "sha256": sha, "rows": 9}


@pytest.mark.slow
def test_a_part_stopped_mid_output_resumes_to_the_whole_runs_bytes(tmp_path):
    paths, _, held, *_ = make_set(tmp_path)
    common = ["--exclude-rows", held, "--seed", 4, "--block-rows", BLOCK, "--copies", 2, "--batch-size", 4]
    mixup("augment", *paths, tmp_path / "ref", *common)
    args = ["augment", *paths, tmp_path / "out", *common, "--shard", "0/2"]
    flag = tmp_path / "paused.flag"
    proc = subprocess.Popen(
        mixup_executable() + [*map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(MIXUP_TEST_PAUSE=f"progress@5:{flag}"),
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in stderr, stderr
    assert any(p.name.endswith(".journal.json") for p in (tmp_path / "out").iterdir())
    mixup(*args, "--resume")
    for p in paths[:2]:  # part 0 of 2: outputs 0 and 1
        want = load_output(tmp_path / "ref" / p.name)
        assert as_bytes(load_output(tmp_path / "out" / p.name)) == as_bytes(want), p.name
