"""Every pairing is the law it documents: statistical tests on real outputs.

Each test runs ``augment`` on a real file, reads the output's own ``partner``
(``own``, ``lam``, ``box``) arrays back with h5py, and tests them against the
documented law. Tolerances are derived, not tuned: every statistical check
rejects at a false-alarm rate of ``FALSE_ALARM`` = 1e-6 under the law
(two-sided where a statistic can err both ways), from the exact law of the
statistic or from its normal / chi-square approximation where each cell
expects at least 5 counts (the usual condition for the chi-square
approximation; the tests keep it at 10 or more). Seeds are fixed, so a run is
deterministic; the bound says how unlikely a correct sampler is to fail.

Each law test has a control: a planted wrong law (the block cycle that plan
version 1 drew for ``global``, a reused last block, a permutation where the
law is i.i.d., partners from the own block only) that the same statistic,
at the same bound, rejects.

Sizes sit around block boundaries (N = B+1, 2B-1, 2.5B), with 1, 2, 3 and
many blocks, on input sorted by class and shuffled.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_output, write_h5
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment

FALSE_ALARM = 1e-6
# |z| beyond this has probability FALSE_ALARM under a standard normal (two-sided).
Z = stats.norm.isf(FALSE_ALARM / 2)  # 4.89


# ---------------------------------------------------------------- statistics


def chi2_p(observed, expected, df: int) -> float:
    """Two-sided p-value of Pearson's chi-square of ``observed`` against
    ``expected`` with ``df`` degrees of freedom: too far (upper tail) or too
    close (lower tail: a permutation where the law is i.i.d.) both count."""
    observed, expected = np.asarray(observed, float).ravel(), np.asarray(expected, float).ravel()
    assert expected.min() >= 5, f"chi-square approximation needs >= 5 expected per cell, got {expected.min():.2f}"
    stat = float(np.sum((observed - expected) ** 2 / expected))
    return 2 * min(stats.chi2.sf(stat, df), stats.chi2.cdf(stat, df))


def pair_table_p(own_group, partner_group, prob) -> float:
    """The (own group, partner group) table against rows that draw their
    partner's group independently with probabilities ``prob`` (one per
    group): each own group's row of the table is multinomial with fixed
    total, so df = groups x (groups - 1)."""
    g = len(prob)
    table = np.zeros((g, g))
    np.add.at(table, (own_group, partner_group), 1)
    expected = table.sum(axis=1, keepdims=True) * np.asarray(prob)[None, :]
    keep = expected.sum(axis=1) > 0
    return chi2_p(table[keep], expected[keep], int(keep.sum()) * (g - 1))


def bernoulli_sum_z(hits, probs) -> float:
    """z of a sum of independent Bernoulli(probs) indicators (normal approximation)."""
    probs = np.asarray(probs, float)
    return (float(np.sum(hits)) - probs.sum()) / np.sqrt(np.sum(probs * (1 - probs)))


def max_count_bound(draws: int, n: int) -> int:
    """The smallest k with P(some row is drawn >= k times) <= FALSE_ALARM when
    ``draws`` partners are i.i.d. uniform over ``n`` rows (union bound over
    rows: n x P(Binomial(draws, 1/n) >= k))."""
    k = 1
    while n * stats.binom.sf(k - 1, draws, 1 / n) > FALSE_ALARM:
        k += 1
    return k


def unused_z(partner_by_copy, n: int) -> float:
    """z of the number of rows left unused as partners, summed over copies,
    against n partners i.i.d. uniform over n rows per copy (occupancy:
    mean n q, variance n q + n (n-1) (1-2/n)^n - n^2 q^2, q = (1-1/n)^n)."""
    unused = sum(n - len(np.unique(p)) for p in partner_by_copy)
    q = (1 - 1 / n) ** n
    var = n * q + n * (n - 1) * (1 - 2 / n) ** n - (n * q) ** 2
    copies = len(partner_by_copy)
    return (unused - copies * n * q) / np.sqrt(copies * var)


# ---------------------------------------------------------------- runs and planted laws


def run(tmp_path, x, y=None, name="out", **options) -> dict[str, np.ndarray]:
    """``augment`` on a real HDF5 file of ``x`` (and ``y``); the output's arrays."""
    src = tmp_path / f"{name}-in.h5"
    if not src.exists():
        write_h5(src, chunks=False, x=x, y=np.zeros(len(x), np.int64) if y is None else y)
    out = tmp_path / f"{name}.h5"
    augment(AugmentRequest(src, out, alpha=0.4, seed=options.pop("seed", 7), **options))
    return load_output(out)


