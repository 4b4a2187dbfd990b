"""What a new user runs first: messages, inspect and preview output (the docs' examples
run in test_docs_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_h5


@pytest.mark.slow
@pytest.mark.parametrize(
    "y, shown",
    [
        (np.zeros(20, np.int64), "class 0"),
        (np.full(20, 3, np.int64), "class 3"),
        (np.zeros((20, 1), np.float32), "class 0"),
        (np.eye(3, dtype=np.float32)[np.zeros(20, int)], "class 0"),
    ],
)
def test_between_class_on_a_single_class_names_that_class(tmp_path, run_mixup, y, shown):
    src = write_h5(tmp_path / "in.h5", x=np.ones((20, 3), np.float32), y=y)
    result = run_mixup("augment", src, tmp_path / "out.h5", "--pairing", "between-class")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"every row of {src}['y'] is {shown};" in result.stderr, result.stderr
    assert not (tmp_path / "out.h5").exists()


def test_between_class_partners_unchanged_by_one_hot_class_codes(tmp_path):
    """Labels and their one-hot rows give the same class groups: same partners."""
    import h5py

    from mixup_cli.commands.pipeline import AugmentRequest, augment

    labels = np.arange(40) % 3
    a = write_h5(tmp_path / "a.h5", x=np.ones((40, 2), np.float32), y=labels)
    b = write_h5(tmp_path / "b.h5", x=np.ones((40, 2), np.float32), y=np.eye(3, dtype=np.float32)[labels])
    for src in (a, b):
        augment(AugmentRequest(src, src.with_suffix(".out.h5"), seed=4, pairing="between-class", command_line=[]))
    with h5py.File(tmp_path / "a.out.h5") as fa, h5py.File(tmp_path / "b.out.h5") as fb:
        partner = fa["partner"][()]
        assert np.array_equal(partner, fb["partner"][()])
        assert (labels[partner] != labels[np.arange(40)]).all()


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("in.txt", 2), ("x.npy", 2)])
def test_unknown_input_and_output_extensions_are_both_usage_errors(tmp_path, run_mixup, name, code):
    src = write_h5(tmp_path / "in.h5", x=np.ones((4, 2), np.float32), y=np.arange(4))
    bad_in = tmp_path / name
    bad_in.write_bytes(b"1 2 3\n")
    as_input = run_mixup("augment", bad_in, tmp_path / "o.h5")
    as_output = run_mixup("augment", src, tmp_path / ("out" + Path(name).suffix))
    assert as_input.returncode == as_output.returncode == code
    assert "unknown input format" in as_input.stderr and "unknown output format" in as_output.stderr


@pytest.mark.slow
def test_inspect_lists_a_zarr_input_by_array(tmp_path, run_mixup):
    pytest.importorskip("zarr", reason="Zarr is an optional extra")
    src = write_h5(tmp_path / "in.h5", x=np.ones((64, 3), np.float32), y=np.arange(64) % 4)
    store, out = tmp_path / "in.zarr", tmp_path / "out.h5"
    assert run_mixup("augment", src, store, "--seed", 1, "--chunk-rows", 16, "--quiet").returncode == 0
    assert run_mixup("augment", store, out, "--seed", 2, "--quiet").returncode == 0
    shown = run_mixup("inspect", out)
    assert shown.returncode == 0, shown.stderr
    lines = [
        line.split(None, 2)[2]
        for line in shown.stdout.splitlines()
        if line.strip().startswith("input ") and line.split()[1] in ("sha256", "files")
    ]
    # One line per array of the store (4 chunk files + zarr.json each), one for the store's zarr.json.
    arrays = [f"{k}: 5 files (the SHA-256 of each: --json)" for k in ("lam", "partner", "x", "y")]
    assert lines[1:] == arrays, lines
    assert re.fullmatch(r"[0-9a-f]{64}  zarr\.json", lines[0]), lines


@pytest.mark.slow
def test_inspect_of_a_file_input_still_shows_its_digest(tmp_path, run_mixup):
    import hashlib

    src = write_h5(tmp_path / "in.h5", x=np.ones((8, 3), np.float32), y=np.arange(8) % 2)
    out = tmp_path / "out.h5"
    assert run_mixup("augment", src, out, "--seed", 1, "--quiet").returncode == 0
    shown = run_mixup("inspect", out).stdout
    assert f"input sha256      {hashlib.sha256(src.read_bytes()).hexdigest()}  in.h5" in shown


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_preview_titles_multilabel_rows_with_their_label_set(tmp_path, mpl):
    from mixup_cli.commands import preview

    y = np.zeros((12, 6), np.uint8)
    y[:, 1] = 1
    y[:, 4] = 1
    y[1::2, 1] = 0
    src = write_h5(tmp_path / "tags.h5", x=np.random.default_rng(0).random((12, 8), dtype=np.float32), y=y)
    shown = preview.preview_rows(src, seed=1, rows=3)
    fig = preview.dataset_figure(shown)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith(("row ", "partner "))]
    assert len(titles) == 6 and not any("class" in t for t in titles)
    for t in titles:
        n = int(t.split(",")[0].split()[1])
        want = "labels {1, 4}" if n % 2 == 0 else "labels {4}"
        assert t.endswith(want), t


@pytest.mark.slow
def test_preview_titles_class_rows_with_the_class(tmp_path, mpl):
    from mixup_cli.commands import preview

    src = write_h5(tmp_path / "c.h5", x=np.random.default_rng(0).random((12, 8), dtype=np.float32), y=np.arange(12) % 5)
    fig = preview.dataset_figure(preview.preview_rows(src, seed=1, rows=2))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("row ")]
    assert [t.split(", ")[1] for t in titles] == [f"class {int(t.split(',')[0].split()[1]) % 5}" for t in titles]


@pytest.mark.parametrize("n", [10, 1024])
def test_identity_figure_says_rows_are_samples_and_keeps_the_diagonal(mpl, n):
    from mixup_cli.commands import preview

    fig = preview.identity_figure(n, [0.2, 1.0], seed=0)
    panels = [ax for ax in fig.axes if ax.images]
    for ax in panels:
        assert "sample" in ax.get_ylabel() and "class" in ax.get_xlabel()
        values = np.asarray(ax.images[0].get_array())
        assert max(values.shape) <= preview.IDENTITY_PIXELS
        # Every drawn cell of the diagonal holds rows' own weights (lam > 0):
        # none is a cell between the diagonal's, as nearest resampling would pick.
        assert (np.diag(values) > 0).all()
        assert ax.images[0].get_extent() == [-0.5, n - 0.5, n - 0.5, -0.5]
    if n > preview.IDENTITY_PIXELS:
        # The figure's title is among its texts (Figure.get_suptitle came with matplotlib 3.8).
        assert any("largest value of" in text.get_text() for text in fig.texts)


@pytest.mark.slow
def test_a_folder_of_shards_says_how_to_pass_them_as_a_set(tmp_path, run_mixup):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        write_h5(shards / f"part-{i}.h5", x=np.zeros((4, 2), np.float32), y=np.arange(4) % 2)
    (shards / "notes.txt").write_text("made by hand\n")
    result = run_mixup("augment", shards, tmp_path / "out.h5", "--seed", 1)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {shards}: a folder of 3 .h5 file(s), not of .npy arrays; to mix them as one set, "
        f"pass the files: mixup augment {shards}/*.h5 OUTDIR (or list them with --inputs-from)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
    # A folder holding neither still names the array it lacks.
    (tmp_path / "empty").mkdir()
    result = run_mixup("augment", tmp_path / "empty", tmp_path / "out.h5")
    assert result.returncode == 1 and "no x.npy (present: no .npy files)" in result.stderr
