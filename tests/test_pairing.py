"""Pairing modes: the law of lam, who pairs with whom, class labels."""

import numpy as np
import pytest
from conftest import expected_mix, load_output, write_h5
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.io import hdf5
from mixup_cli.mixing.sampling import INDEX_PAIRINGS, Plan
from mixup_cli.mixing.sampling import PAIRINGS as ALL_PAIRINGS
from mixup_cli.run import tasks
from mixup_cli.targets.classes import ClassIndex, class_index, labels_of

# The pairings that need no index over the data (the others: test_neighbours.py, test_label_kernel.py).
PAIRINGS = tuple(p for p in ALL_PAIRINGS if p not in INDEX_PAIRINGS)

N_CLASSES = 10


def plan_draws(plan):
    lam, partner = zip(*(plan.draw(task) for task in plan.tasks()))
    return np.concatenate(lam), np.concatenate(partner)


def ks_pvalue(lam, alpha):
    """Kolmogorov-Smirnov p-value of lam against Beta(alpha, alpha).

    float64 has no values between 1 - 2**-53 and 1: the Beta mass there
    (1.3% for alpha = 0.1, 0.03% for 0.2) is drawn as exactly 1.0. Such an
    atom is outside what kstest assumes (a continuous law: ties at 1.0 alone
    would give D = 0.013 against a 0.006 threshold at 100k draws), so the
    test runs on the randomized probability integral transform, the standard
    treatment of atoms: u = F(lam) off the atom, and uniform over the mass
    the atom stands for on it. Without lam == 1.0 this is exactly
    ``kstest(lam, beta(alpha, alpha).cdf)``.
    """
    dist = stats.beta(alpha, alpha)
    u = dist.cdf(lam)
    at_one = lam == 1.0
    below = 1 - dist.cdf(2.0**-53)  # P(lam <= largest float64 below 1)
    u[at_one] = below + np.random.default_rng(0).random(at_one.sum()) * (1 - below)
    return stats.kstest(u, "uniform").pvalue


@pytest.mark.slow
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("alpha", [0.1, 0.2, 1.0, 4.0])
def test_lam_follows_beta_alpha_alpha(alpha, pairing):
    n = 100_000
    labels = np.random.default_rng(1).integers(0, 4, n)
    plan = Plan(
        n_rows=n, alpha=alpha, seed=20261129, block_rows=4096, pairing=pairing, classes=ClassIndex.from_labels(labels)
    )
    lam, _ = plan_draws(plan)
    assert len(lam) == n and lam.min() >= 0 and lam.max() <= 1
    assert ks_pvalue(lam, alpha) > 0.001
    # The atom at 1.0 holds the mass it stands for, no more (binomial, 5 sigma).
    mass = stats.beta(alpha, alpha).cdf(2.0**-53)
    assert abs(np.mean(lam == 1.0) - mass) <= 5 * np.sqrt(mass / n) + 1e-12
    if alpha >= 0.2:  # the atom is below what 100k draws can see: plain kstest
        assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.001


@pytest.fixture(scope="module")
def sorted_by_class(tmp_path_factory):
    """A few thousand rows sorted by class (unequal class sizes), one-hot y."""
    rng = np.random.default_rng(5)
    labels = np.sort(rng.integers(0, N_CLASSES, 3000))
    x = rng.standard_normal((len(labels), 2)).astype(np.float32)
    y = np.eye(N_CLASSES, dtype=np.float32)[labels]
    # Contiguous: partners read by index then cost a few reads per block, not
    # one per 16-row chunk (ten times the time); the chunked read path by index
    # is tested against numpy in test_engines_local (take).
    path = write_h5(tmp_path_factory.mktemp("sorted") / "sorted.h5", chunks=False, x=x, y=y)
    return path, labels


def cross_class_share(path, labels, pairing, seed, tmp_path, copies=2, block_rows=10):
    out = tmp_path / f"{pairing}-{seed}.h5"
    augment(AugmentRequest(path, out, seed=seed, pairing=pairing, block_rows=block_rows, copies=copies))
    partner = load_output(out)["partner"]
    own = np.tile(labels, copies)
    return float(np.mean(labels[partner] != own))


@pytest.mark.slow
def test_global_pairing_matches_independent_random_pairing(sorted_by_class, tmp_path):
    path, labels = sorted_by_class
    p = np.bincount(labels) / len(labels)
    expected = 1 - np.sum(p**2)  # chance that two independent random rows differ in class
    for seed in (0, 1, 2):
        share = cross_class_share(path, labels, "global", seed, tmp_path)
        assert abs(share - expected) < 0.03, (seed, share, expected)


@pytest.mark.slow
def test_batch_pairing_on_sorted_data_rarely_crosses_classes(sorted_by_class, tmp_path):
    path, labels = sorted_by_class
    expected = 1 - np.sum((np.bincount(labels) / len(labels)) ** 2)
    share = cross_class_share(path, labels, "batch", 0, tmp_path)
    assert share < 0.1 < expected - 0.5


def test_within_class_pairs_are_all_same_class(sorted_by_class, tmp_path):
    path, labels = sorted_by_class
    assert cross_class_share(path, labels, "within-class", 0, tmp_path, block_rows=100) == 0.0


def test_between_class_pairs_are_all_cross_class(sorted_by_class, tmp_path):
    path, labels = sorted_by_class
    assert cross_class_share(path, labels, "between-class", 0, tmp_path, block_rows=100) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["within-class", "between-class"])