def by_copy(arr, n: int) -> np.ndarray:
    """An output array as (copies, n)."""
    return np.asarray(arr).reshape(-1, n)


def block_of(rows, block_rows: int):
    return np.asarray(rows) // block_rows


def block_sizes(n: int, block_rows: int) -> np.ndarray:
    return np.diff(np.minimum(np.arange(0, n + block_rows, block_rows), n))


def planted_block_cycle(n: int, block_rows: int, copies: int, seed: int = 0) -> np.ndarray:
    """The law plan version 1 drew for ``global``: per copy, blocks in a random
    cycle, each block's partners a random permutation (repeated to cover it)
    of the next block's rows."""
    rng = np.random.default_rng(seed)
    k = -(-n // block_rows)
    out = np.empty((copies, n), np.int64)
    for c in range(copies):
        order = rng.permutation(k)
        for t, b in enumerate(order):
            nb = order[(t + 1) % k]
            s, e = b * block_rows, min(n, (b + 1) * block_rows)
            ps, pe = nb * block_rows, min(n, (nb + 1) * block_rows)
            pool = np.concatenate([rng.permutation(pe - ps) for _ in range(-(-(e - s) // (pe - ps)))])
            out[c, s:e] = ps + pool[: e - s]
    return out


def planted_permutation(n: int, copies: int, seed: int = 0) -> np.ndarray:
    """A uniform random permutation of all rows per copy (not i.i.d.)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(copies)])


def planted_own_block(n: int, block_rows: int, copies: int, seed: int = 0) -> np.ndarray:
    """i.i.d. uniform over the row's own block only."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    start = rows // block_rows * block_rows
    size = np.minimum(start + block_rows, n) - start
    return np.stack([start + (rng.random(n) * size).astype(np.int64) for _ in range(copies)])


# ---------------------------------------------------------------- global: i.i.d. uniform over all N rows


def row_groups(rows, n: int, groups: int = 10):
    """Rows cut into ``min(n, groups)`` contiguous groups of near-equal size."""
    g = min(n, groups)
    return np.asarray(rows) * g // n


def group_probs(n: int, groups: int = 10) -> np.ndarray:
    return np.bincount(row_groups(np.arange(n), n, groups)) / n


def global_pair_p(partner_by_copy, n: int) -> float:
    """The (own row's group, partner's group) table against i.i.d. uniform
    partners; groups of rows, 10 at most (single rows up to N = 10)."""
    own = np.broadcast_to(np.arange(n), partner_by_copy.shape).ravel()
    return pair_table_p(row_groups(own, n), row_groups(partner_by_copy.ravel(), n), group_probs(n))


B = 8  # block rows of the small runs: N = 9 (B+1), 15 (2B-1), 20 (2.5B), 8 (one block), 40 (five blocks)


@pytest.mark.slow
@pytest.mark.parametrize("n, block_rows", [(9, B), (15, B), (20, B), (8, B), (40, B), (20, 2)])
def test_global_partner_is_iid_uniform_over_every_row(tmp_path, n, block_rows):
    """Each output row's partner is uniform over all N rows, whatever block it
    is in, and independent of the others: every cell of the (row group,
    partner group) table expects its share, and per copy the number of rows
    nobody takes as partner is that of N draws with replacement."""
    smallest = np.bincount(row_groups(np.arange(n), n)).min()
    copies = int(-(-10 * n // smallest**2))  # each cell expects >= (smallest x copies) x smallest / n >= 10
    x = np.arange(n, dtype=np.float32)[:, None]
    partner = by_copy(run(tmp_path, x, block_rows=block_rows, copies=copies)["partner"], n)
    assert partner.min() >= 0 and partner.max() < n
    assert global_pair_p(partner, n) >= FALSE_ALARM
    assert abs(unused_z(partner, n)) <= Z
    # Controls, same statistics and bounds: the block cycle (with one block,
    # a permutation of it), and a uniform permutation of all rows.
    cycle = planted_block_cycle(n, block_rows, copies)
    if n > block_rows:
        assert global_pair_p(cycle, n) < FALSE_ALARM
    else:
        assert abs(unused_z(cycle, n)) > Z
    assert abs(unused_z(planted_permutation(n, copies), n)) > Z


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("block_rows", [1000, 1024, 333, 4000])
def test_global_on_classes_is_independent_random_pairing(tmp_path, order, block_rows):
    """4 classes of 1,000 rows: same-class pairs have probability 1/4 per row
    and the partner's block is independent of the row's own, whether the
    file is sorted by class (blocks of 1000 rows: one class each) or not."""
    n, classes = 4000, 4
    labels = np.repeat(np.arange(classes), n // classes)
    if order == "shuffled":
        labels = np.random.default_rng(1).permutation(labels)
    x = np.arange(n, dtype=np.float32)[:, None]
    out = run(tmp_path, x, labels, block_rows=block_rows)
    partner = out["partner"]
    same_p = np.full(n, 1 / classes)
    assert abs(bernoulli_sum_z(labels[partner] == labels, same_p)) <= Z
    k = -(-n // block_rows)
    # the table of blocks (a tail of a few rows counted with the block before it)
    k_table = k - 1 if n % block_rows and n % block_rows < 100 else k
    blocks = lambda rows: np.minimum(block_of(rows, block_rows), k_table - 1)  # noqa: E731
    sizes = np.bincount(blocks(np.arange(n)))
    if k_table > 1:
        assert pair_table_p(blocks(np.arange(n)), blocks(partner), sizes / n) >= FALSE_ALARM
    # control: the block cycle gives no same-class pair on sorted input, no own-block pair at all
    cycle = planted_block_cycle(n, block_rows, 1)[0]
    if k_table > 1:
        assert pair_table_p(blocks(np.arange(n)), blocks(cycle), sizes / n) < FALSE_ALARM
    if order == "sorted" and block_rows in (1000, 333):
        assert abs(bernoulli_sum_z(labels[cycle] == labels, same_p)) > Z


@pytest.mark.parametrize("n, block_rows", [(1001, 1000), (2001, 1000), (1999, 1000), (2500, 1000)])
def test_global_never_reuses_a_short_last_block(tmp_path, n, block_rows):
    """N = B+1: plan version 1 gave all B rows of the first block the one row of
    the last block as partner. No row may be drawn more often than i.i.d.
    uniform draws allow at 1e-6 (union bound over rows), in any block."""
    x = np.arange(n, dtype=np.float32)[:, None]
    partner = run(tmp_path, x, block_rows=block_rows)["partner"]
    bound = max_count_bound(n, n)
    assert np.bincount(partner, minlength=n).max() < bound
    # the own block's share is that of uniform partners
    sizes = block_sizes(n, block_rows)
    share_p = (sizes / n)[block_of(np.arange(n), block_rows)]
    assert abs(bernoulli_sum_z(block_of(partner, block_rows) == block_of(np.arange(n), block_rows), share_p)) <= Z
    cycle = planted_block_cycle(n, block_rows, 1)[0]
    if n % block_rows <= 10:  # a tail of a few rows, reused by a whole block
        assert np.bincount(cycle, minlength=n).max() >= bound
    assert abs(bernoulli_sum_z(block_of(cycle, block_rows) == block_of(np.arange(n), block_rows), share_p)) > Z


@pytest.mark.slow
def test_global_over_many_blocks(tmp_path):
    """100 blocks of 64 rows (and a tail of 17): partner blocks, grouped by ten
    blocks, independent of the own block's group; multiplicities of groups of
    rows as for i.i.d. draws."""
    n, block_rows, copies = 6417, 64, 4
    x = np.arange(n, dtype=np.float32)[:, None]
    partner = by_copy(run(tmp_path, x, block_rows=block_rows, copies=copies)["partner"], n)
    group = lambda rows: np.minimum(block_of(rows, block_rows * 10), 9)  # noqa: E731  (the tail with the 10th)
    sizes = np.bincount(group(np.arange(n)))
    own = np.broadcast_to(np.arange(n), partner.shape).ravel()
    assert pair_table_p(group(own), group(partner.ravel()), sizes / n) >= FALSE_ALARM
    cycle = planted_block_cycle(n, block_rows, copies).ravel()
    assert pair_table_p(group(own), group(cycle), sizes / n) < FALSE_ALARM


# ---------------------------------------------------------------- verify tests the law too


def law_line(result) -> str:
    return next(line for line in result.stdout.splitlines() if " law: " in line)


def global_output(tmp_path, n=3000, block_rows=500, copies=2):
    x = np.random.default_rng(3).standard_normal((n, 3)).astype(np.float32)
    labels = np.repeat(np.arange(6), n // 6)
    src = write_h5(tmp_path / "in.h5", chunks=False, x=x, y=labels)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, alpha=0.4, seed=11, block_rows=block_rows, copies=copies))
    return src, out


def test_verify_reports_the_law_it_tested(tmp_path, run_cli):
    _, out = global_output(tmp_path)
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    line = law_line(result)
    assert line.startswith("ok") and "partner counts" in line and "own-block share" in line


@pytest.mark.slow
@pytest.mark.parametrize("n", [20, 21, 25, 30, 40, 50, 64, 99, 100, 150, 200, 1000])
def test_verify_raises_no_false_alarm_on_honest_draws_at_small_sizes(n):
    """verify's law check on partners drawn exactly by the documented law
    (i.i.d. uniform, Beta lam) passes: 400 draws per size. The chi-square
    law's lower tail is wrong for counts in few cells (at 20 rows, equal
    halves happen 18% of the time); a check that used it there failed honest
    outputs that often."""
    from mixup_cli.mixing.law import Law

    rng = np.random.default_rng(n)
    for _ in range(400):
        law = Law(pairing="global", n_rows=n, block_rows=max(1, n // 3), alpha=0.4, mixed_rows=n)
        law.add(np.arange(n), rng.integers(0, n, n), rng.beta(0.4, 0.4, n), 0)
        ok, line = law.result()
        assert ok, line


def test_verify_law_check_rejects_partners_that_are_a_permutation():
    """The control: each row exactly once as a partner (a permutation, the
    block cycle's law) is far too even for i.i.d. draws once there are
    cells enough to tell."""
    from mixup_cli.mixing.law import Law

    rng = np.random.default_rng(0)
    n = 5000
    law = Law(pairing="global", n_rows=n, block_rows=n, alpha=0.4, mixed_rows=n)
    law.add(np.arange(n), rng.permutation(n), rng.beta(0.4, 0.4, n), 0)
    ok, line = law.result()
    assert not ok and "more even" in line


def test_verify_fails_an_output_whose_partners_follow_the_block_cycle(tmp_path, run_cli):
    """Partners replaced by the old block-cycle law, x and y recomputed from
    them by the formula: the law check names what is implausible."""
    import h5py

    src, out = global_output(tmp_path)
    with h5py.File(src, "r") as f:
        x, y = f["x"][()], np.eye(6, dtype=np.float32)[f["y"][()]]
    n = len(x)
    with h5py.File(out, "r+") as f:
        lam = f["lam"][()]
        partner = planted_block_cycle(n, 500, 2).ravel()
        l32 = lam.astype(np.float32)[:, None]
        f["partner"][...] = partner
        f["x"][...] = l32 * np.concatenate([x, x]) + (1 - l32) * x[partner]
        if "y" in f and f["y"].ndim == 2:
            f["y"][...] = l32 * np.concatenate([y, y]) + (1 - l32) * y[partner]
    result = run_cli("verify", out)
    assert result.exit_code == 1
    line = law_line(result)
    assert line.startswith("FAIL") and "own block" in line and "p < 1e-06" in line


def test_verify_fails_a_planted_wrong_plan_that_the_bytes_match(tmp_path, run_cli, monkeypatch):
    """A planner that draws the block cycle while recording plan version 2:
    every byte matches its own recomputation, the law does not."""
    import dataclasses

    from mixup_cli.mixing import sampling

    tasks, draw = sampling.Plan.tasks, sampling.Plan.draw
    as_cycle = lambda plan: dataclasses.replace(plan, version=1)  # noqa: E731
    monkeypatch.setattr(sampling.Plan, "tasks", lambda self: tasks(as_cycle(self)))
    monkeypatch.setattr(sampling.Plan, "draw", lambda self, task: draw(as_cycle(self), task))
    _, out = global_output(tmp_path)
    result = run_cli("verify", out)
    assert result.exit_code == 1
    checks = {line.split(":")[0].split()[-1]: line.split()[0] for line in result.stdout.splitlines() if ":" in line}
    assert checks["recompute"] == "ok" and checks["data"] == "ok"
    assert law_line(result).startswith("FAIL")


def test_outputs_of_plan_version_1_verify_under_their_own_version(tmp_path, run_cli):
    x = np.arange(41, dtype=np.float32)[:, None]
    src = write_h5(tmp_path / "in.h5", x=x, y=np.arange(41) % 3)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=2, block_rows=8, copies=2, plan_version=1))
    partner = by_copy(load_output(out)["partner"], 41)
    assert not np.any(block_of(partner, 8) == block_of(np.arange(41), 8))  # the block cycle
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert "plan version 1" in law_line(result)


# ---------------------------------------------------------------- batch: a permutation of the row's group


def batch_groups(n: int, block_rows: int) -> list[tuple[int, int]]:
    """The documented groups: blocks, the last two together when the last is
    shorter than half a block."""
    bounds = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
    if len(bounds) > 1 and 2 * (bounds[-1][1] - bounds[-1][0]) < block_rows:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_law_problems(partner_by_copy, n: int, block_rows: int) -> list[str]:
    """Exact: per copy, each group's partners are a permutation of its rows.
    Statistical: over copies, each (row, partner) cell of a group expects
    copies / size (a uniform permutation's marginals); chi-square per group."""
    problems = []
    for s, e in batch_groups(n, block_rows):
        part = partner_by_copy[:, s:e]
        if not all(np.array_equal(np.sort(p), np.arange(s, e)) for p in part):
            problems.append(f"group {s}:{e} is not a permutation of its rows")
            continue
        table = np.zeros((e - s, e - s))
        np.add.at(table, (np.broadcast_to(np.arange(e - s), part.shape), part - s), 1)
        expected = np.full_like(table, len(part) / (e - s))
        # each row of the table is multinomial over the group (df (size-1) per row,
        # less the (size-1) constraints of the columns' fixed totals)
        if e - s > 1 and chi2_p(table, expected, (e - s - 1) ** 2) < FALSE_ALARM:
            problems.append(f"group {s}:{e}: partners not uniform")
    return problems


def planted_batch_v1(n: int, block_rows: int, copies: int, seed: int = 0) -> np.ndarray:
    """Plan version 1's batch: a permutation of each block, a short tail alone."""
    rng = np.random.default_rng(seed)
    out = np.empty((copies, n), np.int64)
    for c in range(copies):
        for s in range(0, n, block_rows):
            e = min(n, s + block_rows)
            out[c, s:e] = s + rng.permutation(e - s)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("n", [9, 15, 20, 8, 41, 3])
def test_batch_partners_are_a_permutation_of_the_rows_group(tmp_path, n):
    """N = B+1 (a one-row tail: paired within the 9 rows), 2B-1, 2.5B (a tail
    of half a block stays alone), one block, five blocks and a tail of one."""
    copies = 10 * (B + B // 2)  # >= 10 expected per cell of a group of at most 1.5 B rows
    x = np.arange(n, dtype=np.float32)[:, None]
    partner = by_copy(run(tmp_path, x, block_rows=B, copies=copies, pairing="batch")["partner"], n)
    assert batch_law_problems(partner, n, B) == []
    sizes = [e - s for s, e in batch_groups(n, B)]
    assert min(sizes) >= min(n, B // 2) and max(sizes) < 1.5 * B + 1
    if n > B and 2 * (n % B) < B and n % B:  # control: version 1's lone tail (the row is its own partner)
        assert batch_law_problems(planted_batch_v1(n, B, copies), n, B) != []


def test_batch_on_sorted_classes_pairs_within_blocks(tmp_path):
    """Sorted by class, blocks of one class: batch pairs are all same-class
    (its documented behaviour), where global gives 1/4."""
    n = 4000
    labels = np.repeat(np.arange(4), n // 4)
    out = run(tmp_path, np.arange(n, dtype=np.float32)[:, None], labels, block_rows=1000, pairing="batch")
    assert np.all(labels[out["partner"]] == labels)


def test_verify_tests_batch_groups(tmp_path, run_cli):
    """A batch output verifies with its groups tested exactly; partners
    edited to cross the groups (each row's partner the next row) fail the law.
    (Version 1's lone tail is a permutation of the group too: only the
    statistical test over copies above tells it apart.)"""
    import h5py

    n = 41
    src = write_h5(tmp_path / "in.h5", x=np.arange(n, dtype=np.float32)[:, None], y=np.arange(n) % 3)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=2, block_rows=8, copies=3, pairing="batch"))
    result = run_cli("verify", out)
    assert result.exit_code == 0 and "each row once" in law_line(result)
    with h5py.File(out, "r+") as f:
        f["partner"][...] = np.tile((np.arange(n) + 1) % n, 3)
    line = law_line(run_cli("verify", out))
    assert line.startswith("FAIL") and "block 0" in line and "not a permutation" in line


# ---------------------------------------------------------------- class pairings: uniform over the allowed rows


def conditional_table_p(keys, observed_groups, probs) -> float:
    """Rows grouped by ``keys`` (rows of one key share a law), each drawing a
    group with probabilities ``probs(key)``: per key, the counts over groups
    against those probabilities (Pearson chi-square, df = cells - 1 per key,
    summed; cells expecting under 5 pooled into one, a pool still under 5 is
    added to the largest cell). A count in a cell of probability 0 is p = 0."""
    stat, df = 0.0, 0
    for key in np.unique(keys, axis=0):
        mine = np.all(keys == key, axis=1) if keys.ndim > 1 else keys == key
        prob = np.asarray(probs(key), float)
        got = np.bincount(observed_groups[mine], minlength=len(prob)).astype(float)
        if got[prob == 0].any():
            return 0.0
        exp, got = prob[prob > 0] * mine.sum(), got[prob > 0]
        small = exp < 5
        if small.any():
            exp, got = np.append(exp[~small], exp[small].sum()), np.append(got[~small], got[small].sum())
            if exp[-1] < 5 and len(exp) > 1:
                big = np.argmax(exp[:-1])
                exp[big] += exp[-1]
                got[big] += got[-1]
                exp, got = exp[:-1], got[:-1]
        stat += float(np.sum((got - exp) ** 2 / exp))
        df += len(exp) - 1
    return 2 * min(stats.chi2.sf(stat, df), stats.chi2.cdf(stat, df)) if df else 1.0


def class_pairing_p(labels, block_rows, own_rows, partner, same: bool) -> float:
    """Partners uniform over the allowed rows (the row's class, or the other
    classes), tested on the partner's block given the row's class and block:
    P(block g) = allowed rows in g / allowed rows."""
    n = len(labels)
    blocks = np.arange(n) // block_rows

    def probs(key):
        c = key[0]
        allowed = (labels == c) if same else (labels != c)
        return np.bincount(blocks[allowed], minlength=blocks[-1] + 1) / allowed.sum()

    keys = np.stack([labels[own_rows], blocks[own_rows]], axis=1)
    return conditional_table_p(keys, blocks[partner], probs)


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["within-class", "between-class"])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_class_partners_are_uniform_over_the_allowed_rows(tmp_path, pairing, order):
    """Classes of 10, 20 and 30 rows in blocks of 8 (a class spans blocks):
    within-class partners uniform over the row's class (itself included),
    between-class over every row of the other classes; exact class constraint."""
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    if order == "shuffled":
        labels = np.random.default_rng(2).permutation(labels)
    n, copies = len(labels), 50  # between-class: 10 rows x 50 / 50 allowed = 10 expected at least
    out = run(tmp_path, np.arange(n, dtype=np.float32)[:, None], labels, block_rows=8, copies=copies, pairing=pairing)
    own_class, partner = np.tile(labels, copies), out["partner"]
    same = pairing == "within-class"
    assert np.all((labels[partner] == own_class) == same)
    rows = np.tile(np.arange(n), copies)
    assert class_pairing_p(labels, 8, rows, partner, same) >= FALSE_ALARM
    # control: the allowed rows of the row's own block (itself if none)
    rng = np.random.default_rng(0)
    allowed = (lambda c: labels == c) if same else (lambda c: labels != c)  # noqa: E731
    planted = np.array(
        [
            rng.choice(np.flatnonzero(allowed(c) & (np.arange(n) // 8 == r // 8) | (np.arange(n) == r)))
            for c, r in zip(own_class, rows)
        ]
    )
    assert class_pairing_p(labels, 8, rows, planted, same) < FALSE_ALARM


# ---------------------------------------------------------------- knn: uniform over the K nearest


def nearest(x, k, labels=None):
    """The K nearest other rows of each row (Euclidean), by brute force."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    if labels is not None:
        d[labels[:, None] != labels[None, :]] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["knn", "knn-within-class"])
def test_knn_partner_is_uniform_over_the_k_nearest(tmp_path, pairing):
    """Every partner is one of the row's K nearest (exact), and each of the K
    is taken equally often: the (row, neighbour rank) table expects copies / K
    per cell (chi-square, df = N (K - 1))."""
    n, k, copies = 40, 3, 30
    x = np.random.default_rng(4).standard_normal((n, 2)).astype(np.float32)
    labels = np.repeat([0, 1], n // 2)
    out = run(tmp_path, x, labels, block_rows=16, copies=copies, pairing=pairing, neighbors=k)
    lists = nearest(x.astype(np.float64), k, labels if pairing == "knn-within-class" else None)
    partner = by_copy(out["partner"], n)
    rank = (partner.T[:, :, None] == lists[:, None, :]).argmax(axis=2)  # (n, copies)
    assert np.all((partner.T[:, :, None] == lists[:, None, :]).any(axis=2))
    table = np.stack([np.bincount(r, minlength=k) for r in rank])
    assert chi2_p(table, np.full(table.shape, copies / k), n * (k - 1)) >= FALSE_ALARM
    # control: always the nearest
    always = np.zeros_like(table)
    always[:, 0] = copies
    assert chi2_p(always, np.full(table.shape, copies / k), n * (k - 1)) < FALSE_ALARM


# ---------------------------------------------------------------- lam ~ Beta(alpha, alpha)


def lam_p(lam, alpha, bins=20) -> float:
    """Chi-square of lam over 20 bins of equal Beta(alpha, alpha) probability."""
    edges = stats.beta(alpha, alpha).ppf(np.arange(1, bins) / bins)
    counts = np.bincount(np.searchsorted(edges, lam, side="right"), minlength=bins)
    return chi2_p(counts, np.full(bins, len(lam) / bins), bins - 1)


@pytest.mark.parametrize("pairing", ["global", "batch", "within-class"])
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_lam_follows_beta_on_the_output(tmp_path, pairing, alpha):
    n = 2000
    labels = np.repeat(np.arange(4), n // 4)
    src = write_h5(tmp_path / "in.h5", chunks=False, x=np.zeros((n, 1), np.float32), y=labels)
    augment(AugmentRequest(src, tmp_path / "out.h5", alpha=alpha, seed=5, block_rows=300, pairing=pairing))
    lam = load_output(tmp_path / "out.h5")["lam"]
    assert lam_p(lam, alpha) >= FALSE_ALARM
    # control: a Beta of another alpha
    assert lam_p(np.random.default_rng(0).beta(alpha * 2, alpha * 2, n), alpha) < FALSE_ALARM


# ---------------------------------------------------------------- --balance: M rows of every class


def test_balance_gives_every_class_m_rows_and_uniform_partner_classes(tmp_path):
    """Classes of 50, 200 and 750 rows balanced to M = 750: per copy each class
    has exactly M own rows, each of its rows used floor or ceil(M / n_c)
    times (exact); global partners are uniform over the balanced rows, so the
    partner's class is uniform over the classes (chi-square, df = C - 1)."""
    labels = np.repeat([0, 1, 2], [50, 200, 750])
    n, m = len(labels), 750
    out = run(tmp_path, np.arange(n, dtype=np.float32)[:, None], labels, block_rows=256, balance=True)
    own, partner = out["own"], out["partner"]
    assert np.array_equal(np.bincount(labels[own]), [m, m, m])
    for c, size in enumerate([50, 200, 750]):
        uses = np.bincount(own[labels[own] == c], minlength=n)[labels == c]
        assert uses.min() >= m // size and uses.max() <= -(-m // size)
    counts = np.bincount(labels[partner], minlength=3)
    assert chi2_p(counts, np.full(3, len(partner) / 3), 2) >= FALSE_ALARM
    # control: partners uniform over the input rows (unbalanced)
    planted = np.bincount(labels[np.random.default_rng(0).integers(0, n, len(partner))], minlength=3)
    assert chi2_p(planted, np.full(3, len(partner) / 3), 2) < FALSE_ALARM


# ---------------------------------------------------------------- label-kernel: the exact Gaussian kernel


def kernel_law(y, s):
    """P(partner j | row i) = exp(-(y_i - y_j)^2 / 2 S^2) / sum over j != i (in log space: no underflow)."""
    logw = -((y[:, None] - y[None, :]) ** 2) / (2 * s**2)
    np.fill_diagonal(logw, -np.inf)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_label_kernel_is_the_exact_kernel_where_the_window_cut_matters(tmp_path):
    """Row 0's label is 0; one row at 3.9 S lies in its 4 S window, fifty at
    4.1 S lie just outside. The exact kernel gives the row at 3.9 S
    probability 0.043, a 4 S window gave it 1.0. Per row, partner counts
    against the exact law (cells expecting < 5 pooled), summed over rows."""
    s = 1.0
    rng = np.random.default_rng(6)
    y = np.concatenate([[0.0, 3.9], np.full(50, 4.1) + rng.normal(0, 0.01, 50), rng.uniform(20, 23, 20)])
    n, copies = len(y), 150
    out = run(
        tmp_path,
        np.zeros((n, 1), np.float32),
        y.astype(np.float64),
        block_rows=16,
        copies=copies,
        pairing="label-kernel",
        bandwidth=s,
    )
    law = kernel_law(y, s)
    rows = np.tile(np.arange(n), copies)
    assert conditional_table_p(rows, out["partner"], lambda i: law[i]) >= FALSE_ALARM
    # control: row 0 always paired with the row at 3.9 S (the 4 S window's law)
    planted = out["partner"].copy()
    planted[rows == 0] = 1
    assert conditional_table_p(rows, planted, lambda i: law[i]) < FALSE_ALARM


# ---------------------------------------------------------------- CutMix boxes: a uniform centre


def box_centre_p(box, height) -> float:
    """Box rows (y0, y1) not clipped at the top or bottom: their cut height
    c = y1 - y0 is the drawn one, the centre is y0 + c // 2, and given c it is
    uniform over the centres that leave the box unclipped,
    c // 2 + 1 .. height - c + c // 2 - 1 (chi-square per c, pooled cells)."""
    y0, y1 = box[:, 0], box[:, 2]
    keep = (y0 > 0) & (y1 < height)
    cut, centre = (y1 - y0)[keep], (y0 + (y1 - y0) // 2)[keep]

    def probs(c):
        p = np.zeros(height)
        p[c // 2 + 1 : height - c + c // 2] = 1
        return p / p.sum()

    return conditional_table_p(cut, centre, probs)


@pytest.mark.slow
def test_cutmix_box_centres_are_uniform(tmp_path):
    """Rows and columns alike (the box transposed); control: centres drawn
    from the middle half only."""
    n, copies, h = 50, 40, 16
    x = np.random.default_rng(1).integers(0, 255, (n, h, h)).astype(np.uint8)
    out = run(tmp_path, x, np.arange(n) % 3, block_rows=16, copies=copies, method="cutmix")
    box = out["box"]
    assert box_centre_p(box, h) >= FALSE_ALARM
    assert box_centre_p(box[:, [1, 0, 3, 2]], h) >= FALSE_ALARM
    # control: the same cut heights, centres in the middle half of what is allowed
    rng = np.random.default_rng(2)
    cut = box[:, 2] - box[:, 0]
    lo, hi = cut // 2 + 1, h - cut + cut // 2
    centre = lo + (hi - lo) // 4 + (rng.random(len(cut)) * np.maximum(1, (hi - lo) // 2)).astype(int)
    planted = np.stack([centre - cut // 2, box[:, 1], centre - cut // 2 + cut, box[:, 3]], axis=1)
    assert box_centre_p(planted, h) < FALSE_ALARM


@pytest.mark.parametrize("pairing", ["batch", "label-kernel"])
def test_other_pairings_of_plan_version_1_verify_under_their_own_version(tmp_path, run_cli, pairing):
    """Version 1's batch (a lone short tail) and label-kernel (the plain 4 S
    window) are still computed from a version 1 sidecar."""
    n = 41
    y = np.concatenate([[0.0, 3.9], np.full(n - 2, 4.1)]) if pairing == "label-kernel" else np.arange(n) % 3
    src = write_h5(tmp_path / "in.h5", x=np.arange(n, dtype=np.float32)[:, None], y=y)
    options = dict(bandwidth=1.0) if pairing == "label-kernel" else {}
    outs = {}
    for version in (1, 2):
        outs[version] = tmp_path / f"out{version}.h5"
        augment(
            AugmentRequest(src, outs[version], seed=2, block_rows=8, pairing=pairing, plan_version=version, **options)
        )
        result = run_cli("verify", outs[version])
        assert result.exit_code == 0, result.stdout
    # the versions differ where the law changed: the tail row (batch), row 0 (label-kernel)
    row = 40 if pairing == "batch" else 0
    v1, v2 = (load_output(outs[v])["partner"] for v in (1, 2))
    assert v1[row] == (40 if pairing == "batch" else 1)
    assert not np.array_equal(v1, v2)
