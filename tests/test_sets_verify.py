"""``mixup verify OUTDIR`` and ``mixup inspect OUTDIR`` of a set
(``mixup augment IN1 IN2 ... OUTDIR``): complete and correct, or each
problem named with its output and what writes it; real files, the CLI's
exit codes and messages."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_h5, write_npz

SIZES = (37, 5, 64, 1, 29)  # unequal, off the blocks of --block-rows 16
COMMON = ("--seed", 7, "--block-rows", 16, "--quiet")


def _shards(tmp_path, sizes=SIZES, fmts=("h5",)):
    rng = np.random.default_rng(0)
    n = sum(sizes)
    x = rng.standard_normal((n, 4, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    folder = tmp_path / "shards"
    folder.mkdir()
    paths, at = [], 0
    for k, rows in enumerate(sizes):
        arrays = dict(x=x[at : at + rows], y=y[at : at + rows])
        name = folder / f"part-{k:04d}"
        if fmts[k % len(fmts)] == "npz":
            paths.append(write_npz(name.with_suffix(".npz"), compressed=True, **arrays))
        else:
            paths.append(write_h5(name.with_suffix(".h5"), **arrays))
        at += rows
    return paths


def _augment(run_cli, paths, out, *args):
    result = run_cli("augment", *paths, out, *COMMON, *args)
    assert result.exit_code == 0, result.output
    return out


def _fails(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("FAIL  ")]


@pytest.mark.slow
@pytest.mark.parametrize("pairing,fmts", [("global", ("h5",)), ("within-class", ("h5", "npz")), ("batch", ("h5",))])
def test_a_complete_set_verifies(run_cli, tmp_path, pairing, fmts):
    paths = _shards(tmp_path, fmts=fmts)
    out = _augment(run_cli, paths, tmp_path / "mixed", "--pairing", pairing, "--copies", 2, "--include-original")
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert (
        result.stdout.splitlines()[-1].startswith("OK: set ") and "all 5 outputs present and verified" in result.stdout
    )
    assert _fails(result) == []
    assert sum(line.startswith("ok    ") for line in result.stdout.splitlines()) == len(paths)
    report = json.loads(run_cli("verify", out, "--json").stdout)
    assert report["ok"] and report["complete"] and report["verified"] == 5 and report["missing"] == []
    # Every output was recomputed, each with its own rows: (original + 2 copies) x its input's rows.
    for entry, rows in zip(report["reports"], SIZES):
        check = {c["name"]: c for c in entry["checks"]}["recompute"]
        assert check["ok"] and check["detail"].startswith(f"all {3 * rows} rows of")
    # One output of the set alone: recomputed with the whole set.
    one = run_cli("verify", out / paths[2].name)
    assert one.exit_code == 0 and one.stdout.splitlines()[-1] == "OK"
    assert f"recompute: all {3 * SIZES[2]} rows" in one.stdout


@pytest.mark.slow
def test_parts_run_apart_verify_and_an_undone_part_is_named(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = tmp_path / "mixed"
    _augment(run_cli, paths, out, "--shard", "0/3")
    _augment(run_cli, paths, out, "--shard", "2/3")
    result = run_cli("verify", out)
    assert result.exit_code == 1
    # Part 1/3 writes outputs 1 and 2 (floor(I*S/N)): each named, with the command.
    assert _fails(result) == [
        f"FAIL  {out / paths[k].name}: missing; part 1/3 writes it: mixup augment <the set's inputs> {out} --seed 7 "
        "--shard 1/3 --resume"
        for k in (1, 2)
    ]
    assert "3 of 5 outputs present, 3 verified, 2 problems" in result.stdout.splitlines()[-1]
    report = json.loads(run_cli("verify", out, "--json").stdout)
    assert not report["ok"] and not report["complete"] and report["verified"] == 3
    assert [(m["name"], m["parts"]) for m in report["missing"]] == [(paths[1].name, ["1/3"]), (paths[2].name, ["1/3"])]

    shown = run_cli("inspect", out)
    assert shown.exit_code == 0
    assert "  outputs           3 of 5 present" in shown.stdout
    assert f"  missing           {paths[1].name}, {paths[2].name}" in shown.stdout
    assert "  parts of 3        2 done (0, 2), not done: 1" in shown.stdout
    assert "  complete          no" in shown.stdout
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["parts"]["3"]["done"] == [0, 2] and info["parts"]["3"]["not_done"] == [1]
    assert info["outputs"]["missing"] == [paths[1].name, paths[2].name] and not info["complete"]
    assert [e["rows"] for e in info["inputs"]["list"]] == list(SIZES) and info["inputs"]["rows"] == sum(SIZES)

    _augment(run_cli, paths, out, "--shard", "1/3")
    assert run_cli("verify", out).exit_code == 0
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    assert info["complete"] and info["parts"]["3"]["done"] == [0, 1, 2] and info["outputs"]["missing"] == []
    assert "  complete          yes" in run_cli("inspect", out).stdout


@pytest.mark.slow
def test_a_missing_output_is_named_with_the_command_that_writes_it(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    (out / paths[3].name).unlink()
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert _fails(result) == [
        f"FAIL  {out / paths[3].name}: missing; write it: mixup augment <the set's inputs> {out} --seed 7 --resume"
    ]
    (out / f"{paths[1].name}.provenance.json").unlink()  # the file there, but never committed with its sidecar
    fails = _fails(run_cli("verify", out))
    assert fails[0] == (
        f"FAIL  {out / paths[1].name}: not committed (no sidecar of this set); write it: mixup augment "
        f"<the set's inputs> {out} --seed 7 --resume"
    )
    assert len(fails) == 2
    (out / f".{paths[3].name}.mixup-partial").mkdir()  # what a stopped part leaves: --resume continues it
    assert _fails(run_cli("verify", out))[1] == (
        f"FAIL  {out / paths[3].name}: missing; an interrupted run left its partial files; write it: mixup augment "
        f"<the set's inputs> {out} --seed 7 --resume"
    )
    assert f"  interrupted       {paths[3].name} (continue with --resume)" in run_cli("inspect", out).stdout


@pytest.mark.slow
def test_an_edited_array_fails_its_output_by_digest_and_recomputation(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed", "--shard", "0/2")
    _augment(run_cli, paths, out, "--shard", "1/2")
    with h5py.File(out / paths[4].name, "r+") as f:  # output 4, written by part 1/2
        f["x"][20, 0, 0] += 1.0
    result = run_cli("verify", out)
    assert result.exit_code == 1
    fails = _fails(result)
    assert len(fails) == 2 and all(line.startswith(f"FAIL  {out / paths[4].name}: ") for line in fails)
    assert "output data: 'x': SHA-256" in fails[0] and fails[0].endswith("--shard 1/2 --resume")
    assert "recompute: the recomputed output differs: 'x' first at row 20 (1 of 29 rows differ)" in fails[1]
    # The other outputs still verify, and the same holds of the output verified alone.
    assert sum(line.startswith("ok    ") for line in result.stdout.splitlines()) == 4
    alone = run_cli("verify", out / paths[4].name)
    assert alone.exit_code == 1 and "FAIL  output data" in alone.stdout


def test_an_input_edited_after_the_run_fails_by_hash_and_recomputation(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    with h5py.File(paths[2], "r+") as f:  # rows 42..105 of the set: partners of every output
        f["x"][10] = 0.0
    result = run_cli("verify", out)
    assert result.exit_code == 1
    fails = _fails(result)
    edited = [line for line in fails if line.startswith(f"FAIL  {out / paths[2].name}: ")]
    assert any("input files: " in line and "SHA-256" in line for line in edited)
    assert any("recompute: the recomputed output differs" in line for line in edited)
    # Another output whose rows drew partners from the edited rows differs too, found by the recomputation
    # only (its own input is unchanged).
    others = [line for line in fails if line not in edited]
    assert others and all("recompute: the recomputed output differs" in line for line in others)
    assert not any("input files" in line for line in others)


@pytest.mark.slow
def test_moved_inputs_are_found_with_input_a_folder_or_a_list(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    moved = tmp_path / "moved"
    shutil.move(paths[0].parent, moved)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "recompute: skipped: input" in result.stdout and "pass --input" in result.stdout
    # Without the inputs the digests are read back from each file alone, by its own (shifted) blocks.
    report = json.loads(run_cli("verify", out, "--json").stdout)
    data = [{c["name"]: c for c in r["checks"]}["output data"] for r in report["reports"]]
    assert len(data) == len(paths) and all(c["ok"] for c in data), data
    assert run_cli("verify", out, "--input", moved).exit_code == 0
    listing = tmp_path / "list.txt"
    listing.write_text("# the shards, in order\n" + "".join(f"moved/{p.name}\n" for p in paths))
    assert run_cli("verify", out, "--input", listing).exit_code == 0
    assert run_cli("verify", out / paths[1].name, "--input", moved).exit_code == 0
    listing.write_text("".join(f"moved/{p.name}\n" for p in reversed(paths)))
    refused = run_cli("verify", out, "--input", listing)
    assert refused.exit_code == 2 and f"line 1 names {paths[-1].name}, the set's input 0 is {paths[0].name}" in (
        refused.stderr
    )


def test_an_edited_sidecar_parameter_fails_that_output(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    sidecar = out / f"{paths[1].name}.provenance.json"
    record = json.loads(sidecar.read_text())
    record["parameters"]["alpha"] = 0.4
    sidecar.write_text(json.dumps(record))
    fails = _fails(run_cli("verify", out))
    assert fails == [
        f"FAIL  {out / paths[1].name}: recompute: its sidecar's parameters differ from the set's (alpha); "
        "it is not what the set's inputs and recorded parameters give: restore the inputs, or write the "
        "set again"
    ]


@pytest.mark.slow
def test_an_edited_manifest_is_named_and_the_outputs_still_verify(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    manifest = out / "mixup-set.json"
    record = json.loads(manifest.read_text())
    record["parameters"]["seed"] = 8
    manifest.write_text(json.dumps(record))
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert _fails(result) == [
        f"FAIL  {manifest}: its parameters differ from its outputs' sidecars' (seed); it was "
        "edited: write the set again, or remove it (a part's run writes it again)"
    ]
    assert sum(line.startswith("ok    ") for line in result.stdout.splitlines()) == len(paths)
    # One output alone is held to the manifest: it cannot tell which of the two was edited.
    alone = run_cli("verify", out / paths[0].name)
    assert alone.exit_code == 1 and "recompute: its sidecar's parameters differ from the set's (seed)" in alone.stdout


@pytest.mark.slow
def test_every_reader_of_a_sets_verification_is_opened_without_fast_paths(run_cli, tmp_path, monkeypatch):
    verify = importlib.import_module("mixup_cli.verify")  # the package: its name on mixup_cli is the public function
    from mixup_cli.sets import reader

    paths = _shards(tmp_path, fmts=("h5", "npz"))
    out = _augment(run_cli, paths, tmp_path / "mixed", "--pairing", "within-class")
    opened = []
    parts = [importlib.import_module(f"mixup_cli.verify.{m.name}") for m in pkgutil.iter_modules(verify.__path__)]
    for module in [m for m in parts if hasattr(m, "open_reader")] + [reader]:
        real = module.open_reader

        def spy(path, *args, _real=real, **kwargs):
            opened.append((Path(path).name, kwargs.get("fast", True)))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(module, "open_reader", spy)
    assert run_cli("verify", out).exit_code == 0
    names = {name for name, _ in opened}
    assert {p.name for p in paths} <= names  # every input (and output) read ...
    assert all(fast is False for _, fast in opened), opened  # ... and none through a fast path


def test_verify_does_not_share_a_wrong_fast_path(run_cli, tmp_path, monkeypatch):
    """A broken fast path (12-bit integers copied as stored) makes a set's
    run write wrong rows; verify reads the set with fast=False through HDF5
    and says so instead of certifying them."""
    from test_foreign_files import _int12, _low_level_dataset

    from mixup_cli.io import hdf5

    rng = np.random.default_rng(4)
    folder = tmp_path / "shards"
    folder.mkdir()
    paths = []
    for k, rows in enumerate((23, 18)):
        paths.append(folder / f"part-{k}.h5")
        with h5py.File(paths[-1], "w") as f:
            # Chunks of half a row: rows read as stored (the fast path's layout).
            x = rng.integers(-2048, 2048, (rows, 6)).astype(np.int16)
            _low_level_dataset(f, "x", _int12(), x, chunks=(1, 3))
    monkeypatch.setattr(hdf5, "plain_type", lambda tid, dtype: np.dtype(dtype).kind in "fiu")
    out = tmp_path / "mixed"
    assert run_cli("augment", *paths, out, "--seed", 1, "--no-y", "--quiet").exit_code == 0
    result = run_cli("verify", out)
    assert result.exit_code == 1
    fails = _fails(result)
    # Both outputs, each on most of its rows (a row may agree by chance).
    assert len(fails) == 2 and all("recompute: the recomputed output differs: 'x' first at row" in f for f in fails)
    differing = [re.search(r"\((\d+) of (\d+) rows differ\)", f).groups() for f in fails]
    assert all(int(d) > int(n) // 2 for d, n in differing), differing


@pytest.mark.slow
def test_inspect_of_a_complete_set_and_of_many_inputs(run_cli, tmp_path):
    sizes = (3,) * 12
    paths = _shards(tmp_path, sizes=sizes)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    shown = run_cli("inspect", out).stdout.splitlines()
    assert (
        shown[0] == f"{out} (set {json.loads((out / 'mixup-set.json').read_text())['set_id'][:12]}, 12 inputs, 36 rows)"
    )
    assert shown[1] == f"  inputs {paths[0].name} ... {paths[-1].name}: 3 to 3 rows each, 36 in all (each: --json)"
    assert "  seed              7" in shown and "  complete          yes" in shown
    assert not [line for line in shown if "parts of" in line]  # written without --shard: no part to show


@pytest.mark.slow
def test_a_set_outdir_without_its_manifest_is_still_a_set(run_cli, tmp_path):
    paths = _shards(tmp_path)
    out = _augment(run_cli, paths, tmp_path / "mixed")
    (out / "mixup-set.json").unlink()
    assert run_cli("verify", out).exit_code == 0  # inputs from the sidecars' own records
    (out / paths[0].name).unlink()
    result = run_cli("verify", out)
    assert result.exit_code == 1 and _fails(result)[0].startswith(f"FAIL  {out / paths[0].name}: missing; ")
