"""Parquet files as input and output (an optional extra: pyarrow)."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, expected_mix, read_sidecar, write_h5

from mixup_cli.commands.pipeline import AugmentRequest, augment

pa = pytest.importorskip("pyarrow", reason="Parquet is an optional extra: pip install 'mixup-cli[arrow]'")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")


def tensor_column(x: np.ndarray):
    """x (N, *shape) as nested fixed-size lists, one level per axis."""
    arr = pa.array(np.ascontiguousarray(x).reshape(-1))
    for size in reversed(x.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def load_h5(path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}, dict(f.attrs)


def one_hot(labels, n):
    return np.eye(n, dtype=np.float32)[labels]


@pytest.mark.parametrize("row_group_size", [7, 16, 1000])
def test_tensor_column_and_integer_labels_match_the_formula(tmp_path, row_group_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((45, 3, 2)).astype(np.float32)
    y = rng.integers(0, 4, 45)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": tensor_column(x), "y": y}), src, row_group_size=row_group_size)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(src, out, alpha=0.4, seed=3, block_rows=8, batch_size=3))
    got, _ = load_h5(out)
    lam, partner = got["lam"], got["partner"]
    assert got["x"].dtype == np.float32 and np.array_equal(got["x"], expected_mix(x, lam, partner))
    assert np.array_equal(got["y"], expected_mix(one_hot(y, 4), lam, partner))
    sidecar = read_sidecar(out)
    assert sidecar["input"]["format"] == "parquet"


def test_fixed_shape_tensor_and_pandas_lists(tmp_path, run_cli):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.uint8(), (4, 4)), tensor_column(x.reshape(30, 16)))
    frame = pd.DataFrame({"emb": list(rng.standard_normal((30, 5))), "target": rng.standard_normal(30)})
    pq.write_table(pa.table({"img": tensor}), tmp_path / "t.parquet", row_group_size=11)
    frame.to_parquet(tmp_path / "p.parquet", row_group_size=11)
    assert run_cli("augment", tmp_path / "t.parquet", tmp_path / "t.h5", "--x-key", "img", "--seed", 1).exit_code == 0
    got, _ = load_h5(tmp_path / "t.h5")
    l = got["lam"].astype(np.float32).reshape(-1, 1, 1)
    want = np.clip(np.rint(l * x + (1 - l) * x[got["partner"]]), 0, 255).astype(np.uint8)
    assert np.array_equal(got["img"], want)
    args = ("--x-key", "emb", "--y-key", "target", "--seed", 2)
    assert run_cli("augment", tmp_path / "p.parquet", tmp_path / "p.h5", *args).exit_code == 0
    got, _ = load_h5(tmp_path / "p.h5")
    emb = np.stack(frame["emb"])
    assert np.array_equal(got["emb"], expected_mix(emb, got["lam"], got["partner"]))
    assert np.array_equal(got["target"], expected_mix(frame["target"].to_numpy(), got["lam"], got["partner"]))


def test_lists_of_unequal_length_are_refused_with_the_row(tmp_path, run_cli):
    rows = [[1.0, 2.0]] * 20 + [[1.0, 2.0, 3.0]] + [[0.0, 0.0]] * 5
    pq.write_table(pa.table({"x": rows, "y": list(range(26))}), tmp_path / "in.parquet", row_group_size=8)
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5", "--y-kind", "dense")
    assert result.exit_code == 1
    assert "column 'x'" in result.stderr and "row 20 has a list of 3 values" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize("selection", ["f*", "f0,f1,f2", "f0, f1 ,f[2]"])
def test_numeric_columns_gathered_into_x(tmp_path, run_cli, selection):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "f0": rng.standard_normal(40).astype(np.float32),
            "id": np.arange(40),
            "f1": rng.standard_normal(40).astype(np.float32),
            "f2": rng.integers(0, 9, 40).astype(np.int16),
            "label": rng.integers(0, 3, 40),
        }
    )
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=9)
    result = run_cli(
        "augment", tmp_path / "in.parquet", tmp_path / "out.h5", "--x-key", selection, "--y-key", "label", "--seed", 4
    )
    assert result.exit_code == 0, result.stderr
    got, _ = load_h5(tmp_path / "out.h5")
    x = frame[["f0", "f1", "f2"]].to_numpy(dtype=np.float32)
    assert got[selection].dtype == np.float32
    assert np.array_equal(got[selection], expected_mix(x, got["lam"], got["partner"]))
    assert np.array_equal(got["label"], expected_mix(one_hot(frame["label"], 3), got["lam"], got["partner"]))


def test_a_selection_that_matches_nothing_names_the_columns(tmp_path, run_cli):
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}).to_parquet(tmp_path / "in.parquet")
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5", "--x-key", "a,z*", "--no-y")
    assert result.exit_code == 1 and "no column matches 'z*' (columns: a, b)" in result.stderr
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5", "--x-key", "a,a", "--no-y")
    assert result.exit_code == 2 and "names column 'a' twice" in result.stderr


def test_strings_and_categoricals_are_named_classes(tmp_path, run_cli):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((36, 2)).astype(np.float32)
    species = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 36)]
    frame = pd.DataFrame(
        {
            "x": list(x),
            "species": species,
            # an unused category still has its column in the one-hot targets
            "kind": pd.Categorical(species, categories=["dog", "cat", "ant", "emu", "yak"]),
        }
    )
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=10)
    for key, names in (("species", ["cat", "dog", "emu"]), ("kind", ["ant", "cat", "dog", "emu", "yak"])):
        out = tmp_path / f"{key}.h5"
        result = run_cli("augment", tmp_path / "in.parquet", out, "--y-key", key, "--seed", 5)
        assert result.exit_code == 0, result.stderr
        got, attrs = load_h5(out)
        assert json.loads(attrs["class_names"]) == names
        codes = np.searchsorted(np.array(names), species)
        assert np.array_equal(got[key], expected_mix(one_hot(codes, len(names)), got["lam"], got["partner"]))
        assert read_sidecar(out)["parameters"]["class_names"] == names
        paired = tmp_path / f"{key}-within.h5"
        args = ("--y-key", key, "--seed", 5, "--pairing", "within-class")
        assert run_cli("augment", tmp_path / "in.parquet", paired, *args).exit_code == 0
        got, _ = load_h5(paired)
        assert np.array_equal(species[got["partner"]], species)
        assert run_cli("verify", paired).exit_code == 0


def test_missing_default_keys_list_the_columns_and_the_option(tmp_path, run_cli):
    pd.DataFrame({"pixels": [[1.0, 2.0]] * 4, "label": [0, 1, 0, 1]}).to_parquet(tmp_path / "in.parquet")
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5")
    assert result.exit_code == 1
    assert "no column 'x' (columns: pixels, label); choose one with --x-key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nulls_are_refused_with_the_row(tmp_path, run_cli):
    table = pa.table({"x": [1.0, 2.0, None, 4.0], "y": [0.5, 0.1, 0.2, 0.3]})
    pq.write_table(table, tmp_path / "in.parquet")
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5")
    assert result.exit_code == 1 and "missing values (null), the first in row 2" in result.stderr


def test_take_equals_fancy_indexing_across_row_groups(tmp_path):
    from mixup_cli.io import open_reader

    x = np.random.default_rng(4).random((50, 3, 2)).astype(np.float32)
    pq.write_table(pa.table({"x": tensor_column(x)}), tmp_path / "in.parquet", row_group_size=7)
    with open_reader(tmp_path / "in.parquet") as reader:
        assert np.array_equal(reader.read("x", 5, 31), x[5:31])
        for rows in [[], [0], [49], [49, 0, 7, 7, 30, 6], list(range(49, -1, -3))]:
            got = reader.take("x", np.array(rows, dtype=np.int64))
            assert got.dtype == x.dtype and np.array_equal(got, x[rows]) and got.shape == (len(rows), 3, 2)


def test_parquet_is_found_by_its_content(tmp_path, run_cli):
    pd.DataFrame({"x": [[1.0, 2.0]] * 6, "y": [0.0, 1, 2, 3, 4, 5]}).to_parquet(tmp_path / "data.bin")
    result = run_cli("augment", tmp_path / "data.bin", tmp_path / "out.h5", "--seed", 1)
    assert result.exit_code == 0, result.stderr


def test_within_class_pairing_reads_partners_from_parquet(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    pq.write_table(pa.table({"x": tensor_column(x), "y": y}), tmp_path / "in.parquet", row_group_size=13)
    out = tmp_path / "out.h5"
    augment(AugmentRequest(tmp_path / "in.parquet", out, seed=7, block_rows=16, pairing="within-class"))
    got, _ = load_h5(out)
    assert np.array_equal(y[got["partner"]], y)
    assert np.array_equal(got["x"], expected_mix(x, got["lam"], got["partner"]))


def test_without_pyarrow_the_message_names_the_extra(tmp_path, run_cli, monkeypatch):
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(tmp_path / "in.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.h5")
    assert result.exit_code == 2 and "pip install 'mixup-cli[arrow]'" in result.stderr


def test_a_tiny_hdf5_run_imports_no_pyarrow(tmp_path):
    x = np.zeros((4, 2), dtype=np.float32)
    src = write_h5(tmp_path / "in.h5", x=x, y=np.arange(4.0))
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mixup_cli.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['augment', {str(src)!r}, {str(tmp_path / 'o.h5')!r}, '-q'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'pandas'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------ output


def test_h5_to_parquet_writes_a_row_group_per_block(tmp_path, run_cli):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((45, 3, 2)).astype(np.float32)
    y = rng.random((45, 2))
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    out = tmp_path / "out.parquet"
    result = run_cli("augment", src, out, "--seed", 3, "--block-rows", 8, "--batch-size", 3)
    assert result.exit_code == 0, result.stderr
    pf = pq.ParquetFile(out)
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)] == [8] * 5 + [5]
    schema = pf.schema_arrow
    assert schema.names == ["x", "y", "lam", "partner"]
    assert schema.field("x").type == pa.list_(pa.list_(pa.float32(), 2), 3)
    assert schema.field("lam").type == pa.float64() and schema.field("partner").type == pa.int64()
    record = json.loads(schema.metadata[b"mixup"])
    assert record["arrays"]["x"] == {"shape": [3, 2], "dtype": "<f4"}
    assert record["parameters"]["seed"] == 3 and record["run_id"] == read_sidecar(out)["run_id"]
    frame = pq.read_table(out).to_pandas()
    lam, partner = frame["lam"].to_numpy(), frame["partner"].to_numpy()
    xs = np.stack([np.stack(row) for row in frame["x"]])
    assert np.array_equal(xs, expected_mix(x, lam, partner))
    assert np.array_equal(np.stack(frame["y"]), expected_mix(y, lam, partner))
    assert run_cli("verify", out).exit_code == 0
    inspected = run_cli("inspect", out)
    assert inspected.exit_code == 0 and "(45, 3, 2)" in inspected.stdout
    from mixup_cli import MixupDataset

    data = MixupDataset(out)
    assert len(data) == 45 and np.array_equal(data[10]["x"], xs[10]) and data[10]["partner"] == partner[10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "out.parquet", "out.parquet.provenance.json"]


def test_gathered_columns_are_written_back_as_columns(tmp_path, run_cli):
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({f"f{i}": rng.standard_normal(33).astype(np.float32) for i in range(3)})
    frame["label"] = np.array(["no", "yes"])[rng.integers(0, 2, 33)]
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=10)
    out = tmp_path / "out.parquet"
    args = ("--x-key", "f*", "--y-key", "label", "--seed", 6, "--block-rows", 16, "--compression", "zstd")
    result = run_cli("augment", tmp_path / "in.parquet", out, *args)
    assert result.exit_code == 0, result.stderr
    pf = pq.ParquetFile(out)
    assert pf.schema_arrow.names == ["f0", "f1", "f2", "label", "lam", "partner"]
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    record = json.loads(pf.schema_arrow.metadata[b"mixup"])
    assert record["arrays"]["f*"]["columns"] == ["f0", "f1", "f2"] and record["class_names"] == ["no", "yes"]
    got = pq.read_table(out).to_pandas()
    lam, partner = got["lam"].to_numpy(), got["partner"].to_numpy()
    for name in ("f0", "f1", "f2"):
        assert got[name].dtype == np.float32
        assert np.array_equal(got[name].to_numpy(), expected_mix(frame[name].to_numpy(), lam, partner))
    codes = (frame["label"] == "yes").to_numpy().astype(int)
    assert np.array_equal(np.stack(got["label"]), expected_mix(one_hot(codes, 2), lam, partner))
    assert run_cli("verify", out).exit_code == 0
    from mixup_cli import MixupDataset

    rows = MixupDataset(out)[np.array([0, 5])]
    assert rows["x"].shape == (2, 3) and np.array_equal(rows["x"][1], got[["f0", "f1", "f2"]].to_numpy()[5])


def test_parquet_output_refuses_lzf_and_a_failed_run_leaves_nothing(tmp_path, run_cli):
    table = pa.table({"x": [1.0, 2.0, 3.0, None], "y": [0.5, 0.1, 0.2, 0.3]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    refused = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.parquet", "--compression", "lzf")
    assert refused.exit_code == 2 and "--compression lzf is not available for parquet output" in refused.stderr
    failed = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.parquet", "--block-rows", 2)
    assert failed.exit_code == 1 and "the first in row 3" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


# ------------------------------------------------------- datasets folders


def hf_dataset(n=30, seed=10):
    datasets = pytest.importorskip("datasets")
    from datasets import Array2D, ClassLabel, Dataset, Features, Sequence, Value

    rng = np.random.default_rng(seed)
    columns = {
        "img": rng.standard_normal((n, 3, 2)).astype(np.float32),
        "label": rng.integers(0, 3, n),
        "emb": rng.standard_normal((n, 4)).astype(np.float32),
        "target": rng.standard_normal((n, 2)),
    }
    features = Features(
        {
            "img": Array2D(shape=(3, 2), dtype="float32"),
            "label": ClassLabel(names=["zebra", "ant", "cow"]),  # declared order, not sorted
            "emb": Sequence(Value("float32"), length=4),
            "target": Sequence(Value("float64")),  # variable-length lists, all of length 2
        }
    )
    quiet = getattr(datasets, "disable_progress_bars", None) or datasets.disable_progress_bar  # 3.0 renamed it
    quiet()
    return Dataset.from_dict(columns, features=features), columns


@pytest.mark.slow
@pytest.mark.parametrize("num_shards", [1, 3])
def test_a_save_to_disk_folder_with_class_label_names(tmp_path, run_cli, num_shards):
    ds, cols = hf_dataset()
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=num_shards)
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment", tmp_path / "hf", out, "--x-key", "img", "--y-key", "label", "--seed", 2, "--block-rows", 8
    )
    assert result.exit_code == 0, result.stderr
    got, attrs = load_h5(out)
    assert json.loads(attrs["class_names"]) == ["zebra", "ant", "cow"]
    lam, partner = got["lam"], got["partner"]
    assert np.array_equal(got["img"], expected_mix(cols["img"], lam, partner))
    assert np.array_equal(got["label"], expected_mix(one_hot(cols["label"], 3), lam, partner))  # column k: label k
    sidecar = read_sidecar(out)
    assert sidecar["input"]["format"] == "arrow" and sidecar["parameters"]["class_names"] == ["zebra", "ant", "cow"]
    assert run_cli("verify", out).exit_code == 0


@pytest.mark.slow
def test_sequences_to_parquet_load_back_with_datasets(tmp_path, run_cli):
    datasets = pytest.importorskip("datasets")
    ds, cols = hf_dataset(n=25)
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "out.parquet"
    result = run_cli("augment", tmp_path / "hf", out, "--x-key", "emb", "--y-key", "target", "--seed", 3)
    assert result.exit_code == 0, result.stderr
    back = datasets.Dataset.from_parquet(str(out), cache_dir=str(tmp_path / "cache"))
    assert back.column_names == ["emb", "target", "lam", "partner"]
    frame = back.to_pandas()
    lam, partner = frame["lam"].to_numpy(), frame["partner"].to_numpy()
    assert lam.dtype == np.float64 and partner.dtype == np.int64
    assert np.array_equal(np.stack(frame["emb"]), expected_mix(cols["emb"], lam, partner))
    assert np.array_equal(np.stack(frame["target"]), expected_mix(cols["target"], lam, partner))


def test_parquet_output_declares_its_features_to_datasets(tmp_path, run_cli):
    datasets = pytest.importorskip("datasets")
    from datasets import Features, Sequence, Value

    ds, cols = hf_dataset(n=30)
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "out.parquet"
    args = ("--x-key", "img", "--y-key", "label", "--seed", 6, "--block-rows", 8)
    assert run_cli("augment", tmp_path / "hf", out, *args).exit_code == 0
    # the features as datasets writes them: the schema's "huggingface" metadata
    declared = json.loads(pq.read_schema(out).metadata[b"huggingface"])["info"]["features"]
    want = Features(
        {
            "img": Sequence(Sequence(Value("float32"), length=2), length=3),
            "label": Sequence(Value("float32"), length=3),
            "lam": Value("float64"),
            "partner": Value("int64"),
        }
    )
    assert Features.from_dict(declared) == want
    back = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert back.features == want
    rows = back.with_format("numpy")[:]
    lam, partner = rows["lam"], rows["partner"]
    assert np.array_equal(rows["img"], expected_mix(cols["img"], lam, partner))
    assert np.array_equal(rows["label"], expected_mix(one_hot(cols["label"], 3), lam, partner))
    # the soft targets' columns are the classes the mixup metadata names, in the input's declared order
    assert json.loads(pq.read_schema(out).metadata[b"mixup"])["class_names"] == ["zebra", "ant", "cow"]
    # gathered columns: one Value each
    pd.DataFrame({"f0": cols["emb"][:, 0], "f1": cols["emb"][:, 1], "t": cols["label"]}).to_parquet(
        tmp_path / "f.parquet"
    )
    args = ("--x-key", "f*", "--y-key", "t", "--seed", 6)
    assert run_cli("augment", tmp_path / "f.parquet", tmp_path / "f-out.parquet", *args).exit_code == 0
    declared = json.loads(pq.read_schema(tmp_path / "f-out.parquet").metadata[b"huggingface"])["info"]["features"]
    assert Features.from_dict(declared) == Features(
        {"f0": Value("float32"), "f1": Value("float32"), "t": Sequence(Value("float32"), length=3)}
        | {"lam": Value("float64"), "partner": Value("int64")}
    )


def test_hub_parquet_keeps_the_class_label_names(tmp_path, run_cli):
    ds, cols = hf_dataset(n=20)
    ds.to_parquet(str(tmp_path / "train.parquet"))  # as the Hub converts datasets: features in the metadata
    out = tmp_path / "out.npz"
    result = run_cli("augment", tmp_path / "train.parquet", out, "--x-key", "img", "--y-key", "label", "--seed", 4)
    assert result.exit_code == 0, result.stderr
    assert read_sidecar(out)["parameters"]["class_names"] == ["zebra", "ant", "cow"]
    with np.load(out) as got:
        assert np.array_equal(got["label"], expected_mix(one_hot(cols["label"], 3), got["lam"], got["partner"]))
        assert np.array_equal(got["img"], expected_mix(cols["img"], got["lam"], got["partner"]))


def test_a_dataset_dict_folder_asks_for_one_split(tmp_path, run_cli):
    datasets = pytest.importorskip("datasets")
    ds, _ = hf_dataset(n=10)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    result = run_cli("augment", tmp_path / "dd", tmp_path / "out.h5", "--x-key", "img")
    assert result.exit_code == 1
    assert "a DatasetDict folder (splits: train, test); pass one split's folder" in result.stderr
    assert run_cli("augment", tmp_path / "dd" / "train", tmp_path / "out.h5", "--x-key", "img").exit_code == 0


# ------------------------------------------------------- folders of shards


@pytest.mark.slow
def test_a_folder_of_parquet_shards_is_a_set(tmp_path, run_cli):
    from conftest import load_output

    from mixup_cli import augment as api_augment

    rng = np.random.default_rng(11)
    (tmp_path / "shards").mkdir()
    xs, ys = [], []
    for k, n in enumerate((30, 25, 40)):
        x, y = rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)
        pd.DataFrame({"x": list(x), "y": y}).to_parquet(tmp_path / "shards" / f"train-{k:05d}-of-00003.parquet")
        xs.append(x)
        ys.append(y)
    names = [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    whole = run_cli("augment", tmp_path / "shards", tmp_path / "mixed", "--seed", 5, "--block-rows", 16)
    assert whole.exit_code == 0, whole.stderr
    assert sorted(p.name for p in (tmp_path / "mixed").glob("*.parquet")) == names
    listed = run_cli(
        "augment", *[tmp_path / "shards" / n for n in names], tmp_path / "listed", "--seed", 5, "--block-rows", 16
    )
    assert listed.exit_code == 0, listed.stderr
    for part in ("0/2", "1/2"):
        args = ("--seed", 5, "--block-rows", 16, "--shard", part)
        assert run_cli("augment", tmp_path / "shards", tmp_path / "parts", *args).exit_code == 0
    api_augment(tmp_path / "shards", tmp_path / "api", seed=5, block_rows=16)
    for name in names:
        want = load_output(tmp_path / "mixed" / name)
        for other in ("listed", "parts", "api"):
            got = load_output(tmp_path / other / name)
            assert all(np.array_equal(got[k], want[k]) for k in want), (other, name)
    x, y = np.concatenate(xs), np.concatenate(ys)
    out = {
        k: np.concatenate([load_output(tmp_path / "mixed" / n)[k] for n in names]) for k in ("x", "y", "lam", "partner")
    }
    assert np.array_equal(out["x"], expected_mix(x, out["lam"], out["partner"]))
    assert np.array_equal(out["y"], expected_mix(one_hot(y, 3), out["lam"], out["partner"]))
    assert run_cli("verify", tmp_path / "mixed").exit_code == 0


@pytest.mark.slow
def test_lists_of_class_labels_are_multi_hot_rows(tmp_path, run_cli):
    pytest.importorskip("datasets")
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    rng = np.random.default_rng(12)
    x = rng.standard_normal((24, 3)).astype(np.float32)
    tags = [sorted(set(rng.integers(0, 4, rng.integers(0, 4)).tolist())) for _ in range(24)]
    features = Features(
        {
            "x": Sequence(Value("float32"), length=3),
            "tags": Sequence(ClassLabel(names=["red", "green", "blue", "gold"])),
        }
    )
    ds = Dataset.from_dict({"x": x, "tags": tags}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "hub.parquet"))
    multi_hot = np.zeros((24, 4), dtype=np.uint8)
    for i, row in enumerate(tags):
        multi_hot[i, row] = 1
    for src in (tmp_path / "hf", tmp_path / "hub.parquet"):
        out = tmp_path / f"{src.stem}.h5"
        result = run_cli("augment", src, out, "--y-key", "tags", "--seed", 8, "--block-rows", 8)
        assert result.exit_code == 0, result.stderr
        got, attrs = load_h5(out)
        assert json.loads(attrs["class_names"]) == ["red", "green", "blue", "gold"]
        assert np.array_equal(got["tags"], expected_mix(multi_hot.astype(np.float32), got["lam"], got["partner"]))
        assert np.array_equal(got["x"], expected_mix(x, got["lam"], got["partner"]))
        assert read_sidecar(out)["parameters"]["targets"]["kind"] == "multilabel"


@pytest.mark.slow
def test_reading_holds_a_row_group_not_the_file(tmp_path):
    """The Arrow memory a run takes stays near a row group and a block, far below the column's size."""
    x = np.random.default_rng(13).standard_normal((20000, 64)).astype(np.float32)  # 5 MiB
    pq.write_table(
        pa.table({"x": tensor_column(x), "y": np.arange(20000) % 5}), tmp_path / "in.parquet", row_group_size=500
    )
    code = (
        "import pyarrow as pa\n"
        "from mixup_cli import augment\n"
        f"augment({str(tmp_path / 'in.parquet')!r}, {str(tmp_path / 'out.h5')!r}, seed=1, block_rows=1024)\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split()[-1])
    assert 0 < peak < x.nbytes // 2, (peak, x.nbytes)
    got, _ = load_h5(tmp_path / "out.h5")
    assert np.array_equal(got["x"], expected_mix(x, got["lam"], got["partner"]))


def test_declared_classes_absent_from_the_rows_still_have_their_columns(tmp_path, run_cli):
    pytest.importorskip("datasets")
    from datasets import ClassLabel, Dataset, Features, Value

    labels = np.array([0, 1, 1, 0, 2, 1, 0, 2] * 3)  # "gold" (3) never occurs
    x = np.arange(24, dtype=np.float32)
    features = Features({"x": Value("float32"), "label": ClassLabel(names=["red", "green", "blue", "gold"])})
    Dataset.from_dict({"x": x, "label": labels}, features=features).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "hf", out, "--y-key", "label", "--seed", 1)
    assert result.exit_code == 0, result.stderr
    got, attrs = load_h5(out)
    assert json.loads(attrs["class_names"]) == ["red", "green", "blue", "gold"]
    assert got["label"].shape == (24, 4)
    assert np.array_equal(got["label"], expected_mix(one_hot(labels, 4), got["lam"], got["partner"]))