def test_class_partners_come_from_the_whole_dataset(sorted_by_class, tmp_path, pairing):
    """Not only from the row's block: every row of a class is a possible partner."""
    path, labels = sorted_by_class
    out = tmp_path / "out.h5"
    # Blocks of 30 rows: a class (about 300 rows) spans about 10 of them.
    augment(AugmentRequest(path, out, seed=3, pairing=pairing, block_rows=30, copies=3))
    partner = load_output(out)["partner"]
    block = np.tile(np.arange(len(labels)) // 30, 3)
    assert np.mean(partner // 30 != block) > 0.85
    if pairing == "between-class":
        assert len(np.unique(labels[partner])) == N_CLASSES


@pytest.mark.parametrize("pairing", ["within-class", "between-class"])
def test_class_pairing_output_matches_the_formula(tmp_path, pairing):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (37, 3, 2)).astype(np.uint8)
    soft = rng.random((37, 4)).astype(np.float32)
    y = soft / soft.sum(axis=1, keepdims=True)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=1, pairing=pairing, block_rows=5, batch_size=3, include_original=True))
    got = load_output(out)
    lam, partner = got["lam"], got["partner"]
    assert np.array_equal(lam[:37], np.ones(37)) and np.array_equal(partner[:37], np.arange(37))
    # Integers are mixed in float32, rounded and clipped.
    xf = np.concatenate([x, x]).astype(np.float32)
    mixed = np.clip(np.rint(expected_mix(xf, lam, partner)), 0, 255).astype(np.uint8)
    assert np.array_equal(got["x"], mixed)
    assert np.array_equal(got["y"], expected_mix(np.concatenate([y, y]), lam, partner))
    classes = y.argmax(axis=1)
    same = classes[partner[37:]] == classes
    assert same.all() if pairing == "within-class" else not same.any()


def test_class_partners_are_read_sorted_and_unique(sorted_by_class, tmp_path, monkeypatch):
    path, _ = sorted_by_class
    reads = []
    original = tasks.partner_rows

    def recording(source, rows, out=None):
        reads.append(np.asarray(rows))
        return original(source, rows, out)

    monkeypatch.setattr(tasks, "partner_rows", recording)
    augment(AugmentRequest(path, tmp_path / "out.h5", seed=0, pairing="within-class", block_rows=100))
    assert len(reads) == 30  # every array's partner rows, once per block
    assert all(np.all(np.diff(r) > 0) for r in reads)


def test_between_class_with_a_single_class_is_refused(run_cli, tmp_path):
    x = np.zeros((8, 2), np.float32)
    y = np.tile(np.array([[0, 1, 0]], np.float32), (8, 1))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5", "--pairing", "between-class")
    assert result.exit_code == 2
    assert "--pairing between-class" in result.stderr and "two classes" in result.stderr
    assert "class 1" in result.stderr
    assert not (tmp_path / "out.h5").exists()
    assert run_cli("augment", src, tmp_path / "out.h5", "--pairing", "within-class").exit_code == 0


def test_class_pairing_without_targets_is_refused(tmp_path):
    src = write_h5(tmp_path / "in.h5", x=np.zeros((4, 2), np.float32))
    with pytest.raises(ParameterError, match="--y-key"):
        augment(AugmentRequest(src, tmp_path / "out.h5", y_key=None, pairing="within-class"))


def test_labels_of_one_hot_soft_and_integer_rows():
    assert labels_of(np.eye(3, dtype=np.float32)[[2, 0, 1]]).tolist() == [2, 0, 1]
    assert labels_of(np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])).tolist() == [1, 0]
    assert labels_of(np.array([3, -1, 7], np.int16)).tolist() == [3, -1, 7]
    assert labels_of(np.array([[4], [2]], np.uint8)).tolist() == [4, 2]
    assert labels_of(np.array([1.0, 0.0, 2.0])).tolist() == [1, 0, 2]
    with pytest.raises(InputError, match="non-integer"):
        labels_of(np.array([0.5, 1.0]))
    with pytest.raises(InputError, match="shape"):
        labels_of(np.zeros((2, 3, 4)))


def test_class_index_streams_integer_labels_from_a_reader(tmp_path, monkeypatch):
    """Integer y of shape (N,) (refused by augment today) gives classes too."""
    labels = np.random.default_rng(0).integers(5, 9, 500).astype(np.int32)
    src = write_h5(tmp_path / "in.h5", x=np.zeros((500, 1), np.float32), y=labels)
    monkeypatch.setattr("mixup_cli.targets.classes._READ_BYTES", 64)  # many small pieces
    with hdf5.Reader(src) as reader:
        index = class_index(reader, "y")
    assert index.n_classes == 4 and index.values.tolist() == [5, 6, 7, 8]
    assert np.array_equal(index.values[index.codes], labels)
    for same in (True, False):
        plan = Plan(
            n_rows=500,
            alpha=0.3,
            seed=4,
            block_rows=64,
            copies=2,
            pairing="within-class" if same else "between-class",
            classes=index,
        )
        _, partner = plan_draws(plan)
        hits = labels[partner] == np.tile(labels, 2)
        assert hits.all() if same else not hits.any()


def test_class_partners_are_uniform_within_the_class():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    index = ClassIndex.from_labels(labels)
    rng = np.random.default_rng(0)
    picks = np.concatenate([index.draw_partners(rng, 0, 1, same=True) for _ in range(5000)])
    assert set(np.unique(picks)) == {0, 1, 2, 3, 4}
    assert np.bincount(picks).min() > 850  # 1000 expected each
    other = np.concatenate([index.draw_partners(rng, 5, 6, same=False) for _ in range(7000)])
    assert set(np.unique(other)) == {0, 1, 2, 3, 4, 8, 9}
    assert np.bincount(other, minlength=10)[[0, 1, 2, 3, 4, 8, 9]].min() > 850
