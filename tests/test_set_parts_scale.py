"""A ``--shard`` part reads only what it needs of a set: partner rows read
by index never cross from one input into another (``gather.take``), and a
part reuses the layout a previous part recorded in OUTDIR
(``sets/layout_record.py``) instead of opening every input again. Inputs
are real HDF5 files written with h5py; outputs are compared byte for byte
with a run on a fresh OUTDIR and with the single-file run on the
concatenation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, examples, load_output, mixup_executable, write_h5, write_npz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixup_cli
from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.core.errors import InputError, OutputError
from mixup_cli.run import gather
from mixup_cli.sets import ConcatReader, check_outdir_contents, identity, inspect_inputs, layout_record
from mixup_cli.sets.identity import remove_stale

RECORD = layout_record.RECORD


def _inputs(folder: Path, sizes, x_shape=(4,), seed=0, classes=3):
    """HDF5 inputs of the given sizes (float32 x, integer y) and one file of their concatenation."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.random((n,) + tuple(x_shape), dtype=np.float32)
    y = rng.integers(0, classes, n)
    folder.mkdir(parents=True, exist_ok=True)
    paths, at = [], 0
    for k, size in enumerate(sizes):
        paths.append(write_h5(folder / f"s-{k:04d}.h5", x=x[at : at + size], y=y[at : at + size]))
        at += size
    whole = write_h5(folder.parent / f"{folder.name}-whole.h5", x=x, y=y)
    return paths, whole


def _bytes(output: Path) -> dict[str, bytes]:
    return {key: value.tobytes() for key, value in load_output(output).items()}


# --- A: gather never reads across inputs -------------------------------------


def test_ranges_are_cut_at_the_inputs_bounds():
    rows = np.arange(0, 40, dtype=np.int64)
    assert gather.ranges(rows, 8) == [(0, 40)]
    bounds = np.array([0, 10, 13, 40], dtype=np.int64)
    # 10:13 holds three rows, fewer than a run: read by take
    assert gather.ranges(rows, 8, bounds) == [(0, 10), (13, 40)]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    row_shape=st.sampled_from([(), (1,), (3,), (2, 5)]),
    dtype=st.sampled_from(["<f4", "<i8", "|u1"]),
    data=st.data(),
)
def test_take_from_a_set_is_the_readers_take(tmp_path_factory, sizes, row_shape, dtype, data):
    """Rows picked anywhere in a set of inputs (tiny rows included, where a
    range would span thousands of rows): the bytes ``reader.take`` gives,
    and no range passes an input's bound."""
    folder = tmp_path_factory.mktemp("take")
    n = sum(sizes)
    values = (np.arange(n * int(np.prod(row_shape, dtype=np.int64))) % 251).astype(dtype).reshape((n,) + row_shape)
    paths, at = [], 0
    for k, size in enumerate(sizes):
        paths.append(write_h5(folder / f"p{k}.h5", x=values[at : at + size], y=np.zeros(size, np.int64)))
        at += size
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n))), dtype=np.int64)
    layout = inspect_inputs(paths, "x", "y")
    with ConcatReader(layout) as reader:
        want = reader.take("x", rows)
        got = gather.take(reader, "x", rows)
        out = np.empty((len(rows) + 2,) + row_shape, dtype)
        into = gather.take(reader, "x", rows, out)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes() == values[rows].tobytes()
    assert into.tobytes() == want.tobytes()
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    bounds = layout.offsets
    for first, stop in gather.ranges(rows, row_bytes, bounds) or []:
        owner = np.searchsorted(bounds, rows[first:stop], side="right")
        assert (owner == owner[0]).all()


def test_a_take_of_a_few_rows_opens_only_their_inputs(tmp_path):
    paths, _ = _inputs(tmp_path / "in", (20,) * 200, x_shape=(8,))
    layout = inspect_inputs(paths, "x", "y")
    rows = np.array([45, 46, 47, 48, 49, 50, 51, 52, 53, 3001, 3002, 3003, 3004, 3990], dtype=np.int64)
    with ConcatReader(layout, max_open=500) as reader:
        got = gather.take(reader, "y", rows)
        assert got.tobytes() == reader.take("y", rows).tobytes()
        assert reader.opened == 3  # inputs 2, 150 and 199: none between them
    with ConcatReader(layout, max_open=500) as reader:
        gather.take(reader, "x", rows)
        assert reader.opened == 3


# --- B and C: a part reuses the recorded layout ------------------------------


