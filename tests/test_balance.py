"""--balance / --balance-to: exact class counts per copy, the 'own' array and
the formula, the contract, verify and inspect, refusals."""

import json

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, run_in_process, write_h5, write_npz

from mixup_cli.commands.pipeline import AugmentRequest, augment

COUNTS = (300, 120, 37, 1)  # classes 0..3, one with a single row


@pytest.fixture
def imbalanced(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.permutation(np.repeat(np.arange(4), COUNTS))
    x = rng.integers(0, 256, (len(labels), 2, 3)).astype(np.uint8)
    return write_h5(tmp_path / "in.h5", x=x, y=labels), x, labels


def copy_rows(n_copy, copies, include_original):
    first = n_copy if include_original else 0
    return [slice(first + k * n_copy, first + (k + 1) * n_copy) for k in range(copies)]


@pytest.mark.slow
@pytest.mark.parametrize("balance_to", [None, 50, 400])
@pytest.mark.parametrize("pairing", ["global", "batch", "within-class", "between-class"])
def test_every_class_gets_exactly_m_rows_per_copy_and_rows_follow_the_formula(
    imbalanced, tmp_path, pairing, balance_to
):
    src, x, labels = imbalanced
    out = tmp_path / "out.h5"
    augment(
        AugmentRequest(
            src,
            out,
            seed=3,
            pairing=pairing,
            balance=True,
            balance_to=balance_to,
            block_rows=64,
            copies=2,
            include_original=True,
        )
    )
    with h5py.File(out, "r") as f:
        got = {k: f[k][()] for k in f}
    m = balance_to or max(COUNTS)
    assert len(got["own"]) == 3 * 4 * m
    for rows in copy_rows(4 * m, 2, True) + [slice(0, 4 * m)]:
        own = got["own"][rows]
        assert np.array_equal(np.bincount(labels[own], minlength=4), [m] * 4)
        assert np.all(np.diff(own) >= 0)  # input order
        for c, n_c in enumerate(COUNTS):  # each row of a class used floor or ceil(M / n_c) times
            uses = np.bincount(own[labels[own] == c], minlength=len(labels))[labels == c]
            assert set(uses) <= {m // n_c, -(-m // n_c)}
    assert np.array_equal(got["own"][: 4 * m], got["partner"][: 4 * m]) and (got["lam"][: 4 * m] == 1).all()
    own, partner, lam = got["own"], got["partner"], got["lam"].astype(np.float32)[:, None, None]
    expected = np.clip(np.rint(lam * x[own].astype(np.float32) + (1 - lam) * x[partner].astype(np.float32)), 0, 255)
    assert np.array_equal(got["x"], expected.astype(np.uint8))
    onehot = np.eye(4, dtype=np.float32)
    assert np.allclose(got["y"], lam[:, :, 0] * onehot[labels[own]] + (1 - lam[:, :, 0]) * onehot[labels[partner]])
    if pairing == "within-class":
        assert (labels[partner] == labels[own]).all()
    if pairing == "between-class":
        assert (labels[partner[4 * m :]] != labels[own[4 * m :]]).all()
    params = read_sidecar(out)["parameters"]
    assert (params["balance"], params["balance_to"], params["rows_per_copy"]) == (True, balance_to, 4 * m)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_batch_size_never_changes_the_output(imbalanced, tmp_path, fmt):
    src, x, labels = imbalanced
    if fmt == "npz":
        src = write_npz(tmp_path / "in.npz", x=x, y=labels)
    outs = []
    for batch in (1, 7, 1000):
        out = tmp_path / f"out{batch}.{fmt}"
        augment(AugmentRequest(src, out, seed=9, balance=True, batch_size=batch, block_rows=32, copies=2))
        outs.append(load_output(out))
    for other in outs[1:]:
        for key in outs[0]:
            assert outs[0][key].tobytes() == other[key].tobytes(), key


def test_own_rows_depend_on_the_seed(imbalanced, tmp_path):
    src, _, _ = imbalanced
    owns = []
    for seed in (1, 2):
        augment(AugmentRequest(src, tmp_path / f"o{seed}.h5", seed=seed, balance_to=200, block_rows=64))
        with h5py.File(tmp_path / f"o{seed}.h5", "r") as f:
            owns.append(f["own"][()])
    assert not np.array_equal(*owns)


@pytest.mark.slow
def test_verify_inspect_and_an_edited_balance(imbalanced, tmp_path, run_cli):
    src, _, _ = imbalanced
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--balance", "--seed", 1, "--block-rows", 64, "--copies", 2, "-q")
    assert result.exit_code == 0, result.stderr
    assert run_cli("verify", out).exit_code == 0
    shown = run_cli("inspect", out).stdout
    assert "balance" in shown and "rows per copy" in shown and "1200" in shown
    sidecar = out.with_name(out.name + ".provenance.json")
    record = json.loads(sidecar.read_text())
    record["parameters"]["balance_to"] = 299
    sidecar.write_text(json.dumps(record))
    result = run_cli("verify", out)
    assert result.exit_code != 0 and "recompute" in result.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_dask_gives_the_local_bytes(dask_scheduler, imbalanced, tmp_path, run_mixup):
    src, _, _ = imbalanced
    args = ("--balance", "--pairing", "within-class", "--seed", 4, "--block-rows", 64, "--copies", 2, "-q")
    assert run_in_process("augment", src, tmp_path / "local.h5", *args).returncode == 0
    remote = run_mixup("augment", src, tmp_path / "dask.h5", *args, "--engine", "dask", "--scheduler", dask_scheduler)
    assert remote.returncode == 0, remote.stderr
    with h5py.File(tmp_path / "local.h5", "r") as a, h5py.File(tmp_path / "dask.h5", "r") as b:
        for key in ("x", "y", "lam", "partner", "own"):
            assert a[key][()].tobytes() == b[key][()].tobytes(), key


def test_unbalanced_runs_have_no_own_array(imbalanced, tmp_path):
    src, _, _ = imbalanced
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=1))
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert sorted(f) == ["lam", "partner", "x", "y"]
    assert "balance" not in read_sidecar(tmp_path / "out.h5")["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,pattern",
    [
        (("--balance", "--pairing", "knn"), "--balance"),
        (("--balance", "--pairing", "label-kernel", "--bandwidth", 1), "--balance"),
        (("--balance", "--no-y"), "--balance needs class labels"),
    ],
)
def test_refusals_are_one_line_exit_2_and_leave_nothing(imbalanced, outdir, run_mixup, args, pattern):
    src, _, _ = imbalanced
    proc = run_mixup("augment", src, outdir / "out.h5", *args)
    assert proc.returncode == 2, proc.stderr
    assert pattern in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(outdir.iterdir()) == []
