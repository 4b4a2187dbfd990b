"""--pairing label-kernel (C-Mixup): partners drawn by the Gaussian kernel of
the label distance; the contract; refusals."""

import json

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, run_in_process, write_h5, write_npz
from scipy import stats

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import ParameterError
from mixup_cli.mixing import label_kernel
from mixup_cli.mixing.label_kernel import LabelKernel
from mixup_cli.mixing.sampling import Plan


def draws(y, bandwidth, copies, block_rows=128, seed=3):
    index = LabelKernel.from_targets(y, bandwidth)
    plan = Plan(
        n_rows=len(y),
        alpha=1.0,
        seed=seed,
        block_rows=block_rows,
        pairing="label-kernel",
        bandwidth=bandwidth,
        copies=copies,
        partners=index,
    )
    own, partner = [], []
    for task in plan.tasks():
        own.append(np.arange(task.start, task.stop))
        partner.append(plan.draw(task)[1])
    return np.concatenate(own), np.concatenate(partner)


def expected_counts(y, bandwidth, own, edges, distance):
    """Expected draws per bin of label distance under the exact kernel over all other rows."""
    y = np.asarray(y, dtype=np.float64)
    y2 = y.reshape(len(y), -1)
    d2 = ((y2[:, None, :] - y2[None, :, :]) ** 2).sum(axis=2)
    w = np.exp(-d2 / (2 * bandwidth**2))
    np.fill_diagonal(w, 0.0)
    p = w / w.sum(axis=1, keepdims=True)
    dist = distance(y2[None, :, :] - y2[:, None, :])  # dist[i, j]: partner j's distance from row i
    bins = np.clip(np.digitize(dist, edges) - 1, 0, len(edges) - 2)
    times = np.bincount(own, minlength=len(y)).astype(np.float64)
    out = np.zeros(len(edges) - 1)
    for b in range(len(out)):
        out[b] = (times[:, None] * p * (bins == b)).sum()
    return out


def chi2_pvalue(observed, expected):
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:  # fold the small remainder into the largest bin
        obs, exp = obs[:-1].copy(), exp[:-1].copy()
        obs[np.argmax(exp)] += observed[~keep].sum()
        exp[np.argmax(exp)] += expected[~keep].sum()
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.slow
@pytest.mark.parametrize("bandwidth", [0.05, 0.3])
def test_one_dimensional_draws_follow_the_kernel(bandwidth):
    rng = np.random.default_rng(11)
    y = np.concatenate([rng.normal(0, 1, 1200), np.round(rng.normal(3, 0.5, 300), 1)])  # ties too
    own, partner = draws(y, bandwidth, copies=20)
    assert (partner != own).all()
    signed = lambda d: d[..., 0]  # noqa: E731
    edges = np.linspace(-4 * bandwidth, 4 * bandwidth, 25)
    edges[0], edges[-1] = -np.inf, np.inf
    observed = np.bincount(np.clip(np.digitize(y[partner] - y[own], edges) - 1, 0, 23), minlength=24)
    expected = expected_counts(y, bandwidth, own, edges, signed)
    assert chi2_pvalue(observed, expected) > 0.001
    # The truncation at 4 bandwidths: nothing drawn beyond.
    assert np.abs(y[partner] - y[own]).max() <= 4 * bandwidth + 1e-12


@pytest.mark.slow  # the power of the law test, not a behaviour of mixup
def test_a_wrong_bandwidth_is_seen_by_the_test():
    """The chi-square above can fail: draws at S = 0.3 against the law at S = 0.2."""
    rng = np.random.default_rng(11)
    y = rng.normal(0, 1, 1500)
    own, partner = draws(y, 0.3, copies=20)
    edges = np.linspace(-1.2, 1.2, 25)
    edges[0], edges[-1] = -np.inf, np.inf
    observed = np.bincount(np.clip(np.digitize(y[partner] - y[own], edges) - 1, 0, 23), minlength=24)
    assert chi2_pvalue(observed, expected_counts(y, 0.2, own, edges, lambda d: d[..., 0])) < 1e-6


@pytest.mark.slow
def test_multi_dimensional_draws_follow_the_exact_kernel():
    rng = np.random.default_rng(5)
    y = rng.normal(0, 1, (800, 3))
    own, partner = draws(y, 0.5, copies=25)
    assert (partner != own).all()
    norm = lambda d: np.sqrt((d**2).sum(axis=-1))  # noqa: E731
    edges = np.append(np.linspace(0, 2.5, 21), np.inf)
    observed = np.bincount(np.clip(np.digitize(norm(y[partner] - y[own]), edges) - 1, 0, 20), minlength=21)
    assert chi2_pvalue(observed, expected_counts(y, 0.5, own, edges, norm)) > 0.001


def test_a_row_alone_in_its_window_takes_the_nearest_label():
    y = np.array([0.0, 0.1, 50.0, 0.05, 49.0, 200.0])
    own, partner = draws(y, 0.1, copies=3, block_rows=4)
    assert set(partner[own == 2]) == {4} and set(partner[own == 4]) == {2} and set(partner[own == 5]) == {2}


