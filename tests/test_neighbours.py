"""--pairing knn / knn-within-class: partners among the K nearest rows, ties
by index, the contract (batch sizes, engines, verify), refusals, start-up."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, examples, load_output, read_sidecar, run_in_process, write_h5, write_npz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.mixing import neighbours


def brute_lists(feats, k, groups=None, rows=None):
    """Reference: per row (of ``rows``), the K nearest other rows by (squared distance, index)."""
    f = np.asarray(feats, dtype=np.float64)
    rows = np.arange(len(f)) if rows is None else np.asarray(rows)
    d = ((f[rows, None, :] - f[None, :, :]) ** 2).sum(axis=2)
    d[np.arange(len(rows)), rows] = np.inf
    if groups is not None:
        d[groups[rows, None] != groups[None, :]] = np.inf
    idx = np.broadcast_to(np.arange(len(f)), d.shape)
    return np.lexsort((idx, d), axis=-1)[:, :k]


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 120),
    width=st.integers(1, 4),
    k=st.integers(1, 6),
    levels=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_table_is_the_brute_force_k_nearest_with_ties_by_index(n, width, k, levels, seed):
    """Few distinct values: many rows at exactly the same distance (and many
    identical rows), so the K-th neighbour is usually one of a tie."""
    k = min(k, n - 1)
    feats = np.random.default_rng(seed).integers(0, levels, (n, width)).astype(np.float32)
    assert np.array_equal(neighbours.neighbour_table(feats, k), brute_lists(feats, k))


def test_table_on_continuous_data_with_more_rows_than_one_query():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((5000, 3)).astype(np.float32)
    feats[4000:] = feats[:1000]  # exact duplicates, far apart in index
    table = neighbours.neighbour_table(feats, 4)
    sample = rng.choice(5000, 300, replace=False)
    assert np.array_equal(table[sample], brute_lists(feats, 4, rows=sample))
    assert (table[:1000, 0] == np.arange(4000, 5000)).all()  # a duplicate is the nearest


@pytest.fixture
def tabular(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, (240, 3)).astype(np.float32)  # ties everywhere
    labels = rng.integers(0, 3, 240)
    y = np.eye(3, dtype=np.float32)[labels]
    return write_h5(tmp_path / "in.h5", x=x, y=y), x, labels


@pytest.mark.parametrize("pairing", ["knn", "knn-within-class"])
def test_output_partners_are_among_the_k_nearest_and_mix_by_the_formula(tabular, tmp_path, pairing):
    src, x, labels = tabular
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=2, pairing=pairing, neighbors=4, block_rows=32, copies=3))
    got = read_h5(out)
    ref = brute_lists(x, 4, labels if pairing == "knn-within-class" else None)
    own = np.tile(np.arange(240), 3)
    assert all(p in ref[i] for p, i in zip(got["partner"], own))
    if pairing == "knn-within-class":
        assert (labels[got["partner"]] == labels[own]).all()
    lam = got["lam"].astype(np.float32)[:, None]
    assert np.allclose(got["x"], lam * x[own] + (1 - lam) * x[got["partner"]], atol=1e-6)
    params = read_sidecar(out)["parameters"]
    assert (params["pairing"], params["neighbors"], params["project"]) == (pairing, 4, None)


def test_partner_is_uniform_over_the_k_neighbours():
    """The position of the partner in its row's list: uniform (chi-square)."""
    rng = np.random.default_rng(0)
    table = np.argsort(rng.random((2000, 7)), axis=1)  # any table: what is drawn is the position
    index = neighbours.NeighbourIndex(table)
    from mixup_cli.mixing.sampling import Plan

    plan = Plan(n_rows=2000, alpha=0.5, seed=4, block_rows=256, pairing="knn", neighbors=7, copies=5, partners=index)
    pos = []
    for task in plan.tasks():
        _, partner = plan.draw(task)
        rows = np.arange(task.start, task.stop)
        pos.append(np.argmax(table[rows] == partner[:, None], axis=1))
    counts = np.bincount(np.concatenate(pos), minlength=7)
    assert stats.chisquare(counts).pvalue > 0.001


