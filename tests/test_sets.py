"""Sharded sets, phase 1 (mixup_cli.sets): input lists, --shard parts, the
inputs' agreement checks, ConcatReader, per-output task restriction, the
set's identity and OUTDIR, and a proof that per-output computation from the
ConcatReader gives the single-file run's rows on the concatenated input."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import examples, make_arrays, write_h5, write_npy_dir, write_npz
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.commands import pipeline
from mixup_cli.commands.pipeline import AugmentRequest, augment, open_source
from mixup_cli.core.errors import InputError, OutputError, ParameterError
from mixup_cli.engines import local
from mixup_cli.mixing.sampling import Plan
from mixup_cli.record import provenance
from mixup_cli.run.planner import build_plan
from mixup_cli.run.tasks import compute_task
from mixup_cli.sets import (
    ConcatReader,
    Part,
    check_outdir,
    check_outdir_contents,
    check_part_seed,
    check_plan,
    check_storage_options,
    collect_inputs,
    from_single,
    inputs_state,
    inspect_inputs,
    is_set_form,
    locate_rows,
    output_paths,
    output_rows,
    parse_shard,
    part_of,
    read_section,
    restrict,
    section,
    set_id,
    set_status,
    split,
    task_slice,
    to_single,
    whole_task,
)

SIZES = (37, 5, 64, 1, 29)  # unequal, boundaries off any power-of-two block


def _shards(tmp_path, sizes=SIZES, fmt="h5", x_shape=(4, 3), seed=0, **kw):
    x, y = make_arrays(sum(sizes), x_shape=x_shape, seed=seed)
    folder = tmp_path / "shards"
    folder.mkdir(exist_ok=True)
    paths, at = [], 0
    for k, n in enumerate(sizes):
        part = {"x": x[at : at + n], "y": y[at : at + n]}
        at += n
        paths.append(_write(folder / f"part-{k:04d}", fmt if isinstance(fmt, str) else fmt[k % len(fmt)], part, **kw))
    return paths, x, y


def _write(stem: Path, fmt: str, arrays: dict, **kw) -> Path:
    if fmt == "h5":
        return write_h5(stem.with_suffix(".h5"), **arrays)
    if fmt == "h5gz":
        path = stem.with_suffix(".h5")
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, chunks=(min(4, len(value)),) + value.shape[1:], compression="gzip")
        return path
    if fmt == "npz":
        return write_npz(stem.with_suffix(".npz"), **arrays)
    if fmt == "npzc":
        return write_npz(stem.with_suffix(".npz"), compressed=True, **arrays)
    if fmt == "npy":
        return write_npy_dir(stem, **arrays)
    if fmt == "zarr":
        import zarr

        path = stem.with_suffix(".zarr")
        group = zarr.open_group(str(path), mode="w")
        for key, value in arrays.items():
            group.create_array(key, data=value, chunks=(7,) + value.shape[1:])
        return path
    raise AssertionError(fmt)


# --- inputs and --shard --------------------------------------------------------


def test_inputs_from_a_list_file_relative_to_its_folder(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "shards.txt"
    listing.write_text("# shards of run 3\n\n  a/part-0.h5  \nb #1.h5\n#part-9.h5\n/abs/part-2.h5\n")
    got = collect_inputs(["first.h5"], listing)
    assert got == [Path("first.h5"), lists / "a/part-0.h5", lists / "b #1.h5", Path("/abs/part-2.h5")]


def test_inputs_from_stdin_relative_to_the_current_directory():
    got = collect_inputs([], "-", stdin=io.StringIO("x/p0.h5\n\n# c\nx/p1.h5\n"))
    assert got == [Path("x/p0.h5"), Path("x/p1.h5")]


def test_inputs_from_a_missing_or_empty_list(tmp_path):
    with pytest.raises(ParameterError, match=r"--inputs-from .*nope.txt: no such file") as err:
        collect_inputs([], tmp_path / "nope.txt")
    assert err.value.option == "--inputs-from"
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ParameterError, match="lists none"):
        collect_inputs([], tmp_path / "empty.txt")
    with pytest.raises(ParameterError, match="is a directory"):
        collect_inputs([], tmp_path)


@pytest.mark.slow
def test_many_inputs_from_a_list_file(tmp_path):
    listing = tmp_path / "many.txt"
    listing.write_text("".join(f"shards/part-{k:05d}.h5\n" for k in range(20000)))
    got = collect_inputs([], listing)
    assert len(got) == 20000 and got[-1] == tmp_path / "shards/part-19999.h5"


@pytest.mark.parametrize("text, part", [("0/1", (0, 1)), ("2/3", (2, 3)), (" 7 / 10 ", (7, 10)), (None, (0, 1))])
def test_shard_parses(text, part):
    got = parse_shard(text)
    assert (got.index, got.count) == part


@pytest.mark.parametrize(
    "text, says",
    [
        ("3/3", "I must be below N"),
        ("-1/2", "I/N"),
        ("0/0", "at least 1"),
        ("a/b", "I/N"),
        ("1", "I/N"),
        ("1/2/3", "I/N"),
        ("", "I/N"),
        ("1.0/2", "I/N"),
    ],
)
def test_shard_refuses(text, says):
    with pytest.raises(ParameterError, match=says) as err:
        parse_shard(text)
    assert err.value.option == "--shard" and err.value.exit_code == 2


def _slurm(task, low=0, high=15, count=16, step="1"):
    env = {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


@pytest.mark.parametrize(
    "text, env, part",
    [
        ("slurm", _slurm(3), (3, 16)),  # --array=0-15
        ("slurm", _slurm(0), (0, 16)),
        ("slurm", _slurm(15), (15, 16)),
        ("SLURM", _slurm(15, step=None), (15, 16)),  # no step variable: step 1
        ("slurm", _slurm(1, low=1, high=16), (0, 16)),  # --array=1-16: I relative to MIN
        ("slurm", _slurm(16, low=1, high=16), (15, 16)),
        ("slurm", _slurm(30, low=0, high=30, step=2), (15, 16)),  # --array=0-30:2: the 16th index
        ("slurm", _slurm(7, low=5, high=11, count=4, step=2), (1, 4)),  # --array=5-11:2
        ("slurm", _slurm(4, low=4, high=4, count=1), (0, 1)),  # an array of one task
        ("k8s/16", {"JOB_COMPLETION_INDEX": "5"}, (5, 16)),
        ("kubernetes/4", {"JOB_COMPLETION_INDEX": "3"}, (3, 4)),
        (" K8s/ 2 ", {"JOB_COMPLETION_INDEX": "0"}, (0, 2)),
        ("2/3", {"JOB_COMPLETION_INDEX": "0", **_slurm(1)}, (2, 3)),  # I/N never reads the variables
    ],
)
def test_shard_from_the_scheduler(text, env, part):
    got = parse_shard(text, env)
    assert (got.index, got.count) == part and got == Part(*part)  # recorded as I/N is
    assert str(got) == f"{part[0]}/{part[1]}" and got.to_dict() == {"index": part[0], "count": part[1]}


@pytest.mark.parametrize(
    "text, env, says",
    [
        ("slurm", {}, "--shard slurm: SLURM_ARRAY_TASK_ID is not set; run it as a task of a Slurm job array"),
        (
            "slurm",
            {k: v for k, v in _slurm(3).items() if k != "SLURM_ARRAY_TASK_COUNT"},
            "SLURM_ARRAY_TASK_COUNT is not set",
        ),
        ("slurm", {**_slurm(3), "SLURM_ARRAY_TASK_MIN": ""}, "SLURM_ARRAY_TASK_MIN is not set"),
        (
            "slurm",
            {**_slurm(3), "SLURM_ARRAY_TASK_MAX": "15x"},
            "SLURM_ARRAY_TASK_MAX='15x' is not a non-negative integer",
        ),
        ("slurm", {**_slurm(3), "SLURM_ARRAY_TASK_ID": "-3"}, "SLURM_ARRAY_TASK_ID='-3' is not a non-negative integer"),
        ("slurm", {**_slurm(3), "SLURM_ARRAY_TASK_STEP": "two"}, "SLURM_ARRAY_TASK_STEP='two'"),
        ("slurm", _slurm(3, low=1, high=7, count=3), "the job array is not a range of indices"),  # --array=1,3,7
        ("slurm", _slurm(3, step=0), "the job array is not a range of indices"),
        ("slurm", _slurm(3, low=0, high=30, step=2), "SLURM_ARRAY_TASK_ID=3 is not an index of the job array 0-30:2"),
        ("slurm", _slurm(16), "SLURM_ARRAY_TASK_ID=16 is not an index of the job array 0-15:1"),
        ("slurm", _slurm(0, low=1, high=16), "SLURM_ARRAY_TASK_ID=0 is not an index"),
        ("slurm/16", _slurm(3), "slurm takes N from SLURM_ARRAY_TASK_COUNT; write --shard slurm"),
        ("k8s", {"JOB_COMPLETION_INDEX": "0"}, "--shard k8s needs N, the Job's spec.completions: write --shard k8s/N"),
        ("kubernetes", {"JOB_COMPLETION_INDEX": "0"}, "write --shard kubernetes/N"),
        ("k8s/0", {"JOB_COMPLETION_INDEX": "0"}, "got k8s/0"),
        ("k8s/x", {"JOB_COMPLETION_INDEX": "0"}, "got k8s/x"),
        (
            "k8s/4",
            {},
            "--shard k8s/4: JOB_COMPLETION_INDEX is not set; run it in a Kubernetes Job with completionMode: Indexed",
        ),
        ("k8s/4", {"JOB_COMPLETION_INDEX": " "}, "JOB_COMPLETION_INDEX is not set"),
        ("k8s/4", {"JOB_COMPLETION_INDEX": "1.0"}, "JOB_COMPLETION_INDEX='1.0' is not a non-negative integer"),
        (
            "k8s/4",
            {"JOB_COMPLETION_INDEX": "4"},
            "JOB_COMPLETION_INDEX=4 is not below N=4; make N the Job's spec.completions",
        ),
        ("pbs", {}, "--shard must be I/N with integers 0 <= I < N (e.g. 0/4), slurm"),
    ],
)
def test_shard_from_the_scheduler_refuses(text, env, says):
    with pytest.raises(ParameterError) as err:
        parse_shard(text, env)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert err.value.option == "--shard" and err.value.exit_code == 2


def test_shard_reads_the_process_environment(monkeypatch):
    for name, value in _slurm(2, low=1, high=4, count=4).items():
        monkeypatch.setenv(name, value)
    assert parse_shard("slurm") == Part(1, 4)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ParameterError, match="SLURM_ARRAY_TASK_ID is not set"):
        parse_shard("slurm")


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(1, 60), st.integers(1, 80))
def test_parts_cover_every_output_once_in_order(n_outputs, count):
    parts = [Part(i, count).outputs(n_outputs) for i in range(count)]
    flat = [k for r in parts for k in r]
    assert flat == list(range(n_outputs))
    sizes = [len(r) for r in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced
    if count > n_outputs:
        assert sizes.count(0) == count - n_outputs
    for k in range(n_outputs):
        assert k in Part(part_of(k, n_outputs, count), count).outputs(n_outputs)


def test_which_command_lines_name_a_set():
    assert is_set_form(2)
    assert is_set_form(1, inputs_from="list.txt")
    assert is_set_form(1, shard="0/2")
    assert not is_set_form(1)  # one input: one output, OUT's trailing slash or not


def test_parts_need_a_seed():
    check_part_seed(Part(0, 1), None)
    check_part_seed(Part(1, 4), 7)
    with pytest.raises(ParameterError, match=r"--shard 1/4 needs --seed"):
        check_part_seed(Part(1, 4), None)
    with pytest.raises(ParameterError, match=r"--shard slurm \(part 1/4\) needs --seed"):
        check_part_seed(parse_shard("slurm", _slurm(2, low=1, high=4, count=4)), None)


# --- ConcatReader ------------------------------------------------------------


def _raw(path: Path, key: str) -> np.ndarray:
    """An input's array read with its own library (never through mixup_cli)."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return f[key][()]
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_group(str(path), mode="r")[key][...]
    return np.load(path / f"{key}.npy", allow_pickle=False)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "h5gz", "npz", "npzc", "npy", "zarr", ("h5", "npz", "npy", "zarr", "h5gz")])
