"""``--exclude-rows`` with the pairings that build an index over the rows
(``knn``, ``knn-within-class``, ``label-kernel``): the neighbour lists and the
kernel are built over the kept rows only, so no held-out row is ever a
partner; checked against a numpy brute force over the kept rows and by
``mixup verify``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, write_h5

N = 240
# Held-out rows, each an exact copy of the kept row after it: were the lists
# built over every row, each would be that row's nearest neighbour.
HELD = [0, 10, 11, 57, 120, 121, 200, 238]
K = 4


def make_input(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, 5)).astype(np.float32)
    for h in HELD:
        x[h] = x[h + 1] if h + 1 not in HELD else x[h + 2]
    y = rng.integers(0, 3, N)
    target = rng.standard_normal(N)
    pid = rng.integers(0, 6, N)
    src = write_h5(tmp_path / "in.h5", chunks=False, x=x, y=y, t=target, pid=pid)
    held = tmp_path / "held.txt"
    held.write_text("\n".join(map(str, HELD)) + "\n")
    return src, held, x, y, target, pid


def nearest_kept(x, rows, k):
    """Each of ``rows``' K nearest other rows among ``rows`` (float64
    distances of the float32 rows, ties by row index), as sets of input rows."""
    feats = x[rows].reshape(len(rows), -1).astype(np.float64)
    d = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    lists = {}
    for i, row in enumerate(rows):
        order = np.lexsort((rows, d[i]))[:k]
        lists[int(row)] = set(rows[order].tolist())
    return lists


def run(run_cli, src, out, held, *options):
    result = run_cli("augment", src, out, "--exclude-rows", held, "--seed", "5", "--copies", "3", *options)
    assert result.exit_code == 0, result.stderr
    return load_output(out)


def assert_nothing_held_out_used(got):
    assert not set(HELD) & (set(got["own"].tolist()) | set(got["partner"].tolist()))


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["knn", "knn-within-class"])
def test_knn_partners_are_among_the_nearest_kept_rows(tmp_path, run_cli, pairing):
    src, held, x, y, _, _ = make_input(tmp_path)
    out = tmp_path / "out.h5"
    got = run(run_cli, src, out, held, "--pairing", pairing, "--neighbors", str(K), "--y-key", "y")
    assert_nothing_held_out_used(got)
    kept = np.setdiff1d(np.arange(N), HELD)
    assert np.array_equal(got["own"], np.tile(kept, 3))
    if pairing == "knn":
        lists = nearest_kept(x, kept, K)
    else:
        lists = {}
        for c in np.unique(y):
            lists.update(nearest_kept(x, kept[y[kept] == c], K))
    for own, partner in zip(got["own"].tolist(), got["partner"].tolist()):
        assert partner in lists[own], (own, partner)
    lam = got["lam"][:, None]
    assert np.allclose(got["x"], lam * x[got["own"]] + (1 - lam) * x[got["partner"]], atol=1e-6)
    assert read_sidecar(out)["parameters"]["exclude_rows"]["rows"] == len(HELD)
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert "none of the 8 rows held out used" in result.stdout


@pytest.mark.slow
def test_knn_with_a_projection_and_groups(tmp_path, run_cli):
    src, held, x, _, _, pid = make_input(tmp_path)
    out = tmp_path / "out.h5"
    got = run(run_cli, src, out, held, "--pairing", "knn", "--neighbors", "3", "--project", "2", "--groups", "pid")
    assert_nothing_held_out_used(got)
    assert np.array_equal(pid[got["partner"]], pid[got["own"]])
    assert run_cli("verify", out).exit_code == 0


@pytest.mark.parametrize(
    "options",
    [["--pairing", "knn-within-class", "--neighbors", "3"], ["--pairing", "label-kernel", "--bandwidth", "0.3"]],
    ids=["knn-within-class", "label-kernel"],
)
def test_with_groups_the_lists_hold_kept_rows_of_the_group(tmp_path, run_cli, options):
    src, held, _, y, _, pid = make_input(tmp_path)
    y_key = "y" if "knn-within-class" in options else "t"
    got = run(run_cli, src, tmp_path / "out.h5", held, *options, "--groups", "pid", "--y-key", y_key)
    assert_nothing_held_out_used(got)
    assert np.array_equal(pid[got["partner"]], pid[got["own"]])
    if y_key == "y":
        assert np.array_equal(y[got["partner"]], y[got["own"]])
    assert run_cli("verify", tmp_path / "out.h5").exit_code == 0


def test_label_kernel_draws_no_held_out_row(tmp_path, run_cli):
    src, held, _, _, target, _ = make_input(tmp_path)
    out = tmp_path / "out.h5"
    got = run(run_cli, src, out, held, "--pairing", "label-kernel", "--bandwidth", "0.05", "--y-key", "t")
    assert_nothing_held_out_used(got)
    # A narrow kernel: partners have labels near their row's (held-out rows would be no nearer).
    assert np.median(np.abs(target[got["partner"]] - target[got["own"]])) < 0.2
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout


@pytest.mark.parametrize("pairing", ["knn", "label-kernel"])
def test_verify_fails_a_partner_edited_to_a_held_out_row(tmp_path, run_cli, pairing):
    src, held, *_ = make_input(tmp_path)
    out = tmp_path / "out.h5"
    options = ["--neighbors", str(K)] if pairing == "knn" else ["--bandwidth", "0.5", "--y-key", "t"]
    got = run(run_cli, src, out, held, "--pairing", pairing, *options)
    with h5py.File(out, "r+") as f:
        partner = got["partner"].copy()
        partner[10] = 57
        f["partner"][...] = partner
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "output row 10: its partner is input row 57, which --exclude-rows holds out" in result.stdout


def test_too_few_kept_rows_for_the_neighbours_are_refused_in_one_line(tmp_path, run_cli):
    src, _, *_ = make_input(tmp_path)
    most = tmp_path / "most.npy"
    np.save(most, np.arange(4, N))  # 4 rows kept
    result = run_cli(
        "augment", src, tmp_path / "out.h5", "--exclude-rows", most, "--pairing", "knn", "--neighbors", "5"
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "without the rows --exclude-rows holds out, has 4 rows" in lines[0], lines
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_the_dask_engine_writes_the_local_bytes(dask_scheduler, tmp_path, run_cli):
    """knn over the kept rows inside the groups, on Dask workers: the local bytes."""
    src, held, *_ = make_input(tmp_path)
    options = ["--pairing", "knn", "--neighbors", str(K), "--groups", "pid"]
    local = run(run_cli, src, tmp_path / "local.h5", held, *options)
    dask = run(run_cli, src, tmp_path / "dask.h5", held, *options, "--engine", "dask", "--scheduler", dask_scheduler)
    assert {k: v.tobytes() for k, v in local.items()} == {k: v.tobytes() for k, v in dask.items()}
