"""``mixup lineage OUT`` and ``mixup_cli.lineage``: for each output row, the
input rows it was made from, checked against the output's arrays (read
with h5py) and the layout of the run."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import load_output, write_h5

import mixup_cli
from mixup_cli.commands.pipeline import AugmentRequest, augment


def grouped(tmp_path, n=50, name="in.h5", seed=0):
    rng = np.random.default_rng(seed)
    return write_h5(
        tmp_path / name, x=rng.standard_normal((n, 2)), y=rng.integers(0, 3, n), pid=rng.integers(0, 6, n) * 10
    )


def parse_csv(text):
    rows = list(csv.DictReader(io.StringIO(text)))
    return {key: [row[key] for row in rows] for key in rows[0]}


def test_csv_lists_own_partner_lam_and_group_of_every_output_row(tmp_path, run_cli):
    src = grouped(tmp_path)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=1, copies=2, include_original=True, groups="pid"))
    result = run_cli("lineage", out)
    assert result.exit_code == 0, result.stderr
    table = parse_csv(result.stdout)
    got = load_output(out)
    assert list(table) == ["row", "copy", "own", "partner", "lam", "group"]
    assert [int(v) for v in table["row"]] == list(range(150))
    assert [int(v) for v in table["copy"]] == [-1] * 50 + [0] * 50 + [1] * 50
    assert [int(v) for v in table["own"]] == list(range(50)) * 3
    assert [int(v) for v in table["partner"]] == got["partner"].tolist()
    assert np.array_equal(np.array([float(v) for v in table["lam"]]), got["lam"])  # exactly
    assert [int(v) for v in table["group"]] == got["group"].tolist()


def test_jsonl_and_the_library_function_give_the_same_rows(tmp_path, run_cli):
    src = grouped(tmp_path)
    out = tmp_path / "out.h5"
    held = tmp_path / "held.txt"
    held.write_text("3\n4\n")
    augment(AugmentRequest(src, out, seed=1, copies=2, exclude_rows=held, pairing="within-class"))
    result = run_cli("lineage", out, "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    table = mixup_cli.lineage(out)
    got = load_output(out)
    assert len(lines) == len(got["own"]) == 96
    assert [line["own"] for line in lines] == got["own"].tolist() == table["own"].tolist()
    assert [line["partner"] for line in lines] == got["partner"].tolist() == table["partner"].tolist()
    assert np.array_equal([line["lam"] for line in lines], got["lam"])
    assert 3 not in table["own"] and 4 not in table["own"]


def test_a_set_names_each_rows_input_file_and_row(tmp_path, run_cli):
    a, b = grouped(tmp_path, 30, "a.h5", 1), grouped(tmp_path, 40, "b.h5", 2)
    outdir = tmp_path / "outdir"
    assert run_cli("augment", a, b, outdir, "--seed", "3", "--groups", "pid").exit_code == 0
    result = run_cli("lineage", outdir)
    assert result.exit_code == 0, result.stderr
    table = parse_csv(result.stdout)
    assert table["output"] == ["a.h5"] * 30 + ["b.h5"] * 40
    assert table["own_input"] == table["output"]
    assert [int(v) for v in table["own_row"]] == list(range(30)) + list(range(40))
    partner = np.array([int(v) for v in table["partner"]])
    assert table["partner_input"] == ["a.h5" if p < 30 else "b.h5" for p in partner]
    assert [int(v) for v in table["partner_row"]] == [p if p < 30 else p - 30 for p in partner]
    one = mixup_cli.lineage(outdir / "b.h5")
    assert one["own"].tolist() == list(range(30, 70)) and one["own_row"].tolist() == list(range(40))


@pytest.mark.parametrize("make", ["missing", "no sidecar"])
def test_what_is_no_output_is_refused_in_one_line(tmp_path, run_cli, make):
    path = tmp_path / "x.h5"
    if make == "no sidecar":
        grouped(tmp_path, name="x.h5")
    result = run_cli("lineage", path)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "x.h5" in lines[0]