def test_concat_reader_reads_the_concatenation(tmp_path, fmt):
    paths, _, _ = _shards(tmp_path, fmt=fmt)
    layout = inspect_inputs(paths)
    assert layout.n_rows == sum(SIZES) and [s.rows for s in layout.shards] == list(SIZES)
    want = {key: np.concatenate([_raw(p, key) for p in paths]) for key in ("x", "y")}
    rng = np.random.default_rng(1)
    with ConcatReader(layout, max_open=2) as reader:
        assert reader.keys() == ["x", "y"] and reader.spec("x").shape == want["x"].shape
        for start, stop in [(0, 136), (30, 45), (37, 42), (41, 42), (42, 106), (100, 136), (5, 5), (0, 37)]:
            for key in ("x", "y"):
                got = reader.read(key, start, stop)
                assert got.dtype == want[key].dtype
                np.testing.assert_array_equal(got, want[key][start:stop])
                buf = np.full((stop - start + 3,) + want[key].shape[1:], -7, dtype=want[key].dtype)
                reader.read_into(key, start, stop, buf)
                np.testing.assert_array_equal(buf[: stop - start], want[key][start:stop])
                assert (buf[stop - start :] == -7).all()  # nothing written past the rows asked for
        rows = rng.integers(0, layout.n_rows, 300)
        rows[:3] = [135, 0, 135]  # unsorted, repeated, both ends
        for key in ("x", "y"):
            np.testing.assert_array_equal(reader.take(key, rows), want[key][rows])
            ordered = np.sort(rows)  # sorted, with repeats: partners' order, read without reordering
            np.testing.assert_array_equal(reader.take(key, ordered), want[key][ordered])
        assert reader.open_count <= 2
        assert reader.take("x", np.array([], dtype=np.int64)).shape == (0, 4, 3)
        with pytest.raises(IndexError):
            reader.read("x", 130, 137)
    assert reader.open_count == 0