@pytest.fixture
def inspections(monkeypatch):
    """How many times the parts checked every input (``inspect_inputs``)."""
    calls = []
    real = layout_record.inspect_inputs
    monkeypatch.setattr(layout_record, "inspect_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


SIZES40 = (10,) * 40


def test_a_part_after_the_record_opens_only_the_inputs_it_reads(tmp_path, counted_opens, inspections):
    paths, whole = _inputs(tmp_path / "in", SIZES40)
    out = tmp_path / "out"
    mixup_cli.augment(paths, out, seed=1, shard="0/40")  # no OUTDIR yet: nothing recorded
    assert not (out / RECORD).exists()
    mixup_cli.augment(paths, out, seed=1, shard="1/40")  # the manifest is there: records the layout
    assert (out / RECORD).is_file() and len(inspections) == 2
    counted_opens.opened.clear()
    mixup_cli.augment(paths, out, seed=1, shard="7/40", progress=counted_opens)
    assert len(inspections) == 2  # the record was used
    assert counted_opens.before_run == []  # no input opened before the run
    # its own input, and those holding its 10 partner rows (global pairing over 400 rows)
    assert str(paths[7]) in counted_opens.opened and len(set(counted_opens.opened)) <= 11
    # byte for byte a part on a fresh OUTDIR, and the single-file run's rows
    fresh = tmp_path / "fresh"
    mixup_cli.augment(paths, fresh, seed=1, shard="7/40")
    assert _bytes(out / paths[7].name) == _bytes(fresh / paths[7].name)
    augment(AugmentRequest(whole, tmp_path / "single.h5", seed=1, command_line=[]))
    single = load_output(tmp_path / "single.h5")
    got = load_output(out / paths[7].name)
    assert set(got) == set(single)
    for key, want in single.items():
        assert got[key].tobytes() == want[70:80].tobytes(), key
    sidecar = json.loads((out / f"{paths[7].name}.provenance.json").read_text())
    assert sidecar["parameters"]["targets"]["classes"] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(pairing="within-class", copies=2), dict(y_kind="classes", block_rows=16)])
def test_every_part_with_the_record_is_the_whole_runs(tmp_path, options):
    sizes = (7, 12, 3, 30, 9, 1, 18)
    paths, _ = _inputs(tmp_path / "in", sizes)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    mixup_cli.augment(paths, whole, seed=4, **options)
    for i in range(len(sizes)):
        mixup_cli.augment(paths, parts, seed=4, shard=f"{i}/{len(sizes)}", **options)
    assert (parts / RECORD).is_file()
    for p in paths:
        assert _bytes(whole / p.name) == _bytes(parts / p.name)


@pytest.mark.parametrize(
    "dtype, text",
    [
        (np.float32, "<f4"),
        (">i2", ">i2"),
        (np.bool_, "|b1"),
        ("S7", "|S7"),
        ("<U3", "<U3"),
        (object, "|O"),
        (h5py.string_dtype(), None),  # h5py's strings carry metadata the text would lose
        (h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"), None),
        ("(2,)<f4", None),
        ([("a", "<f4")], None),
    ],
)
def test_dtypes_recorded_are_given_back_exactly(dtype, text):
    assert layout_record._dtype_text(np.dtype(dtype)) == text
    if text is not None:
        assert layout_record._DTYPE.fullmatch(text) and np.dtype(text) == np.dtype(dtype)


def test_npz_inputs_are_recorded_too(tmp_path, inspections):
    h5, _ = _inputs(tmp_path / "in", (8, 5, 11, 6))
    paths = []
    for k, path in enumerate(h5):  # every other input as .npz (compressed: inflated to scratch files)
        if k % 2:
            data = load_output(path)
            path.unlink()
            path = write_npz(path.with_suffix(".npz"), compressed=True, x=data["x"], y=data["y"])
        paths.append(path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    mixup_cli.augment(paths, whole, seed=5)
    for i in range(4):
        mixup_cli.augment(paths, parts, seed=5, shard=f"{i}/4")
    assert len(inspections) == 1 + 2  # the whole run, parts 0 and 1; parts 2 and 3 used the record
    assert [entry["format"] for entry in json.loads((parts / RECORD).read_text())["inputs"]] == [
        "hdf5",
        "npz",
        "hdf5",
        "npz",
    ]
    for p in paths:
        assert _bytes(whole / p.name) == _bytes(parts / p.name)


def _two_outdirs(tmp_path, paths):
    """OUTDIR after parts 0 and 1 (the layout recorded), and a copy without the record."""
    out = tmp_path / "out"
    for i in (0, 1):
        mixup_cli.augment(paths, out, seed=1, shard=f"{i}/{len(paths)}")
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / RECORD).unlink()
    return out, bare


def _outcome(paths, outdir, shard):
    try:
        mixup_cli.augment(paths, outdir, seed=1, shard=shard)
    except (InputError, OutputError) as exc:
        return type(exc).__name__, str(exc).replace(str(outdir), "OUTDIR")
    return "done", sorted(p.name for p in outdir.iterdir() if p.name != RECORD)


@pytest.mark.parametrize("change", ["rows", "touch", "same-size"])
def test_a_changed_input_is_checked_again_as_without_a_record(tmp_path, inspections, change):
    paths, _ = _inputs(tmp_path / "in", (10,) * 6)
    out, bare = _two_outdirs(tmp_path, paths)
    before = json.loads((out / RECORD).read_text())
    target = paths[3]
    if change == "rows":
        rng = np.random.default_rng(9)
        write_h5(target, x=rng.random((13, 4), dtype=np.float32), y=rng.integers(0, 3, 13))
    elif change == "touch":
        st = os.stat(target)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    else:  # the same bytes but one, same size and mtime: another inode (written beside, renamed)
        st = os.stat(target)
        data = bytearray(target.read_bytes())
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(bytes(data))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, target)
    calls = len(inspections)
    assert _outcome(paths, out, "2/6") == _outcome(paths, bare, "2/6")
    assert len(inspections) == calls + 2  # both checked every input
    if change != "rows":  # the part ran: the record now holds the input as it is
        after = json.loads((out / RECORD).read_text())
        assert after["inputs"][3]["mtime_ns"] == os.stat(target).st_mtime_ns
        assert after["inputs"][3]["ino"] == os.stat(target).st_ino
        assert after != before