def test_large_row_groups_are_warned_of(tmp_path, run_cli, monkeypatch):
    from mixup_cli.io import parquet

    x = np.random.default_rng(14).random((2000, 16), dtype=np.float32)  # 125 KiB in one row group
    pq.write_table(pa.table({"x": tensor_column(x), "y": np.arange(2000.0)}), tmp_path / "in.parquet")
    assert "row groups" not in run_cli("augment", tmp_path / "in.parquet", tmp_path / "a.h5").stderr
    monkeypatch.setattr(parquet, "LARGE_ROW_GROUP_BYTES", 64 * 1024)
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "b.h5")
    assert result.exit_code == 0
    assert "'x' has row groups of up to 0 MiB; rows read by index" in result.stderr
    assert "'y' has" not in result.stderr  # y's column is small


@pytest.mark.slow
def test_one_large_row_group_is_streamed(tmp_path):
    """A file written as one row group (pyarrow's default below a million rows) is read in batches."""
    x = np.random.default_rng(15).standard_normal((80000, 64)).astype(np.float32)  # 20 MiB
    pq.write_table(pa.table({"x": tensor_column(x), "y": np.arange(80000) % 5}), tmp_path / "in.parquet")
    code = (
        "import pyarrow as pa\n"
        "from mixup_cli import augment\n"
        "from mixup_cli.io import parquet\n"
        "parquet.STREAM_GROUP_BYTES, parquet.STREAM_BATCH_BYTES = 1 << 20, 1 << 18\n"
        f"augment({str(tmp_path / 'in.parquet')!r}, {str(tmp_path / 'out.h5')!r}, seed=1, block_rows=1024)\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split()[-1])
    assert 0 < peak < x.nbytes // 2, (peak, x.nbytes)  # decoded whole, the row group takes 3.5 times x
    got, _ = load_h5(tmp_path / "out.h5")
    assert np.array_equal(got["x"], expected_mix(x, got["lam"], got["partner"]))


def test_streamed_reads_in_any_order_give_the_rows(tmp_path, monkeypatch):
    from mixup_cli.io import open_reader, parquet

    monkeypatch.setattr(parquet, "STREAM_GROUP_BYTES", 1024)
    monkeypatch.setattr(parquet, "STREAM_BATCH_BYTES", 1000)
    x = np.random.default_rng(16).random((300, 3, 2)).astype(np.float32)
    pq.write_table(
        pa.table({"x": tensor_column(x), "y": np.arange(300.0)}), tmp_path / "in.parquet", row_group_size=120
    )
    with open_reader(tmp_path / "in.parquet") as reader:
        for start, stop in [(0, 50), (50, 130), (10, 20), (250, 300), (119, 121), (0, 300), (299, 300)]:
            assert np.array_equal(reader.read("x", start, stop), x[start:stop]), (start, stop)
            assert np.array_equal(reader.read("y", start, stop), np.arange(300.0)[start:stop])
        assert np.array_equal(reader.take("x", np.array([299, 0, 150])), x[[299, 0, 150]])


def fixed_shape_tensor(x: np.ndarray, **kwargs):
    """x (N, *shape) as Arrow's fixed_shape_tensor extension column."""
    typ = pa.fixed_shape_tensor(pa.from_numpy_dtype(x.dtype), list(x.shape[1:]), **kwargs)
    return pa.ExtensionArray.from_storage(typ, tensor_column(x.reshape(len(x), -1)))


def test_a_fixed_shape_tensor_x_is_written_back_as_one(tmp_path, run_cli):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"img": fixed_shape_tensor(x, dim_names=["C", "W"]), "y": labels}), src, row_group_size=9)
    out = tmp_path / "out.parquet"
    result = run_cli("augment", src, out, "--x-key", "img", "--seed", 2, "--block-rows", 16)
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    typ = table.schema.field("img").type
    assert typ.extension_name == "arrow.fixed_shape_tensor" and list(typ.shape) == [3, 4]
    assert list(typ.dim_names) == ["C", "W"] and typ.permutation is None and typ.value_type == pa.float32()
    got = table.column("img").combine_chunks().to_numpy_ndarray()
    lam, partner = table.column("lam").to_numpy(), table.column("partner").to_numpy()
    assert np.array_equal(got, expected_mix(x, lam, partner))
    assert np.array_equal(
        np.stack(table.column("y").to_numpy(zero_copy_only=False)), expected_mix(one_hot(labels, 3), lam, partner)
    )
    record = json.loads(table.schema.metadata[b"mixup"])
    assert record["arrays"]["img"] == {"column": "fixed_shape_tensor", "dtype": "<f4", "shape": [3, 4]}
    assert run_cli("verify", out).exit_code == 0
    from mixup_cli import MixupDataset

    rows = MixupDataset(out)
    assert np.array_equal(rows[5]["x"], got[5])
    # nested fixed-size lists stay nested lists; an HDF5 output has no trace of the column form
    pq.write_table(pa.table({"img": tensor_column(x), "y": labels}), tmp_path / "lists.parquet")
    assert (
        run_cli("augment", tmp_path / "lists.parquet", tmp_path / "lists-out.parquet", "--x-key", "img").exit_code == 0
    )
    assert pa.types.is_fixed_size_list(pq.read_schema(tmp_path / "lists-out.parquet").field("img").type)
    assert run_cli("augment", src, tmp_path / "out.h5", "--x-key", "img", "--seed", 2).exit_code == 0
    got_h5, attrs = load_h5(tmp_path / "out.h5")
    assert np.array_equal(got_h5["img"], expected_mix(x, got_h5["lam"], got_h5["partner"]))
    assert "tensor_columns" not in attrs


def test_a_fixed_shape_tensor_with_a_permutation_is_refused(tmp_path, run_cli):
    x = np.zeros((6, 2, 3), dtype=np.float32)
    pq.write_table(
        pa.table({"x": fixed_shape_tensor(x, permutation=[1, 0]), "y": np.arange(6.0)}), tmp_path / "in.parquet"
    )
    result = run_cli("augment", tmp_path / "in.parquet", tmp_path / "out.parquet", "--y-kind", "dense")
    assert result.exit_code == 1
    assert "column 'x': a fixed_shape_tensor with a permutation (physical order [1, 0])" in result.stderr
    assert "row-major" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