def test_concat_reader_keeps_few_readers_open(tmp_path):
    sizes = (3,) * 40
    paths, x, _ = _shards(tmp_path, sizes=sizes)
    layout = inspect_inputs(paths)
    with ConcatReader(layout, max_open=3) as reader:
        np.testing.assert_array_equal(reader.read("x", 0, 120), x)
        assert reader.open_count == 3 and reader.opened == 40
        np.testing.assert_array_equal(reader.read("x", 114, 120), x[114:])  # the last inputs: still open
        assert reader.opened == 40
        fds = len(os.listdir("/proc/self/fd"))
        reader.take("x", np.arange(0, 120, 7))
        assert len(os.listdir("/proc/self/fd")) <= fds + 3
        assert [p.name for p in reader.files()] == [p.name for p in paths]
        copy = pickle.loads(pickle.dumps(reader))  # for another process: the layout, no open file
        assert copy.open_count == 0
        np.testing.assert_array_equal(copy.read("x", 50, 70), x[50:70])
        copy.close()


def test_string_labels_of_different_storage_are_named_over_the_whole_set(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    a = write_npz(folder / "a.npz", x=x[:4], y=np.array(["cat", "dog", "cat", "dog"]))  # <U3
    with h5py.File(folder / "b.h5", "w") as f:  # variable-length UTF-8, a class only this shard has
        f["x"] = x[4:]
        f.create_dataset("y", data=["zebra", "cat", "ant", "zebra", "dog", "cat"], dtype=h5py.string_dtype())
    layout = inspect_inputs([a, folder / "b.h5"])
    source = _set_source(layout, AugmentRequest(a, tmp_path / "o", y_format="soft"))
    assert source.prepared.class_names == ["ant", "cat", "dog", "zebra"]
    y = source.reader.read("y", 0, 10)
    names = np.array(["ant", "cat", "dog", "zebra"])
    assert list(names[y.argmax(1)]) == ["cat", "dog", "cat", "dog", "zebra", "cat", "ant", "zebra", "dog", "cat"]


# --- agreement checks --------------------------------------------------------


def _pair(tmp_path, second: dict, first: dict | None = None, suffix=".h5"):
    x, y = make_arrays(10)
    first = first or {"x": x, "y": y}
    a = write_h5(tmp_path / "a.h5", **first)
    b = write_h5(tmp_path / f"b{suffix}", **second) if suffix == ".h5" else write_npz(tmp_path / "b.npz", **second)
    return a, b, x, y


@pytest.mark.parametrize(
    "second, says",
    [
        (
            lambda x, y: {"x": x[:, :2], "y": y},
            r"b.h5: array 'x' has rows of shape \(2, 3\), but .*a.h5's are \(4, 3\)",
        ),
        (lambda x, y: {"x": x.astype(np.float64), "y": y}, r"b.h5: array 'x' is float64, but .*a.h5's is float32"),
        (lambda x, y: {"x": x, "y": y[:, :3]}, r"b.h5: array 'y' has rows of shape \(3,\)"),
        (lambda x, y: {"x": x}, r"b.h5: no array 'y'"),
        (lambda x, y: {"x": x[:0], "y": y[:0]}, r"b.h5: 'x' has zero rows; remove it from the set's inputs"),
        (lambda x, y: {"x": x, "y": y[:9]}, r"b.h5: 'x' has 10 rows but 'y' has 9"),
        (lambda x, y: {"x": x.astype(np.complex64), "y": y}, r"b.h5: array 'x' has dtype complex64"),
    ],
)
def test_inputs_that_disagree_are_refused_by_name(tmp_path, second, says):
    x, y = make_arrays(10)
    a = write_h5(tmp_path / "a.h5", x=x, y=y)
    b = write_h5(tmp_path / "b.h5", **second(x, y))
    with pytest.raises(InputError, match=says) as err:
        inspect_inputs([a, b])
    assert "\n" not in str(err.value) and err.value.exit_code == 1


def test_y_in_some_inputs_only(tmp_path):
    x, y = make_arrays(10)
    a = write_h5(tmp_path / "a.h5", x=x)
    b = write_h5(tmp_path / "b.h5", x=x, y=y)
    assert inspect_inputs([a, tmp_path / "a.h5"][:1], require_y=False).keys == ("x",)
    with pytest.raises(InputError, match=r"b.h5: has an array 'y', which .*a.h5 lacks"):
        inspect_inputs([a, b], require_y=False)
    with pytest.raises(InputError, match=r"a.h5: has no array 'y', which .*b.h5 has"):
        inspect_inputs([b, a], require_y=False)


def test_the_same_file_twice(tmp_path):
    x, y = make_arrays(10)
    a = write_h5(tmp_path / "a.h5", x=x, y=y)
    os.link(a, tmp_path / "hard.h5")
    os.symlink(a, tmp_path / "sym.h5")
    for again in (a, tmp_path / "hard.h5", tmp_path / "sym.h5", tmp_path / "." / "a.h5"):
        with pytest.raises(
            ParameterError, match=rf"{again.name}: is given twice \(input 1, .*a.h5, is the same file\)"
        ):
            inspect_inputs([a, again])


def test_an_input_inside_outdir_and_an_outdir_that_is_a_file(tmp_path):
    x, y = make_arrays(10)
    out = tmp_path / "out"
    out.mkdir()
    a = write_h5(tmp_path / "a.h5", x=x, y=y)
    inside = write_h5(out / "b.h5", x=x, y=y)
    with pytest.raises(ParameterError, match=r"b.h5: is inside the output directory"):
        inspect_inputs([a, inside], outdir=out)
    d = write_npy_dir(tmp_path / "d", x=x, y=y)
    with pytest.raises(ParameterError, match=r"d: is inside the output directory"):
        inspect_inputs([a, d], outdir=d)
    with pytest.raises(ParameterError, match=r"out: is inside the input .*d; choose another OUTDIR"):
        inspect_inputs([a, d], outdir=d / "out")
    with pytest.raises(OutputError, match=r"a.h5: is a file, not a directory"):
        check_outdir(a)
    with pytest.raises(OutputError, match="does not exist"):
        check_outdir(tmp_path / "no" / "such")
    check_outdir(out)
    check_outdir(tmp_path / "new")  # the caller creates it


def test_an_input_reaching_outdir_through_a_link_is_refused(tmp_path):
    """Inputs are placed by their real paths: a link to a file in OUTDIR, or
    a linked folder that is OUTDIR, after inputs of the same folder."""
    x, y = make_arrays(10)
    out = tmp_path / "out"
    out.mkdir()
    folder = tmp_path / "in"
    folder.mkdir()
    a = write_h5(folder / "a.h5", x=x, y=y)
    (folder / "b.h5").symlink_to(write_h5(out / "b.h5", x=x, y=y))
    with pytest.raises(ParameterError, match=r"in/b.h5: is inside the output directory"):
        inspect_inputs([a, folder / "b.h5"], outdir=out)
    (tmp_path / "linked").symlink_to(out)
    with pytest.raises(ParameterError, match=r"linked/b.h5: is inside the output directory"):
        inspect_inputs([a, tmp_path / "linked" / "b.h5"], outdir=out)
    with pytest.raises(ParameterError, match=r"in/\.\./out/b.h5: is inside the output directory"):
        inspect_inputs([a, folder / ".." / "out" / "b.h5"], outdir=out)


def test_anndata_categories_must_agree(tmp_path):
    def h5ad(path, codes, cats):
        with h5py.File(path, "w") as f:
            f["x"] = np.ones((len(codes), 2), np.float32)
            f["obs/cell/codes"] = np.array(codes, np.int8)
            f.create_dataset("obs/cell/categories", data=cats, dtype=h5py.string_dtype())
        return path

    a = h5ad(tmp_path / "a.h5", [0, 1, 1], ["B", "T"])
    b = h5ad(tmp_path / "b.h5", [1, 0], ["B", "T"])
    c = h5ad(tmp_path / "c.h5", [0, 0], ["B", "NK"])
    layout = inspect_inputs([a, b], y_key="obs/cell")
    assert layout.keys == ("x", "obs/cell/codes") and layout.shared == ("obs/cell/categories",)
    source = _set_source(layout, AugmentRequest(a, tmp_path / "o", y_key="obs/cell"))
    assert source.prepared.class_names == ["B", "T"]
    np.testing.assert_array_equal(source.reader.read("obs/cell", 0, 5).argmax(1), [0, 1, 1, 1, 0])
    with pytest.raises(InputError, match=r"c.h5: array 'obs/cell/categories' differs from .*a.h5's"):
        inspect_inputs([a, c], y_key="obs/cell")


def test_output_names(tmp_path):
    out = tmp_path / "o"
    assert output_paths([Path("s/a.h5"), Path("s/b.npz"), Path("s/c.zarr"), Path("s/d")], out) == [
        out / "a.h5",
        out / "b.npz",
        out / "c.zarr",
        out / "d",
    ]
    with pytest.raises(ParameterError, match=r"t/a.h5: has the same name as s/a.h5"):
        output_paths([Path("s/a.h5"), Path("t/a.h5")], out)
    with pytest.raises(ParameterError, match=r"s/a.h5ad: its output .*a.h5ad would have no output format"):
        output_paths([Path("s/a.h5ad")], out)


def test_storage_options_checked_against_every_output_format(tmp_path):
    mixed = [tmp_path / "a.h5", tmp_path / "b.zarr"]
    check_storage_options(mixed, "gzip", 64, chunk_rows=16)
    with pytest.raises(ParameterError, match=r"a.h5: --zarr-format applies to Zarr output"):
        check_storage_options(mixed, "none", 64, zarr_format=2)
    with pytest.raises(ParameterError, match=r"b.zarr: --compression lzf is not available for zarr"):
        check_storage_options(mixed, "lzf", 64)
    with pytest.raises(ParameterError, match=r"c.npz: --chunk-rows applies to HDF5 and Zarr"):
        check_storage_options(mixed + [tmp_path / "c.npz"], "none", 64, chunk_rows=16)


def test_row_errors_name_the_input_and_its_row(tmp_path):
    x, y = make_arrays(sum(SIZES))
    x[37 + 5 + 20, 1, 2] = np.nan  # input 2, its row 20
    labels = np.arange(sum(SIZES)) % 3
    labels[37 + 3] = -1  # input 1, its row 3
    folder = tmp_path / "s"
    folder.mkdir()
    paths, at = [], 0
    for k, n in enumerate(SIZES):
        paths.append(write_h5(folder / f"p{k}.h5", x=x[at : at + n], y=labels[at : at + n]))
        at += n
    layout = inspect_inputs(paths)
    source = _set_source(layout, AugmentRequest(paths[0], tmp_path / "o", y_kind="dense"))
    with pytest.raises(InputError) as err:
        source.reader.read("x", 32, 80)
    assert str(err.value).startswith(f"{paths[0]} (and 4 more inputs of the set): 'x' row 62 holds NaN")
    told = locate_rows(err.value, layout)
    assert type(told) is InputError
    assert str(told).startswith(f"{paths[2]}: 'x' row 20 (row 62 of the set) holds NaN or Inf")
    with pytest.raises(InputError) as err:
        _set_source(layout, AugmentRequest(paths[0], tmp_path / "o", pairing="within-class"))
    assert f"{paths[1]}: 'y' row 3 (row 40 of the set) has label -1" in str(locate_rows(err.value, layout))
    other = ParameterError("--alpha must be > 0", "--alpha")
    assert locate_rows(other, layout) is other


# --- restriction to one output -------------------------------------------------


@settings(max_examples=examples(150), deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=7),
    block_rows=st.integers(1, 50),
    copies=st.integers(1, 3),
    include_original=st.booleans(),
    pairing=st.sampled_from(["global", "batch"]),
)
def test_restricted_tasks_cover_the_single_file_output_once(sizes, block_rows, copies, include_original, pairing):
    n = sum(sizes)
    plan = Plan(
        n_rows=n,
        alpha=0.2,
        seed=3,
        block_rows=block_rows,
        pairing=pairing,
        copies=copies,
        include_original=include_original,
    )
    offsets = np.cumsum([0] + sizes)
    covered = np.zeros(plan.output_rows, dtype=np.int64)
    tasks = list(plan.tasks())
    for k, size in enumerate(sizes):
        local_seen = np.zeros(output_rows(plan, size), dtype=np.int64)
        prev_index = -1
        for task in restrict(tasks, plan, int(offsets[k]), size):
            assert offsets[k] <= task.start < task.stop <= offsets[k] + size
            whole = whole_task(plan, task)
            index = tasks.index(whole)  # the plan's own task, same copy/block/partner block
            assert index > prev_index  # in the plan's order
            prev_index = index
            sl = task_slice(plan, task)
            assert sl.stop - sl.start == task.stop - task.start and whole.start + sl.start == task.start
            for j in range(task.stop - task.start):
                local = task.out_start + j
                local_seen[local] += 1
                single = to_single(plan, int(offsets[k]), size, local)
                assert single == whole.out_start + sl.start + j  # the row the single-file run writes there
                assert from_single(plan, offsets, single) == (k, local)
                covered[single] += 1
        assert (local_seen == 1).all()  # each output's rows written once, none left out
    assert (covered == 1).all()
    for count in (1, 2, len(sizes) + 2):  # a part's outputs in one pass: what restrict gives each
        for i in range(count):
            part = Part(i, count).outputs(len(sizes))
            got = split(iter(tasks), plan, offsets, part)
            assert sorted(got) == list(part)
            for k in part:
                assert got[k] == list(restrict(tasks, plan, int(offsets[k]), sizes[k]))


