"""The public API (``from mixup_cli import augment, verify, MixupDataset,
mix``): names and docs, a light import, and a round trip through real files
checked against the formula with h5py and numpy, never through the API itself."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, expected_mix, run_in_process, write_h5

import mixup_cli
from mixup_cli import InputError, MixupError, OutputError, ParameterError

N = 45


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, 3, 2)).astype(np.float32)
    labels = rng.integers(0, 4, N)
    return write_h5(tmp_path / "in.h5", x=x, y=labels), x, labels


def test_the_public_names_exist_and_are_documented():
    assert sorted(mixup_cli.__all__) == sorted(
        [
            "AugmentSummary",
            "InputError",
            "MixupDataset",
            "MixupError",
            "OutputError",
            "ParameterError",
            "StopToken",
            "__version__",
            "augment",
            "lineage",
            "mix",
            "verify",
        ]
    )
    for name in mixup_cli.__all__:
        value = getattr(mixup_cli, name)
        if name != "__version__":
            assert inspect.getdoc(value) and len(inspect.getdoc(value)) > 40, name
    assert all(issubclass(e, MixupError) for e in (InputError, OutputError, ParameterError))
    doc = mixup_cli.__doc__
    assert "internal" in doc and "may change" in doc
    assert all(name in doc for name in ("augment", "verify", "MixupDataset", "mix", "MixupError"))
    assert set(mixup_cli.__all__) <= set(dir(mixup_cli))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mixup_cli.nope  # noqa: B018


def test_verify_stays_the_function_after_its_module_is_imported():
    """``mixup_cli/verify/`` shares the name: importing it (as the command
    does) must not replace the public function on the package."""
    import importlib

    module = importlib.import_module("mixup_cli.verify")
    from mixup_cli import verify

    assert callable(verify) and verify is mixup_cli.verify and verify is not module
    assert "SetVerifyReport" in inspect.getdoc(verify)


def test_augment_takes_every_option_of_the_command_by_keyword():
    from mixup_cli.commands.request import AugmentRequest

    params = inspect.signature(mixup_cli.augment).parameters
    keywords = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    fields = {
        f.name: f.default
        for f in __import__("dataclasses").fields(AugmentRequest)
        # plan_version: older plans, for tests that write outputs of an earlier version
        if f.name not in ("input", "output", "command_line", "require_y", "plan_version")
    }
    assert keywords == dict(fields, shard=None, progress=None, stop=None)
    assert list(params)[:2] == ["input", "output"]


def test_import_is_light():
    """``import mixup_cli`` loads neither h5py, scikit-learn, click nor numpy."""
    code = "import json, sys, mixup_cli; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = {m.split(".")[0] for m in json.loads(done.stdout)}
    assert not loaded & {"h5py", "sklearn", "click", "numpy"}, loaded & {"h5py", "sklearn", "click", "numpy"}


class Recorder:
    """A progress object as augment() takes one: told the total, then rows as written."""

    def __init__(self):
        self.total, self.rows = None, 0

    def start(self, total):
        self.total = total

    def update(self, rows):
        self.rows += rows


def test_augment_then_verify_then_dataset_round_trip(tmp_path, source, capsys):
    src, x, labels = source
    out = tmp_path / "out.h5"
    progress = Recorder()
    done = mixup_cli.augment(src, out, alpha=0.4, seed=3, block_rows=16, progress=progress)
    assert progress.total == progress.rows == N
    assert isinstance(done, mixup_cli.AugmentSummary)
    assert done.output == out and done.written == (out,) and done.skipped == () and done.set_id is None
    assert (done.rows, done.seed) == (N, 3) and done.seconds > 0
    assert done.sidecars == (tmp_path / "out.h5.provenance.json",) and done.sidecars[0].is_file()
    assert json.loads(json.dumps(done.summary()))["written"] == [str(out)]

    report = mixup_cli.verify(out)
    assert report.ok and [c.name for c in report.checks] == [
        "output files",
        "output data",
        "input files",
        "recompute",
        "law",
    ]
    assert capsys.readouterr() == ("", "")  # neither function prints

    with h5py.File(out, "r") as f:
        stored = {k: f[k][()] for k in f}
    lam, partner = stored["lam"], stored["partner"]
    one_hot = np.eye(4, dtype=np.float32)[labels]
    np.testing.assert_array_equal(stored["x"], expected_mix(x, lam, partner))
    np.testing.assert_array_equal(stored["y"], expected_mix(one_hot, lam, partner))
    # mix() on the input with the output's own lam and partner: the output, bit for bit
    x_mixed, y_mixed = mixup_cli.mix(x, labels, lam, partner, num_classes=4)
    assert x_mixed.dtype == np.float32 and y_mixed.dtype == np.float32
    np.testing.assert_array_equal(x_mixed, stored["x"])
    np.testing.assert_array_equal(y_mixed, stored["y"])

    ds = mixup_cli.MixupDataset(out)
    assert len(ds) == N
    rows = ds[0:N]
    for name in ("x", "y", "lam", "partner"):
        np.testing.assert_array_equal(rows[name], stored[name])
    np.testing.assert_array_equal(ds[7]["x"], stored["x"][7])


def test_augment_writes_the_bytes_the_command_writes(tmp_path, source):
    src, _, _ = source
    by_api = mixup_cli.augment(
        src, tmp_path / "api.npz", alpha=0.3, seed=9, copies=2, include_original=True, label_smoothing=0.1
    )
    cli = run_in_process(
        "augment", src, tmp_path / "cli.npz", "--alpha", 0.3, "--seed", 9, "--copies", 2, "--include-original",
        "--label-smoothing", 0.1, "--quiet",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert by_api.rows == 3 * N
    with np.load(tmp_path / "api.npz") as a, np.load(tmp_path / "cli.npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["lam", "partner", "x", "y"]
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_numpy_scalars_are_taken_as_the_numbers_they_are(tmp_path, source):
    # Values computed with numpy (a seed from a generator, copies from an array) are common in scripts.
    src, _, _ = source
    done = mixup_cli.augment(
        src, tmp_path / "np.npz", alpha=np.float32(0.25), seed=np.int64(9), copies=np.int32(2), block_rows=np.int64(16)
    )
    mixup_cli.augment(src, tmp_path / "py.npz", alpha=0.25, seed=9, copies=2, block_rows=16)
    assert done.seed == 9 and type(done.seed) is int
    record = json.loads((tmp_path / "np.npz.provenance.json").read_text())
    assert record["parameters"]["copies"] == 2 and record["parameters"]["seed"] == 9
    with np.load(tmp_path / "np.npz") as a, np.load(tmp_path / "py.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    assert mixup_cli.verify(tmp_path / "np.npz").ok


def test_a_library_call_records_the_call_not_the_process_arguments(tmp_path, source):
    src, _, _ = source
    out = tmp_path / "out.npz"
    mixup_cli.augment(src, out, seed=4, copies=2, y_key=None)
    record = json.loads((tmp_path / "out.npz.provenance.json").read_text())
    assert record["command_line"] == [f"mixup_cli.augment({str(src)!r}, {str(out)!r}, seed=4, y_key=None, copies=2)"]
    sets = mixup_cli.augment(_shards(tmp_path), tmp_path / "set", seed=5, shard="1/2")
    first = json.loads(sets.sidecars[0].read_text())
    assert first["command_line"][0].startswith("mixup_cli.augment([") and "shard='1/2'" in first["command_line"][0]


def test_augment_without_y(tmp_path, source):
    src, x, _ = source
    out = tmp_path / "x-only.h5"
    mixup_cli.augment(src, out, seed=1, y_key=None)
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["lam", "partner", "x"]
        np.testing.assert_array_equal(f["x"][()], expected_mix(x, f["lam"][()], f["partner"][()]))


def test_a_named_y_that_is_missing_is_refused(tmp_path, source):
    src, _, _ = source
    with pytest.raises(InputError, match="labels"):
        mixup_cli.augment(src, tmp_path / "o.h5", seed=1, y_key="labels")
    assert not (tmp_path / "o.h5").exists()


def test_augment_refusals_raise_the_librarys_exceptions(tmp_path, source):
    src, _, _ = source
    with pytest.raises(ParameterError, match="--alpha must be a finite number > 0") as exc:
        mixup_cli.augment(src, tmp_path / "o.h5", alpha=-1)
    assert exc.value.option == "--alpha" and exc.value.exit_code == 2
    with pytest.raises(InputError, match="nope.h5"):
        mixup_cli.augment(tmp_path / "nope.h5", tmp_path / "o.h5")
    mixup_cli.augment(src, tmp_path / "o.h5", seed=1)
    with pytest.raises(OutputError, match="--overwrite"):
        mixup_cli.augment(src, tmp_path / "o.h5", seed=1)
    with pytest.raises(TypeError, match="alpah"):
        mixup_cli.augment(src, tmp_path / "p.h5", alpah=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "o.h5", "o.h5.provenance.json"]


def test_resume_on_a_finished_output_skips_it(tmp_path, source):
    src, _, _ = source
    mixup_cli.augment(src, tmp_path / "o.h5", seed=2)
    again = mixup_cli.augment(src, tmp_path / "o.h5", seed=2, resume=True)
    assert again.written == () and again.skipped == (tmp_path / "o.h5",) and again.rows == N


def _shards(tmp_path):
    rng = np.random.default_rng(8)
    (tmp_path / "shards").mkdir()
    paths = []
    for name, rows in (("b.h5", 21), ("a.h5", 9), ("c.h5", 30)):
        paths.append(
            write_h5(
                tmp_path / "shards" / name,
                x=rng.random((rows, 5), dtype=np.float32),
                y=rng.integers(0, 3, rows),
            )
        )
    return paths


def test_a_list_of_inputs_writes_a_set_as_the_command_does(tmp_path):
    paths = _shards(tmp_path)
    progress = Recorder()
    done = mixup_cli.augment(paths, tmp_path / "api", seed=5, block_rows=8, progress=progress)
    assert progress.total == progress.rows == 60
    assert done.output == tmp_path / "api" and done.set_id and done.rows == 60 and done.seed == 5
    assert done.written == tuple(tmp_path / "api" / p.name for p in paths)
    assert (tmp_path / "api" / "mixup-set.json").is_file()
    cli = run_in_process("augment", *paths, tmp_path / "cli", "--seed", 5, "--block-rows", 8, "--quiet")
    assert cli.returncode == 0, cli.stderr
    for p in paths:
        with h5py.File(tmp_path / "api" / p.name, "r") as a, h5py.File(tmp_path / "cli" / p.name, "r") as b:
            for key in ("x", "y", "lam", "partner"):
                np.testing.assert_array_equal(a[key][()], b[key][()])

    report = mixup_cli.verify(tmp_path / "api")
    assert report.ok and report.complete and report.outputs == 3 and len(report.reports) == 3


def test_a_shard_writes_its_part_and_verify_names_what_is_missing(tmp_path):
    paths = _shards(tmp_path)
    part = mixup_cli.augment(paths, tmp_path / "mixed", seed=5, shard="0/3")
    assert part.written == (tmp_path / "mixed" / "b.h5",)
    report = mixup_cli.verify(tmp_path / "mixed")
    assert not report.ok and not report.complete
    assert [m["name"] for m in report.missing] == ["a.h5", "c.h5"]
    assert any("a.h5: missing" in line and "--shard 1/3" in line for line in report.problems)


def test_a_shard_from_the_scheduler_is_its_part(tmp_path, monkeypatch):
    """shard="k8s/3" reads JOB_COMPLETION_INDEX; the part written and recorded is 2/3."""
    paths = _shards(tmp_path)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    part = mixup_cli.augment(paths, tmp_path / "mixed", seed=5, shard="k8s/3")
    assert part.written == (tmp_path / "mixed" / "c.h5",)
    report = mixup_cli.verify(tmp_path / "mixed")
    assert any("a.h5: missing" in line and "--shard 1/3" in line for line in report.problems)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(ParameterError, match="JOB_COMPLETION_INDEX is not set"):
        mixup_cli.augment(paths, tmp_path / "other", seed=5, shard="k8s/3")
    assert not (tmp_path / "other").exists()


def test_verify_reports_a_changed_output_without_raising(tmp_path, source):
    src, _, _ = source
    out = tmp_path / "o.h5"
    mixup_cli.augment(src, out, seed=4)
    with h5py.File(out, "r+") as f:
        f["x"][3] = f["x"][3] + 1
    report = mixup_cli.verify(out)
    assert not report.ok
    failed = {c.name for c in report.checks if not c.ok}
    assert {"output data", "recompute"} <= failed and report.first_difference["row"] == 3
    with pytest.raises(InputError, match="sidecar"):
        mixup_cli.verify(src)  # an input: nothing to check against


def test_mix_keeps_the_commands_dtype_rules():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 4, 4, 3), dtype=np.uint8)
    lam = rng.random(64)
    partner = rng.permutation(64)
    x_mixed, y_mixed = mix_only = mixup_cli.mix(x, None, lam, partner)
    assert y_mixed is None and mix_only[0].dtype == np.uint8
    l32 = lam.astype(np.float32)[:, None, None, None]
    exact = l32 * x.astype(np.float32) + (1 - l32) * x[partner].astype(np.float32)
    np.testing.assert_array_equal(x_mixed, np.clip(np.rint(exact), 0, 255).astype(np.uint8))
    f64 = rng.standard_normal((64, 2))
    np.testing.assert_array_equal(mixup_cli.mix(f64, None, lam, partner)[0], expected_mix(f64, lam, partner))
    soft = np.eye(3)[rng.integers(0, 3, 64)].astype(np.float32)
    _, y_soft = mixup_cli.mix(x, soft, lam, partner)
    assert y_soft.dtype == np.float32
    np.testing.assert_array_equal(y_soft, expected_mix(soft, lam, partner))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((np.zeros((4, 2)), None, np.full(3, 0.5), np.arange(4)), {}, "lam has shape"),
        ((np.zeros((4, 2)), None, [0.5, 0.5, 1.5, 0.0], np.arange(4)), {}, r"lam holds values outside \[0, 1\]"),
        ((np.zeros((4, 2)), None, np.full(4, 0.5), [0, 1, 2, 4]), {}, r"partner holds row indices outside \[0, 4\)"),
        ((np.zeros((4, 2)), None, np.full(4, 0.5), np.full(4, 0.5)), {}, "partner has shape"),
        ((np.zeros((4, 2)), np.arange(4), np.full(4, 0.5), np.arange(4)), {}, "pass num_classes="),
        ((np.zeros((4, 2)), np.zeros(3), np.full(4, 0.5), np.arange(4)), {}, "y has shape"),
        ((np.zeros((4, 2)), None, None, np.arange(4)), {}, "mix\\(\\) needs lam"),
        ((np.zeros((4, 2), dtype=bool), None, np.full(4, 0.5), np.arange(4)), {}, "cannot mix arrays of dtype bool"),
    ],
)
def test_mix_refuses_bad_arguments_in_one_line(args, kwargs, message):
    with pytest.raises(ParameterError, match=message) as exc:
        mixup_cli.mix(*args, **kwargs)
    assert "\n" not in str(exc.value)