@pytest.fixture
def regression(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((150, 4)).astype(np.float32)
    y = (x[:, 0] * 2 + rng.normal(0, 0.1, 150)).astype(np.float32)
    return write_h5(tmp_path / "in.h5", x=x, y=y), x, y


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "npz"])
@pytest.mark.parametrize("shape", ["1d", "2d"])
def test_batch_size_never_changes_the_output_and_rows_mix_by_the_formula(regression, tmp_path, fmt, shape):
    src, x, y = regression
    if shape == "2d":
        y = np.stack([y, -y], axis=1)
    src = (write_h5 if fmt == "h5" else write_npz)(tmp_path / f"in2.{fmt}", x=x, y=y)
    outs = []
    for batch in (1, 7, 1000):
        out = tmp_path / f"out{batch}.{fmt}"
        augment(
            AugmentRequest(
                src,
                out,
                seed=9,
                pairing="label-kernel",
                bandwidth=0.3,
                batch_size=batch,
                block_rows=16,
                copies=2,
                include_original=True,
            )
        )
        outs.append(load_output(out))
    for other in outs[1:]:
        for key in outs[0]:
            assert outs[0][key].tobytes() == other[key].tobytes(), key
    got = outs[0]
    own = np.tile(np.arange(150), 3)
    lam = got["lam"].astype(np.float32).reshape((-1,) + (1,) * (y.ndim - 1))
    assert np.allclose(got["y"], lam * y[own] + (1 - lam) * y[got["partner"]], atol=1e-6)
    assert (got["partner"][150:] != own[150:]).all()


def test_verify_recomputes_and_catches_an_edited_bandwidth(regression, tmp_path, run_cli):
    src, _, _ = regression
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment", src, out, "--pairing", "label-kernel", "--bandwidth", 0.25, "--seed", 1, "--block-rows", 32, "-q"
    )
    assert result.exit_code == 0, result.stderr
    assert read_sidecar(out)["parameters"]["bandwidth"] == 0.25
    assert run_cli("verify", out).exit_code == 0
    sidecar = out.with_name(out.name + ".provenance.json")
    record = json.loads(sidecar.read_text())
    record["parameters"]["bandwidth"] = 0.5
    sidecar.write_text(json.dumps(record))
    result = run_cli("verify", out)
    assert result.exit_code != 0 and "recomputed output differs" in result.stdout


@pytest.mark.slow  # Dask: the whole suite only (a local cluster costs seconds to start)
@pytest.mark.xdist_group("dask")
def test_dask_gives_the_local_bytes(dask_scheduler, regression, tmp_path, run_mixup):
    src, _, _ = regression
    args = ("--pairing", "label-kernel", "--bandwidth", 0.2, "--seed", 4, "--block-rows", 32, "--copies", 2, "-q")
    assert run_in_process("augment", src, tmp_path / "local.h5", *args).returncode == 0
    remote = run_mixup("augment", src, tmp_path / "dask.h5", *args, "--engine", "dask", "--scheduler", dask_scheduler)
    assert remote.returncode == 0, remote.stderr
    with h5py.File(tmp_path / "local.h5", "r") as a, h5py.File(tmp_path / "dask.h5", "r") as b:
        for key in ("x", "y", "lam", "partner"):
            assert a[key][()].tobytes() == b[key][()].tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "y,args,pattern",
    [
        ("classes", ("--bandwidth", 0.5), "use --pairing within-class or between-class"),
        ("onehot", ("--bandwidth", 0.5), "use --pairing within-class or between-class"),
        ("dense", (), "--bandwidth"),
        ("dense", ("--bandwidth", 0), "--bandwidth"),
        ("dense", ("--bandwidth", "nan"), "--bandwidth"),
    ],
)
def test_refusals_are_one_line_exit_2_and_leave_nothing(tmp_path, outdir, run_mixup, y, args, pattern):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    ys = {"classes": labels, "onehot": np.eye(3, dtype=np.float32)[labels], "dense": rng.random(40)}[y]
    src = write_h5(tmp_path / "in.h5", x=rng.random((40, 2)), y=ys)
    proc = run_mixup("augment", src, outdir / "out.h5", "--pairing", "label-kernel", *args)
    assert proc.returncode == 2, proc.stderr
    assert pattern in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(outdir.iterdir()) == []


def test_wide_targets_with_many_rows_are_refused(tmp_path, outdir, monkeypatch):
    monkeypatch.setattr(label_kernel, "EXACT_MAX_ROWS", 30)
    rng = np.random.default_rng(0)
    src = write_h5(tmp_path / "in.h5", x=rng.random((40, 2)), y=rng.random((40, 2)))
    with pytest.raises(ParameterError, match="accepted up to 30 rows"):
        augment(AugmentRequest(src, outdir / "out.h5", pairing="label-kernel", bandwidth=0.1))
    assert list(outdir.iterdir()) == []