def test_a_balanced_plan_cannot_be_split_by_input(tmp_path):
    paths, _, _ = _shards(tmp_path)
    request = AugmentRequest(paths[0], tmp_path / "o", seed=1, balance=True, command_line=[])
    plan = build_plan(_set_source(inspect_inputs(paths), request), **request.plan_parameters())
    with pytest.raises(ParameterError, match="--balance cannot split its output by input") as err:
        check_plan(plan)
    assert err.value.option == "--balance"
    check_plan(Plan(n_rows=10, alpha=0.2, seed=1, block_rows=4))


# --- identity, sidecar section, OUTDIR -----------------------------------------


def _decides(seed=7):
    return {"plan": Plan(n_rows=136, alpha=0.2, seed=seed, block_rows=16).to_dict(), "x_dtype": "keep"}


def test_set_id_depends_on_inputs_order_rows_and_plan(tmp_path):
    paths, _, _ = _shards(tmp_path)
    layout = inspect_inputs(paths)
    sid = set_id(layout, _decides())
    assert sid == set_id(inspect_inputs(paths), _decides())  # another part computes the same
    assert len(sid) == 64
    assert set_id(layout, _decides(seed=8)) != sid
    assert set_id(inspect_inputs(paths[::-1]), _decides()) != sid
    assert set_id(inspect_inputs(paths[:-1]), _decides()) != sid
    # The folder they sit in does not matter: the names and rows do.
    moved = tmp_path / "moved"
    (tmp_path / "shards").rename(moved)
    assert set_id(inspect_inputs([moved / p.name for p in paths]), _decides()) == sid