def test_projection_searches_in_the_projected_space(tmp_path):
    """Rows on a 2-D plane inside 12 dimensions: --project 2 finds the
    neighbours of the plane's coordinates; fitted piece by piece, memory bounded."""
    rng = np.random.default_rng(1)
    coords = rng.standard_normal((600, 2))
    basis = np.linalg.qr(rng.standard_normal((12, 2)))[0].T
    x = (coords @ basis + 3.0).astype(np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, y=rng.random(600).astype(np.float32))
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=5, pairing="knn", neighbors=3, project=2, block_rows=64, copies=2))
    ref = brute_lists(coords, 3)
    partner = read_h5(out)["partner"]
    own = np.tile(np.arange(600), 2)
    assert np.mean([p in ref[i] for p, i in zip(partner, own)]) == 1.0
    params = read_sidecar(out)["parameters"]
    assert params["project"] == 2 and params["plan_version"] == 3
    assert params["project_sample_rows"] == 600 and params["project_variance"] == pytest.approx(1.0, abs=1e-5)


def test_projection_is_fitted_in_pieces(monkeypatch):
    """Plan version 2: partial_fit sees pieces of bounded size (the last one never below D rows)."""
    from sklearn.decomposition import IncrementalPCA

    seen = []
    real = IncrementalPCA.partial_fit

    def spy(self, X, *args, **kwargs):
        seen.append(len(X))
        return real(self, X, *args, **kwargs)

    monkeypatch.setattr(IncrementalPCA, "partial_fit", spy)
    monkeypatch.setattr(neighbours, "_READ_BYTES", 100 * 8 * 10)  # 100 rows of 10 float64

    class Reader:
        def __init__(self, a):
            self.a = a

        def spec(self, key):
            from mixup_cli.io import ArraySpec

            return ArraySpec(self.a.shape, self.a.dtype)

        def read(self, key, s, e):
            return self.a[s:e]

    a = np.random.default_rng(0).standard_normal((1005, 10))
    feats, projection = neighbours.features(Reader(a), "x", project=8, version=2)
    assert (
        projection == {"project_batch_rows": 100}
        and seen == [100] * 9 + [105]
        and feats.shape == (1005, 8)
        and feats.dtype == np.float32
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "pairing,extra",
    [
        ("knn", {}),
        ("knn-within-class", {}),
        ("knn", {"project": 2}),
    ],
)
@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_batch_size_never_changes_the_output(tabular, tmp_path, pairing, extra, fmt):
    src, x, labels = tabular
    if fmt == "npz":
        src = write_npz(tmp_path / "in.npz", x=x, y=np.eye(3, dtype=np.float32)[labels])
    outs = []
    for batch in (1, 7, 1000):
        out = tmp_path / f"out{batch}.{fmt}"
        augment(
            AugmentRequest(
                src,
                out,
                seed=9,
                pairing=pairing,
                neighbors=3,
                batch_size=batch,
                block_rows=16,
                copies=2,
                include_original=True,
                **extra,
            )
        )
        outs.append(load_output(out))
    for other in outs[1:]:
        for key in outs[0]:
            assert outs[0][key].tobytes() == other[key].tobytes(), key


def test_verify_recomputes_and_catches_an_edited_k(tabular, tmp_path, run_cli):
    src, _, _ = tabular
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment",
        src,
        out,
        "--pairing",
        "knn-within-class",
        "--neighbors",
        3,
        "--project",
        2,
        "--seed",
        1,
        "--block-rows",
        32,
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    sidecar = out.with_name(out.name + ".provenance.json")
    record = json.loads(sidecar.read_text())
    record["parameters"]["neighbors"] = 4
    sidecar.write_text(json.dumps(record))
    result = run_cli("verify", out)
    assert result.exit_code != 0 and "recomputed output differs" in result.stdout


