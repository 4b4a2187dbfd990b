"""``--exclude-rows FILE``: held-out input rows are never an output row's own
row nor any row's partner, in every pairing and copy; checked from the
output's own arrays (``own``, ``partner``, ``lam``) and the input file."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, write_h5
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment

FALSE_ALARM = 1e-6


def make_input(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = rng.integers(0, 3, n)
    pid = rng.integers(0, 20, n)
    return write_h5(tmp_path / "in.h5", chunks=False, x=x, y=y, pid=pid), x, y, pid


def held_out(tmp_path, rows, kind="txt"):
    if kind == "npy":
        path = tmp_path / "held.npy"
        np.save(path, np.asarray(rows, np.int64))
    else:
        path = tmp_path / "held.txt"
        path.write_text("# held-out rows\n" + "\n".join(map(str, rows)) + "\n\n")
    return path


HELD = [0, 1, 2, 63, 64, 65, 150, 299]


@pytest.mark.parametrize("pairing", ["global", "batch", "within-class", "between-class"])
@pytest.mark.parametrize("kind", ["txt", "npy"])
def test_held_out_rows_are_never_used(tmp_path, pairing, kind):
    src, x, y, _ = make_input(tmp_path)
    path = held_out(tmp_path, HELD, kind)
    out = tmp_path / "out.h5"
    augment(
        AugmentRequest(
            src, out, seed=4, pairing=pairing, exclude_rows=path, copies=3, include_original=True, block_rows=64
        )
    )
    got = load_output(out)
    kept = np.setdiff1d(np.arange(len(x)), HELD)
    assert np.array_equal(got["own"], np.tile(kept, 4))  # the original, then each copy, in input order
    assert not set(HELD) & set(got["partner"].tolist())
    lam = got["lam"][:, None]
    assert np.allclose(got["x"], lam * x[got["own"]] + (1 - lam) * x[got["partner"]])
    if pairing == "within-class":
        assert np.array_equal(y[got["partner"]], y[got["own"]])
    elif pairing == "between-class":
        assert np.all(y[got["partner"][len(kept) :]] != y[got["own"][len(kept) :]])
    record = read_sidecar(out)["parameters"]["exclude_rows"]
    assert record == {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(HELD),
    }


def test_global_partners_are_uniform_over_the_kept_rows(tmp_path):
    src, x, _, _ = make_input(tmp_path, n=400)
    held = list(range(0, 400, 3))
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=9, exclude_rows=held_out(tmp_path, held), copies=30, block_rows=64))
    kept = np.setdiff1d(np.arange(400), held)
    counts = np.bincount(np.searchsorted(kept, load_output(out)["partner"]), minlength=len(kept))
    starts = np.arange(0, len(kept), 7)  # bins of 7 kept rows (the last shorter), 30 partners per row expected
    bins = np.add.reduceat(counts, starts)
    expected = np.diff(np.append(starts, len(kept))) * 30.0
    stat = float(np.sum((bins - expected) ** 2 / expected))
    assert stats.chi2.sf(stat, len(bins) - 1) > FALSE_ALARM


def test_with_groups_the_pools_hold_no_held_out_row(tmp_path, run_cli):
    src, _, _, pid = make_input(tmp_path)
    path = held_out(tmp_path, HELD)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--exclude-rows", path, "--groups", "pid", "--seed", "2", "--copies", "4")
    assert result.exit_code == 0, result.stderr
    got = load_output(out)
    assert not set(HELD) & (set(got["partner"].tolist()) | set(got["own"].tolist()))
    assert np.array_equal(pid[got["partner"]], pid[got["own"]]) and np.array_equal(got["group"], pid[got["own"]])
    assert run_cli("verify", out).exit_code == 0


def test_verify_passes_and_fails_a_partner_edited_to_a_held_out_row(tmp_path, run_cli):
    src, x, _, _ = make_input(tmp_path)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=4, exclude_rows=held_out(tmp_path, HELD), copies=2))
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert "none of the 8 rows held out used" in result.stdout
    with h5py.File(out, "r+") as f:
        partner = f["partner"][()]
        partner[10] = 63
        f["partner"][...] = partner
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "output row 10: its partner is input row 63, which --exclude-rows holds out" in result.stdout


def test_verify_fails_when_the_file_changed(tmp_path, run_cli):
    src, *_ = make_input(tmp_path)
    path = held_out(tmp_path, HELD)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=4, exclude_rows=path))
    path.write_text("5\n")
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "SHA-256 differs" in result.stdout


@pytest.mark.parametrize(
    "content, code, words",
    [
        ("3\n300\n", 1, "row 300 is not a row of the input (0 to 299)"),
        ("3\n-1\n", 1, "row -1 is not a row of the input"),
        ("3\nseven\n", 1, "line 2 is 'seven', not a row index"),
        ("\n".join(map(str, range(300))), 1, "excludes every one of the input's 300 rows"),
        (None, 2, "no such file"),
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path, run_cli, content, code, words):
    src, *_ = make_input(tmp_path)
    path = tmp_path / "held.txt"
    if content is not None:
        path.write_text(content)
    result = run_cli("augment", src, tmp_path / "out.h5", "--exclude-rows", path)
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "held.txt" in lines[0]
    assert not (tmp_path / "out.h5").exists()