def test_inputs_state_follows_the_inputs_files(tmp_path):
    paths, x, y = _shards(tmp_path)
    layout = inspect_inputs(paths)
    before = inputs_state(layout)
    assert inputs_state(layout) == before
    os.utime(paths[3], ns=(1, 1))
    assert inputs_state(layout) != before


def _fake_output(outdir: Path, layout, k: int, part: Part, sid: str):
    """An output and its sidecar as a run of part ``part`` writes them."""
    out = outdir / layout.shards[k].path.name
    write_h5(out, x=np.zeros((layout.shards[k].rows, 1), np.float32))
    record = provenance.build(
        run_id="r",
        command_line=[],
        parameters={},
        execution={},
        input_entry={},
        output_entry={},
        started_at="",
        finished_at="",
        set_section=section(layout, k, part, sid),
    )
    provenance.sidecar_path(out).write_text(provenance.to_json(record))
    return out


def test_sidecar_section_round_trips(tmp_path):
    paths, _, _ = _shards(tmp_path)
    layout = inspect_inputs(paths)
    sid = set_id(layout, _decides())
    record = json.loads(
        provenance.to_json(
            provenance.build(
                run_id="r",
                command_line=[],
                parameters={},
                execution={},
                input_entry={},
                output_entry={},
                started_at="",
                finished_at="",
                set_section=section(layout, 2, Part(1, 3), sid),
            )
        )
    )
    got = read_section(record, "s")
    assert got["set_id"] == sid and got["index"] == 2 and got["outputs"] == 5 and got["rows"] == 136
    assert got["input"] | {"path": None} == {"name": "part-0002.h5", "rows": 64, "offset": 42, "path": None}
    assert got["part"] == {"index": 1, "count": 3}
    assert [e["rows"] for e in got["inputs"]] == list(SIZES)
    assert read_section({"schema_version": 2}, "s") is None  # a single output: no section
    record["set"]["index"] = 9
    with pytest.raises(InputError, match="'set' section is damaged"):
        read_section(record, "s")
    plain = provenance.build(
        run_id="r",
        command_line=[],
        parameters={},
        execution={},
        input_entry={},
        output_entry={},
        started_at="",
        finished_at="",
    )
    assert "set" not in plain  # other sidecars are as they were


