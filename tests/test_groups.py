"""``--groups KEY``: every pair stays inside one group, on real outputs.

The constraint and the law are checked from the output's own arrays and the
input file (read here with h5py / numpy), never through the planner: every
mixed row's partner is in its row's group (and class, or another class), the
``group`` array is the own row's id, rows with no partner in their group are
left unmixed (partner itself, lam 1, bytes of the input row), and the partner
is uniform over the row's pool (Pearson's chi-square of the partner's rank
in the pool, bins merged to at least 10 expected, upper tail, at a false
alarm rate of 1e-6; a planted wrong law, partners from the first half of
the pool, is rejected by the same statistic). Sizes sit around the block
boundaries, on input sorted by group and shuffled.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, write_h5, write_npz
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment

FALSE_ALARM = 1e-6
BINS = 20


def grouped_input(path, n, groups, order="shuffled", classes=3, seed=0, **extra):
    """x, y (classes) and pid (group ids) of ``n`` rows, sorted by group or shuffled."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, groups, n).astype(np.int32)
    pid[0] = 10_000  # a group of one row
    if order == "sorted":
        pid = np.sort(pid)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return write_h5(path, chunks=False, x=x, y=y, pid=pid, **extra), x, y, pid


def pools(pairing, pid, y):
    """For each input row: the sorted input rows its partner may be drawn from (excluding nothing)."""
    out = []
    for r in range(len(pid)):
        same_group = pid == pid[r]
        if pairing == "within-class":
            same_group &= y == y[r]
        elif pairing == "between-class":
            same_group &= y != y[r]
        out.append(np.flatnonzero(same_group))
    return out


def alone(pairing, pool, r) -> bool:
    return len(pool) == 0 if pairing == "between-class" else len(pool) <= 1


def merged(observed, expected, least=10.0):
    obs, exp, o, e = [], [], 0, 0.0
    for a, b in zip(observed, expected):
        o, e = o + a, e + b
        if e >= least:
            obs.append(o)
            exp.append(e)
            o, e = 0, 0.0
    if exp:
        obs[-1] += o
        exp[-1] += e
    return np.array(obs, float), np.array(exp, float)