def _inspect(paths, outdir, **options):
    """``inspect_recorded`` with the options ``mixup_cli.augment`` passes by default."""
    return layout_record.inspect_recorded(paths, outdir=outdir, **{"require_y": False, "y_kind": "auto", **options})


def _mutations():
    def set_in(path, value):
        def change(record):
            at = record
            for key in path[:-1]:
                at = at[key]
            at[path[-1]] = value
            return record

        return change

    return {
        "garbage": b"\x00\xffnot json",
        "truncated": None,
        "empty": b"",
        "a list": b"[1, 2, 3]",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "no version": set_in(["mixup_set_layout"], None),
        "version as text": set_in(["mixup_set_layout"], "1"),
        "version true": set_in(["mixup_set_layout"], True),
        "another mixup-cli": set_in(["mixup_cli"], "0.0.1"),
        "another outdir": set_in(["outdir"], "/elsewhere"),
        "another option": set_in(["options", "x_key"], "z"),
        "require_y as 0": set_in(["options", "require_y"], 0),
        "rows as text": set_in(["inputs", 2, "rows"], "10"),
        "rows negative": set_in(["inputs", 2, "rows"], -10),
        "rows float": set_in(["inputs", 2, "rows"], 10.0),
        "rows huge": set_in(["inputs", 2, "rows"], 1 << 70),
        "offset wrong": set_in(["inputs", 2, "offset"], 21),
        "size other": set_in(["inputs", 1, "size"], 1),
        "path other": set_in(["inputs", 1, "path"], "/etc/passwd"),
        "format other": set_in(["inputs", 1, "format"], "images"),
        "extra field": set_in(["inputs", 1, "extra"], 1),
        "dtype void": set_in(["inputs", 1, "specs", "x", "dtype"], "|V16"),
        "dtype subarray": set_in(["inputs", 1, "specs", "x", "dtype"], "(2,)<f4"),
        "dtype other": set_in(["inputs", 1, "specs", "x", "dtype"], "<f8"),
        "dtype code": set_in(["inputs", 1, "specs", "x", "dtype"], "__import__('os')"),
        "shape rows": set_in(["inputs", 1, "specs", "x", "shape"], [11, 4]),
        "shape row": set_in(["inputs", 1, "specs", "x", "shape"], [10, 5]),
        "shape text": set_in(["inputs", 1, "specs", "x", "shape"], "10,4"),
        "keys other": set_in(["keys"], ["x", "z"]),
        "shared": set_in(["shared"], ["y/categories"]),
        "classes unsorted": set_in(["classes"], [2, 1, 0]),
        "classes negative": set_in(["classes"], [-1, 0, 1]),
        "classes text": set_in(["classes"], "012"),
        "classes none found": set_in(["classes"], []),
        "classes key": set_in(["classes_key"], "x"),
        "class names": set_in(["class_names"], [1, 2]),
        "inputs short": lambda record: dict(record, inputs=record["inputs"][:-1]),
        "too large": b" " * (layout_record._limit(6) + 1),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_malformed_record_is_ignored(tmp_path, inspections, name):
    paths, _ = _inputs(tmp_path / "in", (10,) * 6)
    out, _ = _two_outdirs(tmp_path, paths)
    good = _inspect(paths, out)
    assert len(inspections) == 2  # the record matches: used as it is
    text = (out / RECORD).read_bytes()
    mutation = MUTATIONS[name]
    if mutation is None:
        planted = text[: len(text) // 2]
    elif isinstance(mutation, bytes):
        planted = mutation
    else:
        planted = json.dumps(mutation(json.loads(text))).encode()
    (out / RECORD).write_bytes(planted)
    layout = _inspect(paths, out)
    assert len(inspections) == 3  # ignored: every input checked
    assert layout == good
    assert (out / RECORD).read_bytes() == text  # and written again as it was


def test_a_record_the_run_does_not_match_is_not_used(tmp_path, inspections):
    paths, _ = _inputs(tmp_path / "in", (10,) * 6)
    out, _ = _two_outdirs(tmp_path, paths)
    n = len(inspections)
    for call in (
        dict(y_kind=None),  # another y kind looked for
        dict(require_y=True),
        dict(groups="y"),
    ):
        _inspect(paths, out, **call)
        n += 1
        assert len(inspections) == n
    _inspect(paths[::-1], out)  # another list
    _inspect(paths[:-1], out)
    assert len(inspections) == n + 2
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # a record of another OUTDIR
    _inspect(paths, moved)
    assert len(inspections) == n + 3


def test_a_link_at_the_records_name_is_neither_read_nor_written_through(tmp_path, inspections):
    paths, _ = _inputs(tmp_path / "in", (10,) * 6)
    out, _ = _two_outdirs(tmp_path, paths)
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(out / RECORD, elsewhere)  # a valid record, but reached through a link
    before = elsewhere.read_bytes()
    (out / RECORD).unlink()
    (out / RECORD).symlink_to(elsewhere)
    n = len(inspections)
    mixup_cli.augment(paths, out, seed=1, shard="4/6")
    assert len(inspections) == n + 1  # not read as the record
    assert elsewhere.read_bytes() == before  # not written through
    assert not (out / RECORD).is_symlink() and (out / RECORD).is_file()  # the link itself replaced
    assert json.loads((out / RECORD).read_text())["inputs"][0]["path"] == str(paths[0])


def test_a_folder_or_fifo_at_the_records_name_is_ignored(tmp_path, inspections):
    paths, _ = _inputs(tmp_path / "in", (10,) * 4)
    out, _ = _two_outdirs(tmp_path, paths)
    (out / RECORD).unlink()
    os.mkfifo(out / RECORD)  # a read would wait for a writer forever
    _inspect(paths, out)
    (out / RECORD).unlink()
    (out / RECORD).mkdir()
    _inspect(paths, out)
    assert (out / RECORD).is_dir()  # left as it is: not written
    assert len(inspections) == 2 + 2


def _manifest_of(paths, out: Path) -> None:
    """OUTDIR's manifest as a part of the set of ``paths`` writes it (records are written only beside one)."""
    layout = inspect_inputs(paths, "x", "y")
    identity.write_manifest(out, identity.manifest(layout, "0" * 64, {}, [out / p.name for p in paths]))


def test_folders_and_linked_files_are_not_recorded(tmp_path, inspections):
    paths, _ = _inputs(tmp_path / "in", (10,) * 3)
    folder = tmp_path / "in" / "d"  # a directory of .npy files
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((5, 4), np.float32))
    np.save(folder / "y.npy", np.zeros(5, np.int64))
    out = tmp_path / "out"
    out.mkdir()
    _manifest_of([*paths, folder], out)
    layout_record.inspect_recorded([*paths, folder], outdir=out)
    assert not (out / RECORD).exists()
    linked = tmp_path / "in" / "linked.h5"  # an HDF5 file whose x is a virtual dataset of another's
    with h5py.File(linked, "w") as f:
        vds = h5py.VirtualLayout(shape=(10, 4), dtype=np.float32)
        vds[:] = h5py.VirtualSource(str(paths[0]), "x", shape=(10, 4))
        f.create_virtual_dataset("x", vds)
        f["y"] = np.zeros(10, np.int64)
    _manifest_of([*paths[1:], linked], out)
    layout_record.inspect_recorded([*paths[1:], linked], outdir=out)
    assert not (out / RECORD).exists()
    layout_record.inspect_recorded(paths, outdir=out)  # the manifest is another list's
    assert not (out / RECORD).exists()
    _manifest_of(paths, out)
    layout_record.inspect_recorded(paths, outdir=out)
    assert (out / RECORD).is_file()


def test_the_record_is_left_by_outdir_checks_status_and_verify(tmp_path):
    paths, _ = _inputs(tmp_path / "in", (6, 9, 4))
    out = tmp_path / "out"
    for i in range(3):
        mixup_cli.augment(paths, out, seed=2, shard=f"{i}/3")
    assert (out / RECORD).is_file()
    remove_stale(out)
    assert (out / RECORD).is_file()
    sid = identity.read_manifest(out)["set_id"]
    assert check_outdir_contents(out, [out / p.name for p in paths], sid) == {0, 1, 2}
    assert identity.set_status(out).complete
    report = mixup_cli.verify(out)
    assert report.ok, report
    summary = mixup_cli.augment(paths, out, seed=2, shard="1/3", resume=True)  # complete: nothing to do
    assert summary is not None


def test_a_stale_staged_record_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f"{identity.SET_PREFIX}layout.{os.uname().nodename}.999999999{identity.STAGE_SUFFIX}"
    dead.write_text("{}")
    remove_stale(out)
    assert not dead.exists()


@pytest.mark.slow
def test_two_parts_at_once_both_record_the_same_layout(tmp_path):
    paths, _ = _inputs(tmp_path / "in", (10,) * 8)
    out = tmp_path / "out"
    mixup_cli.augment(paths, out, seed=1, shard="0/8")
    assert not (out / RECORD).exists()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen(
            mixup_executable() + ["augment", *map(str, paths), str(out), "--seed", "1", "--shard", f"{i}/8", "-q"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    record = (out / RECORD).read_bytes()
    assert not [p for p in out.iterdir() if p.name.endswith(identity.STAGE_SUFFIX)]
    # what one part alone records
    (out / RECORD).unlink()
    _inspect(paths, out)
    assert (out / RECORD).read_bytes() == record
    whole = tmp_path / "whole"
    mixup_cli.augment(paths, whole, seed=1)
    for p in paths[:3]:
        assert _bytes(whole / p.name) == _bytes(out / p.name)


def test_an_input_changed_after_the_check_is_refused_in_words(tmp_path):
    paths, _ = _inputs(tmp_path / "in", (10, 10, 10))
    layout = inspect_inputs(paths, "x", "y")
    rng = np.random.default_rng(1)
    write_h5(paths[1], x=rng.random((12, 4), dtype=np.float32), y=rng.integers(0, 3, 12))
    with ConcatReader(layout) as reader:
        reader.read("x", 0, 10)
        with pytest.raises(InputError) as caught:
            reader.read("x", 5, 15)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{paths[1]}: has 12 rows of 'x', not the 10 it had when the set's inputs were checked")
    assert "changed while the set was being written" in message and "run the part again" in message
    write_h5(paths[2], x=rng.random((10, 5), dtype=np.float32), y=rng.integers(0, 3, 10))
    with ConcatReader(layout) as reader, pytest.raises(InputError, match=r"has rows of shape \(5,\) in 'x'"):
        reader.take("x", np.array([25]))
    write_h5(paths[0], x=rng.random((10, 4)), y=rng.integers(0, 3, 10))
    with ConcatReader(layout) as reader, pytest.raises(InputError, match="has 'x' as float64, not float32"):
        reader.read("x", 0, 1)


def test_a_record_lying_about_an_input_is_refused_when_the_input_is_read(tmp_path):
    """Defence in depth: a record that passes every check but holds another
    row count than the file (stats copied) is caught as the input is opened."""
    paths, _ = _inputs(tmp_path / "in", (10,) * 4)
    out, _ = _two_outdirs(tmp_path, paths)
    record = json.loads((out / RECORD).read_text())
    out = tmp_path / "lied"  # the manifest would refuse the set the record makes (its rows): none here
    out.mkdir()
    record["outdir"] = str(out.resolve())
    record["inputs"][2]["rows"] = 9
    record["inputs"][2]["specs"]["x"]["shape"][0] = 9
    record["inputs"][2]["specs"]["y"]["shape"][0] = 9
    record["inputs"][3]["offset"] = 29
    (out / RECORD).write_text(json.dumps(record))
    with pytest.raises(InputError, match="changed while the set was being written"):
        mixup_cli.augment(paths, out, seed=1, shard="2/4")
