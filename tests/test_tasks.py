"""The one per-task computation (``tasks``) and the engine protocol: any list
of tasks, whole blocks or parts of them, gives the bytes of a whole run."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import examples, make_arrays, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, Progress, augment
from mixup_cli.engines import local
from mixup_cli.io import hdf5
from mixup_cli.io.base import WriteOptions
from mixup_cli.mixing.sampling import Plan, Task
from mixup_cli.record import digests, provenance
from mixup_cli.run.planner import build_plan, output_specs, plan_from_sidecar
from mixup_cli.run.source import open_source
from mixup_cli.run.tasks import compute_task


def split(plan: Plan, cuts: int):
    """Every task of the plan cut into up to ``cuts`` consecutive parts."""
    for task in plan.tasks():
        n = task.stop - task.start
        edges = sorted({0, n, *np.linspace(0, n, cuts + 1, dtype=int)[1:-1]})
        for a, b in zip(edges, edges[1:]):
            yield Task(task.copy, task.block, task.partner_block, task.start + a, task.start + b, task.out_start + a)


def h5_arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


PAIRINGS = [
    dict(pairing="global"),
    dict(pairing="batch"),
    dict(pairing="within-class"),
    dict(pairing="global", method="cutmix", layout="NHWC"),
    dict(pairing="batch", balance=True),
]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    x, y = make_arrays(n=45, x_shape=(4, 4, 3), n_classes=3, seed=8)
    return write_h5(tmp_path_factory.mktemp("in") / "in.h5", x=x, y=y)


@pytest.mark.slow
@settings(max_examples=examples(12), deadline=None)
@given(
    params=st.sampled_from(PAIRINGS),
    cuts=st.integers(1, 4),
    block_rows=st.sampled_from([7, 16, 45]),
    batch_rows=st.sampled_from([2, 5, 100]),
)
def test_tasks_cut_into_parts_write_the_bytes_of_whole_blocks(
    src, tmp_path_factory, params, cuts, block_rows, batch_rows
):
    """Sub-range tasks: lam, partners and boxes drawn for the whole block and
    sliced; the local engine, the per-task computation (Dask workers') and
    the digests all agree with the whole-block run, byte for byte."""
    tmp = tmp_path_factory.mktemp("out")
    source = open_source(src, "x", "y")
    try:
        plan = build_plan(source, alpha=0.4, seed=3, block_rows=block_rows, copies=2, include_original=True, **params)
        specs = output_specs(source, plan)
        outputs, found = [], []
        for name, tasks in (("whole", plan.tasks()), ("parts", split(plan, cuts))):
            writer = hdf5.Writer(tmp / f"{name}.h5", specs, WriteOptions(block_rows=plan.block_rows))
            block_digests = digests.BlockDigests.for_plan(plan, specs)
            local.run(source, plan, writer, tasks, Progress(), block_digests=block_digests, batch_rows=batch_rows)
            writer.close()
            outputs.append(h5_arrays(tmp / f"{name}.h5"))
            found.append(block_digests.arrays())
        computed = {key: np.empty(spec.shape, spec.dtype) for key, spec in specs.items()}
        for task in split(plan, cuts):
            for key, rows in compute_task(source, plan, task).items():
                computed[key][task.out_start : task.out_start + len(rows)] = rows
    finally:
        source.reader.close()
    whole, parts = outputs
    assert whole.keys() == parts.keys() == specs.keys()
    for key in whole:
        assert whole[key].tobytes() == parts[key].tobytes(), key
        assert whole[key].tobytes() == computed[key].tobytes(), key
    assert found[0] == found[1]


def test_skipped_indices_are_those_of_the_given_list(src, tmp_path):
    """Resume numbers tasks by their place in the list the engine is given."""
    source = open_source(src, "x", "y")
    try:
        plan = build_plan(source, alpha=0.4, seed=3, block_rows=16)
        tasks = list(split(plan, 2))

        class Recorder:
            rows: set = set()

            def write(self, key, start, data):
                if key == "x":
                    self.rows |= set(range(start, start + len(data)))

        writer, done = Recorder(), []
        local.run(source, plan, writer, tasks, Progress(), skip={0, 3}, on_done=done.append, threaded=False)
    finally:
        source.reader.close()
    assert done == [i for i in range(len(tasks)) if i not in (0, 3)]
    assert writer.rows == {
        r for i in done for r in range(tasks[i].out_start, tasks[i].out_start + tasks[i].stop - tasks[i].start)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        dict(pairing="global"),
        dict(pairing="within-class", balance_to=9),
        dict(pairing="knn", neighbors=3),
        dict(method="cutmix", layout="NHWC", pairing="batch"),
    ],
)
def test_the_plan_from_a_sidecar_is_the_plan_of_the_run(src, tmp_path, options):
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, seed=5, block_rows=16, copies=2, command_line=[], **options))
    parameters = provenance.read(provenance.sidecar_path(out))["parameters"]
    source = open_source(src, "x", "y")
    try:
        again = plan_from_sidecar(parameters, source)
        built = build_plan(source, alpha=0.2, seed=5, block_rows=16, copies=2, **options)
    finally:
        source.reader.close()
    assert again == built
    assert again.to_dict() == built.to_dict()
    assert {k: again.to_dict()[k] for k in again.to_dict()} == {k: parameters[k] for k in again.to_dict()}
    record = again.to_dict()
    n_rows = record.get("rows_per_copy", 45)
    plain = Plan.from_dict(record, n_rows, classes=again.classes, partners=again.partners, own=again.own)
    assert plain == again and plain.to_dict() == record


@settings(max_examples=examples(30), deadline=None)
@given(
    pairing=st.sampled_from(["global", "batch"]),
    copies=st.integers(1, 3),
    include_original=st.booleans(),
    block_rows=st.integers(1, 50),
    seed=st.integers(0, 2**63 - 1),
    alpha=st.floats(0.05, 5),
    cutmix=st.booleans(),
)
def test_plan_from_dict_reads_back_to_dict(pairing, copies, include_original, block_rows, seed, alpha, cutmix):
    method = dict(method="cutmix", layout="NCHW") if cutmix else {}
    plan = Plan(
        n_rows=40,
        alpha=alpha,
        seed=seed,
        block_rows=block_rows,
        pairing=pairing,
        copies=copies,
        include_original=include_original,
        **method,
    )
    again = Plan.from_dict(plan.to_dict(), 40)
    assert again == plan and again.to_dict() == plan.to_dict()
    assert [t for t in again.tasks()] == list(plan.tasks())


def test_plan_from_a_sidecar_of_another_version_is_refused(src):
    from mixup_cli.core.errors import ParameterError

    source = open_source(src, "x", "y")
    try:
        with pytest.raises(ParameterError, match="plan_version is 99"):
            plan_from_sidecar({"plan_version": 99}, source)
    finally:
        source.reader.close()


def test_resume_redoes_the_parts_of_a_block_not_finished(tmp_path):
    """A digest covers a whole block: parts journaled as written, of a block
    whose digest is missing (its other parts were not), are done again."""
    from mixup_cli.run import resume

    plan = Plan(n_rows=40, alpha=0.3, seed=1, block_rows=10, pairing="batch")
    tasks = list(split(plan, 2))  # 8 parts: two per block
    specs = {"x": None}
    journal = resume.Journal(tmp_path / "j.json", {}, "run", "now", done={0, 1, 2, 5}, digests={0: {"x": "a"}})
    resume.block_digests(plan, specs, journal, tasks)
    assert journal.done == {0, 1}  # block 0 finished; part 2 (block 1) and part 5 (block 2) alone are not
    assert journal.digests == {0: {"x": "a"}}


@pytest.mark.parametrize(
    "y, options",
    [
        (np.arange(30) % 4, {}),
        (np.arange(30) % 4, dict(num_classes=6, label_smoothing=0.2)),
        (np.eye(3, dtype=np.float32)[np.arange(30) % 3], {}),
        ((np.arange(30) % 2).astype(bool), {}),
        (np.linspace(0, 1, 30), dict(x_dtype="float64")),
        (np.arange(30) % 4, dict(y_format="pair")),
        (None, {}),
    ],
)
def test_workers_prepare_the_rows_as_the_client_did(tmp_path, y, options):
    """What the Dask workers open the input with (``Prepared.resolved_options``,
    passed as it is) prepares the same rows as the client, and is what the
    sidecar's parameters read back to."""
    from mixup_cli.run.prepared import DataOptions

    arrays = {"x": np.random.default_rng(2).random((30, 3), dtype=np.float32)}
    if y is not None:
        arrays["y"] = y
    src = write_h5(tmp_path / "in.h5", **arrays)
    y_key = "y" if y is not None else None
    client = open_source(src, "x", y_key, DataOptions(**options))
    resolved = client.prepared.resolved_options()
    worker = open_source(src, "x", y_key, resolved)
    try:
        assert resolved == DataOptions.from_parameters(client.prepared.parameters())
        assert worker.specs == client.specs and worker.paired_keys == client.paired_keys
        for key in client.specs:
            assert worker.reader.read(key, 0, 30).tobytes() == client.reader.read(key, 0, 30).tobytes()
    finally:
        client.reader.close()
        worker.reader.close()


def test_both_engines_implement_one_protocol():
    """``run(source, plan, writer, tasks, progress, *, skip, on_done, block_digests, ...)``."""
    import inspect

    from mixup_cli.engines import dask as dask_engine

    protocol = ["source", "plan", "writer", "tasks", "progress", "skip", "on_done", "block_digests"]
    for engine in (local, dask_engine):
        params = inspect.signature(engine.run).parameters
        assert list(params)[: len(protocol)] == protocol, engine.__name__
        assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in protocol[5:])
