"""The output arrays' SHA-256 in the sidecar: computed as rows stream, equal
to a digest recomputed here from the written file, whatever the format,
batch size, pairing or block order."""

import hashlib
import importlib
import json

import numpy as np
import pytest
from conftest import examples, make_arrays, read_sidecar, write_h5
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.commands.pipeline import AugmentRequest, augment
from mixup_cli.io import open_reader
from mixup_cli.mixing.sampling import Plan
from mixup_cli.record import digests, provenance


def read_all(path) -> dict[str, np.ndarray]:
    with open_reader(path) as reader:
        return {key: reader.read(key, 0, reader.spec(key).rows) for key in reader.keys()}


def recorded(out) -> dict[str, str]:
    return {key: a["sha256"] for key, a in read_sidecar(out)["output"]["arrays"].items()}


def digest_by_hand(array: np.ndarray, segment_rows: int, block_rows: int) -> str:
    """The documented scheme, written out with hashlib alone."""
    outer = hashlib.sha256()
    for base in range(0, len(array), segment_rows):
        for b in range(0, segment_rows, block_rows):
            rows = array[base + b : base + min(b + block_rows, segment_rows)]
            outer.update(hashlib.sha256(np.ascontiguousarray(rows).tobytes()).digest())
    return outer.hexdigest()


@settings(max_examples=examples(60), deadline=None)
@given(
    n_rows=st.integers(1, 60),
    block_rows=st.integers(1, 70),
    copies=st.integers(1, 3),
    include_original=st.booleans(),
    pairing=st.sampled_from(["global", "batch"]),
)
def test_blocks_are_the_plans_tasks_in_row_order(n_rows, block_rows, copies, include_original, pairing):
    plan = Plan(
        seed=1,
        alpha=0.2,
        n_rows=n_rows,
        block_rows=block_rows,
        pairing=pairing,
        copies=copies,
        include_original=include_original,
    )
    tasks = sorted((t.out_start, t.out_start + t.stop - t.start) for t in plan.tasks())
    segments = copies + int(include_original)
    assert digests.block_bounds(n_rows, block_rows, segments) == tasks
    assert digests.BlockDigests.for_plan(plan, ["x"]).bounds == tasks
    assert tasks[-1][1] == plan.output_rows


@pytest.mark.slow
@pytest.mark.parametrize("out_name", ["out.h5", "out.npz", "out", "out.zarr"])
@pytest.mark.parametrize("pairing", ["global", "within-class"])
def test_recorded_digests_match_the_written_arrays(tmp_path, out_name, pairing):
    if out_name.endswith(".zarr"):
        pytest.importorskip("zarr")
    x, y = make_arrays(n=45, x_shape=(5, 3))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / out_name
    augment(
        AugmentRequest(
            src,
            out,
            seed=3,
            block_rows=8,
            batch_size=3,
            copies=2,
            include_original=True,
            pairing=pairing,
            command_line=[],
        )
    )
    record = read_sidecar(out)["output"]
    assert record["array_sha256"] == {"scheme": digests.SCHEME, "block_rows": 8, "segment_rows": 45}
    data = read_all(out)
    assert set(recorded(out)) == set(data) == {"x", "y", "lam", "partner"}
    for key, array in data.items():
        assert recorded(out)[key] == digest_by_hand(array, 45, 8), key


def test_digests_do_not_depend_on_format_or_batch_size(tmp_path):
    x, y = make_arrays(n=70, x_shape=(4, 4))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    found = []
    for name, batch in (("a.h5", 1), ("b.h5", 1000), ("c.npz", 7), ("d", 13)):
        augment(AugmentRequest(src, tmp_path / name, seed=5, block_rows=16, batch_size=batch, command_line=[]))
        found.append(recorded(tmp_path / name))
    assert all(f == found[0] for f in found)
    # and they say something: another seed, other digests
    augment(AugmentRequest(src, tmp_path / "e.h5", seed=6, block_rows=16, command_line=[]))
    assert recorded(tmp_path / "e.h5")["x"] != found[0]["x"]


