"""--neighbor-index approximate: knn lists from faiss-cpu's inverted-file
index, the same on every run and thread count, their recall@K on a seeded
sample recorded in the sidecar and checked by verify; the refusal without
the extra."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import REPO, read_sidecar, run_in_process, write_h5

from mixup_cli.mixing import approximate

needs_faiss = pytest.mark.skipif(
    __import__("importlib").util.find_spec("faiss") is None, reason="the 'ann' extra (faiss-cpu) is not installed"
)

ROWS, WIDTH, K = 1500, 16, 5


def hard_rows(n=ROWS, width=WIDTH, seed=0):
    """Gaussian rows in 16 dimensions: the index misses some neighbours (recall < 1)."""
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def exact_lists(feats, rows, k, groups=None):
    """Reference: the K nearest other rows of ``rows`` by (float64 squared distance, index)."""
    f = np.asarray(feats, dtype=np.float64)
    d = ((f[rows, None, :] - f[None, :, :]) ** 2).sum(axis=2)
    d[np.arange(len(rows)), rows] = np.inf
    if groups is not None:
        d[groups[rows, None] != groups[None, :]] = np.inf
    return np.lexsort((np.broadcast_to(np.arange(len(f)), d.shape), d), axis=-1)[:, :k]


def recall_of(table, feats, k, groups=None):
    """(found, entries): the sampled rows' list entries that are in their exact lists."""
    rows = approximate.sample_rows(len(feats))
    truth = exact_lists(feats, rows, k, groups)
    found = sum(len(set(a) & set(b)) for a, b in zip(table[rows], truth))
    return found, len(rows) * k


@pytest.fixture
def hard_input(tmp_path):
    x = hard_rows()
    y = np.random.default_rng(1).integers(0, 3, ROWS)
    return write_h5(tmp_path / "in.h5", x=x, y=y), x, y


def augment(src, out, *extra):
    return run_in_process("augment", src, out, "--seed", 7, "--neighbors", K, "--neighbor-index", "approximate", *extra)


@needs_faiss
def test_lists_are_the_same_on_every_run_and_thread_count():
    feats = hard_rows(3000)
    one = approximate.search(feats, K, threads=1)
    assert np.array_equal(one, approximate.search(feats, K, threads=3))
    assert np.array_equal(one, approximate.search(feats, K, threads=1))
    # each list: other rows, distinct, nearest first by exact distance
    assert (one != np.arange(3000)[:, None]).all()
    assert all(len(set(r)) == K for r in one)
    d = ((feats[one].astype(np.float64) - feats[:, None, :].astype(np.float64)) ** 2).sum(axis=2)
    assert (np.diff(d, axis=1) >= 0).all()


@pytest.mark.slow
@needs_faiss
def test_lists_found_in_two_processes_are_the_same(tmp_path):
    """A fresh process (as --resume, --shard parts and verify are) builds the same lists."""
    np.save(tmp_path / "x.npy", hard_rows(2000, seed=5))
    code = textwrap.dedent(
        f"""
        import hashlib, sys, numpy as np
        from mixup_cli.mixing import approximate
        table = approximate.search(np.load({str(tmp_path / "x.npy")!r}), {K}, threads=int(sys.argv[1]))
        print(hashlib.sha256(table.tobytes()).hexdigest())
        """
    )
    found = {
        subprocess.run([sys.executable, "-c", code, t], capture_output=True, text=True, check=True, cwd=REPO).stdout
        for t in ("1", "2", "1")
    }
    assert len(found) == 1


@pytest.mark.slow
@needs_faiss
def test_recall_recorded_equals_a_recomputation_and_partners_are_in_the_lists(hard_input, tmp_path):
    src, x, _y = hard_input
    out = tmp_path / "out.h5"
    result = augment(src, out, "--pairing", "knn")
    assert result.returncode == 0, result.stderr
    params = read_sidecar(out)["parameters"]
    assert params["neighbor_index"] == "approximate"
    index = params["neighbor_index_parameters"]
    assert index["library"] == "faiss-cpu" and index["version"] and index["probes"] == 8
    table = approximate.search(x, K)
    found, entries = recall_of(table, x, K)
    assert params["neighbor_recall_sample"] == {"rows": 1000, "entries": entries, "found": found}
    assert params["neighbor_recall"] == round(found / entries, 6)
    assert 0.5 < params["neighbor_recall"] < 1  # the index misses some neighbours of these rows
    with h5py.File(out, "r") as f:
        partner = f["partner"][()]
    assert all(p in table[i] for i, p in enumerate(partner))