def test_outdir_holds_only_this_sets_outputs(tmp_path):
    paths, _, _ = _shards(tmp_path)
    layout = inspect_inputs(paths)
    sid = set_id(layout, _decides())
    out = tmp_path / "out"
    outputs = output_paths(layout, out)
    assert check_outdir_contents(out, outputs, sid) == set()  # not there yet
    out.mkdir()
    assert check_outdir_contents(out, outputs, sid) == set()
    _fake_output(out, layout, 0, Part(0, 2), sid)
    _fake_output(out, layout, 1, Part(0, 2), sid)
    (out / ".part-0003.h5.mixup-partial").write_bytes(b"")
    (out / ".part-0003.h5.mixup-partial.journal.json").write_text("{}")
    assert check_outdir_contents(out, outputs, sid) == {0, 1}
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes.txt: is not an output of this set"):
        check_outdir_contents(out, outputs, sid)
    (out / "notes.txt").unlink()
    other = set_id(layout, _decides(seed=8))
    with pytest.raises(
        OutputError,
        match=rf"part-0000.h5: is not an output of this set \(its sidecar records set "
        rf"{sid[:12]}, this set is {other[:12]}\); .*--overwrite",
    ):
        check_outdir_contents(out, outputs, other)
    assert check_outdir_contents(out, outputs, other, overwrite=True) == set()
    single = write_h5(out / "part-0003.h5", x=np.zeros((1, 1)))  # a run on one input: a sidecar, no set
    provenance.sidecar_path(single).write_text(
        provenance.to_json(
            provenance.build(
                run_id="r",
                command_line=[],
                parameters={},
                execution={},
                input_entry={},
                output_entry={},
                started_at="",
                finished_at="",
            )
        )
    )
    with pytest.raises(
        OutputError,
        match=r"part-0003.h5: is not an output of this set \(its sidecar records no set\); "
        r".*--overwrite",
    ):
        check_outdir_contents(out, outputs, sid)
    assert check_outdir_contents(out, outputs, sid, overwrite=True) == {0, 1}
    write_h5(out / "part-0004.h5", x=np.zeros((1, 1)))  # no sidecar: written by something else
    with pytest.raises(
        OutputError,
        match=r"part-0004.h5: is not an output of this set \(it has no provenance sidecar\); "
        r"move it away, choose another OUTDIR$",
    ):
        check_outdir_contents(out, outputs, sid, overwrite=True)


