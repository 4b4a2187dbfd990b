"""The reproducibility contract: same input, seed and parameters give
byte-identical output data, whatever the batch size and the order blocks
are computed in."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import examples, load_output, make_arrays, write_h5, write_npy_dir, write_npz
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.mixing.sampling import INDEX_PAIRINGS, Plan
from mixup_cli.mixing.sampling import PAIRINGS as ALL_PAIRINGS
from mixup_cli.targets.classes import ClassIndex

# The pairings that need no index over the data (the others: test_neighbours.py, test_label_kernel.py).
PAIRINGS = tuple(p for p in ALL_PAIRINGS if p not in INDEX_PAIRINGS)

N = 53
OUT_NAMES = {"h5": "out{}.h5", "npz": "out{}.npz", "npydir": "out{}"}


def make_input(fmt, directory, x, y):
    if fmt == "h5":
        return write_h5(directory / "in.h5", x=x, y=y)
    if fmt == "npz":
        return write_npz(directory / "in.npz", x=x, y=y)
    return write_npy_dir(directory / "in", x=x, y=y)


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), f"'{key}' differs"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "npz", "npydir"])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_batch_size_never_changes_the_output(tmp_path, fmt, pairing):
    x, y = make_arrays(n=N, x_shape=(3, 2))
    src = make_input(fmt, tmp_path, x, y)
    outputs = []
    for i, batch_size in enumerate([1, 7, 1000, N + 5]):
        out = tmp_path / OUT_NAMES[fmt].format(i)
        augment(
            AugmentRequest(
                src, out, seed=42, pairing=pairing, batch_size=batch_size, block_rows=8, copies=2, include_original=True
            )
        )
        outputs.append(load_output(out))
    for other in outputs[1:]:
        assert_identical(outputs[0], other)
    assert len(outputs[0]["lam"]) == 3 * N


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 90),
    block_rows=st.integers(1, 40),
    batches=st.lists(st.integers(1, 120), min_size=2, max_size=2),
    pairing=st.sampled_from(PAIRINGS),
    copies=st.integers(1, 2),
    include_original=st.booleans(),
    fmt=st.sampled_from(["h5", "npz", "npydir"]),
)
def test_contract_holds_for_any_shape_of_the_run(n, block_rows, batches, pairing, copies, include_original, fmt):
    assume(not (pairing == "between-class" and n == 1))  # needs two classes
    x, _ = make_arrays(n=n, x_shape=(2,), seed=n)
    y = np.eye(3, dtype=np.float32)[np.random.default_rng(n).permutation(np.arange(n) % 3)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_input(fmt, tmp, x, y)
        got = []
        for i, batch_size in enumerate(batches):
            out = tmp / OUT_NAMES[fmt].format(i)
            augment(
                AugmentRequest(
                    src,
                    out,
                    seed=7,
                    pairing=pairing,
                    batch_size=batch_size,
                    block_rows=block_rows,
                    copies=copies,
                    include_original=include_original,
                )
            )
            got.append(load_output(out))
    assert_identical(*got)


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_every_block_is_computed_alone_in_any_order(pairing):
    """A task's lam and partners depend on the seed and the task's coordinates
    only: drawing the tasks shuffled, or one plan per task, changes nothing."""
    labels = np.random.default_rng(0).integers(0, 3, 100)
    plan = Plan(
        n_rows=100, alpha=0.5, seed=9, block_rows=16, pairing=pairing, copies=2, classes=ClassIndex.from_labels(labels)
    )
    tasks = list(plan.tasks())
    in_order = {(t.copy, t.block): plan.draw(t) for t in tasks}
    shuffled = [tasks[i] for i in np.random.default_rng(1).permutation(len(tasks))]
    for t in shuffled:
        fresh = Plan(
            n_rows=100,
            alpha=0.5,
            seed=9,
            block_rows=16,
            pairing=pairing,
            copies=2,
            classes=ClassIndex.from_labels(labels),
        )
        for lam, partner in (plan.draw(t), fresh.draw(t)):
            assert lam.tobytes() == in_order[(t.copy, t.block)][0].tobytes()
            assert partner.tobytes() == in_order[(t.copy, t.block)][1].tobytes()


def test_output_rows_of_a_task_are_its_draw(tmp_path):
    """Each block of the output is exactly what its task draws, at the
    documented place: originals first, then copy 0, copy 1..., input order."""
    x, y = make_arrays(n=N)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=5, block_rows=8, copies=2, include_original=True))
    out = load_output(tmp_path / "out.h5")
    plan = Plan(n_rows=N, alpha=0.2, seed=5, block_rows=8, copies=2, include_original=True)
    for task in plan.tasks():
        lam, partner = plan.draw(task)
        rows = slice(task.out_start, task.out_start + len(lam))
        assert task.out_start == (task.copy + 1) * N + task.start
        assert out["lam"][rows].tobytes() == lam.tobytes()
        assert np.array_equal(out["partner"][rows], partner)


def test_command_line_batch_sizes_give_identical_files(run_cli, tmp_path):
    x, y = make_arrays(n=N)
    src = write_npz(tmp_path / "in.npz", x=x, y=y)
    for batch in (1, 1000):
        result = run_cli(
            "augment",
            src,
            tmp_path / f"out{batch}.npz",
            "--seed",
            3,
            "--batch-size",
            batch,
            "--block-rows",
            16,
            "--quiet",
        )
        assert result.exit_code == 0, result.stderr
    # .npz carries no run id: the whole archive is byte-identical.
    assert (tmp_path / "out1.npz").read_bytes() == (tmp_path / "out1000.npz").read_bytes()


H5DIFF = shutil.which("h5diff")


@pytest.mark.skipif(H5DIFF is None, reason="h5diff (hdf5-tools) is not installed")
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_h5diff_finds_no_difference_between_batch_sizes(run_cli, tmp_path, pairing):
    x, y = make_arrays(n=N, x_shape=(4, 3))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    outs = []
    for batch in (1, 7, 1000, N + 1):
        out = tmp_path / f"out{batch}.h5"
        result = run_cli(
            "augment",
            src,
            out,
            "--seed",
            11,
            "--pairing",
            pairing,
            "--batch-size",
            batch,
            "--block-rows",
            8,
            "--copies",
            2,
            "--quiet",
        )
        assert result.exit_code == 0, result.stderr
        outs.append(out)
    # Compare datasets: the root attribute run_id differs between runs by design.
    for other in outs[1:]:
        for name in ("/x", "/y", "/lam", "/partner"):
            proc = subprocess.run([H5DIFF, str(outs[0]), str(other), name, name], capture_output=True, text=True)
            assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    # h5diff does see a difference when there is one.
    run_cli(
        "augment",
        src,
        tmp_path / "seed12.h5",
        "--seed",
        12,
        "--pairing",
        pairing,
        "--block-rows",
        8,
        "--copies",
        2,
        "--quiet",
    )
    proc = subprocess.run([H5DIFF, str(outs[0]), str(tmp_path / "seed12.h5"), "/lam", "/lam"], capture_output=True)
    assert proc.returncode == 1


def test_output_data_do_not_depend_on_the_output_format(tmp_path):
    x, y = make_arrays(n=N, x_shape=(3, 2))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    got = []
    for name in ("out.h5", "out.npz", "out"):
        augment(AugmentRequest(src, tmp_path / name, seed=4, pairing="within-class", block_rows=8, copies=2))
        got.append(load_output(tmp_path / name))
    assert_identical(got[0], got[1])
    assert_identical(got[0], got[2])