def test_block_hasher_refuses_rows_that_break_its_blocks():
    blocks = digests.BlockDigests(digests.block_bounds(10, 4, 1), ["x", "lam"])
    hasher = digests.BlockHasher(blocks)
    with pytest.raises(ValueError, match="cross the block 0:4"):
        hasher.update(2, {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="out of order"):
        hasher.update(5, {"x": np.zeros(1)})
    x, lam = np.arange(10, dtype=np.float64), np.linspace(0, 1, 10)
    for start, stop in digests.block_bounds(10, 4, 1):
        hasher.update(start, {"x": x[start : start + 1]})  # a block in two pieces
        hasher.update(start + 1, {"x": x[start + 1 : stop]})
        assert start not in blocks.done  # lam of this block has not come yet
        hasher.update(start, {"lam": lam[start:stop]})
        assert start in blocks.done
    assert blocks.missing() == []
    assert blocks.arrays() == {"x": digest_by_hand(x, 10, 4), "lam": digest_by_hand(lam, 10, 4)}


def test_an_unfinished_block_is_reported_not_guessed():
    blocks = digests.BlockDigests(digests.block_bounds(10, 4, 1), ["x"], done={0: {"x": "00" * 32}})
    with pytest.raises(RuntimeError, match="no digest for output rows 4:8 \\(2 blocks\\)"):
        blocks.arrays()


def test_big_endian_rows_hash_as_their_little_endian_values():
    values = np.arange(6, dtype=np.float32)
    assert digests.of_rows({"v": values.astype(">f4")}) == digests.of_rows({"v": values})


def test_verify_with_hash_files_checks_the_files_too(tmp_path, run_cli):
    x, y = make_arrays(n=40)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.npz"
    result = run_cli("augment", src, out, "--seed", 2, "--hash-files", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "sha256" in read_sidecar(out)["output"]["files"][0]
    assert "size and SHA-256 as recorded" in run_cli("verify", out).stdout
    data = dict(np.load(out))
    data["lam"][3] = 0.5
    np.savez(out, **data)
    report = json.loads(run_cli("verify", out, "--json").stdout)
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert set(failed) == {"output files", "output data", "recompute"}
    assert failed["output data"].startswith("'lam': SHA-256")


def test_a_sidecar_without_array_digests_still_verifies(tmp_path, run_cli):
    """Sidecars of schema 1 recorded file hashes only: verify checks those."""
    x, y = make_arrays(n=30)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--seed", 2, "--hash-files", "--quiet").exit_code == 0
    path = tmp_path / "out.h5.provenance.json"
    record = json.loads(path.read_text())
    record["schema_version"] = 1
    del record["output"]["array_sha256"]
    for entry in record["output"]["arrays"].values():
        del entry["sha256"]
    path.write_text(json.dumps(record))
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout
    assert "output data" not in result.stdout and "size and SHA-256 as recorded" in result.stdout


@pytest.mark.parametrize("size", [0, 1, provenance._MAPPED_WINDOW, 2 * provenance._MAPPED_WINDOW + 3])
def test_file_sha256_is_that_of_its_bytes(tmp_path, size):
    """Files are hashed a mapped window at a time (bounded RSS): the result is the plain SHA-256."""
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    assert provenance.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_hashes_the_output_as_it_recomputes_and_without_the_input_too(tmp_path, run_cli, monkeypatch):
    verify = importlib.import_module("mixup_cli.verify")  # the module: the package's name is the public function
    from mixup_cli.io import hdf5

    x, y = make_arrays(n=40)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.h5"
    assert run_cli("augment", src, out, "--seed", 2, "--block-rows", 8, "--quiet").exit_code == 0
    rows_read = {"n": 0}
    real_read = hdf5.Reader.read

    def counting_read(self, key, start, stop):
        if self.path == out:
            rows_read["n"] += stop - start
        return real_read(self, key, start, stop)

    monkeypatch.setattr(hdf5.Reader, "read", counting_read)
    report = verify.verify(out)
    names = [c.name for c in report.checks]
    assert report.ok and names == ["output files", "output data", "input files", "recompute", "law"]
    # every row of the four arrays, once; the law check reads partner and lam again (16 bytes a row)
    assert rows_read["n"] == 40 * 4 + 40 * 2

    # A digest edited in the sidecar: the data check fails, the recomputation still matches.
    path = tmp_path / "out.h5.provenance.json"
    record = json.loads(path.read_text())
    record["output"]["arrays"]["partner"]["sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    failed = {c.name for c in verify.verify(out).checks if not c.ok}
    assert failed == {"output data"}

    # Without the input, the arrays are read back and hashed all the same.
    src.rename(tmp_path / "moved.h5")
    rows_read["n"] = 0
    checks = {c.name: c for c in verify.verify(out).checks}
    assert not checks["output data"].ok and "'partner': SHA-256 " in checks["output data"].detail
    assert "skipped" in checks["recompute"].detail and rows_read["n"] == 40 * 4 + 40 * 2
