"""The Dask engine against a real scheduler and two real worker processes on
loopback: same bytes as the local engine, errors from workers, clean exits."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import load_output, make_arrays, read_sidecar, run_in_process, write_h5, write_npz

from mixup_cli.commands.pipeline import AugmentRequest, Progress, augment
from mixup_cli.core.errors import InputError

# On one xdist worker: they share its cluster (conftest.dask_scheduler). Run
# by the whole suite only (-m "slow or not slow"): one worker running all the
# cluster tests would set the fast suite's pace.
pytestmark = [pytest.mark.xdist_group("dask"), pytest.mark.slow]

KEYS = ("x", "y", "lam", "partner")


def needs_dask():
    pytest.importorskip("distributed", reason="the Dask engine is an optional extra: pip install 'mixup-cli[dask]'")
    pytest.importorskip("zarr", reason="Zarr is an optional extra: pip install 'mixup-cli[dask]'")


@pytest.fixture
def scheduler(dask_scheduler):
    return dask_scheduler


def load_any(path, keys=KEYS) -> dict[str, np.ndarray]:
    path = Path(path)
    if path.suffix == ".zarr":
        import zarr

        root = zarr.open_group(str(path), mode="r")
        return {key: root[key][...] for key in keys}
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in keys}


def assert_same_bytes(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


@pytest.fixture
def dataset(tmp_path):
    # 101 rows in blocks of 16: copies start off the chunk grid, so the
    # engine's edge rows (written by the client) are exercised too.
    x, y = make_arrays(n=101, x_shape=(6, 4))
    return write_h5(tmp_path / "in.h5", x=x, y=y), x, y


COMMON = ("--seed", 11, "--block-rows", 16, "--copies", 2, "--include-original", "--alpha", 0.3)


def leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if "mixup-partial" in p.name or "mixup-old" in p.name)


@pytest.mark.parametrize("pairing", ["global", "batch"])
@pytest.mark.parametrize("out_name", ["out.h5", "out.zarr"])
def test_dask_scheduler_gives_the_local_bytes(scheduler, dataset, tmp_path, run_mixup, pairing, out_name):
    src, _, _ = dataset
    local_out, dask_out = tmp_path / f"local-{out_name}", tmp_path / f"dask-{out_name}"
    args = COMMON + ("--pairing", pairing, "--compression", "gzip", "-q")
    local = run_in_process("augment", src, local_out, *args)
    assert local.returncode == 0, local.stderr
    remote = run_mixup("augment", src, dask_out, *args, "--engine", "dask", "--scheduler", scheduler)
    assert remote.returncode == 0, remote.stderr
    assert remote.stderr == ""
    assert_same_bytes(load_any(local_out), load_any(dask_out))
    local_rec, dask_rec = read_sidecar(local_out), read_sidecar(dask_out)
    assert local_rec["parameters"] == dask_rec["parameters"]
    assert local_rec["output"]["arrays"] == dask_rec["output"]["arrays"]  # digests computed on the workers
    assert dask_rec["execution"]["engine"] == "dask" and dask_rec["execution"]["workers"] == 2
    assert dask_rec["execution"]["scheduler"] == scheduler
    assert leftovers(tmp_path) == []


def test_workers_without_a_scheduler_start_and_stop_a_local_cluster(dataset, tmp_path, run_mixup):
    needs_dask()
    src, _, _ = dataset
    local = run_in_process("augment", src, tmp_path / "local.zarr", *COMMON, "-q")
    assert local.returncode == 0, local.stderr
    remote = run_mixup("augment", src, tmp_path / "dask.zarr", *COMMON, "--engine", "dask", "--workers", 2, "--json")
    assert remote.returncode == 0, remote.stderr
    assert '"rows": 303' in remote.stdout and remote.stderr == ""
    assert_same_bytes(load_any(tmp_path / "local.zarr"), load_any(tmp_path / "dask.zarr"))
    execution = read_sidecar(tmp_path / "dask.zarr")["execution"]
    assert execution["workers"] == 2 and execution["scheduler"] == "local"


class Recorder(Progress):
    def start(self, total):
        self.total, self.done = total, 0

    def update(self, rows):
        self.done += rows


@pytest.mark.parametrize("out_name", ["out.npz", "out"])
def test_results_written_by_the_client_for_npz_and_npy(scheduler, dataset, tmp_path, out_name):
    src, _, _ = dataset
    local = augment(AugmentRequest(src, tmp_path / f"local-{out_name}", seed=4, block_rows=8))
    progress = Recorder()
    remote = augment(
        AugmentRequest(src, tmp_path / f"dask-{out_name}", seed=4, block_rows=8, engine="dask", scheduler=scheduler),
        progress=progress,
    )
    assert progress.done == progress.total == remote.rows == local.rows
    a, b = load_output(local.output), load_output(remote.output)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert local.record["output"]["arrays"] == remote.record["output"]["arrays"]


def corrupt_one_chunk(path, key="x", index=2):
    """Scramble the compressed bytes of one chunk: the file still opens and
    validates, but reading that block fails."""
    with h5py.File(path, "r") as f:
        info = f[key].id.get_chunk_info(index)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)


# With --workers the run starts a cluster of its own (seconds): the slow suite;
# test_workers_without_a_scheduler_start_and_stop_a_local_cluster covers starting one.
@pytest.mark.parametrize(
    "out_name, cluster",
    [
        ("out.h5", "scheduler"),
        ("out.zarr", "scheduler"),
        pytest.param("out.zarr", "workers", marks=pytest.mark.slow),
    ],
)
def test_a_failing_block_on_a_worker_ends_with_its_message(scheduler, tmp_path, run_mixup, out_name, cluster):
    x, y = make_arrays(n=96, x_shape=(8,))
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=x, chunks=(16, 8), compression="gzip")
        f.create_dataset("y", data=y)
    corrupt_one_chunk(src)
    where = ("--scheduler", scheduler) if cluster == "scheduler" else ("--workers", 2)
    # batch pairing: each block reads its own rows only, so the damaged chunk is read as a block's rows
    pairing = ("--pairing", "batch")
    proc = run_mixup(
        "augment", src, tmp_path / out_name, "--seed", 1, "--block-rows", 16, *pairing, "--engine", "dask", *where
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    # The damaged chunk named as the local engine names it, and where it was read.
    assert lines[0].startswith(f"Error: {src}: the compressed chunk of 'x' rows 32:48 "), lines[0]
    assert "copy or write the file again" in lines[0] and "on worker tcp://127.0.0.1" in lines[0]
    local = run_mixup("augment", src, tmp_path / out_name, "--seed", 1, "--block-rows", 16, *pairing)
    assert local.returncode == 1 and local.stderr.strip() == lines[0].split(" (on worker")[0], local.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


class DeleteInputAtStart(Progress):
    """Removes the input once the run is planned and its output created."""

    def __init__(self, path):
        self.path = Path(path)

    def start(self, total):
        self.path.unlink()


def test_input_removed_between_planning_and_work(scheduler, tmp_path):
    x, y = make_arrays(n=40)
    src = write_npz(tmp_path / "in.npz", x=x, y=y)
    out = tmp_path / "out.zarr"
    with pytest.raises(InputError, match=r"in\.npz: no such file or directory \(on worker tcp://"):
        augment(
            AugmentRequest(src, out, seed=1, block_rows=8, engine="dask", scheduler=scheduler),
            progress=DeleteInputAtStart(src),
        )
    assert list(tmp_path.iterdir()) == []


def test_a_worker_notices_an_input_that_changed(tmp_path):
    needs_dask()
    from mixup_cli.engines.dask import Job, run_task
    from mixup_cli.io import ArraySpec
    from mixup_cli.mixing.sampling import Plan
    from mixup_cli.run.prepared import DataOptions

    x, y = make_arrays(n=20)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    plan = Plan(n_rows=30, alpha=0.2, seed=1, block_rows=10)
    specs = {"x": ArraySpec((30,) + x.shape[1:], x.dtype), "y": ArraySpec((30, 5), y.dtype)}
    with pytest.raises(InputError, match="changed since the run started"):
        run_task(Job("test", str(src), specs, "x", "y", DataOptions(), plan, None), next(plan.tasks()))


def test_only_whole_chunks_are_written_by_workers():
    needs_dask()
    from mixup_cli.engines.dask import _aligned

    assert _aligned(0, 16, 8, 100) == (0, 16)
    assert _aligned(5, 21, 8, 100) == (8, 16)  # rows 5:8 and 16:21 go back to the client
    assert _aligned(5, 7, 8, 100) == (8, 0)  # nothing whole
    assert _aligned(96, 100, 8, 100) == (96, 100)  # the array's last, short chunk is whole
    assert _aligned(90, 100, 8, 100) == (96, 100)


def test_an_unreachable_scheduler_is_a_one_line_error(dataset, tmp_path, run_cli, monkeypatch):
    needs_dask()
    from mixup_cli.engines import dask as dask_engine

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT_S", 1)
    src, _, _ = dataset
    result = run_cli("augment", src, tmp_path / "out.h5", "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 1
    assert "--scheduler tcp://127.0.0.1:9: cannot connect to a Dask scheduler" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


def test_without_dask_the_message_names_the_extra(dataset, tmp_path, run_cli, monkeypatch):
    src, _, _ = dataset
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    result = run_cli("augment", src, tmp_path / "out.h5", "--engine", "dask")
    assert result.exit_code == 2
    assert "--engine dask needs the optional Dask extra; install it with pip install 'mixup-cli[dask]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (("--workers", 2), "--workers needs --engine dask"),
        (("--scheduler", "tcp://h:1"), "--scheduler needs --engine dask"),
        (("--engine", "dask", "--workers", 0), "--workers must be an integer >= 1"),
        (("--engine", "dask", "--workers", 2, "--scheduler", "tcp://h:1"), "give only one"),
    ],
)
def test_engine_options_are_checked(dataset, tmp_path, run_cli, args, pattern):
    src, _, _ = dataset
    result = run_cli("augment", src, tmp_path / "out.h5", *args)
    assert result.exit_code == 2 and pattern in result.stderr


def open_inputs_on_workers():
    from mixup_cli.engines import dask as dask_engine

    return len(dask_engine._READERS)


def test_workers_close_their_inputs_when_the_run_ends(scheduler, tmp_path):
    import distributed

    x, y = make_arrays(n=30)
    src = write_npz(tmp_path / "in.npz", compressed=True, x=x, y=y)  # inflated to a temporary file per worker
    local = augment(AugmentRequest(src, tmp_path / "local.h5", seed=2, block_rows=8))
    remote = augment(
        AugmentRequest(src, tmp_path / "dask.h5", seed=2, block_rows=8, engine="dask", scheduler=scheduler)
    )
    assert_same_bytes(load_any(local.output), load_any(remote.output))
    with distributed.Client(scheduler, set_as_default=False) as client:
        assert set(client.run(open_inputs_on_workers).values()) == {0}


def test_workers_read_a_zarr_input(scheduler, tmp_path):
    import zarr

    x, y = make_arrays(n=50, x_shape=(3, 3))
    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w-")
    root.create_array("x", data=x, chunks=(7, 3, 3))
    root.create_array("y", data=y, chunks=(50, 5))
    src = tmp_path / "in.zarr"
    local = augment(AugmentRequest(src, tmp_path / "local.zarr", seed=9, block_rows=16, copies=2))
    remote = augment(
        AugmentRequest(
            src,
            tmp_path / "dask.zarr",
            seed=9,
            block_rows=16,
            copies=2,
            engine="dask",
            scheduler=scheduler,
            compression="zstd",
        )
    )
    assert_same_bytes(load_any(local.output), load_any(remote.output))


@pytest.mark.parametrize(
    "extra",
    [
        ("--pairing", "within-class", "--num-classes", 4, "--label-smoothing", 0.1),
        ("--method", "cutmix", "--y-format", "pair"),
        ("--pairing", "between-class", "--groups", "g"),
        ("--groups", "g", "--method", "cutmix"),
    ],
)
def test_dask_gives_the_local_bytes_for_labels_classes_and_cutmix(scheduler, tmp_path, run_mixup, extra):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (70, 6, 6, 3), dtype=np.uint8)
    src = write_h5(tmp_path / "in.h5", x=x, y=rng.integers(0, 4, 70), g=rng.integers(0, 7, 70))
    args = COMMON + extra + ("-q",)
    local = run_in_process("augment", src, tmp_path / "local.h5", *args)
    assert local.returncode == 0, local.stderr
    remote = run_mixup("augment", src, tmp_path / "dask.zarr", *args, "--engine", "dask", "--scheduler", scheduler)
    assert remote.returncode == 0, remote.stderr
    with h5py.File(tmp_path / "local.h5", "r") as f:
        keys = tuple(f.keys())
    assert_same_bytes(load_any(tmp_path / "local.h5", keys), load_any(tmp_path / "dask.zarr", keys))
    local_rec, dask_rec = read_sidecar(tmp_path / "local.h5"), read_sidecar(tmp_path / "dask.zarr")
    assert local_rec["parameters"] == dask_rec["parameters"]
    assert local_rec["output"]["arrays"] == dask_rec["output"]["arrays"]


def test_tasks_already_written_are_not_computed_again(scheduler, dataset):
    """What --resume relies on: skipped tasks reach neither the workers nor the writer."""
    from mixup_cli.engines import dask as dask_engine
    from mixup_cli.record import digests
    from mixup_cli.run.planner import build_plan, output_specs
    from mixup_cli.run.source import open_source

    src, _, _ = dataset
    request = AugmentRequest(src, src.with_name("unused.h5"), seed=11, block_rows=16, copies=2)
    source = open_source(src, "x", "y", request.data_options())
    try:
        plan = build_plan(source, **request.plan_parameters())
        tasks = list(plan.tasks())
        skip = frozenset(range(0, len(tasks), 2))

        class Recorder:
            def __init__(self):
                self.rows = {}

            def parallel_target(self):
                return None

            def write(self, key, start, data):
                self.rows.setdefault(key, set()).update(range(start, start + len(data)))

        writer, done = Recorder(), []
        found = digests.BlockDigests.for_plan(plan, output_specs(source, plan))
        dask_engine.run(
            source,
            plan,
            writer,
            plan.tasks(),
            Progress(),
            scheduler=scheduler,
            block_digests=found,
            skip=skip,
            on_done=done.append,
        )
    finally:
        source.reader.close()
    assert sorted(done) == [i for i in range(len(tasks)) if i not in skip]
    expected = {r for i in done for r in range(tasks[i].out_start, tasks[i].out_start + tasks[i].stop - tasks[i].start)}
    assert writer.rows["x"] == expected
    assert sorted(found.done) == sorted(tasks[i].out_start for i in done)


def test_tasks_that_are_parts_of_blocks_give_the_rows_and_digests_of_whole_blocks(scheduler, dataset):
    """The engine protocol on Dask: a list of sub-range tasks (in any order of
    arrival) writes the rows, and records the block digests, of whole blocks."""
    from mixup_cli.engines import dask as dask_engine
    from mixup_cli.mixing.sampling import Task
    from mixup_cli.record import digests
    from mixup_cli.run.planner import build_plan, output_specs
    from mixup_cli.run.source import open_source

    src, _, _ = dataset
    source = open_source(src, "x", "y")
    try:
        plan = build_plan(source, alpha=0.3, seed=4, block_rows=16, copies=2, include_original=True)
        specs = output_specs(source, plan)
        parts = []
        for t in plan.tasks():
            mid = t.start + (t.stop - t.start) // 3
            parts += [
                Task(t.copy, t.block, t.partner_block, t.start, mid, t.out_start),
                Task(t.copy, t.block, t.partner_block, mid, t.stop, t.out_start + mid - t.start),
            ]
        found = []
        arrays = []
        for tasks in (plan.tasks(), parts):

            class Collect:
                def __init__(self):
                    self.arrays = {k: np.zeros(s.shape, s.dtype) for k, s in specs.items()}

                def parallel_target(self):
                    return None

                def write(self, key, start, data):
                    self.arrays[key][start : start + len(data)] = data

            writer = Collect()
            block_digests = digests.BlockDigests.for_plan(plan, specs)
            dask_engine.run(source, plan, writer, tasks, Progress(), scheduler=scheduler, block_digests=block_digests)
            found.append(block_digests.arrays())
            arrays.append(writer.arrays)
    finally:
        source.reader.close()
    assert found[0] == found[1]
    for key in specs:
        assert arrays[0][key].tobytes() == arrays[1][key].tobytes(), key


def test_an_image_folder_gives_the_local_bytes(scheduler, tmp_path, run_mixup):
    """Workers open the folder with the client's image options (size, files left out)."""
    pytest.importorskip("PIL")
    from test_io_images import make_folder

    files, _ = make_folder(tmp_path / "train", per_class=6, sizes=[(20, 12), (9, 17)])
    files[4].write_bytes(b"not an image")
    args = ("--seed", "5", "--image-size", "10x6", "--skip-bad-images", "--block-rows", "4")
    local = run_mixup("augment", tmp_path / "train", tmp_path / "local.zarr", *args)
    assert local.returncode == 0, local.stderr
    remote = run_mixup(
        "augment", tmp_path / "train", tmp_path / "dask.zarr", *args, "--engine", "dask", "--scheduler", scheduler
    )
    assert remote.returncode == 0, remote.stderr
    a, b = load_output(tmp_path / "local.zarr"), load_output(tmp_path / "dask.zarr")
    assert len(a["x"]) == len(files) - 1
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_dask_gives_the_local_bytes_with_held_out_rows(scheduler, tmp_path, run_mixup):
    rng = np.random.default_rng(3)
    src = write_h5(
        tmp_path / "in.h5", x=rng.standard_normal((70, 4)), y=rng.integers(0, 3, 70), g=rng.integers(0, 5, 70)
    )
    (tmp_path / "held.txt").write_text("0\n17\n40\n69\n")
    args = COMMON + ("--exclude-rows", tmp_path / "held.txt", "--pairing", "within-class", "--groups", "g", "-q")
    local = run_in_process("augment", src, tmp_path / "local.h5", *args)
    assert local.returncode == 0, local.stderr
    remote = run_mixup("augment", src, tmp_path / "dask.h5", *args, "--engine", "dask", "--scheduler", scheduler)
    assert remote.returncode == 0, remote.stderr
    keys = ("x", "y", "lam", "partner", "own", "group")
    assert_same_bytes(load_any(tmp_path / "local.h5", keys), load_any(tmp_path / "dask.h5", keys))
