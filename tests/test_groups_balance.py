"""``--balance`` with ``--exclude-rows`` and ``--groups``.

The law: the balanced rows (M per class, each class's rows drawn as without
the options) are drawn among the kept rows, M the largest kept class's count
(or ``--balance-to``); with ``--groups`` the partner of a balanced row is
drawn by the pairing's law from the balanced rows of its group (and class,
or other classes), a row drawn k times being in the pool k times; a row
whose pool holds no other balanced row is paired with itself, lam 1.

The partner's law is tested by the rank of its slots in the row's pool
(pool ordered by class and row; the partner's k slots, one picked uniformly
by the test's own generator), which is uniform under the law: Pearson's
chi-square over 20 bins, rejected at FALSE_ALARM = 1e-6. The control, partners
uniform over the distinct rows of the group (the multiplicity ignored), is
rejected at the same bound, by this test and by ``mixup verify``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, write_h5
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment

FALSE_ALARM = 1e-6
BINS = 20
N = 600
COPIES = 6


def make_input(tmp_path):
    """Classes of 400, 150 and 50 rows, shuffled; 8 groups, and row 5 (of class 0) alone in a group."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(400, np.int64), np.ones(150, np.int64), np.full(50, 2)][rng.permutation(N)]
    pid = rng.integers(0, 8, N)
    lone = int(np.flatnonzero(y == 0)[0])
    pid[lone] = 99
    x = rng.standard_normal((N, 3)).astype(np.float32)
    src = write_h5(tmp_path / "in.h5", chunks=False, x=x, y=y, pid=pid)
    held = tmp_path / "held.npy"
    np.save(held, np.arange(3, N, 7))
    return src, x, y, pid, lone, held


def run(src, out, **options):
    augment(AugmentRequest(src, out, alpha=0.4, seed=3, copies=COPIES, balance=True, **options))
    return load_output(out)


def pool_of(pairing, balanced, y, pid, r):
    """The balanced rows (repetitions kept) row r's partner is drawn from, ordered by class and row."""
    keep = pid[balanced] == pid[r]
    if pairing == "within-class":
        keep &= y[balanced] == y[r]
    elif pairing == "between-class":
        keep &= y[balanced] != y[r]
    pool = balanced[keep]
    return pool[np.lexsort((pool, y[pool]))]