@pytest.mark.slow  # Dask: the whole suite only (a local cluster costs seconds to start)
@pytest.mark.xdist_group("dask")
def test_dask_gives_the_local_bytes(dask_scheduler, tabular, tmp_path, run_mixup):
    src, _, _ = tabular
    args = ("--pairing", "knn", "--neighbors", 3, "--seed", 4, "--block-rows", 32, "--copies", 2, "-q")
    local = run_in_process("augment", src, tmp_path / "local.h5", *args)
    assert local.returncode == 0, local.stderr
    remote = run_mixup("augment", src, tmp_path / "dask.h5", *args, "--engine", "dask", "--scheduler", dask_scheduler)
    assert remote.returncode == 0, remote.stderr
    a, b = read_h5(tmp_path / "local.h5"), read_h5(tmp_path / "dask.h5")
    for key in ("x", "y", "lam", "partner"):
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,pattern",
    [
        (("--pairing", "knn", "--neighbors", 240), "--neighbors 240"),
        (("--pairing", "knn-within-class", "--neighbors", 100), "class"),
        (("--pairing", "knn", "--project", 4), "--project 4"),
        (("--pairing", "global", "--neighbors", 3), "--neighbors goes with --pairing knn"),
        (("--project", 2), "--project goes with"),
    ],
)
def test_refusals_are_one_line_exit_2_and_leave_nothing(tabular, outdir, run_mixup, args, pattern):
    src, _, _ = tabular
    proc = run_mixup("augment", src, outdir / "out.h5", *args)
    assert proc.returncode == 2, proc.stderr
    assert pattern in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(outdir.iterdir()) == []