def rank_law_p(pairing, own, partner, pid, y) -> float:
    """p-value of the partners' ranks in their rows' pools against uniform draws from the pools."""
    table = pools(pairing, pid, y)
    observed, expected = np.zeros(BINS), np.zeros(BINS)
    for r, p in zip(own.tolist(), partner.tolist()):
        pool = table[r]
        if alone(pairing, pool, r):
            continue
        m = len(pool)
        observed[int(np.searchsorted(pool, p)) * BINS // m] += 1
        expected += np.bincount(np.arange(m) * BINS // m, minlength=BINS) / m
    obs, exp = merged(observed, expected)
    assert len(exp) >= 5, "too few rows to test"
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return float(stats.chi2.sf(stat, len(exp) - 1))


def run(src, out, **options):
    options = dict({"alpha": 0.4, "seed": 7, "groups": "pid"}, **options)
    augment(AugmentRequest(src, out, **options))
    return load_output(out)


def check_constraint(pairing, got, x, y, pid, copies):
    n = len(pid)
    own = np.arange(n * copies) % n
    partner, lam = got["partner"], got["lam"]
    assert got["group"].dtype == pid.dtype
    assert np.array_equal(got["group"], pid[own])
    table = pools(pairing, pid, y)
    alone_rows = np.array([alone(pairing, table[r], r) for r in own])
    assert np.array_equal(pid[partner], pid[own])
    assert np.array_equal(partner[alone_rows], own[alone_rows])
    assert np.all(lam[alone_rows] == 1.0)
    assert np.array_equal(got["x"][alone_rows], x[own[alone_rows]])  # left unmixed, byte for byte
    drew = ~alone_rows
    if pairing == "within-class":
        assert np.array_equal(y[partner[drew]], y[own[drew]])
    elif pairing == "between-class":
        assert np.all(y[partner[drew]] != y[own[drew]])
    return own, alone_rows


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["global", "within-class", "between-class"])
@pytest.mark.parametrize("order", ["shuffled", "sorted"])
@pytest.mark.parametrize("n", [65, 127, 160])  # B + 1, 2B - 1, 2.5B for B = 64
def test_every_partner_is_in_its_rows_group_and_uniform_over_it(tmp_path, pairing, order, n):
    src, x, y, pid = grouped_input(tmp_path / "in.h5", n, groups=max(2, n // 12), order=order)
    copies = 40
    got = run(src, tmp_path / "out.h5", pairing=pairing, block_rows=64, copies=copies)
    own, alone_rows = check_constraint(pairing, got, x, y, pid, copies)
    assert alone_rows.sum() >= copies  # the planted group of one row, at least
    record = read_sidecar(tmp_path / "out.h5")["parameters"]
    assert record["groups"] == "pid" and record["group_count"] == len(np.unique(pid))
    assert record["unpaired_rows"] * copies == alone_rows.sum()
    assert rank_law_p(pairing, own, got["partner"], pid, y) > FALSE_ALARM


def test_the_rank_statistic_rejects_a_planted_wrong_law(tmp_path):
    """The control: partners drawn from the first half of the row's pool only,
    inside the group all the same, are rejected at the same bound."""
    n, copies = 160, 40
    _, _, y, pid = grouped_input(tmp_path / "in.h5", n, groups=n // 12)
    rng = np.random.default_rng(1)
    table = pools("global", pid, y)
    own = np.arange(n * copies) % n
    partner = np.array([table[r][rng.integers(0, max(1, (len(table[r]) + 1) // 2))] for r in own])
    assert np.array_equal(pid[partner], pid[own])  # the constraint alone does not see it
    assert rank_law_p("global", own, partner, pid, y) < FALSE_ALARM


def test_string_group_ids_write_their_codes(tmp_path):
    rng = np.random.default_rng(2)
    names = np.array(["ann", "bob", "cy", "dee"])
    pid = names[rng.integers(0, 4, 90)]
    x = rng.standard_normal((90, 2)).astype(np.float32)
    src = write_npz(tmp_path / "in.npz", x=x, y=rng.integers(0, 2, 90), pid=pid)
    got = run(src, tmp_path / "out.h5", copies=3)
    own = np.arange(270) % 90
    codes = np.searchsorted(names, pid)
    assert got["group"].dtype == np.int64 and np.array_equal(got["group"], codes[own])
    assert np.array_equal(pid[got["partner"]], pid[own])


def test_group_k_fold_on_the_output_never_leaks(tmp_path):
    """Split the output by its 'group' array: no input row (own or partner) of a
    test fold is in the training folds."""
    from sklearn.model_selection import GroupKFold

    src, _, _, pid = grouped_input(tmp_path / "in.h5", 300, groups=25)
    got = run(src, tmp_path / "out.h5", copies=2, include_original=True)
    n = len(pid)
    own = np.arange(len(got["partner"])) % n
    for train, test in GroupKFold(n_splits=5).split(got["x"], groups=got["group"]):
        used_in_train = set(own[train]) | set(got["partner"][train].tolist())
        used_in_test = set(own[test]) | set(got["partner"][test].tolist())
        assert not used_in_train & used_in_test


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda n: {}, 2, "has no 'pid'"),
        (lambda n: {"pid": np.arange(n - 1)}, 1, "has 59 rows but x has 60"),
        (lambda n: {"pid": np.linspace(0, 1, n)}, 1, "integer or string group id"),
        (lambda n: {"pid": np.zeros((n, 2), np.int64)}, 1, "integer or string group id"),
    ],
)
def test_bad_group_arrays_are_refused_in_one_line(tmp_path, run_cli, make, code, words):
    rng = np.random.default_rng(0)
    src = write_h5(tmp_path / "in.h5", x=rng.standard_normal((60, 2)), y=rng.integers(0, 2, 60), **make(60))
    result = run_cli("augment", src, tmp_path / "out.h5", "--groups", "pid")
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "pid" in lines[0]
    assert not (tmp_path / "out.h5").exists()


def test_the_run_says_how_many_rows_had_no_partner(tmp_path, run_cli):
    src, *_ = grouped_input(tmp_path / "in.h5", 100, groups=8)
    result = run_cli("augment", src, tmp_path / "out.h5", "--groups", "pid", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["groups"] == "pid" and summary["unpaired_rows"] >= 1 and summary["group_count"] == 9


# ---------------------------------------------------------------- verify


def law_line(result) -> str:
    return next(line for line in result.stdout.splitlines() if " law: " in line)


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["global", "within-class", "between-class"])
def test_verify_passes_a_good_output_and_tests_the_group_law(tmp_path, run_cli, pairing):
    src, *_ = grouped_input(tmp_path / "in.h5", 400, groups=30)
    run(src, tmp_path / "out.h5", pairing=pairing, copies=4, block_rows=64)
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stdout
    line = law_line(result)
    assert line.startswith("ok") and "partners inside their group" in line and "partner uniform in the group" in line


def test_verify_fails_an_output_whose_partners_cross_groups(tmp_path, run_cli):
    """Partners moved to another group, x recomputed from them by the formula."""
    src, x, _, pid = grouped_input(tmp_path / "in.h5", 400, groups=30)
    out = tmp_path / "out.h5"
    run(src, out, copies=2)
    with h5py.File(out, "r+") as f:
        partner, lam = f["partner"][()], f["lam"][()]
        other = np.flatnonzero(pid != pid[partner[5]])[0]
        partner[5] = other
        f["partner"][...] = partner
        own = np.arange(len(partner)) % len(pid)
        l32 = lam.astype(np.float32)[:, None]
        f["x"][...] = l32 * x[own] + (1 - l32) * x[partner]
    result = run_cli("verify", out)
    assert result.exit_code == 1
    line = law_line(result)
    assert line.startswith("FAIL") and "output row 5: its partner is in another group" in line


def test_verify_fails_a_planner_that_ignores_the_groups_while_the_bytes_match(tmp_path, run_cli, monkeypatch):
    """A planner that draws partners from the whole dataset but records
    --groups: every byte matches its own recomputation, the group law does not."""
    from mixup_cli.mixing import groups

    def anywhere(self, rng, start, stop, same):
        return rng.integers(0, self.n_rows, stop - start), np.zeros(stop - start, bool)

    monkeypatch.setattr(groups.GroupIndex, "draw_partners", anywhere)
    src, *_ = grouped_input(tmp_path / "in.h5", 400, groups=30)
    run(src, tmp_path / "out.h5", copies=2)
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 1
    checks = {line.split(":")[0].split()[-1]: line.split()[0] for line in result.stdout.splitlines() if ":" in line}
    assert checks["recompute"] == "ok" and checks["data"] == "ok"
    assert law_line(result).startswith("FAIL") and "in another group" in law_line(result)


def test_verify_fails_an_edited_group_array(tmp_path, run_cli):
    src, *_ = grouped_input(tmp_path / "in.h5", 200, groups=20)
    out = tmp_path / "out.h5"
    run(src, out, include_original=True)
    with h5py.File(out, "r+") as f:
        group = f["group"][()]
        group[3] += 1
        f["group"][...] = group
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "output row 3: its 'group' is not its own row's group id" in law_line(result)


# ---------------------------------------------------------------- sets and shards


def write_set(tmp_path, sizes, seed=4):
    rng = np.random.default_rng(seed)
    paths, pids = [], []
    for k, n in enumerate(sizes):
        pid = rng.integers(0, 9, n)
        paths.append(
            write_h5(tmp_path / f"part{k}.h5", x=rng.standard_normal((n, 2)), y=rng.integers(0, 3, n), pid=pid)
        )
        pids.append(pid)
    return paths, np.concatenate(pids)


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["global", "between-class"])
def test_a_sets_pairs_stay_in_their_group_across_inputs(tmp_path, run_cli, pairing):
    sizes = [70, 45, 90]
    paths, pid = write_set(tmp_path, sizes)
    outdir = tmp_path / "outdir"
    args = ["--groups", "pid", "--pairing", pairing, "--seed", "3", "--block-rows", "32", "--copies", "2"]
    result = run_cli("augment", *paths, outdir, *args)
    assert result.exit_code == 0, result.stderr
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    crossed_inputs = 0
    for k, n in enumerate(sizes):
        got = load_output(outdir / f"part{k}.h5")
        own = np.arange(len(got["partner"])) % n + offsets[k]
        assert np.array_equal(pid[got["partner"]], pid[own]) and np.array_equal(got["group"], pid[own])
        crossed_inputs += int(np.sum((got["partner"] < offsets[k]) | (got["partner"] >= offsets[k + 1])))
    assert crossed_inputs > 0  # groups span inputs: partners come from the whole set
    assert run_cli("verify", outdir).exit_code == 0


@pytest.mark.slow
def test_shards_of_a_set_with_groups_equal_the_whole_run(tmp_path, run_cli):
    paths, _ = write_set(tmp_path, [50, 60, 40])
    args = ["--groups", "pid", "--seed", "5", "--block-rows", "16"]
    assert run_cli("augment", *paths, tmp_path / "whole", *args).exit_code == 0
    for part in ("0/2", "1/2"):
        result = run_cli("augment", *paths, tmp_path / "parts", *args, "--shard", part)
        assert result.exit_code == 0, result.stderr
    for k in range(3):
        whole, parts = load_output(tmp_path / "whole" / f"part{k}.h5"), load_output(tmp_path / "parts" / f"part{k}.h5")
        assert sorted(whole) == sorted(parts) and "group" in whole
        for key in whole:
            assert whole[key].tobytes() == parts[key].tobytes(), key


def test_a_set_input_without_the_group_ids_is_named(tmp_path, run_cli):
    paths, _ = write_set(tmp_path, [30, 30])
    rng = np.random.default_rng(0)
    bare = write_h5(tmp_path / "bare.h5", x=rng.standard_normal((30, 2)), y=rng.integers(0, 3, 30))
    result = run_cli("augment", *paths, bare, tmp_path / "outdir", "--groups", "pid")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bare.h5 has no 'pid'" in lines[0] and "--groups" in lines[0]


def test_inspect_shows_the_groups(tmp_path, run_cli):
    src, *_ = grouped_input(tmp_path / "in.h5", 100, groups=8)
    run(src, tmp_path / "out.h5")
    result = run_cli("inspect", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stderr
    lines = {line.strip().split("  ")[0]: line.split()[-1] for line in result.stdout.splitlines() if line.strip()}
    assert lines["groups"] == "pid" and lines["group count"] == "9" and int(lines["unpaired rows"]) >= 1


def test_verify_of_class_pairings_on_string_labels_tests_the_groups_alone(tmp_path, run_cli):
    """Classes named by strings are not read by the law check: the pools of
    within-class are then unknown, and only the group constraint is tested
    (uniformity over the whole group would be a false alarm)."""
    rng = np.random.default_rng(0)
    src = write_h5(
        tmp_path / "in.h5",
        x=rng.standard_normal((300, 3)).astype(np.float32),
        y=np.array([b"a", b"b", b"c"])[rng.integers(0, 3, 300)],
        pid=rng.integers(0, 20, 300),
    )
    run(src, tmp_path / "out.h5", pairing="within-class", copies=6)
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 0, result.stdout
    line = law_line(result)
    assert "partners inside their group" in line and "uniform" not in line


def test_verify_of_a_set_fails_a_partner_edited_to_cross_groups(tmp_path, run_cli):
    sizes = [70, 45, 90]
    paths, pid = write_set(tmp_path, sizes)
    outdir = tmp_path / "outdir"
    assert run_cli("augment", *paths, outdir, "--groups", "pid", "--seed", "3", "--copies", "3").exit_code == 0
    result = run_cli("verify", outdir)
    assert result.exit_code == 0, result.stdout
    with h5py.File(outdir / "part1.h5", "r+") as f:
        partner = f["partner"][()]
        own = 70 + 7  # output row 7 of part1.h5 is global row 77
        partner[7] = np.flatnonzero(pid != pid[own])[0]
        f["partner"][...] = partner
    result = run_cli("verify", outdir)
    assert result.exit_code == 1
    line = next(line for line in result.stdout.splitlines() if "part1.h5: law:" in line)
    assert "output row 7: its partner is in another group" in line


def test_cutmix_keeps_pairs_in_their_group_and_leaves_a_lone_row_as_it_is(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8)
    g = rng.integers(0, 10, 120)
    g[5] = 99  # alone in its group
    src = write_h5(tmp_path / "img.h5", x=x, y=rng.integers(0, 3, 120), g=g)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--method", "cutmix", "--groups", "g", "--seed", "1", "--copies", "3")
    assert result.exit_code == 0, result.stderr
    got = load_output(out)
    own = np.arange(360) % 120
    assert np.array_equal(g[got["partner"]], g[own])
    lone = own == 5
    assert np.all(got["lam"][lone] == 1.0) and np.all(got["partner"][lone] == 5)
    assert all(np.array_equal(row, x[5]) for row in got["x"][lone])
    assert run_cli("verify", out).exit_code == 0


# ---------------------------------------------------------------- knn inside groups


def knn_lists(x, cell, k):
    """Each row's K nearest other rows of its cell (numpy brute force, float64
    distances of the float32 rows, ties by index); all of them when fewer."""
    f = x.reshape(len(x), -1).astype(np.float32).astype(np.float64)
    lists = []
    for r in range(len(x)):
        others = np.flatnonzero((cell == cell[r]) & (np.arange(len(x)) != r))
        d = ((f[others] - f[r]) ** 2).sum(axis=1)
        lists.append(others[np.lexsort((others, d))][:k])
    return lists


def knn_input(path, n=240, seed=3):
    """Ties everywhere (small integer features), a group of one row and a group of three."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, 6, n)
    pid[0] = 100  # alone
    pid[1:4] = 200  # three rows: fewer than K + 1
    x = rng.integers(0, 4, (n, 3)).astype(np.float32)
    y = rng.integers(0, 2, n)
    return write_h5(path, x=x, y=y, pid=pid), x, y, pid


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["knn", "knn-within-class"])
def test_knn_partners_are_among_the_k_nearest_of_their_group(tmp_path, run_cli, pairing):
    src, x, y, pid = knn_input(tmp_path / "in.h5")
    n, k, copies = len(pid), 5, 100
    out = tmp_path / "out.h5"
    args = ["--groups", "pid", "--pairing", pairing, "--neighbors", k, "--seed", 2, "--copies", copies]
    result = run_cli("augment", src, out, *args, "--block-rows", 64)
    assert result.exit_code == 0, result.stderr
    cell = pid * 2 + y if pairing == "knn-within-class" else pid
    lists = knn_lists(x, cell, k)
    got = load_output(out)
    own = np.arange(n * copies) % n
    alone = np.array([len(lists[r]) == 0 for r in own])
    assert np.array_equal(got["partner"][alone], own[alone]) and np.all(got["lam"][alone] == 1.0)
    assert np.array_equal(got["x"][alone], x[own[alone]])
    assert all(p in lists[r] for r, p in zip(own[~alone].tolist(), got["partner"][~alone].tolist()))
    assert np.array_equal(got["group"], pid[own])
    # every entry of every list is drawn (100 draws from at most 5: missed with p < 1e-9 a row)
    for r in range(n):
        assert set(got["partner"][own == r].tolist()) == (set(lists[r].tolist()) or {r})
    params = read_sidecar(out)["parameters"]
    short = sum(len(lst) < k for lst in lists)
    assert params["unpaired_rows"] == sum(len(lst) == 0 for lst in lists) >= 1
    assert params["short_rows"] == short >= 4
    assert f"{short} rows have fewer than --neighbors others in their group" in result.stderr
    verified = run_cli("verify", out)
    assert verified.exit_code == 0, verified.stdout
    assert "partners inside their group" in law_line(verified)


@pytest.mark.slow
def test_verify_fails_a_knn_partner_edited_to_another_group(tmp_path, run_cli):
    src, x, y, pid = knn_input(tmp_path / "in.h5")
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--groups", "pid", "--pairing", "knn", "--seed", 2).exit_code == 0
    with h5py.File(out, "r+") as f:
        partner, lam = f["partner"][()], f["lam"][()]
        partner[9] = np.flatnonzero(pid != pid[9])[0]
        f["partner"][...] = partner
        l32 = lam.astype(np.float32)[:, None]
        f["x"][...] = l32 * x + (1 - l32) * x[partner]
    result = run_cli("verify", out)
    assert result.exit_code == 1
    assert "output row 9: its partner is in another group" in law_line(result)


def test_knn_with_groups_takes_every_group_size_and_leaves_runs_without_groups_alone(tmp_path, run_cli):
    """A group of K + 1 rows takes exactly the others; without --groups, a
    dataset of K rows is still refused as before."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 2)).astype(np.float32)
    pid = np.repeat([0, 1], 6)
    src = write_h5(tmp_path / "in.h5", x=x, y=np.zeros(12, np.int64), pid=pid)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--groups", "pid", "--pairing", "knn", "--neighbors", 5, "--copies", 20)
    assert result.exit_code == 0, result.stderr
    got = load_output(out)
    own = np.arange(240) % 12
    assert np.array_equal(pid[got["partner"]], pid[own]) and np.all(got["partner"] != own)
    assert read_sidecar(out)["parameters"]["short_rows"] == 0
    small = write_h5(tmp_path / "small.h5", x=x[:5], y=np.zeros(5, np.int64), pid=pid[:5])
    refused = run_cli("augment", small, tmp_path / "o2.h5", "--pairing", "knn", "--neighbors", 5)
    assert refused.exit_code == 2 and "--neighbors 5" in refused.stderr


# ---------------------------------------------------------------- label-kernel inside groups


def kernel_expected(y, pid, bandwidth, own, edges, distance):
    """Expected draws per bin of label distance under the exact kernel over
    the other rows of the row's group (rows alone in their group left out)."""
    y2 = np.asarray(y, np.float64).reshape(len(y), -1)
    d2 = ((y2[:, None, :] - y2[None, :, :]) ** 2).sum(axis=2)
    w = np.exp(-d2 / (2 * bandwidth**2)) * (pid[:, None] == pid[None, :])
    np.fill_diagonal(w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    p = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    bins = np.clip(np.digitize(distance(y2[None, :, :] - y2[:, None, :]), edges) - 1, 0, len(edges) - 2)
    times = np.bincount(own, minlength=len(y)).astype(np.float64)
    return np.array([(times[:, None] * p * (bins == b)).sum() for b in range(len(edges) - 1)])


def kernel_p(observed, expected):
    obs, exp = merged(observed, expected, 5.0)
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def kernel_input(path, y):
    rng = np.random.default_rng(8)
    n = len(y)
    pid = rng.integers(0, 3, n)
    pid[0] = 50  # alone in its group
    pid[1:3] = 60  # two rows far apart: each the other's only partner
    x = rng.standard_normal((n, 2)).astype(np.float32)
    return write_h5(path, x=x, y=y, pid=pid), pid


@pytest.mark.slow
@pytest.mark.parametrize("bandwidth", [0.05, 0.3])
def test_label_kernel_draws_follow_the_kernel_inside_each_group(tmp_path, bandwidth):
    rng = np.random.default_rng(11)
    n = 1500
    y = np.concatenate([rng.normal(0, 1, 1200), np.round(rng.normal(3, 0.5, 300), 1)])  # ties too
    y[1], y[2] = -40.0, 40.0
    src, pid = kernel_input(tmp_path / "in.h5", y)
    copies = 20
    got = run(src, tmp_path / "out.h5", pairing="label-kernel", bandwidth=bandwidth, copies=copies, block_rows=256)
    own = np.arange(n * copies) % n
    partner = got["partner"]
    assert np.array_equal(pid[partner], pid[own]) and np.array_equal(got["group"], pid[own])
    alone = own == 0
    assert np.all(partner[alone] == 0) and np.all(got["lam"][alone] == 1.0)
    assert np.all(partner[own == 1] == 2) and np.all(partner[own == 2] == 1)  # 80 apart: the nearest label
    assert np.all(partner[~alone] != own[~alone])
    drew = own > 2
    edges = np.linspace(-4 * bandwidth, 4 * bandwidth, 25)
    edges[0], edges[-1] = -np.inf, np.inf
    observed = np.bincount(np.clip(np.digitize(y[partner[drew]] - y[own[drew]], edges) - 1, 0, 23), minlength=24)
    expected = kernel_expected(y, pid, bandwidth, own[drew], edges, lambda d: d[..., 0])
    assert kernel_p(observed, expected) > 0.001
    assert read_sidecar(tmp_path / "out.h5")["parameters"]["unpaired_rows"] == 1


@pytest.mark.slow  # the one-dimensional kernel inside groups: test_label_kernel_draws_follow_the_kernel_inside_each_group
def test_multi_dimensional_label_kernel_is_the_exact_kernel_inside_each_group(tmp_path, run_cli):
    rng = np.random.default_rng(5)
    n, copies = 800, 25
    y = rng.normal(0, 1, (n, 3))
    src, pid = kernel_input(tmp_path / "in.h5", y)
    out = tmp_path / "out.h5"
    got = run(src, out, pairing="label-kernel", bandwidth=0.5, copies=copies, block_rows=128)
    own = np.arange(n * copies) % n
    partner = got["partner"]
    assert np.array_equal(pid[partner], pid[own])
    assert np.all(partner[own == 0] == 0) and np.all(got["lam"][own == 0] == 1.0)
    drew = own > 0
    norm = lambda d: np.sqrt((d**2).sum(axis=-1))  # noqa: E731
    edges = np.append(np.linspace(0, 2.5, 21), np.inf)
    observed = np.bincount(np.clip(np.digitize(norm(y[partner[drew]] - y[own[drew]]), edges) - 1, 0, 20), minlength=21)
    assert kernel_p(observed, kernel_expected(y, pid, 0.5, own[drew], edges, norm)) > 0.001
    verified = run_cli("verify", out)
    assert verified.exit_code == 0, verified.stdout
    assert "partners inside their group" in law_line(verified)


# ---------------------------------------------------------------- batch inside groups


def batch_cells(n, block, pid):
    """Each row's cell: the rows of its group in its pair group (its block, or
    the last two blocks when the last is shorter than half a block)."""
    first = np.arange(n) // block
    k = -(-n // block)
    if k >= 2 and 2 * (n - (k - 1) * block) < block:
        first[first == k - 1] = k - 2
    return [np.flatnonzero((first == first[r]) & (pid == pid[r])) for r in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("n", [65, 150, 160])  # B + 1, a short last block merged, a half block alone
def test_batch_partners_are_a_permutation_of_each_block_and_group(tmp_path, run_cli, n):
    src, x, _, pid = grouped_input(tmp_path / "in.h5", n, groups=max(2, n // 12))
    copies, block = 60, 64
    out = tmp_path / "out.h5"
    got = run(src, out, pairing="batch", block_rows=block, copies=copies, include_original=True)
    cells = batch_cells(n, block, pid)
    partner, lam = got["partner"][n:].reshape(copies, n), got["lam"][n:].reshape(copies, n)
    seen = set()
    for c in range(copies):
        for r in range(n):
            cell = cells[r]
            if r == cell[0]:  # each cell once: its partners are its rows, each once
                assert np.array_equal(np.sort(partner[c, cell]), cell)
            if len(cell) == 1:
                assert partner[c, r] == r and lam[c, r] == 1.0
            seen.add((r, int(partner[c, r])))
    assert np.array_equal(got["group"], pid[np.arange(n * (copies + 1)) % n])
    alone = np.array([len(cells[r]) == 1 for r in range(n)])
    assert np.array_equal(
        got["x"][n:].reshape(copies, n, -1)[:, alone], np.broadcast_to(x[alone], (copies,) + x[alone].shape)
    )
    assert read_sidecar(out)["parameters"]["unpaired_rows"] == alone.sum() >= 1
    # uniform over the cell: the partner's rank in the row's cell
    observed, expected = np.zeros(BINS), np.zeros(BINS)
    for r in np.flatnonzero(~alone):
        m = len(cells[r])
        observed += np.bincount(np.searchsorted(cells[r], partner[:, r]) * BINS // m, minlength=BINS)
        expected += copies * np.bincount(np.arange(m) * BINS // m, minlength=BINS) / m
    obs, exp = merged(observed, expected)
    assert stats.chi2.sf(float(np.sum((obs - exp) ** 2 / exp)), len(exp) - 1) > FALSE_ALARM
    verified = run_cli("verify", out)
    assert verified.exit_code == 0, verified.stdout
    line = law_line(verified)
    assert "partners inside their group" in line and "each row once" in line


def test_verify_fails_a_batch_partner_edited_to_another_group(tmp_path, run_cli):
    src, x, _, pid = grouped_input(tmp_path / "in.h5", 200, groups=10)
    out = tmp_path / "out.h5"
    run(src, out, pairing="batch", block_rows=64, copies=2)
    with h5py.File(out, "r+") as f:
        partner, lam = f["partner"][()], f["lam"][()]
        partner[5] = next(r for r in range(64) if pid[r] != pid[5])
        f["partner"][...] = partner
        own = np.arange(len(partner)) % len(pid)
        l32 = lam.astype(np.float32)[:, None]
        f["x"][...] = l32 * x[own] + (1 - l32) * x[partner]
    result = run_cli("verify", out)
    assert result.exit_code == 1
    line = law_line(result)
    assert "output row 5: its partner is in another group" in line and "not a permutation" in line


@pytest.mark.slow
@pytest.mark.parametrize("pairing, extra", [("knn", {}), ("label-kernel", {"bandwidth": 0.2}), ("batch", {})])
def test_a_set_keeps_pairs_in_groups_across_inputs_and_its_parts_write_the_same_rows(tmp_path, pairing, extra):
    import mixup_cli

    rng = np.random.default_rng(21)
    paths, ids = [], []
    for i in range(3):
        pid = rng.integers(0, 4, 40)
        ids.append(pid)
        x = rng.random((40, 4), dtype=np.float32)
        paths.append(write_h5(tmp_path / f"s{i}.h5", x=x, y=rng.random(40).astype(np.float32), pid=pid))
    pid = np.concatenate(ids)
    options = dict(groups="pid", pairing=pairing, seed=3, y_kind="dense", block_rows=32, **extra)
    mixup_cli.augment(paths, tmp_path / "whole", **options)
    mixup_cli.augment(paths, tmp_path / "part", shard="1/3", **options)
    for k, path in enumerate(paths):
        got = load_output(tmp_path / "whole" / path.name)
        assert (pid[40 * k + np.arange(40)] == got["group"]).all()  # each row's own group
        assert (pid[got["partner"]] == got["group"]).all()  # partners from any input, inside the group
    whole, part = load_output(tmp_path / "whole" / "s1.h5"), load_output(tmp_path / "part" / "s1.h5")
    assert all(np.array_equal(whole[key], part[key]) for key in whole)
    assert mixup_cli.verify(tmp_path / "whole").ok