def slot_rank_p(pairing, own, partner, balanced, y, pid, seed=0) -> float:
    """p-value of the partners' slot ranks in their pools against uniform
    draws from the pools (Pearson's chi-square, 20 bins of each pool)."""
    rng = np.random.default_rng(seed)
    pools = {}
    counts, expected = np.zeros(BINS), np.zeros(BINS)
    for r, p in zip(own.tolist(), partner.tolist()):
        if r not in pools:
            pools[r] = pool_of(pairing, balanced, y, pid, r)
        pool = pools[r]
        m = len(pool)
        if m <= 1 if pairing != "between-class" else m == 0:
            continue
        slots = np.flatnonzero(pool == p)
        slot = int(slots[0]) + int(rng.integers(0, len(slots)))  # uniform over 0..m-1 under the law
        counts[slot * BINS // m] += 1
        expected += np.bincount(np.arange(m) * BINS // m, minlength=BINS) / m
    assert expected.min() >= 10, "too few rows to test"
    return float(stats.chi2.sf(float(np.sum((counts - expected) ** 2 / expected)), BINS - 1))


@pytest.mark.parametrize("pairing", ["global", "within-class"])
def test_balance_with_held_out_rows_draws_m_per_class_among_the_kept_rows(tmp_path, run_cli, pairing):
    src, x, y, _, _, held = make_input(tmp_path)
    got = run(src, tmp_path / "out.h5", pairing=pairing, exclude_rows=held)
    held_rows = set(np.load(held).tolist())
    kept = np.setdiff1d(np.arange(N), list(held_rows))
    m = int(np.bincount(y[kept]).max())
    own = got["own"].reshape(COPIES, -1)
    assert (own == own[0]).all()  # the same balanced rows each copy
    assert np.array_equal(np.bincount(y[own[0]]), [m, m, m])
    assert not held_rows & (set(got["own"].tolist()) | set(got["partner"].tolist()))
    for c in range(3):  # each kept row of class c used floor or ceil(M / n_c) times
        rows = kept[y[kept] == c]
        used = np.bincount(own[0], minlength=N)[rows]
        assert used.min() == m // len(rows) and used.max() == -(-m // len(rows)), c
    if pairing == "within-class":
        assert np.array_equal(y[got["partner"]], y[got["own"]])
    parameters = read_sidecar(tmp_path / "out.h5")["parameters"]
    assert parameters["balance"] is True and parameters["exclude_rows"]["rows"] == len(held_rows)
    assert parameters["rows_per_copy"] == 3 * m
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["global", "within-class", "between-class"])
@pytest.mark.parametrize("held_out", [False, True])
def test_balance_with_groups_draws_inside_the_group_by_the_balanced_law(tmp_path, run_cli, pairing, held_out):
    src, x, y, pid, lone, held = make_input(tmp_path)
    options = {"exclude_rows": held} if held_out else {}
    got = run(src, tmp_path / "out.h5", pairing=pairing, groups="pid", **options)
    own, partner, lam = got["own"], got["partner"], got["lam"]
    balanced = own.reshape(COPIES, -1)[0]
    assert np.array_equal(pid[partner], pid[own]) and np.array_equal(got["group"], pid[own])
    if pairing == "within-class":
        assert np.array_equal(y[partner], y[own])
    alone = np.array(
        [len(pool_of(pairing, balanced, y, pid, r)) <= (0 if pairing == "between-class" else 1) for r in own]
    )
    if not held_out or lone not in set(np.load(held).tolist()):
        assert alone[own == lone].all()  # the only row of its group, drawn once (class 0 is the largest)
    assert np.array_equal(partner[alone], own[alone]) and (lam[alone] == 1.0).all()
    assert np.array_equal(got["x"][alone], x[own[alone]])  # left unmixed, byte for byte
    if pairing == "between-class":
        assert np.all(y[partner[~alone]] != y[own[~alone]])
    assert slot_rank_p(pairing, own, partner, balanced, y, pid) > FALSE_ALARM
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stdout
    assert "partner uniform in the group" in result.stdout


@pytest.mark.slow
def test_a_planted_law_that_ignores_the_repetitions_is_rejected(tmp_path, run_cli):
    """Partners uniform over the distinct rows of the row's group: inside the
    group all the same, but rows of the small classes (drawn 3 and 8 times)
    too rarely; rejected by the slot-rank test and by ``mixup verify``."""
    src, x, y, pid, _, _ = make_input(tmp_path)
    out = tmp_path / "out.h5"
    got = run(src, out, groups="pid")
    own = got["own"]
    balanced = own.reshape(COPIES, -1)[0]
    rng = np.random.default_rng(5)
    planted = got["partner"].copy()
    for i, r in enumerate(own.tolist()):
        rows = np.unique(pool_of("global", balanced, y, pid, r))
        if len(rows) > 1:
            planted[i] = rows[rng.integers(0, len(rows))]
    assert np.array_equal(pid[planted], pid[own])  # the constraint alone does not see it
    assert slot_rank_p("global", own, got["partner"], balanced, y, pid) > FALSE_ALARM
    assert slot_rank_p("global", own, planted, balanced, y, pid) < FALSE_ALARM
    with h5py.File(out, "r+") as f:
        f["partner"][...] = planted
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "partners are not drawn uniformly from the row's group" in result.stdout


def test_balance_and_held_out_rows_on_a_set_are_refused(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    a = write_h5(tmp_path / "a.h5", x=rng.standard_normal((20, 2)), y=rng.integers(0, 2, 20))
    b = write_h5(tmp_path / "b.h5", x=rng.standard_normal((20, 2)), y=rng.integers(0, 2, 20))
    held = tmp_path / "held.txt"
    held.write_text("1\n")
    result = run_cli("augment", a, b, tmp_path / "outdir", "--balance", "--exclude-rows", held, "--seed", "1")
    assert result.exit_code == 2
    assert "--balance cannot split its output by input" in result.stderr
