"""String and categorical class labels: one-hot columns in sorted name order
(scikit-learn's), names recorded, class pairings and --balance on them."""

import json

import h5py
import numpy as np
import pytest
from conftest import load_output, read_sidecar, write_npy_dir, write_npz
from sklearn.preprocessing import OneHotEncoder

from mixup_cli.commands.pipeline import AugmentRequest, augment

NAMES = np.array(["dog", "cat", "émeu", "ant", "Zebra"])


@pytest.fixture
def labels():
    return np.random.default_rng(3).integers(0, len(NAMES), 80)


def write_inputs(tmp_path, labels):
    """The same labels in every accepted form; x the same everywhere."""
    x = np.random.default_rng(1).standard_normal((len(labels), 3)).astype(np.float32)
    text = NAMES[labels]
    h5 = tmp_path / "in.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = x
        f.create_dataset("vlen", data=text.tolist(), dtype=h5py.string_dtype())
        f["fixed"] = np.array([s.encode("utf-8") for s in text])
        g = f.create_group("obs/kind")  # AnnData: codes into unsorted categories
        g["codes"] = labels.astype(np.int8)
        g.create_dataset("categories", data=NAMES.tolist(), dtype=h5py.string_dtype())
    return (
        {
            "h5-vlen": (h5, "vlen"),
            "h5-fixed": (h5, "fixed"),
            "anndata": (h5, "obs/kind"),
            "npz-U": (write_npz(tmp_path / "in.npz", x=x, y=text), "y"),
            "npy-S": (write_npy_dir(tmp_path / "in", x=x, y=np.char.encode(text, "utf-8")), "y"),
        },
        x,
        text,
    )


@pytest.mark.parametrize("form", ["h5-vlen", "h5-fixed", "anndata", "npz-U", "npy-S"])
def test_labels_become_one_hot_columns_in_scikit_learn_order(tmp_path, labels, form):
    inputs, x, text = write_inputs(tmp_path, labels)
    src, key = inputs[form]
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, y_key=key, seed=2, block_rows=16, include_original=True))
    encoder = OneHotEncoder(sparse_output=False).fit(text.reshape(-1, 1))
    expected_names = [str(c) for c in encoder.categories_[0]]
    with h5py.File(out, "r") as f:
        y = f[key][()]
        assert json.loads(f.attrs["class_names"]) == expected_names
        lam, partner = f["lam"][()], f["partner"][()]
    onehot = encoder.transform(text.reshape(-1, 1)).astype(np.float32)
    assert np.array_equal(y[:80], onehot)  # the original rows: column k is name k
    l = lam[80:].astype(np.float32)[:, None]
    assert np.allclose(y[80:], l * onehot + (1 - l) * onehot[partner[80:]])
    record = read_sidecar(out)
    assert record["parameters"]["class_names"] == expected_names
    stored = record["input"]["arrays"][key]["dtype"]  # as the input stores the labels, not their codes
    assert stored == "|i1" if form == "anndata" else np.dtype(stored).kind in "USO"


def test_npz_output_records_the_names_in_the_sidecar(tmp_path, labels):
    inputs, _, _ = write_inputs(tmp_path, labels)
    src, key = inputs["npz-U"]
    augment(AugmentRequest(src, tmp_path / "out.npz", seed=2))
    assert read_sidecar(tmp_path / "out.npz")["parameters"]["class_names"] == sorted(set(NAMES.tolist()))
    assert load_output(tmp_path / "out.npz")["y"].shape == (80, 5)


@pytest.mark.parametrize("form", ["h5-vlen", "anndata"])
def test_class_pairings_and_balance_work_on_names(tmp_path, labels, form, run_cli):
    inputs, _, text = write_inputs(tmp_path, labels)
    src, key = inputs[form]
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment",
        src,
        out,
        "--y-key",
        key,
        "--pairing",
        "within-class",
        "--balance",
        "--seed",
        5,
        "--block-rows",
        16,
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        own, partner = f["own"][()], f["partner"][()]
    m = max(np.bincount(labels))
    assert np.array_equal(np.unique(text[own], return_counts=True)[1], [m] * 5)
    assert (text[own] == text[partner]).all()
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.stdout


def test_numeric_labels_record_no_names(tmp_path, labels):
    src = write_npz(tmp_path / "in.npz", x=np.zeros((80, 2), np.float32), y=labels)
    augment(AugmentRequest(src, tmp_path / "out.h5", seed=1))
    assert "class_names" not in read_sidecar(tmp_path / "out.h5")["parameters"]
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert "class_names" not in f.attrs


def test_a_missing_category_is_a_one_line_error(tmp_path, labels, run_mixup, outdir):
    inputs, _, _ = write_inputs(tmp_path, labels)
    src, _ = inputs["anndata"]
    with h5py.File(src, "a") as f:
        codes = f["obs/kind/codes"][()]
        codes[7] = -1
        f["obs/kind/codes"][...] = codes
    proc = run_mixup("augment", src, outdir / "out.h5", "--y-key", "obs/kind")
    assert proc.returncode == 1
    assert "row 7" in proc.stderr and "missing category" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(outdir.iterdir()) == []


def test_pair_format_writes_the_class_codes(tmp_path, labels):
    inputs, _, text = write_inputs(tmp_path, labels)
    src, key = inputs["h5-vlen"]
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, y_key=key, seed=2, y_format="pair"))
    names = sorted(set(text.tolist()))
    with h5py.File(out, "r") as f:
        codes = np.array([names.index(t) for t in text])
        assert f[f"{key}_a"].dtype == np.int64 and np.array_equal(f[f"{key}_a"][()], codes)
        assert np.array_equal(f[f"{key}_b"][()], codes[f["partner"][()]])
        assert json.loads(f.attrs["class_names"]) == names