def test_set_status_from_the_sidecars(tmp_path):
    paths, _, _ = _shards(tmp_path)
    layout = inspect_inputs(paths)
    sid = set_id(layout, _decides())
    out = tmp_path / "out"
    out.mkdir()
    assert set_status(out) is None
    for k in Part(0, 3).outputs(5):
        _fake_output(out, layout, k, Part(0, 3), sid)
    _fake_output(out, layout, 4, Part(2, 3), sid)  # part 2 of 3 writes outputs 3 and 4: one so far
    status = set_status(out)
    assert status.set_id == sid and status.outputs == 5 and status.rows == 136
    assert sorted(status.present) == [0, 4] and status.missing == [1, 2, 3] and not status.complete
    assert status.parts_done() == {(0, 3): True, (2, 3): False}
    _fake_output(out, layout, 3, Part(2, 3), sid)
    assert set_status(out).parts_done() == {(0, 3): True, (2, 3): True}
    for k in Part(1, 3).outputs(5):
        _fake_output(out, layout, k, Part(1, 3), sid)
    status = set_status(out)
    assert status.complete and status.parts_done()[(1, 3)]
    assert [e["name"] for e in status.inputs] == [p.name for p in paths]
    stranger = out / "part-0001.h5.provenance.json"
    record = json.loads(stranger.read_text())
    record["set"]["set_id"] = "f" * 64
    stranger.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"part-0001.h5.provenance.json: belongs to set ffffffffffff"):
        set_status(out)


# --- the proof: per-output rows from the ConcatReader equal the single-file run ----


def _set_source(layout, request: AugmentRequest):
    """pipeline.open_source over the set: the same checks and preparation as
    one input, on the ConcatReader passed in."""
    return open_source(
        layout.shards[0].path,
        request.x_key,
        request.y_key,
        request.data_options(),
        require_y=request.require_y,
        reader=ConcatReader(layout),
    )


def _replace_y(path: Path, y: np.ndarray) -> None:
    if path.suffix == ".h5":
        with h5py.File(path, "a") as f:
            del f["y"]
            f["y"] = y.astype("S") if y.dtype.kind == "U" else y
    elif path.suffix == ".npz":
        with np.load(path) as z:
            x = z["x"]
        write_npz(path, x=x, y=y)
    else:
        np.save(path / "y.npy", y)


def _set_outputs(layout, request: AugmentRequest) -> list[dict[str, np.ndarray]]:
    """Each output's arrays computed alone: for its restricted tasks, the
    whole block through tasks.compute_task, then the task's sub-range."""
    source = _set_source(layout, request)
    plan = build_plan(source, **request.plan_parameters())
    tasks = list(plan.tasks())
    results = []
    for shard in layout.shards:
        arrays: dict[str, np.ndarray] = {}
        written = np.zeros(output_rows(plan, shard.rows), dtype=bool)
        for task in restrict(tasks, plan, shard.offset, shard.rows):
            block = compute_task(source, plan, whole_task(plan, task))
            sl = task_slice(plan, task)
            for key, value in block.items():
                if key not in arrays:
                    arrays[key] = np.zeros((len(written),) + value.shape[1:], value.dtype)
                arrays[key][task.out_start : task.out_start + sl.stop - sl.start] = value[sl]
            written[task.out_start : task.out_start + sl.stop - sl.start] = True
        assert written.all()
        results.append(arrays)
    source.reader.close()
    return results