@pytest.mark.slow
@needs_faiss
def test_knn_within_class_recall_within_the_class(hard_input, tmp_path):
    src, x, y = hard_input
    out = tmp_path / "out.h5"
    assert augment(src, out, "--pairing", "knn-within-class").returncode == 0
    params = read_sidecar(out)["parameters"]
    table = np.empty((ROWS, K), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        table[rows] = rows[approximate.search(x[rows], K)]
    found, entries = recall_of(table, x, K, groups=y)
    assert params["neighbor_recall_sample"]["found"] == found
    assert params["neighbor_recall"] == round(found / entries, 6)
    with h5py.File(out, "r") as f:
        partner = f["partner"][()]
    assert (y[partner] == y).all() and all(p in table[i] for i, p in enumerate(partner))
    assert run_in_process("verify", out).returncode == 0


@needs_faiss
def test_verify_rebuilds_the_lists_and_the_recall(hard_input, tmp_path):
    src, _x, _y = hard_input
    out = tmp_path / "out.h5"
    assert augment(src, out, "--pairing", "knn").returncode == 0
    result = run_in_process("verify", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    recompute" in result.stdout


@needs_faiss
def test_verify_fails_on_a_doctored_recall(hard_input, tmp_path):
    src, _x, _y = hard_input
    out = tmp_path / "out.h5"
    assert augment(src, out, "--pairing", "knn").returncode == 0
    sidecar = tmp_path / "out.h5.provenance.json"
    record = json.loads(sidecar.read_text())
    record["parameters"]["neighbor_recall"] = 0.999
    record["parameters"]["neighbor_recall_sample"]["found"] = 4995
    sidecar.write_text(json.dumps(record))
    result = run_in_process("verify", out)
    assert result.returncode == 1
    line = next(s for s in result.stdout.splitlines() if s.startswith("FAIL  recompute"))
    assert "recorded recall@K 0.999" in line and "scikit-learn's brute force" in line


@needs_faiss
def test_verify_fails_on_a_doctored_partner(hard_input, tmp_path):
    """A partner outside the rebuilt lists (x mixed with it, so only the recomputation sees it)."""
    src, x, _y = hard_input
    out = tmp_path / "out.h5"
    assert augment(src, out, "--pairing", "knn").returncode == 0
    table = approximate.search(x, K)
    with h5py.File(out, "r+") as f:
        partner, lam = f["partner"][()], f["lam"][()]
        other = next(j for j in range(ROWS) if j not in table[0] and j != 0)
        partner[0] = other
        f["partner"][0] = other
        f["x"][0] = lam[0] * x[0] + (1 - lam[0]) * x[other]
    record = read_sidecar(out)
    record.get("output", {}).pop("array_sha256", None)  # digests: not what this test is about
    (tmp_path / "out.h5.provenance.json").write_text(json.dumps(record))
    result = run_in_process("verify", out)
    assert result.returncode == 1
    assert any(s.startswith("FAIL  recompute") for s in result.stdout.splitlines()), result.stdout


@needs_faiss
def test_exact_is_the_default_and_its_sidecar_is_unchanged(hard_input, tmp_path):
    src, _x, _y = hard_input
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    common = ("--seed", 7, "--pairing", "knn", "--neighbors", K)
    assert run_in_process("augment", src, a, *common).returncode == 0
    assert run_in_process("augment", src, b, *common, "--neighbor-index", "exact").returncode == 0
    pa, pb = read_sidecar(a)["parameters"], read_sidecar(b)["parameters"]
    assert pa == pb and not any(key.startswith("neighbor_") for key in pa)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert np.array_equal(fa["partner"][()], fb["partner"][()])


@pytest.mark.slow
@needs_faiss
def test_groups_small_cells_verify_and_nothing_more_on_stderr(tmp_path, run_mixup):
    """One index per cell, cells of 10 rows and of 2: lists inside the cell, verify OK, and the
    index's own warnings (k-means on few rows) kept off stderr."""
    x = hard_rows(400)
    groups = np.repeat(np.arange(40), 10)
    groups[:2] = [100, 100]
    src = write_h5(tmp_path / "in.h5", x=x, y=np.zeros(400, dtype=np.int64), g=groups)
    out = tmp_path / "out.h5"
    result = run_mixup(
        "augment", src, out, "--seed", 1, "--pairing", "knn", "--groups", "g", "--neighbor-index", "approximate"
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr and "clustering" not in result.stderr
    with h5py.File(out, "r") as f:
        partner = f["partner"][()]
    assert (groups[partner] == groups).all()
    assert read_sidecar(out)["parameters"]["neighbor_recall_sample"]["rows"] == 400
    assert run_in_process("verify", out).returncode == 0


def test_neighbor_index_goes_with_the_knn_pairings(hard_input, tmp_path):
    src, _x, _y = hard_input
    result = run_in_process("augment", src, tmp_path / "out.h5", "--neighbor-index", "approximate")
    assert result.returncode == 2
    assert "--neighbor-index goes with --pairing knn or knn-within-class" in result.stderr
    assert not (tmp_path / "out.h5").exists()


BLOCKED = textwrap.dedent(
    """
    import sys

    class NoFaiss:
        def find_spec(self, name, path=None, target=None):
            if name == "faiss" or name.startswith("faiss."):
                raise ImportError("No module named 'faiss'")
            return None

    sys.meta_path.insert(0, NoFaiss())
    from mixup_cli.cli import main

    sys.argv = ["mixup"] + sys.argv[1:]
    main()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("pairing", ["knn", "knn-within-class"])
def test_refused_in_one_line_without_the_extra(hard_input, tmp_path, pairing):
    src, _x, _y = hard_input
    out = tmp_path / "out.h5"
    args = ["augment", str(src), str(out), "--pairing", pairing, "--neighbor-index", "approximate"]
    result = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mixup-cli[ann]'" in lines[0] and "--neighbor-index" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]