def test_scikit_learn_is_not_imported_at_start_up():
    code = (
        "import sys; from click.testing import CliRunner; from mixup_cli.cli import cli; "
        "import mixup_cli.commands.pipeline, mixup_cli.mixing.sampling; "
        "r = CliRunner().invoke(cli, ['augment', '--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_identical_rows_take_the_lowest_indices_in_bounded_queries(monkeypatch):
    """Every row at distance 0 from every other: the search widens to all
    rows, a few rows at a time, and the lists are the lowest other indices."""
    monkeypatch.setattr(neighbours, "_QUERY_CANDIDATES", 1000)
    table = neighbours.neighbour_table(np.ones((300, 4), dtype=np.float32), 3)
    expected = np.array([[j for j in range(5) if j != i][:3] for i in range(300)])
    assert np.array_equal(table, expected)


# ---------------------------------------------------------------- the fast exact search


def near_ties(seed, n, width, spread):
    """Rows of two far clusters (+-4096 + small integers, some rows repeated):
    float32 keys |b|^2 - 2ab lose the integers' differences (keys ~ 1e9), the
    float64 distances are exact (integers below 2^53)."""
    rng = np.random.default_rng(seed)
    side = np.where(rng.random((n, 1)) < 0.5, 4096.0, -4096.0)
    x = side + rng.integers(0, spread, (n, width))
    dup = rng.integers(0, n, n // 5)
    x[rng.integers(0, n, n // 5)] = x[dup]
    return x.astype(np.float32)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 300),
    width=st.integers(1, 5),
    k=st.integers(1, 8),
    spread=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    group=st.sampled_from([2, 3, 16]),
)
def test_fast_table_is_the_float64_answer_on_near_ties_and_duplicates(n, width, k, spread, seed, group):
    """Near-ties float32 misorders, exact ties, duplicates, and (small groups)
    the threshold found down two levels of group minima: the lists are those
    of a plain float64 brute force, ties by index."""
    k = min(k, n - 1)
    feats = near_ties(seed, n, width, spread)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(neighbours, "_GROUP", group)
        assert np.array_equal(neighbours.neighbour_table(feats, k), brute_lists(feats, k))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 400),
    width=st.integers(1, 40),
    k=st.integers(1, 10),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
    offset=st.sampled_from([0.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_fast_table_on_continuous_data_is_the_float64_answer(n, width, k, scale, offset, seed):
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    feats = (offset + scale * rng.standard_normal((n, width))).astype(np.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(neighbours, "_GROUP", 2)
        got = neighbours.neighbour_table(feats, k)
    ref = brute_lists(feats, k)
    # float64 sums in another order may differ in their last bit: compare the distances
    f = feats.astype(np.float64)
    dist = lambda t: ((f[:, None, :] - f[t]) ** 2).sum(axis=2)  # noqa: E731
    assert np.array_equal(got, ref) or np.allclose(dist(got), dist(ref), rtol=1e-12, atol=0)


@pytest.mark.slow  # 12,000 rows
def test_fast_table_is_the_reference_search_on_larger_data():
    """Two levels of group minima (16 x 16), several blocks of queries; the
    same lists as scikit-learn's search widened until exact."""
    rng = np.random.default_rng(11)
    feats = rng.standard_normal((12000, 8)).astype(np.float32)
    feats[6000:6100] = feats[:100]
    assert np.array_equal(neighbours.neighbour_table(feats, 6), neighbours.reference_table(feats, 6))


@pytest.mark.slow
def test_fast_table_does_not_depend_on_threads():
    """Our threads (1 or 3) and BLAS's (threadpoolctl: 1 or 2): the same lists."""
    from threadpoolctl import threadpool_limits

    feats = near_ties(5, 1200, 3, 4)
    tables = []
    for blas in (1, 2):
        for threads in (1, 3):
            with threadpool_limits(limits=blas):
                tables.append(neighbours.neighbour_table(feats, 5, threads=threads))
    assert all(np.array_equal(tables[0], t) for t in tables[1:])
    assert np.array_equal(tables[0], brute_lists(feats, 5))


@pytest.mark.slow
def test_memory_of_the_search_is_bounded_by_blocks(monkeypatch):
    """Blocks of queries sized by _BLOCK_BYTES: a small budget, the same lists."""
    feats = np.random.default_rng(2).standard_normal((3000, 5)).astype(np.float32)
    ref = neighbours.neighbour_table(feats, 4)
    monkeypatch.setattr(neighbours, "_BLOCK_BYTES", 3000 * 4 * 8)  # 8 queries a block
    monkeypatch.setattr(neighbours, "_TILE_BYTES", 1024)
    assert np.array_equal(neighbours.neighbour_table(feats, 4), ref)


def test_verify_recomputes_neighbours_by_the_reference_path(tabular, tmp_path, run_cli, monkeypatch):
    """An output written by a wrong fast search (each row's lists shifted) is
    caught: verify does not share the fast path it checks."""
    src, _, _ = tabular
    out = tmp_path / "out.h5"
    real = neighbours.neighbour_table
    monkeypatch.setattr(neighbours, "neighbour_table", lambda feats, k, *a, **kw: np.roll(real(feats, k), 1, axis=0))
    result = run_cli("augment", src, out, "--pairing", "knn", "--neighbors", 3, "--seed", 1, "--block-rows", 32, "-q")
    assert result.exit_code == 0, result.stderr
    result = run_cli("verify", out)
    assert result.exit_code != 0 and "recomputed output differs" in result.stdout


# ---------------------------------------------------------------- --project (plan version 3)


class ArrayReader:
    """The reader interface ``features`` reads through, over an array."""

    path = "mem"

    def __init__(self, a):
        self.a = a

    def spec(self, key):
        from mixup_cli.io import ArraySpec

        return ArraySpec(self.a.shape, self.a.dtype)

    def read(self, key, s, e):
        return self.a[s:e]


def test_projection_keeps_the_top_principal_variance():
    """The share of variance recorded is the top D eigenvalues' share of the
    sample's covariance (here every row), and the features span those directions."""
    rng = np.random.default_rng(3)
    scales = np.array([9.0, 7.0, 5.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05])
    x = (rng.standard_normal((2000, 12)) * scales + 100.0).astype(np.float32)
    feats, projection = neighbours.features(ArrayReader(x), "x", project=3, version=3)
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    eig = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    assert projection["project_sample_rows"] == 2000
    assert projection["project_variance"] == pytest.approx(eig[:3].sum() / eig.sum(), abs=1e-4)
    assert feats.shape == (2000, 3) and feats.dtype == np.float32
    # the features are the centred rows in the top directions: their variance is the top eigenvalues'
    assert np.var(feats.astype(np.float64), axis=0).sum() * 2000 == pytest.approx(eig[:3].sum(), rel=1e-4)


def test_projection_fits_a_bounded_sample(monkeypatch):
    monkeypatch.setattr(neighbours, "_SAMPLE_BYTES", 300 * 4 * 10)  # 300 rows of 10 float32
    x = np.random.default_rng(0).standard_normal((5000, 10)).astype(np.float32)
    feats, projection = neighbours.features(ArrayReader(x), "x", project=4, version=3)
    assert projection["project_sample_rows"] == 300 and feats.shape == (5000, 4)
    assert 0.3 < projection["project_variance"] < 0.6  # 4 of 10 equal directions, on a sample


def test_projection_is_reproducible_byte_for_byte_whatever_the_threads(tmp_path):
    """The fit is part of the plan: the same bytes run after run, with BLAS
    pools of 1 or 2 threads (threadpoolctl) around it, and in the output."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(8)
    x = rng.random((700, 6, 6, 3), dtype=np.float32)
    outs = []
    for blas in (1, 2, 1):
        with threadpool_limits(limits=blas):
            feats, projection = neighbours.features(ArrayReader(x), "x", project=7, version=3)
        outs.append((feats.tobytes(), projection))
    assert outs[0] == outs[1] == outs[2]
    src = write_h5(tmp_path / "in.h5", x=x, y=rng.random(700).astype(np.float32))
    got = []
    for blas in (1, 2):
        out = tmp_path / f"out{blas}.h5"
        with threadpool_limits(limits=blas):
            augment(AugmentRequest(src, out, seed=3, pairing="knn", neighbors=4, project=7, block_rows=128))
        got.append((read_h5(out), read_sidecar(out)["parameters"]))
    for key in got[0][0]:
        assert got[0][0][key].tobytes() == got[1][0][key].tobytes(), key
    assert got[0][1]["project_variance"] == got[1][1]["project_variance"] == outs[0][1]["project_variance"]


@pytest.mark.slow
@pytest.mark.parametrize("version", [2, 3])
def test_projected_outputs_of_plan_versions_2_and_3_verify(tmp_path, run_cli, version):
    """Version 2 (IncrementalPCA) is still computed for its sidecars; version 3 records the fit."""
    rng = np.random.default_rng(4)
    src = write_h5(tmp_path / "in.h5", x=rng.random((300, 4, 4, 3), dtype=np.float32), y=rng.integers(0, 3, 300))
    out = tmp_path / "out.h5"
    augment(
        AugmentRequest(src, out, seed=2, pairing="knn", neighbors=3, project=5, block_rows=64, plan_version=version)
    )
    params = read_sidecar(out)["parameters"]
    assert params["plan_version"] == version
    if version == 2:
        assert params["project_batch_rows"] == 256 and "project_variance" not in params
    else:
        assert params["project_sample_rows"] == 300 and 0 < params["project_variance"] < 1
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout


# ---------------------------------------------------------------- BLAS thread pools


def blas_threads_seen(monkeypatch, target, name):
    """Calls ``target.name`` through a spy that records the most threads of any BLAS/OpenMP pool at the call."""
    from threadpoolctl import threadpool_info

    seen = []
    real = getattr(target, name)

    def spy(*args, **kwargs):
        if len(seen) < 3:
            seen.append(max(p["num_threads"] for p in threadpool_info()))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, spy)
    return seen


def test_blas_pools_are_held_to_the_budget_and_restored():
    from threadpoolctl import threadpool_info

    from mixup_cli.core import threads

    before = [p["num_threads"] for p in threadpool_info()]
    with threads.blas_limited(1):
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert [p["num_threads"] for p in threadpool_info()] == before
    assert threads.budget() >= 1


def test_the_search_runs_one_blas_thread_per_product(monkeypatch):
    """The fast search's products: one BLAS thread each (its blocks go to
    threads of its own), so BLAS never spins against the run's threads."""
    seen = blas_threads_seen(monkeypatch, np, "matmul")
    feats = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    neighbours.neighbour_table(feats, 3, threads=2)
    assert seen and max(seen) == 1


def test_the_projection_fit_runs_one_blas_thread(monkeypatch):
    seen = blas_threads_seen(monkeypatch, np.linalg, "qr")
    x = np.random.default_rng(0).standard_normal((300, 12)).astype(np.float32)
    neighbours.features(ArrayReader(x), "x", project=3, version=3)
    assert seen and max(seen) == 1


def test_the_reference_search_is_held_to_the_budget(monkeypatch):
    from sklearn.neighbors import NearestNeighbors

    seen = blas_threads_seen(monkeypatch, NearestNeighbors, "kneighbors")
    feats = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    neighbours.reference_table(feats, 3, threads=1)
    assert seen and max(seen) == 1