@pytest.mark.slow
@pytest.mark.parametrize(
    "pairing, method, copies, original, fmt, extra",
    [
        ("global", "mixup", 1, False, "h5", {}),
        ("global", "mixup", 2, True, ("h5", "npz", "npy"), {}),
        ("batch", "mixup", 1, False, "npz", {}),
        ("within-class", "mixup", 2, False, "h5gz", {}),
        ("between-class", "mixup", 1, True, "h5", {}),
        ("global", "cutmix", 1, False, "h5", {}),
        ("within-class", "cutmix", 2, False, "npy", {}),
        ("knn", "mixup", 1, False, "h5", {"neighbors": 3}),
        ("label-kernel", "mixup", 1, False, "h5", {"bandwidth": 0.5, "y": "dense"}),
        ("within-class", "mixup", 1, False, ("h5", "npz"), {"y": "names", "y_format": "pair"}),
    ],
)
def test_outputs_equal_the_single_file_run(tmp_path, pairing, method, copies, original, fmt, extra):
    extra = dict(extra)
    kind = extra.pop("y", None)
    x_shape = (6, 6, 3) if method == "cutmix" else (4, 3)
    paths, x, y = _shards(tmp_path, fmt=fmt, x_shape=x_shape)
    if kind is not None:  # y rewritten: regression targets, or class names as text
        y = x[:, 0, 0].astype(np.float64) if kind == "dense" else np.array(["ant", "bee", "cat"])[y.argmax(1) % 3]
        for path, part in zip(paths, np.split(y, np.cumsum(SIZES)[:-1])):
            _replace_y(path, part)
    whole = write_h5(tmp_path / "whole.h5", x=x, y=y.astype("S") if y.dtype.kind == "U" else y)
    common = dict(
        alpha=0.4,
        seed=11,
        block_rows=16,
        pairing=pairing,
        copies=copies,
        include_original=original,
        method=method,
        command_line=[],
        **extra,
    )
    augment(AugmentRequest(whole, tmp_path / "single.h5", **common))
    with h5py.File(tmp_path / "single.h5", "r") as f:
        single = {key: f[key][()] for key in f}
    layout = inspect_inputs(paths)
    outputs = _set_outputs(layout, AugmentRequest(paths[0], tmp_path / "unused", **common))
    n_segments = copies + int(original)
    assert set(outputs[0]) == set(single)
    for key, want in single.items():
        # Each segment's slices over the outputs, concatenated, are that segment of the single file.
        got = np.concatenate(
            [
                np.concatenate([out[key][seg * s.rows : (seg + 1) * s.rows] for out, s in zip(outputs, layout.shards)])
                for seg in range(n_segments)
            ]
        )
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes(), key
    if copies == 1 and not original:
        assert np.concatenate([o["x"] for o in outputs]).tobytes() == single["x"].tobytes()
    # Partners cross the shards: the set is paired as one dataset.
    partner_shard = np.searchsorted(layout.offsets, single["partner"], side="right") - 1
    own_shard = np.searchsorted(layout.offsets, np.tile(np.arange(layout.n_rows), n_segments), side="right") - 1
    if pairing != "batch":
        assert (partner_shard != own_shard).any()


class _MemoryWriter:
    """Rows as run_plan hands them over, kept in memory."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def write(self, key, start, data):
        if key not in self.arrays:
            self.arrays[key] = np.zeros((0,) + data.shape[1:], data.dtype)
        have = self.arrays[key]
        if len(have) < start + len(data):
            have = np.concatenate([have, np.zeros((start + len(data) - len(have),) + data.shape[1:], data.dtype)])
        have[start : start + len(data)] = data
        self.arrays[key] = have

    def flush(self):
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "pairing, fmt", [("global", "h5"), ("global", ("h5gz", "npzc", "zarr")), ("within-class", ("h5", "npz"))]
)
def test_the_engine_reads_a_set_as_the_concatenated_file(tmp_path, pairing, fmt):
    """The local engine over the ConcatReader (its block cache, raw and inflating
    reads, partners by index) writes the single-file run's bytes."""
    paths, x, y = _shards(tmp_path, fmt=fmt)
    whole = write_h5(tmp_path / "whole.h5", x=x, y=y)
    common = dict(alpha=0.3, seed=5, block_rows=32, pairing=pairing, copies=2, command_line=[])
    augment(AugmentRequest(whole, tmp_path / "single.h5", **common))
    request = AugmentRequest(paths[0], tmp_path / "unused", **common)
    source = _set_source(inspect_inputs(paths), request)
    plan = build_plan(source, **request.plan_parameters())
    writer = _MemoryWriter()
    local.run(source, plan, writer, plan.tasks(), pipeline.Progress(), batch_rows=7)
    source.reader.close()
    with h5py.File(tmp_path / "single.h5", "r") as f:
        for key in f:
            assert writer.arrays[key].tobytes() == f[key][()].tobytes(), key


# ---------------------------------------------------------------- brace patterns


def test_brace_patterns_expand_as_braceexpand_does():
    from mixup_cli.io.braces import braces

    assert braces("shard-{000..003}.tar") == [f"shard-{i:03d}.tar" for i in range(4)]
    assert braces("{train,val}-{0..4..2}.tar") == [f"{a}-{i}.tar" for a in ("train", "val") for i in (0, 2, 4)]
    assert braces("{a,{b,c}}{9..8}") == ["a9", "a8", "b9", "b8", "c9", "c8"]
    assert braces("{x..z}") == ["x", "y", "z"]
    assert braces("plain{}{a}\\{1,2\\}.tar") == ["plain{}{a}{1,2}.tar"]


def test_a_pattern_is_a_set_and_names_its_missing_paths(tmp_path):
    from mixup_cli.sets import collect_inputs, is_set_form

    for i in range(3):
        write_h5(tmp_path / f"p-{i}.h5", x=np.zeros((2, 1), np.float32))
    pattern = tmp_path / "p-{0..2}.h5"
    assert collect_inputs([pattern]) == [tmp_path / f"p-{i}.h5" for i in range(3)]
    assert is_set_form(1, first=pattern) and is_set_form(1, first=tmp_path / "p-{0..0}.h5")
    literal = tmp_path / "q-{0..1}.h5"  # a file named like a pattern is itself
    write_h5(literal, x=np.zeros((2, 1), np.float32))
    assert collect_inputs([literal]) == [literal] and not is_set_form(1, first=literal)
    with pytest.raises(InputError, match=r"p-\{0\.\.4\}\.h5: .*p-3\.h5 does not exist \(2 of the 5 paths"):
        collect_inputs([tmp_path / "p-{0..4}.h5"])
